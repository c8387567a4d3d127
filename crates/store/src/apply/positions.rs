//! A batch's positions against what history and dead letters hold there:
//! a record read again, or proof of another log of the partition ([`another_log`]).

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::Batch;
use crate::Result;
use crate::fold::SourceRecord;

/// The batch met records that are not the ones history holds at their
/// offsets: another log of the partition (the topic was deleted and
/// recreated, then the group reset). It goes on in a new incarnation, past
/// every one any row names, moved into the offset row it already holds,
/// with the gap recorded. Rare: three round trips of its own.
pub(super) async fn another_log(
    client: &deadpool_postgres::Object,
    batch: &Batch<'_>,
    offset: i64,
) -> Result<i32> {
    let stmt = client
        .prepare_cached(include_str!("../sql/next_incarnation.sql"))
        .await?;
    let next: i32 = client
        .query_one(&stmt, &[&batch.topic, &batch.partition, &batch.incarnation])
        .await?
        .get(0);
    tracing::warn!(
        topic = batch.topic,
        partition = batch.partition,
        offset,
        old_incarnation = batch.incarnation,
        new_incarnation = next,
        "the record at offset {offset} is not the one history holds there: this is \
         another log of the partition (the topic was deleted and recreated); going on \
         in incarnation {next}, recorded in offset_gaps as position_clash"
    );
    client
        .execute(
            "UPDATE consumer_offsets SET incarnation = $4 \
             WHERE group_id = $1 AND topic = $2 AND partition = $3",
            &[&batch.group, &batch.topic, &batch.partition, &next],
        )
        .await?;
    // Where the clash was found: the batch's first offset.
    let at = batch.from_offset;
    let gap = crate::Gap {
        group: batch.group,
        topic: batch.topic,
        partition: batch.partition,
        reason: "position_clash",
        stored: crate::StoredOffset {
            next_offset: at,
            incarnation: batch.incarnation,
            last_fingerprint: None,
            fingerprint_offset: None,
        },
        earliest: at,
        latest: at,
        reset_to: at,
        new_incarnation: next,
        policy: "none",
    };
    crate::offsets::insert_gap(client, &gap).await?;
    Ok(next)
}

/// A row already in history or dead letters at one of the batch's
/// positions (same topic, partition and incarnation; dead letters of the
/// same group).
#[derive(Debug)]
pub(super) struct Held {
    pub(super) dead_letter: bool,
    pub(super) event_id: Option<Uuid>,
    pub(super) offset: i64,
    pub(super) key: Option<Vec<u8>>,
    pub(super) value: Option<Vec<u8>>,
}

/// Compares what history and dead letters hold at the batch's positions
/// with the batch's records. Offsets in a Kafka log never change meaning,
/// so a row at a record's offset is either that record, read again (a
/// group reset to an earlier offset), or proof that this is another log of
/// the partition (a topic deleted and recreated, then reset). Returns the
/// offsets whose dead letter is already recorded (the same record), and
/// the first offset that holds a different record, if any.
pub(super) fn compare_positions(
    records: &[SourceRecord],
    held: &[Held],
) -> (HashSet<i64>, Option<i64>) {
    let by_offset: HashMap<i64, &SourceRecord> = records.iter().map(|r| (r.offset, r)).collect();
    let mut recorded = HashSet::new();
    let mut clash: Option<i64> = None;
    for h in held {
        let Some(record) = by_offset.get(&h.offset) else {
            continue;
        };
        let event_id = record.event.as_ref().ok().map(|e| e.event_id);
        let same = if h.dead_letter {
            // A dead letter keeps the record's key and value as they were.
            h.key.as_deref() == record.key.as_deref()
                && h.value.as_deref() == record.value.as_deref()
        } else {
            h.event_id.is_some() && h.event_id == event_id
        };
        if !same {
            clash = Some(clash.map_or(h.offset, |c| c.min(h.offset)));
        } else if h.dead_letter {
            recorded.insert(h.offset);
        }
    }
    (recorded, clash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::generator::{Generator, GeneratorConfig};

    fn records(n: usize) -> Vec<SourceRecord> {
        Generator::new(GeneratorConfig {
            seed: 5,
            ..GeneratorConfig::default()
        })
        .take(n)
        .enumerate()
        .map(|(i, e)| SourceRecord {
            offset: 10 + i as i64,
            timestamp: e.occurred_at,
            key: Some(e.customer_id.clone().into_bytes()),
            value: Some(e.to_json()),
            headers: Vec::new(),
            event: Ok(e),
        })
        .collect()
    }

    fn history_at(r: &SourceRecord, event_id: Uuid) -> Held {
        Held {
            dead_letter: false,
            event_id: Some(event_id),
            offset: r.offset,
            key: None,
            value: None,
        }
    }

    /// History holding the batch's own events at their offsets is a re-read, not a clash; another event id there is a clash at the first such offset.
    #[test]
    fn a_different_record_at_a_held_position_is_a_clash() {
        let recs = records(4);
        let id = |i: usize| recs[i].event.as_ref().expect("event").event_id;
        let same: Vec<Held> = (0..4).map(|i| history_at(&recs[i], id(i))).collect();
        assert_eq!(compare_positions(&recs, &same), (HashSet::new(), None));

        let other = vec![
            history_at(&recs[3], Uuid::from_u128(9)),
            history_at(&recs[1], Uuid::from_u128(8)),
        ];
        assert_eq!(compare_positions(&recs, &other).1, Some(11));
    }

    /// A dead letter with the record's own key and value is the same record (left out, not a clash); other bytes there are a clash.
    #[test]
    fn dead_letters_are_compared_by_their_bytes() {
        let mut recs = records(2);
        recs[1].event = Err(events::DecodeError::new(
            events::ErrorKind::MalformedJson,
            "bad",
        ));
        recs[1].value = Some(b"{not json".to_vec());
        let held = |value: &[u8]| Held {
            dead_letter: true,
            event_id: None,
            offset: 11,
            key: recs[1].key.clone(),
            value: Some(value.to_vec()),
        };
        assert_eq!(
            compare_positions(&recs, &[held(b"{not json")]),
            (HashSet::from([11]), None)
        );
        assert_eq!(compare_positions(&recs, &[held(b"{other")]).1, Some(11));
    }
}
