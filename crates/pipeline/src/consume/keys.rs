//! Records whose Kafka key is not their event's `customer_id`.
//!
//! The key is what keeps a customer's events in one partition, and so in
//! order (DESIGN invariant 1). A record keyed otherwise, or not keyed at
//! all, is still a valid event and is applied; but its order's other events
//! may sit in another partition, where nothing orders them against it. So
//! each one is counted (`foodpipe_key_mismatch_total{reason}`) and the first
//! of a tenure on a partition is logged once, with what to look at.

use store::SourceRecord;

/// How a key can disagree with its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mismatch {
    /// The record has no key (a keyless producer spreads records round-robin).
    Missing,
    /// The key is not the event's `customer_id`.
    Differs,
}

impl Mismatch {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mismatch::Missing => "missing",
            Mismatch::Differs => "differs",
        }
    }
}

/// One record whose key disagrees with its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyMismatch {
    pub offset: i64,
    pub mismatch: Mismatch,
    /// The key as text (lossy, escaped when printed), if there is one.
    pub key: Option<String>,
    pub customer_id: String,
}

/// The records of a batch that decoded into an event whose `customer_id`
/// is not the record's key, in offset order. Records that are dead letters
/// are not looked at: they are accounted for there.
pub(crate) fn mismatches(records: &[SourceRecord]) -> Vec<KeyMismatch> {
    records
        .iter()
        .filter_map(|record| {
            let event = record.event.as_ref().ok()?;
            let mismatch = match &record.key {
                None => Mismatch::Missing,
                Some(key) if key.as_slice() == event.customer_id.as_bytes() => return None,
                Some(_) => Mismatch::Differs,
            };
            Some(KeyMismatch {
                offset: record.offset,
                mismatch,
                key: record
                    .key
                    .as_deref()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                customer_id: event.customer_id.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use events::generator::{Generator, GeneratorConfig};

    fn record(offset: i64, key: Option<&[u8]>, value: Vec<u8>) -> SourceRecord {
        SourceRecord {
            offset,
            timestamp: DateTime::from_timestamp_millis(1_700_000_000_000).expect("valid"),
            key: key.map(<[u8]>::to_vec),
            event: events::decode(Some(&value)),
            value: Some(value),
            headers: Vec::new(),
        }
    }

    /// A matching key passes; a missing and a different key are each named with the event's customer; a dead letter is not looked at.
    #[test]
    fn keys_are_checked_against_the_events_customer() {
        let events: Vec<_> = Generator::new(GeneratorConfig {
            seed: 7,
            ..GeneratorConfig::default()
        })
        .take(3)
        .collect();
        let value = |i: usize| serde_json::to_vec(&events[i]).expect("json");
        let customer = |i: usize| events[i].customer_id.clone();
        let records = vec![
            record(10, Some(customer(0).as_bytes()), value(0)),
            record(11, None, value(1)),
            record(12, Some(b"someone-else"), value(2)),
            record(13, None, b"not json".to_vec()),
        ];
        assert_eq!(
            mismatches(&records),
            vec![
                KeyMismatch {
                    offset: 11,
                    mismatch: Mismatch::Missing,
                    key: None,
                    customer_id: customer(1),
                },
                KeyMismatch {
                    offset: 12,
                    mismatch: Mismatch::Differs,
                    key: Some("someone-else".to_owned()),
                    customer_id: customer(2),
                },
            ]
        );
    }
}
