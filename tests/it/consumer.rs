//! The exactly-once-effect consumer against the real broker and
//! PostgreSQL: bad records, duplicates, signals, crashes and restarts.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use tokio::io::AsyncWriteExt;

use crate::harness::{
    TestDb, all_stored_offsets, assert_db_is_fold_of_topic, consume_until_caught_up,
    consume_until_caught_up_at, foodpipe, generated, history_len, http_get, offset_gaps,
    produce_events, produce_events_at, random_topic_name, read_topic_raw, read_topic_raw_at,
    run_ok, send_lines, signal, spawn_consumer, spawn_consumer_at, stop, wait_caught_up,
    wait_caught_up_at,
};

/// Generated events as `KEY<TAB>JSON` lines.
async fn generated_lines(count: u32, seed: u64, customers: u32) -> Vec<Vec<u8>> {
    let out = generated(count, seed, &["--customers", &customers.to_string()]).await;
    out.lines().map(|l| l.as_bytes().to_vec()).collect()
}

fn event_line(key: &str, event_type: &str, order_id: &str, payload: &str) -> Vec<u8> {
    format!(
        "{key}\t{{\"event_id\":\"{}\",\"schema_version\":1,\"event_type\":\"{event_type}\",\"order_id\":\"{order_id}\",\"customer_id\":\"{key}\",\"occurred_at\":\"2026-11-24T12:00:00Z\",\"payload\":{payload}}}",
        uuid::Uuid::new_v4()
    )
    .into_bytes()
}

/// Every dead-letter class, mixed between good records of one partition and one batch, is recorded with its kind while its neighbours apply.
#[tokio::test]
async fn every_bad_record_class_is_dead_lettered_and_neighbours_apply() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    let key = "CUST-0001";
    // Good events, all of one customer so all in one partition.
    let good = generated_lines(20, 5, 1).await;
    let order_x = uuid::Uuid::new_v4().to_string();
    let created_x = event_line(
        key,
        "OrderCreated",
        &order_x,
        r#"{"restaurant_id":"REST-001","items":[{"name":"Ramen","quantity":1,"unit_price_cents":1390}],"total_cents":1390}"#,
    );
    let mut big = event_line(
        key,
        "OrderPaid",
        &order_x,
        r#"{"payment_id":"00000000-0000-0000-0000-000000000001","amount_cents":1,"method":"card"}"#,
    );
    big.extend(std::iter::repeat_n(b' ', 3000));
    let bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "malformed_json",
            format!("{key}\t{{\"event_id\": oops").into_bytes(),
        ),
        ("not_utf8", [key.as_bytes(), b"\t\xff\xfe\xfd"].concat()),
        (
            "unknown_event_type",
            event_line(key, "OrderTeleported", &order_x, "{}"),
        ),
        (
            "unknown_schema_version",
            String::from_utf8(event_line(key, "OrderDelivered", &order_x, "{}"))
                .expect("utf8")
                .replace("\"schema_version\":1", "\"schema_version\":99")
                .into_bytes(),
        ),
        (
            "invalid_field",
            String::from_utf8(event_line(
                key,
                "OrderShipped",
                &order_x,
                "{\"courier\":\"bike\"}",
            ))
            .expect("utf8")
            .replace(&format!("\"order_id\":\"{order_x}\","), "")
            .into_bytes(),
        ),
        ("oversize", big),
        // Delivered before paid: a transition the machine forbids.
        (
            "invalid_transition",
            event_line(key, "OrderDelivered", &order_x, "{}"),
        ),
        // An event for an order never created.
        (
            "invalid_transition",
            event_line(
                key,
                "OrderPaid",
                &uuid::Uuid::new_v4().to_string(),
                r#"{"payment_id":"00000000-0000-0000-0000-000000000002","amount_cents":1,"method":"card"}"#,
            ),
        ),
    ];
    let mut input = Vec::new();
    let mut expected_kinds = Vec::new();
    input.extend_from_slice(&created_x);
    input.push(b'\n');
    for (i, line) in good.iter().enumerate() {
        input.extend_from_slice(line);
        input.push(b'\n');
        if let Some((kind, bad_line)) = bad.get(i) {
            input.extend_from_slice(bad_line);
            input.push(b'\n');
            expected_kinds.push(*kind);
        }
    }
    send_lines(&topic, &input).await;
    consume_until_caught_up(&topic, &db, &["--max-record-bytes", "2000"]).await;

    let pg = db.client().await;
    let rows = pg
        .query(
            "SELECT error_kind, kafka_offset, key, value, error FROM dead_letters ORDER BY kafka_offset",
            &[],
        )
        .await
        .expect("dead letters");
    let kinds: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        kinds, expected_kinds,
        "one dead letter per bad record, in order"
    );
    // Raw bytes and key are kept as they were on the topic.
    let (records, watermarks) = read_topic_raw(&topic).await;
    let by_offset: BTreeMap<i64, &crate::harness::RawRecord> =
        records.iter().map(|r| (r.offset, r)).collect();
    for row in &rows {
        let offset: i64 = row.get(1);
        let key_bytes: Option<Vec<u8>> = row.get(2);
        let value: Option<Vec<u8>> = row.get(3);
        let error: String = row.get(4);
        assert_eq!(key_bytes, by_offset[&offset].key, "key kept");
        assert_eq!(value, by_offset[&offset].value, "raw bytes kept");
        assert!(!error.is_empty());
    }
    // The neighbours applied: every good event plus order X's creation.
    assert_eq!(history_len(&pg).await, 21);
    let x_status: String = pg
        .query_one(
            "SELECT status FROM orders WHERE order_id::text = $1",
            &[&order_x],
        )
        .await
        .expect("order x")
        .get(0);
    assert_eq!(x_status, "pending", "forbidden transitions did not move it");
    // And the partition moved past all of them.
    let stored: i64 = pg
        .query_one("SELECT max(next_offset) FROM consumer_offsets", &[])
        .await
        .expect("offset")
        .get(0);
    assert_eq!(stored, *watermarks.values().max().expect("partitions"));

    // `dead-letters list` shows every one; `show` prints raw bytes escaped.
    let mut cmd = foodpipe(&["dead-letters", "list", "--topic", &topic]);
    cmd.env("DATABASE_URL", &db.url);
    let listing = run_ok(cmd).await;
    for kind in &expected_kinds {
        assert!(listing.contains(kind), "{kind} listed:\n{listing}");
    }
    assert_eq!(
        listing.lines().count(),
        expected_kinds.len() + 1,
        "header + one line each"
    );
    let not_utf8_id: i64 = pg
        .query_one(
            "SELECT id FROM dead_letters WHERE error_kind = 'not_utf8'",
            &[],
        )
        .await
        .expect("not_utf8 row")
        .get(0);
    let mut cmd = foodpipe(&["dead-letters", "show", &not_utf8_id.to_string()]);
    cmd.env("DATABASE_URL", &db.url);
    let shown = run_ok(cmd).await;
    assert!(shown.contains("value:       \\xff\\xfe\\xfd"), "{shown}");
    assert!(shown.contains("key:         CUST-0001"), "{shown}");
    db.drop_db().await;
}

/// The same records produced twice (a producer retry) change nothing: history and view are as after one copy.
#[tokio::test]
async fn producer_duplicates_change_nothing() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    let lines = generated_lines(200, 9, 20).await;
    let input: Vec<u8> = lines
        .iter()
        .flat_map(|l| [l.as_slice(), b"\n"].concat())
        .collect();
    send_lines(&topic, &input).await;
    consume_until_caught_up(&topic, &db, &[]).await;
    let pg = db.client().await;
    let view = || async {
        pg.query(
            "SELECT order_id::text || status || last_event_id::text FROM orders ORDER BY 1",
            &[],
        )
        .await
        .expect("view")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<String>>()
    };
    let view_once = view().await;

    // The retry: every record again, after the originals.
    send_lines(&topic, &input).await;
    let summary = consume_until_caught_up(&topic, &db, &[]).await;
    let duplicates: u64 = summary["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["duplicates"].as_u64().expect("duplicates"))
        .sum();
    assert_eq!(duplicates, 200, "every copy recognised as a duplicate");
    let view_twice = view().await;
    assert_eq!(view_once, view_twice);
    assert_db_is_fold_of_topic(&db, &topic, "order-processors").await;
    db.drop_db().await;
}

/// SIGTERM mid-stream: the consumer commits the batch in hand and exits 0 promptly, leaving a consistent prefix.
#[tokio::test]
async fn sigterm_finishes_the_batch_and_exits_zero() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 20_000, 17).await;
    let child = spawn_consumer(&topic, &db, &["--fetch-max-bytes", "16384"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(&child, "TERM");
    let output = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("exits within 15 s of SIGTERM")
        .expect("output");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // What was committed is exactly a prefix of each partition.
    let pg = db.client().await;
    for row in pg
        .query(
            "SELECT o.partition, o.next_offset, \
                    (SELECT count(*) FROM order_events e WHERE e.kafka_partition = o.partition), \
                    (SELECT coalesce(max(kafka_offset), -1) FROM order_events e WHERE e.kafka_partition = o.partition) \
             FROM consumer_offsets o",
            &[],
        )
        .await
        .expect("offsets")
    {
        let next: i64 = row.get(1);
        let count: i64 = row.get(2);
        let max: i64 = row.get(3);
        assert_eq!(count, next, "history holds exactly offsets 0..next");
        assert_eq!(max, next - 1);
    }
    consume_until_caught_up(&topic, &db, &[]).await;
    assert_db_is_fold_of_topic(&db, &topic, "order-processors").await;
    db.drop_db().await;
}

/// SIGKILL at many random points while folding, restarting each time: in the end every event is applied exactly once.
#[tokio::test]
async fn crash_at_random_points_loses_and_repeats_nothing() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 30_000, 23).await;
    let mut rng = rand::rng();
    let pg = db.client().await;
    let mut applied_after_kill = Vec::new();
    for _ in 0..10 {
        // Small fetches: many commits per second, so kills land anywhere
        // between fetch, fold, write and commit. The same member id each
        // time (static membership): the restarted process takes its own
        // leases at once instead of waiting for the dead one to expire.
        let mut child = spawn_consumer(
            &topic,
            &db,
            &["--fetch-max-bytes", "8192", "--member-id", "crashy"],
        );
        let alive = rng.random_range(200..900);
        tokio::time::sleep(Duration::from_millis(alive)).await;
        child.start_kill().expect("SIGKILL");
        let _ = child.wait().await;
        applied_after_kill.push(history_len(&pg).await);
    }
    let mid_stream = applied_after_kill
        .windows(2)
        .filter(|w| w[0] < w[1] && w[1] < 30_000)
        .count();
    assert!(
        mid_stream >= 3,
        "at least 3 kills interrupted a consumer that was making progress: {applied_after_kill:?}"
    );
    eprintln!("history rows after each SIGKILL: {applied_after_kill:?}");
    consume_until_caught_up(&topic, &db, &["--member-id", "crashy"]).await;
    assert_db_is_fold_of_topic(&db, &topic, "order-processors").await;
    db.drop_db().await;
}

/// PostgreSQL connections killed mid-stream (pg_terminate_backend): the consumer retries, loses nothing and catches up by itself.
#[tokio::test]
async fn postgres_connection_loss_is_retried() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 20_000, 29).await;
    let child = spawn_consumer(&topic, &db, &["--fetch-max-bytes", "16384"]);
    let admin = db.client().await;
    let mut killed = 0i64;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let n: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = 'foodpipe'",
                &[],
            )
            .await
            .expect("terminate")
            .get(0);
        killed += n;
    }
    assert!(killed > 0, "the consumer's connections were terminated");
    wait_caught_up(&db, &topic, Duration::from_secs(90)).await;
    stop(child).await;
    assert_db_is_fold_of_topic(&db, &topic, "order-processors").await;
    db.drop_db().await;
}

/// A topic deleted and recreated under a stored offset is noticed: `--offset-reset fail` stops with the numbers, `earliest` folds the new log from 0 and records the gap.
#[tokio::test]
async fn recreated_topic_is_detected_and_reset_by_policy() {
    // A broker of its own: deleting a topic on Tansu 0.6.0 deletes them all.
    let broker = crate::harness::PrivateBroker::start().await;
    let bootstrap = broker.address.clone();
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_at(&bootstrap, &topic, 300, 31).await;
    consume_until_caught_up_at(&bootstrap, &topic, &db, &[]).await;
    // Partition 0 as if stored before fingerprints existed: the check must
    // fall back to the event id recorded in history.
    db.client()
        .await
        .execute(
            "UPDATE consumer_offsets SET last_fingerprint = NULL WHERE partition = 0",
            &[],
        )
        .await
        .expect("clear fingerprint");

    crate::harness::delete_topic(&broker, &topic).await;
    // More records than before, so most stored offsets still look in range.
    produce_events_at(&bootstrap, &topic, 900, 32).await;

    let mut fail = foodpipe(&[
        "consume",
        "--until-caught-up",
        "--topic",
        &topic,
        "--offset-reset",
        "fail",
    ]);
    fail.env("DATABASE_URL", &db.url)
        .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap);
    let output = crate::harness::run_within(fail, Duration::from_secs(60)).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--offset-reset earliest or latest"),
        "{stderr}"
    );
    assert!(stderr.contains("recreated"), "says why: {stderr}");

    consume_until_caught_up_at(&bootstrap, &topic, &db, &[]).await;
    let pg = db.client().await;
    let gaps = offset_gaps(&db).await;
    assert_eq!(gaps.len(), 3, "one gap per partition: {gaps:?}");
    for gap in &gaps {
        // Three times as many records as before: every stored offset is
        // inside the new log, so only the record check can tell.
        assert_eq!(gap.reason, "recreated");
        assert_eq!((gap.reset_to, gap.new_incarnation), (0, 1));
    }

    // Every event of the new log is in history at its new position.
    let (records, watermarks) = read_topic_raw_at(&bootstrap, &topic).await;
    assert_eq!(records.len(), 900);
    let history: std::collections::HashMap<String, (i32, i32, i64)> = pg
        .query(
            "SELECT event_id::text, kafka_partition, kafka_incarnation, kafka_offset FROM order_events",
            &[],
        )
        .await
        .expect("history")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    assert_eq!(history.len(), 1200, "old and new events, each once");
    for r in &records {
        let value: serde_json::Value =
            serde_json::from_slice(r.value.as_deref().expect("value")).expect("json");
        let id = value["event_id"].as_str().expect("event_id");
        assert_eq!(
            history.get(id),
            Some(&(r.partition, 1, r.offset)),
            "event {id}"
        );
    }
    assert_eq!(all_stored_offsets(&db).await, watermarks);
    db.drop_db().await;
}

/// The broker killed and restarted mid-stream: the consumer reconnects through its bootstrap list (which also holds a dead entry), loses nothing and catches up.
#[tokio::test]
async fn broker_restart_is_survived() {
    let mut broker = crate::harness::PrivateBroker::start().await;
    let bootstrap = broker.address.clone();
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_at(&bootstrap, &topic, 20_000, 37).await;
    // A dead first entry: bootstrap must go on to the next one.
    let list = format!("127.0.0.1:1,{bootstrap}");
    let child = spawn_consumer_at(&list, &topic, &db, &["--fetch-max-bytes", "16384"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    broker.kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart().await;
    wait_caught_up_at(&bootstrap, &db, &topic, Duration::from_secs(90)).await;
    stop(child).await;
    crate::harness::assert_db_is_fold_of_topic_at(&bootstrap, &db, &topic, "order-processors")
        .await;
    db.drop_db().await;
}

/// `--metrics-addr` serves Prometheus text with per-partition offsets, lag and counters, and `/healthz` says ok while broker and PostgreSQL answer.
#[tokio::test]
async fn metrics_and_health_are_served() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 2000, 41).await;
    let port = crate::harness::free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = spawn_consumer(&topic, &db, &["--metrics-addr", &addr]);
    wait_caught_up(&db, &topic, Duration::from_secs(60)).await;

    let (_, watermarks) = read_topic_raw(&topic).await;
    // Gauges follow commits; give the last one a moment to be recorded.
    let mut body = String::new();
    for _ in 0..50 {
        let (status, b) = http_get(&addr, "/metrics").await;
        assert_eq!(status, 200);
        body = b;
        if watermarks.iter().all(|(p, hw)| {
            body.contains(&format!(
                "foodpipe_committed_offset{{group=\"order-processors\",topic=\"{topic}\",partition=\"{p}\"}} {hw}"
            ))
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (p, hw) in &watermarks {
        let labels = format!("{{group=\"order-processors\",topic=\"{topic}\",partition=\"{p}\"}}");
        assert!(
            body.contains(&format!("foodpipe_committed_offset{labels} {hw}")),
            "offset of {p}:\n{body}"
        );
        assert!(
            body.contains(&format!("foodpipe_lag{labels} 0")),
            "lag of {p}:\n{body}"
        );
        assert!(
            body.contains(&format!("foodpipe_records_applied_total{labels} {hw}")),
            "applied of {p}:\n{body}"
        );
    }
    assert!(
        body.contains("foodpipe_batch_seconds_bucket"),
        "batch latency histogram:\n{body}"
    );

    let (status, health) = http_get(&addr, "/healthz").await;
    assert_eq!((status, health.trim()), (200, "ok"));
    stop(child).await;
    db.drop_db().await;
}

/// `/healthz` answers 503 while the broker is down and ok again once it is back.
#[tokio::test]
async fn health_follows_the_broker() {
    let mut broker = crate::harness::PrivateBroker::start().await;
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_at(&broker.address, &topic, 50, 43).await;
    let port = crate::harness::free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = spawn_consumer_at(&broker.address, &topic, &db, &["--metrics-addr", &addr]);
    let wait_for = |want: u16| {
        let addr = addr.clone();
        async move {
            for _ in 0..100 {
                if let Ok(Ok(mut s)) = tokio::time::timeout(
                    Duration::from_secs(8),
                    tokio::net::TcpStream::connect(&addr),
                )
                .await
                {
                    drop(s.shutdown().await);
                    let (status, body) = http_get(&addr, "/healthz").await;
                    if status == want {
                        return body;
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            panic!("/healthz never answered {want}");
        }
    };
    wait_for(200).await;
    broker.kill().await;
    let reason = wait_for(503).await;
    assert!(!reason.trim().is_empty(), "503 says why");
    broker.restart().await;
    wait_for(200).await;
    stop(child).await;
    db.drop_db().await;
}

/// `--dead-letter-topic` copies each dead letter to a topic, raw bytes unchanged, with the error and source position as headers.
#[tokio::test]
async fn dead_letters_are_copied_to_a_topic() {
    let topic = random_topic_name();
    let dlt = format!("{topic}-dlt");
    let db = TestDb::create().await;
    let mut input = Vec::new();
    for line in generated_lines(5, 51, 1).await {
        input.extend_from_slice(&line);
        input.push(b'\n');
    }
    input.extend_from_slice(b"CUST-0001\t{broken\n");
    send_lines(&topic, &input).await;
    consume_until_caught_up(&topic, &db, &["--dead-letter-topic", &dlt]).await;

    let (copies, _) = read_topic_raw(&dlt).await;
    assert_eq!(copies.len(), 1, "one dead letter, one copy");
    let copy = &copies[0];
    assert_eq!(copy.key.as_deref(), Some(&b"CUST-0001"[..]));
    assert_eq!(copy.value.as_deref(), Some(&b"{broken"[..]));
    assert_eq!(
        copy.headers.get("foodpipe.error.kind").map(Vec::as_slice),
        Some(&b"malformed_json"[..])
    );
    let source = String::from_utf8(copy.headers["foodpipe.source"].clone()).expect("utf8");
    let (_, watermarks) = read_topic_raw(&topic).await;
    let p = crate::harness::partition_of(b"CUST-0001", 3);
    assert_eq!(
        source,
        format!("{topic}/{p}/{}", watermarks[&(p as i32)] - 1)
    );
    db.drop_db().await;
}
