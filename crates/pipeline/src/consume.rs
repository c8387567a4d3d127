//! `foodpipe consume`: fold every partition of the topic into PostgreSQL.
//!
//! Per partition, from the offset stored in `consumer_offsets`:
//!
//! ```text
//! fetch (bounded bytes, bounded wait) → decode each record → apply the
//! batch in ONE transaction (history, view, dead letters, next offset) →
//! commit → fetch on from the new offset
//! ```
//!
//! Because the offset commits with the rows, a crash anywhere leaves the
//! database equal to the fold of exactly the records before the stored
//! offset; the restarted consumer fetches the rest (invariant 3).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use events::{DecodeError, ErrorKind};
use kafka::{KafkaConfig, OffsetAt, PartitionReader};
use serde::Serialize;
use store::{Batch, Gap, SourceRecord, Store, StoreConfig, StoredOffset};
use tokio::sync::watch;

use crate::observe::PartitionMetrics;
use crate::retry::Backoff;
use kafka::Client as RsClient;

/// Where a partition goes on when it has no stored offset, or its stored
/// offset is no longer on the broker (Kafka's `auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// From the oldest record still on the broker: the whole history.
    #[default]
    Earliest,
    /// From the log end: only records produced from now on.
    Latest,
    /// Stop with an error and let a person decide.
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

/// Everything `consume` needs.
#[derive(Debug, Clone)]
pub struct ConsumeConfig {
    pub kafka: KafkaConfig,
    pub store: StoreConfig,
    pub topic: String,
    /// The consumer group whose offsets are used and stored.
    pub group: String,
    /// Stop once every partition reaches the high watermark seen at start.
    pub until_caught_up: bool,
    /// Upper bound of one fetch, per partition (`fetch.max.bytes`-like).
    pub fetch_max_bytes: i32,
    /// How long the broker may hold a fetch open waiting for new records.
    pub fetch_max_wait: Duration,
    /// Record values above this go to dead letters as `oversize`.
    pub max_record_bytes: usize,
    pub offset_reset: OffsetReset,
    /// Cap of the backoff between retries of a failed fetch or commit.
    pub max_backoff: Duration,
    /// Bytes fetched but not yet committed, over all partitions. Each
    /// partition holds at most one fetch (`fetch_max_bytes`) at a time, and
    /// fetches wait while the total would exceed this, so memory does not
    /// grow with the backlog.
    pub max_inflight_bytes: usize,
    /// Where to serve `/metrics` and `/healthz`; `None` for nowhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Also copy each dead letter to this topic, with the error in headers.
    pub dead_letter_topic: Option<String>,
    /// This member's id in the group; a restart with the same id within the
    /// session timeout keeps its partitions (static membership). `None`
    /// picks `host-pid-random`.
    pub member_id: Option<String>,
    /// How often the member refreshes its heartbeat and re-reads the group.
    pub heartbeat_interval: Duration,
    /// A member silent for this long is expired by the others.
    pub session_timeout: Duration,
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
}

impl Default for ConsumeConfig {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            store: StoreConfig::default(),
            topic: "food-orders".to_owned(),
            group: "order-processors".to_owned(),
            until_caught_up: false,
            fetch_max_bytes: 1024 * 1024,
            fetch_max_wait: Duration::from_millis(500),
            max_record_bytes: 1024 * 1024,
            offset_reset: OffsetReset::Earliest,
            max_backoff: Duration::from_secs(10),
            max_inflight_bytes: 32 * 1024 * 1024,
            metrics_addr: None,
            dead_letter_topic: None,
            member_id: None,
            heartbeat_interval: Duration::from_secs(1),
            session_timeout: Duration::from_secs(10),
            assignor: group::Assignor::Range,
            until: None,
            targets: None,
            progress: false,
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

/// What a consume run did.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumeSummary {
    pub topic: String,
    pub group: String,
    /// This member's id in the group.
    pub member: String,
    pub partitions: Vec<PartitionSummary>,
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
        if self.interrupted {
            writeln!(f, "stopped by signal")?;
        }
        Ok(())
    }
}

/// Joins the consumer group and folds the partitions assigned to this
/// member into PostgreSQL until `shutdown` completes (or, with
/// `until_caught_up`, until each of them reaches the high watermark it had
/// when taken). Rebalances as members come and go; the batch in hand when a
/// partition is given up, or when `shutdown` fires, is finished first.
pub async fn run(
    config: ConsumeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<ConsumeSummary> {
    let store = Store::connect(&StoreConfig {
        idle_in_transaction_timeout: Some(config.session_timeout),
        ..config.store.clone()
    })
    .await?;
    store.migrate().await?;
    let client = Arc::new(kafka::connect(&config.kafka).await?);
    let mut partitions = kafka::existing_topic_partitions(&client, &config.topic).await?;
    // One connection per partition applying a batch, one for the rest.
    store.resize_pool(partitions as usize + 2);

    if let Some(addr) = config.metrics_addr {
        let health = health_check(store.clone(), Arc::clone(&client), config.topic.clone());
        crate::observe::serve(addr, health).await?;
    }

    // The fetch budget is in bytes; a single fetch never asks for more
    // than the whole budget.
    let fetch_max_bytes = config
        .fetch_max_bytes
        .min(i32::try_from(config.max_inflight_bytes).unwrap_or(i32::MAX))
        .max(1024);
    let budget = Arc::new(tokio::sync::Semaphore::new(
        config.max_inflight_bytes.max(fetch_max_bytes as usize),
    ));
    let dead_letter_topic = match &config.dead_letter_topic {
        Some(topic) => Some(Arc::new(
            DeadLetterTopic::open(&client, topic, partitions).await?,
        )),
        None => None,
    };
    let config = Arc::new(ConsumeConfig {
        fetch_max_bytes,
        ..config
    });
    let member = config.member_id.clone().unwrap_or_else(default_member_id);
    let host = hostname();
    let pid = std::process::id() as i32;
    tracing::info!(group = %config.group, member = %member, assignor = config.assignor.as_str(), "joining consumer group");

    let bars = indicatif::MultiProgress::new();
    if !config.progress {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut owned: BTreeMap<i32, Owned> = BTreeMap::new();
    let mut caught_up: BTreeSet<i32> = BTreeSet::new();
    let mut summaries: BTreeMap<i32, PartitionSummary> = BTreeMap::new();
    let mut interrupted = false;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut next_heartbeat = tokio::time::Instant::now();
    let mut generation = -1i64;
    let mut mine: Vec<i32> = Vec::new();
    let mut failure: Option<anyhow::Error> = None;

    loop {
        // Reap partition tasks that ended: caught up, gave up, or lost the lease.
        let ended: Vec<i32> = owned
            .iter()
            .filter(|(_, o)| o.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in ended {
            let Some(o) = owned.remove(&p) else { continue };
            match o.task.await {
                Ok(Ok(outcome)) => {
                    if outcome.caught_up {
                        caught_up.insert(p);
                    }
                    if outcome.lease_lost {
                        tracing::warn!(
                            partition = p,
                            "lease lost: another member owns the partition now"
                        );
                    } else {
                        let _ = store
                            .release_lease(&config.group, &config.topic, p, &member, o.epoch)
                            .await;
                    }
                    merge(summaries.entry(p).or_default(), outcome.summary);
                }
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(e) => {
                    failure.get_or_insert(anyhow::anyhow!("partition task failed: {e}"));
                }
            }
        }
        if failure.is_some() {
            break;
        }

        if tokio::time::Instant::now() >= next_heartbeat {
            next_heartbeat = tokio::time::Instant::now() + config.heartbeat_interval;
            match store
                .heartbeat(&config.group, &member, &host, pid, config.session_timeout)
                .await
            {
                Ok(view) => {
                    for gone in &view.expired {
                        tracing::warn!(group = %config.group, member = %gone, "expired a silent member");
                    }
                    if let Ok(Some(n)) = kafka::topic_partitions(&client, &config.topic).await
                        && n != partitions
                    {
                        tracing::info!(
                            from = partitions,
                            to = n,
                            "the topic's partition count changed"
                        );
                        partitions = n;
                        store.resize_pool(partitions as usize + 2);
                    }
                    let previous = if config.assignor == group::Assignor::Sticky {
                        previous_assignment(&store, &config, &view.members).await
                    } else {
                        group::assign::Assignment::new()
                    };
                    let assignment = config.assignor.assign(&view.members, partitions, &previous);
                    let now_mine = assignment.get(&member).cloned().unwrap_or_default();
                    if view.generation != generation || now_mine != mine {
                        tracing::info!(
                            generation = view.generation,
                            members = view.members.len(),
                            partitions = ?now_mine,
                            "assignment"
                        );
                    }
                    generation = view.generation;
                    mine = now_mine;
                    // Give up what is no longer ours: the task finishes the
                    // batch in hand, then the lease is released when reaped.
                    for (p, o) in &owned {
                        if !mine.contains(p) {
                            let _ = o.stop.send(true);
                        }
                    }
                    // Take what is ours once its previous owner let go.
                    for &p in &mine {
                        if owned.contains_key(&p) || caught_up.contains(&p) {
                            continue;
                        }
                        match take_partition(&store, &client, &config, &member, &view.members, p)
                            .await
                        {
                            Ok(Some((lease, reader, start))) => {
                                let exact =
                                    config.targets.as_ref().and_then(|t| t.get(&p).copied());
                                let target = match (config.until_caught_up, config.until) {
                                    (false, _) => None,
                                    // Listed targets are exact; unlisted partitions: nothing.
                                    (true, _) if config.targets.is_some() => {
                                        Some(exact.unwrap_or(0))
                                    }
                                    (true, None) => Some(reader.offset(OffsetAt::Latest).await?),
                                    (true, Some(t)) => {
                                        // The first record after `t`; none: the log end.
                                        let after = t + chrono::Duration::milliseconds(1);
                                        let at = reader.offset(OffsetAt::Timestamp(after)).await?;
                                        if at >= 0 {
                                            Some(at)
                                        } else {
                                            Some(reader.offset(OffsetAt::Latest).await?)
                                        }
                                    }
                                };
                                let bar = bars.add(indicatif::ProgressBar::new(
                                    target.unwrap_or(start.next_offset).max(0) as u64,
                                ));
                                bar.set_style(
                                    indicatif::ProgressStyle::with_template(
                                        "partition {prefix:>3} {bar:40} {pos}/{len} ({per_sec})",
                                    )
                                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                                );
                                bar.set_prefix(p.to_string());
                                bar.set_position(start.next_offset.max(0) as u64);
                                let (stop, stop_rx) = watch::channel(false);
                                let task = tokio::spawn(consume_partition(
                                    Arc::clone(&config),
                                    store.clone(),
                                    reader,
                                    start,
                                    target,
                                    Arc::clone(&budget),
                                    dead_letter_topic.clone(),
                                    stop_rx,
                                    (member.clone(), lease.epoch),
                                    bar,
                                ));
                                tracing::info!(
                                    partition = p,
                                    epoch = lease.epoch,
                                    offset = start.next_offset,
                                    "took partition"
                                );
                                owned.insert(
                                    p,
                                    Owned {
                                        epoch: lease.epoch,
                                        stop,
                                        task,
                                    },
                                );
                            }
                            Ok(None) => {
                                tracing::debug!(
                                    partition = p,
                                    "still held by another member; waiting"
                                );
                            }
                            Err(e) => {
                                failure.get_or_insert(e);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat failed; retrying");
                }
            }
        }
        if failure.is_some() {
            break;
        }
        if config.until_caught_up
            && generation >= 0
            && owned.is_empty()
            && mine.iter().all(|p| caught_up.contains(p))
        {
            break;
        }
        tokio::select! {
            () = &mut shutdown => {
                interrupted = true;
                break;
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }

    // Stop every partition (each finishes its batch in hand), release the
    // leases and leave the group at once.
    for o in owned.values() {
        let _ = o.stop.send(true);
    }
    for (p, o) in std::mem::take(&mut owned) {
        match o.task.await {
            Ok(Ok(outcome)) => merge(summaries.entry(p).or_default(), outcome.summary),
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(anyhow::anyhow!("partition task failed: {e}"));
            }
        }
    }
    if let Err(e) = store.leave(&config.group, &member).await {
        tracing::warn!(error = %e, "could not leave the group; it expires after the session timeout");
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(ConsumeSummary {
        topic: config.topic.clone(),
        group: config.group.clone(),
        member,
        partitions: summaries.into_values().collect(),
        interrupted,
    })
}

/// A partition this member is consuming.
struct Owned {
    epoch: i64,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<PartitionOutcome>>,
}

/// How a partition task ended.
struct PartitionOutcome {
    summary: PartitionSummary,
    /// It reached its target (with `until_caught_up`).
    caught_up: bool,
    /// A commit found the lease gone: another member took the partition.
    lease_lost: bool,
}

/// Adds a later tenure on a partition to its summary.
fn merge(total: &mut PartitionSummary, part: PartitionSummary) {
    if total.batches == 0 && total.events == 0 && total.next_offset == 0 {
        total.partition = part.partition;
        total.start_offset = part.start_offset;
    }
    total.next_offset = part.next_offset;
    total.high_watermark = part.high_watermark;
    total.batches += part.batches;
    total.events += part.events;
    total.dead_letters += part.dead_letters;
    total.duplicates += part.duplicates;
}

/// The current owners, as the previous assignment the sticky assignor keeps.
async fn previous_assignment(
    store: &Store,
    config: &ConsumeConfig,
    live: &[String],
) -> group::assign::Assignment {
    let mut previous = group::assign::Assignment::new();
    if let Ok(owners) = store.owners(&config.group, &config.topic).await {
        for o in owners {
            if let Some(owner) = o.owner.filter(|m| live.contains(m)) {
                previous.entry(owner).or_default().push(o.partition);
            }
        }
    }
    previous
}

/// `host-pid-random`: unique per process, readable in `group describe`.
fn default_member_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{:04x}",
        hostname(),
        std::process::id(),
        nanos & 0xffff
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// What to do with a partition's stored offset, given the broker's view.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    /// The stored offset is good: go on from it.
    Resume,
    /// The stored offset cannot be used; continue from `to`.
    Reset {
        reason: &'static str,
        to: i64,
        new_incarnation: i32,
    },
    /// The policy says stop, with this message.
    Fail(String),
}

/// Decides whether a stored offset is still valid on the broker (pure).
///
/// `previous_matches` tells whether the record before the stored offset is
/// the one that was applied (`None`: nothing to compare, e.g. retention
/// removed it or nothing was applied yet).
fn decide(
    stored: &StoredOffset,
    earliest: i64,
    latest: i64,
    previous_matches: Option<bool>,
    policy: OffsetReset,
    partition: i32,
) -> Start {
    let next = stored.next_offset;
    let (reason, new_incarnation, what) = if next < earliest {
        // The same log, trimmed by retention: offsets keep their meaning.
        (
            "retention",
            stored.incarnation,
            format!(
                "stored offset {next} is below the earliest offset {earliest} on the broker ({} records removed by retention)",
                earliest - next
            ),
        )
    } else if next > latest {
        // Offsets before `latest` are not the ones applied: a new log.
        (
            "log_end",
            stored.incarnation + 1,
            format!(
                "stored offset {next} is past the log end {latest} (was the topic deleted and recreated?)"
            ),
        )
    } else if previous_matches == Some(false) {
        (
            "recreated",
            stored.incarnation + 1,
            format!(
                "the record at offset {} is not the one that was applied (the topic was deleted and recreated)",
                next - 1
            ),
        )
    } else {
        return Start::Resume;
    };
    let to = match policy {
        OffsetReset::Earliest => earliest,
        OffsetReset::Latest => latest,
        OffsetReset::Fail => {
            return Start::Fail(format!(
                "partition {partition}: {what}; rerun with --offset-reset earliest or latest to go on"
            ));
        }
    };
    Start::Reset {
        reason,
        to,
        new_incarnation,
    }
}

/// Takes the lease on `partition` if its previous owner let go, then makes
/// sure the stored offset is still backed by the broker: created by the
/// reset policy if the group has none, and reset by it (and recorded in
/// `offset_gaps`) if the broker no longer has the log it points into.
/// Returns `None` while another live member holds the partition.
async fn take_partition(
    store: &Store,
    client: &RsClient,
    config: &ConsumeConfig,
    member: &str,
    live: &[String],
    partition: i32,
) -> anyhow::Result<Option<(store::Lease, PartitionReader, StoredOffset)>> {
    let reader = PartitionReader::new(client, &config.topic, partition).await?;
    let earliest = reader.offset(OffsetAt::Earliest).await?;
    let latest = reader.offset(OffsetAt::Latest).await?;
    let initial = match config.offset_reset {
        OffsetReset::Earliest => Some(earliest),
        OffsetReset::Latest => Some(latest),
        OffsetReset::Fail => None,
    };
    let lease = match store
        .take_lease(
            &config.group,
            &config.topic,
            partition,
            member,
            live,
            initial,
        )
        .await?
    {
        Some(lease) => lease,
        None => {
            if initial.is_none()
                && store
                    .stored_offset(&config.group, &config.topic, partition)
                    .await?
                    .is_none()
            {
                anyhow::bail!(
                    "partition {partition}: group {} has no stored offset and --offset-reset is fail; use earliest or latest",
                    config.group
                );
            }
            return Ok(None);
        }
    };
    let stored = lease.stored;

    // Is the record before the stored offset still the one we applied?
    // Compared by fingerprint (stored with every commit) or, for offsets
    // stored before fingerprints existed, by the event id in history.
    let previous_matches = if stored.next_offset > earliest && stored.next_offset <= latest {
        let previous = stored.next_offset - 1;
        let fetched = reader.fetch(previous, 64 * 1024, Duration::ZERO).await?;
        match fetched.records.into_iter().find(|r| r.offset == previous) {
            None => None,
            Some(r) => match stored.last_fingerprint {
                Some(expected) => Some(
                    store::fold::fingerprint(
                        r.record.timestamp,
                        r.record.key.as_deref(),
                        r.record.value.as_deref(),
                    ) == expected,
                ),
                None => {
                    let applied = store
                        .event_id_at(&config.topic, partition, stored.incarnation, previous)
                        .await?;
                    applied.map(|id| {
                        events::decode(r.record.value.as_deref())
                            .is_ok_and(|event| event.event_id == id)
                    })
                }
            },
        }
    } else {
        None
    };

    let start = match decide(
        &stored,
        earliest,
        latest,
        previous_matches,
        config.offset_reset,
        partition,
    ) {
        Start::Resume => stored,
        Start::Fail(message) => anyhow::bail!(message),
        Start::Reset {
            reason,
            to,
            new_incarnation,
        } => {
            let gap = Gap {
                group: &config.group,
                topic: &config.topic,
                partition,
                reason,
                stored,
                earliest,
                latest,
                reset_to: to,
                new_incarnation,
                policy: config.offset_reset.as_str(),
            };
            anyhow::ensure!(
                store.reset_offset(&gap).await?,
                "partition {partition}: the stored offset moved while it was being reset; another consumer of group {} is running",
                config.group
            );
            tracing::warn!(
                partition,
                reason,
                stored = stored.next_offset,
                earliest,
                latest,
                reset_to = to,
                "stored offset unusable ({reason}); continuing from {to} by --offset-reset {}; recorded in offset_gaps",
                config.offset_reset.as_str()
            );
            StoredOffset {
                next_offset: to,
                incarnation: new_incarnation,
                last_fingerprint: None,
            }
        }
    };
    Ok(Some((lease, reader, start)))
}

/// A fetched, decoded batch on its way from the fetcher to the applier,
/// holding its share of the byte budget until it is committed.
struct Fetched {
    from_offset: i64,
    next_offset: i64,
    high_watermark: i64,
    records: Vec<SourceRecord>,
    started: std::time::Instant,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// One partition: a fetcher that reads one batch ahead, and an applier
/// that commits batches in offset order. Fetching the next batch while the
/// current one is written hides the broker's latency behind PostgreSQL's.
#[allow(clippy::too_many_arguments)]
async fn consume_partition(
    config: Arc<ConsumeConfig>,
    store: Store,
    reader: PartitionReader,
    start: StoredOffset,
    target: Option<i64>,
    budget: Arc<tokio::sync::Semaphore>,
    dead_letter_topic: Option<Arc<DeadLetterTopic>>,
    stop: watch::Receiver<bool>,
    lease: (String, i64),
    bar: indicatif::ProgressBar,
) -> anyhow::Result<PartitionOutcome> {
    let partition = reader.partition();
    let metrics = PartitionMetrics::new(&config.group, &config.topic, partition);
    // Capacity 1: one batch waiting while one is applied.
    let (tx, rx) = tokio::sync::mpsc::channel::<Fetched>(1);
    let fetcher = fetch_loop(
        Arc::clone(&config),
        reader,
        start.next_offset,
        target,
        budget,
        stop.clone(),
        tx,
        metrics.clone(),
    );
    let applier = apply_loop(
        config,
        store,
        partition,
        start,
        rx,
        stop,
        metrics,
        dead_letter_topic,
        lease,
        bar,
    );
    let (last_high_watermark, outcome) = tokio::join!(fetcher, applier);
    let mut outcome = outcome?;
    outcome.summary.high_watermark = outcome
        .summary
        .high_watermark
        .max(last_high_watermark)
        .max(target.unwrap_or(0));
    outcome.caught_up = target.is_some_and(|t| outcome.summary.next_offset >= t);
    Ok(outcome)
}

/// Fetches batches from `offset` on and hands them to the applier, until
/// the target is reached, `stop` is set or the applier is gone. Returns
/// the last high watermark seen.
#[allow(clippy::too_many_arguments)]
async fn fetch_loop(
    config: Arc<ConsumeConfig>,
    reader: PartitionReader,
    mut offset: i64,
    target: Option<i64>,
    budget: Arc<tokio::sync::Semaphore>,
    mut stop: watch::Receiver<bool>,
    tx: tokio::sync::mpsc::Sender<Fetched>,
    metrics: PartitionMetrics,
) -> i64 {
    let partition = reader.partition();
    let mut high_watermark = offset;
    let mut backoff = Backoff::new(config.max_backoff);
    // Caught up with a known target: no need to hold fetches open long.
    let max_wait = if target.is_some() {
        config.fetch_max_wait.min(Duration::from_millis(100))
    } else {
        config.fetch_max_wait
    };
    loop {
        if target.is_some_and(|t| offset >= t) || *stop.borrow() {
            break;
        }
        // Reserve the most this fetch can bring before asking for it.
        let permit = tokio::select! {
            _ = stop.changed() => break,
            permit = Arc::clone(&budget).acquire_many_owned(config.fetch_max_bytes as u32) => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let started = std::time::Instant::now();
        let fetched = tokio::select! {
            _ = stop.changed() => break,
            fetched = reader.fetch(offset, config.fetch_max_bytes, max_wait) => fetched,
        };
        let fetched = match fetched {
            Ok(f) => {
                backoff = Backoff::new(config.max_backoff);
                f
            }
            Err(e) => {
                drop(permit);
                metrics.retry("fetch");
                let delay = backoff.next_delay();
                tracing::warn!(partition, offset, error = %e, "fetch failed; retrying in {delay:?}");
                tokio::select! {
                    _ = stop.changed() => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        high_watermark = fetched.high_watermark;
        let mut fetched = fetched;
        // A fetch returns whole batches; a target (caught-up point or
        // `--until`) is exact, so records at or past it are not applied.
        if let Some(t) = target {
            fetched.records.retain(|r| r.offset < t);
        }
        let Some(last) = fetched.records.last() else {
            continue;
        };
        let next_offset = last.offset + 1;
        let records: Vec<SourceRecord> = fetched
            .records
            .into_iter()
            .map(|r| decode(r, config.max_record_bytes))
            .collect();
        let batch = Fetched {
            from_offset: offset,
            next_offset,
            high_watermark,
            records,
            started,
            _permit: permit,
        };
        if tx.send(batch).await.is_err() {
            break; // The applier stopped.
        }
        offset = next_offset;
    }
    high_watermark
}

/// Copies of dead letters on a Kafka topic, for tools that watch topics
/// rather than tables. The `dead_letters` table stays the record: a copy is
/// published after its batch commits (so a rolled-back batch publishes
/// nothing) and a copy that cannot be published is logged, not retried
/// forever.
struct DeadLetterTopic {
    topic: String,
    partitions: Vec<kafka::PartitionWriter>,
}

impl DeadLetterTopic {
    async fn open(client: &RsClient, topic: &str, source_partitions: u32) -> anyhow::Result<Self> {
        let info = kafka::ensure_topic(client, topic, source_partitions).await?;
        let mut partitions = Vec::with_capacity(info.partitions as usize);
        for p in 0..info.partitions as i32 {
            partitions.push(kafka::PartitionWriter::new(client, topic, p).await?);
        }
        Ok(Self {
            topic: topic.to_owned(),
            partitions,
        })
    }

    /// Publishes the dead letters of one committed batch: same key and
    /// value, the error and the source position as headers.
    async fn publish(
        &self,
        source_topic: &str,
        partition: i32,
        records: &[SourceRecord],
        dead: &[store::fold::DeadLetter],
    ) {
        let Some(writer) = self
            .partitions
            .get(partition as usize % self.partitions.len())
        else {
            return;
        };
        let out: Vec<kafka::Record> = dead
            .iter()
            .filter_map(|d| records.get(d.index).map(|r| (d, r)))
            .map(|(d, r)| kafka::Record {
                key: r.key.clone(),
                value: r.value.clone(),
                headers: [
                    ("foodpipe.error.kind".to_owned(), d.kind.as_bytes().to_vec()),
                    (
                        "foodpipe.error.message".to_owned(),
                        d.message.clone().into_bytes(),
                    ),
                    (
                        "foodpipe.source".to_owned(),
                        format!("{source_topic}/{partition}/{}", r.offset).into_bytes(),
                    ),
                ]
                .into_iter()
                .collect(),
                timestamp: r.timestamp,
            })
            .collect();
        let n = out.len();
        if let Err(e) = writer.write(out).await {
            tracing::error!(
                topic = %self.topic,
                partition,
                records = n,
                error = %e,
                "could not copy dead letters to the dead-letter topic; they are in the dead_letters table"
            );
        }
    }
}

/// Commits fetched batches in order, retrying transient PostgreSQL
/// failures, until the fetcher is done or `stop` is set (the batch in hand
/// is finished first).
#[allow(clippy::too_many_arguments)]
async fn apply_loop(
    config: Arc<ConsumeConfig>,
    store: Store,
    partition: i32,
    start: StoredOffset,
    mut rx: tokio::sync::mpsc::Receiver<Fetched>,
    mut stop: watch::Receiver<bool>,
    metrics: PartitionMetrics,
    dead_letter_topic: Option<Arc<DeadLetterTopic>>,
    lease: (String, i64),
    bar: indicatif::ProgressBar,
) -> anyhow::Result<PartitionOutcome> {
    let mut lease_lost = false;
    let mut summary = PartitionSummary {
        partition,
        start_offset: start.next_offset,
        next_offset: start.next_offset,
        high_watermark: start.next_offset,
        ..PartitionSummary::default()
    };
    loop {
        if *stop.borrow() {
            break;
        }
        let fetched = tokio::select! {
            _ = stop.changed() => break,
            fetched = rx.recv() => match fetched {
                Some(f) => f,
                None => break,
            },
        };
        let batch = Batch {
            group: &config.group,
            topic: &config.topic,
            partition,
            from_offset: fetched.from_offset,
            next_offset: fetched.next_offset,
            records: &fetched.records,
            incarnation: start.incarnation,
            lease: Some((lease.0.as_str(), lease.1)),
        };
        let mut backoff = Backoff::new(config.max_backoff);
        let applied = loop {
            match store.apply_batch(&batch).await {
                Ok(applied) => break Some(applied),
                Err(e) if e.is_transient() => {
                    metrics.retry("commit");
                    let delay = backoff.next_delay();
                    tracing::warn!(partition, offset = fetched.from_offset, error = %e, "commit failed, nothing stored; retrying in {delay:?}");
                    // A shutdown while PostgreSQL is away gives the batch up:
                    // nothing of it was stored, the next run fetches it again.
                    if *stop.borrow() {
                        break None;
                    }
                    tokio::select! {
                        _ = stop.changed() => break None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(store::Error::LeaseLost { .. }) => {
                    // Fenced: another member took the partition (we were
                    // paused or slow). Nothing of this batch was stored.
                    lease_lost = true;
                    break None;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let Some(applied) = applied else { break };
        metrics.batch(&applied, fetched.started.elapsed().as_secs_f64());
        metrics.positions(fetched.next_offset, fetched.high_watermark);
        tracing::debug!(
            partition,
            first_offset = fetched.from_offset,
            last_offset = fetched.next_offset - 1,
            rows = fetched.records.len(),
            events = applied.events,
            dead_letters = applied.dead_letters.len(),
            duration_ms = fetched.started.elapsed().as_millis() as u64,
            "batch committed"
        );
        summary.batches += 1;
        summary.events += applied.events as u64;
        summary.dead_letters += applied.dead_letters.len() as u64;
        if let Some(dlt) = &dead_letter_topic
            && !applied.dead_letters.is_empty()
        {
            dlt.publish(
                &config.topic,
                partition,
                &fetched.records,
                &applied.dead_letters,
            )
            .await;
        }
        summary.duplicates += applied.duplicates as u64;
        summary.next_offset = fetched.next_offset;
        summary.high_watermark = fetched.high_watermark;
        bar.set_position(fetched.next_offset.max(0) as u64);
        // Dropping `fetched` here frees its bytes from the budget.
    }
    Ok(PartitionOutcome {
        summary,
        caught_up: false,
        lease_lost,
    })
}

/// `/healthz`: the broker answers metadata for the topic and PostgreSQL
/// answers a query.
fn health_check(store: Store, client: Arc<RsClient>, topic: String) -> crate::observe::HealthCheck {
    Arc::new(move || {
        let store = store.clone();
        let client = Arc::clone(&client);
        let topic = topic.clone();
        Box::pin(async move {
            match kafka::topic_partitions(&client, &topic).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(format!(
                        "broker answers, but topic {topic:?} does not exist"
                    ));
                }
                Err(e) => return Err(format!("broker: {e}")),
            }
            store.ping().await.map_err(|e| format!("{e}"))
        })
    })
}

/// Turns a fetched record into a [`SourceRecord`], decoding its value.
fn decode(record: kafka::RecordAndOffset, max_record_bytes: usize) -> SourceRecord {
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
        key: record.key,
        value: record.value,
        event,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(next_offset: i64) -> StoredOffset {
        StoredOffset {
            next_offset,
            incarnation: 2,
            last_fingerprint: Some(7),
        }
    }

    /// A stored offset inside the log whose previous record matches (or cannot be checked) is used as it is.
    #[test]
    fn valid_offsets_resume() {
        for matches in [Some(true), None] {
            assert_eq!(
                decide(&stored(50), 0, 100, matches, OffsetReset::Fail, 0),
                Start::Resume
            );
        }
        assert_eq!(
            decide(&stored(100), 0, 100, None, OffsetReset::Fail, 0),
            Start::Resume
        );
        assert_eq!(
            decide(&stored(10), 10, 100, None, OffsetReset::Fail, 0),
            Start::Resume
        );
    }

    /// Below the earliest offset: a retention gap, same log, reset by policy.
    #[test]
    fn retention_gap_keeps_the_incarnation() {
        assert_eq!(
            decide(&stored(5), 20, 100, None, OffsetReset::Earliest, 0),
            Start::Reset {
                reason: "retention",
                to: 20,
                new_incarnation: 2
            }
        );
        assert_eq!(
            decide(&stored(5), 20, 100, None, OffsetReset::Latest, 0),
            Start::Reset {
                reason: "retention",
                to: 100,
                new_incarnation: 2
            }
        );
    }

    /// Past the log end, or a different record before the offset: a new log, a new incarnation.
    #[test]
    fn recreated_topic_is_a_new_incarnation() {
        assert_eq!(
            decide(&stored(150), 0, 40, None, OffsetReset::Earliest, 0),
            Start::Reset {
                reason: "log_end",
                to: 0,
                new_incarnation: 3
            }
        );
        assert_eq!(
            decide(&stored(50), 0, 400, Some(false), OffsetReset::Earliest, 0),
            Start::Reset {
                reason: "recreated",
                to: 0,
                new_incarnation: 3
            }
        );
    }

    /// With the fail policy every unusable offset is an error naming the partition and the numbers.
    #[test]
    fn fail_policy_explains() {
        let Start::Fail(message) = decide(&stored(150), 0, 40, None, OffsetReset::Fail, 4) else {
            panic!("must fail");
        };
        assert!(
            message.contains("partition 4") && message.contains("150") && message.contains("40"),
            "{message}"
        );
        assert!(message.contains("--offset-reset"), "{message}");
    }
}
