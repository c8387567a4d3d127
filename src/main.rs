//! The `foodpipe` command: parse flags, set up logging, call the library.
//!
//! Every error reaches the user as one line on stderr (`error: ...`) and a
//! non-zero exit status: 2 for a wrong flag (clap's convention), 1 for
//! everything else. No panic message or backtrace is printed for a
//! failure a user can cause.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use events::generator::GeneratorConfig;
use kafka::{Compression, KafkaConfig, ProducerConfig};
use pipeline::consume::{ConsumeConfig, OffsetReset};
use pipeline::produce::{Amount, ProduceConfig};
use pipeline::send::SendConfig;
use store::{Store, StoreConfig};

mod security;

/// What `--version` prints: version, git commit, target, whether the C
/// runtime is linked in (static: the binary needs no libc on the host), and
/// the optional features compiled in (see build.rs).
macro_rules! version_with_linkage {
    ($linkage:literal) => {
        concat!(
            env!("CARGO_PKG_VERSION"),
            " (commit ",
            env!("FOODPIPE_GIT_COMMIT"),
            "; ",
            env!("FOODPIPE_BUILD_TARGET"),
            ", ",
            $linkage,
            "; features: ",
            env!("FOODPIPE_FEATURES"),
            ")"
        )
    };
}
#[cfg(target_feature = "crt-static")]
const VERSION: &str = version_with_linkage!("static");
#[cfg(not(target_feature = "crt-static"))]
const VERSION: &str = version_with_linkage!("dynamic");

/// A pure-Rust Kafka → PostgreSQL event-sourcing pipeline for food orders.
///
/// Order lifecycle events are produced to a Kafka topic keyed by customer;
/// `consume` folds them into PostgreSQL (event history + current state of
/// every order), storing each partition's offset in the same transaction.
#[derive(Debug, Parser)]
#[command(name = "foodpipe", version = VERSION, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate realistic order events and produce them to the topic.
    Produce(ProduceArgs),
    /// Produce `KEY<TAB>VALUE` (or `VALUE`) lines from stdin, like kafka-console-producer.
    Send(SendArgs),
    /// Print generated events as `KEY<TAB>JSON` lines, without producing them.
    Generate(GenerateArgs),
    /// Fold the topic into PostgreSQL from the stored offsets.
    Consume(ConsumeArgs),
    /// Show stored offsets, events per partition and orders per status.
    Status(StatusArgs),
    /// Print the partition Kafka's default partitioner picks for each key.
    Partition(PartitionArgs),
    /// Read the records that could not be applied.
    #[command(name = "dead-letters", subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Consumer groups: list them, describe one, reset its offsets.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Rebuild the database from Kafka: replay the topic into shadow tables
    /// while live consumers run, catch up to their position, compare, and
    /// swap the rebuilt tables in atomically (or only compare: --dry-run).
    Rebuild(RebuildArgs),
    /// Fold the topic from its first record into a schema of its own,
    /// optionally only up to a time, for side-by-side comparison.
    Replay(ReplayArgs),
    /// The state of orders as of a time, computed from the event history.
    Asof(AsofArgs),
    /// The brokers the bootstrap servers advertise, the controller, and
    /// which bootstrap entries answered.
    Cluster(ClusterArgs),
    /// Check each bootstrap entry, each advertised broker address,
    /// PostgreSQL, the migrations and the topic; one line each, with the fix.
    Doctor(DoctorArgs),
    /// Topics, like kafka-topics: list, describe, create, delete.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Print records (partition, offset, timestamp, key, value), like
    /// kafka-console-consumer. Starts at the log end unless told otherwise.
    Tail(TailArgs),
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
    #[command(flatten)]
    security: security::KafkaSecurityArgs,
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
            security: self.security.security()?,
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
    /// PostgreSQL schema for foodpipe's tables (default: public). Two
    /// groups that fold the same topic each need their own schema.
    #[arg(long, env = "FOODPIPE_SCHEMA")]
    schema: Option<String>,
    #[command(flatten)]
    tls: security::PgTlsArgs,
}

impl DbArgs {
    fn config(&self) -> anyhow::Result<StoreConfig> {
        let mut config = StoreConfig {
            database_url: self.database_url.clone(),
            schema: self.schema.clone(),
            ..StoreConfig::default()
        };
        self.tls.apply(&mut config)?;
        Ok(config)
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CompressionArg {
    None,
    Gzip,
    Snappy,
}

/// How records are batched and sent; shared by `produce` and `send`.
#[derive(Debug, Args)]
struct ProducerArgs {
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
            },
            max_inflight_bytes: self.max_inflight_bytes as usize,
            delivery_timeout: Duration::from_secs(self.delivery_timeout_secs),
        }
    }

    fn progress(&self) -> bool {
        !self.quiet && !self.json && std::io::stderr().is_terminal()
    }

    /// Prints the summary as asked and fails if any record was lost.
    fn report(&self, summary: &pipeline::produce::ProduceSummary) -> anyhow::Result<()> {
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

/// What the generator makes; shared by `produce` and `generate`.
#[derive(Debug, Args)]
struct GeneratorArgs {
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

/// A whole number of at least 1, with a message that says so (also for
/// negative numbers, which clap would otherwise take for a flag).
fn parse_positive_u64(s: &str) -> Result<u64, String> {
    match s.trim().parse::<i128>() {
        Ok(v) if v >= 1 && v <= i128::from(u64::MAX) => Ok(v as u64),
        Ok(v) => Err(format!("must be at least 1, got {v}")),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

fn parse_partitions(s: &str) -> Result<u32, String> {
    let v = parse_positive_u64(s)?;
    u32::try_from(v)
        .ok()
        .filter(|v| *v <= 10_000)
        .ok_or_else(|| format!("{v} partitions is more than the 10000 foodpipe allows"))
}

/// `--metrics-addr`: a socket address, or off.
#[derive(Debug, Clone, Copy)]
struct MetricsAddr(Option<std::net::SocketAddr>);

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    match s.trim() {
        "off" | "none" | "" => Ok(MetricsAddr(None)),
        addr => addr
            .parse()
            .map(|a| MetricsAddr(Some(a)))
            .map_err(|_| format!("{addr:?} is not an IP:port such as 127.0.0.1:9898 (or `off`)")),
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

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 30s, 5m, 1h)"))?;
    if d.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(d)
}

#[derive(Debug, Args)]
struct ProduceArgs {
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
struct SendArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Read lines from this file instead of stdin.
    #[arg(long)]
    input: Option<std::path::PathBuf>,
    #[command(flatten)]
    producer: ProducerArgs,
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// How many events to print.
    #[arg(long, default_value_t = 1000, value_parser = parse_positive_u64, allow_negative_numbers = true)]
    count: u64,
    #[command(flatten)]
    generator: GeneratorArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AssignorArg {
    /// Contiguous ranges of partitions, as Kafka's RangeAssignor.
    Range,
    /// Partitions dealt to members in turn, as Kafka's RoundRobinAssignor.
    RoundRobin,
    /// Balanced, moving as few partitions as possible on a rebalance.
    Sticky,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ResetArg {
    Earliest,
    Latest,
    Fail,
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    group: GroupArg,
    /// Exit once every partition has reached the high watermark it had at start.
    #[arg(long)]
    until_caught_up: bool,
    /// Where a partition goes on when it has no stored offset, or its stored
    /// offset is no longer on the broker (retention, a recreated topic):
    /// earliest, latest, or fail to stop and let you decide. Every reset is
    /// logged and recorded in the offset_gaps table.
    #[arg(long, value_enum, default_value_t = ResetArg::Earliest)]
    offset_reset: ResetArg,
    /// Upper bound of one fetch from one partition, in bytes.
    #[arg(long, default_value_t = 1024 * 1024, value_parser = clap::value_parser!(i32).range(1024..))]
    fetch_max_bytes: i32,
    /// Record values larger than this go to dead letters.
    #[arg(long, default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    max_record_bytes: u64,
    /// Bytes fetched but not yet committed, over all partitions; fetches
    /// wait above it, so memory does not grow with the backlog.
    #[arg(long, default_value_t = 32 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=(u32::MAX as u64)))]
    max_inflight_bytes: u64,
    /// This member's id in the group. Give a fixed one for static
    /// membership: a restart within the session timeout keeps its
    /// partitions without a rebalance. Default: host-pid-random.
    #[arg(long, env = "FOODPIPE_MEMBER_ID")]
    member_id: Option<String>,
    /// How often the member heartbeats and re-reads the group, e.g. 1s.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    heartbeat_interval: Duration,
    /// A member silent for this long is expired and its partitions move, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    session_timeout: Duration,
    /// How partitions are dealt to the group's members.
    #[arg(long, value_enum, default_value_t = AssignorArg::Range)]
    assignor: AssignorArg,
    /// Also copy each dead letter to this Kafka topic (created if missing),
    /// with the error kind, message and source position as headers.
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// Serve Prometheus metrics on /metrics and a health check on /healthz
    /// at this address; `off` to serve nothing.
    #[arg(long, env = "FOODPIPE_METRICS_ADDR", default_value = "127.0.0.1:9898", value_parser = parse_metrics_addr)]
    metrics_addr: MetricsAddr,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// The consumer group a command works for.
#[derive(Debug, Args)]
struct GroupArg {
    /// The consumer group: offsets, members and leases are per group.
    #[arg(
        long = "group",
        value_name = "GROUP",
        env = "FOODPIPE_GROUP",
        default_value = "order-processors"
    )]
    name: String,
}

/// Which topic and which consumer group's view of it.
#[derive(Debug, Args)]
struct TopicGroupArgs {
    /// The topic of order events.
    #[arg(long, env = "FOODPIPE_TOPIC", default_value = "food-orders")]
    topic: String,
    #[command(flatten)]
    group: GroupArg,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    on: TopicGroupArgs,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// PostgreSQL URL: postgres://user:password@host:port/database.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://kafka_user:kafka_password@localhost:5432/food_orders",
        hide_env_values = true,
        hide_default_value = true
    )]
    database_url: String,
    #[command(flatten)]
    pg_tls: security::PgTlsArgs,
    /// The schema to fold into (created if missing), e.g. replay_noon.
    #[arg(long)]
    to_schema: String,
    /// Only records timestamped at or before this time (RFC 3339).
    #[arg(long, value_parser = parse_datetime)]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// The consumer group whose offsets the replay keeps in its schema.
    #[arg(long, default_value = "replay")]
    group: String,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RebuildArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    group: GroupArg,
    /// Compare the rebuilt view with the live one, but do not swap.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct AsofArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The moment, RFC 3339, e.g. 2026-11-24T12:00:00Z.
    #[arg(value_parser = parse_datetime)]
    time: chrono::DateTime<chrono::Utc>,
    /// Only this order.
    #[arg(long)]
    order: Option<uuid::Uuid>,
    /// Only this customer's orders.
    #[arg(long)]
    customer: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Every topic and its partition count.
    List(ClusterArgs),
    /// Partitions of a topic with their earliest and latest offsets.
    Describe(TopicArgs),
    /// Create a topic.
    Create(TopicCreateArgs),
    /// Delete a topic. (Tansu 0.6.0 deletes every topic of the cluster
    /// instead; see the README.)
    Delete(TopicArgs),
}

#[derive(Debug, Args)]
struct TopicArgs {
    #[command(flatten)]
    kafka: ClusterArgs,
    /// The topic.
    name: String,
}

#[derive(Debug, Args)]
struct TopicCreateArgs {
    #[command(flatten)]
    kafka: ClusterArgs,
    /// The topic.
    name: String,
    /// How many partitions.
    #[arg(long, default_value_t = 3, value_parser = parse_partitions, allow_negative_numbers = true)]
    partitions: u32,
    /// Succeed without changing anything when the topic already exists
    /// (as kafka-topics.sh --if-not-exists), e.g. for an init container.
    #[arg(long)]
    if_not_exists: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct TailArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Start at the earliest record still on the broker.
    #[arg(long, conflicts_with_all = ["offset", "from_datetime"])]
    from_beginning: bool,
    /// Start at this offset (with --partition, or in every partition).
    #[arg(long, conflicts_with = "from_datetime")]
    offset: Option<i64>,
    /// Start at the first record at or after this time (RFC 3339).
    #[arg(long, value_parser = parse_datetime)]
    from_datetime: Option<chrono::DateTime<chrono::Utc>>,
    /// Only this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// Keep waiting for new records until Ctrl-C.
    #[arg(long)]
    follow: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Text)]
    format: FormatArg,
}

#[derive(Debug, Args)]
struct ClusterArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
}

#[derive(Debug, Args)]
struct DoctorArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    db: DbArgs,
}

/// Errors that mean the user asked for something that does not exist
/// (exit status 2), rather than something that failed (1).
fn is_bad_input(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<BadInput>().is_some()
            || matches!(
                cause.downcast_ref::<kafka::Error>(),
                Some(kafka::Error::UnknownTopic { .. })
            )
            || matches!(
                cause.downcast_ref::<store::Error>(),
                Some(store::Error::TlsNotBuiltIn)
            )
    })
}

/// A user asked for something that does not exist: exit status 2.
#[derive(Debug)]
struct BadInput(String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Every group with its generation, member count and topics.
    List(GroupListArgs),
    /// Per partition the stored offset, log-end offset, lag, owner and
    /// epoch; the members with their last heartbeat.
    Describe(GroupDescribeArgs),
    /// Move a group's offsets. Prints the plan (old -> new per partition)
    /// and changes nothing unless --execute; refuses while the group has
    /// live members.
    Reset(GroupResetArgs),
}

#[derive(Debug, Args)]
struct GroupListArgs {
    #[command(flatten)]
    db: DbArgs,
}

#[derive(Debug, Args)]
struct GroupDescribeArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    group: GroupArg,
    /// Refresh in place every second until Ctrl-C.
    #[arg(long)]
    watch: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct ResetTarget {
    /// To the earliest offset still on the broker.
    #[arg(long)]
    to_earliest: bool,
    /// To the log end: skip everything produced so far.
    #[arg(long)]
    to_latest: bool,
    /// To this offset (clamped to what the broker has).
    #[arg(long, allow_negative_numbers = true)]
    to_offset: Option<i64>,
    /// To the first record at or after this time (RFC 3339, e.g.
    /// 2026-11-24T12:00:00Z), by the broker's offset-for-timestamp lookup.
    #[arg(long, value_parser = parse_datetime)]
    to_datetime: Option<chrono::DateTime<chrono::Utc>>,
    /// Move each offset by N (negative to go back).
    #[arg(long, allow_negative_numbers = true)]
    shift_by: Option<i64>,
}

#[derive(Debug, Args)]
struct GroupResetArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    group: GroupArg,
    #[command(flatten)]
    to: ResetTarget,
    /// Only this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// Apply the plan; without it nothing changes.
    #[arg(long)]
    execute: bool,
    /// Members silent for longer than this count as gone.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    session_timeout: Duration,
}

fn parse_datetime(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").map(|t| t.and_utc())
        })
        .map_err(|_| format!("{s:?} is not a time: write RFC 3339, e.g. 2026-11-24T12:00:00Z"))
}

#[derive(Debug, Subcommand)]
enum DeadLetterCommand {
    /// The newest dead letters, one line each.
    List(DeadLetterListArgs),
    /// One dead letter in full, with its key and raw value.
    Show(DeadLetterShowArgs),
}

#[derive(Debug, Args)]
struct DeadLetterListArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    on: TopicGroupArgs,
    /// Only this kind, e.g. malformed_json, invalid_transition.
    #[arg(long)]
    kind: Option<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 50, value_parser = parse_positive_u64)]
    limit: u64,
}

#[derive(Debug, Args)]
struct DeadLetterShowArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The id from `dead-letters list`.
    #[arg(value_parser = parse_positive_u64)]
    id: u64,
}

#[derive(Debug, Args)]
struct PartitionArgs {
    /// Number of partitions of the topic.
    #[arg(long, short = 'n', value_parser = parse_partitions, allow_negative_numbers = true)]
    partitions: u32,
    /// Keys to place; `-` reads one key per line from stdin.
    #[arg(required = true)]
    keys: Vec<String>,
}

fn main() -> ExitCode {
    quiet_panics();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // clap's first line says what is wrong; the rest is usage,
            // which `--help` gives in full. One line, exit status 2.
            let rendered = e.render().to_string();
            let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
            let first = lines.next().unwrap_or("error: invalid arguments");
            // Keep clap's list of allowed values, which is on its own line.
            let allowed = lines.find(|l| l.starts_with("[possible values"));
            match allowed {
                Some(values) => eprintln!("{first} {values} (see --help)"),
                None => eprintln!("{first} (see --help)"),
            }
            return ExitCode::from(2);
        }
    };
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
            eprintln!("error: {}", one_line(&e));
            if is_bad_input(&e) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes on one line, joined with ": ". A cause whose
/// text its parent already printed (thiserror's `{source}` in a message,
/// rskafka's errors that print their own source) is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', " ");
        if message.contains(text.trim()) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(text.trim());
    }
    message
}

/// No backtrace reaches a user. Output to a reader that went away (as in
/// `foodpipe tail | head`) ends the process quietly, as it would for any
/// Unix tool; any other panic is a bug, reported on one line.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if message.contains("Broken pipe") {
            std::process::exit(0);
        }
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error{place}: {message} (please report it)");
    }));
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
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed
/// when this is called, not when the future is first polled, so a signal
/// that arrives early is not fatal: it is seen as soon as it is awaited.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (mut int, mut term) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let int = async {
                match int.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let term = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = int => {},
                () = term => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown requested: finishing the batch in hand");
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Produce(args) => produce(args).await,
        Command::Send(args) => send(args).await,
        Command::Generate(args) => generate(args),
        Command::Consume(args) => consume(args).await,
        Command::Status(args) => status(args).await,
        Command::Partition(args) => partition(args),
        Command::DeadLetters(DeadLetterCommand::List(args)) => dead_letters_list(args).await,
        Command::Group(GroupCommand::List(args)) => group_list(args).await,
        Command::Replay(args) => replay(args).await,
        Command::Rebuild(args) => rebuild(args).await,
        Command::Asof(args) => asof(args).await,
        Command::Cluster(args) => cluster(args).await,
        Command::Doctor(args) => doctor(args).await,
        Command::Topics(cmd) => topics(cmd).await,
        Command::Tail(args) => tail(args).await,
        Command::Group(GroupCommand::Describe(args)) => group_describe(args).await,
        Command::Group(GroupCommand::Reset(args)) => group_reset(args).await,
        Command::DeadLetters(DeadLetterCommand::Show(args)) => dead_letters_show(args).await,
    }
}

async fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let config = ProduceConfig {
        kafka: args.kafka.config()?,
        topic: args.kafka.topic.clone(),
        partitions: args.producer.partitions,
        amount: match (args.count, args.duration) {
            (_, Some(d)) => Amount::Duration(d),
            (Some(n), None) => Amount::Count(n),
            (None, None) => Amount::Count(1000),
        },
        rate: args.rate,
        generator: args.generator.config(),
        producer: args.producer.config(),
        progress: args.producer.progress(),
    };
    let summary = pipeline::produce::run(config, shutdown_signal()).await?;
    args.producer.report(&summary)
}

async fn send(args: SendArgs) -> anyhow::Result<()> {
    let input: Box<dyn BufRead + Send> = match &args.input {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path)
                .with_context(|| format!("cannot open --input {}", path.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let config = SendConfig {
        kafka: args.kafka.config()?,
        topic: args.kafka.topic.clone(),
        partitions: args.producer.partitions,
        separator: b'\t',
        producer: args.producer.config(),
        progress: args.producer.progress(),
    };
    let summary = pipeline::send::run(config, input, shutdown_signal()).await?;
    args.producer.report(&summary)
}

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
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

async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let config = ConsumeConfig {
        kafka: args.kafka.config()?,
        store: args.db.config()?,
        topic: args.kafka.topic.clone(),
        group: args.group.name,
        until_caught_up: args.until_caught_up,
        fetch_max_bytes: args.fetch_max_bytes,
        max_record_bytes: args.max_record_bytes as usize,
        max_inflight_bytes: args.max_inflight_bytes as usize,
        metrics_addr: args.metrics_addr.0,
        dead_letter_topic: args.dead_letter_topic,
        member_id: args.member_id,
        heartbeat_interval: args.heartbeat_interval,
        session_timeout: args.session_timeout,
        assignor: match args.assignor {
            AssignorArg::Range => group::Assignor::Range,
            AssignorArg::RoundRobin => group::Assignor::RoundRobin,
            AssignorArg::Sticky => group::Assignor::Sticky,
        },
        offset_reset: match args.offset_reset {
            ResetArg::Earliest => OffsetReset::Earliest,
            ResetArg::Latest => OffsetReset::Latest,
            ResetArg::Fail => OffsetReset::Fail,
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
    let store = Store::connect(&args.db.config()?).await?;
    store.migrate().await?;
    let report = store.status(&args.on.group.name, &args.on.topic).await?;
    println!("topic {} / group {}", args.on.topic, args.on.group.name);
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

async fn rebuild(args: RebuildArgs) -> anyhow::Result<()> {
    let config = ConsumeConfig {
        kafka: args.kafka.config()?,
        store: args.db.config()?,
        topic: args.kafka.topic.clone(),
        group: args.group.name,
        progress: !args.json && std::io::stderr().is_terminal(),
        ..ConsumeConfig::default()
    };
    let report = pipeline::rebuild::run(config, args.dry_run, shutdown_signal()).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "rebuilt from Kafka: {} events, {} orders; {} order(s) differ from the live view",
        report.events, report.orders, report.differing
    );
    for d in &report.first_differences {
        println!(
            "  {}: live {} | rebuilt {}",
            d.order_id,
            d.live.as_deref().unwrap_or("(missing)"),
            d.rebuilt.as_deref().unwrap_or("(missing)")
        );
    }
    if report.swapped {
        println!("swapped in: history, view, dead letters and offsets now come from the rebuild");
    } else {
        println!("dry run: nothing swapped");
    }
    Ok(())
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let mut store = StoreConfig {
        database_url: args.database_url.clone(),
        schema: Some(args.to_schema.clone()),
        ..StoreConfig::default()
    };
    args.pg_tls.apply(&mut store)?;
    let config = ConsumeConfig {
        kafka: args.kafka.config()?,
        store,
        topic: args.kafka.topic.clone(),
        group: args.group,
        until_caught_up: true,
        until: args.until,
        ..ConsumeConfig::default()
    };
    let summary = pipeline::consume::run(config, shutdown_signal()).await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{summary}");
        println!(
            "folded into schema {}: SELECT * FROM {}.orders",
            args.to_schema, args.to_schema
        );
    }
    Ok(())
}

async fn topics(cmd: TopicsCommand) -> anyhow::Result<()> {
    match cmd {
        TopicsCommand::List(args) => {
            let client = kafka::connect(&args.kafka.config()?).await?;
            let mut topics = client.list_topics().await?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            for t in topics {
                println!("{}\t{} partition(s)", t.name, t.partitions.len());
            }
        }
        TopicsCommand::Describe(args) => {
            let client = kafka::connect(&args.kafka.kafka.config()?).await?;
            let count = kafka::existing_topic_partitions(&client, &args.name).await?;
            println!("topic {}: {count} partition(s)", args.name);
            println!(
                "{:>9} {:>16} {:>16} {:>10}",
                "PARTITION", "EARLIEST-OFFSET", "LATEST-OFFSET", "RECORDS"
            );
            for p in 0..count as i32 {
                let reader = kafka::PartitionReader::new(&client, &args.name, p).await?;
                let earliest = reader.offset(kafka::OffsetAt::Earliest).await?;
                let latest = reader.offset(kafka::OffsetAt::Latest).await?;
                println!(
                    "{p:>9} {earliest:>16} {latest:>16} {:>10}",
                    latest - earliest
                );
            }
        }
        TopicsCommand::Create(args) => {
            let client = kafka::connect(&args.kafka.kafka.config()?).await?;
            if let Some(existing) = kafka::topic_partitions(&client, &args.name).await? {
                if args.if_not_exists {
                    println!(
                        "topic {} already exists with {} partition(s)",
                        args.name, existing
                    );
                    return Ok(());
                }
                return Err(BadInput(format!(
                    "topic {:?} already exists (add --if-not-exists to accept that)",
                    args.name
                ))
                .into());
            }
            let info = kafka::ensure_topic(&client, &args.name, args.partitions).await?;
            println!(
                "created topic {} with {} partition(s)",
                args.name, info.partitions
            );
        }
        TopicsCommand::Delete(args) => {
            let client = kafka::connect(&args.kafka.kafka.config()?).await?;
            kafka::existing_topic_partitions(&client, &args.name).await?;
            client
                .controller_client()?
                .delete_topic(args.name.as_str(), 5_000)
                .await
                .with_context(|| format!("cannot delete topic {}", args.name))?;
            println!("deleted topic {}", args.name);
        }
    }
    Ok(())
}

async fn tail(args: TailArgs) -> anyhow::Result<()> {
    use pipeline::tail::{Format, From, TailConfig};
    let from = if args.from_beginning {
        From::Beginning
    } else if let Some(o) = args.offset {
        From::Offset(o)
    } else if let Some(t) = args.from_datetime {
        From::Time(t)
    } else {
        From::Latest
    };
    let config = TailConfig {
        kafka: args.kafka.config()?,
        topic: args.kafka.topic.clone(),
        from,
        partition: args.partition,
        follow: args.follow,
        format: match args.format {
            FormatArg::Text => Format::Text,
            FormatArg::Json => Format::Json,
        },
    };
    let mut out = std::io::BufWriter::new(std::io::stdout());
    pipeline::tail::run(config, &mut out, shutdown_signal()).await?;
    Ok(())
}

async fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    let answers = pipeline::doctor::cluster(&args.kafka.config()?).await;
    let mut view = None;
    for a in &answers {
        match &a.answer {
            Ok(v) => {
                println!("bootstrap {}: answered", a.address);
                view.get_or_insert(v.clone());
            }
            Err(e) => println!("bootstrap {}: no answer ({e})", a.address),
        }
    }
    let Some(view) = view else {
        anyhow::bail!(
            "no bootstrap server answered: check --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS"
        );
    };
    println!("brokers, as they advertise themselves:");
    for b in &view.brokers {
        let role = if b.id == view.controller_id {
            "  (controller)"
        } else {
            ""
        };
        println!("  id {:<4} {}{role}", b.id, b.address());
    }
    Ok(())
}

async fn doctor(args: DoctorArgs) -> anyhow::Result<()> {
    let checks =
        pipeline::doctor::doctor(&args.kafka.config()?, &args.db.config()?, &args.kafka.topic)
            .await;
    for c in &checks {
        println!("{c}");
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    anyhow::ensure!(
        failed == 0,
        "{failed} check(s) failed; see the FAIL lines above"
    );
    println!("all {} checks passed", checks.len());
    Ok(())
}

async fn asof(args: AsofArgs) -> anyhow::Result<()> {
    let store = Store::connect(&args.db.config()?).await?;
    store.migrate().await?;
    let orders = store
        .orders_as_of(args.time, args.order, args.customer.as_deref())
        .await?;
    if let Some(order) = args.order
        && orders.is_empty()
    {
        return Err(BadInput(format!(
            "order {order} did not exist as of {} (no event for it at or before that time)",
            args.time.to_rfc3339()
        ))
        .into());
    }
    if args.json {
        for o in &orders {
            println!("{}", serde_json::to_string(o)?);
        }
        return Ok(());
    }
    println!("{} orders as of {}", orders.len(), args.time.to_rfc3339());
    for o in &orders {
        println!(
            "{}  {:<10} {:<10} {:>9}  updated {}",
            o.order_id,
            o.customer_id,
            o.status,
            o.total_cents
                .map_or("-".to_owned(), |c| format!("{}.{:02}", c / 100, c % 100)),
            o.updated_at.to_rfc3339()
        );
    }
    Ok(())
}

async fn group_list(args: GroupListArgs) -> anyhow::Result<()> {
    let store = Store::connect(&args.db.config()?).await?;
    store.migrate().await?;
    let groups = store.groups().await?;
    if groups.is_empty() {
        println!("no consumer groups yet");
    }
    for g in groups {
        println!(
            "{}\tgeneration {}\t{} member(s)\ttopics: {}",
            g.group_id,
            g.generation,
            g.members,
            g.topics.join(", ")
        );
    }
    Ok(())
}

async fn group_describe(args: GroupDescribeArgs) -> anyhow::Result<()> {
    let store = Store::connect(&args.db.config()?).await?;
    store.migrate().await?;
    let kafka = args.kafka.config()?;
    let mut stop = std::pin::pin!(shutdown_signal());
    loop {
        let d =
            pipeline::groups::describe(&store, &kafka, &args.group.name, &args.kafka.topic).await?;
        if args.watch {
            // Clear the screen and home the cursor, like `watch`.
            print!("\x1b[2J\x1b[H{}", chrono::Utc::now().format("%H:%M:%S\n"));
        }
        print!("{d}");
        if !args.watch {
            return Ok(());
        }
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn group_reset(args: GroupResetArgs) -> anyhow::Result<()> {
    use pipeline::groups::ResetTo;
    let store = Store::connect(&args.db.config()?).await?;
    store.migrate().await?;
    let t = &args.to;
    let to = if t.to_earliest {
        ResetTo::Earliest
    } else if t.to_latest {
        ResetTo::Latest
    } else if let Some(o) = t.to_offset {
        ResetTo::Offset(o)
    } else if let Some(d) = t.to_datetime {
        ResetTo::Datetime(d)
    } else if let Some(n) = t.shift_by {
        ResetTo::ShiftBy(n)
    } else {
        anyhow::bail!(
            "say where to: --to-earliest, --to-latest, --to-offset, --to-datetime or --shift-by"
        );
    };
    let request = pipeline::groups::ResetRequest {
        group: &args.group.name,
        topic: &args.kafka.topic,
        to,
        partition: args.partition,
        execute: args.execute,
        session_timeout: args.session_timeout,
    };
    let plan = pipeline::groups::reset(&store, &args.kafka.config()?, &request).await?;
    println!(
        "{:<20} {:<20} {:>9} {:>12} {:>12}",
        "GROUP", "TOPIC", "PARTITION", "OLD-OFFSET", "NEW-OFFSET"
    );
    for r in &plan {
        println!(
            "{:<20} {:<20} {:>9} {:>12} {:>12}",
            args.group.name,
            args.kafka.topic,
            r.partition,
            r.old.map_or("-".to_owned(), |o| o.to_string()),
            r.new
        );
    }
    if args.execute {
        println!("offsets reset");
    } else {
        println!("dry run: nothing changed; add --execute to apply");
    }
    Ok(())
}

async fn dead_letters_list(args: DeadLetterListArgs) -> anyhow::Result<()> {
    let store = Store::connect(&args.db.config()?).await?;
    store.migrate().await?;
    let rows = store
        .dead_letters(
            &args.on.group.name,
            &args.on.topic,
            args.kind.as_deref(),
            i64::try_from(args.limit).unwrap_or(i64::MAX),
        )
        .await?;
    if rows.is_empty() {
        println!(
            "no dead letters for group {} on {}",
            args.on.group.name, args.on.topic
        );
        return Ok(());
    }
    println!(
        "{:>8}  {:>9}  {:>10}  {:<22}  error",
        "id", "partition", "offset", "kind"
    );
    for r in rows {
        let mut error = r.error.replace('\n', " ");
        if error.chars().count() > 80 {
            error = error.chars().take(77).collect::<String>() + "...";
        }
        println!(
            "{:>8}  {:>9}  {:>10}  {:<22}  {error}",
            r.id, r.partition, r.offset, r.kind
        );
    }
    Ok(())
}

async fn dead_letters_show(args: DeadLetterShowArgs) -> anyhow::Result<()> {
    let store = Store::connect(&args.db.config()?).await?;
    store.migrate().await?;
    let id = i64::try_from(args.id).unwrap_or(i64::MAX);
    let r = store.dead_letter(id).await?.with_context(|| {
        format!("no dead letter with id {id}; `foodpipe dead-letters list` shows the ids")
    })?;
    println!("id:          {}", r.id);
    println!("group:       {}", r.group);
    println!(
        "position:    {}/{} offset {} (incarnation {})",
        r.topic, r.partition, r.offset, r.incarnation
    );
    println!("timestamp:   {}", r.kafka_timestamp.to_rfc3339());
    println!("recorded at: {}", r.recorded_at.to_rfc3339());
    println!("kind:        {}", r.kind);
    println!("error:       {}", r.error);
    println!("key:         {}", show_bytes(r.key.as_deref()));
    println!("value:       {}", show_bytes(r.value.as_deref()));
    Ok(())
}

/// Bytes as text where they are UTF-8, with other bytes escaped as `\xNN`.
fn show_bytes(bytes: Option<&[u8]>) -> String {
    match bytes {
        None => "(none)".to_owned(),
        Some(b) => b.utf8_chunks().fold(String::new(), |mut out, chunk| {
            out.push_str(chunk.valid());
            for byte in chunk.invalid() {
                out.push_str(&format!("\\x{byte:02x}"));
            }
            out
        }),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Causes are joined on one line, and a cause its parent already
    /// printed is not printed twice.
    #[test]
    fn one_line_skips_causes_already_printed() {
        let e = anyhow::anyhow!("invalid proof\nsecond line")
            .context("SASL handshake failed: invalid proof second line")
            .context("cannot reach any bootstrap server of [k:9092]");
        assert_eq!(
            one_line(&e),
            "cannot reach any bootstrap server of [k:9092]: SASL handshake failed: invalid proof second line"
        );
        let plain = anyhow::anyhow!("root cause").context("while doing x");
        assert_eq!(one_line(&plain), "while doing x: root cause");
    }
}
