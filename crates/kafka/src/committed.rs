//! What a `read_committed` consumer sees of one fetch: a pure function from
//! the whole batches a broker returned to the records to apply and the
//! position to fetch from next.
//!
//! A transactional producer's records are followed, in the same partition,
//! by a control batch (a *marker*): COMMIT or ABORT. A broker serving a
//! `read_committed` fetch returns only offsets below the last stable offset
//! (so every transaction in the answer has ended) and lists the aborted
//! transactions that overlap the answer, each as (producer id, first
//! offset). The consumer then drops:
//!
//! - control batches (they carry no data; the position moves past them),
//! - the transactional batches of a producer from an aborted transaction's
//!   first offset up to that producer's ABORT marker,
//! - records below the requested offset (a broker returns whole batches).
//!
//! The aborted-transaction walk is the Java consumer's: aborted transactions
//! sorted by first offset; when a batch of producer P is reached, every
//! aborted transaction starting at or before the batch's last offset makes
//! its producer "aborted"; P's transactional batches are skipped while P is
//! aborted, and P's ABORT marker ends that.
//!
//! # References
//! - KIP-98, "Exactly Once Delivery and Transactional Messaging"
//! - Kafka's `CompletedFetch.nextFetchedRecord`, `consumeAbortedTransactionsUpTo`,
//!   `isBatchAborted` and `containsAbortMarker` (clients/consumer/internals)

use std::collections::{BTreeSet, HashSet};

use rskafka::client::partition::{ControlRecordType, FetchDetailed};
use rskafka::record::RecordAndOffset;

/// One fetch's worth of records, as a `read_committed` consumer sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchedBatch {
    /// The records to apply, in offset order: at or after the requested
    /// offset, no control records, no records of aborted transactions.
    pub records: Vec<RecordAndOffset>,
    /// The partition's high watermark when the broker answered: the offset
    /// the next produced record will get.
    pub high_watermark: i64,
    /// The offset below which every transaction has ended (`None` from a
    /// broker that does not say). A `read_committed` fetch never returns
    /// records at or past it.
    pub last_stable_offset: Option<i64>,
    /// Where to fetch next: one past the last offset of the last whole batch
    /// of the answer (data, control or aborted alike), never below the
    /// requested offset, and the requested offset if the answer held no
    /// whole batch. With `corrupt`, the corrupt batch's first offset.
    ///
    /// This, not the last record's offset + 1, is the position to store: a
    /// fetch that lands on a marker returns no records but moves on.
    pub next_offset: i64,
    /// The first batch that could not be decoded, if any: `records` are the
    /// ones before it, and `next_offset` stops at it.
    pub corrupt: Option<CorruptBatch>,
    /// Control records (transaction markers) stepped over.
    pub control_records: usize,
    /// Records of aborted transactions dropped.
    pub aborted_records: usize,
}

/// A record batch that could not be decoded (CRC mismatch, unknown codec,
/// decompression error, garbled records), reported instead of failing the
/// fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptBatch {
    /// The batch's base offset, from its header.
    pub first_offset: i64,
    /// The batch's last offset, if its header was long enough to hold it
    /// (with a CRC mismatch the header itself may be damaged).
    pub last_offset: Option<i64>,
    /// The batch as it came over the wire, for the dead-letter record.
    pub raw: Vec<u8>,
    /// Why it could not be decoded.
    pub error: String,
}

impl CorruptBatch {
    /// As an error of `topic`/`partition`, for a consumer that stops there.
    pub fn to_error(&self, topic: &str, partition: i32) -> crate::Error {
        crate::Error::CorruptBatch {
            topic: topic.to_owned(),
            partition,
            first_offset: self.first_offset,
            last_offset: self.last_offset,
            cause: self.error.clone(),
        }
    }
}

/// Applies `read_committed` rules to a fetch answer for `requested_offset`.
pub fn read_committed(requested_offset: i64, fetched: FetchDetailed) -> FetchedBatch {
    let FetchDetailed {
        batches,
        corrupt,
        high_watermark,
        last_stable_offset,
        aborted_transactions,
    } = fetched;

    // (first offset, producer), taken in first-offset order.
    let mut pending: BTreeSet<(i64, i64)> = aborted_transactions
        .iter()
        .map(|t| (t.first_offset, t.producer_id))
        .collect();
    let mut aborted_producers: HashSet<i64> = HashSet::new();

    let mut out = FetchedBatch {
        high_watermark,
        last_stable_offset,
        next_offset: requested_offset,
        ..FetchedBatch::default()
    };
    // A negative LSO means "unknown" (old brokers answer -1).
    let stable_end = last_stable_offset.filter(|&lso| lso >= 0);
    let mut stopped_at_lso = false;

    for batch in batches {
        if stable_end.is_some_and(|lso| batch.base_offset >= lso) {
            // Not yet decided: a broker honouring read_committed never sends
            // this; one that does must not have it applied or stepped over.
            stopped_at_lso = true;
            break;
        }
        let next = batch.last_offset.saturating_add(1);
        if next <= requested_offset {
            // Wholly before the requested offset (a broker may start at the
            // batch holding it); it still opens aborted transactions below.
            note_aborted_up_to(&mut pending, &mut aborted_producers, batch.last_offset);
            if batch.control == Some(ControlRecordType::Abort) {
                aborted_producers.remove(&batch.producer_id);
            }
            continue;
        }
        out.next_offset = out.next_offset.max(next);

        if batch.producer_id >= 0 {
            note_aborted_up_to(&mut pending, &mut aborted_producers, batch.last_offset);
        }
        if let Some(kind) = batch.control {
            if kind == ControlRecordType::Abort {
                aborted_producers.remove(&batch.producer_id);
            }
            out.control_records += 1;
            continue;
        }
        let visible = batch
            .records
            .into_iter()
            .filter(|r| r.offset >= requested_offset);
        if batch.is_transactional && aborted_producers.contains(&batch.producer_id) {
            out.aborted_records += visible.count();
            continue;
        }
        out.records.extend(visible);
    }

    // Every batch of an answer lies below the high watermark the broker
    // answered with; never step past it. (Tansu 0.6.0 answers a fetch of an
    // empty partition with an empty batch claiming offset 0: taken at its
    // word, a consumer at offset 0 would skip the first record to come.)
    if high_watermark >= requested_offset {
        out.next_offset = out.next_offset.min(high_watermark);
    }

    if let Some(c) = corrupt
        && !stopped_at_lso
    {
        out.next_offset = requested_offset.max(c.base_offset);
        out.corrupt = Some(CorruptBatch {
            first_offset: c.base_offset,
            last_offset: c.last_offset,
            raw: c.raw,
            error: c.error,
        });
    }
    out
}

/// Marks the producers of the aborted transactions that start at or before
/// `last_offset` as aborted (Java's `consumeAbortedTransactionsUpTo`).
fn note_aborted_up_to(
    pending: &mut BTreeSet<(i64, i64)>,
    aborted_producers: &mut HashSet<i64>,
    last_offset: i64,
) {
    while let Some(&(first, producer)) = pending.first() {
        if first > last_offset {
            break;
        }
        pending.pop_first();
        aborted_producers.insert(producer);
    }
}

#[cfg(test)]
mod tests {
    use rskafka::chrono::{TimeZone, Utc};
    use rskafka::client::partition::{AbortedTransaction, CorruptRecordBatch, FetchedRecordBatch};
    use rskafka::record::Record;

    use super::*;

    fn record(offset: i64) -> RecordAndOffset {
        RecordAndOffset {
            record: Record {
                key: Some(offset.to_string().into_bytes()),
                value: Some(b"v".to_vec()),
                headers: Default::default(),
                timestamp: Utc.timestamp_millis_opt(0).single().expect("epoch"),
            },
            offset,
        }
    }

    /// A data batch of `n` records from `base`.
    fn data(base: i64, n: i64, producer_id: i64, transactional: bool) -> FetchedRecordBatch {
        FetchedRecordBatch {
            base_offset: base,
            last_offset: base + n - 1,
            producer_id,
            producer_epoch: 0,
            is_transactional: transactional,
            control: None,
            records: (base..base + n).map(record).collect(),
        }
    }

    fn plain(base: i64, n: i64) -> FetchedRecordBatch {
        data(base, n, -1, false)
    }

    fn txn(base: i64, n: i64, producer_id: i64) -> FetchedRecordBatch {
        data(base, n, producer_id, true)
    }

    fn marker(offset: i64, producer_id: i64, kind: ControlRecordType) -> FetchedRecordBatch {
        FetchedRecordBatch {
            base_offset: offset,
            last_offset: offset,
            producer_id,
            producer_epoch: 0,
            is_transactional: true,
            control: Some(kind),
            records: vec![],
        }
    }

    fn answer(batches: Vec<FetchedRecordBatch>, aborted: &[(i64, i64)]) -> FetchDetailed {
        let end = batches.last().map_or(0, |b| b.last_offset + 1);
        FetchDetailed {
            batches,
            corrupt: None,
            high_watermark: end,
            last_stable_offset: Some(end),
            aborted_transactions: aborted
                .iter()
                .map(|&(producer_id, first_offset)| AbortedTransaction {
                    producer_id,
                    first_offset,
                })
                .collect(),
        }
    }

    fn offsets(b: &FetchedBatch) -> Vec<i64> {
        b.records.iter().map(|r| r.offset).collect()
    }

    /// A fetch that lands on a lone marker returns nothing but moves past it.
    #[test]
    fn lone_marker_moves_the_position() {
        let got = read_committed(
            5,
            answer(vec![marker(5, 7, ControlRecordType::Commit)], &[]),
        );
        assert!(got.records.is_empty());
        assert_eq!(got.next_offset, 6);
        assert_eq!(got.control_records, 1);
    }

    /// Committed transactional records are applied; the COMMIT marker is skipped.
    #[test]
    fn committed_transaction_is_applied() {
        let got = read_committed(
            0,
            answer(
                vec![
                    txn(0, 3, 7),
                    marker(3, 7, ControlRecordType::Commit),
                    plain(4, 2),
                ],
                &[],
            ),
        );
        assert_eq!(offsets(&got), [0, 1, 2, 4, 5]);
        assert_eq!(
            (got.next_offset, got.control_records, got.aborted_records),
            (6, 1, 0)
        );
    }

    /// Aborted records are dropped, interleaved plain and other producers' records kept.
    #[test]
    fn aborted_transaction_is_dropped_and_neighbours_kept() {
        // P1 commits 0..2 and 5, P2 aborts 2..4 and 6; plain 4 and 8.
        let got = read_committed(
            0,
            answer(
                vec![
                    txn(0, 2, 1),
                    txn(2, 2, 2),
                    plain(4, 1),
                    txn(5, 1, 1),
                    txn(6, 1, 2),
                    marker(7, 2, ControlRecordType::Abort),
                    plain(8, 1),
                    marker(9, 1, ControlRecordType::Commit),
                ],
                &[(2, 2)],
            ),
        );
        assert_eq!(offsets(&got), [0, 1, 4, 5, 8]);
        assert_eq!(got.aborted_records, 3);
        assert_eq!(got.control_records, 2);
        assert_eq!(got.next_offset, 10);
    }

    /// After its ABORT marker, a producer's next transaction is read again.
    #[test]
    fn abort_marker_ends_the_aborted_span() {
        let got = read_committed(
            0,
            answer(
                vec![
                    txn(0, 2, 3),
                    marker(2, 3, ControlRecordType::Abort),
                    txn(3, 2, 3),
                    marker(5, 3, ControlRecordType::Commit),
                ],
                &[(3, 0)],
            ),
        );
        assert_eq!(offsets(&got), [3, 4]);
        assert_eq!(got.aborted_records, 2);
    }

    /// Two aborted transactions of one producer: both spans dropped.
    #[test]
    fn two_aborted_transactions_of_one_producer() {
        let got = read_committed(
            0,
            answer(
                vec![
                    txn(0, 1, 4),
                    marker(1, 4, ControlRecordType::Abort),
                    plain(2, 1),
                    txn(3, 1, 4),
                    marker(4, 4, ControlRecordType::Abort),
                ],
                &[(4, 0), (4, 3)],
            ),
        );
        assert_eq!(offsets(&got), [2]);
        assert_eq!(got.aborted_records, 2);
    }

    /// A non-transactional batch of an aborted producer id (idempotent) is not dropped.
    #[test]
    fn only_transactional_batches_are_aborted() {
        let got = read_committed(
            0,
            answer(
                vec![
                    txn(0, 1, 5),
                    data(1, 1, 5, false),
                    marker(2, 5, ControlRecordType::Abort),
                ],
                &[(5, 0)],
            ),
        );
        assert_eq!(offsets(&got), [1]);
    }

    /// Records before the requested offset are dropped, but their batch still counts for the position.
    #[test]
    fn records_below_the_requested_offset_are_dropped() {
        let got = read_committed(3, answer(vec![plain(0, 5)], &[]));
        assert_eq!(offsets(&got), [3, 4]);
        assert_eq!(got.next_offset, 5);
    }

    /// An aborted transaction that began before the requested offset is still dropped.
    #[test]
    fn aborted_transaction_started_before_the_requested_offset() {
        let got = read_committed(
            2,
            answer(
                vec![
                    txn(0, 2, 6),
                    txn(2, 2, 6),
                    marker(4, 6, ControlRecordType::Abort),
                    plain(5, 1),
                ],
                &[(6, 0)],
            ),
        );
        assert_eq!(offsets(&got), [5]);
        assert_eq!(got.aborted_records, 2);
    }

    /// An empty batch claiming offset 0 in the answer for an empty partition (as Tansu sends) does not move the position past the high watermark.
    #[test]
    fn empty_batch_of_an_empty_partition_does_not_move_the_position() {
        let mut a = answer(vec![data(0, 1, -1, false)], &[]);
        a.batches[0].records.clear();
        a.high_watermark = 0;
        a.last_stable_offset = Some(0);
        assert_eq!(read_committed(0, a.clone()).next_offset, 0);
        a.last_stable_offset = None;
        assert_eq!(read_committed(0, a).next_offset, 0);
    }

    /// An empty answer leaves the position where it was.
    #[test]
    fn empty_answer_keeps_the_position() {
        let got = read_committed(9, answer(vec![], &[]));
        assert_eq!(got.next_offset, 9);
        assert!(got.records.is_empty());
    }

    /// Batches at or past the last stable offset are neither applied nor stepped over.
    #[test]
    fn nothing_at_or_past_the_last_stable_offset() {
        let mut a = answer(vec![plain(0, 2), txn(2, 2, 8)], &[]);
        a.last_stable_offset = Some(2);
        let got = read_committed(0, a);
        assert_eq!(offsets(&got), [0, 1]);
        assert_eq!(got.next_offset, 2);
    }

    /// A corrupt batch: the records before it, and the position stops at its first offset.
    #[test]
    fn corrupt_batch_stops_the_position() {
        let mut a = answer(vec![plain(0, 2)], &[]);
        a.corrupt = Some(CorruptRecordBatch {
            base_offset: 2,
            last_offset: Some(4),
            raw: vec![1, 2, 3],
            error: "CRC error".to_owned(),
        });
        let got = read_committed(0, a);
        assert_eq!(offsets(&got), [0, 1]);
        assert_eq!(got.next_offset, 2);
        let c = got.corrupt.expect("corrupt");
        assert_eq!(
            (c.first_offset, c.last_offset, c.raw),
            (2, Some(4), vec![1, 2, 3])
        );
    }
}
