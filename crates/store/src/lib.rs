//! foodpipe's PostgreSQL side.
//!
//! - [`Store::connect`]: a deadpool pool from a `DATABASE_URL`, checked once
//!   so a wrong URL fails at start with a clear message. Connecting writes
//!   nothing, so read-only commands work with a role that may only SELECT.
//! - [`Store::migrate`]: the schema if one is named, and the SQL files of
//!   `migrations/`, embedded and applied by refinery under an advisory lock
//!   (several consumers may start at once). [`Store::check_migrated`] is
//!   what read-only commands do instead: check, change nothing.
//! - [`fold`]: the pure part of a batch: which records are new, which are
//!   duplicates, what each touched order becomes, which are dead letters.
//! - [`Store::apply_batch`]: one transaction per fetched batch: history, view,
//!   dead letters and the partition's next offset commit together or not at
//!   all (invariant 3).
//!
//! This crate never depends on rskafka: it sees records as offsets and bytes.

mod apply;
mod asof;
pub mod bulk;
mod compare;
mod error;
pub mod fold;
pub mod headers;
mod membership;
pub mod projection;
mod projection_fill;
mod projection_store;
mod report;

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;

pub use apply::{Applied, Batch};
pub use asof::{OrderAsOf, OrdersAsOf};
pub use compare::{BOOKKEEPING_COLUMNS, KeyDifference, compare_tables};
/// A transaction on a pooled connection (`rebuild`'s swap runs in one).
pub use deadpool_postgres::Transaction;
pub use error::{Error, Result};
pub use fold::SourceRecord;
pub use membership::{
    BrokerReach, GroupRow, GroupView, Lease, LeaseRow, Member, MemberRow, PartitionOwner,
    RebuildClaim,
};
pub use projection::{Definition, Kind as ProjectionKind, ProjectionRow, TableRows};
pub use projection_store::{Ensured, quote as quote_identifier};
pub use report::{DeadLetterList, DeadLetterRow, GapRow, Gaps, StatusReport};

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// The `DATABASE_URL` when none is given: the local stack `make up` starts
/// (role `kafka_user`, database `food_orders`). The one definition of it.
pub const DEFAULT_DATABASE_URL: &str =
    "postgres://kafka_user:kafka_password@localhost:5432/food_orders";

/// The suffix of a rebuild's shadow schema (`public_rebuild`); its name
/// also keys the rebuild's claim, which a projection's fill holds too.
pub const REBUILD_SHADOW_SUFFIX: &str = "_rebuild";

/// Advisory lock key taken while migrating ("foodpipe" in ASCII, truncated).
const MIGRATION_LOCK: i64 = 0x666f_6f64_7069_7065;

/// How to reach PostgreSQL. Its `Debug` shows the URL as
/// `user@host:port/db`, never the password.
#[derive(Clone)]
pub struct StoreConfig {
    /// A libpq-style URL, `postgres://user:password@host:port/db`.
    pub database_url: String,
    /// The most connections the pool opens (it opens them as they are
    /// needed). `consume` runs three pools: one connection for heartbeats
    /// alone, a few for the control plane, `--db-connections` for commits.
    pub pool_size: usize,
    /// How long to wait for a connection before giving up.
    pub connect_timeout: Duration,
    /// PostgreSQL ends a session that sits this long inside a transaction
    /// (`idle_in_transaction_session_timeout`), so a paused consumer cannot
    /// hold row locks that stop the member taking over its partitions.
    pub idle_in_transaction_timeout: Option<Duration>,
    /// Bounds every statement and every wait on the server: PostgreSQL
    /// cancels a statement that runs (or waits for a lock) this long
    /// (`statement_timeout`), and the kernel drops a connection whose sent
    /// data goes unacknowledged this long (TCP_USER_TIMEOUT, with
    /// keepalives), so a half-open socket cannot hang a member for the
    /// TCP keepalive time (two hours by default). Both come back as
    /// transient errors, retried on a new connection.
    pub statement_timeout: Option<Duration>,
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

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Configs reach logs through `{:?}` of whatever embeds them.
        let target = tokio_postgres::Config::from_str(&self.database_url)
            .map_or_else(|_| "(unparsable URL)".to_owned(), |c| describe_target(&c));
        let mut d = f.debug_struct("StoreConfig");
        d.field("database_url", &target)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field(
                "idle_in_transaction_timeout",
                &self.idle_in_transaction_timeout,
            )
            .field("statement_timeout", &self.statement_timeout)
            .field("schema", &self.schema);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls.is_some());
        d.finish()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
            idle_in_transaction_timeout: None,
            statement_timeout: None,
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
    /// The schema named in the config, if any: [`Store::migrate`] creates it.
    schema: Option<String>,
    /// The SQL projections attached when a batch last looked (apply.rs).
    attached: std::sync::Arc<std::sync::Mutex<projection::Attached>>,
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

/// The longest identifier PostgreSQL keeps (`NAMEDATALEN - 1` bytes). A
/// longer name is silently truncated, so a name derived by appending to
/// an accepted one could turn into another schema: the derived names below
/// always fit.
pub const MAX_SCHEMA_NAME_BYTES: usize = 63;

/// Checks a schema name foodpipe accepts: lowercase letters, digits and
/// `_`, not starting with a digit (so it never needs quoting), at most
/// [`MAX_SCHEMA_NAME_BYTES`] long (so PostgreSQL never truncates it).
pub fn check_schema_name(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= MAX_SCHEMA_NAME_BYTES
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

/// The name of a schema that belongs to `schema` (e.g. its rebuild shadow):
/// `<schema><suffix>` when that fits in [`MAX_SCHEMA_NAME_BYTES`],
/// otherwise `schema` cut short, `_`, eight hex digits of a hash of the
/// whole of `schema`, and `suffix`. Either way a valid name that PostgreSQL
/// keeps whole and that is never `schema` itself, checked before any
/// statement uses it. `suffix` must start with `_` and be at most 40 bytes.
pub fn derived_schema_name(schema: &str, suffix: &str) -> Result<String> {
    check_schema_name(schema)?;
    const HASH: usize = 1 + 8;
    let fits = suffix.starts_with('_') && suffix.len() + HASH < MAX_SCHEMA_NAME_BYTES - 8;
    if !fits {
        return Err(Error::BadSchema(format!("{schema}{suffix}")));
    }
    let name = if schema.len() + suffix.len() <= MAX_SCHEMA_NAME_BYTES {
        format!("{schema}{suffix}")
    } else {
        // A stable FNV-1a of the whole name keeps two long names that
        // share their first bytes apart.
        let hash = fold::fingerprint(chrono::DateTime::UNIX_EPOCH, Some(schema.as_bytes()), None);
        let keep = MAX_SCHEMA_NAME_BYTES - HASH - suffix.len();
        // ASCII only (checked above), so any byte index is a char boundary.
        format!("{}_{:08x}{suffix}", &schema[..keep], hash as u32)
    };
    check_schema_name(&name)?;
    if name == schema {
        return Err(Error::BadSchema(name));
    }
    Ok(name)
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
    /// Writes nothing: a schema named in the config is created by
    /// [`Store::migrate`], never here.
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
        if let Some(t) = config.statement_timeout {
            options.push_str(&format!(" -c statement_timeout={}", t.as_millis()));
            pg_config
                .tcp_user_timeout(t)
                .keepalives(true)
                .keepalives_idle(t.min(Duration::from_secs(30)).max(Duration::from_secs(1)));
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
            // Every connection gets the relation SQL projections read; a
            // role that may not make temporary tables gets a clear error
            // from the batch that needs it, not at connect.
            .post_create(deadpool_postgres::Hook::async_fn(|client, _| {
                Box::pin(async move {
                    if let Err(e) = client
                        .batch_execute(include_str!("sql/applied_events.sql"))
                        .await
                    {
                        tracing::debug!(error = %e, "cannot make the applied_events relation");
                    }
                    Ok(())
                })
            }))
            .build()
            .map_err(|e| Error::BadUrl(e.to_string()))?;
        let store = Store {
            pool,
            pg_config,
            target,
            tls,
            schema: config.schema.clone(),
            attached: std::sync::Arc::default(),
        };
        drop(store.client().await?);
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

    /// Creates the configured schema if it is missing and applies the
    /// migrations in `migrations/` that are not applied yet; says which.
    pub async fn migrate(&self) -> Result<Migrated> {
        // refinery wants a plain client; a dedicated connection also keeps
        // the session-level advisory lock away from pooled connections.
        let (mut client, conn) = self.dedicated(&self.pg_config).await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let result = self.migrate_locked(&mut client).await;
        // Closing the connection releases the lock even if migrating failed.
        drop(client);
        let _ = conn.await;
        let migrated = result?;
        for m in &migrated.applied {
            tracing::info!(migration = %m, schema = %migrated.schema, "applied migration");
        }
        Ok(migrated)
    }

    /// A connection of its own, outside the pool, made with `pg_config`
    /// (this store's, or a copy with another `application_name`): for a
    /// session-level advisory lock, which must not stay behind on a pooled
    /// connection. Dropping the client and awaiting the task closes it.
    async fn dedicated(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> Result<(
        tokio_postgres::Client,
        tokio::task::JoinHandle<std::result::Result<(), tokio_postgres::Error>>,
    )> {
        Ok(match &self.tls {
            Tls::Off => {
                let (client, connection) = pg_config.connect(NoTls).await?;
                (client, tokio::spawn(connection))
            }
            #[cfg(feature = "tls")]
            Tls::On(tls) => {
                let (client, connection) = pg_config.connect(tls.clone()).await?;
                (client, tokio::spawn(connection))
            }
        })
    }

    /// The schema and the migrations, on a connection holding the
    /// migration lock.
    async fn migrate_locked(&self, client: &mut tokio_postgres::Client) -> Result<Migrated> {
        if let Some(schema) = &self.schema {
            // The session's search_path already names it: PostgreSQL uses
            // a schema in the path from the moment it exists.
            let created = client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await;
            match created {
                Ok(()) => {}
                // Processes of older versions create it outside the lock and
                // race on IF NOT EXISTS: the loser gets a unique violation
                // on the catalog; the schema exists.
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
                        || e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_SCHEMA) => {
                }
                Err(e) => return Err(e.into()),
            }
        }
        let runner = embedded::migrations::runner();
        let known = runner.get_migrations().len();
        let report = runner
            .run_async(client)
            .await
            .map_err(|e| Error::Migrate(e.to_string()))?;
        let schema: String = client
            .query_one("SELECT coalesce(current_schema(), 'public')", &[])
            .await?
            .get(0);
        Ok(Migrated {
            schema,
            applied: report
                .applied_migrations()
                .iter()
                .map(ToString::to_string)
                .collect(),
            known,
        })
    }

    /// Checks, changing nothing, that the schema holds foodpipe's tables
    /// with every migration this build knows: what read-only commands do
    /// instead of [`Store::migrate`], so a mistyped `--schema` or a
    /// database never migrated is said in one line rather than created
    /// empty and reported as zeros.
    pub async fn check_migrated(&self) -> Result<()> {
        let client = self.client().await?;
        // to_regclass needs no privilege on the table and resolves names
        // through the search_path exactly as the queries that follow will.
        let row = client
            .query_one(
                "SELECT current_schema(), current_user::text, \
                        to_regclass('order_events') IS NOT NULL \
                        AND to_regclass('refinery_schema_history') IS NOT NULL",
                &[],
            )
            .await?;
        let schema = self
            .schema
            .clone()
            .or_else(|| row.get(0))
            .unwrap_or_else(|| "public".to_owned());
        if !row.get::<_, bool>(2) {
            // A schema this role may not use is invisible to it: say so
            // rather than that it is empty.
            let usable: Option<bool> = client
                .query_opt(
                    "SELECT has_schema_privilege(oid, 'USAGE') FROM pg_namespace WHERE nspname = $1",
                    &[&schema],
                )
                .await?
                .map(|r| r.get(0));
            if usable == Some(false) {
                return Err(Error::SchemaNotUsable {
                    schema,
                    role: row.get(1),
                });
            }
            return Err(Error::NotMigrated { schema });
        }
        let applied: Vec<i64> = client
            .query("SELECT version::int8 FROM refinery_schema_history", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let missing: Vec<String> = embedded::migrations::runner()
            .get_migrations()
            .iter()
            .filter(|m| !applied.contains(&i64::from(m.version())))
            .map(ToString::to_string)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::MigrationsMissing { schema, missing })
        }
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
            fingerprint_offset: r.get(3),
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
        insert_initial_offset(&self.client().await?, group, topic, partition, initial).await?;
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
        insert_gap(&tx, gap).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// Stores `initial` as the partition's next offset unless one is stored
/// already: the one place an offset row is created for a group that has
/// never read the partition ([`Store::init_offset`], a lease's take).
async fn insert_initial_offset(
    client: &deadpool_postgres::Client,
    group: &str,
    topic: &str,
    partition: i32,
    initial: i64,
) -> Result<()> {
    let stmt = client
        .prepare_cached(include_str!("sql/init_offset.sql"))
        .await?;
    client
        .execute(&stmt, &[&group, &topic, &partition, &initial])
        .await?;
    Ok(())
}

/// What [`Store::migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The schema migrated: the one configured, or the connection's default.
    pub schema: String,
    /// The migrations this call applied, in order, e.g. `V1__initial`.
    pub applied: Vec<String>,
    /// How many migrations this build knows.
    pub known: usize,
}

impl std::fmt::Display for Migrated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for m in &self.applied {
            writeln!(f, "applied {m} to schema {}", self.schema)?;
        }
        if self.applied.is_empty() {
            writeln!(
                f,
                "schema {} is up to date: all {} migrations were applied before; nothing to do",
                self.schema, self.known
            )
        } else {
            writeln!(
                f,
                "schema {} is up to date: {} migrations applied now, {} before",
                self.schema,
                self.applied.len(),
                self.known.saturating_sub(self.applied.len())
            )
        }
    }
}

/// Records `gap` in `offset_gaps`, inside the transaction that moved the
/// stored offset.
pub(crate) async fn insert_gap(
    tx: &impl deadpool_postgres::GenericClient,
    gap: &Gap<'_>,
) -> Result<()> {
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
    Ok(())
}

/// A partition's stored position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredOffset {
    /// The next record to apply.
    pub next_offset: i64,
    /// Which log of the partition `next_offset` refers to; goes up when the
    /// topic is found recreated.
    pub incarnation: i32,
    /// [`fold::fingerprint`] of the last record applied, the one at
    /// [`StoredOffset::fingerprinted_offset`].
    pub last_fingerprint: Option<i64>,
    /// The offset of the record `last_fingerprint` describes. `None` for a
    /// fingerprint stored before migration V9, which described the record
    /// at `next_offset - 1`.
    pub fingerprint_offset: Option<i64>,
}

impl StoredOffset {
    /// The offset of the record the stored fingerprint describes, or of the
    /// record before the stored offset when there is no fingerprint (the
    /// take then compares event ids with history). A batch's next offset
    /// may lie past transaction markers, which are not records to compare.
    pub fn fingerprinted_offset(&self) -> i64 {
        match (self.last_fingerprint, self.fingerprint_offset) {
            (Some(_), Some(offset)) => offset,
            _ => self.next_offset - 1,
        }
    }
}

/// A stored offset that cannot be used as it is, and what replaces it.
#[derive(Debug, Clone)]
pub struct Gap<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    /// `retention`, `log_end`, `recreated` or `position_clash`.
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

    /// `migrate` says each migration it applied, or that there was nothing to do.
    #[test]
    fn migrated_says_what_it_applied() {
        let now = Migrated {
            schema: "billing".to_owned(),
            applied: vec!["V5__x".to_owned(), "V6__y".to_owned()],
            known: 6,
        };
        assert_eq!(
            now.to_string(),
            "applied V5__x to schema billing\napplied V6__y to schema billing\n\
             schema billing is up to date: 2 migrations applied now, 4 before\n"
        );
        let before = Migrated {
            applied: vec![],
            ..now
        };
        assert_eq!(
            before.to_string(),
            "schema billing is up to date: all 6 migrations were applied before; nothing to do\n"
        );
    }

    /// The default DATABASE_URL is the local stack's, and StoreConfig uses it.
    #[test]
    fn default_url_is_the_one_definition() {
        assert_eq!(StoreConfig::default().database_url, DEFAULT_DATABASE_URL);
        assert!(DEFAULT_DATABASE_URL.ends_with("@localhost:5432/food_orders"));
    }

    /// Every accepted schema length gets a rebuild shadow name that is valid, kept whole by PostgreSQL and never the live name.
    #[test]
    fn derived_names_always_fit_and_differ() {
        for len in 1..=MAX_SCHEMA_NAME_BYTES {
            let live: String = "s".repeat(len);
            let shadow = derived_schema_name(&live, "_rebuild").expect("derivable");
            assert!(shadow.len() <= MAX_SCHEMA_NAME_BYTES, "{shadow}");
            assert!(check_schema_name(&shadow).is_ok(), "{shadow}");
            assert_ne!(shadow, live);
            // What PostgreSQL would make of it: the first 63 bytes.
            assert_ne!(&shadow[..shadow.len().min(MAX_SCHEMA_NAME_BYTES)], live);
            if len <= MAX_SCHEMA_NAME_BYTES - "_rebuild".len() {
                assert_eq!(
                    shadow,
                    format!("{live}_rebuild"),
                    "short names keep the plain form"
                );
            }
        }
        // Two long names that share their first bytes get different shadows.
        let a = format!("{}a", "x".repeat(62));
        let b = format!("{}b", "x".repeat(62));
        assert_ne!(
            derived_schema_name(&a, "_rebuild").expect("a"),
            derived_schema_name(&b, "_rebuild").expect("b")
        );
        // The same name always gets the same shadow (a leftover is found again).
        assert_eq!(
            derived_schema_name(&a, "_rebuild").expect("a"),
            derived_schema_name(&a, "_rebuild").expect("a")
        );
        assert!(derived_schema_name(&"s".repeat(64), "_rebuild").is_err());
        assert!(derived_schema_name("Public", "_rebuild").is_err());
        assert!(
            derived_schema_name("live", "rebuild").is_err(),
            "suffix must start with _"
        );
    }

    /// Schema names that need quoting or that PostgreSQL would truncate are refused.
    #[test]
    fn schema_names_are_checked() {
        for ok in ["public", "a", "replay_noon", "s2", &"x".repeat(63)] {
            assert!(check_schema_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "2s",
            "Public",
            "a-b",
            "a b",
            "a;drop",
            "é",
            &"x".repeat(64),
        ] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }

    /// `{:?}` of a StoreConfig, of a Store's connection config, and of an unparsable URL never shows the password.
    #[test]
    fn debug_hides_password() {
        let config = StoreConfig {
            database_url: "postgres://kafka_user:s3cret@db.example:6543/food".to_owned(),
            ..StoreConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(shown.contains("kafka_user@db.example:6543/food"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        // What a Store holds (and derives Debug with).
        let pg = tokio_postgres::Config::from_str(&config.database_url).expect("valid url");
        assert!(!format!("{pg:?}").contains("s3cret"));
        // A URL that does not parse is not echoed either.
        let broken = StoreConfig {
            database_url: "postgres://u:s3cret@host:notaport/db".to_owned(),
            ..StoreConfig::default()
        };
        assert!(!format!("{broken:?}").contains("s3cret"));
        // Nor the keyword form.
        let keywords = StoreConfig {
            database_url: "host=db user=u password=s3cret dbname=food".to_owned(),
            ..StoreConfig::default()
        };
        let shown = format!("{keywords:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("u@db:5432/food"),
            "{shown}"
        );
    }

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
