//! The fold's unit and property tests (`fold::tests`): [`plan`](super::plan) against a
//! sequential fold, duplicates, dead letters, stale events, fingerprints.

use std::collections::{HashMap, HashSet};

use chrono::DateTime;
use events::{OrderEvent, OrderState};
use uuid::Uuid;

use super::*;
use events::generator::{Generator, GeneratorConfig};
use events::{DecodeError, ErrorKind, Status};

const SRC: Source<'static> = Source {
    topic: "t",
    partition: 0,
    incarnation: 0,
};

fn records(events: &[OrderEvent]) -> Vec<SourceRecord> {
    SourceRecord::from_events(events)
}

fn stream(n: usize) -> Vec<OrderEvent> {
    Generator::new(GeneratorConfig {
        seed: 11,
        ..GeneratorConfig::default()
    })
    .take(n)
    .collect()
}

/// Folding a batch in one go gives the same view as folding it event by event.
#[test]
fn batch_fold_equals_sequential_fold() {
    let events = stream(2000);
    let recs = records(&events);
    let plan = plan(SRC, &recs, &HashSet::new(), HashMap::new());
    assert_eq!(plan.history.len(), 2000);
    assert!(plan.dead_letters.is_empty());

    let mut expected: HashMap<Uuid, OrderState> = HashMap::new();
    for e in &events {
        let next = OrderState::apply(expected.get(&e.order_id), e).expect("valid");
        expected.insert(e.order_id, next);
    }
    assert_eq!(plan.view.len(), expected.len(), "one view row per order");
    for row in &plan.view {
        assert_eq!(&row.state, &expected[&row.state.order_id]);
    }
}

/// A duplicated event (producer retry) is skipped, within a batch and against history.
#[test]
fn duplicates_are_skipped() {
    let events = stream(50);
    let mut with_dup = events.clone();
    with_dup.push(events[0].clone());
    let recs = records(&with_dup);
    let known: HashSet<Uuid> = [events[1].event_id].into();
    let plan = plan(SRC, &recs, &known, HashMap::new());
    assert_eq!(plan.duplicates, 2);
    // Events that depended on the known event's order (absent from
    // `current` here) are refused; everything else is applied.
    assert_eq!(plan.history.len() + plan.dead_letters.len(), 49);
    assert!(!plan.history.contains(&1) && !plan.history.contains(&50));
}

/// Undecodable records and forbidden transitions become dead letters; neighbours apply.
#[test]
fn bad_records_become_dead_letters() {
    let events = stream(30);
    let mut recs = records(&events);
    recs[3].event = Err(DecodeError {
        kind: ErrorKind::MalformedJson,
        message: "bad".into(),
    });
    // An event for an order that was never created.
    let mut orphan = events[5].clone();
    orphan.order_id = Uuid::from_u128(99);
    orphan.event_id = Uuid::from_u128(100);
    orphan.body = events::EventBody::OrderDelivered(events::OrderDelivered {});
    recs.push(SourceRecord {
        offset: 30,
        event: Ok(orphan),
        ..recs[0].clone()
    });
    let plan = plan(SRC, &recs, &HashSet::new(), HashMap::new());
    let kinds: Vec<_> = plan
        .dead_letters
        .iter()
        .map(|d| (d.index, d.kind))
        .collect();
    assert!(kinds.contains(&(3, "malformed_json")));
    assert!(kinds.contains(&(30, "invalid_transition")));
    // Record 3 was an OrderCreated or a step of some order; everything
    // else either applied or was refused because it depended on it.
    assert!(plan.history.len() >= 25);
}

/// An event from an offset at or before the order's stored one is neither applied nor put in history: it is a `stale` dead letter.
#[test]
fn stale_events_do_not_move_the_view_back() {
    let events = stream(1);
    let recs = records(&events);
    let state = OrderState::apply(None, &events[0]).expect("created");
    let paid = Current {
        state: OrderState {
            status: Status::Paid,
            ..state
        },
        source_topic: "t".into(),
        source_partition: 0,
        source_incarnation: 0,
        source_offset: 10,
    };
    let current = HashMap::from([(events[0].order_id, paid)]);
    let first = plan(SRC, &recs, &HashSet::new(), current);
    assert_eq!(first.stale, 1);
    assert!(
        first.history.is_empty(),
        "history holds only applied events"
    );
    assert!(first.view.is_empty());
    assert_eq!(first.dead_letters.len(), 1);
    assert_eq!(first.dead_letters[0].kind, "stale");

    // The same offset in a newer incarnation of the topic is new.
    let newer = Source {
        incarnation: 1,
        ..SRC
    };
    let current = HashMap::from([(
        events[0].order_id,
        Current {
            source_offset: 10,
            ..plan_current(&events[0])
        },
    )]);
    let plan2 = plan(newer, &recs, &HashSet::new(), current);
    assert_eq!(plan2.stale, 0);
}

fn plan_current(event: &OrderEvent) -> Current {
    Current {
        state: OrderState::apply(None, event).expect("created"),
        source_topic: "t".into(),
        source_partition: 0,
        source_incarnation: 0,
        source_offset: 0,
    }
}

/// An event behind an order that got further through another partition is an `out_of_order` dead letter naming both positions; a step the machine forbids from there stays `invalid_transition`.
#[test]
fn events_behind_another_partition_are_out_of_order() {
    let events = stream(1);
    let created = &events[0];
    let shipped_elsewhere = Current {
        state: OrderState {
            status: Status::Shipped,
            ..OrderState::apply(None, created).expect("created")
        },
        source_topic: "t".into(),
        source_partition: 3,
        source_incarnation: 0,
        source_offset: 41,
    };
    let step = |body: events::EventBody, id: u128| OrderEvent {
        event_id: Uuid::from_u128(id),
        body,
        ..created.clone()
    };
    let late = [
        step(
            events::EventBody::OrderPaid(events::OrderPaid {
                payment_id: Uuid::from_u128(5),
                amount_cents: 1,
                method: "card".into(),
            }),
            1,
        ),
        created.clone(),
        step(
            events::EventBody::OrderCancelled(events::OrderCancelled {
                reason: "r".into(),
                cancelled_by: events::CancelledBy::Customer,
            }),
            2,
        ),
    ];
    let recs: Vec<SourceRecord> = records(&late)
        .into_iter()
        .map(|r| SourceRecord {
            offset: r.offset + 7,
            ..r
        })
        .collect();
    let current = HashMap::from([(created.order_id, shipped_elsewhere)]);
    let plan = plan(SRC, &recs, &HashSet::new(), current);
    assert!(plan.history.is_empty() && plan.view.is_empty());
    let kinds: Vec<_> = plan.dead_letters.iter().map(|d| d.kind).collect();
    assert_eq!(
        kinds,
        ["out_of_order", "out_of_order", "invalid_transition"]
    );
    let message = &plan.dead_letters[0].message;
    assert!(
        message.contains("t/0 offset 7") && message.contains("t/3 offset 41"),
        "both positions: {message}"
    );
}

/// The fingerprint changes with any of timestamp, key or value, and tells absent from empty.
#[test]
fn fingerprint_tells_records_apart() {
    let t = DateTime::from_timestamp_millis(1_700_000_000_000).expect("valid");
    let base = fingerprint(t, Some(b"k"), Some(b"v"));
    assert_eq!(base, fingerprint(t, Some(b"k"), Some(b"v")), "stable");
    assert_ne!(
        base,
        fingerprint(
            t + chrono::Duration::milliseconds(1),
            Some(b"k"),
            Some(b"v")
        )
    );
    assert_ne!(base, fingerprint(t, Some(b"K"), Some(b"v")));
    assert_ne!(base, fingerprint(t, Some(b"k"), Some(b"w")));
    assert_ne!(base, fingerprint(t, Some(b"kv"), Some(b"")));
    assert_ne!(
        fingerprint(t, None, Some(b"v")),
        fingerprint(t, Some(b""), Some(b"v"))
    );
}

/// Properties of the fold over arbitrary streams: few orders, every
/// event type in any order (most of them forbidden transitions), times
/// that go backwards, producer duplicates, and batch boundaries anywhere.
mod properties {
    use super::*;
    use events::{
        CancelledBy, EventBody, LineItem, OrderCancelled, OrderCreated, OrderDelivered, OrderPaid,
        OrderShipped, SCHEMA_VERSION,
    };
    use proptest::prelude::*;

    /// An event of one of three orders, with an id from a small pool so
    /// that some ids repeat, and an `occurred_at` in any order.
    fn arb_event() -> impl Strategy<Value = OrderEvent> {
        let body = prop_oneof![
            (0i64..5_000).prop_map(|total| EventBody::OrderCreated(OrderCreated {
                restaurant_id: "R-1".into(),
                items: vec![LineItem {
                    name: "dish".into(),
                    quantity: 1,
                    unit_price_cents: total,
                }],
                total_cents: total,
            })),
            Just(EventBody::OrderPaid(OrderPaid {
                payment_id: Uuid::from_u128(7),
                amount_cents: 1,
                method: "card".into(),
            })),
            Just(EventBody::OrderShipped(OrderShipped {
                courier: "c".into()
            })),
            Just(EventBody::OrderDelivered(OrderDelivered {})),
            Just(EventBody::OrderCancelled(OrderCancelled {
                reason: "r".into(),
                cancelled_by: CancelledBy::Customer,
            })),
        ];
        (0u128..40, 0u128..3, 0i64..1_000, body).prop_map(|(id, order, secs, body)| OrderEvent {
            event_id: Uuid::from_u128(1_000 + id),
            schema_version: SCHEMA_VERSION,
            order_id: Uuid::from_u128(order),
            customer_id: format!("CUST-{order}"),
            occurred_at: DateTime::UNIX_EPOCH + chrono::Duration::seconds(secs),
            body,
        })
    }

    /// A stream of events; an id that repeats carries the same event,
    /// as a producer retry does.
    fn arb_stream() -> impl Strategy<Value = Vec<OrderEvent>> {
        proptest::collection::vec(arb_event(), 0..60).prop_map(|events| {
            let mut first: HashMap<Uuid, OrderEvent> = HashMap::new();
            events
                .into_iter()
                .map(|e| first.entry(e.event_id).or_insert(e).clone())
                .collect()
        })
    }

    /// What the database holds after folding `batches` one transaction
    /// at a time, as `Store::apply_batch` does: the view, the event ids
    /// of history in order, and the dead-lettered offsets.
    #[derive(Debug, Default, PartialEq)]
    struct Folded {
        view: HashMap<Uuid, OrderState>,
        history: Vec<(Uuid, i64)>,
        dead: Vec<(i64, &'static str)>,
    }

    fn fold_in_batches(records: &[SourceRecord], cuts: &[usize]) -> Folded {
        let mut stored: HashMap<Uuid, Current> = HashMap::new();
        let mut known: HashSet<Uuid> = HashSet::new();
        let mut out = Folded::default();
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (records.len() + 1)).collect();
        bounds.extend([0, records.len()]);
        bounds.sort_unstable();
        bounds.dedup();
        for w in bounds.windows(2) {
            let batch = &records[w[0]..w[1]];
            let current: HashMap<Uuid, Current> = batch
                .iter()
                .filter_map(|r| r.event.as_ref().ok())
                .filter_map(|e| stored.get(&e.order_id).map(|c| (e.order_id, c.clone())))
                .collect();
            let plan = plan(SRC, batch, &known, current);
            for &i in &plan.history {
                let e = batch[i].event.as_ref().expect("history holds events");
                known.insert(e.event_id);
                out.history.push((e.event_id, batch[i].offset));
            }
            for d in &plan.dead_letters {
                if let Ok(e) = &batch[d.index].event {
                    known.insert(e.event_id);
                }
                out.dead.push((batch[d.index].offset, d.kind));
            }
            for c in plan.view {
                stored.insert(c.state.order_id, c);
            }
        }
        out.view = stored.into_iter().map(|(id, c)| (id, c.state)).collect();
        out
    }

    proptest! {
        /// Cutting the stream into batches anywhere gives the same view, history and dead letters as one batch.
        #[test]
        fn batch_boundaries_do_not_matter(
            events in arb_stream(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let recs = records(&events);
            prop_assert_eq!(fold_in_batches(&recs, &cuts), fold_in_batches(&recs, &[]));
        }

        /// Every event written again later (a producer retry), in the same or another batch, changes neither view nor history.
        #[test]
        fn duplicates_do_not_matter(
            events in arb_stream(),
            again in proptest::collection::vec(any::<prop::sample::Index>(), 0..30),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let once = fold_in_batches(&records(&events), &[]);
            let mut twice = events.clone();
            for i in &again {
                if !events.is_empty() {
                    twice.push(events[i.index(events.len())].clone());
                }
            }
            let folded = fold_in_batches(&records(&twice), &cuts);
            prop_assert_eq!(&folded.view, &once.view);
            prop_assert_eq!(&folded.history, &once.history);
        }

        /// History holds only applied events, so folding it again in lifecycle order (asof at the end of time, `fold_history`) gives the view, whatever the events' occurred_at.
        #[test]
        fn asof_at_the_end_of_time_is_the_view(
            events in arb_stream(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let folded = fold_in_batches(&records(&events), &cuts);
            let by_id: HashMap<Uuid, &OrderEvent> = events.iter().map(|e| (e.event_id, e)).collect();
            let history: Vec<OrderEvent> = folded
                .history
                .iter()
                .map(|(id, _)| by_id[id].clone())
                .collect();
            let as_of: HashMap<Uuid, OrderState> = fold_history(history)
                .into_iter()
                .map(|s| (s.order_id, s))
                .collect();
            prop_assert_eq!(as_of, folded.view);
        }
    }
}
