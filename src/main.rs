//! The `foodpipe` command: parse flags, set up logging, call the library.
//!
//! Every error reaches the user as one line on stderr (`error: ...`) and a
//! non-zero exit status: 2 for a wrong flag (clap's convention), 1 for
//! everything else. No panic message or backtrace is printed for a
//! failure a user can cause.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use events::generator::GeneratorConfig;
use kafka::{Compression, KafkaConfig, ProducerConfig};
use pipeline::consume::{ConsumeConfig, OffsetReset};
use pipeline::produce::ProduceConfig;
use store::{Store, StoreConfig};

/// A pure-Rust Kafka → PostgreSQL event-sourcing pipeline for food orders.
///
/// Order lifecycle events are produced to a Kafka topic keyed by customer;
/// `consume` folds them into PostgreSQL (event history + current state of
/// every order), storing each partition's offset in the same transaction.
#[derive(Debug, Parser)]
#[command(name = "foodpipe", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate realistic order events and produce them to the topic.
    Produce(ProduceArgs),
    /// Fold the topic into PostgreSQL from the stored offsets.
    Consume(ConsumeArgs),
    /// Show stored offsets, events per partition and orders per status.
    Status(StatusArgs),
    /// Print the partition Kafka's default partitioner picks for each key.
    Partition(PartitionArgs),
}

/// Where the Kafka cluster is.
#[derive(Debug, Args)]
struct KafkaArgs {
    /// Comma-separated host:port list used to discover the cluster.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "localhost:9092"
    )]
    bootstrap_servers: String,
    /// Give up on an unreachable cluster after this many seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    kafka_timeout_secs: u64,
    /// The topic of order events.
    #[arg(long, env = "FOODPIPE_TOPIC", default_value = "food-orders")]
    topic: String,
}

impl KafkaArgs {
    fn config(&self) -> anyhow::Result<KafkaConfig> {
        let servers = kafka::parse_bootstrap_list(&self.bootstrap_servers);
        anyhow::ensure!(
            !servers.is_empty(),
            "--bootstrap-servers is empty: give a comma-separated host:port list, e.g. localhost:9092"
        );
        Ok(KafkaConfig {
            bootstrap_servers: servers,
            timeout: Duration::from_secs(self.kafka_timeout_secs),
        })
    }
}

/// Where PostgreSQL is.
#[derive(Debug, Args)]
struct DbArgs {
    /// PostgreSQL URL: postgres://user:password@host:port/database.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://kafka_user:kafka_password@localhost:5432/food_orders",
        hide_env_values = true,
        hide_default_value = true
    )]
    database_url: String,
}

impl DbArgs {
    fn config(&self) -> StoreConfig {
        StoreConfig {
            database_url: self.database_url.clone(),
            ..StoreConfig::default()
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CompressionArg {
    None,
    Gzip,
    Snappy,
}

#[derive(Debug, Args)]
struct ProduceArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// How many events to produce.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Partitions to create the topic with if it does not exist. An
    /// existing topic keeps its own count.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    partitions: u32,
    /// Seed of the generator: the same seed produces the same events.
    /// Random if not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Size of the customer population (the keys).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    customers: u32,
    /// Share of orders that get cancelled, 0.0 to 1.0.
    #[arg(long, default_value_t = 0.1)]
    cancel_share: f64,
    /// How long a partition's batch waits for more records (linger.ms).
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// A partition's batch is sent once it holds this many bytes (batch.size).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    batch_max_bytes: u64,
    /// Compression of produced batches.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    compression: CompressionArg,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// No progress bar and no summary.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ResetArg {
    Earliest,
    Latest,
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    db: DbArgs,
    /// Consumer group: offsets are stored per group.
    #[arg(long, env = "FOODPIPE_GROUP", default_value = "order-processors")]
    group: String,
    /// Exit once every partition has reached the high watermark it had at start.
    #[arg(long)]
    until_caught_up: bool,
    /// Where a partition with no stored offset starts.
    #[arg(long, value_enum, default_value_t = ResetArg::Earliest)]
    offset_reset: ResetArg,
    /// Upper bound of one fetch from one partition, in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(i32).range(1024..))]
    fetch_max_bytes: i32,
    /// Record values larger than this go to dead letters.
    #[arg(long, default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    max_record_bytes: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The topic of order events.
    #[arg(long, env = "FOODPIPE_TOPIC", default_value = "food-orders")]
    topic: String,
    /// Consumer group whose offsets to show.
    #[arg(long, env = "FOODPIPE_GROUP", default_value = "order-processors")]
    group: String,
}

#[derive(Debug, Args)]
struct PartitionArgs {
    /// Number of partitions of the topic.
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u32).range(1..))]
    partitions: u32,
    /// Keys to place; `-` reads one key per line from stdin.
    #[arg(required = true)]
    keys: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` joins the cause chain with ": " on one line.
            let message = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the default of info for
/// foodpipe and errors only for libraries (rskafka logs every retry).
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("error,foodpipe=info,pipeline=info,kafka=info,store=info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested: finishing the batch in hand");
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Produce(args) => produce(args).await,
        Command::Consume(args) => consume(args).await,
        Command::Status(args) => status(args).await,
        Command::Partition(args) => partition(args),
    }
}

async fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.cancel_share),
        "--cancel-share must be between 0.0 and 1.0, got {}",
        args.cancel_share
    );
    let config = ProduceConfig {
        kafka: args.kafka.config()?,
        topic: args.kafka.topic.clone(),
        partitions: args.partitions,
        count: args.count,
        generator: GeneratorConfig {
            seed: args.seed.unwrap_or_else(rand_seed),
            customers: args.customers,
            cancel_share: args.cancel_share,
            start: chrono::Utc::now(),
            ..GeneratorConfig::default()
        },
        producer: ProducerConfig {
            linger: Duration::from_millis(args.linger_ms),
            batch_max_bytes: args.batch_max_bytes as usize,
            compression: match args.compression {
                CompressionArg::None => Compression::NoCompression,
                CompressionArg::Gzip => Compression::Gzip,
                CompressionArg::Snappy => Compression::Snappy,
            },
            ..ProducerConfig::default()
        },
        progress: !args.quiet && !args.json && std::io::stderr().is_terminal(),
    };
    let summary = pipeline::produce::run(config, shutdown_signal()).await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else if !args.quiet {
        print!("{summary}");
    }
    anyhow::ensure!(
        summary.failed == 0,
        "{} events could not be delivered: {}",
        summary.failed,
        summary.last_error.as_deref().unwrap_or("unknown error")
    );
    Ok(())
}

/// A seed for runs without `--seed`, from the clock.
fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let config = ConsumeConfig {
        kafka: args.kafka.config()?,
        store: args.db.config(),
        topic: args.kafka.topic.clone(),
        group: args.group,
        until_caught_up: args.until_caught_up,
        fetch_max_bytes: args.fetch_max_bytes,
        max_record_bytes: args.max_record_bytes as usize,
        offset_reset: match args.offset_reset {
            ResetArg::Earliest => OffsetReset::Earliest,
            ResetArg::Latest => OffsetReset::Latest,
        },
        ..ConsumeConfig::default()
    };
    let summary = pipeline::consume::run(config, shutdown_signal()).await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{summary}");
    }
    Ok(())
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let store = Store::connect(&args.db.config()).await?;
    store.migrate().await?;
    let report = store.status(&args.group, &args.topic).await?;
    println!("topic {} / group {}", args.topic, args.group);
    println!("stored offsets (next record to apply):");
    for (partition, offset) in &report.offsets {
        println!("  partition {partition:>3}: {offset}");
    }
    println!("events in history:");
    for (partition, count) in &report.events_per_partition {
        println!("  partition {partition:>3}: {count}");
    }
    println!("orders by status:");
    for (status, count) in &report.orders_per_status {
        println!("  {status:<10} {count}");
    }
    println!("dead letters: {}", report.dead_letters);
    Ok(())
}

fn partition(args: PartitionArgs) -> anyhow::Result<()> {
    let place = |key: &str| {
        let p = partition::partition_for_key(key.as_bytes(), args.partitions);
        println!("{key}\t{p}");
    };
    for key in &args.keys {
        if key == "-" {
            for line in std::io::stdin().lock().lines() {
                place(&line?);
            }
        } else {
            place(key);
        }
    }
    Ok(())
}
