//! `foodpipe produce`: realistic order events into the topic.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use events::generator::{Generator, GeneratorConfig};
use indicatif::{ProgressBar, ProgressStyle};
use kafka::{KafkaConfig, Producer, ProducerConfig, Record};
use serde::Serialize;

/// Everything `produce` needs.
#[derive(Debug, Clone)]
pub struct ProduceConfig {
    pub kafka: KafkaConfig,
    pub topic: String,
    /// Partitions to create the topic with if it does not exist.
    pub partitions: u32,
    /// How many events to produce.
    pub count: u64,
    pub generator: GeneratorConfig,
    pub producer: ProducerConfig,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// Events of one partition.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionCount {
    pub partition: i32,
    pub events: u64,
}

/// What a produce run did; printed as text or JSON.
#[derive(Debug, Clone, Serialize)]
pub struct ProduceSummary {
    pub topic: String,
    pub partitions: u32,
    pub topic_created: bool,
    /// Events the broker acknowledged.
    pub events: u64,
    /// Events given up on after every retry.
    pub failed: u64,
    pub last_error: Option<String>,
    pub bytes: u64,
    pub elapsed_secs: f64,
    pub events_per_sec: f64,
    pub mb_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub per_partition: Vec<PartitionCount>,
    /// True if a shutdown signal stopped the run before `count` events.
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
            writeln!(f, "interrupted before all events were produced")?;
        }
        Ok(())
    }
}

/// Produces `config.count` generated events, or fewer if `shutdown`
/// completes first; everything already handed to the producer is still
/// delivered (or reported lost) before returning.
pub async fn run(
    config: ProduceConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<ProduceSummary> {
    let client = kafka::connect(&config.kafka).await?;
    let topic = kafka::ensure_topic(&client, &config.topic, config.partitions).await?;
    if !topic.created && topic.partitions != config.partitions {
        tracing::warn!(
            "topic {} exists with {} partitions (asked for {}); using {}",
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

    let bar = if config.progress {
        let bar = ProgressBar::new(config.count);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} events ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let started = Instant::now();
    let mut per_partition: BTreeMap<i32, u64> = BTreeMap::new();
    let mut sent = 0u64;
    let mut interrupted = false;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_tick = Instant::now();
    for event in Generator::new(config.generator.clone()).take(config.count as usize) {
        let key = event.customer_id.clone().into_bytes();
        let partition = partition::partition_for_key(&key, topic.partitions);
        let record = Record {
            key: Some(key),
            value: Some(event.to_json()),
            headers: BTreeMap::new(),
            // The event's own time: offset-for-timestamp lookups and
            // "as of" replays then agree with `occurred_at`.
            timestamp: event.occurred_at,
        };
        tokio::select! {
            biased;
            () = &mut shutdown => { interrupted = true; break; }
            sent_ok = producer.send(partition, record) => sent_ok?,
        }
        *per_partition.entry(partition as i32).or_default() += 1;
        sent += 1;
        if last_tick.elapsed() > Duration::from_millis(100) {
            bar.set_position(producer.delivered());
            last_tick = Instant::now();
        }
    }
    bar.set_message("flushing");
    let report = producer.close().await;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);

    let latency = report.latency_us();
    let delivered_per_partition: Vec<PartitionCount> = report
        .partitions
        .iter()
        .map(|p| PartitionCount {
            partition: p.partition,
            events: p.delivered,
        })
        .collect();
    debug_assert_eq!(sent, report.delivered() + report.failed());
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
        per_partition: delivered_per_partition,
        interrupted,
    })
}
