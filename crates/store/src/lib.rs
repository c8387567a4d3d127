//! foodpipe's PostgreSQL side.
//!
//! - [`Store::connect`]: a deadpool pool from a `DATABASE_URL`, checked once
//!   so a wrong URL fails at start with a clear message.
//! - [`Store::migrate`]: the SQL files of `migrations/`, embedded and applied
//!   by refinery under an advisory lock (several consumers may start at once).
//! - [`fold`]: the pure part of a batch: which records are new, which are
//!   duplicates, what each touched order becomes, which are dead letters.
//! - [`Store::apply_batch`]: one transaction per fetched batch: history, view,
//!   dead letters and the partition's next offset commit together or not at
//!   all (invariant 3).
//!
//! This crate never depends on rskafka: it sees records as offsets and bytes.

mod apply;
mod asof;
mod error;
pub mod fold;
mod membership;
mod report;

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;

pub use apply::{Applied, Batch};
pub use asof::OrderAsOf;
pub use error::{Error, Result};
pub use fold::SourceRecord;
pub use membership::{GroupRow, GroupView, Lease, MemberRow, PartitionOwner};
pub use report::{DeadLetterRow, StatusReport};

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// Advisory lock key taken while migrating ("foodpipe" in ASCII, truncated).
const MIGRATION_LOCK: i64 = 0x666f_6f64_7069_7065;

/// How to reach PostgreSQL.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// A libpq-style URL, `postgres://user:password@host:port/db`.
    pub database_url: String,
    /// Connections in the pool to start with; a consumer resizes it to one
    /// per partition plus one for bookkeeping and health checks.
    pub pool_size: usize,
    /// How long to wait for a connection before giving up.
    pub connect_timeout: Duration,
    /// PostgreSQL ends a session that sits this long inside a transaction
    /// (`idle_in_transaction_session_timeout`), so a paused consumer cannot
    /// hold row locks that stop the member taking over its partitions.
    pub idle_in_transaction_timeout: Option<Duration>,
    /// The schema foodpipe's tables live in (`search_path`); `None` for
    /// PostgreSQL's default (`public`). Two groups folding the same topic
    /// each need their own.
    pub schema: Option<String>,
    /// The rustls configuration used when the URL says `sslmode=require`
    /// (the `tls` feature). Certificates are always verified, so
    /// `require` here means what libpq calls `verify-full`.
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            database_url: "postgres://kafka_user:kafka_password@localhost:5432/food_orders"
                .to_owned(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
            idle_in_transaction_timeout: None,
            schema: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// A pool of connections to foodpipe's database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
    pg_config: tokio_postgres::Config,
    /// `user@host:port/db`, never the password: safe to log.
    target: String,
    tls: Tls,
}

/// How connections are made: plaintext, or TLS for `sslmode=require`.
#[derive(Clone)]
enum Tls {
    Off,
    #[cfg(feature = "tls")]
    On(tokio_postgres_rustls::MakeRustlsConnect),
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tls::Off => f.write_str("Off"),
            #[cfg(feature = "tls")]
            Tls::On(_) => f.write_str("On"),
        }
    }
}

impl Tls {
    /// TLS when the URL requires it; `disable` and `prefer` (the default)
    /// stay plaintext, so a server with an untrusted certificate does not
    /// turn `prefer` into a failure.
    fn for_config(pg_config: &tokio_postgres::Config, config: &StoreConfig) -> Result<Tls> {
        if pg_config.get_ssl_mode() != tokio_postgres::config::SslMode::Require {
            return Ok(Tls::Off);
        }
        #[cfg(feature = "tls")]
        {
            let tls = config.tls.as_ref().ok_or_else(|| {
                Error::BadUrl("sslmode=require, but no TLS configuration was given".into())
            })?;
            Ok(Tls::On(tokio_postgres_rustls::MakeRustlsConnect::new(
                (**tls).clone(),
            )))
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = config;
            Err(Error::TlsNotBuiltIn)
        }
    }

    fn manager(&self, pg_config: tokio_postgres::Config) -> Manager {
        let config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        match self {
            Tls::Off => Manager::from_config(pg_config, NoTls, config),
            #[cfg(feature = "tls")]
            Tls::On(tls) => Manager::from_config(pg_config, tls.clone(), config),
        }
    }
}

/// A schema name foodpipe accepts: lowercase letters, digits and `_`,
/// not starting with a digit, so it never needs quoting.
fn check_schema_name(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::BadSchema(schema.to_owned()))
    }
}

/// `user@host:port/db` of a config, for messages; never the password.
pub fn describe_target(config: &tokio_postgres::Config) -> String {
    let user = config.get_user().unwrap_or("(default user)");
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(i)
                .or_else(|| config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let db = config.get_dbname().unwrap_or(user);
    format!("{user}@{}/{db}", hosts.join(","))
}

impl Store {
    /// Builds the pool and opens one connection to prove the URL works.
    pub async fn connect(config: &StoreConfig) -> Result<Store> {
        let mut pg_config = tokio_postgres::Config::from_str(&config.database_url)
            .map_err(|e| Error::BadUrl(e.to_string()))?;
        if pg_config.get_connect_timeout().is_none() {
            pg_config.connect_timeout(config.connect_timeout);
        }
        pg_config.application_name("foodpipe");
        let mut options = pg_config.get_options().unwrap_or_default().to_owned();
        if let Some(t) = config.idle_in_transaction_timeout {
            options.push_str(&format!(
                " -c idle_in_transaction_session_timeout={}",
                t.as_millis()
            ));
        }
        if let Some(schema) = &config.schema {
            check_schema_name(schema)?;
            options.push_str(&format!(" -c search_path={schema}"));
        }
        if !options.trim().is_empty() {
            pg_config.options(options.trim());
        }
        let target = describe_target(&pg_config);
        let tls = Tls::for_config(&pg_config, config)?;
        let manager = tls.manager(pg_config.clone());
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.connect_timeout * 2))
            .create_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| Error::BadUrl(e.to_string()))?;
        let store = Store {
            pool,
            pg_config,
            target,
            tls,
        };
        drop(store.client().await?);
        if let Some(schema) = &config.schema {
            store
                .client()
                .await?
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await?;
        }
        Ok(store)
    }

    /// Sets how many connections the pool may hold. Each connection keeps
    /// buffers as large as the largest batch it sent, so a consumer sizes
    /// its pool to its partitions rather than a fixed guess.
    pub fn resize_pool(&self, max_size: usize) {
        self.pool.resize(max_size.max(1));
    }

    /// `user@host:port/db`, safe to print.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|source| Error::Connect {
            target: self.target.clone(),
            source,
        })
    }

    /// Answers if PostgreSQL does: for health checks.
    pub async fn ping(&self) -> Result<()> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Applies the migrations in `migrations/` that are not applied yet.
    pub async fn migrate(&self) -> Result<()> {
        // refinery wants a plain client; a dedicated connection also keeps
        // the session-level advisory lock away from pooled connections.
        let (mut client, conn) = match &self.tls {
            Tls::Off => {
                let (client, connection) = self.pg_config.connect(NoTls).await?;
                (client, tokio::spawn(connection))
            }
            #[cfg(feature = "tls")]
            Tls::On(tls) => {
                let (client, connection) = self.pg_config.connect(tls.clone()).await?;
                (client, tokio::spawn(connection))
            }
        };
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let report = embedded::migrations::runner()
            .run_async(&mut client)
            .await
            .map_err(|e| Error::Migrate(e.to_string()));
        // Closing the connection releases the lock even if migrating failed.
        drop(client);
        let _ = conn.await;
        for m in report?.applied_migrations() {
            tracing::info!(migration = %m, "applied migration");
        }
        Ok(())
    }

    /// The stored next offset of each partition of `topic` for `group`.
    pub async fn offsets(&self, group: &str, topic: &str) -> Result<Vec<(i32, i64)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(include_str!("sql/select_offsets.sql"))
            .await?;
        let rows = client.query(&stmt, &[&group, &topic]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// How many of the migrations this build knows are applied.
    pub async fn migration_status(&self) -> Result<(usize, usize)> {
        let known = embedded::migrations::runner().get_migrations().len();
        let applied = match self
            .client()
            .await?
            .query_one("SELECT count(*) FROM refinery_schema_history", &[])
            .await
        {
            Ok(row) => row.get::<_, i64>(0) as usize,
            // No history table yet: nothing applied.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => 0,
            Err(e) => return Err(e.into()),
        };
        Ok((applied, known))
    }

    /// The stored offset of a partition, if the group has one.
    pub async fn stored_offset(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<StoredOffset>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(include_str!("sql/select_offset.sql"))
            .await?;
        let row = client
            .query_opt(&stmt, &[&group, &topic, &partition])
            .await?;
        Ok(row.map(|r| StoredOffset {
            next_offset: r.get(0),
            incarnation: r.get(1),
            last_fingerprint: r.get(2),
        }))
    }

    /// The event id of the history row from `topic`/`partition` at
    /// (`incarnation`, `offset`), if that record was applied.
    pub async fn event_id_at(
        &self,
        topic: &str,
        partition: i32,
        incarnation: i32,
        offset: i64,
    ) -> Result<Option<uuid::Uuid>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT event_id FROM order_events WHERE kafka_topic = $1 \
                 AND kafka_partition = $2 AND kafka_incarnation = $3 AND kafka_offset = $4",
                &[&topic, &partition, &incarnation, &offset],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Stores `initial` as the partition's next offset unless one is stored
    /// already, and returns the stored one.
    pub async fn init_offset(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        initial: i64,
    ) -> Result<StoredOffset> {
        {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(include_str!("sql/init_offset.sql"))
                .await?;
            client
                .execute(&stmt, &[&group, &topic, &partition, &initial])
                .await?;
        }
        self.stored_offset(group, topic, partition)
            .await?
            .ok_or_else(|| Error::Migrate("consumer_offsets row vanished after insert".into()))
    }

    /// Records `gap` in `offset_gaps` and moves the stored offset to
    /// `gap.reset_to`, in one transaction; compare-and-set against
    /// `gap.stored`. Returns false (and changes nothing) if the stored
    /// offset was no longer `gap.stored`.
    pub async fn reset_offset(&self, gap: &Gap<'_>) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let stmt = tx
            .prepare_cached(include_str!("sql/reset_offset.sql"))
            .await?;
        let moved = tx
            .execute(
                &stmt,
                &[
                    &gap.group,
                    &gap.topic,
                    &gap.partition,
                    &gap.reset_to,
                    &gap.new_incarnation,
                    &gap.stored.next_offset,
                    &gap.stored.incarnation,
                ],
            )
            .await?;
        if moved != 1 {
            return Ok(false);
        }
        let stmt = tx
            .prepare_cached(include_str!("sql/insert_gap.sql"))
            .await?;
        tx.execute(
            &stmt,
            &[
                &gap.group,
                &gap.topic,
                &gap.partition,
                &gap.reason,
                &gap.stored.next_offset,
                &gap.earliest,
                &gap.latest,
                &gap.reset_to,
                &gap.policy,
                &gap.stored.incarnation,
                &gap.new_incarnation,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// A partition's stored position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredOffset {
    /// The next record to apply.
    pub next_offset: i64,
    /// Which log of the partition `next_offset` refers to; goes up when the
    /// topic is found recreated.
    pub incarnation: i32,
    /// [`fold::fingerprint`] of the record at `next_offset - 1`.
    pub last_fingerprint: Option<i64>,
}

/// A stored offset that cannot be used as it is, and what replaces it.
#[derive(Debug, Clone)]
pub struct Gap<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    /// `retention`, `log_end` or `recreated`.
    pub reason: &'static str,
    pub stored: StoredOffset,
    pub earliest: i64,
    pub latest: i64,
    pub reset_to: i64,
    pub new_incarnation: i32,
    pub policy: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The printable target of a URL never contains its password.
    #[test]
    fn target_hides_password() {
        let config =
            tokio_postgres::Config::from_str("postgres://kafka_user:s3cret@db.example:6543/food")
                .expect("valid url");
        let target = describe_target(&config);
        assert_eq!(target, "kafka_user@db.example:6543/food");
        assert!(!target.contains("s3cret"));
    }
}
