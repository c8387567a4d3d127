//! The pure half of applying a batch: given the fetched records, the event
//! ids already in history and the current state of the orders they touch,
//! decide what to write. [`crate::Store::apply_batch`] reads the inputs and
//! writes the [`Plan`] inside one transaction.
//!
//! Here: the types and [`fingerprint`]; [`plan`] is in `batch.rs`,
//! [`fold_history`] in `history.rs`.

use chrono::{DateTime, Utc};
use events::{DecodeError, OrderEvent, OrderState};

mod batch;
mod history;
#[cfg(test)]
mod tests;

pub use batch::plan;
pub use history::fold_history;

/// A fetched record, decoded (or not) by the caller.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    pub offset: i64,
    pub timestamp: DateTime<Utc>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// The record's headers, `(key, value)`; kept with a dead letter.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The event, or why the record is a dead letter.
    pub event: Result<OrderEvent, DecodeError>,
}

impl SourceRecord {
    /// `events` as the records a producer keyed by customer would have
    /// written, at offsets 0, 1, 2, ... (tests and benchmarks).
    pub fn from_events(events: &[OrderEvent]) -> Vec<SourceRecord> {
        events
            .iter()
            .enumerate()
            .map(|(i, e)| SourceRecord {
                offset: i as i64,
                timestamp: e.occurred_at,
                key: Some(e.customer_id.clone().into_bytes()),
                value: Some(e.to_json()),
                headers: Vec::new(),
                event: Ok(e.clone()),
            })
            .collect()
    }
}

/// An order's state and the record it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub state: OrderState,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_incarnation: i32,
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
    /// Records whose event_id was seen before, applied or refused (in
    /// history, in dead letters, or earlier in this batch): producer
    /// retries, skipped entirely.
    pub duplicates: usize,
    /// Events from a position at or before the one the order's view row
    /// came from: the view is past them, so they cannot pass the state
    /// machine. They are dead letters of kind `stale`, never history:
    /// history holds only applied events (migration V4's rule, which
    /// `asof` relies on).
    pub stale: usize,
}

/// Where a batch comes from: a partition of one incarnation of a topic.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub incarnation: i32,
}

/// A stable 64-bit fingerprint (FNV-1a) of a record's timestamp, key and
/// value. Stored with the offset, it tells later whether the record before
/// the stored offset is still the one that was applied, or the topic was
/// recreated under the same name.
pub fn fingerprint(timestamp: DateTime<Utc>, key: Option<&[u8]>, value: Option<&[u8]>) -> i64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET_BASIS;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    feed(&timestamp.timestamp_millis().to_le_bytes());
    // Lengths (with a marker for "absent") keep key and value apart.
    for part in [key, value] {
        match part {
            Some(bytes) => {
                feed(&(bytes.len() as u64).to_le_bytes());
                feed(bytes);
            }
            None => feed(&u64::MAX.to_le_bytes()),
        }
    }
    hash as i64
}
