//! A database of a test's own, read-only roles, and foodpipe's store on it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::NoTls;

use super::random_suffix;

/// A URL of the PostgreSQL under test whose role may create databases.
fn admin_url() -> String {
    std::env::var("FOODPIPE_TEST_DATABASE_URL").unwrap_or_else(|_| {
        "postgres://kafka_user:kafka_password@127.0.0.1:5432/food_orders".to_owned()
    })
}

/// A URL of the PostgreSQL under test as a role that may create roles
/// (kafka_user may not): trust auth for `postgres` on 127.0.0.1, as `make
/// up` finds it on these machines, unless FOODPIPE_TEST_SUPERUSER_URL says
/// otherwise.
fn superuser_url() -> String {
    std::env::var("FOODPIPE_TEST_SUPERUSER_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// How many events history (`order_events`) holds.
pub async fn history_len(pg: &tokio_postgres::Client) -> i64 {
    pg.query_one("SELECT count(*) FROM order_events", &[])
        .await
        .expect("count")
        .get(0)
}

/// Member `id` of `group` (host "test", pid 1, a new session), joined
/// through `store` with a first heartbeat that claims partitions.
pub async fn joined_member(
    store: &store::Store,
    group: &str,
    id: &str,
    session_timeout: Duration,
) -> store::Member {
    let member = store::Member {
        group: group.to_owned(),
        id: id.to_owned(),
        host: "test".to_owned(),
        pid: 1,
        session: uuid::Uuid::new_v4(),
        metrics_addr: None,
    };
    store
        .heartbeat(&member, "test", true, session_timeout)
        .await
        .unwrap_or_else(|e| panic!("{id} joins: {e}"));
    member
}

/// Damages the view of the first `n` orders (by id) of `schema`: status
/// back to pending, a last event that is in no history. Returns how many.
pub async fn damage_orders(pg: &tokio_postgres::Client, schema: &str, n: i64) -> u64 {
    pg.execute(
        &format!(
            "UPDATE {schema}.orders SET status = 'pending', last_event_id = gen_random_uuid() \
             WHERE order_id IN (SELECT order_id FROM {schema}.orders ORDER BY order_id LIMIT $1)"
        ),
        &[&n],
    )
    .await
    .expect("damage the view")
}

/// Builds source records from events, at offsets 0, 1, 2, ...
pub fn source_records(events: &[events::OrderEvent]) -> Vec<store::SourceRecord> {
    store::SourceRecord::from_events(events)
}

/// Connects to PostgreSQL or fails the test saying what is missing.
async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "integration tests need PostgreSQL (FOODPIPE_TEST_DATABASE_URL or \
             kafka_user@127.0.0.1:5432/food_orders): {e}. Run `make up` first."
            )
        });
    tokio::spawn(connection);
    client
}

/// A database of its own for one test, dropped by [`TestDb::drop_db`].
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    /// The `DATABASE_URL` to give foodpipe.
    pub url: String,
}

impl TestDb {
    /// Creates an empty database; foodpipe applies the migrations on start.
    pub async fn create() -> TestDb {
        let admin = pg_connect(&admin_url()).await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        drop_stale_databases(&admin, now).await;
        let name = format!("fp_test_{now}_{}", &random_suffix()[..8]);
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let url = rewrite_dbname(&admin_url(), &name);
        TestDb { name, url }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        pg_connect(&self.url).await
    }

    /// foodpipe's store on this database (`schema`, or the default),
    /// migrated, through the library.
    pub async fn migrated_store(&self, schema: Option<&str>) -> store::Store {
        let store = store::Store::connect(&store::StoreConfig {
            database_url: self.url.clone(),
            schema: schema.map(str::to_owned),
            ..store::StoreConfig::default()
        })
        .await
        .expect("connect");
        store.migrate().await.expect("migrate");
        store
    }

    /// Drops the database; call at the end of a passing test. A failing
    /// test leaves it for inspection; later runs drop it after an hour.
    pub async fn drop_db(self) {
        let admin = pg_connect(&admin_url()).await;
        let _ = admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

/// A login role that may only read: USAGE on some schemas of one test
/// database and SELECT on their tables, nothing else. Dropped by
/// [`ReadOnlyRole::drop_role`] after the database.
#[derive(Debug)]
pub struct ReadOnlyRole {
    pub name: String,
    /// The `DATABASE_URL` that logs in as this role.
    pub url: String,
}

impl TestDb {
    /// Creates a role that may only SELECT from the tables of `schemas` in
    /// this database (as they are now: grant after migrating).
    pub async fn read_only_role(&self, schemas: &[&str]) -> ReadOnlyRole {
        let su_url = superuser_url();
        let (su, connection) = tokio_postgres::connect(&su_url, NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "this test creates a read-only role and needs a superuser of the PostgreSQL \
                     under test (FOODPIPE_TEST_SUPERUSER_URL, default postgres@127.0.0.1:5432): {e}"
                )
            });
        tokio::spawn(connection);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        drop_stale_roles(&su, now).await;
        let name = format!("fp_ro_{now}_{}", &random_suffix()[..8]);
        su.batch_execute(&format!(
            "CREATE ROLE {name} LOGIN PASSWORD '{name}' NOSUPERUSER NOCREATEDB NOCREATEROLE"
        ))
        .await
        .unwrap_or_else(|e| panic!("cannot create role {name}: {e}"));
        // The database's owner grants, as an operator would.
        let owner = self.client().await;
        for schema in schemas {
            owner
                .batch_execute(&format!(
                    "GRANT USAGE ON SCHEMA {schema} TO {name}; \
                     GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {name}"
                ))
                .await
                .unwrap_or_else(|e| panic!("cannot grant {schema} to {name}: {e}"));
        }
        let (scheme, rest) = self.url.split_once("://").expect("a URL");
        let (_, host_and_path) = rest.rsplit_once('@').expect("a URL with a user");
        let url = format!("{scheme}://{name}:{name}@{host_and_path}");
        ReadOnlyRole { name, url }
    }
}

impl ReadOnlyRole {
    /// Drops the role; call after dropping the database it was granted in.
    pub async fn drop_role(self) {
        if let Ok((su, connection)) = tokio_postgres::connect(&superuser_url(), NoTls).await {
            tokio::spawn(connection);
            let _ = su
                .batch_execute(&format!("DROP ROLE IF EXISTS {}", self.name))
                .await;
        }
    }
}

/// Drops what failed runs left behind more than an hour ago: the names
/// `list` returns carry their creation time (`fp_<kind>_<unix time>_…`),
/// and `drop` is the statement for one of them (`{}` is the name).
async fn drop_stale(client: &tokio_postgres::Client, now: u64, list: &str, drop: &str) {
    let Ok(rows) = client.query(list, &[]).await else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let created: Option<u64> = name.split('_').nth(2).and_then(|s| s.parse().ok());
        if created.is_some_and(|t| t + 3600 < now) {
            let _ = client.batch_execute(&drop.replace("{}", &name)).await;
        }
    }
}

/// Read-only roles (a role still granted in a kept database stays).
async fn drop_stale_roles(su: &tokio_postgres::Client, now: u64) {
    let list = "SELECT rolname FROM pg_roles WHERE rolname LIKE 'fp\\_ro\\_%'";
    drop_stale(su, now, list, "DROP ROLE IF EXISTS {}").await;
}

/// Test databases.
async fn drop_stale_databases(admin: &tokio_postgres::Client, now: u64) {
    let list = "SELECT datname FROM pg_database WHERE datname LIKE 'fp\\_test\\_%'";
    drop_stale(admin, now, list, "DROP DATABASE IF EXISTS {} WITH (FORCE)").await;
}

/// `url` with its host replaced (userinfo, port, path and query kept).
pub fn db_url_with_host(url: &str, host: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let port = hostport.rsplit_once(':').map_or("5432", |(_, p)| p);
    format!("{scheme}://{userinfo}{host}:{port}/{path}")
}

/// `url` with its database name replaced by `dbname`.
fn rewrite_dbname(url: &str, dbname: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{dbname}?{q}"),
        None => format!("{base}/{dbname}"),
    }
}

/// Folds `records` of `partition` (group `g`, topic `t`, offsets from 0)
/// into `store` with `Store::apply_batch`, cut into batches at `cuts`.
pub async fn fold_cut(
    store: &store::Store,
    partition: i32,
    records: &[store::SourceRecord],
    cuts: &[usize],
) {
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (records.len() + 1)).collect();
    bounds.extend([0, records.len()]);
    bounds.sort_unstable();
    bounds.dedup();
    for w in bounds.windows(2) {
        store
            .apply_batch(&store::Batch {
                group: "g",
                topic: "t",
                partition,
                from_offset: w[0] as i64,
                next_offset: w[1] as i64,
                records: &records[w[0]..w[1]],
                incarnation: 0,
                lease: None,
            })
            .await
            .unwrap_or_else(|e| panic!("partition {partition} batch at {}: {e}", w[0]));
        tokio::task::yield_now().await;
    }
}

/// The runtime property tests against PostgreSQL run their cases on.
pub static RUNTIME: std::sync::LazyLock<tokio::runtime::Runtime> =
    std::sync::LazyLock::new(|| tokio::runtime::Runtime::new().expect("a tokio runtime"));

/// One database for every case of the property tests (each case makes
/// schemas of its own).
pub async fn shared_db() -> &'static TestDb {
    static DB: tokio::sync::OnceCell<TestDb> = tokio::sync::OnceCell::const_new();
    DB.get_or_init(TestDb::create).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-test database URL keeps user, password, host and query.
    #[test]
    fn dbname_is_rewritten() {
        assert_eq!(
            rewrite_dbname("postgres://u:p@h:5432/food_orders?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(rewrite_dbname("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(
            db_url_with_host("postgres://u:p@127.0.0.1:5432/db?x=1", "postgres"),
            "postgres://u:p@postgres:5432/db?x=1"
        );
    }
}
