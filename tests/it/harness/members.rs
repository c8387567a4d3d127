//! `consume` processes as a test runs them: starting them, waiting for
//! ownership and for them to catch up, stopping them; and the group's
//! state in the database (owners, stored offsets, member rows).

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::{TestDb, bootstrap_servers, foodpipe, produce_events, read_topic_raw_at, run_ok};

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

/// A `foodpipe consume` child process on `topic` into `db`: default
/// flags but `extra`, stdout and stderr piped.
pub fn spawn_consumer(topic: &str, db: &TestDb, extra: &[&str]) -> Child {
    spawn_consumer_at(&bootstrap_servers(), topic, db, extra)
}

/// Like [`spawn_consumer`], on the broker (or bootstrap list) `bootstrap`.
pub fn spawn_consumer_at(bootstrap: &str, topic: &str, db: &TestDb, extra: &[&str]) -> Child {
    let mut args = vec!["consume", "--topic", topic];
    args.extend_from_slice(extra);
    let mut cmd = foodpipe(&args);
    cmd.env("DATABASE_URL", &db.url)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.spawn().expect("consumer starts")
}

/// `n` members of the group on `topic` into `db`, each a
/// [`spawn_consumer`] with `extra`; see [`wait_balanced`], [`wait_caught_up`]
/// and [`stop_all`] for the rest of their life.
pub fn spawn_members(topic: &str, db: &TestDb, n: usize, extra: &[&str]) -> Vec<Child> {
    (0..n).map(|_| spawn_consumer(topic, db, extra)).collect()
}

/// `consume --until-caught-up` on `topic` into `db`; returns its JSON summary.
pub async fn consume_until_caught_up(
    topic: &str,
    db: &TestDb,
    extra: &[&str],
) -> serde_json::Value {
    consume_until_caught_up_at(&bootstrap_servers(), topic, db, extra).await
}

/// Like [`consume_until_caught_up`], on the broker at `bootstrap`.
pub async fn consume_until_caught_up_at(
    bootstrap: &str,
    topic: &str,
    db: &TestDb,
    extra: &[&str],
) -> serde_json::Value {
    let mut args = vec!["consume", "--until-caught-up", "--topic", topic, "--json"];
    args.extend_from_slice(extra);
    let mut cmd = foodpipe(&args);
    cmd.env("DATABASE_URL", &db.url)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap);
    let out = run_ok(cmd).await;
    serde_json::from_str(&out).expect("JSON summary")
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, signal: &str) {
    let pid = child.id().expect("child is running");
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
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

/// Whether `members` members own `each` partitions each, and every
/// partition is owned.
pub fn balanced(owners: &BTreeMap<i32, Option<String>>, members: usize, each: usize) -> bool {
    owners.len() == members * each
        && counts(owners).len() == members
        && counts(owners).values().all(|n| *n == each)
}

/// Polls `owners` until `members` members own `each` partitions each
/// ([`balanced`]), failing after `limit`; returns how long it took.
pub async fn wait_balanced(
    db: &TestDb,
    topic: &str,
    limit: Duration,
    members: usize,
    each: usize,
) -> Duration {
    let what = format!("{each} partition(s) for each of {members} members");
    wait_owners(db, topic, limit, &what, |o| balanced(o, members, each)).await
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

/// SIGTERMs a member and checks that it exits 0; returns its output.
pub async fn stop(child: Child) -> Output {
    signal(&child, "TERM");
    exits_ok(child).await
}

/// SIGTERMs each member (all at once) and checks that each exits 0;
/// returns their outputs, in order.
pub async fn stop_all(children: Vec<Child>) -> Vec<Output> {
    for c in &children {
        signal(c, "TERM");
    }
    let mut outputs = Vec::new();
    for c in children {
        outputs.push(exits_ok(c).await);
    }
    outputs
}

/// Waits for a member to exit and checks that it exited 0.
async fn exits_ok(child: Child) -> Output {
    let out = child.wait_with_output().await.expect("member exits");
    assert!(
        out.status.success(),
        "member failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
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

/// Every offset stored in `db`, by partition, whatever its group and topic
/// (for a database that one group folds one topic into).
pub async fn all_stored_offsets(db: &TestDb) -> BTreeMap<i32, i64> {
    db.client()
        .await
        .query("SELECT partition, next_offset FROM consumer_offsets", &[])
        .await
        .expect("offsets")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// A row of `offset_gaps`: a partition whose stored offset could not be
/// used, why, and where the consumer went on from.
#[derive(Debug)]
pub struct OffsetGap {
    pub reason: String,
    pub reset_to: i64,
    pub new_incarnation: i32,
}

/// Every gap recorded in `db`, by partition.
pub async fn offset_gaps(db: &TestDb) -> Vec<OffsetGap> {
    db.client()
        .await
        .query(
            "SELECT reason, reset_to, new_incarnation FROM offset_gaps ORDER BY partition",
            &[],
        )
        .await
        .expect("gaps")
        .iter()
        .map(|r| OffsetGap {
            reason: r.get(0),
            reset_to: r.get(1),
            new_incarnation: r.get(2),
        })
        .collect()
}

/// `group reset --topic TOPIC ARGS` of the group in `db`, on the broker at
/// `bootstrap`.
pub fn group_reset(bootstrap: &str, db: &TestDb, topic: &str, args: &[&str]) -> Command {
    let mut all = vec!["group", "reset", "--topic", topic];
    all.extend_from_slice(args);
    let mut cmd = foodpipe(&all);
    cmd.env("DATABASE_URL", &db.url)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap);
    cmd
}
