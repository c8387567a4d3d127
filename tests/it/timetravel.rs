//! Event sourcing: the state as of a time, computed two ways that must
//! agree — from the history in PostgreSQL (`asof`) and by replaying Kafka
//! up to that time into a schema of its own (`replay --until`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::harness::{
    TestDb, assert_exit, consume_until_caught_up, foodpipe, produce_events, random_topic_name,
    read_topic_raw, run_ok, run_within, send_lines, spawn_members, stop,
};

/// `rebuild --topic TOPIC --json` on `db`, which must succeed: its report.
async fn rebuild_report(db: &TestDb, topic: &str) -> serde_json::Value {
    let mut cmd = foodpipe(&["rebuild", "--topic", topic, "--json"]);
    cmd.env("DATABASE_URL", &db.url);
    serde_json::from_str(&run_ok(cmd).await).expect("json")
}

/// For several times T, `asof T` (from history) equals `replay --until T` (from Kafka), order by order.
#[tokio::test]
async fn asof_history_equals_replay_from_kafka() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 1500, 81).await;
    consume_until_caught_up(&topic, &db, &[]).await;
    let (records, _) = read_topic_raw(&topic).await;
    let mut times: Vec<_> = records.iter().map(|r| r.timestamp).collect();
    times.sort();
    let pg = db.client().await;
    for (i, at) in [100usize, 700, 1400].into_iter().enumerate() {
        let t = times[at].to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let schema = format!("replay_{i}");
        let mut cmd = foodpipe(&[
            "replay",
            "--topic",
            &topic,
            "--to-schema",
            &schema,
            "--until",
            &t,
        ]);
        cmd.env("DATABASE_URL", &db.url);
        run_ok(cmd).await;
        let replayed: BTreeMap<String, (String, String)> = pg
            .query(
                &format!("SELECT order_id::text, status, last_event_id::text FROM {schema}.orders"),
                &[],
            )
            .await
            .expect("replayed view")
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();

        let mut cmd = foodpipe(&["asof", &t, "--json"]);
        cmd.env("DATABASE_URL", &db.url);
        let out = run_ok(cmd).await;
        let from_history: BTreeMap<String, (String, String)> = out
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json line");
                (
                    v["order_id"].as_str().expect("id").to_owned(),
                    (
                        v["status"].as_str().expect("status").to_owned(),
                        v["last_event_id"].as_str().expect("event").to_owned(),
                    ),
                )
            })
            .collect();
        assert!(!from_history.is_empty(), "orders existed at {t}");
        let differing: Vec<_> = from_history
            .keys()
            .chain(replayed.keys())
            .filter(|k| from_history.get(*k) != replayed.get(*k))
            .map(|k| (k, from_history.get(k), replayed.get(k)))
            .collect();
        assert!(
            differing.is_empty(),
            "as of {t}, {} orders differ (order, asof, replay): {:?}",
            differing.len(),
            &differing[..differing.len().min(4)]
        );
        // Fewer orders earlier on: the time really matters.
        let all: i64 = pg
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .expect("count")
            .get(0);
        if at < 1400 {
            assert!(
                (from_history.len() as i64) < all,
                "as of {t} is a past state"
            );
        }
    }
    db.drop_db().await;
}

/// Unparseable times and orders that do not exist are one clear line and exit 2.
#[tokio::test]
async fn asof_bad_input_is_exit_2() {
    let db = TestDb::create().await;
    let mut cmd = foodpipe(&["asof", "yesterday-ish"]);
    cmd.env("DATABASE_URL", &db.url);
    let out = run_within(cmd, Duration::from_secs(15)).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("RFC 3339") && err.lines().count() == 1,
        "{err}"
    );
    let errors = |err: &str| err.lines().filter(|l| l.starts_with("error:")).count();

    // asof only reads: the database needs foodpipe's tables first.
    let mut migrate = foodpipe(&["migrate"]);
    migrate.env("DATABASE_URL", &db.url);
    run_ok(migrate).await;
    let mut cmd = foodpipe(&[
        "asof",
        "2026-01-01T00:00:00Z",
        "--order",
        "00000000-0000-0000-0000-000000000042",
    ]);
    cmd.env("DATABASE_URL", &db.url);
    let out = run_within(cmd, Duration::from_secs(15)).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not exist") && errors(&err) == 1, "{err}");
    db.drop_db().await;
}

/// `rebuild` replays Kafka into shadow tables while a live consumer runs, reports the orders that differ from a damaged live view, changes nothing with --dry-run (exit 1: they differ), and swaps the rebuilt tables in otherwise.
#[tokio::test]
async fn rebuild_repairs_the_view_while_live() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 600, 91).await;
    consume_until_caught_up(&topic, &db, &[]).await;
    // Damage three orders of the live view.
    let pg = db.client().await;
    assert_eq!(crate::harness::damage_orders(&pg, "public", 3).await, 3);
    // A live consumer keeps running throughout.
    let live = crate::harness::spawn_consumer(&topic, &db, &[]);
    produce_events(&topic, 200, 92).await;

    let mut cmd = foodpipe(&["rebuild", "--topic", &topic, "--dry-run", "--json"]);
    cmd.env("DATABASE_URL", &db.url);
    let out = crate::harness::run_within(cmd, Duration::from_secs(120)).await;
    // A difference found by a dry run (--verify-only) is exit 1.
    assert_exit(&out, 1);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["differing"], 3, "{report}");
    assert!(
        report["first_differences"]
            .as_array()
            .expect("differences")
            .iter()
            .all(|d| d["projection"] == "orders"),
        "{report}"
    );
    assert_eq!(report["swapped"], false);
    let still: i64 = pg
        .query_one("SELECT count(*) FROM orders WHERE status = 'pending' AND last_event_id NOT IN (SELECT event_id FROM order_events)", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(still, 3, "a dry run changes nothing");

    let report = rebuild_report(&db, &topic).await;
    assert_eq!(report["swapped"], true);
    assert_eq!(report["differing"], 3, "{report}");

    tokio::time::sleep(Duration::from_secs(2)).await;
    stop(live).await;
    consume_until_caught_up(&topic, &db, &[]).await;
    crate::harness::assert_db_is_fold_of_topic(&db, &topic, "order-processors").await;
    db.drop_db().await;
}

/// `rebuild` while a producer streams and two default `consume` members commit: the swap fences the group instead of deadlocking with a live commit, the fence is lifted afterwards, and the database is exactly the fold of the topic (nothing lost, nothing doubled).
#[tokio::test]
async fn rebuild_under_load_loses_and_repeats_nothing() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 1500, 93).await;
    let members = spawn_members(&topic, &db, 2, &[]);
    crate::harness::wait_caught_up(&db, &topic, Duration::from_secs(60)).await;

    // A producer streams throughout the rebuild (about 15 s at 400/s).
    let mut producer = foodpipe(&[
        "produce", "--topic", &topic, "--count", "6000", "--rate", "400", "--seed", "94", "--json",
    ]);
    producer
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let producer = producer.spawn().expect("producer starts");
    tokio::time::sleep(Duration::from_secs(2)).await;

    for _ in 0..2 {
        let report = rebuild_report(&db, &topic).await;
        assert_eq!(report["swapped"], true, "{report}");
        assert_eq!(report["differing"], 0, "{report}");
    }
    let fenced: Option<String> = db
        .client()
        .await
        .query_one(
            "SELECT fenced_by FROM consumer_groups WHERE group_id = 'order-processors'",
            &[],
        )
        .await
        .expect("fence row")
        .get(0);
    assert_eq!(fenced, None, "the fence is lifted after the swap");

    let out = producer.wait_with_output().await.expect("producer exits");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(summary["events"], 6000, "every event acknowledged");

    crate::harness::wait_caught_up(&db, &topic, Duration::from_secs(90)).await;
    crate::harness::stop_all(members).await;
    crate::harness::assert_db_is_fold_of_topic(&db, &topic, "order-processors").await;
    db.drop_db().await;
}

/// Issue 19 (4): a rebuild whose shadow holds more dead letters than the live table (the live group started at the log end with `--offset-reset latest` while poison records were already there; the rebuild replays from offset 0) leaves the live `dead_letters` id sequence past the ids it copied, so every later dead letter is recorded: one per poison record, by offset, none lost to an id clash.
#[tokio::test]
async fn dead_letters_after_a_rebuild_are_all_recorded() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    let poison = |from: usize, n: usize| -> Vec<u8> {
        (from..from + n)
            .flat_map(|i| format!("CUST-{i:04}\t{{not json {i}\n").into_bytes())
            .collect()
    };
    send_lines(&topic, &poison(0, 30)).await;
    consume_until_caught_up(&topic, &db, &["--offset-reset", "latest"]).await;
    let pg = db.client().await;
    let dead = || async {
        pg.query(
            "SELECT partition, kafka_offset FROM dead_letters WHERE topic = $1",
            &[&topic],
        )
        .await
        .expect("dead letters")
        .iter()
        .map(|r| (r.get::<_, i32>(0), r.get::<_, i64>(1)))
        .collect::<BTreeSet<_>>()
    };
    assert!(dead().await.is_empty(), "the live group started at the end");

    let report = rebuild_report(&db, &topic).await;
    assert_eq!(report["swapped"], true, "{report}");
    assert_eq!(
        dead().await.len(),
        30,
        "the replay's dead letters swapped in"
    );

    send_lines(&topic, &poison(30, 20)).await;
    consume_until_caught_up(&topic, &db, &[]).await;
    let (records, _) = read_topic_raw(&topic).await;
    let every: BTreeSet<(i32, i64)> = records.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(every.len(), 50);
    assert_eq!(
        dead().await,
        every,
        "one dead letter per poison record, by partition and offset"
    );
    db.drop_db().await;
}

/// Issue 19 (9): while a rebuild replays into its shadow, a second `rebuild` and a `rebuild --dry-run` refuse before touching anything, each with one line naming the first (its pid) and a non-zero exit; the first goes on, swaps, exits 0, and the live database is the fold of the topic.
#[tokio::test]
async fn a_second_rebuild_refuses_while_one_runs() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 30_000, 96).await;
    consume_until_caught_up(&topic, &db, &[]).await;
    let rebuild = |extra: &[&str]| {
        let mut args = vec!["rebuild", "--topic", topic.as_str()];
        args.extend_from_slice(extra);
        let mut cmd = foodpipe(&args);
        cmd.env("DATABASE_URL", &db.url);
        cmd
    };
    let mut first = rebuild(&["--json"]);
    first
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut first = first.spawn().expect("first rebuild starts");
    let first_pid = first.id().expect("running");
    // Wait until its replay has committed into the shadow.
    let pg = db.client().await;
    let replayed = || async {
        pg.query_one("SELECT count(*) FROM public_rebuild.order_events", &[])
            .await
            .map_or(0, |r| r.get::<_, i64>(0))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while replayed().await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first rebuild's replay never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (second, dry) = tokio::join!(
        run_within(rebuild(&[]), Duration::from_secs(60)),
        run_within(rebuild(&["--dry-run"]), Duration::from_secs(60)),
    );
    let still_running = first.try_wait().expect("first rebuild").is_none();
    for (what, out) in [("rebuild", second), ("rebuild --dry-run", dry)] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} refused: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{what}: one line: {err}");
        assert!(
            errors[0].contains(&format!("pid {first_pid}")),
            "{what} names the first rebuild (pid {first_pid}): {err}"
        );
    }
    assert!(
        still_running,
        "the first rebuild was still replaying while the others ran"
    );
    assert!(replayed().await > 0, "the first rebuild's shadow is intact");

    let out = tokio::time::timeout(Duration::from_secs(300), first.wait_with_output())
        .await
        .expect("the first rebuild finishes")
        .expect("output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["swapped"], true, "{report}");
    assert_eq!(report["differing"], 0, "{report}");
    crate::harness::assert_db_is_fold_of_topic(&db, &topic, "order-processors").await;
    db.drop_db().await;
}

/// A rebuild stopped (SIGSTOP: a paused VM, a cut network) in the middle
/// of its swap, after it asked for the live tables' locks: the server ends
/// its open transaction after a session timeout, the swap rolls back and
/// its locks go, so reads of the live view and the live member's commits
/// go on while it stays stopped; when it runs again it exits 1 and the
/// live view is still the fold of the topic (issue 19, item 6). Before,
/// the swap copied the tables under their locks and nothing ended its
/// transaction: every read and commit waited until TCP gave up.
#[tokio::test]
async fn a_rebuild_paused_mid_swap_never_stalls_the_pipeline() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 2_000, 97).await;
    let mut member = foodpipe(&["consume", "--topic", &topic]);
    member
        .env("DATABASE_URL", &db.url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let member = member.spawn().expect("member starts");
    crate::harness::wait_caught_up(&db, &topic, Duration::from_secs(60)).await;

    // A reader holds the live view, so the swap has to wait for its lock:
    // the moment to stop the rebuild, with its swap under way.
    let mut reader = db.client().await;
    let reading = reader.transaction().await.expect("begin");
    reading
        .query("SELECT count(*) FROM orders", &[])
        .await
        .expect("read the view");
    let mut rebuild = foodpipe(&["rebuild", "--topic", &topic]);
    rebuild
        .env("DATABASE_URL", &db.url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let rebuild = rebuild.spawn().expect("rebuild starts");
    let pg = db.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let waiting: i64 = pg
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = 'public' AND c.relname = 'orders' \
                   AND l.mode = 'AccessExclusiveLock' AND NOT l.granted",
                &[],
            )
            .await
            .expect("locks")
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rebuild never reached its swap"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    crate::harness::signal(&rebuild, "STOP");
    // The swap gets its locks now, and its process can do nothing more.
    reading.rollback().await.expect("end the read");

    // Within a session timeout (10 s) and some slack, the view is readable.
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        pg.query_one("SELECT count(*) FROM orders", &[]),
    )
    .await;
    assert!(
        read.is_ok(),
        "a read of the live view still waits on the stopped rebuild after 30 s"
    );
    // And the live member folds new events while the rebuild stays stopped.
    produce_events(&topic, 200, 98).await;
    crate::harness::wait_caught_up(&db, &topic, Duration::from_secs(60)).await;

    crate::harness::signal(&rebuild, "CONT");
    let out = tokio::time::timeout(Duration::from_secs(60), rebuild.wait_with_output())
        .await
        .expect("the rebuild ends")
        .expect("output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "its swap was rolled back: {err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("error:") && l.contains("rolled back")),
        "one error line saying the swap was rolled back: {err}"
    );
    crate::harness::wait_caught_up(&db, &topic, Duration::from_secs(60)).await;
    crate::harness::assert_db_is_fold_of_topic(&db, &topic, "order-processors").await;
    crate::harness::stop_all(vec![member]).await;
    db.drop_db().await;
}

/// The swap replaces the live tables with the shadow's: privileges granted
/// on the live ones are granted on their replacements, so a read-only role
/// an operator set up still reads `status` and dead letters after a
/// rebuild.
#[tokio::test]
async fn a_read_only_role_still_reads_after_a_rebuild() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 300, 99).await;
    consume_until_caught_up(&topic, &db, &[]).await;
    let reader = db.read_only_role(&["public"]).await;
    let mut rebuild = foodpipe(&["rebuild", "--topic", &topic]);
    rebuild.env("DATABASE_URL", &db.url);
    run_ok(rebuild).await;
    for args in [
        vec!["status", "--topic", topic.as_str()],
        vec!["dead-letters", "list"],
    ] {
        let mut cmd = foodpipe(&args);
        cmd.env("DATABASE_URL", &reader.url);
        let out = run_within(cmd, Duration::from_secs(60)).await;
        assert!(
            out.status.success(),
            "{args:?} as a read-only role after rebuild: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    db.drop_db().await;
    reader.drop_role().await;
}
