//! The group against network faults, with real processes: a member whose
//! packets to the broker are dropped (it still reaches PostgreSQL), every
//! member cut off at once, and a member cut off from PostgreSQL. Packets
//! are dropped by an iptables owner rule on a group id only the cut
//! members run under ([`NetCut`]), on a private broker's port or
//! PostgreSQL's, so nothing else on the host is touched.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::{
    NetCut, PrivateBroker, TestDb, assert_db_is_fold_of_topic, assert_db_is_fold_of_topic_at,
    balanced, bootstrap_servers, counts, create_topic_at, db_url_with_host, foodpipe, free_port,
    http_get, owners, produce_events_at, random_topic_name, read_topic_at, run_ok,
    send_delete_topic, stop_all, wait_balanced, wait_caught_up, wait_caught_up_at, wait_owners,
};

const GROUP: &str = "order-processors";

/// A default `consume` member of `topic` on the brokers of `bootstrap`,
/// under `cut` if given.
fn member(
    bootstrap: &str,
    topic: &str,
    db_url: &str,
    id: &str,
    cut: Option<&NetCut>,
) -> tokio::process::Child {
    let args = ["consume", "--topic", topic, "--member-id", id];
    let mut cmd = match cut {
        Some(cut) => cut.foodpipe(&args),
        None => foodpipe(&args),
    };
    cmd.env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("DATABASE_URL", db_url)
        .stdout(Stdio::piped())
        .stderr(log_file(topic, id));
    cmd.spawn().expect("member starts")
}

/// A member's log, kept under the test's target directory to read after a
/// failure (a pipe nobody reads would fill up and block the member).
fn log_file(topic: &str, id: &str) -> std::fs::File {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{topic}-{id}.log"));
    std::fs::File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `produce` at `rate` events/s for `seconds` to `topic` on `broker`, in the background.
fn producer(broker: &PrivateBroker, topic: &str, rate: u32, seconds: u32) -> tokio::process::Child {
    let mut cmd = foodpipe(&[
        "produce",
        "--topic",
        topic,
        "--rate",
        &rate.to_string(),
        "--duration",
        &format!("{seconds}s"),
        "--partitions",
        "6",
    ]);
    cmd.env("KAFKA_BOOTSTRAP_SERVERS", &broker.address)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd.spawn().expect("producer starts")
}

async fn finished(producer: tokio::process::Child) {
    let out = producer.wait_with_output().await.expect("producer ends");
    assert!(
        out.status.success(),
        "producer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn port(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("host:port")
}

/// One member's row: its metrics address and what it says of its reach.
async fn member_row(db: &TestDb, id: &str) -> (Option<String>, Option<String>, bool) {
    let row = db
        .client()
        .await
        .query_one(
            "SELECT metrics_addr, cut_off, brokers_answering FROM group_members WHERE member_id = $1",
            &[&id],
        )
        .await
        .expect("member row");
    (row.get(0), row.get(1), row.get(2))
}

/// Lease epochs per partition, and the partitions held stopped.
async fn epochs_and_stops(db: &TestDb, topic: &str) -> (BTreeMap<i32, i64>, Vec<i32>) {
    let rows = db
        .client()
        .await
        .query(
            "SELECT partition, epoch, stopped_error IS NOT NULL FROM consumer_offsets \
             WHERE group_id = $1 AND topic = $2",
            &[&GROUP, &topic],
        )
        .await
        .expect("offsets");
    (
        rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        rows.iter()
            .filter(|r| r.get::<_, bool>(2))
            .map(|r| r.get(0))
            .collect(),
    )
}

/// Stops `members` (each must exit 0), checks that no partition is held
/// stopped and that the database is a fold of the topic, and drops it.
async fn finish(broker: &str, db: TestDb, topic: &str, members: Vec<tokio::process::Child>) {
    stop_all(members).await;
    let (_, stopped) = epochs_and_stops(&db, topic).await;
    assert!(stopped.is_empty(), "stopped partitions: {stopped:?}");
    assert_db_is_fold_of_topic_at(broker, &db, topic, GROUP).await;
    db.drop_db().await;
}

/// Members m-a, m-b and m-c of `topic` (m-c under `cut`), once they own
/// two of its six partitions each.
async fn three_members(
    broker: &PrivateBroker,
    db: &TestDb,
    url: &str,
    topic: &str,
    cut: &NetCut,
) -> Vec<tokio::process::Child> {
    let members = vec![
        member(&broker.address, topic, url, "m-a", None),
        member(&broker.address, topic, url, "m-b", None),
        member(&broker.address, topic, url, "m-c", Some(cut)),
    ];
    wait_balanced(db, topic, Duration::from_secs(60), 3, 2).await;
    members
}

/// Waits (a minute at most) until m-a and m-b own three of the six
/// partitions each and m-c, cut off, none.
async fn wait_moved_off_the_cut_member(db: &TestDb, topic: &str) {
    wait_owners(
        db,
        topic,
        Duration::from_secs(60),
        "moved off the cut member",
        |o| balanced(o, 2, 3) && !counts(o).contains_key("m-c"),
    )
    .await;
}

/// Three default members on six partitions; one member's packets to the broker are dropped while it still heartbeats to PostgreSQL. Within seconds its /healthz answers 503 naming the broker (each answer within two seconds); its partitions go to the other two and lag reaches 0 within 60 s of the cut, under a producer; when the cut heals it takes its share back; the database equals a fold of the topic.
#[tokio::test]
async fn a_member_cut_off_from_the_brokers_gives_its_partitions_up() {
    let _heavy = crate::harness::heavy().await;
    let broker = PrivateBroker::start().await;
    let topic = random_topic_name();
    let db = TestDb::create().await;
    create_topic_at(&broker.address, &topic, 6).await;
    produce_events_at(&broker.address, &topic, 3_000, 2101).await;
    let cut = NetCut::new();
    let members = three_members(&broker, &db, &db.url, &topic, &cut).await;
    let (metrics, cut_off, _) = member_row(&db, "m-c").await;
    let metrics = metrics.expect("m-c serves /healthz");
    assert_eq!(cut_off, None, "not cut off before the cut");
    assert_eq!(http_get(&metrics, "/healthz").await.0, 200);

    let load = producer(&broker, &topic, 200, 20);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cut.cut(port(&broker.address));
    let cut_at = Instant::now();

    // /healthz answers at once, and names the broker once it is silent.
    let named = loop {
        let asked = Instant::now();
        let (code, body) = http_get(&metrics, "/healthz").await;
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(2), "/healthz took {took:?}");
        if code == 503 && body.contains(&broker.address) {
            assert!(body.contains("broker unreachable"), "{body}");
            break cut_at.elapsed();
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(20),
            "/healthz never named the broker: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    wait_moved_off_the_cut_member(&db, &topic).await;
    let moved = cut_at.elapsed();
    let (_, cut_off, _) = member_row(&db, "m-c").await;
    let cut_off = cut_off.expect("m-c says it is cut off");
    assert!(cut_off.contains(&broker.address), "{cut_off}");
    let (_, scrape) = http_get(&metrics, "/metrics").await;
    assert!(
        scrape.contains("foodpipe_member_cut_off 1"),
        "cut-off gauge: {scrape}"
    );
    finished(load).await;
    let left = Duration::from_secs(60).saturating_sub(cut_at.elapsed());
    wait_caught_up_at(&broker.address, &db, &topic, left).await;
    let caught_up = cut_at.elapsed();
    eprintln!(
        "cut at 0 s: /healthz named the broker at {named:?}, partitions moved at {moved:?}, lag 0 at {caught_up:?}"
    );

    cut.heal();
    wait_balanced(&db, &topic, Duration::from_secs(60), 3, 2).await;
    assert_eq!(member_row(&db, "m-c").await.1, None, "no longer cut off");
    produce_events_at(&broker.address, &topic, 1_000, 2102).await;
    wait_caught_up_at(&broker.address, &db, &topic, Duration::from_secs(60)).await;
    finish(&broker.address, db, &topic, members).await;
}

/// Every member cut off from the brokers for 30 s, under a producer: both say they are cut off, yet no partition moves or stops (each lease's epoch goes up at most once), and after the cut heals lag reaches 0 and the database equals a fold of the topic.
#[tokio::test]
async fn every_member_cut_off_moves_nothing() {
    let _heavy = crate::harness::heavy().await;
    let broker = PrivateBroker::start().await;
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_at(&broker.address, &topic, 2_000, 2111).await;
    let cut = NetCut::new();
    let a = member(&broker.address, &topic, &db.url, "m-a", Some(&cut));
    let b = member(&broker.address, &topic, &db.url, "m-b", Some(&cut));
    wait_owners(
        &db,
        &topic,
        Duration::from_secs(60),
        "three partitions each",
        |o| o.len() == 3 && counts(o).len() == 2,
    )
    .await;
    wait_caught_up_at(&broker.address, &db, &topic, Duration::from_secs(60)).await;
    let before_owners = owners(&db, &topic).await;
    let (before, _) = epochs_and_stops(&db, &topic).await;

    let load = producer(&broker, &topic, 100, 30);
    cut.cut(port(&broker.address));
    let cut_at = Instant::now();
    let mut both_cut_off = false;
    while cut_at.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            owners(&db, &topic).await,
            before_owners,
            "a partition moved while every member was cut off"
        );
        let (_, stopped) = epochs_and_stops(&db, &topic).await;
        assert!(stopped.is_empty(), "stopped during the cut: {stopped:?}");
        both_cut_off |=
            member_row(&db, "m-a").await.1.is_some() && member_row(&db, "m-b").await.1.is_some();
    }
    assert!(both_cut_off, "both members said they were cut off");
    cut.heal();
    finished(load).await;
    wait_caught_up_at(&broker.address, &db, &topic, Duration::from_secs(60)).await;
    let (after, stopped) = epochs_and_stops(&db, &topic).await;
    assert!(stopped.is_empty(), "stopped: {stopped:?}");
    for (p, epoch) in &before {
        let now = after[p];
        assert!(
            now <= epoch + 1,
            "partition {p}: epoch {epoch} -> {now}, leases churned"
        );
    }
    finish(&broker.address, db, &topic, vec![a, b]).await;
}

/// Regression: a member cut off from PostgreSQL (it still reaches the broker) is expired after the session timeout; its partitions move to the others and lag reaches 0 within 60 s of the cut; healed, it rejoins; the database equals a fold of the topic.
#[tokio::test]
async fn a_member_cut_off_from_postgresql_is_expired() {
    let _heavy = crate::harness::heavy().await;
    let broker = PrivateBroker::start().await;
    let topic = random_topic_name();
    let db = TestDb::create().await;
    create_topic_at(&broker.address, &topic, 6).await;
    produce_events_at(&broker.address, &topic, 3_000, 2121).await;
    // By address, so the cut (IPv4) is the only way to the database.
    let url = db_url_with_host(&db.url, "127.0.0.1");
    let cut = NetCut::new();
    let members = three_members(&broker, &db, &url, &topic, &cut).await;
    let load = producer(&broker, &topic, 200, 15);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cut.cut(5432);
    let cut_at = Instant::now();
    wait_moved_off_the_cut_member(&db, &topic).await;
    finished(load).await;
    let left = Duration::from_secs(60).saturating_sub(cut_at.elapsed());
    wait_caught_up_at(&broker.address, &db, &topic, left).await;
    cut.heal();
    wait_balanced(&db, &topic, Duration::from_secs(60), 3, 2).await;
    produce_events_at(&broker.address, &topic, 500, 2122).await;
    wait_caught_up_at(&broker.address, &db, &topic, Duration::from_secs(60)).await;
    finish(&broker.address, db, &topic, members).await;
}

/// A bootstrap list whose first two entries are dead (nothing listens there): produce and consume start and work, and `doctor` names each dead entry as a warning while it passes (any one entry answering is enough, as with Kafka's bootstrap.servers).
#[tokio::test]
async fn dead_bootstrap_entries_are_passed_over_and_named() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    let dead = [free_port(), free_port()].map(|p| format!("127.0.0.1:{p}"));
    let list = format!("{},{},{}", dead[0], dead[1], bootstrap_servers());
    let with_list = |args: &[&str]| {
        let mut cmd = foodpipe(args);
        cmd.env("KAFKA_BOOTSTRAP_SERVERS", &list)
            .env("DATABASE_URL", &db.url);
        cmd
    };
    run_ok(with_list(&[
        "produce", "--topic", &topic, "--count", "500", "--seed", "2131",
    ]))
    .await;
    let summary: serde_json::Value = serde_json::from_str(
        &run_ok(with_list(&[
            "consume",
            "--until-caught-up",
            "--topic",
            &topic,
            "--json",
        ]))
        .await,
    )
    .expect("JSON summary");
    assert_eq!(summary["caught_up"], true, "{summary}");
    wait_caught_up(&db, &topic, Duration::from_secs(30)).await;
    let report = run_ok(with_list(&["doctor", "--topic", &topic])).await;
    for entry in &dead {
        assert!(
            report.lines().any(|l| l.starts_with("WARN")
                && l.contains(&format!("bootstrap {entry} did not answer"))),
            "{report}"
        );
    }
    assert!(!report.contains("FAIL"), "{report}");
    assert_db_is_fold_of_topic(&db, &topic, GROUP).await;
    db.drop_db().await;
}

/// A topic deleted and recreated with more partitions under two running default members (the broker restarted after the delete, as Tansu 0.6.0 needs): the members notice the new partition count, take the new partitions, and every record of the new topic reaches history; no partition stops.
#[tokio::test]
async fn partitions_added_under_running_members_are_consumed() {
    let _heavy = crate::harness::heavy().await;
    let mut broker = PrivateBroker::start().await;
    let topic = random_topic_name();
    let db = TestDb::create().await;
    create_topic_at(&broker.address, &topic, 2).await;
    produce_events_at(&broker.address, &topic, 600, 2141).await;
    let a = member(&broker.address, &topic, &db.url, "m-a", None);
    let b = member(&broker.address, &topic, &db.url, "m-b", None);
    wait_balanced(&db, &topic, Duration::from_secs(60), 2, 1).await;
    wait_caught_up_at(&broker.address, &db, &topic, Duration::from_secs(60)).await;

    send_delete_topic(&broker, &topic).await;
    broker.restart().await;
    create_topic_at(&broker.address, &topic, 4).await;
    produce_events_at(&broker.address, &topic, 800, 2142).await;
    wait_balanced(&db, &topic, Duration::from_secs(60), 2, 2).await;
    wait_caught_up_at(&broker.address, &db, &topic, Duration::from_secs(90)).await;
    let (records, _) = read_topic_at(&broker.address, &topic).await;
    assert_eq!(records.len(), 800);
    assert!(
        records.iter().any(|r| r.partition >= 2),
        "new partitions hold records"
    );
    let ids: Vec<uuid::Uuid> = records
        .iter()
        .map(|r| {
            r.value["event_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("event_id")
        })
        .collect();
    let applied: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM order_events WHERE event_id = ANY($1)",
            &[&ids],
        )
        .await
        .expect("order_events")
        .get(0);
    assert_eq!(applied, 800, "every record of the recreated topic applied");
    let (_, stopped) = epochs_and_stops(&db, &topic).await;
    assert!(stopped.is_empty(), "stopped: {stopped:?}");
    stop_all(vec![a, b]).await;
    db.drop_db().await;
}

/// Stored offsets of every partition of `topic`.
async fn stored(db: &TestDb, topic: &str) -> BTreeMap<i32, i64> {
    crate::harness::stored_offsets(db, GROUP, topic).await
}

/// How long until every partition of `topic` stores a higher offset than
/// now (under a producer), failing after 60 s.
async fn progress_after(db: &TestDb, topic: &str, what: &str) -> Duration {
    let before = stored(db, topic).await;
    let since = Instant::now();
    loop {
        let now = stored(db, topic).await;
        if before
            .iter()
            .all(|(p, o)| now.get(p).is_some_and(|n| n > o))
        {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "partitions without progress 60 s after {what}: {before:?} -> {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three brokers over one store, three default members given all three as the bootstrap list, a producer at 1,000 events/s: one broker killed and started again, then two of the three at once (clients that knew only those find the third through the bootstrap list), then all three restarted one by one (a rolling restart). Every partition makes progress again after each kill; afterwards lag reaches 0 within 30 s of the last restart, no partition stopped, and the database equals an independent fold of the topic.
#[tokio::test]
async fn three_brokers_survive_a_kill_and_a_rolling_restart() {
    let _heavy = crate::harness::heavy().await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cluster-{}", random_topic_name()));
    std::fs::create_dir_all(&dir).expect("store dir");
    let mut brokers = Vec::new();
    for _ in 0..3 {
        brokers.push(PrivateBroker::start_sharing(&dir).await);
    }
    let list = brokers
        .iter()
        .map(|b| b.address.clone())
        .collect::<Vec<_>>()
        .join(",");
    let topic = random_topic_name();
    let db = TestDb::create().await;
    create_topic_at(&brokers[0].address, &topic, 6).await;
    let members: Vec<_> = ["m-a", "m-b", "m-c"]
        .into_iter()
        .map(|id| member(&list, &topic, &db.url, id, None))
        .collect();
    wait_balanced(&db, &topic, Duration::from_secs(60), 3, 2).await;
    let mut load = foodpipe(&[
        "produce",
        "--topic",
        &topic,
        "--rate",
        "1000",
        "--duration",
        "32s",
        "--json",
    ]);
    load.env("KAFKA_BOOTSTRAP_SERVERS", &list)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let load = load.spawn().expect("producer starts");
    tokio::time::sleep(Duration::from_secs(4)).await;

    // One broker dies: every partition must make progress again.
    brokers[0].kill().await;
    let recovered = progress_after(&db, &topic, "a broker died").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    brokers[0].start_again().await;

    // Two of three die: every client that knew only one of them must find
    // the third through the bootstrap list.
    tokio::time::sleep(Duration::from_secs(3)).await;
    brokers[0].kill().await;
    brokers[1].kill().await;
    let recovered_two = progress_after(&db, &topic, "two brokers died").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    brokers[0].start_again().await;
    brokers[1].start_again().await;

    // A rolling restart: each broker in turn.
    for broker in &mut brokers {
        tokio::time::sleep(Duration::from_secs(3)).await;
        broker.restart().await;
    }
    let last_restart = Instant::now();
    let out = load.wait_with_output().await.expect("producer ends");
    assert!(
        out.status.success(),
        "producer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = Duration::from_secs(30).saturating_sub(last_restart.elapsed());
    wait_caught_up_at(&brokers[1].address, &db, &topic, left).await;
    eprintln!(
        "three brokers: every partition progressed {recovered:?} after a broker died, {recovered_two:?} after two died; lag 0 {:?} after the last restart",
        last_restart.elapsed()
    );
    finish(&brokers[1].address, db, &topic, members).await;
}
