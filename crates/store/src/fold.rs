//! The pure half of applying a batch: given the fetched records, the event
//! ids already in history and the current state of the orders they touch,
//! decide what to write. [`crate::Store::apply_batch`] reads the inputs and
//! writes the [`Plan`] inside one transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use events::{DecodeError, OrderEvent, OrderState};
use uuid::Uuid;

/// A fetched record, decoded (or not) by the caller.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    pub offset: i64,
    pub timestamp: DateTime<Utc>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// The event, or why the record is a dead letter.
    pub event: Result<OrderEvent, DecodeError>,
}

/// An order's state and the record it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub state: OrderState,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
}

/// A record that goes to `dead_letters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Index into the batch's records.
    pub index: usize,
    pub kind: &'static str,
    pub message: String,
}

/// What one batch writes.
#[derive(Debug, Default)]
pub struct Plan {
    /// Indexes of records that go to history, in offset order.
    pub history: Vec<usize>,
    /// The final state of every order the batch changed: one write per order.
    pub view: Vec<Current>,
    pub dead_letters: Vec<DeadLetter>,
    /// Records whose event_id is already in history (or earlier in this
    /// batch): producer retries, skipped entirely.
    pub duplicates: usize,
    /// Events older than the order's last applied one: kept in history, but
    /// they do not move the view backwards.
    pub stale: usize,
}

/// Folds `records` (in offset order, from `topic`/`partition`) onto
/// `current`, the stored state of the orders they touch.
pub fn plan(
    topic: &str,
    partition: i32,
    records: &[SourceRecord],
    known_event_ids: &HashSet<Uuid>,
    mut current: HashMap<Uuid, Current>,
) -> Plan {
    let mut plan = Plan::default();
    let mut seen: HashSet<Uuid> = HashSet::with_capacity(records.len());
    // Orders the batch changed, in first-touched order, each once.
    let mut changed: Vec<Uuid> = Vec::new();
    let mut changed_set: HashSet<Uuid> = HashSet::new();

    for (index, record) in records.iter().enumerate() {
        let event = match &record.event {
            Ok(event) => event,
            Err(e) => {
                plan.dead_letters.push(DeadLetter {
                    index,
                    kind: e.kind.as_str(),
                    message: e.message.clone(),
                });
                continue;
            }
        };
        if known_event_ids.contains(&event.event_id) || !seen.insert(event.event_id) {
            plan.duplicates += 1;
            continue;
        }
        let existing = current.get(&event.order_id);
        if let Some(c) = existing
            && c.source_topic == topic
            && c.source_partition == partition
            && c.source_offset >= record.offset
        {
            plan.stale += 1;
            plan.history.push(index);
            continue;
        }
        match OrderState::apply(existing.map(|c| &c.state), event) {
            Ok(state) => {
                if changed_set.insert(event.order_id) {
                    changed.push(event.order_id);
                }
                current.insert(
                    event.order_id,
                    Current {
                        state,
                        source_topic: topic.to_owned(),
                        source_partition: partition,
                        source_offset: record.offset,
                    },
                );
                plan.history.push(index);
            }
            Err(e) => plan.dead_letters.push(DeadLetter {
                index,
                kind: "invalid_transition",
                message: e.to_string(),
            }),
        }
    }

    plan.view = changed
        .into_iter()
        .filter_map(|id| current.remove(&id))
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::generator::{Generator, GeneratorConfig};
    use events::{DecodeError, ErrorKind, Status};

    fn records(events: &[OrderEvent]) -> Vec<SourceRecord> {
        events
            .iter()
            .enumerate()
            .map(|(i, e)| SourceRecord {
                offset: i as i64,
                timestamp: e.occurred_at,
                key: Some(e.customer_id.clone().into_bytes()),
                value: Some(e.to_json()),
                event: Ok(e.clone()),
            })
            .collect()
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
        let plan = plan("t", 0, &recs, &HashSet::new(), HashMap::new());
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
        let plan = plan("t", 0, &recs, &known, HashMap::new());
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
        let plan = plan("t", 0, &recs, &HashSet::new(), HashMap::new());
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

    /// An event from an offset at or before the order's stored one is kept in history but not applied.
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
            source_offset: 10,
        };
        let current = HashMap::from([(events[0].order_id, paid)]);
        let plan = plan("t", 0, &recs, &HashSet::new(), current);
        assert_eq!(plan.stale, 1);
        assert_eq!(plan.history, vec![0]);
        assert!(plan.view.is_empty());
    }
}
