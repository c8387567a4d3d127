//! Kafka clients, private Tansu brokers, a proxy in front of a broker,
//! network cuts, and the independent clients' view of committed offsets.

use std::collections::BTreeMap;
use std::time::Duration;

use rskafka::client::{Client, ClientBuilder};
use tokio::process::Command;

use super::{bootstrap_servers, foodpipe, random_suffix, script};

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
