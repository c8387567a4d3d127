//! `foodpipe consume`: a member of a consumer group that folds the
//! partitions assigned to it into PostgreSQL.
//!
//! Per owned partition, from the offset stored in `consumer_offsets`:
//!
//! ```text
//! fetch → decode each record → apply the batch in ONE transaction
//! (history, view, dead letters, next offset, lease check) → commit
//! ```
//!
//! Because the offset commits with the rows, a crash anywhere leaves the
//! database equal to the fold of exactly the records before the stored
//! offset; the restarted consumer fetches the rest (invariant 3).
//!
//! The parts, each an actor that owns its state (see docs/design.md,
//! "The consumer at run time"):
//!
//! - [`coordinator`]: membership with heartbeats on their own timer, the
//!   rebalance decision (`group::rebalance`), takes (concurrent, bounded),
//!   starting and stopping workers, `--until-caught-up`.
//! - [`fetcher`]: one fetch round at a time for every owned partition,
//!   with a shared wait and a shared byte budget.
//! - [`worker`]: one per owned partition: apply, commit, and one exit
//!   that says why the tenure ended.
//! - [`status`]: what every partition is doing, behind `/healthz`, the
//!   metrics and the state line in `group describe`.
//! - [`offsets`]: taking a partition and checking its stored offset
//!   against the log (invariant 8).
//! - [`mirror`]: the stored offsets copied to the broker's group
//!   coordinator for the Kafka tools (never read back).
//! - [`error`]: errors whose [`Action`](error::Action) says retry,
//!   re-take or stop.

mod brokers;
mod coordinator;
mod dlt;
pub mod error;
mod fetcher;
mod keys;
mod mirror;
mod offsets;
mod status;
mod worker;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use events::{DecodeError, ErrorKind};
use kafka::KafkaConfig;
use serde::Serialize;
use store::{SourceRecord, StoreConfig};

pub use error::{Action, Error};
pub use status::StoppedPartition;

/// Where a partition goes on when it has no stored offset, or its stored
/// offset is no longer on the broker (Kafka's `auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// From the oldest record still on the broker: the whole history.
    #[default]
    Earliest,
    /// From the log end: only records produced from now on.
    Latest,
    /// Stop the partition with an error and let a person decide.
    Fail,
}

impl OffsetReset {
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
            OffsetReset::Fail => "fail",
        }
    }
}

/// What to do with a record batch that cannot be decoded (bad CRC, an
/// unknown codec, a truncated or garbled body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnCorruptBatch {
    /// Stop the partition loudly; the others go on. A person decides.
    #[default]
    Stop,
    /// Record the batch's offset range and raw bytes in `dead_letters`
    /// (kind `corrupt_batch`) and go on after it.
    Skip,
}

pub use crate::observe::{DEFAULT_METRICS_ADDR, MetricsListen};

/// Everything `consume` needs.
#[derive(Debug, Clone)]
pub struct ConsumeConfig {
    pub kafka: KafkaConfig,
    pub store: StoreConfig,
    pub topic: String,
    /// The consumer group whose offsets are used and stored.
    pub group: String,
    /// Stop once the stored offset of every partition of the topic has
    /// reached the high watermark seen at start, whichever member applied
    /// it.
    pub until_caught_up: bool,
    /// Upper bound of one fetch, per partition (Kafka's
    /// `max.partition.fetch.bytes`).
    pub fetch_max_bytes: i32,
    /// How long the broker may hold a fetch round open waiting for records
    /// when no owned partition has any waiting (`fetch.max.wait.ms`).
    pub fetch_max_wait: Duration,
    /// Record values above this go to dead letters as `oversize`.
    pub max_record_bytes: usize,
    pub offset_reset: OffsetReset,
    pub on_corrupt_batch: OnCorruptBatch,
    /// Cap of the backoff between retries of a failed fetch or commit.
    pub max_backoff: Duration,
    /// Bytes fetched but not yet committed, over all partitions: half for
    /// the fetch round in flight, half for batches waiting to be applied.
    /// Memory does not grow with the backlog or the partition count.
    pub max_inflight_bytes: usize,
    /// PostgreSQL connections for committing batches; partitions beyond it
    /// wait their turn for a connection (PostgreSQL allows 100 in all by
    /// default, shared by every member).
    pub db_connections: usize,
    /// Partitions taken at once when an assignment arrives. A take is
    /// mostly round trips to the broker (metadata, ListOffsets), so many
    /// at once keep the broker's connection busy instead of waiting.
    pub take_concurrency: usize,
    pub metrics: MetricsListen,
    /// A partition with lag that has not committed for this long makes
    /// `/healthz` answer 503, naming it and what it waits for.
    pub stall_timeout: Duration,
    /// Also copy each dead letter to this topic, with the error in headers.
    pub dead_letter_topic: Option<String>,
    /// Copy the stored offsets of the partitions this member holds to the
    /// broker's group coordinator this often, for the Kafka tools
    /// (`None`: never). PostgreSQL stays the source of truth.
    pub mirror_interval: Option<Duration>,
    /// This member's id in the group; a restart with the same id within the
    /// session timeout keeps its partitions (static membership). A second
    /// process started with a live id takes it over and the first stops.
    /// `None` picks `host-pid-random`.
    pub member_id: Option<String>,
    /// How often the member heartbeats and re-reads the group.
    pub heartbeat_interval: Duration,
    /// A member silent for this long is expired by the others.
    pub session_timeout: Duration,
    /// A member no broker has answered for this long (while it still
    /// reaches PostgreSQL) counts itself cut off from the brokers, and its
    /// partitions go to members that reach them (none move when every
    /// member is cut off). Also bounds every request to a broker.
    pub broker_timeout: Duration,
    pub assignor: group::Assignor,
    /// With `until_caught_up`: stop each partition after its last record
    /// timestamped at or before this time (`replay --until`), found with
    /// the broker's offset-for-timestamp lookup.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// With `until_caught_up`: stop each partition exactly at this offset
    /// (`rebuild` following the live consumers' position); a partition not
    /// listed gets nothing.
    pub targets: Option<BTreeMap<i32, i64>>,
    /// Draw a progress bar per partition on stderr (with a target).
    pub progress: bool,
    /// The SQL projections this member makes sure are attached at start
    /// (the built-in ones and a `--projections` directory's). Batches
    /// apply every projection attached in the registry, whichever member
    /// added it.
    pub projections: Vec<store::Definition>,
}

impl Default for ConsumeConfig {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            store: StoreConfig::default(),
            topic: "food-orders".to_owned(),
            group: "order-processors".to_owned(),
            until_caught_up: false,
            fetch_max_bytes: 512 * 1024,
            fetch_max_wait: Duration::from_millis(500),
            max_record_bytes: 1024 * 1024,
            offset_reset: OffsetReset::Earliest,
            on_corrupt_batch: OnCorruptBatch::Stop,
            max_backoff: Duration::from_secs(10),
            max_inflight_bytes: 32 * 1024 * 1024,
            db_connections: 8,
            take_concurrency: 32,
            metrics: MetricsListen::Off,
            stall_timeout: Duration::from_secs(60),
            dead_letter_topic: None,
            mirror_interval: Some(Duration::from_secs(5)),
            member_id: None,
            heartbeat_interval: Duration::from_secs(1),
            session_timeout: Duration::from_secs(10),
            broker_timeout: Duration::from_secs(15),
            assignor: group::Assignor::Range,
            until: None,
            targets: None,
            progress: false,
            projections: store::projection::builtins(),
        }
    }
}

/// What happened on one partition.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionSummary {
    pub partition: i32,
    /// The stored offset when this run took the partition.
    pub start_offset: i64,
    /// The stored offset when this run let go of it.
    pub next_offset: i64,
    /// The last high watermark the broker reported.
    pub high_watermark: i64,
    pub batches: u64,
    /// Events written to history.
    pub events: u64,
    pub dead_letters: u64,
    /// Records skipped because their event was already applied.
    pub duplicates: u64,
}

impl PartitionSummary {
    /// Adds a later tenure on the same partition.
    fn merge(&mut self, later: PartitionSummary) {
        if self.batches == 0 && self.events == 0 && self.next_offset == 0 {
            self.partition = later.partition;
            self.start_offset = later.start_offset;
        }
        self.next_offset = later.next_offset;
        self.high_watermark = self.high_watermark.max(later.high_watermark);
        self.batches += later.batches;
        self.events += later.events;
        self.dead_letters += later.dead_letters;
        self.duplicates += later.duplicates;
    }
}

/// What a consume run did.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumeSummary {
    pub topic: String,
    pub group: String,
    /// This member's id in the group.
    pub member: String,
    /// The partitions this member applied records of, in this run.
    pub partitions: Vec<PartitionSummary>,
    /// Partitions stopped on an error retrying cannot fix, by any member
    /// of the group, when the run ended.
    pub stopped: Vec<StoppedPartition>,
    /// With `--until-caught-up`: every partition reached its target.
    pub caught_up: bool,
    /// True if a shutdown signal ended the run.
    pub interrupted: bool,
}

impl ConsumeSummary {
    /// Events written to history over all partitions.
    pub fn events(&self) -> u64 {
        self.partitions.iter().map(|p| p.events).sum()
    }
}

impl fmt::Display for ConsumeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "group {} (member {}) on {}: applied {} events",
            self.group,
            self.member,
            self.topic,
            self.events()
        )?;
        for p in &self.partitions {
            writeln!(
                f,
                "  partition {:>3}: offset {} -> {} (high watermark {}, lag {}), {} events, {} dead letters, {} duplicates",
                p.partition,
                p.start_offset,
                p.next_offset,
                p.high_watermark,
                (p.high_watermark - p.next_offset).max(0),
                p.events,
                p.dead_letters,
                p.duplicates
            )?;
        }
        for s in &self.stopped {
            writeln!(f, "  partition {:>3}: STOPPED: {}", s.partition, s.error)?;
        }
        if self.interrupted {
            writeln!(f, "stopped by signal")?;
        }
        Ok(())
    }
}

/// Joins the consumer group and folds the partitions assigned to this
/// member into PostgreSQL until `shutdown` completes (or, with
/// `until_caught_up`, until the whole group has reached the targets).
/// Rebalances as members come and go; the batch in hand when a partition
/// is given up, or when `shutdown` fires, is finished first.
///
/// Partitions that stop on a permanent error are in the summary's
/// `stopped`; the run goes on with the others.
pub async fn run(
    config: ConsumeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ConsumeSummary, Error> {
    coordinator::run(config, shutdown).await
}

/// Turns a fetched record into a [`SourceRecord`], decoding its value: what
/// each partition's worker does with every record it is handed (public for
/// the benchmarks, which replay captured fetch answers through it).
pub fn decode(record: kafka::RecordAndOffset, max_record_bytes: usize) -> SourceRecord {
    let kafka::RecordAndOffset { record, offset } = record;
    let event = match &record.value {
        Some(v) if v.len() > max_record_bytes => Err(DecodeError::new(
            ErrorKind::Oversize,
            format!(
                "value of {} bytes exceeds --max-record-bytes {max_record_bytes}",
                v.len()
            ),
        )),
        value => events::decode(value.as_deref()),
    };
    SourceRecord {
        offset,
        timestamp: record.timestamp,
        // Moved, not copied: only a dead letter stores them.
        headers: record.headers.into_iter().collect(),
        key: record.key,
        value: record.value,
        event,
    }
}

/// `host-pid-xxxx`: unique per process, readable in `group describe`.
fn default_member_id() -> String {
    format!(
        "{}-{}-{:04x}",
        hostname(),
        std::process::id(),
        process_token().as_u128() & 0xffff
    )
}

/// A token telling this process from any other, now or later, on any host:
/// the start time in nanoseconds, the pid and a hash of the host name.
///
/// Not from the OS's random source on purpose: a static binary in an empty
/// root (`FROM scratch` without `/dev`) may have none, and uniqueness, not
/// unpredictability, is what is needed.
fn process_token() -> uuid::Uuid {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // FNV-1a of the host name.
    let host = hostname().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    uuid::Uuid::from_u64_pair(nanos, host ^ u64::from(std::process::id()))
}

/// This host's name (member ids; the holder `rebuild` records).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
