//! The producing half shared by `produce` and `send`: a source thread makes
//! records, this module places them on partitions and drives the
//! [`Producer`], then reports.
//!
//! ```text
//! source (blocking thread) ──chunks, bounded channel──> partitioner ──> Producer ──> broker
//! ```
//!
//! The channel is bounded and the producer's budget is bounded, so a source
//! faster than the broker is slowed down, not buffered without end. Records
//! cross it in chunks ([`Chunks`]): one channel operation, and at most one
//! wake-up of the producing side, per chunk instead of per record. A source
//! sends what it gathered before anything that may wait (input, a paced
//! rate), so a chunk never holds a record back.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use kafka::{KafkaConfig, Producer, ProducerConfig, Record};
use partition::RoundRobin;
use serde::Serialize;
use tokio::sync::mpsc;

/// A record on its way to the topic; the partition is chosen from its key.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub timestamp: DateTime<Utc>,
}

/// Where a source reports why it stopped early, if it failed.
pub(crate) type SourceError = Arc<Mutex<Option<String>>>;

/// Records in the channel between the source and the producer: enough to
/// keep the producer busy, small enough not to matter for memory.
const CHANNEL_RECORDS: usize = 4096;

/// Records per chunk at most.
const CHUNK_RECORDS: usize = 256;

/// The producing side stopped (shutdown, or a failure): the source ends.
#[derive(Debug)]
pub(crate) struct Stopped;

/// A source's end of the channel: records gathered into chunks.
pub(crate) struct Chunks {
    tx: mpsc::Sender<Vec<Outgoing>>,
    chunk: Vec<Outgoing>,
}

impl Chunks {
    fn new(tx: mpsc::Sender<Vec<Outgoing>>) -> Self {
        Self {
            tx,
            chunk: Vec::with_capacity(CHUNK_RECORDS),
        }
    }

    /// Adds a record, sending the chunk once it is full.
    pub(crate) fn push(&mut self, out: Outgoing) -> Result<(), Stopped> {
        self.chunk.push(out);
        if self.chunk.len() >= CHUNK_RECORDS {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Sends the records gathered so far. A source calls it before it may
    /// wait (for input, for the next event's time), so that no record
    /// waits in a chunk for records that are not there yet.
    pub(crate) fn flush(&mut self) -> Result<(), Stopped> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_RECORDS));
        self.tx.blocking_send(chunk).map_err(|_| Stopped)
    }
}

/// Where and how `produce` and `send` write: the one destination config
/// both share.
#[derive(Debug, Clone)]
pub struct Destination {
    pub kafka: KafkaConfig,
    pub topic: String,
    /// Partitions to create the topic with if it does not exist; an
    /// existing topic keeps its own count (with a warning if it differs).
    pub partitions: u32,
    pub producer: ProducerConfig,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct DriveConfig {
    pub destination: Destination,
    /// The number of records expected, for the progress bar.
    pub expected: Option<u64>,
}

/// Events of one partition.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionCount {
    pub partition: i32,
    pub events: u64,
}

/// What a produce or send run did; printed as text or JSON.
#[derive(Debug, Clone, Serialize)]
pub struct ProduceSummary {
    pub topic: String,
    pub partitions: u32,
    pub topic_created: bool,
    /// Records the broker acknowledged.
    pub events: u64,
    /// Records given up on after every retry.
    pub failed: u64,
    pub last_error: Option<String>,
    /// Key and value bytes acknowledged.
    pub bytes: u64,
    /// From the first record handed to the producer to the last
    /// acknowledgement (connecting is not included).
    pub elapsed_secs: f64,
    pub events_per_sec: f64,
    pub mb_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub per_partition: Vec<PartitionCount>,
    /// True if a shutdown signal stopped the run early.
    pub interrupted: bool,
}

impl fmt::Display for ProduceSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "produced {} events ({:.1} MB) to {} in {:.2} s: {:.0} events/s, {:.2} MB/s",
            self.events,
            self.bytes as f64 / 1e6,
            self.topic,
            self.elapsed_secs,
            self.events_per_sec,
            self.mb_per_sec
        )?;
        writeln!(
            f,
            "latency send→ack: p50 {:.1} ms, p99 {:.1} ms",
            self.latency_p50_ms, self.latency_p99_ms
        )?;
        for p in &self.per_partition {
            writeln!(f, "  partition {:>3}: {:>8} events", p.partition, p.events)?;
        }
        if self.failed > 0 {
            writeln!(
                f,
                "LOST {} events: {}",
                self.failed,
                self.last_error.as_deref().unwrap_or("unknown error")
            )?;
        }
        if self.interrupted {
            writeln!(f, "interrupted: stopped early by a signal")?;
        }
        Ok(())
    }
}

/// Connects, makes sure the topic exists, runs `source` on a blocking
/// thread and produces everything it sends until it ends or `shutdown`
/// completes. Everything handed to the producer is delivered or reported
/// lost before this returns.
pub(crate) async fn drive<S>(
    config: DriveConfig,
    source: S,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<ProduceSummary>
where
    S: FnOnce(&mut Chunks, SourceError) + Send + 'static,
{
    let DriveConfig {
        destination: config,
        expected,
    } = config;
    let client = kafka::connect(&config.kafka).await?;
    let topic = kafka::ensure_topic(&client, &config.topic, config.partitions).await?;
    if !topic.created && topic.partitions != config.partitions {
        tracing::warn!(
            "topic {} already exists with {} partitions (--partitions {} applies only when creating it); using {}",
            config.topic,
            topic.partitions,
            config.partitions,
            topic.partitions
        );
    }
    let producer = Producer::start(
        &client,
        &config.topic,
        topic.partitions,
        config.producer.clone(),
    )
    .await?;

    let bar = progress_bar(config.progress, expected);
    let (tx, mut rx) = mpsc::channel::<Vec<Outgoing>>(CHANNEL_RECORDS / CHUNK_RECORDS);
    let source_error: SourceError = Arc::default();
    let source_thread = {
        let source_error = Arc::clone(&source_error);
        tokio::task::spawn_blocking(move || {
            let mut chunks = Chunks::new(tx);
            source(&mut chunks, source_error);
            // The last records; an error means the producing side stopped.
            let _ = chunks.flush();
        })
    };

    // ensure_topic refuses a topic without partitions; the type carries it.
    let partitions =
        NonZeroU32::new(topic.partitions).ok_or_else(|| kafka::Error::NoPartitions {
            topic: config.topic.clone(),
        })?;
    let round_robin = RoundRobin::default();
    let started = Instant::now();
    let mut interrupted = false;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_tick = Instant::now();
    loop {
        let next = tokio::select! {
            biased;
            () = &mut shutdown => { interrupted = true; break; }
            next = rx.recv() => next,
        };
        let Some(chunk) = next else { break };
        let sent = async {
            for out in chunk {
                let partition = match &out.key {
                    Some(key) => partition::partition_for_key(key, partitions),
                    None => round_robin.next(partitions),
                };
                let record = Record {
                    key: out.key,
                    value: Some(out.value),
                    headers: BTreeMap::new(),
                    timestamp: out.timestamp,
                };
                producer.send(partition, record).await?;
            }
            Ok::<_, kafka::Error>(())
        };
        tokio::select! {
            biased;
            () = &mut shutdown => { interrupted = true; break; }
            sent = sent => sent?,
        }
        if last_tick.elapsed() > Duration::from_millis(100) {
            bar.set_position(producer.delivered());
            last_tick = Instant::now();
        }
    }
    // Closing the channel stops the source at its next record.
    drop(rx);
    let _ = source_thread.await;
    bar.set_message("flushing");
    let report = producer.close().await;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);

    let source_failure = source_error.lock().ok().and_then(|mut e| e.take());
    if let Some(e) = source_failure {
        anyhow::bail!("{e} (after {} records were delivered)", report.delivered());
    }
    let latency = report.latency_us();
    Ok(ProduceSummary {
        topic: config.topic,
        partitions: topic.partitions,
        topic_created: topic.created,
        events: report.delivered(),
        failed: report.failed(),
        last_error: report.partitions.iter().find_map(|p| p.last_error.clone()),
        bytes: report.bytes(),
        elapsed_secs: elapsed,
        events_per_sec: report.delivered() as f64 / elapsed,
        mb_per_sec: report.bytes() as f64 / 1e6 / elapsed,
        latency_p50_ms: latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency_p99_ms: latency.value_at_quantile(0.99) as f64 / 1000.0,
        per_partition: report
            .partitions
            .iter()
            .map(|p| PartitionCount {
                partition: p.partition,
                events: p.delivered,
            })
            .collect(),
        interrupted,
    })
}

fn progress_bar(enabled: bool, expected: Option<u64>) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    match expected {
        Some(n) => {
            let bar = ProgressBar::new(n);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} events ({per_sec}, eta {eta}) {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {pos} events ({per_sec}) {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        }
    }
}
