//! A batching producer on top of rskafka's per-partition `produce`.
//!
//! Kafka's Java producer and librdkafka collect records per partition and
//! send a partition's batch when it is full (`batch.size`) or has waited
//! long enough (`linger.ms`). rskafka only sends the batch it is given, so
//! this module does the collecting:
//!
//! ```text
//! send(p, record) ──> [budget: bytes in flight] ──> queue of partition p
//!                                                        │
//!                 task of partition p: fill a batch until batch_max_bytes
//!                 or linger elapsed, produce it (one request in flight per
//!                 partition, so order is kept), retry on failure, report
//! ```
//!
//! `send` waits while the bytes accepted but not yet acknowledged exceed
//! `max_inflight_bytes`: a slow broker slows the caller down instead of
//! growing a queue, so memory stays flat however many records are sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use rskafka::client::Client;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{Error, Result};

/// How the producer batches and how hard it tries.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a partition's batch waits for more records after its first
    /// one (`linger.ms`). librdkafka's default is 5 ms.
    pub linger: Duration,
    /// A batch is sent once it holds this many bytes of keys and values
    /// (`batch.size`). 1 MB is librdkafka's default and Kafka's default
    /// maximum message size.
    pub batch_max_bytes: usize,
    pub compression: Compression,
    /// Bytes accepted by `send` but not yet acknowledged, over all
    /// partitions; `send` waits above this.
    pub max_inflight_bytes: usize,
    /// How long a record may take from `send` to acknowledgement
    /// (`delivery.timeout.ms`, 120 s by default in Kafka). A failed batch
    /// is sent again with backoff until its oldest record is this old; then
    /// its records are reported lost. Batches that have waited this long
    /// in the queue fail without an attempt, so a dead broker is reported
    /// promptly instead of once per batch.
    pub delivery_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            batch_max_bytes: 1_000_000,
            compression: Compression::NoCompression,
            max_inflight_bytes: 32 * 1024 * 1024,
            delivery_timeout: Duration::from_secs(120),
        }
    }
}

/// A record waiting in a partition queue, with its share of the budget.
struct Pending {
    record: Record,
    size: usize,
    enqueued: Instant,
    /// Released (dropped) when the record is acknowledged or given up on.
    _permit: OwnedSemaphorePermit,
}

/// A record of a batch being sent, without its bytes.
struct InFlight {
    size: usize,
    enqueued: Instant,
    _permit: OwnedSemaphorePermit,
}

/// What happened to the records of one partition.
#[derive(Debug, Clone)]
pub struct PartitionReport {
    pub partition: i32,
    /// Records the broker acknowledged.
    pub delivered: u64,
    /// Key and value bytes of the delivered records.
    pub bytes: u64,
    /// Records given up on after every retry.
    pub failed: u64,
    /// Why the last failed batch failed.
    pub last_error: Option<String>,
    /// Send-to-acknowledgement latency of delivered records, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl PartitionReport {
    fn new(partition: i32) -> Self {
        Self {
            partition,
            delivered: 0,
            bytes: 0,
            failed: 0,
            last_error: None,
            latency_us: new_histogram(),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // 3 significant figures is a constant, valid precision (1..=5).
    let mut h = Histogram::new(3).expect("precision 3 is valid");
    // Grow to fit long stalls instead of dropping their samples.
    h.auto(true);
    h
}

/// The delivery report of a whole run.
#[derive(Debug, Clone)]
pub struct ProduceReport {
    pub partitions: Vec<PartitionReport>,
}

impl ProduceReport {
    pub fn delivered(&self) -> u64 {
        self.partitions.iter().map(|p| p.delivered).sum()
    }
    pub fn failed(&self) -> u64 {
        self.partitions.iter().map(|p| p.failed).sum()
    }
    pub fn bytes(&self) -> u64 {
        self.partitions.iter().map(|p| p.bytes).sum()
    }
    /// Latency of all delivered records, merged over partitions.
    pub fn latency_us(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for p in &self.partitions {
            // Auto-resizing histograms of equal precision always merge.
            let _ = all.add(&p.latency_us);
        }
        all
    }
}

/// A producer for one topic, with one batching task per partition.
#[derive(Debug)]
pub struct Producer {
    queues: Vec<mpsc::UnboundedSender<Pending>>,
    budget: Arc<Semaphore>,
    max_inflight_bytes: usize,
    delivered: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<PartitionReport>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("size", &self.size).finish()
    }
}

impl Producer {
    /// Opens a connection to the leader of each of `partitions` partitions
    /// of `topic` and starts their batching tasks.
    pub async fn start(
        client: &Client,
        topic: &str,
        partitions: u32,
        config: ProducerConfig,
    ) -> Result<Self> {
        let config = Arc::new(config);
        let delivered = Arc::new(AtomicU64::new(0));
        let mut queues = Vec::with_capacity(partitions as usize);
        let mut tasks = Vec::with_capacity(partitions as usize);
        for partition in 0..partitions as i32 {
            // Retry "unknown topic": a topic created a moment ago may not be
            // known to every broker yet.
            let client =
                crate::partition_client(client, topic, partition, UnknownTopicHandling::Retry)
                    .await?;
            let (tx, rx) = mpsc::unbounded_channel();
            queues.push(tx);
            tasks.push(tokio::spawn(partition_task(
                client,
                rx,
                Arc::clone(&config),
                Arc::clone(&delivered),
            )));
        }
        Ok(Self {
            queues,
            budget: Arc::new(Semaphore::new(config.max_inflight_bytes)),
            max_inflight_bytes: config.max_inflight_bytes,
            delivered,
            tasks,
        })
    }

    /// Queues `record` for `partition`, waiting first while too many bytes
    /// are in flight. Returns once the record is queued, not delivered:
    /// delivery is reported by [`Producer::close`].
    pub async fn send(&self, partition: u32, record: Record) -> Result<()> {
        let queue = self
            .queues
            .get(partition as usize)
            .ok_or(Error::NoSuchPartition {
                partition,
                partitions: self.queues.len() as u32,
            })?;
        let size = record.approximate_size();
        // A record larger than the whole budget takes the whole budget
        // rather than waiting forever.
        let cost = size.clamp(1, self.max_inflight_bytes) as u32;
        let permit = Arc::clone(&self.budget)
            .acquire_many_owned(cost)
            .await
            .map_err(|_| Error::ProducerClosed)?;
        queue
            .send(Pending {
                record,
                size,
                enqueued: Instant::now(),
                _permit: permit,
            })
            .map_err(|_| Error::ProducerClosed)
    }

    /// Records acknowledged so far, for progress display.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Sends everything still queued, waits for it, and reports.
    pub async fn close(self) -> ProduceReport {
        drop(self.queues);
        let mut partitions = Vec::with_capacity(self.tasks.len());
        for (partition, task) in self.tasks.into_iter().enumerate() {
            match task.await {
                Ok(report) => partitions.push(report),
                // A panicking task lost its queue; say so rather than hide it.
                Err(e) => {
                    let mut report = PartitionReport::new(partition as i32);
                    report.last_error = Some(format!("partition task failed: {e}"));
                    partitions.push(report);
                }
            }
        }
        ProduceReport { partitions }
    }
}

async fn partition_task(
    client: PartitionClient,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    config: Arc<ProducerConfig>,
    delivered: Arc<AtomicU64>,
) -> PartitionReport {
    let mut report = PartitionReport::new(client.partition());
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(p) => p,
                None => break,
            },
        };
        let linger_until = Instant::now() + config.linger;
        let mut bytes = first.size;
        let mut batch = vec![first];
        while bytes < config.batch_max_bytes {
            match tokio::time::timeout_at(linger_until, queue.recv()).await {
                Ok(Some(p)) if bytes + p.size > config.batch_max_bytes => {
                    carried = Some(p);
                    break;
                }
                Ok(Some(p)) => {
                    bytes += p.size;
                    batch.push(p);
                }
                // Closed (flush what we have) or linger elapsed.
                Ok(None) | Err(_) => break,
            }
        }
        send_batch(&client, batch, &config, &mut report, &delivered).await;
    }
    report
}

async fn send_batch(
    client: &PartitionClient,
    batch: Vec<Pending>,
    config: &ProducerConfig,
    report: &mut PartitionReport,
    delivered: &AtomicU64,
) {
    // The records go to rskafka; what is left is kept for the report and
    // holds the budget until the batch is done.
    let (records, batch): (Vec<Record>, Vec<InFlight>) = batch
        .into_iter()
        .map(|p| {
            let rest = InFlight {
                size: p.size,
                enqueued: p.enqueued,
                _permit: p._permit,
            };
            (p.record, rest)
        })
        .unzip();
    // The request is built once, from the records themselves (no copy of
    // the batch), and sent again as it is on a retry (vendored rskafka,
    // patch item 9).
    let request = client.prepare_produce(records, config.compression);
    // The batch's deadline is its oldest record's.
    let deadline = batch
        .first()
        .map(|p| p.enqueued + config.delivery_timeout)
        .unwrap_or_else(Instant::now);
    let mut attempt = 0u32;
    let outcome = loop {
        if Instant::now() >= deadline {
            break Err(format!(
                "not acknowledged within the delivery timeout of {:?} ({attempt} attempts)",
                config.delivery_timeout
            ));
        }
        match client.produce_prepared(&request).await {
            Ok(_offsets) => break Ok(()),
            Err(e) => {
                attempt += 1;
                let backoff = Duration::from_millis(100 * 2u64.pow(attempt.min(5)));
                if Instant::now() + backoff >= deadline {
                    break Err(format!("{e} (after {attempt} attempts)"));
                }
                tracing::warn!(
                    partition = client.partition(),
                    attempt,
                    error = %e,
                    "produce failed, retrying in {backoff:?}"
                );
                tokio::time::sleep(backoff).await;
            }
        }
    };
    match outcome {
        Ok(()) => {
            let now = Instant::now();
            for p in &batch {
                let us = now.duration_since(p.enqueued).as_micros() as u64;
                let _ = report.latency_us.record(us.max(1));
                report.bytes += p.size as u64;
            }
            report.delivered += batch.len() as u64;
            delivered.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::error!(
                partition = client.partition(),
                records = batch.len(),
                error = %e,
                "giving up on a batch"
            );
            report.failed += batch.len() as u64;
            report.last_error = Some(e);
        }
    }
}
