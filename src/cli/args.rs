//! Flags shared by several commands: where Kafka and PostgreSQL are, the
//! consumer group, and the parsers of numbers, durations and times.

use std::time::Duration;

use clap::Args;
use kafka::KafkaConfig;
use store::{Store, StoreConfig};

use super::security;

/// Where the Kafka cluster is.
#[derive(Debug, Args)]
pub(crate) struct KafkaArgs {
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,
    /// The topic of order events.
    #[arg(long, env = "FOODPIPE_TOPIC", default_value = "food-orders")]
    pub(crate) topic: String,
}

/// How to reach the cluster: for commands about a topic (with
/// [`KafkaArgs`]) or about a group across topics.
#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    /// Comma-separated host:port list used to discover the cluster.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "localhost:9092"
    )]
    pub(crate) bootstrap_servers: String,
    /// Give up on an unreachable cluster after this many seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) kafka_timeout_secs: u64,
    #[command(flatten)]
    pub(crate) security: security::KafkaSecurityArgs,
}

impl KafkaArgs {
    pub(crate) fn config(&self) -> anyhow::Result<KafkaConfig> {
        self.cluster.config()
    }
}

impl ClusterArgs {
    pub(crate) fn config(&self) -> anyhow::Result<KafkaConfig> {
        let servers = kafka::parse_bootstrap_list(&self.bootstrap_servers);
        anyhow::ensure!(
            !servers.is_empty(),
            "--bootstrap-servers is empty: give a comma-separated host:port list, e.g. localhost:9092"
        );
        Ok(KafkaConfig {
            bootstrap_servers: servers,
            timeout: Duration::from_secs(self.kafka_timeout_secs),
            request_timeout: kafka::DEFAULT_REQUEST_TIMEOUT,
            security: self.security.security()?,
        })
    }
}

/// Where PostgreSQL is.
#[derive(Debug, Args)]
pub(crate) struct DbArgs {
    /// PostgreSQL URL: postgres://user:password@host:port/database.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = store::DEFAULT_DATABASE_URL,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub(crate) database_url: String,
    /// PostgreSQL schema for foodpipe's tables (default: public). Two
    /// groups that fold the same topic each need their own schema.
    #[arg(long, env = "FOODPIPE_SCHEMA", value_parser = parse_schema)]
    pub(crate) schema: Option<String>,
    #[command(flatten)]
    pub(crate) tls: security::PgTlsArgs,
}

impl DbArgs {
    pub(crate) fn config(&self) -> anyhow::Result<StoreConfig> {
        let mut config = StoreConfig {
            database_url: self.database_url.clone(),
            schema: self.schema.clone(),
            ..StoreConfig::default()
        };
        self.tls.apply(&mut config)?;
        Ok(config)
    }

    /// Connects to PostgreSQL for a command that only reads or also writes.
    /// The one place commands open the store.
    pub(crate) async fn open_store(&self, access: Access) -> anyhow::Result<Store> {
        let store = Store::connect(&self.config()?).await?;
        match access {
            Access::ReadOnly => store.check_migrated().await?,
            Access::ReadWrite => {
                store.migrate().await?;
            }
        }
        Ok(store)
    }
}

/// What a command does with the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Reads only: never creates the schema nor migrates, and fails in one
    /// line (exit 2) unless the schema holds foodpipe's tables. Works with
    /// a role that may only SELECT.
    ReadOnly,
    /// Writes: creates the schema if named and missing, and applies the
    /// migrations not applied yet.
    ReadWrite,
}

/// The consumer group a command works for.
#[derive(Debug, Args)]
pub(crate) struct GroupArg {
    /// The consumer group: offsets, members and leases are per group.
    #[arg(
        long = "group",
        value_name = "GROUP",
        env = "FOODPIPE_GROUP",
        default_value = "order-processors"
    )]
    pub(crate) name: String,
}

/// Which topic and which consumer group's view of it.
#[derive(Debug, Args)]
pub(crate) struct TopicGroupArgs {
    /// The topic of order events.
    #[arg(long, env = "FOODPIPE_TOPIC", default_value = "food-orders")]
    pub(crate) topic: String,
    #[command(flatten)]
    pub(crate) group: GroupArg,
}

/// A whole number of at least 1, with a message that says so (also for
/// negative numbers, which clap would otherwise take for a flag).
pub(crate) fn parse_positive_u64(s: &str) -> Result<u64, String> {
    match s.trim().parse::<i128>() {
        Ok(v) if v >= 1 && v <= i128::from(u64::MAX) => Ok(v as u64),
        Ok(v) => Err(format!("must be at least 1, got {v}")),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

/// A partition count: at least 1 and at most 10,000.
pub(crate) fn parse_partitions(s: &str) -> Result<u32, String> {
    let v = parse_positive_u64(s)?;
    u32::try_from(v)
        .ok()
        .filter(|v| *v <= 10_000)
        .ok_or_else(|| format!("{v} partitions is more than the 10000 foodpipe allows"))
}

/// A schema name foodpipe accepts (`store::check_schema_name`), refused
/// before anything connects.
pub(crate) fn parse_schema(s: &str) -> Result<String, String> {
    store::check_schema_name(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

/// A duration such as 500ms, 30s or 5m, longer than zero.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 30s, 5m, 1h)"))?;
    if d.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(d)
}

/// An RFC 3339 time, or one without an offset taken as UTC.
pub(crate) fn parse_datetime(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").map(|t| t.and_utc())
        })
        .map_err(|_| format!("{s:?} is not a time: write RFC 3339, e.g. 2026-11-24T12:00:00Z"))
}

/// Which SQL projections to fold besides the built-in ones.
#[derive(Debug, Args)]
pub(crate) struct ProjectionsArg {
    /// A directory of SQL projections, one folder per projection holding
    /// schema.sql (its tables) and apply.sql (run in every batch's
    /// transaction against `applied_events`). A folder not yet attached is
    /// filled from history and attached at start; see projections/README.md.
    #[arg(long = "projections", value_name = "DIR", env = "FOODPIPE_PROJECTIONS")]
    pub(crate) dir: Option<std::path::PathBuf>,
}

impl ProjectionsArg {
    /// The built-in projections and the directory's.
    pub(crate) fn definitions(&self) -> anyhow::Result<Vec<store::Definition>> {
        let mut definitions = store::projection::builtins();
        if let Some(dir) = &self.dir {
            definitions.extend(store::projection::load_dir(dir)?);
        }
        Ok(definitions)
    }
}
