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

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use events::{DecodeError, ErrorKind};
use kafka::{KafkaConfig, OffsetAt, PartitionReader};
use serde::Serialize;
use store::{Batch, SourceRecord, Store, StoreConfig};
use tokio::sync::watch;

use crate::retry::Backoff;

/// Where a partition with no stored offset starts (Kafka's
/// `auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// From the oldest record still on the broker: the whole history.
    #[default]
    Earliest,
    /// From the log end: only records produced from now on.
    Latest,
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
}

impl Default for ConsumeConfig {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            store: StoreConfig::default(),
            topic: "food-orders".to_owned(),
            group: "order-processors".to_owned(),
            until_caught_up: false,
            fetch_max_bytes: 4 * 1024 * 1024,
            fetch_max_wait: Duration::from_millis(500),
            max_record_bytes: 1024 * 1024,
            offset_reset: OffsetReset::Earliest,
            max_backoff: Duration::from_secs(10),
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
            "group {} on {}: applied {} events",
            self.group,
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

/// Folds the topic into PostgreSQL until `shutdown` completes (or, with
/// `until_caught_up`, until every partition reaches the high watermark it
/// had at start). The batch in hand when `shutdown` fires is finished.
pub async fn run(
    config: ConsumeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<ConsumeSummary> {
    let store = Store::connect(&config.store).await?;
    store.migrate().await?;
    let client = kafka::connect(&config.kafka).await?;
    let partitions = kafka::topic_partitions(&client, &config.topic)
        .await?
        .with_context(|| {
            format!(
                "topic {:?} does not exist: produce to it first, or check --topic",
                config.topic
            )
        })?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let interrupted = Arc::clone(&interrupted);
        tokio::spawn(async move {
            shutdown.await;
            interrupted.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = stop_tx.send(true);
        });
    }

    let config = Arc::new(config);
    let mut tasks = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions as i32 {
        let reader = PartitionReader::new(&client, &config.topic, partition).await?;
        let start = starting_offset(&store, &config, &reader).await?;
        let target = if config.until_caught_up {
            Some(reader.offset(OffsetAt::Latest).await?)
        } else {
            None
        };
        tasks.push(tokio::spawn(consume_partition(
            Arc::clone(&config),
            store.clone(),
            reader,
            start,
            target,
            stop_rx.clone(),
        )));
    }

    let mut summaries = Vec::with_capacity(tasks.len());
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(summary)) => summaries.push(summary),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::anyhow!("partition task failed: {e}"));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(ConsumeSummary {
        topic: config.topic.clone(),
        group: config.group.clone(),
        partitions: summaries,
        interrupted: interrupted.load(std::sync::atomic::Ordering::SeqCst),
    })
}

/// The stored offset of the partition, creating it by the reset policy
/// if the group has none, and moving it forward if the broker no longer
/// has the records it points at.
async fn starting_offset(
    store: &Store,
    config: &ConsumeConfig,
    reader: &PartitionReader,
) -> anyhow::Result<i64> {
    let partition = reader.partition();
    let earliest = reader.offset(OffsetAt::Earliest).await?;
    let latest = reader.offset(OffsetAt::Latest).await?;
    let initial = match config.offset_reset {
        OffsetReset::Earliest => earliest,
        OffsetReset::Latest => latest,
    };
    let stored = store
        .init_offset(&config.group, &config.topic, partition, initial)
        .await?;
    if stored < earliest {
        tracing::warn!(
            partition,
            stored,
            earliest,
            "stored offset is below the earliest offset on the broker (retention removed {} records); continuing from {earliest}",
            earliest - stored
        );
        store
            .move_offset(&config.group, &config.topic, partition, stored, earliest)
            .await?;
        return Ok(earliest);
    }
    if stored > latest {
        tracing::warn!(
            partition,
            stored,
            latest,
            "stored offset is past the log end: was the topic deleted and recreated? nothing is read until the log passes it"
        );
    }
    Ok(stored)
}

async fn consume_partition(
    config: Arc<ConsumeConfig>,
    store: Store,
    reader: PartitionReader,
    start: i64,
    target: Option<i64>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<PartitionSummary> {
    let partition = reader.partition();
    let mut summary = PartitionSummary {
        partition,
        start_offset: start,
        next_offset: start,
        high_watermark: target.unwrap_or(start),
        ..PartitionSummary::default()
    };
    let mut offset = start;
    let mut fetch_backoff = Backoff::new(config.max_backoff);
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
        let fetched = tokio::select! {
            _ = stop.changed() => break,
            fetched = reader.fetch(offset, config.fetch_max_bytes, max_wait) => fetched,
        };
        let fetched = match fetched {
            Ok(f) => {
                fetch_backoff = Backoff::new(config.max_backoff);
                f
            }
            Err(e) => {
                let delay = fetch_backoff.next_delay();
                tracing::warn!(partition, offset, error = %e, "fetch failed; retrying in {delay:?}");
                tokio::select! {
                    _ = stop.changed() => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        summary.high_watermark = fetched.high_watermark;
        let Some(last) = fetched.records.last() else {
            continue;
        };
        let next_offset = last.offset + 1;
        let records: Vec<SourceRecord> = fetched
            .records
            .into_iter()
            .map(|r| decode(r, config.max_record_bytes))
            .collect();
        let batch = Batch {
            group: &config.group,
            topic: &config.topic,
            partition,
            from_offset: offset,
            next_offset,
            records: &records,
        };

        let mut commit_backoff = Backoff::new(config.max_backoff);
        let applied = loop {
            match store.apply_batch(&batch).await {
                Ok(applied) => break Some(applied),
                Err(e) if e.is_transient() => {
                    let delay = commit_backoff.next_delay();
                    tracing::warn!(partition, offset, error = %e, "commit failed, nothing stored; retrying in {delay:?}");
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
                Err(e) => return Err(e.into()),
            }
        };
        let Some(applied) = applied else { break };
        tracing::debug!(
            partition,
            from = offset,
            to = next_offset,
            events = applied.events,
            dead_letters = applied.dead_letters,
            "batch committed"
        );
        summary.batches += 1;
        summary.events += applied.events as u64;
        summary.dead_letters += applied.dead_letters as u64;
        summary.duplicates += applied.duplicates as u64;
        offset = next_offset;
        summary.next_offset = offset;
    }
    Ok(summary)
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
