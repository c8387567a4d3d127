//! The binaries people deploy: `make static` (glibc with crt-static) and
//! `make musl` (what the Dockerfile builds). `make test` builds both first.
//!
//! Each must be statically linked, say what it is in `--version`, and do a
//! full produce/consume round trip from an empty root directory: no libc,
//! no NSS modules, no nsswitch.conf, only the binary, /etc/hosts and
//! /etc/resolv.conf, as in a `FROM scratch` container. Names resolve the
//! two ways a container's do: `localhost` from /etc/hosts, `kafka` and
//! `postgres` from a DNS server (the role Docker's embedded DNS plays),
//! which this test runs itself.
//!
//! chroot and a DNS server on port 53 need root; CI runs as root.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::process::Command;

use crate::harness::{PrivateBroker, TestDb, db_url_with_host, run_within};

/// A deployable binary: where `make` puts it, or an override from the env.
fn deployed_binary(env_var: &str, target: &str) -> PathBuf {
    let path = std::env::var_os(env_var).map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target")
                .join(target)
                .join("release/foodpipe")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "{} is missing: build it with `make static musl` (`make test` does), or point {env_var} at it",
        path.display()
    );
    path
}

fn static_glibc_binary() -> PathBuf {
    deployed_binary("FOODPIPE_STATIC_BIN", "x86_64-unknown-linux-gnu")
}

fn static_musl_binary() -> PathBuf {
    deployed_binary("FOODPIPE_MUSL_BIN", "x86_64-unknown-linux-musl")
}

/// stdout and stderr of a tool run on the binary.
fn tool_output(tool: &str, binary: &Path) -> String {
    let out = std::process::Command::new(tool)
        .arg(binary)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} (make up installs it): {e}"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `file` and `ldd` both say static, and `--version` names this commit,
/// the target, static linkage and no optional features.
fn assert_static_with_version(binary: &Path, target: &str) {
    let file = tool_output("file", binary);
    assert!(
        file.contains("statically linked") || file.contains("static-pie linked"),
        "file says it is not static: {file}"
    );
    assert!(!file.contains("interpreter"), "it names a loader: {file}");
    let ldd = tool_output("ldd", binary);
    assert!(
        ldd.contains("statically linked") || ldd.contains("not a dynamic executable"),
        "ldd lists libraries: {ldd}"
    );

    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "--version failed: {out:?}");
    let version = String::from_utf8_lossy(&out.stdout);
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git runs");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    assert!(!head.is_empty(), "the source tree is a git checkout");
    let expected = format!(
        "foodpipe {} (commit {head}; {target}, static; features: none)",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        version.trim(),
        expected,
        "a stale binary? `make static musl`"
    );
}

/// `make static`: statically linked glibc build, stamped with this commit.
#[test]
fn static_glibc_binary_is_static_and_says_what_it_is() {
    assert_static_with_version(&static_glibc_binary(), "x86_64-unknown-linux-gnu");
}

/// `make musl`, the Dockerfile's build: statically linked, stamped.
#[test]
fn static_musl_binary_is_static_and_says_what_it_is() {
    assert_static_with_version(&static_musl_binary(), "x86_64-unknown-linux-musl");
}

/// The glibc static binary produces and folds orders from an empty root,
/// resolving `kafka` and `postgres` by DNS and `localhost` from /etc/hosts.
#[tokio::test]
async fn static_glibc_binary_round_trip_in_an_empty_root() {
    round_trip_in_empty_root(&static_glibc_binary()).await;
}

/// The musl binary (the container's) does the same round trip.
#[tokio::test]
async fn static_musl_binary_round_trip_in_an_empty_root() {
    round_trip_in_empty_root(&static_musl_binary()).await;
}

async fn round_trip_in_empty_root(binary: &Path) {
    // Every connection after bootstrap goes to the advertised name.
    let broker = PrivateBroker::start_advertising(Some("tcp://localhost:{port}")).await;
    let port = broker
        .address
        .rsplit(':')
        .next()
        .expect("host:port")
        .to_owned();
    let dns = TestDns::start(&["kafka", "postgres"]).await;
    let root = EmptyRoot::new(binary, dns.address.ip());
    let db = TestDb::create().await;
    let topic = crate::harness::random_topic_name();
    let db_url = db_url_with_host(&db.url, "postgres");

    // chroot lives in /usr/sbin, which a test's PATH may lack.
    let chroot = crate::harness::find_program("chroot", &[PathBuf::from("/usr/sbin")])
        .expect("chroot is installed (coreutils)");
    let jailed = |args: &[&str]| {
        // Only what the container would be given: no inherited environment.
        let mut cmd = Command::new(&chroot);
        cmd.arg(&root.dir)
            .arg("/foodpipe")
            .args(args)
            .env_clear()
            .env("KAFKA_BOOTSTRAP_SERVERS", format!("kafka:{port}"))
            .env("DATABASE_URL", &db_url)
            .env("FOODPIPE_TOPIC", &topic)
            .env("FOODPIPE_METRICS_ADDR", "off")
            .kill_on_drop(true);
        cmd
    };
    let ok = |out: std::process::Output, what: &str| {
        assert!(
            out.status.success(),
            "{what} in the empty root failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let limit = Duration::from_secs(120);
    ok(
        run_within(
            jailed(&["produce", "--count", "600", "--partitions", "3"]),
            limit,
        )
        .await,
        "produce",
    );
    ok(
        run_within(jailed(&["consume", "--until-caught-up"]), limit).await,
        "consume",
    );
    crate::harness::assert_db_is_fold_of_topic_at(&broker.address, &db, &topic, "order-processors")
        .await;
    let asked = dns.names_asked();
    assert!(
        asked.contains("kafka") && asked.contains("postgres"),
        "the binary did not ask DNS for kafka and postgres: {asked:?}"
    );
    db.drop_db().await;
}

/// A directory holding only the binary, /etc/hosts (localhost) and
/// /etc/resolv.conf (the test's DNS server), removed on drop.
struct EmptyRoot {
    dir: PathBuf,
}

impl EmptyRoot {
    fn new(binary: &Path, nameserver: std::net::IpAddr) -> EmptyRoot {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("empty-root-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(dir.join("etc")).expect("root dir");
        std::fs::copy(binary, dir.join("foodpipe")).expect("copy the binary");
        std::fs::write(dir.join("etc/hosts"), "127.0.0.1 localhost\n").expect("hosts");
        std::fs::write(
            dir.join("etc/resolv.conf"),
            format!("nameserver {nameserver}\noptions timeout:2 attempts:2\n"),
        )
        .expect("resolv.conf");
        EmptyRoot { dir }
    }
}

impl Drop for EmptyRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A DNS server on port 53 of a loopback address of its own that answers
/// A queries for a few names with 127.0.0.1, "no such name" for others,
/// and an empty answer for other record types (AAAA) of known names.
struct TestDns {
    address: SocketAddr,
    asked: std::sync::Arc<std::sync::Mutex<BTreeSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestDns {
    async fn start(names: &[&str]) -> TestDns {
        let mut socket = None;
        for _ in 0..20 {
            // 127.0.0.0/8 is all loopback: a random address avoids clashes
            // with another test's server and with any local resolver.
            let ip = Ipv4Addr::new(
                127,
                0,
                rand::random_range(1..=254),
                rand::random_range(2..=254),
            );
            match UdpSocket::bind((ip, 53)).await {
                Ok(s) => {
                    socket = Some(s);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    panic!("binding a DNS server on port 53 needs root (CI runs as root): {e}")
                }
                Err(_) => continue,
            }
        }
        let socket = socket.expect("a free loopback address for the test DNS server");
        let address = socket.local_addr().expect("bound address");
        let known: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        let asked = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
        let log = asked.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                if let Some((name, reply)) = dns_reply(&buf[..len], &known) {
                    log.lock().expect("dns log").insert(name);
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        TestDns {
            address,
            asked,
            task,
        }
    }

    fn names_asked(&self) -> BTreeSet<String> {
        self.asked.lock().expect("dns log").clone()
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reply to one DNS query (RFC 1035 §4.1), and the name asked; `None`
/// for anything that is not a single-question query.
fn dns_reply(query: &[u8], known: &[String]) -> Option<(String, Vec<u8>)> {
    if query.len() < 12 || query[2] & 0x80 != 0 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // The question: length-prefixed labels, a zero, then type and class.
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression pointers do not occur in questions
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let question_end = at + 4;
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let name = labels.join(".");
    let is_known = known.contains(&name);
    let answer_a = is_known && qtype == 1;

    let mut reply = Vec::with_capacity(question_end + 16);
    reply.extend_from_slice(&query[0..2]); // id
    // QR=1, opcode 0, RD copied, RA=1; rcode 0 or 3 (no such name).
    reply.push(0x80 | (query[2] & 0x01));
    reply.push(if is_known { 0x80 } else { 0x83 });
    reply.extend_from_slice(&[0, 1, 0, u8::from(answer_a), 0, 0, 0, 0]);
    reply.extend_from_slice(query.get(12..question_end)?);
    if answer_a {
        // Name as a pointer to the question, A, IN, TTL 60 s, 4 bytes.
        reply.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
    }
    Some((name, reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `kafka` A gets 127.0.0.1; AAAA gets no answer; an
    /// unknown name gets NXDOMAIN — checked byte by byte against RFC 1035.
    #[test]
    fn dns_replies() {
        let query = |name: &str, qtype: u8| {
            let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            for label in name.split('.') {
                q.push(u8::try_from(label.len()).expect("short label"));
                q.extend_from_slice(label.as_bytes());
            }
            q.extend_from_slice(&[0, 0, qtype, 0, 1]);
            q
        };
        let known = vec!["kafka".to_owned()];
        let (name, a) = dns_reply(&query("Kafka", 1), &known).expect("reply");
        assert_eq!(name, "kafka");
        assert_eq!(&a[..12], &[0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
        assert_eq!(&a[a.len() - 4..], &[127, 0, 0, 1]);
        let (_, aaaa) = dns_reply(&query("kafka", 28), &known).expect("reply");
        assert_eq!(
            &aaaa[..12],
            &[0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        let (_, nx) = dns_reply(&query("zookeeper.local", 1), &known).expect("reply");
        assert_eq!(nx[3] & 0x0f, 3, "NXDOMAIN");
    }
}
