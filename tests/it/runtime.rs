//! The consumer runtime with real processes run as docs/reference.md says (default
//! flags): several members on one host, `--until-caught-up` after a crash,
//! hundreds of partitions, a member id used twice, a partition that cannot
//! be fetched, and a topic recreated under a running member.

use std::process::Stdio;
use std::time::Duration;

use crate::harness::{
    TestDb, all_stored_offsets, assert_db_is_fold_of_topic, consume_until_caught_up, counts,
    foodpipe, http_get, metrics_addrs, offset_gaps, owners, produce_events_at, produce_events_to,
    random_topic_name, read_topic_raw, run_within, signal, spawn_consumer, spawn_consumer_at,
    spawn_members, stop, stop_all, wait_balanced, wait_caught_up, wait_caught_up_at, wait_owners,
};

const GROUP: &str = "order-processors";

/// Three `consume` processes with default flags on one host all stay up, each owns two of six partitions and serves its own metrics address; together they fold the topic.
#[tokio::test]
async fn three_default_members_on_one_host_share_six_partitions() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_to(&topic, 6_000, 71, 6).await;
    let mut members = spawn_members(&topic, &db, 3, &[]);
    wait_balanced(&db, &topic, Duration::from_secs(30), 3, 2).await;
    for m in &mut members {
        assert!(
            m.try_wait().expect("poll").is_none(),
            "a member with default flags exited"
        );
    }
    let addrs = metrics_addrs(&db, GROUP).await;
    assert_eq!(addrs.len(), 3, "{addrs:?}");
    let distinct: std::collections::BTreeSet<_> = addrs.values().flatten().collect();
    assert_eq!(
        distinct.len(),
        3,
        "each member its own metrics address: {addrs:?}"
    );
    for addr in distinct {
        let (status, body) = http_get(addr, "/healthz").await;
        assert_eq!(status, 200, "{addr}: {body}");
    }
    wait_caught_up(&db, &topic, Duration::from_secs(60)).await;
    stop_all(members).await;
    assert_db_is_fold_of_topic(&db, &topic, GROUP).await;
    db.drop_db().await;
}

/// Every member SIGKILLed mid-stream, then `consume --until-caught-up` at once: it is assigned little while the dead members are still inside their session timeout, waits for them to expire, and exits 0 only once the database is the fold of the whole topic.
#[tokio::test]
async fn until_caught_up_after_a_crash_waits_for_the_whole_group() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_to(&topic, 30_000, 72, 6).await;
    // Small fetches keep the members busy long enough to be killed mid-stream.
    let mut members = spawn_members(&topic, &db, 3, &["--fetch-max-bytes", "4096"]);
    wait_owners(&db, &topic, Duration::from_secs(30), "all six owned", |o| {
        o.len() == 6 && o.values().all(Option::is_some)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for m in &mut members {
        m.start_kill().expect("SIGKILL");
    }
    for m in &mut members {
        let _ = m.wait().await;
    }
    let (_, watermarks) = read_topic_raw(&topic).await;
    let stored_before = all_stored_offsets(&db).await;
    assert_ne!(
        stored_before, watermarks,
        "killed mid-stream, not after the end"
    );

    let summary = consume_until_caught_up(&topic, &db, &[]).await;
    assert_eq!(summary["caught_up"], true, "{summary}");
    // Nothing else runs now: what the database holds is what it exited on.
    assert_db_is_fold_of_topic(&db, &topic, GROUP).await;
    db.drop_db().await;
}

/// 400 partitions, three members started together: within a minute every partition has exactly one owner, a live member, with lag 0; no partition is left without an owner; and the database is the fold of the topic.
#[tokio::test]
async fn four_hundred_partitions_three_members() {
    let _heavy = crate::harness::heavy().await;
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_to(&topic, 20_000, 73, 400).await;
    let members = spawn_members(&topic, &db, 3, &[]);
    wait_owners(
        &db,
        &topic,
        Duration::from_secs(60),
        "400 partitions owned, 133 or 134 each",
        |o| {
            o.len() == 400
                && o.values().all(Option::is_some)
                && counts(o).len() == 3
                && counts(o).values().all(|n| (133..=134).contains(n))
        },
    )
    .await;
    wait_caught_up(&db, &topic, Duration::from_secs(120)).await;
    // Owners are the live members (their rows exist), none orphaned.
    let live: std::collections::BTreeSet<String> =
        metrics_addrs(&db, GROUP).await.into_keys().collect();
    let now = owners(&db, &topic).await;
    assert!(
        now.values().flatten().all(|o| live.contains(o)),
        "every owner is a live member: {:?}",
        counts(&now)
    );
    stop_all(members).await;
    assert_db_is_fold_of_topic(&db, &topic, GROUP).await;
    db.drop_db().await;
}

/// A second process started with a live member's id takes the id over (like Kafka's static membership); the first stops within a few heartbeats with one line saying why and exits 1, and there is no tug of war over the leases.
#[tokio::test]
async fn second_process_with_the_same_member_id_replaces_the_first() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_to(&topic, 3_000, 74, 3).await;
    let first = spawn_consumer(&topic, &db, &["--member-id", "twin"]);
    wait_owners(&db, &topic, Duration::from_secs(30), "owned by twin", |o| {
        o.len() == 3 && o.values().all(|m| m.as_deref() == Some("twin"))
    })
    .await;
    let second = spawn_consumer(&topic, &db, &["--member-id", "twin"]);
    let out = tokio::time::timeout(Duration::from_secs(20), first.wait_with_output())
        .await
        .expect("the first process stops within 20 s")
        .expect("exit status");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "error: member id twin of group order-processors was taken over by another process"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The second one goes on and owns everything: each lease moved once
    // (epoch 1 -> 2) and stays put across heartbeats, no tug of war.
    produce_events_to(&topic, 1_000, 75, 3).await;
    wait_caught_up(&db, &topic, Duration::from_secs(60)).await;
    let epochs = || async {
        db.client()
            .await
            .query(
                "SELECT owner, epoch FROM consumer_offsets ORDER BY partition",
                &[],
            )
            .await
            .expect("epochs")
            .iter()
            .map(|r| (r.get::<_, Option<String>>(0), r.get::<_, i64>(1)))
            .collect::<Vec<_>>()
    };
    let after_takeover = epochs().await;
    assert_eq!(after_takeover, vec![(Some("twin".to_owned()), 2); 3]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        epochs().await,
        after_takeover,
        "no lease changed hands again"
    );
    stop_all(vec![second]).await;
    assert_db_is_fold_of_topic(&db, &topic, GROUP).await;
    db.drop_db().await;
}

/// The key `foodpipe partition` places in `partition` of `count`.
async fn key_for_partition(partition: i32, count: u32) -> String {
    for i in 0..1000 {
        let key = format!("CUST-{i:04}");
        let out =
            crate::harness::run_ok(foodpipe(&["partition", "-n", &count.to_string(), &key])).await;
        if out.split_whitespace().last() == Some(&partition.to_string()) {
            return key;
        }
    }
    panic!("no key for partition {partition}");
}

/// One partition whose fetch fails every time (a snappy batch, which Tansu 0.6 cannot serve: it drops the connection) is stopped loudly while the others are folded: /healthz answers 503 naming it, its state metric says stopped, `group describe` lists it with the error, and `--until-caught-up` exits 1 naming it.
#[tokio::test]
async fn a_partition_that_cannot_be_fetched_is_stopped_loudly() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_to(&topic, 900, 76, 3).await;
    let key = key_for_partition(0, 3).await;
    let mut send = foodpipe(&["send", "--topic", &topic, "--compression", "snappy"]);
    send.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = send.spawn().expect("send starts");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(format!("{key}\t{{\"not\":\"an order\"}}\n").as_bytes())
            .await
            .expect("write");
    }
    assert!(child.wait().await.expect("send exits").success());
    produce_events_to(&topic, 300, 77, 3).await;

    // A long-running member: health, metrics and describe all name
    // partition 0 while the others are folded.
    let member = spawn_consumer(&topic, &db, &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let addr = loop {
        if let Some(Some(addr)) = metrics_addrs(&db, GROUP).await.into_values().next() {
            let (status, body) = http_get(&addr, "/healthz").await;
            if status == 503 && body.contains("partition 0 stopped") {
                assert!(!body.contains("partition 1"), "{body}");
                assert!(!body.contains("partition 2"), "{body}");
                break addr;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partition 0 not reported stopped within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (_, metrics) = http_get(&addr, "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "foodpipe_partition_state{{group=\"order-processors\",topic=\"{topic}\",partition=\"0\",state=\"stopped\"}} 1"
        )),
        "{metrics}"
    );
    // The member's state line comes with its next heartbeat.
    let mut described = String::new();
    for _ in 0..20 {
        let mut describe = foodpipe(&["group", "describe", "--topic", &topic]);
        describe.env("DATABASE_URL", &db.url);
        described = crate::harness::run_ok(describe).await;
        if described.contains(": degraded (") && described.contains(" 1 stopped)") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        described.contains("degraded (2 running, 1 stopped)"),
        "member state: {described}"
    );
    assert!(described.contains("stopped partitions:"), "{described}");
    assert!(described.contains("every fetch at offset"), "{described}");
    signal(&member, "TERM");
    let out = member.wait_with_output().await.expect("exits");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a run that ends with a stopped partition exits 1"
    );

    // `--until-caught-up` ends once the rest is caught up, and exits 1
    // naming the stopped partition.
    let mut cmd = foodpipe(&["consume", "--topic", &topic, "--until-caught-up"]);
    cmd.env("DATABASE_URL", &db.url);
    let out = run_within(cmd, Duration::from_secs(120)).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or_default()
            .contains("1 partition(s) of")
            && stderr.contains("partition 0:"),
        "{stderr}"
    );
    // The other partitions are folded to their ends. (Partition 0 cannot
    // be read back: the broker cannot serve it.)
    let watermarks = crate::harness::log_ends(&topic).await;
    let stored = all_stored_offsets(&db).await;
    for p in [1, 2] {
        assert_eq!(stored.get(&p), watermarks.get(&p), "partition {p}");
    }
    db.drop_db().await;
}

/// A topic deleted and recreated under a running member (private Tansu): the member notices (the topic goes missing, or its position is past the new log's end, or the record before it is another), applies --offset-reset there and then, records the gap, and folds the new log.
#[tokio::test]
async fn topic_recreated_under_a_running_member() {
    let mut broker = crate::harness::PrivateBroker::start().await;
    let bootstrap = broker.address.clone();
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_at(&bootstrap, &topic, 600, 78).await;
    let member = spawn_consumer_at(&bootstrap, &topic, &db, &[]);
    wait_caught_up_at(&bootstrap, &db, &topic, Duration::from_secs(60)).await;

    crate::harness::send_delete_topic(&broker, &topic).await;
    // Tansu 0.6.0's sqlite storage panics ("more or less than one row")
    // when a running consumer fetches the deleted topic, and the broker
    // answers nothing after that (not even the listing that would show the
    // topic gone): restart it, as an operator would. The member rides
    // through the restart like any broker outage.
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart().await;
    // Fewer records than before: every stored offset is past the new end.
    produce_events_at(&bootstrap, &topic, 150, 79).await;
    wait_caught_up_at(&bootstrap, &db, &topic, Duration::from_secs(90)).await;
    let gaps = offset_gaps(&db).await;
    assert_eq!(gaps.len(), 3, "one gap per partition: {gaps:?}");
    for gap in &gaps {
        assert_eq!((gap.reset_to, gap.new_incarnation), (0, 1), "{gaps:?}");
    }
    let in_new_log: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM order_events WHERE kafka_incarnation = 1",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(in_new_log, 150, "every event of the new log applied once");
    stop(member).await;
    db.drop_db().await;
}
