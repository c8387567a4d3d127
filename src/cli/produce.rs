//! `produce`, `send` and `generate`: records into the topic, generated or
//! read from lines, and generated lines on stdout.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use events::generator::GeneratorConfig;
use kafka::{Compression, ProducerConfig};
use producers::produce::{Amount, Destination, ProduceConfig};
use producers::send::SendConfig;

use super::args::{KafkaArgs, parse_duration, parse_partitions, parse_positive_u64};
use super::shutdown_signal;

#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// How many events to produce [default: 1000 unless --duration is given].
    #[arg(long, value_parser = parse_positive_u64, allow_negative_numbers = true, conflicts_with = "duration")]
    count: Option<u64>,
    /// Produce for this long instead of a count, e.g. 30s, 5m.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Aim for this many events per second (default: as fast as the broker takes them).
    #[arg(long, value_parser = parse_rate, allow_negative_numbers = true)]
    rate: Option<f64>,
    #[command(flatten)]
    generator: GeneratorArgs,
    #[command(flatten)]
    producer: ProducerArgs,
}

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Read lines from this file instead of stdin.
    #[arg(long)]
    input: Option<std::path::PathBuf>,
    #[command(flatten)]
    producer: ProducerArgs,
}

#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// How many events to print.
    #[arg(long, default_value_t = 1000, value_parser = parse_positive_u64, allow_negative_numbers = true)]
    count: u64,
    #[command(flatten)]
    generator: GeneratorArgs,
}

/// How records are batched and sent; shared by `produce` and `send`.
#[derive(Debug, Args)]
pub(crate) struct ProducerArgs {
    /// Partitions to create the topic with if it does not exist. An
    /// existing topic keeps its own count.
    #[arg(long, default_value_t = 3, value_parser = parse_partitions, allow_negative_numbers = true)]
    partitions: u32,
    /// How long a partition's batch waits for more records (linger.ms).
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// A partition's batch is sent once it holds this many bytes (batch.size).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    batch_max_bytes: u64,
    /// Compression of produced batches.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    compression: CompressionArg,
    /// Bytes handed to the producer but not yet acknowledged; above this the
    /// source waits (backpressure), so memory stays flat.
    #[arg(long, default_value_t = 32 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=(u32::MAX as u64)))]
    max_inflight_bytes: u64,
    /// Give up on a record not acknowledged this many seconds after it was
    /// handed to the producer (delivery.timeout.ms); it is reported lost.
    #[arg(long, default_value_t = 120, value_parser = parse_positive_u64)]
    delivery_timeout_secs: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// No progress bar and no summary.
    #[arg(long, short)]
    quiet: bool,
}

impl ProducerArgs {
    fn config(&self) -> ProducerConfig {
        ProducerConfig {
            linger: Duration::from_millis(self.linger_ms),
            batch_max_bytes: self.batch_max_bytes as usize,
            compression: match self.compression {
                CompressionArg::None => Compression::NoCompression,
                CompressionArg::Gzip => Compression::Gzip,
                CompressionArg::Snappy => Compression::Snappy,
                CompressionArg::Lz4 => Compression::Lz4,
                CompressionArg::Zstd => Compression::Zstd,
            },
            max_inflight_bytes: self.max_inflight_bytes as usize,
            delivery_timeout: Duration::from_secs(self.delivery_timeout_secs),
        }
    }

    /// Where and how to produce: the topic of `kafka`, created with
    /// `--partitions` if missing, with these producer settings.
    fn destination(&self, kafka: &KafkaArgs) -> anyhow::Result<Destination> {
        Ok(Destination {
            kafka: kafka.config()?,
            topic: kafka.topic.clone(),
            partitions: self.partitions,
            producer: self.config(),
            progress: !self.quiet && !self.json && std::io::stderr().is_terminal(),
        })
    }

    /// Prints the summary as asked and fails if any record was lost.
    fn report(&self, summary: &producers::produce::ProduceSummary) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string(summary)?);
        } else if !self.quiet {
            print!("{summary}");
        }
        anyhow::ensure!(
            summary.failed == 0,
            "{} records could not be delivered: {}",
            summary.failed,
            summary.last_error.as_deref().unwrap_or("unknown error")
        );
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CompressionArg {
    None,
    Gzip,
    Snappy,
    /// The LZ4 frame format Kafka uses (pure Rust: lz4_flex).
    Lz4,
    /// Zstandard at its fastest level (pure Rust: ruzstd).
    Zstd,
}

/// What the generator makes; shared by `produce` and `generate`.
#[derive(Debug, Args)]
pub(crate) struct GeneratorArgs {
    /// Seed of the generator: the same seed produces the same events.
    /// Random if not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Size of the customer population (the keys).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    customers: u32,
    /// Share of orders that get cancelled, 0.0 to 1.0.
    #[arg(long, default_value_t = 0.1, value_parser = parse_share)]
    cancel_share: f64,
}

impl GeneratorArgs {
    fn config(&self) -> GeneratorConfig {
        GeneratorConfig {
            seed: self.seed.unwrap_or_else(rand_seed),
            customers: self.customers,
            cancel_share: self.cancel_share,
            start: chrono::Utc::now(),
            ..GeneratorConfig::default()
        }
    }
}

fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0.0 and 1.0"))
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v > 0.0 && v.is_finite() {
        Ok(v)
    } else {
        Err(format!(
            "{v} must be a positive number of events per second"
        ))
    }
}

/// `produce`: generated events into the topic.
pub(crate) async fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let config = ProduceConfig {
        destination: args.producer.destination(&args.kafka)?,
        amount: match (args.count, args.duration) {
            (_, Some(d)) => Amount::Duration(d),
            (Some(n), None) => Amount::Count(n),
            (None, None) => Amount::Count(1000),
        },
        rate: args.rate,
        generator: args.generator.config(),
    };
    let summary = producers::produce::run(config, shutdown_signal()).await?;
    args.producer.report(&summary)
}

/// `send`: lines from stdin or a file, byte for byte, into the topic.
pub(crate) async fn send(args: SendArgs) -> anyhow::Result<()> {
    let input: Box<dyn std::io::Read + Send> = match &args.input {
        Some(path) => Box::new(
            std::fs::File::open(path)
                .with_context(|| format!("cannot open --input {}", path.display()))?,
        ),
        None => Box::new(std::io::stdin()),
    };
    // Large enough that a read brings many lines, which cross to the
    // producer in one chunk.
    let input = std::io::BufReader::with_capacity(256 * 1024, input);
    let config = SendConfig {
        destination: args.producer.destination(&args.kafka)?,
        separator: b'\t',
    };
    let summary = producers::send::run(config, input, shutdown_signal()).await?;
    args.producer.report(&summary)
}

/// `generate`: generated events as `KEY<TAB>JSON` lines on stdout.
pub(crate) fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = super::Stdout::new();
    let generator = events::generator::Generator::new(args.generator.config());
    for event in generator.take(args.count as usize) {
        out.write_all(event.customer_id.as_bytes())?;
        out.write_all(b"\t")?;
        out.write_all(&event.to_json())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// A seed for runs without `--seed`, from the clock.
fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
