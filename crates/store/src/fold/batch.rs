//! [`plan`]: what one batch writes, decided from its records, the event
//! ids already known and the current state of the orders it touches.

use std::collections::{HashMap, HashSet};

use events::{OrderState, Status};
use uuid::Uuid;

use super::{Current, DeadLetter, Plan, Source, SourceRecord};

/// Folds `records` (in offset order, from `source`) onto `current`, the
/// stored state of the orders they touch. `known_event_ids` are the ids
/// among them already in history or dead letters.
pub fn plan(
    source: Source<'_>,
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
            && c.source_topic == source.topic
            && c.source_partition == source.partition
            && (c.source_incarnation, c.source_offset) >= (source.incarnation, record.offset)
        {
            plan.stale += 1;
            plan.dead_letters.push(DeadLetter {
                index,
                kind: "stale",
                message: format!(
                    "{} for order {} at offset {} of incarnation {}: the order's view already \
                     comes from offset {} of incarnation {}, so it cannot be applied",
                    event.body.event_type(),
                    event.order_id,
                    record.offset,
                    source.incarnation,
                    c.source_offset,
                    c.source_incarnation
                ),
            });
            continue;
        }
        // In place: an order's items and names are not copied per event.
        let applied = match current.get_mut(&event.order_id) {
            Some(c) => c.state.advance(event).map(|()| {
                if c.source_topic != source.topic {
                    source.topic.clone_into(&mut c.source_topic);
                }
                c.source_partition = source.partition;
                c.source_incarnation = source.incarnation;
                c.source_offset = record.offset;
            }),
            None => OrderState::apply(None, event).map(|state| {
                current.insert(
                    event.order_id,
                    Current {
                        state,
                        source_topic: source.topic.to_owned(),
                        source_partition: source.partition,
                        source_incarnation: source.incarnation,
                        source_offset: record.offset,
                    },
                );
            }),
        };
        match applied {
            Ok(()) => {
                if changed_set.insert(event.order_id) {
                    changed.push(event.order_id);
                }
                plan.history.push(index);
            }
            Err(e) => plan.dead_letters.push(match current.get(&event.order_id) {
                // The order got past this event's step through records of
                // another partition (or another log of this one): the
                // event is behind the order, met late, not a step the
                // machine forbids. Orders are locked across partitions
                // while a batch decides (invariant 13), so this is
                // decided against the order's committed state.
                Some(c)
                    if (
                        c.source_topic.as_str(),
                        c.source_partition,
                        c.source_incarnation,
                    ) != (source.topic, source.partition, source.incarnation)
                        && Status::after(&event.body).leads_to(c.state.status) =>
                {
                    DeadLetter {
                        index,
                        kind: "out_of_order",
                        message: format!(
                            "{} for order {} at {}/{} offset {} arrived after the order reached \
                             {} from {}/{} offset {}: the order's events are in two partitions \
                             (records not keyed by customer_id, or partitions added to the \
                             topic), so they were met out of order",
                            event.body.event_type(),
                            event.order_id,
                            source.topic,
                            source.partition,
                            record.offset,
                            c.state.status.as_str(),
                            c.source_topic,
                            c.source_partition,
                            c.source_offset
                        ),
                    }
                }
                _ => DeadLetter {
                    index,
                    kind: "invalid_transition",
                    message: e.to_string(),
                },
            }),
        }
    }

    plan.view = changed
        .into_iter()
        .filter_map(|id| current.remove(&id))
        .collect();
    plan
}
