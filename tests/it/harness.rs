//! Shared helpers: where the stack is, a fresh database per test, a random
//! topic per test, running the `foodpipe` binary, reading a topic back.

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use tokio::process::Command;
use tokio_postgres::NoTls;

/// The bootstrap list under test, as users set it.
pub fn bootstrap_servers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "localhost:9092".to_owned())
}

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

fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Where Kafka's default partitioner puts `key` among `partitions` (at least one).
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    let n = std::num::NonZeroU32::new(partitions).expect("a topic has partitions");
    partition::partition_for_key(key, n)
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
    events
        .iter()
        .enumerate()
        .map(|(i, e)| store::SourceRecord {
            offset: i as i64,
            timestamp: e.occurred_at,
            key: Some(e.customer_id.clone().into_bytes()),
            value: Some(e.to_json()),
            headers: Vec::new(),
            event: Ok(e.clone()),
        })
        .collect()
}

/// A topic name no other test uses.
pub fn random_topic_name() -> String {
    format!("it-{}", random_suffix())
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

/// A client of the broker under test, or a failed test saying what is missing.
pub async fn kafka_client() -> Client {
    kafka_client_at(&bootstrap_servers()).await
}

/// A client of the broker at `bootstrap`.
pub async fn kafka_client_at(bootstrap: &str) -> Client {
    let servers: Vec<String> = bootstrap.split(',').map(|s| s.trim().to_owned()).collect();
    let backoff = rskafka::BackoffConfig {
        deadline: Some(Duration::from_secs(10)),
        ..Default::default()
    };
    ClientBuilder::new(servers)
        .backoff_config(backoff)
        .build()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "integration tests need a Kafka broker at {bootstrap}: {e}. Run `make up` first."
            )
        })
}

/// A `foodpipe` command aimed at the stack under test, logging at defaults.
pub fn foodpipe(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_foodpipe"));
    cmd.args(args)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap_servers())
        .env_remove("RUST_LOG")
        .env_remove("DATABASE_URL")
        .env_remove("FOODPIPE_TOPIC")
        .env_remove("FOODPIPE_GROUP")
        .env_remove("FOODPIPE_SCHEMA")
        .env_remove("FOODPIPE_PROJECTIONS")
        // Many consumers run at once, each with the default metrics
        // address: they fall back to free ports, as on a user's host.
        .env_remove("FOODPIPE_METRICS_ADDR")
        .kill_on_drop(true);
    cmd
}

/// `foodpipe send` of raw bytes (lines of `KEY<TAB>VALUE`) to `topic`.
pub async fn send_lines(topic: &str, input: &[u8]) {
    send_lines_at(&bootstrap_servers(), topic, input).await;
}

/// Like [`send_lines`], to the broker at `bootstrap`.
pub async fn send_lines_at(bootstrap: &str, topic: &str, input: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let mut cmd = foodpipe(&["send", "--topic", topic, "--partitions", "3", "--quiet"]);
    cmd.env("KAFKA_BOOTSTRAP_SERVERS", bootstrap);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("send runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).await.expect("write lines");
    drop(stdin);
    let out = child.wait_with_output().await.expect("send finishes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command to completion, failing the test if it takes over `limit`.
pub async fn run_within(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("foodpipe binary runs");
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(output) => output.expect("foodpipe output readable"),
        Err(_) => panic!("foodpipe did not exit within {limit:?}: {cmd:?}"),
    }
}

/// Runs a command that must succeed, returning its stdout.
pub async fn run_ok(cmd: Command) -> String {
    let output = run_within(cmd, Duration::from_secs(120)).await;
    assert!(
        output.status.success(),
        "foodpipe failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 stdout")
}

/// A record read back from the topic, independently of foodpipe.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: std::collections::BTreeMap<String, Vec<u8>>,
    pub timestamp: chrono::DateTime<chrono::Utc>,
}

/// A record whose value is JSON, parsed.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub value: serde_json::Value,
}

/// Every record of every partition of `topic`, read with rskafka directly,
/// and each partition's high watermark.
pub async fn read_topic_raw(topic: &str) -> (Vec<RawRecord>, BTreeMap<i32, i64>) {
    read_topic_raw_at(&bootstrap_servers(), topic).await
}

/// Like [`read_topic_raw`], from the broker at `bootstrap`.
pub async fn read_topic_raw_at(
    bootstrap: &str,
    topic: &str,
) -> (Vec<RawRecord>, BTreeMap<i32, i64>) {
    let client = kafka_client_at(bootstrap).await;
    let partitions = client
        .list_topics()
        .await
        .expect("list topics")
        .into_iter()
        .find(|t| t.name == topic)
        .unwrap_or_else(|| panic!("topic {topic} exists"))
        .partitions;
    let mut records = Vec::new();
    let mut watermarks = BTreeMap::new();
    for partition in partitions {
        let pc = client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .expect("partition client");
        let end = pc
            .get_offset(OffsetAt::Latest)
            .await
            .expect("latest offset");
        watermarks.insert(partition, end);
        let mut offset = pc
            .get_offset(OffsetAt::Earliest)
            .await
            .expect("earliest offset");
        while offset < end {
            // Step by whole batches, so a transaction marker (a batch of no
            // records) is passed rather than asked for again forever.
            let fetched = pc
                .fetch_records_detailed(offset, 1..4_000_000, 100)
                .await
                .expect("fetch");
            let fetched = kafka::read_committed(offset, fetched);
            assert!(fetched.corrupt.is_none(), "corrupt batch: {fetched:?}");
            for r in fetched.records {
                records.push(RawRecord {
                    partition,
                    offset: r.offset,
                    key: r.record.key,
                    value: r.record.value,
                    headers: r.record.headers,
                    timestamp: r.record.timestamp,
                });
            }
            offset = fetched.next_offset;
        }
    }
    (records, watermarks)
}

/// Every record of `topic` on the broker at `bootstrap`, for topics of
/// JSON values.
pub async fn read_topic_at(bootstrap: &str, topic: &str) -> (Vec<TopicRecord>, BTreeMap<i32, i64>) {
    let (raw, watermarks) = read_topic_raw_at(bootstrap, topic).await;
    let records = raw
        .into_iter()
        .map(|r| TopicRecord {
            partition: r.partition,
            offset: r.offset,
            value: serde_json::from_slice(r.value.as_deref().expect("record has a value"))
                .expect("JSON value"),
        })
        .collect();
    (records, watermarks)
}

/// Creates `topic` with `partitions` partitions through rskafka.
pub async fn create_topic(topic: &str, partitions: i32) {
    create_topic_at(&bootstrap_servers(), topic, partitions).await;
}

/// Creates `topic` on the broker at `bootstrap`; returns the client.
pub async fn create_topic_at(bootstrap: &str, topic: &str, partitions: i32) -> Client {
    let client = kafka_client_at(bootstrap).await;
    client
        .controller_client()
        .expect("controller client")
        .create_topic(topic, partitions, 1, 5_000)
        .await
        .unwrap_or_else(|e| panic!("cannot create topic {topic}: {e}"));
    client
}

/// The Python of the venv `make up` made, with librdkafka (confluent-kafka).
pub fn librdkafka_python() -> std::path::PathBuf {
    let python = std::env::var_os("FOODPIPE_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".stack/venv/bin/python")
        });
    assert!(
        python.exists(),
        "{} is missing: run `make up` to create the venv with confluent-kafka",
        python.display()
    );
    python
}

/// A script of `scripts/`.
pub fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
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

/// A Tansu broker of a test's own, on a free port with its own data
/// directory, for tests that kill or restart the broker without
/// disturbing the shared one.
#[derive(Debug)]
pub struct PrivateBroker {
    pub address: String,
    /// What it tells clients to connect to (its advertised listener).
    advertised: String,
    /// More `tansu broker` flags, e.g. `--authentication`.
    extra_args: Vec<String>,
    dir: std::path::PathBuf,
    /// Removed on drop unless shared with other brokers.
    owns_dir: bool,
    /// The sqlite storage URL's query, e.g. `?maintenance_interval=1s`.
    storage_query: String,
    child: Option<tokio::process::Child>,
}

impl PrivateBroker {
    pub async fn start() -> PrivateBroker {
        Self::start_advertising(None).await
    }

    /// A broker that advertises `advertised` (e.g. `tcp://kafka:29092`)
    /// instead of its own address: the seed's listener gotcha. `{port}` in
    /// it stands for the port the broker listens on.
    pub async fn start_advertising(advertised: Option<&str>) -> PrivateBroker {
        let port = free_port();
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("tansu-{port}-{}", &random_suffix()[..8]));
        std::fs::create_dir_all(&dir).expect("broker data dir");
        let address = format!("127.0.0.1:{port}");
        let mut broker = PrivateBroker {
            advertised: advertised.map_or_else(
                || format!("tcp://{address}"),
                |a| a.replace("{port}", &port.to_string()),
            ),
            address,
            extra_args: Vec::new(),
            dir,
            owns_dir: true,
            storage_query: String::new(),
            child: None,
        };
        broker.spawn().await;
        broker
    }

    /// One of several brokers over one store: a broker on a port of its
    /// own whose sqlite store is `dir`'s, shared with the others started
    /// there (Tansu 0.6.0's brokers keep no state of their own, so brokers
    /// over one store are one cluster; each lists only itself, as node 111,
    /// in Metadata). Start them one after another: the first creates the
    /// store's tables.
    pub async fn start_sharing(dir: &std::path::Path) -> PrivateBroker {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let mut broker = PrivateBroker {
            advertised: format!("tcp://{address}"),
            address,
            extra_args: Vec::new(),
            dir: dir.to_owned(),
            owns_dir: false,
            storage_query: String::new(),
            child: None,
        };
        broker.spawn().await;
        broker
    }

    /// A broker whose store runs its maintenance (retention, compaction)
    /// every `interval`, e.g. `1s`.
    pub async fn start_maintaining(interval: &str) -> PrivateBroker {
        let mut broker = Self::start().await;
        broker.kill().await;
        broker.storage_query = format!("?maintenance_interval={interval}");
        broker.spawn().await;
        broker
    }

    /// Its log: `tansu.log` in its directory, or `tansu-PORT.log` in a
    /// shared one.
    fn log(&self) -> std::path::PathBuf {
        if self.owns_dir {
            self.dir.join("tansu.log")
        } else {
            let port = self.address.rsplit(':').next().unwrap_or("0");
            self.dir.join(format!("tansu-{port}.log"))
        }
    }

    /// Starts a killed broker again on its port and store.
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        // A broker sharing a store may die at start when another holds the
        // store's write lock (Tansu 0.6.0 unwraps "database is locked" in
        // its broker registration): start it again, a few times.
        let attempts = if self.owns_dir { 1 } else { 5 };
        for attempt in 1..=attempts {
            self.spawn_once();
            let limit = if attempt == attempts { 30 } else { 6 };
            if self.answers_within(Duration::from_secs(limit)).await {
                return;
            }
            self.kill().await;
        }
        panic!(
            "private Tansu on {} did not answer within 30 s; see {}",
            self.address,
            self.log().display()
        );
    }

    fn spawn_once(&mut self) {
        let tansu = which_tansu();
        let url = format!("tcp://{}", self.address);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("broker log");
        // Relative sqlite path: Tansu 0.6.0 doubles an absolute one.
        let child = Command::new(&tansu)
            .args([
                "broker",
                "--storage-engine",
                &format!("sqlite://tansu.db{}", self.storage_query),
            ])
            .args([
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &self.advertised,
            ])
            .args(&self.extra_args)
            .current_dir(&self.dir)
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", tansu.display()));
        self.child = Some(child);
    }

    async fn answers_within(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Answering metadata is "up", whatever address it advertises;
            // a broker that wants SASL first is up once it accepts.
            let up = if self.extra_args.iter().any(|a| a == "--authentication") {
                tokio::net::TcpStream::connect(&self.address).await.is_ok()
            } else {
                kafka::describe_cluster(&self.address, Duration::from_secs(1))
                    .await
                    .is_ok()
            };
            if up {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again on the same port and data.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// Starts it again on the same port and data with these extra flags,
    /// advertising `advertised` (`None`: its own address). Used by the
    /// tls/sasl tests, which compile only with those features.
    #[cfg_attr(not(all(feature = "tls", feature = "sasl")), allow(dead_code))]
    pub async fn restart_with(&mut self, extra_args: &[&str], advertised: Option<&str>) {
        self.extra_args = extra_args.iter().map(|a| (*a).to_owned()).collect();
        self.advertised =
            advertised.map_or_else(|| format!("tcp://{}", self.address), str::to_owned);
        self.restart().await;
    }

    /// Its data directory, for files a test puts beside it.
    #[cfg_attr(not(all(feature = "tls", feature = "sasl")), allow(dead_code))]
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `program` on PATH or in one of `more_dirs`, if it is anywhere.
pub fn find_program(program: &str, more_dirs: &[std::path::PathBuf]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(more_dirs.iter().cloned())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The `tansu` binary `make up` installs (into ~/.cargo/bin).
pub fn which_tansu() -> std::path::PathBuf {
    let cargo_bin: Vec<_> = std::env::var_os("HOME")
        .map(|h| std::path::PathBuf::from(h).join(".cargo/bin"))
        .into_iter()
        .collect();
    find_program("tansu", &cargo_bin).unwrap_or_else(|| {
        panic!(
            "this test runs a broker of its own and needs the tansu binary: run `make up` to install it"
        )
    })
}

/// What the `orders` view must hold for one order: the status and id of
/// its last event, folded here independently of foodpipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedOrder {
    pub status: &'static str,
    pub last_event_id: String,
}

/// The status an order has after an event of this type, written out from
/// the lifecycle rather than taken from foodpipe's state machine.
pub fn status_after(event_type: &str) -> &'static str {
    match event_type {
        "OrderCreated" => "pending",
        "OrderPaid" => "paid",
        "OrderShipped" => "shipped",
        "OrderDelivered" => "delivered",
        "OrderCancelled" => "cancelled",
        other => panic!("unexpected event type {other}"),
    }
}

/// The view a correct fold of these (valid, generated) records gives:
/// each order's last event by offset, all of an order's events being in
/// one partition.
pub fn expected_view(records: &[TopicRecord]) -> std::collections::HashMap<String, ExpectedOrder> {
    let mut last: std::collections::HashMap<String, (i32, i64, ExpectedOrder)> =
        std::collections::HashMap::new();
    for r in records {
        let order = r.value["order_id"].as_str().expect("order_id").to_owned();
        let expected = ExpectedOrder {
            status: status_after(r.value["event_type"].as_str().expect("event_type")),
            last_event_id: r.value["event_id"].as_str().expect("event_id").to_owned(),
        };
        if let Some((p, _, _)) = last.get(&order) {
            assert_eq!(*p, r.partition, "order {order} spans partitions");
        }
        let entry = last
            .entry(order)
            .or_insert((r.partition, r.offset, expected.clone()));
        if r.offset >= entry.1 {
            *entry = (r.partition, r.offset, expected);
        }
    }
    last.into_iter().map(|(k, (_, _, v))| (k, v)).collect()
}

/// Asserts the database is exactly the fold of the whole topic: every
/// event in history once, the view equal to [`expected_view`], and the
/// group's stored offsets equal to the high watermarks.
pub async fn assert_db_is_fold_of_topic(db: &TestDb, topic: &str, group: &str) {
    assert_db_is_fold_of_topic_at(&bootstrap_servers(), db, topic, group).await;
}

/// Like [`assert_db_is_fold_of_topic`], for a topic on the broker at `bootstrap`.
pub async fn assert_db_is_fold_of_topic_at(bootstrap: &str, db: &TestDb, topic: &str, group: &str) {
    let (records, watermarks) = read_topic_at(bootstrap, topic).await;
    let pg = db.client().await;
    let rows = pg
        .query(
            "SELECT event_id::text, kafka_partition, kafka_offset FROM order_events WHERE kafka_topic = $1",
            &[&topic],
        )
        .await
        .expect("query history");
    let in_history: std::collections::HashMap<String, (i32, i64)> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(in_history.len(), rows.len(), "no event_id twice in history");
    let mut first_copy: std::collections::HashMap<String, (i32, i64)> =
        std::collections::HashMap::new();
    for r in &records {
        let id = r.value["event_id"].as_str().expect("event_id").to_owned();
        first_copy.entry(id).or_insert((r.partition, r.offset));
    }
    assert_eq!(
        rows.len(),
        first_copy.len(),
        "one history row per distinct event"
    );
    for (id, at) in &first_copy {
        assert_eq!(
            in_history.get(id),
            Some(at),
            "event {id} from its first copy"
        );
    }

    let view: std::collections::HashMap<String, ExpectedOrder> = pg
        .query(
            "SELECT order_id::text, status, last_event_id::text FROM orders",
            &[],
        )
        .await
        .expect("query view")
        .iter()
        .map(|r| {
            let status: String = r.get(1);
            let status = ["pending", "paid", "shipped", "delivered", "cancelled"]
                .into_iter()
                .find(|s| *s == status)
                .unwrap_or_else(|| panic!("unknown status {status}"));
            (
                r.get(0),
                ExpectedOrder {
                    status,
                    last_event_id: r.get(2),
                },
            )
        })
        .collect();
    let expected = expected_view(&records);
    assert_eq!(view.len(), expected.len(), "one view row per order");
    for (order, want) in &expected {
        assert_eq!(view.get(order), Some(want), "order {order}");
    }
    assert_projections_match(&pg, &records).await;

    let stored: BTreeMap<i32, i64> = pg
        .query(
            "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2",
            &[&group, &topic],
        )
        .await
        .expect("query offsets")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(stored, watermarks, "stored offsets equal high watermarks");
}

/// Per restaurant and day: orders, delivered, revenue, cancellations.
type RestaurantDay = BTreeMap<(String, String), (i64, i64, i64, i64)>;
/// Per customer: orders, delivered, cancelled, spend, first and last order.
type CustomerStats = BTreeMap<String, (i64, i64, i64, i64, String, String)>;

/// The built-in projections as the test computes them from the topic's
/// distinct events (every generated event is applied): per restaurant and
/// day of the order's creation (UTC), and per customer.
pub fn expected_projections(records: &[TopicRecord]) -> (RestaurantDay, CustomerStats) {
    let mut seen = std::collections::HashSet::new();
    let events: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| seen.insert(r.value["event_id"].as_str().expect("event_id").to_owned()))
        .map(|r| &r.value)
        .collect();
    let time = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v["occurred_at"].as_str().expect("occurred_at"))
            .expect("RFC 3339")
            .with_timezone(&chrono::Utc)
    };
    // Each order's restaurant, total and creation time, from OrderCreated.
    let created: std::collections::HashMap<&str, (String, i64, chrono::DateTime<chrono::Utc>)> =
        events
            .iter()
            .filter(|v| v["event_type"] == "OrderCreated")
            .map(|v| {
                (
                    v["order_id"].as_str().expect("order_id"),
                    (
                        v["payload"]["restaurant_id"]
                            .as_str()
                            .expect("restaurant")
                            .to_owned(),
                        v["payload"]["total_cents"].as_i64().expect("total"),
                        time(v),
                    ),
                )
            })
            .collect();
    let mut days = RestaurantDay::new();
    let mut customers = CustomerStats::new();
    for v in &events {
        let (restaurant, total, at) = &created[v["order_id"].as_str().expect("order_id")];
        let day = days
            .entry((restaurant.clone(), at.date_naive().to_string()))
            .or_default();
        let customer = customers
            .entry(v["customer_id"].as_str().expect("customer").to_owned())
            .or_insert((0, 0, 0, 0, String::new(), String::new()));
        match v["event_type"].as_str().expect("event_type") {
            "OrderCreated" => {
                day.0 += 1;
                customer.0 += 1;
                let t = time(v).timestamp_micros();
                let earlier = |held: &str| held.parse::<i64>().map_or(true, |h| t < h);
                let later = |held: &str| held.parse::<i64>().map_or(true, |h| t > h);
                if earlier(&customer.4) {
                    customer.4 = t.to_string();
                }
                if later(&customer.5) {
                    customer.5 = t.to_string();
                }
            }
            "OrderDelivered" => {
                day.1 += 1;
                day.2 += total;
                customer.1 += 1;
                customer.3 += total;
            }
            "OrderCancelled" => {
                day.3 += 1;
                customer.2 += 1;
            }
            _ => {}
        }
    }
    (days, customers)
}

/// Asserts `restaurant_daily` and `customer_stats` equal
/// [`expected_projections`] of `records`, when history holds one topic.
pub async fn assert_projections_match(pg: &tokio_postgres::Client, records: &[TopicRecord]) {
    let topics: i64 = pg
        .query_one("SELECT count(DISTINCT kafka_topic) FROM order_events", &[])
        .await
        .expect("topics")
        .get(0);
    if topics > 1 {
        return;
    }
    let (days, customers) = expected_projections(records);
    let got_days: RestaurantDay = pg
        .query(
            "SELECT restaurant_id, day::text, orders, delivered, revenue_cents, cancellations \
             FROM restaurant_daily",
            &[],
        )
        .await
        .expect("restaurant_daily")
        .iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                (r.get(2), r.get(3), r.get(4), r.get(5)),
            )
        })
        .collect();
    assert_eq!(got_days, days, "restaurant_daily is the fold of the topic");
    let got_customers: CustomerStats = pg
        .query(
            "SELECT customer_id, orders, delivered, cancelled, spend_cents, \
                    coalesce(((extract(epoch FROM first_order_at) * 1000000)::int8)::text, ''), \
                    coalesce(((extract(epoch FROM last_order_at) * 1000000)::int8)::text, '') \
             FROM customer_stats",
            &[],
        )
        .await
        .expect("customer_stats")
        .iter()
        .map(|r| {
            (
                r.get(0),
                (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)),
            )
        })
        .collect();
    assert_eq!(
        got_customers, customers,
        "customer_stats is the fold of the topic"
    );
}

/// Produces `count` generated events with `seed` to `topic` (3 partitions).
pub async fn produce_events(topic: &str, count: u32, seed: u64) {
    produce_events_at(&bootstrap_servers(), topic, count, seed).await;
}

/// Produces `count` generated events with `seed` to `topic`, creating it
/// with `partitions` partitions.
pub async fn produce_events_to(topic: &str, count: u32, seed: u64, partitions: u32) {
    produce(&bootstrap_servers(), topic, count, seed, partitions).await;
}

/// Like [`produce_events`], to the broker at `bootstrap`.
pub async fn produce_events_at(bootstrap: &str, topic: &str, count: u32, seed: u64) {
    produce(bootstrap, topic, count, seed, 3).await;
}

async fn produce(bootstrap: &str, topic: &str, count: u32, seed: u64, partitions: u32) {
    let mut cmd = foodpipe(&[
        "produce",
        "--topic",
        topic,
        "--count",
        &count.to_string(),
        "--partitions",
        &partitions.to_string(),
        "--seed",
        &seed.to_string(),
        "--json",
    ]);
    cmd.env("KAFKA_BOOTSTRAP_SERVERS", bootstrap);
    let out = run_ok(cmd).await;
    let summary: serde_json::Value = serde_json::from_str(&out).expect("JSON summary");
    assert_eq!(summary["events"], count, "all events delivered: {out}");
}

/// Polls until the stored offsets of `topic` (any group) reach the
/// high watermarks on the broker at `bootstrap`, failing after `limit`.
pub async fn wait_caught_up_at(bootstrap: &str, db: &TestDb, topic: &str, limit: Duration) {
    let (_, watermarks) = read_topic_raw_at(bootstrap, topic).await;
    let pg = db.client().await;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let stored: BTreeMap<i32, i64> = pg
            .query(
                "SELECT partition, next_offset FROM consumer_offsets WHERE topic = $1",
                &[&topic],
            )
            .await
            .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            .unwrap_or_default();
        if stored == watermarks {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not caught up within {limit:?}: stored {stored:?}, watermarks {watermarks:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Like [`wait_caught_up_at`], on the broker under test.
pub async fn wait_caught_up(db: &TestDb, topic: &str, limit: Duration) {
    wait_caught_up_at(&bootstrap_servers(), db, topic, limit).await;
}

/// A `foodpipe consume` child process on `topic` into `db`.
pub fn spawn_consumer(topic: &str, db: &TestDb, extra: &[&str]) -> tokio::process::Child {
    let mut args = vec!["consume", "--topic", topic];
    args.extend_from_slice(extra);
    let mut cmd = foodpipe(&args);
    cmd.env("DATABASE_URL", &db.url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.spawn().expect("consumer starts")
}

/// `consume --until-caught-up` on `topic` into `db`; returns its JSON summary.
pub async fn consume_until_caught_up(
    topic: &str,
    db: &TestDb,
    extra: &[&str],
) -> serde_json::Value {
    let mut args = vec!["consume", "--until-caught-up", "--topic", topic, "--json"];
    args.extend_from_slice(extra);
    let mut cmd = foodpipe(&args);
    cmd.env("DATABASE_URL", &db.url);
    let out = run_ok(cmd).await;
    serde_json::from_str(&out).expect("JSON summary")
}

/// Sends a signal to a child process.
pub fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("child is running");
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Deletes `topic` and waits until the cluster no longer lists it.
///
/// Only on a [`PrivateBroker`]: Tansu 0.6.0's DeleteTopics deletes every
/// topic of the cluster (its `topic_delete_by.sql` filters on the cluster
/// only), which would wreck the other tests on the shared broker.
pub async fn delete_topic(broker: &PrivateBroker, topic: &str) {
    let client = send_delete_topic(broker, topic).await;
    for _ in 0..50 {
        let topics = client.list_topics().await.expect("list topics");
        if !topics.iter().any(|t| t.name == topic) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("topic {topic} still listed after delete");
}

/// Sends DeleteTopics for `topic` to a [`PrivateBroker`] (see
/// [`delete_topic`]) and returns the client, without waiting to see it
/// gone: with a consumer fetching the topic, Tansu 0.6.0's storage may
/// panic at once and answer nothing more until restarted.
pub async fn send_delete_topic(broker: &PrivateBroker, topic: &str) -> Client {
    let client = kafka_client_at(&broker.address).await;
    client
        .controller_client()
        .expect("controller client")
        .delete_topic(topic, 5_000)
        .await
        .unwrap_or_else(|e| panic!("cannot delete topic {topic}: {e}"));
    client
}

/// A topic with a few events, folded into `db` (migrations applied).
pub async fn consume_until_caught_up_after_produce(topic: &str, db: &TestDb) {
    produce_events(topic, 50, 99).await;
    consume_until_caught_up(topic, db, &[]).await;
}

/// partition → owner, as stored in `consumer_offsets` (empty until the
/// first member has applied the migrations).
pub async fn owners(db: &TestDb, topic: &str) -> BTreeMap<i32, Option<String>> {
    db.client()
        .await
        .query(
            "SELECT partition, owner FROM consumer_offsets WHERE group_id = $1 AND topic = $2",
            &[&"order-processors", &topic],
        )
        .await
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        .unwrap_or_default()
}

/// How many partitions each member owns (members owning none are absent).
pub fn counts(owners: &BTreeMap<i32, Option<String>>) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for m in owners.values().flatten() {
        *c.entry(m.clone()).or_insert(0) += 1;
    }
    c
}

/// Polls `owners` until `ok` holds, failing after `limit`.
pub async fn wait_owners(
    db: &TestDb,
    topic: &str,
    limit: Duration,
    what: &str,
    ok: impl Fn(&BTreeMap<i32, Option<String>>) -> bool,
) -> Duration {
    let started = tokio::time::Instant::now();
    loop {
        let now = owners(db, topic).await;
        if ok(&now) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not {what} within {limit:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each member of `group` and its metrics address, from `group_members`.
pub async fn metrics_addrs(db: &TestDb, group: &str) -> BTreeMap<String, Option<String>> {
    db.client()
        .await
        .query(
            "SELECT member_id, metrics_addr FROM group_members WHERE group_id = $1",
            &[&group],
        )
        .await
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        .unwrap_or_default()
}

/// A plain HTTP GET on loopback, returning status code and body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics port answers");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Each partition's log-end offset (ListOffsets only: no record is read).
pub async fn log_ends(topic: &str) -> BTreeMap<i32, i64> {
    log_ends_at(&bootstrap_servers(), topic).await
}

/// Like [`log_ends`], on the broker at `bootstrap`.
pub async fn log_ends_at(bootstrap: &str, topic: &str) -> BTreeMap<i32, i64> {
    let client = kafka_client_at(bootstrap).await;
    let count = client
        .list_topics()
        .await
        .expect("list topics")
        .into_iter()
        .find(|t| t.name == topic)
        .map_or(0, |t| t.partitions.len() as i32);
    let mut ends = BTreeMap::new();
    for partition in 0..count {
        let pc = client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .expect("partition client");
        ends.insert(
            partition,
            pc.get_offset(OffsetAt::Latest)
                .await
                .expect("latest offset"),
        );
    }
    ends
}

/// SIGTERMs each member and checks that each exits 0.
pub async fn stop_all(children: Vec<tokio::process::Child>) {
    for c in &children {
        signal(c, "TERM");
    }
    for c in children {
        let out = c.wait_with_output().await.expect("member exits");
        assert!(
            out.status.success(),
            "member failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A TCP proxy in front of a Kafka broker that forwards every request but
/// those of the `blocked` API keys: for those it closes the client's
/// connection, as a broker whose group coordinator cannot be reached
/// would. Requests and responses of one connection are relayed in order.
#[derive(Debug)]
pub struct KafkaProxy {
    /// Where clients connect (what the broker should advertise).
    pub address: String,
    /// How many requests were refused.
    pub refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KafkaProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Rewrites a request frame (header and body, without the size) before a
/// [`KafkaProxy`] relays it.
pub type RewriteRequest = std::sync::Arc<dyn Fn(&mut Vec<u8>) + Send + Sync>;

/// What a [`KafkaProxy`] does to a response on its way back: given the
/// request frame it answers, it may rewrite the response frame (after the
/// length) in place.
pub type RewriteResponse = std::sync::Arc<dyn Fn(&[u8], &mut Vec<u8>) + Send + Sync>;

impl KafkaProxy {
    /// Listens on `port` (127.0.0.1) and relays to `upstream`.
    pub async fn start(port: u16, upstream: String, blocked: &'static [i16]) -> KafkaProxy {
        Self::start_with(port, upstream, blocked, None, None).await
    }

    /// Like [`KafkaProxy::start`], relaying every request and passing each
    /// through `rewrite` on its way to the broker.
    pub async fn start_rewriting(
        port: u16,
        upstream: String,
        rewrite: RewriteRequest,
    ) -> KafkaProxy {
        Self::start_with(port, upstream, &[], Some(rewrite), None).await
    }

    /// Like [`KafkaProxy::start`], relaying every request and passing each
    /// response through `rewrite` on its way to the client.
    pub async fn start_rewriting_responses(
        port: u16,
        upstream: String,
        rewrite: RewriteResponse,
    ) -> KafkaProxy {
        Self::start_with(port, upstream, &[], None, Some(rewrite)).await
    }

    async fn start_with(
        port: u16,
        upstream: String,
        blocked: &'static [i16],
        rewrite: Option<RewriteRequest>,
        rewrite_response: Option<RewriteResponse>,
    ) -> KafkaProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("proxy port");
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = std::sync::Arc::clone(&refused);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let counter = std::sync::Arc::clone(&counter);
                let rewrite = rewrite.clone();
                let rewrite_response = rewrite_response.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(mut broker) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    loop {
                        let mut size = [0u8; 4];
                        if client.read_exact(&mut size).await.is_err() {
                            return;
                        }
                        let mut frame = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
                        if client.read_exact(&mut frame).await.is_err() {
                            return;
                        }
                        let api_key = i16::from_be_bytes([frame[0], frame[1]]);
                        if blocked.contains(&api_key) {
                            counter.fetch_add(1, Ordering::SeqCst);
                            return; // Dropping both ends: unreachable.
                        }
                        if let Some(rewrite) = &rewrite {
                            rewrite(&mut frame);
                            size = (frame.len() as i32).to_be_bytes();
                        }
                        if broker.write_all(&size).await.is_err()
                            || broker.write_all(&frame).await.is_err()
                        {
                            return;
                        }
                        let mut size = [0u8; 4];
                        if broker.read_exact(&mut size).await.is_err() {
                            return;
                        }
                        let mut answer = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
                        if broker.read_exact(&mut answer).await.is_err() {
                            return;
                        }
                        if let Some(rewrite) = &rewrite_response {
                            rewrite(&frame, &mut answer);
                            size = (answer.len() as i32).to_be_bytes();
                        }
                        if client.write_all(&size).await.is_err()
                            || client.write_all(&answer).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        KafkaProxy {
            address: format!("127.0.0.1:{port}"),
            refused,
            task,
        }
    }
}

/// The offsets `group` has committed on the broker for `topic`'s
/// partitions, as read by an independent client: `confluent-kafka`
/// (librdkafka's `committed()`) or `kafka-python` (its admin client's
/// `list_consumer_group_offsets`).
pub async fn broker_committed(
    client: &str,
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, i64> {
    let out = Command::new(librdkafka_python())
        .arg(script("committed_offsets.py"))
        .args([client, bootstrap, group, topic, &partitions.to_string()])
        .output()
        .await
        .expect("python runs");
    assert!(
        out.status.success(),
        "committed_offsets.py {client} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: BTreeMap<String, i64> =
        serde_json::from_slice(&out.stdout).expect("JSON from committed_offsets.py");
    parsed
        .into_iter()
        .map(|(p, o)| (p.parse().expect("partition"), o))
        .collect()
}

/// The stored offsets of `group` on `topic` in the test database.
pub async fn stored_offsets(db: &TestDb, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    db.client()
        .await
        .query(
            "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2",
            &[&group, &topic],
        )
        .await
        .expect("offsets")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
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

/// Drops the packets that processes started through it send to chosen
/// TCP ports on loopback: a member cut off from the brokers or from
/// PostgreSQL while everything else on the host goes on. The processes run
/// under a group id of their own (`setpriv --regid`), and an iptables
/// owner rule on that group id drops their packets to the port, as a
/// firewall or a broken link would: connections hang rather than fail.
/// Rules go when it is dropped.
pub struct NetCut {
    gid: u32,
    rules: std::sync::Mutex<Vec<u16>>,
}

impl NetCut {
    pub fn new() -> NetCut {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        NetCut {
            gid: 40_000 + (std::process::id() % 1000) * 10 + n,
            rules: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// `foodpipe args` running under this cut's group id.
    pub fn foodpipe(&self, args: &[&str]) -> Command {
        let std_cmd = foodpipe(args);
        let mut cmd = Command::new("setpriv");
        cmd.args(["--regid", &self.gid.to_string(), "--clear-groups", "--"])
            .arg(std_cmd.as_std().get_program())
            .args(std_cmd.as_std().get_args());
        for (k, v) in std_cmd.as_std().get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.kill_on_drop(true);
        cmd
    }

    fn iptables(&self, op: &str, port: u16) {
        let status = std::process::Command::new("iptables")
            .args([op, "OUTPUT", "-o", "lo", "-p", "tcp", "--dport"])
            .arg(port.to_string())
            .args(["-m", "owner", "--gid-owner"])
            .arg(self.gid.to_string())
            .args(["-j", "DROP"])
            .status()
            .unwrap_or_else(|e| panic!("iptables: {e}; `make up` installs it"));
        assert!(status.success(), "iptables {op} for port {port} failed");
    }

    /// From now on, packets to `port` are dropped.
    pub fn cut(&self, port: u16) {
        self.iptables("-I", port);
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(port);
    }

    /// Packets flow again.
    pub fn heal(&self) {
        for port in std::mem::take(&mut *self.rules.lock().unwrap_or_else(|e| e.into_inner())) {
            self.iptables("-D", port);
        }
    }
}

impl Drop for NetCut {
    fn drop(&mut self) {
        for port in std::mem::take(&mut *self.rules.lock().unwrap_or_else(|e| e.into_inner())) {
            let _ = std::process::Command::new("iptables")
                .args(["-D", "OUTPUT", "-o", "lo", "-p", "tcp", "--dport"])
                .arg(port.to_string())
                .args(["-m", "owner", "--gid-owner"])
                .arg(self.gid.to_string())
                .args(["-j", "DROP"])
                .status();
        }
    }
}

/// Held by the tests that load the machine most (three members and a
/// producer under faults, 400 partitions), so that no two of them run at
/// once: on two cores, two of them side by side slow each other past their
/// own limits. Hold it for the whole test: `let _heavy = heavy().await;`.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}
