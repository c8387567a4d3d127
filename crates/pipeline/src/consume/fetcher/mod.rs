//! The fetcher: one actor per `consume` process that fetches for every
//! partition the member owns, the way Kafka's own consumers do.
//!
//! A fetch per partition, each waiting for records on its own (rskafka
//! gives every partition client a connection of its own), costs the broker
//! a connection and a waiting request per partition: with 400 idle
//! partitions, 400 long polls at all times, and Tansu polls its sqlite
//! store for each. So the fetcher asks for all ready partitions in one
//! round with one shared wait, like the Java consumer's `Fetcher` sends one
//! FetchRequest per broker (`kafka::TopicFetcher`: one request per leader,
//! sent over one of that leader's partition connections):
//!
//! - A partition is *ready* when its worker has room for one more batch
//!   (one applied, one waiting: the read-ahead) and it is not backing off.
//! - If any owned partition is known to have records waiting (position
//!   below the last high watermark seen), rounds do not wait at all, name
//!   only busy partitions (as many as the round's bytes can fill), and idle
//!   partitions ride along at most once per `--fetch-max-wait`; only when
//!   every partition is idle does a round long-poll.
//! - Bytes are reserved from the shared budget (`--max-inflight-bytes`)
//!   for the round as a whole before it is sent, split among the batches
//!   it brings back, and each batch holds its share until committed. Idle
//!   partitions cost nothing while they wait, so they never hold budget a
//!   busy partition needs.
//! - A round names partitions least recently served first, so when the
//!   byte limit of a round cuts it short, the same partitions are not
//!   always last (Tansu even lets the first partition of a request take
//!   all of the request's bytes).
//!
//! Transient fetch errors back the partition off here (and health says so);
//! any other error is handed to the partition's worker, which decides.
//!
//! One broker behaviour needs care: Tansu answers a fetch of a batch it
//! cannot serve (snappy) by closing the connection, so the whole round
//! fails with it, every partition in it. So a partition
//! whose fetch failed is next fetched *alone*. If its lone fetches keep
//! failing while the broker answers ListOffsets for it in between, the
//! fault is that partition's, not the broker's: after [`STRIKES`] such
//! failures it is handed to its worker as broken, and stops loudly rather
//! than being retried for ever.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka::TopicFetcher;
use store::SourceRecord;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use super::ConsumeConfig;
use super::brokers::BrokerWatch;
use super::status::{State, Status};
use crate::retry::Backoff;

mod round;

/// Lone fetches of one partition that fail while the broker answers
/// ListOffsets for it, before the partition is given up as broken.
pub(crate) const STRIKES: u32 = 3;

/// A fetched batch on its way to its partition's worker, holding its share
/// of the byte budget until it is committed. Its records are decoded by
/// the worker ([`Fetched::decode`]), not here: the fetcher is one task for
/// every partition, the workers are a task each, spread over the runtime's
/// threads, and each decodes its own batches in order.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// The offset it was fetched from: the worker's stored offset.
    pub from_offset: i64,
    /// The offset to store once it is applied.
    pub next_offset: i64,
    pub high_watermark: i64,
    /// The records as fetched, not decoded yet.
    pub fetched: Vec<kafka::RecordAndOffset>,
    /// The records decoded (or made here, for a batch skipped as corrupt).
    pub records: Vec<SourceRecord>,
    pub started: Instant,
    pub _permit: Option<OwnedSemaphorePermit>,
}

impl Fetched {
    /// Decodes the fetched records (JSON, validation) into `records`.
    pub(crate) fn decode(&mut self, max_record_bytes: usize) {
        let fetched = std::mem::take(&mut self.fetched);
        self.records.extend(
            fetched
                .into_iter()
                .map(|r| super::decode(r, max_record_bytes)),
        );
    }
}

/// What the fetcher hands a worker.
#[derive(Debug)]
pub(crate) enum Delivery {
    Batch(Fetched),
    /// A fetch error retrying will not fix (offset out of range, topic
    /// gone, a response that cannot be read): the worker decides.
    Failed(kafka::Error),
    /// The position is past the log end: the log is shorter than the
    /// stored offset, so the topic was recreated (Tansu answers such a
    /// fetch with an empty batch rather than `OffsetOutOfRange`).
    PastLogEnd {
        offset: i64,
        high_watermark: i64,
    },
    /// The batch at the position cannot be decoded (bad CRC, unknown
    /// codec, garbled records): the worker stops the partition.
    Corrupt(kafka::CorruptBatch),
    /// Every fetch of this partition at `offset` fails, while the broker
    /// answers other requests about it: see [`STRIKES`].
    Broken {
        offset: i64,
        attempts: u32,
        error: kafka::Error,
    },
}

/// A partition for the fetcher to serve.
#[derive(Debug)]
pub(crate) struct Assigned {
    pub partition: i32,
    /// Its reader, from the take (its connection to the leader).
    pub reader: kafka::PartitionReader,
    /// The worker's stored offset: where fetching starts.
    pub offset: i64,
    /// The log end seen when the partition was taken.
    pub high_watermark: i64,
    /// Stop fetching here (exclusive), for `--until-caught-up`.
    pub target: Option<i64>,
    pub worker: mpsc::Sender<Delivery>,
}

#[derive(Debug)]
enum Command {
    Add(Assigned),
    Remove(i32),
}

/// The only way in to the fetcher actor.
#[derive(Debug, Clone)]
pub(crate) struct FetcherHandle {
    commands: mpsc::UnboundedSender<Command>,
    /// Workers notify this when they take a batch, so a fetcher waiting
    /// for room wakes up.
    room: Arc<Notify>,
}

impl FetcherHandle {
    pub(crate) fn add(&self, assigned: Assigned) {
        let _ = self.commands.send(Command::Add(assigned));
    }

    pub(crate) fn remove(&self, partition: i32) {
        let _ = self.commands.send(Command::Remove(partition));
    }

    /// For workers: a batch was taken off the channel.
    pub(crate) fn room(&self) -> Arc<Notify> {
        Arc::clone(&self.room)
    }
}

/// One partition's fetch state.
#[derive(Debug)]
struct Slot {
    offset: i64,
    high_watermark: i64,
    target: Option<i64>,
    worker: mpsc::Sender<Delivery>,
    backoff: Backoff,
    retry_at: Option<tokio::time::Instant>,
    /// Its last fetch failed: fetch it alone until one succeeds.
    alone: bool,
    /// Consecutive lone fetches that failed while the broker answered.
    strikes: u32,
}

impl Slot {
    fn finished(&self) -> bool {
        self.target.is_some_and(|t| self.offset >= t)
    }

    /// Records are known to be waiting.
    fn busy(&self) -> bool {
        self.offset < self.high_watermark
    }
}

/// Starts the fetcher; it runs until the handle and every clone are
/// dropped (or the process ends).
pub(crate) fn spawn(
    config: Arc<ConsumeConfig>,
    status: Status,
    budget: Arc<Semaphore>,
    brokers: BrokerWatch,
) -> (FetcherHandle, tokio::task::JoinHandle<()>) {
    let (commands, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Notify::new());
    let topic = TopicFetcher::empty(&config.topic);
    let fetcher = Fetcher {
        config,
        status,
        budget,
        brokers,
        topic,
        commands: rx,
        room: Arc::clone(&room),
        slots: BTreeMap::new(),
        round: 0,
        served: BTreeMap::new(),
        idle_polled: None,
        last_records: None,
        record_size: 512,
    };
    let task = tokio::spawn(fetcher.run());
    (FetcherHandle { commands, room }, task)
}

/// The wait of an idle round while the stream is live (see
/// [`Fetcher::idle_wait`]). Measured at 2,000 events/s on the memory
/// engine (docs/benchmarks.md, "The latest run", 2 cores): 5 ms gave p50
/// 19-21 ms and p99 27-31 ms in five runs; 2 ms p50 11-13 ms but p99
/// anywhere from 18 to 57 ms (smaller batches, more commits, and the
/// commits' own tail); 1 ms worse still. A steady p99 wins.
const LIVE_WAIT: Duration = Duration::from_millis(5);
/// How long after its last records a stream counts as live.
const LIVE_FOR: Duration = Duration::from_secs(1);

struct Fetcher {
    config: Arc<ConsumeConfig>,
    status: Status,
    budget: Arc<Semaphore>,
    /// Told of every answer a broker gives a fetch round.
    brokers: BrokerWatch,
    /// The owned partitions' leaders; one Fetch per leader a round.
    topic: TopicFetcher,
    commands: mpsc::UnboundedReceiver<Command>,
    room: Arc<Notify>,
    slots: BTreeMap<i32, Slot>,
    /// Rounds so far.
    round: u64,
    /// The round in which each partition last brought records: the order
    /// of the next round (least recently served first).
    served: BTreeMap<i32, u64>,
    /// When idle partitions were last asked for records.
    idle_polled: Option<Instant>,
    /// When a round last brought records: while that is recent, the stream
    /// is live and an idle round waits only [`LIVE_WAIT`].
    last_records: Option<Instant>,
    /// The average bytes of a record fetched so far (a moving average):
    /// how much a partition's lag is expected to bring.
    record_size: usize,
}

impl Fetcher {
    /// How long a round may wait for records when no owned partition has
    /// any waiting: `--fetch-max-wait`, or [`LIVE_WAIT`] while records came
    /// in the last [`LIVE_FOR`]. Kafka answers a long poll as soon as
    /// records arrive; a broker that holds it for the whole wait whatever
    /// arrives (Tansu 0.6.0) would otherwise add up to `--fetch-max-wait`
    /// to the latency of every event of a live stream. An idle topic still
    /// costs one request per `--fetch-max-wait`.
    fn idle_wait(&self) -> Duration {
        let live = self.last_records.is_some_and(|t| t.elapsed() < LIVE_FOR);
        if live {
            self.config.fetch_max_wait.min(LIVE_WAIT)
        } else {
            self.config.fetch_max_wait
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Add(a) => {
                self.topic.insert(a.reader);
                self.slots.insert(
                    a.partition,
                    Slot {
                        offset: a.offset,
                        high_watermark: a.high_watermark,
                        target: a.target,
                        worker: a.worker,
                        backoff: Backoff::new(self.config.max_backoff),
                        retry_at: None,
                        alone: false,
                        strikes: 0,
                    },
                );
            }
            Command::Remove(p) => {
                self.slots.remove(&p);
                self.served.remove(&p);
                self.topic.remove(p);
            }
        }
    }

    async fn run(mut self) {
        loop {
            // Take in every command that is waiting; stop when the
            // coordinator is gone.
            loop {
                match self.commands.try_recv() {
                    Ok(c) => self.apply(c),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            // Slots whose worker is gone are dropped.
            let gone: Vec<i32> = self
                .slots
                .iter()
                .filter(|(_, s)| s.worker.is_closed())
                .map(|(p, _)| *p)
                .collect();
            for p in gone {
                self.slots.remove(&p);
                self.topic.remove(p);
            }
            let now = tokio::time::Instant::now();
            let ready: Vec<i32> = self
                .slots
                .iter()
                .filter(|(_, s)| {
                    !s.finished() && s.worker.capacity() > 0 && s.retry_at.is_none_or(|t| t <= now)
                })
                .map(|(p, _)| *p)
                .collect();
            // While any partition has records waiting, rounds carry the
            // busy ones and do not wait; idle partitions come along at
            // most once per --fetch-max-wait (a broker such as Tansu does
            // work for every partition a request names, records or not).
            let any_busy = self.slots.values().any(Slot::busy);
            let idle_due = self
                .idle_polled
                .is_none_or(|t| t.elapsed() >= self.config.fetch_max_wait);
            let round: Vec<i32> = if any_busy && !idle_due {
                ready
                    .iter()
                    .copied()
                    .filter(|p| self.slots.get(p).is_some_and(Slot::busy))
                    .collect()
            } else {
                ready
            };
            if round.is_empty() {
                let next_retry = self.slots.values().filter_map(|s| s.retry_at).min();
                let idle_at = self
                    .idle_polled
                    .map(|t| tokio::time::Instant::from_std(t + self.config.fetch_max_wait));
                let wake = match (next_retry, idle_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                tokio::select! {
                    command = self.commands.recv() => match command {
                        Some(c) => self.apply(c),
                        None => return,
                    },
                    () = self.room.notified() => {}
                    () = sleep_until(wake) => {}
                }
                continue;
            }
            if round
                .iter()
                .any(|p| self.slots.get(p).is_some_and(|s| !s.busy()))
            {
                self.idle_polled = Some(Instant::now());
            }
            // A partition under suspicion goes alone, before the others.
            let round = match round
                .iter()
                .find(|p| self.slots.get(p).is_some_and(|s| s.alone))
            {
                Some(p) => vec![*p],
                None => round,
            };
            if !self.fetch_round(round).await {
                return;
            }
        }
    }
}

/// Whether a transient fetch failure counts against the partition (see
/// [`STRIKES`]): only a lone fetch that got no answer at all (the broker
/// closed the connection on it, as Tansu does for a batch it cannot serve)
/// while ListOffsets for the same partition was answered. A broker that
/// answers with an error code, `NotLeaderOrFollower` or
/// `LeaderNotAvailable` during a leader move or a rolling restart, says
/// the error is transient by its kind: that never stops a partition.
fn strikes_against_partition(alone: bool, broker_answers: bool, error: &kafka::Error) -> bool {
    alone && broker_answers && !error.broker_answered()
}

/// Where a fetch that found a corrupt batch was made.
#[derive(Debug, Clone, Copy)]
struct Position {
    /// The offset fetched: the worker's stored offset.
    from_offset: i64,
    high_watermark: i64,
    /// `--until-caught-up`'s stop (exclusive), if any.
    target: Option<i64>,
}

/// What to hand a worker for a batch that cannot be decoded: by default a
/// stop (the worker stops the partition, naming the offsets and the cause);
/// with `--on-corrupt-batch skip`, a batch of one dead letter holding the
/// raw bytes, whose commit moves the stored offset past it.
///
/// The skip batch starts where the fetch was made (`at.from_offset`), not
/// at the corrupt batch's first offset: Kafka answers a fetch inside a
/// batch with the whole batch, so after `group reset --to-offset`,
/// `--to-datetime` or at a replay's target the stored offset may lie
/// inside it, and a batch that does not start at the stored offset is
/// refused by the worker (it re-takes the partition, the fetch brings the
/// same batch, for ever). It ends past the corrupt batch, never past the
/// target, like any batch.
///
/// The dead letter is recorded at the fetched position too, and its
/// message names the batch's whole range. The batch's first offset would
/// lie outside what this commit covers, and it is the position an earlier
/// skip of the same batch from before it (the usual way) already recorded
/// (`dead_letters_position_key` is group, topic, partition, incarnation,
/// offset): a second skip from inside the batch after a reset would clash
/// with it. At the fetched position a clash means the very same skip was
/// made before, from the same position (a reset back to it), which is
/// what a clash means for any record consumed twice.
fn corrupt_delivery(
    config: &ConsumeConfig,
    partition: i32,
    corrupt: kafka::CorruptBatch,
    at: Position,
) -> Delivery {
    match (config.on_corrupt_batch, corrupt.last_offset) {
        // A batch wholly below the position is not the one at it: stop
        // rather than skip records that were never looked at.
        (super::OnCorruptBatch::Skip, Some(last)) if last >= at.from_offset => {
            let next_offset = at.target.map_or(last + 1, |t| t.min(last + 1));
            let message = format!(
                "record batch at offsets {}..={last} cannot be decoded: {}; offsets {}..={} skipped by --on-corrupt-batch skip (value: the batch as fetched)",
                corrupt.first_offset,
                corrupt.error,
                at.from_offset,
                next_offset - 1
            );
            tracing::error!(partition, first_offset = corrupt.first_offset, last_offset = last, from_offset = at.from_offset, cause = %corrupt.error, "skipping a batch that cannot be decoded; its bytes go to dead_letters");
            let record = SourceRecord {
                offset: at.from_offset,
                // The batch's own timestamps are inside what cannot be read.
                timestamp: chrono::Utc::now(),
                key: None,
                value: Some(corrupt.raw),
                headers: Vec::new(),
                event: Err(events::DecodeError::new(
                    events::ErrorKind::CorruptBatch,
                    message,
                )),
            };
            Delivery::Batch(Fetched {
                from_offset: at.from_offset,
                next_offset,
                high_watermark: at.high_watermark.max(next_offset),
                fetched: Vec::new(),
                records: vec![record],
                started: Instant::now(),
                _permit: None,
            })
        }
        _ => Delivery::Corrupt(corrupt),
    }
}

/// Orders a round: partitions that brought records longest ago (or never)
/// first, then by partition number.
fn least_recently_served_first(round: &mut [i32], served: &BTreeMap<i32, u64>) {
    round.sort_by_key(|p| (served.get(p).copied().unwrap_or(0), *p));
}

/// The bytes a record holds in memory, roughly: what the budget counts.
fn record_bytes(r: &kafka::RecordAndOffset) -> usize {
    let headers: usize = r
        .record
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    r.record.key.as_ref().map_or(0, Vec::len)
        + r.record.value.as_ref().map_or(0, Vec::len)
        + headers
        + 64
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
