//! `consume`, `replay` and `rebuild`: folding the topic into PostgreSQL.

use std::io::IsTerminal;
use std::time::Duration;

use clap::{Args, ValueEnum};
use pipeline::consume::{ConsumeConfig, MetricsListen, OffsetReset};
use store::StoreConfig;

use super::args::{
    Access, DbArgs, GroupArg, KafkaArgs, ProjectionsArg, parse_datetime, parse_duration,
    parse_schema,
};
use super::{BadInput, shutdown_signal};

#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    group: GroupArg,
    #[command(flatten)]
    projections: ProjectionsArg,
    /// Exit once the group has caught up: the stored offset of every
    /// partition has reached the log end seen at start, whichever member
    /// applied it. A member assigned nothing waits (and takes partitions
    /// as dead members expire). Exits 1 if a partition is stopped.
    #[arg(long)]
    until_caught_up: bool,
    /// Where a partition goes on when it has no stored offset, or its stored
    /// offset is no longer on the broker (retention, a recreated topic):
    /// earliest, latest, or fail to stop and let you decide. Every reset is
    /// logged and recorded in the offset_gaps table.
    #[arg(long, value_enum, default_value_t = ResetArg::Earliest)]
    offset_reset: ResetArg,
    /// A record batch that cannot be decoded (bad CRC, unknown codec,
    /// truncated): `stop` stops its partition loudly (the others go on);
    /// `skip` records its offset range and raw bytes in dead_letters (kind
    /// corrupt_batch) and goes on after it.
    #[arg(long, value_enum, default_value_t = CorruptArg::Stop)]
    on_corrupt_batch: CorruptArg,
    /// Upper bound of one fetch from one partition, in bytes. Peak memory
    /// follows it; Kafka's own default is 1 MiB (1048576).
    #[arg(long, default_value_t = 512 * 1024, value_parser = clap::value_parser!(i32).range(1024..))]
    fetch_max_bytes: i32,
    /// How long a fetch may wait for records when no owned partition has
    /// any waiting (Kafka's fetch.max.wait.ms), e.g. 500ms. While records
    /// came in the last second it waits at most 5ms, because some brokers
    /// (Tansu) hold a fetch for the whole wait even when records arrive.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    fetch_max_wait: Duration,
    /// Record values larger than this go to dead letters.
    #[arg(long, default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    max_record_bytes: u64,
    /// Bytes fetched but not yet committed, over all partitions; fetches
    /// wait above it, so memory does not grow with the backlog. Counted at
    /// the size reserved for the fetch: bytes a compressed batch
    /// decompresses to beyond it are not counted.
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
    /// A member that reaches PostgreSQL but no broker has answered for this
    /// long is cut off from the brokers: its partitions go to members that
    /// reach them, and come back when the brokers answer it again (nothing
    /// moves if every member is cut off). Also the longest a request to a
    /// broker may go unanswered, e.g. 15s.
    #[arg(long, default_value = "15s", value_parser = parse_broker_timeout)]
    broker_timeout: Duration,
    /// How partitions are dealt to the group's members.
    #[arg(long, value_enum, default_value_t = AssignorArg::Range)]
    assignor: AssignorArg,
    /// Also copy each dead letter to this Kafka topic (created if missing),
    /// with the error kind, message and source position as headers.
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// Copy the stored offsets of this member's partitions to the broker's
    /// group coordinator, so kafka-consumer-groups, Kafka UI and lag
    /// exporters see the group's progress. For monitoring only: PostgreSQL
    /// stays the source of truth and a failure never stops consuming.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    mirror_offsets: OnOff,
    /// How often the mirror commits while consuming, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    mirror_interval: Duration,
    /// Serve Prometheus metrics on /metrics and a health check on /healthz
    /// at this address; `off` to serve nothing. Default: 127.0.0.1:9898, or
    /// the next free port above it when another member on this host has it
    /// (the address is logged and shown by `group describe`). An address
    /// given here must be free.
    #[arg(long, env = "FOODPIPE_METRICS_ADDR", value_parser = parse_metrics_addr)]
    metrics_addr: Option<MetricsAddr>,
    /// /healthz answers 503 for a partition with lag that has committed
    /// nothing for this long, naming it and what it waits for, e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    stall_timeout: Duration,
    /// PostgreSQL connections for committing batches. PostgreSQL allows
    /// 100 connections in all by default, shared by every member; with
    /// hundreds of partitions, partitions take turns.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1000))]
    db_connections: u16,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CorruptArg {
    Stop,
    Skip,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ResetArg {
    Earliest,
    Latest,
    Fail,
}

/// `--metrics-addr`: a socket address, or off.
#[derive(Debug, Clone, Copy)]
struct MetricsAddr(Option<std::net::SocketAddr>);

impl MetricsAddr {
    /// Given (flag or FOODPIPE_METRICS_ADDR): exactly that address; not
    /// given: the default, or the next free port above it.
    fn listen(given: Option<MetricsAddr>) -> MetricsListen {
        match given {
            None => MetricsListen::FirstFreeFrom(pipeline::consume::DEFAULT_METRICS_ADDR),
            Some(MetricsAddr(None)) => MetricsListen::Off,
            Some(MetricsAddr(Some(addr))) => MetricsListen::Exactly(addr),
        }
    }
}

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    match s.trim() {
        "off" | "none" | "" => Ok(MetricsAddr(None)),
        addr => addr
            .parse()
            .map(|a| MetricsAddr(Some(a)))
            .map_err(|_| format!("{addr:?} is not an IP:port such as 127.0.0.1:9898 (or `off`)")),
    }
}

/// `replay` folds into `--to-schema`; the common `--schema` (env
/// FOODPIPE_SCHEMA) names the live schema, which it never writes.
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    db: DbArgs,
    /// The schema to fold into (created if missing), e.g. replay_noon; not
    /// the live --schema.
    #[arg(long, value_parser = parse_schema)]
    to_schema: String,
    /// Only records timestamped at or before this time (RFC 3339).
    #[arg(long, value_parser = parse_datetime)]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// The consumer group whose offsets the replay keeps in its schema.
    #[arg(long, default_value = "replay")]
    group: String,
    #[command(flatten)]
    projections: ProjectionsArg,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RebuildArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    group: GroupArg,
    #[command(flatten)]
    projections: ProjectionsArg,
    /// Rebuild only this projection (its tables are the only ones
    /// swapped); default: every projection, dead letters and offsets.
    #[arg(long, value_name = "NAME")]
    projection: Option<String>,
    /// Compare the rebuilt projections with the live ones, key by key, and
    /// swap nothing; exits 1 naming the differing keys if any differ.
    #[arg(long, visible_alias = "dry-run")]
    verify_only: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `--broker-timeout`: at least [`MIN_BROKER_TIMEOUT`], since a member
/// that owns no partition hears from the brokers only through its probe,
/// every two seconds.
fn parse_broker_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_BROKER_TIMEOUT {
        return Err(format!(
            "must be at least {} s: a member probes the brokers every 2 s",
            MIN_BROKER_TIMEOUT.as_secs()
        ));
    }
    Ok(d)
}

const MIN_BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// `consume`: a member of the group folding its partitions.
pub(crate) async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    // A long-running member: large freed blocks (fetch answers) go back
    // to the system instead of piling up in the allocator (crates/heap).
    heap::hand_back_large_blocks();
    let config = ConsumeConfig {
        kafka: args.kafka.config()?,
        store: args.db.config()?,
        topic: args.kafka.topic.clone(),
        group: args.group.name,
        projections: args.projections.definitions()?,
        until_caught_up: args.until_caught_up,
        fetch_max_bytes: args.fetch_max_bytes,
        fetch_max_wait: args.fetch_max_wait,
        max_record_bytes: args.max_record_bytes as usize,
        max_inflight_bytes: args.max_inflight_bytes as usize,
        metrics: MetricsAddr::listen(args.metrics_addr),
        stall_timeout: args.stall_timeout,
        db_connections: args.db_connections as usize,
        dead_letter_topic: args.dead_letter_topic,
        mirror_interval: (args.mirror_offsets == OnOff::On).then_some(args.mirror_interval),
        member_id: args.member_id,
        heartbeat_interval: args.heartbeat_interval,
        session_timeout: args.session_timeout,
        broker_timeout: args.broker_timeout,
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
        on_corrupt_batch: match args.on_corrupt_batch {
            CorruptArg::Stop => pipeline::consume::OnCorruptBatch::Stop,
            CorruptArg::Skip => pipeline::consume::OnCorruptBatch::Skip,
        },
        ..ConsumeConfig::default()
    };
    let summary = pipeline::consume::run(config, shutdown_signal()).await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{summary}");
    }
    stopped_partitions_fail(&summary)
}

/// A run that ends with stopped partitions exits 1, naming them: a script
/// that trusts the exit status must not believe the database is current.
fn stopped_partitions_fail(summary: &pipeline::consume::ConsumeSummary) -> anyhow::Result<()> {
    if summary.stopped.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = summary
        .stopped
        .iter()
        .map(|s| format!("partition {}: {}", s.partition, s.error))
        .collect();
    anyhow::bail!(
        "{} partition(s) of {} stopped: {}",
        list.len(),
        summary.topic,
        list.join("; ")
    )
}

/// `replay`: the topic folded from its first record into `--to-schema`
/// (optionally only up to `--until`), as a group of its own there.
pub(crate) async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let live = args.db.schema.as_deref().unwrap_or("public");
    if args.to_schema == live {
        return Err(BadInput(format!(
            "--to-schema {} is the live schema (--schema / FOODPIPE_SCHEMA, default public): \
             replay folds into a schema of its own; name another",
            args.to_schema
        ))
        .into());
    }
    // Every projection the live schema has, and those given.
    let mut projections = args.projections.definitions()?;
    if let Ok(live) = args.db.open_store(Access::ReadOnly).await {
        for d in live.projection_definitions().await.unwrap_or_default() {
            if !projections.iter().any(|p| p.name == d.name) {
                projections.push(d);
            }
        }
    }
    let config = ConsumeConfig {
        kafka: args.kafka.config()?,
        store: StoreConfig {
            schema: Some(args.to_schema.clone()),
            ..args.db.config()?
        },
        topic: args.kafka.topic.clone(),
        group: args.group,
        projections,
        until_caught_up: true,
        until: args.until,
        // A replay's progress is not the group's: never mirrored.
        mirror_interval: None,
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
    stopped_partitions_fail(&summary)
}

/// `rebuild`: the database rebuilt from Kafka and swapped in.
pub(crate) async fn rebuild(args: RebuildArgs) -> anyhow::Result<()> {
    let config = ConsumeConfig {
        kafka: args.kafka.config()?,
        store: args.db.config()?,
        topic: args.kafka.topic.clone(),
        group: args.group.name,
        projections: args.projections.definitions()?,
        progress: !args.json && std::io::stderr().is_terminal(),
        ..ConsumeConfig::default()
    };
    let options = ops::rebuild::Options {
        dry_run: args.verify_only,
        projection: args.projection,
    };
    let report = ops::rebuild::run(config, options, shutdown_signal()).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    if args.verify_only && report.differing > 0 {
        anyhow::bail!(
            "{} key(s) differ between the live projections and a rebuild from Kafka",
            report.differing
        );
    }
    Ok(())
}
