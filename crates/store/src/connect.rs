//! The connection side: [`StoreConfig`], the pool ([`Store::connect`]), TLS,
//! a dedicated connection outside the pool, and [`describe_target`].

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;

use crate::{DEFAULT_DATABASE_URL, Error, Result, check_schema_name};

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
    /// Every transaction of every connection read-only
    /// (`default_transaction_read_only`): PostgreSQL itself refuses any
    /// write, whatever the code above asks. `watch` connects this way.
    pub read_only: bool,
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
            .field("schema", &self.schema)
            .field("read_only", &self.read_only);
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
            read_only: false,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// A pool of connections to foodpipe's database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
    pub(crate) pg_config: tokio_postgres::Config,
    /// `user@host:port/db`, never the password: safe to log.
    target: String,
    tls: Tls,
    /// The schema named in the config, if any: [`Store::migrate`] creates it.
    pub(crate) schema: Option<String>,
    /// The SQL projections attached when a batch last looked (apply.rs).
    pub(crate) attached: std::sync::Arc<std::sync::Mutex<crate::projection::Attached>>,
    /// Connected with [`StoreConfig::read_only`].
    read_only: bool,
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
        if config.read_only {
            options.push_str(" -c default_transaction_read_only=on");
        }
        if !options.trim().is_empty() {
            pg_config.options(options.trim());
        }
        let target = describe_target(&pg_config);
        let tls = Tls::for_config(&pg_config, config)?;
        let manager = tls.manager(pg_config.clone());
        let read_only = config.read_only;
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.connect_timeout * 2))
            .create_timeout(Some(config.connect_timeout))
            // Every connection gets the relation SQL projections read; a
            // role that may not make temporary tables gets a clear error
            // from the batch that needs it, not at connect.
            // A read-only session may not make one, and needs none.
            .post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
                Box::pin(async move {
                    if read_only {
                        return Ok(());
                    }
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
            read_only,
        };
        drop(store.client().await?);
        Ok(store)
    }

    /// True when every transaction is read-only ([`StoreConfig::read_only`]).
    pub fn is_read_only(&self) -> bool {
        self.read_only
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

    /// A connection of its own, outside the pool, made with `pg_config`
    /// (this store's, or a copy with another `application_name`): for a
    /// session-level advisory lock, which must not stay behind on a pooled
    /// connection. Dropping the client and awaiting the task closes it.
    pub(crate) async fn dedicated(
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default DATABASE_URL is the local stack's, and StoreConfig uses it.
    #[test]
    fn default_url_is_the_one_definition() {
        assert_eq!(StoreConfig::default().database_url, DEFAULT_DATABASE_URL);
        assert!(DEFAULT_DATABASE_URL.ends_with("@localhost:5432/food_orders"));
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
