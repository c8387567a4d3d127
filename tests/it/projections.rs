//! Issue 20: projections, many views from one stream. Real Tansu, real
//! PostgreSQL, real `foodpipe` processes with default flags; every
//! expected table is computed here from the events the test produced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{
    TestDb, TopicRecord, assert_db_is_fold_of_topic, assert_exit, bootstrap_servers,
    consume_until_caught_up, foodpipe, history_len, produce_events, random_topic_name,
    read_topic_at, run_ok, run_within, signal, spawn_members, stop_all, wait_caught_up,
};

/// A user's SQL projection, as a user writes one: events per type per hour.
const PER_HOUR_SCHEMA: &str = "CREATE TABLE events_per_hour (\n\
    event_type text NOT NULL,\n\
    hour timestamptz NOT NULL,\n\
    events bigint NOT NULL,\n\
    PRIMARY KEY (event_type, hour)\n\
);\n";
const PER_HOUR_APPLY: &str = "INSERT INTO events_per_hour AS e (event_type, hour, events)\n\
SELECT event_type, date_trunc('hour', occurred_at), count(*)\n\
FROM applied_events GROUP BY 1, 2\n\
ON CONFLICT (event_type, hour) DO UPDATE SET events = e.events + EXCLUDED.events;\n";

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A projections directory with the given folders (name, schema, apply).
fn projections_dir(folders: &[(&str, &str, &str)]) -> TempDir {
    let dir = TempDir(std::env::temp_dir().join(format!("foodpipe-{}", random_topic_name())));
    std::fs::create_dir_all(dir.path()).expect("temp dir");
    for (name, schema, apply) in folders {
        write_projection(dir.path(), name, schema, apply);
    }
    dir
}

fn write_projection(dir: &Path, name: &str, schema: &str, apply: &str) {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).expect("folder");
    std::fs::write(folder.join("schema.sql"), schema).expect("schema.sql");
    std::fs::write(folder.join("apply.sql"), apply).expect("apply.sql");
}

/// `consume --until-caught-up` of `topic` into `db` with the projections
/// of `dir` (`--projections`), given `limit` to finish: its output.
async fn consume_with_projections(
    db: &TestDb,
    topic: &str,
    dir: &Path,
    limit: Duration,
) -> std::process::Output {
    let dir = dir.to_str().expect("utf-8 path");
    let args = [
        "consume",
        "--until-caught-up",
        "--topic",
        topic,
        "--projections",
        dir,
    ];
    let mut cmd = foodpipe(&args);
    cmd.env("DATABASE_URL", &db.url);
    run_within(cmd, limit).await
}

/// The repository's shipped SQL projection, copied as a user would.
fn shipped(name: &str) -> (String, String) {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("projections")
        .join(name);
    (
        std::fs::read_to_string(folder.join("schema.sql")).expect("schema.sql"),
        std::fs::read_to_string(folder.join("apply.sql")).expect("apply.sql"),
    )
}

/// The topic's distinct events (first copies), each applied.
fn distinct(records: &[TopicRecord]) -> Vec<&serde_json::Value> {
    let mut seen = std::collections::HashSet::new();
    records
        .iter()
        .filter(|r| seen.insert(r.value["event_id"].as_str().expect("id").to_owned()))
        .map(|r| &r.value)
        .collect()
}

fn micros(v: &serde_json::Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v["occurred_at"].as_str().expect("occurred_at"))
        .expect("RFC 3339")
        .timestamp_micros()
}

/// events_per_hour computed here: (type, hour in epoch seconds) -> events,
/// over the events that occurred at or before `until` (micros).
fn expected_per_hour(records: &[TopicRecord], until: i64) -> BTreeMap<(String, i64), i64> {
    let mut out = BTreeMap::new();
    for v in distinct(records) {
        let at = micros(v);
        if at > until {
            continue;
        }
        let hour = at.div_euclid(3_600_000_000) * 3600;
        *out.entry((v["event_type"].as_str().expect("type").to_owned(), hour))
            .or_default() += 1;
    }
    out
}

async fn per_hour(pg: &tokio_postgres::Client) -> BTreeMap<(String, i64), i64> {
    pg.query(
        "SELECT event_type, extract(epoch FROM hour)::int8, events FROM events_per_hour",
        &[],
    )
    .await
    .expect("events_per_hour")
    .iter()
    .map(|r| ((r.get(0), r.get(1)), r.get(2)))
    .collect()
}

/// delivery_times computed here: order -> micros of created, paid,
/// shipped, delivered, cancelled (0 for a step not taken).
fn expected_delivery(records: &[TopicRecord]) -> BTreeMap<String, [i64; 5]> {
    let mut out: BTreeMap<String, [i64; 5]> = BTreeMap::new();
    for v in distinct(records) {
        let step = match v["event_type"].as_str().expect("type") {
            "OrderCreated" => 0,
            "OrderPaid" => 1,
            "OrderShipped" => 2,
            "OrderDelivered" => 3,
            _ => 4,
        };
        out.entry(v["order_id"].as_str().expect("order").to_owned())
            .or_default()[step] = micros(v);
    }
    out
}

async fn delivery(pg: &tokio_postgres::Client) -> BTreeMap<String, [i64; 5]> {
    let m = |c: &str| format!("coalesce((extract(epoch FROM {c}) * 1000000)::int8, 0)");
    pg.query(
        &format!(
            "SELECT order_id::text, {}, {}, {}, {}, {} FROM delivery_times",
            m("created_at"),
            m("paid_at"),
            m("shipped_at"),
            m("delivered_at"),
            m("cancelled_at")
        ),
        &[],
    )
    .await
    .expect("delivery_times")
    .iter()
    .map(|r| (r.get(0), [r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)]))
    .collect()
}

/// A user SQL projection from a directory (FOODPIPE_PROJECTIONS, as users set it) and the shipped delivery_times fold exactly-once beside the built-ins, through two default members one of which is SIGKILLed mid-run and started again: every table equals the test's own fold of the topic.
#[tokio::test]
async fn sql_projections_fold_exactly_once_through_sigkills() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    let (schema, apply) = shipped("delivery_times");
    let dir = projections_dir(&[
        ("events_per_hour", PER_HOUR_SCHEMA, PER_HOUR_APPLY),
        ("delivery_times", &schema, &apply),
    ]);
    let dir_str = dir.path().to_str().expect("utf-8 path");
    produce_events(&topic, 2000, 201).await;
    let spawn = || {
        let mut cmd = foodpipe(&["consume", "--topic", &topic]);
        cmd.env("DATABASE_URL", &db.url)
            .env("FOODPIPE_PROJECTIONS", dir_str)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().expect("consumer starts")
    };
    let first = spawn();
    let mut second = spawn();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(&second, "KILL");
    let _ = second.wait().await;
    produce_events(&topic, 1000, 202).await;
    let third = spawn();
    tokio::time::sleep(Duration::from_millis(800)).await;
    signal(&first, "KILL");
    wait_caught_up(&db, &topic, Duration::from_secs(90)).await;
    crate::harness::stop_all(vec![third]).await;

    assert_db_is_fold_of_topic(&db, &topic, "order-processors").await;
    let (records, _) = read_topic_at(&bootstrap_servers(), &topic).await;
    let pg = db.client().await;
    assert_eq!(per_hour(&pg).await, expected_per_hour(&records, i64::MAX));
    assert_eq!(delivery(&pg).await, expected_delivery(&records));
    db.drop_db().await;
}

/// A projection whose SQL does not prepare is refused at start in one line naming it and its file, exit 2, with nothing applied; a schema.sql changed after its projection was added is refused with the fix.
#[tokio::test]
async fn a_broken_or_changed_projection_is_refused_at_start() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 200, 203).await;
    let broken = projections_dir(&[
        ("events_per_hour", PER_HOUR_SCHEMA, PER_HOUR_APPLY),
        (
            "broken",
            "CREATE TABLE broken (n bigint);",
            "INSERT INTO broken SELECT no_such_column FROM applied_events;",
        ),
    ]);
    let limit = Duration::from_secs(60);
    let out = consume_with_projections(&db, &topic, broken.path(), limit).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "{err}");
    assert!(
        error_lines[0].contains("projection broken")
            && error_lines[0].contains("broken/apply.sql")
            && error_lines[0].contains("no_such_column"),
        "{err}"
    );
    let pg = db.client().await;
    assert_eq!(history_len(&pg).await, 0, "nothing applied");
    let registered: i64 = pg
        .query_one(
            "SELECT count(*) FROM projections WHERE name IN ('broken', 'events_per_hour')",
            &[],
        )
        .await
        .expect("registry")
        .get(0);
    assert_eq!(registered, 0, "no projection of the directory was added");

    // The good one alone folds; then its schema.sql changes.
    let good = projections_dir(&[("events_per_hour", PER_HOUR_SCHEMA, PER_HOUR_APPLY)]);
    let out = consume_with_projections(&db, &topic, good.path(), limit).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    write_projection(
        good.path(),
        "events_per_hour",
        &PER_HOUR_SCHEMA.replace("events bigint", "events integer"),
        PER_HOUR_APPLY,
    );
    let out = consume_with_projections(&db, &topic, good.path(), limit).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("projection events_per_hour")
            && err.contains("schema.sql changed")
            && err.contains("rebuild --projection events_per_hour"),
        "{err}"
    );
    db.drop_db().await;
}

/// A projection whose apply fails on a partition's events (a constraint the user's SQL violates) stops that partition with one line naming the projection, the statement and the offsets, exit 1; the other partitions fold to the end, and no batch is half-committed: the projection holds exactly the events history holds.
#[tokio::test]
async fn a_projection_failing_at_run_time_stops_only_its_partition() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 600, 204).await;
    let dir = projections_dir(&[(
        "by_partition",
        "CREATE TABLE by_partition (event_id uuid PRIMARY KEY, \
         kafka_partition int NOT NULL CHECK (kafka_partition <> 1));",
        "INSERT INTO by_partition SELECT event_id, kafka_partition FROM applied_events;",
    )]);
    let out = consume_with_projections(&db, &topic, dir.path(), Duration::from_secs(90)).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().rfind(|l| l.starts_with("error:")).unwrap_or("");
    assert!(
        last.contains("partition 1")
            && last.contains("projection by_partition failed on offsets 0..=")
            && last.contains("INSERT INTO by_partition")
            && last.contains("by_partition_kafka_partition_check"),
        "{err}"
    );
    let pg = db.client().await;
    let per_partition: BTreeMap<i32, (i64, i64)> = pg
        .query(
            "SELECT h.kafka_partition, count(*), count(b.event_id) FROM order_events h \
             LEFT JOIN by_partition b USING (event_id) GROUP BY 1",
            &[],
        )
        .await
        .expect("history")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let ends = crate::harness::log_ends(&topic).await;
    assert!(
        !per_partition.contains_key(&1),
        "partition 1 committed nothing"
    );
    for p in [0, 2] {
        let (history, projected) = per_partition[&p];
        assert_eq!(history, ends[&p], "partition {p} folded to its end");
        assert_eq!(
            projected, history,
            "partition {p}: projection and history together"
        );
    }
    db.drop_db().await;
}

/// `projection add` while two default members consume under a producer: the projection is filled from history and attached, no member is expired, and the result equals the test's own fold of the whole topic; `projection drop --execute` then removes it while they run, and they go on folding without it.
#[tokio::test]
async fn a_projection_added_to_a_running_group_is_exact() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 3000, 205).await;
    let members = spawn_members(&topic, &db, 2, &[]);
    wait_caught_up(&db, &topic, Duration::from_secs(60)).await;
    let mut producer = foodpipe(&[
        "produce", "--topic", &topic, "--count", "3000", "--rate", "500", "--seed", "206",
    ]);
    producer
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let producer = producer.spawn().expect("producer starts");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let dir = projections_dir(&[("events_per_hour", PER_HOUR_SCHEMA, PER_HOUR_APPLY)]);
    let mut add = foodpipe(&[
        "projection",
        "add",
        "events_per_hour",
        "--projections",
        dir.path().to_str().expect("utf-8"),
    ]);
    add.env("DATABASE_URL", &db.url);
    let out = run_ok(add).await;
    assert!(
        out.contains("projection events_per_hour is attached"),
        "{out}"
    );

    let done = producer.wait_with_output().await.expect("producer ends");
    assert!(done.status.success());
    wait_caught_up(&db, &topic, Duration::from_secs(60)).await;
    let pg = db.client().await;
    let (records, _) = read_topic_at(&bootstrap_servers(), &topic).await;
    assert_eq!(per_hour(&pg).await, expected_per_hour(&records, i64::MAX));

    // Dropped while the members run: without --execute nothing happens;
    // with it the table goes, and the members go on without it. A built-in
    // projection is not dropped.
    let drop = |extra: &[&str]| {
        let mut args = vec!["projection", "drop"];
        args.extend_from_slice(extra);
        let mut cmd = foodpipe(&args);
        cmd.env("DATABASE_URL", &db.url);
        run_within(cmd, Duration::from_secs(30))
    };
    let out = drop(&["events_per_hour"]).await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("would drop projection events_per_hour"));
    assert_eq!(
        per_hour(&pg).await.len(),
        expected_per_hour(&records, i64::MAX).len()
    );
    let out = drop(&["events_per_hour", "--execute"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = drop(&["restaurant_daily", "--execute"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("built into foodpipe"));
    produce_events(&topic, 300, 209).await;
    wait_caught_up(&db, &topic, Duration::from_secs(60)).await;
    let table: Option<String> = pg
        .query_one("SELECT to_regclass('events_per_hour')::text", &[])
        .await
        .expect("regclass")
        .get(0);
    assert_eq!(table, None, "dropped");

    // Neither member expired the other: each ran through the add and the
    // drop, and stops cleanly.
    for out in stop_all(members).await {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("expired a silent member"), "{err}");
    }
    assert_db_is_fold_of_topic(&db, &topic, "order-processors").await;
    db.drop_db().await;
}

/// `rebuild --verify-only` finds a damaged row in any projection and names its key (exit 1, nothing swapped); `rebuild --projection customer_stats` swaps only that projection, leaving another projection's damage for the next verify to find.
#[tokio::test]
async fn verify_names_damaged_keys_and_rebuild_swaps_one_projection() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 900, 207).await;
    consume_until_caught_up(&topic, &db, &[]).await;
    let pg = db.client().await;
    let customer: String = pg
        .query_one(
            "UPDATE customer_stats SET spend_cents = spend_cents + 1 \
             WHERE customer_id = (SELECT min(customer_id) FROM customer_stats) \
             RETURNING customer_id",
            &[],
        )
        .await
        .expect("damage customer_stats")
        .get(0);
    let restaurant: String = pg
        .query_one(
            // One row: a restaurant has a row per day (two, when the
            // generated events run past midnight UTC).
            "DELETE FROM restaurant_daily \
             WHERE (restaurant_id, day) = (SELECT restaurant_id, day FROM restaurant_daily \
                                           ORDER BY 1 DESC, 2 DESC LIMIT 1) \
             RETURNING restaurant_id",
            &[],
        )
        .await
        .expect("damage restaurant_daily")
        .get(0);
    let rebuild = |extra: &[&str]| {
        let mut args = vec!["rebuild", "--topic", topic.as_str(), "--json"];
        args.extend_from_slice(extra);
        let mut cmd = foodpipe(&args);
        cmd.env("DATABASE_URL", &db.url);
        run_within(cmd, Duration::from_secs(120))
    };
    let out = rebuild(&["--verify-only"]).await;
    assert_exit(&out, 1);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["differing"], 2, "{report}");
    let keys: Vec<(String, String)> = report["first_differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|d| {
            (
                d["projection"].as_str().expect("projection").to_owned(),
                d["key"].as_str().expect("key").to_owned(),
            )
        })
        .collect();
    assert!(
        keys.contains(&("customer_stats".to_owned(), format!("[\"{customer}\"]"))),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|(p, k)| p == "restaurant_daily" && k.starts_with(&format!("[\"{restaurant}\""))),
        "{keys:?}"
    );

    let out = rebuild(&["--projection", "customer_stats"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["projections"], serde_json::json!(["customer_stats"]));
    assert_eq!(report["swapped"], true);

    let out = rebuild(&["--verify-only"]).await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        report["differing"], 1,
        "only restaurant_daily still differs: {report}"
    );
    assert_eq!(
        report["first_differences"][0]["projection"],
        "restaurant_daily"
    );
    db.drop_db().await;
}

/// `asof T --projection NAME` equals the test's own fold of the topic's events that occurred at or before T, at several times, for a user SQL projection and for the built-in restaurant_daily.
#[tokio::test]
async fn asof_of_a_projection_is_the_fold_up_to_that_time() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 1200, 208).await;
    let dir = projections_dir(&[("events_per_hour", PER_HOUR_SCHEMA, PER_HOUR_APPLY)]);
    consume_until_caught_up(
        &topic,
        &db,
        &["--projections", dir.path().to_str().expect("utf-8")],
    )
    .await;
    let (records, _) = read_topic_at(&bootstrap_servers(), &topic).await;
    let mut times: Vec<i64> = distinct(&records).iter().map(|v| micros(v)).collect();
    times.sort_unstable();
    for q in [1, times.len() / 3, times.len() / 2, times.len() - 1] {
        let t = times[q];
        let at = chrono::DateTime::from_timestamp_micros(t).expect("time");
        let asof = |projection: &str| {
            let mut cmd = foodpipe(&[
                "asof",
                &at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "--projection",
                projection,
                "--json",
            ]);
            cmd.env("DATABASE_URL", &db.url);
            run_ok(cmd)
        };
        let table: serde_json::Value =
            serde_json::from_str(asof("events_per_hour").await.trim()).expect("json");
        let got: BTreeMap<(String, i64), i64> = table["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                let hour = chrono::DateTime::parse_from_str(
                    &format!("{}00", r[1].as_str().expect("hour")),
                    "%Y-%m-%d %H:%M:%S%z",
                )
                .expect("hour");
                (
                    (r[0].as_str().expect("type").to_owned(), hour.timestamp()),
                    r[2].as_str().expect("n").parse().expect("count"),
                )
            })
            .collect();
        assert_eq!(
            got,
            expected_per_hour(&records, t),
            "events_per_hour as of {at}"
        );

        let table: serde_json::Value =
            serde_json::from_str(asof("restaurant_daily").await.trim()).expect("json");
        let orders: i64 = table["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r[2].as_str().expect("orders").parse::<i64>().expect("n"))
            .sum();
        let created = distinct(&records)
            .iter()
            .filter(|v| v["event_type"] == "OrderCreated" && micros(v) <= t)
            .count() as i64;
        assert_eq!(orders, created, "orders created as of {at}");
    }
    db.drop_db().await;
}

/// A digest of a table's rows, independent of their physical order.
async fn table_digest(pg: &tokio_postgres::Client, schema: &str, table: &str) -> (i64, String) {
    let row = pg
        .query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(to_jsonb(t)::text, ',' \
                 ORDER BY to_jsonb(t)::text)), '') FROM {schema}.{table} t"
            ),
            &[],
        )
        .await
        .expect("digest");
    (row.get(0), row.get(1))
}

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// proptest: the built-in projections (and orders and history) come out
    /// the same whatever batches the applied events are cut into: a stream
    /// folded with two different sets of cuts, each into its own schema,
    /// gives equal tables.
    #[test]
    fn builtin_projections_do_not_depend_on_batch_cuts(
        seed in 0u64..10_000,
        n in 20usize..300,
        cuts_a in proptest::collection::vec(any::<usize>(), 0..15),
        cuts_b in proptest::collection::vec(any::<usize>(), 0..15),
    ) {
        crate::harness::RUNTIME.block_on(async {
            let db = crate::harness::shared_db().await;
            let events: Vec<events::OrderEvent> = events::generator::Generator::new(
                events::generator::GeneratorConfig { seed, ..Default::default() },
            )
            .take(n)
            .collect();
            let records = crate::harness::source_records(&events);
            let mut schemas = Vec::new();
            for cuts in [&cuts_a, &cuts_b] {
                let schema = format!("cuts_{}", uuid::Uuid::new_v4().simple());
                let store = db.migrated_store(Some(&schema)).await;
                for def in store::projection::builtins() {
                    store.install_projection(&def).await.expect("install");
                }
                store.init_offset("g", "t", 0, 0).await.expect("offset row");
                crate::harness::fold_cut(&store, 0, &records, cuts).await;
                schemas.push(schema);
            }
            let pg = db.client().await;
            for table in ["restaurant_daily", "customer_stats", "orders", "order_events"] {
                let a = table_digest(&pg, &schemas[0], table).await;
                let b = table_digest(&pg, &schemas[1], table).await;
                if table != "order_events" {
                    assert_eq!(a, b, "{table} with cuts {cuts_a:?} and {cuts_b:?}");
                } else {
                    assert_eq!(a.0, b.0, "history rows");
                }
            }
            let (days, _) = table_digest(&pg, &schemas[0], "restaurant_daily").await;
            assert!(days > 0, "the stream made restaurant_daily rows");
            for schema in schemas {
                pg.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                    .await
                    .expect("drop the case's schema");
            }
        });
    }
}

/// A projection is never filled while a rebuild of the schema runs (the rebuild moves history away under the fill): `projection add` refuses with one line naming the rebuild (exit 1); `consume` starting meanwhile folds without it and says so; once the rebuild has finished, `projection add` attaches it.
#[tokio::test]
async fn a_projection_waits_for_a_running_rebuild() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 300, 210).await;
    let store = db.migrated_store(None).await;
    let claim = store
        .claim_rebuild("public", "public_rebuild", "rebuild (host test, pid 1)")
        .await
        .expect("claim");
    let dir = projections_dir(&[("events_per_hour", PER_HOUR_SCHEMA, PER_HOUR_APPLY)]);
    let dir_str = dir.path().to_str().expect("utf-8");
    let add = || {
        let mut cmd = foodpipe(&[
            "projection",
            "add",
            "events_per_hour",
            "--projections",
            dir_str,
        ]);
        cmd.env("DATABASE_URL", &db.url);
        run_within(cmd, Duration::from_secs(30))
    };
    let out = add().await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("projection events_per_hour was not added")
            && err.contains("rebuild (host test, pid 1)"),
        "{err}"
    );
    let out = consume_with_projections(&db, &topic, dir.path(), Duration::from_secs(60)).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("projection events_per_hour was not added"),
        "{err}"
    );
    let pg = db.client().await;
    let registered: i64 = pg
        .query_one(
            "SELECT count(*) FROM projections WHERE name = 'events_per_hour'",
            &[],
        )
        .await
        .expect("registry")
        .get(0);
    assert_eq!(registered, 0);

    claim.release().await;
    let out = add().await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (records, _) = read_topic_at(&bootstrap_servers(), &topic).await;
    assert_eq!(per_hour(&pg).await, expected_per_hour(&records, i64::MAX));
    db.drop_db().await;
}

/// Three members started at once on a new database, each with the same new projections: every projection ends up attached and exact (the fills take turns; none is skipped because another fill held the schema).
#[tokio::test]
async fn members_starting_together_add_every_projection() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 600, 211).await;
    let (schema, apply) = shipped("delivery_times");
    let dir = projections_dir(&[
        ("events_per_hour", PER_HOUR_SCHEMA, PER_HOUR_APPLY),
        ("delivery_times", &schema, &apply),
    ]);
    let dir_str = dir.path().to_str().expect("utf-8");
    let member = || {
        let mut cmd = foodpipe(&["consume", "--until-caught-up", "--topic", &topic]);
        cmd.env("DATABASE_URL", &db.url)
            .env("FOODPIPE_PROJECTIONS", dir_str);
        run_within(cmd, Duration::from_secs(90))
    };
    let (a, b, c) = tokio::join!(member(), member(), member());
    for out in [a, b, c] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(!err.contains("was not added"), "{err}");
    }
    let pg = db.client().await;
    let attached: Vec<String> = pg
        .query(
            "SELECT name FROM projections WHERE state = 'attached' ORDER BY name",
            &[],
        )
        .await
        .expect("registry")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        attached,
        [
            "customer_stats",
            "delivery_times",
            "events_per_hour",
            "history",
            "orders",
            "restaurant_daily"
        ]
    );
    let (records, _) = read_topic_at(&bootstrap_servers(), &topic).await;
    assert_eq!(per_hour(&pg).await, expected_per_hour(&records, i64::MAX));
    assert_eq!(delivery(&pg).await, expected_delivery(&records));
    assert_db_is_fold_of_topic(&db, &topic, "order-processors").await;
    db.drop_db().await;
}

/// The built-in `restaurant_daily` (`crates/store/src/projections/restaurant_daily/apply.sql`).
fn restaurant_daily() -> store::Definition {
    store::projection::builtins()
        .into_iter()
        .find(|d| d.name == "restaurant_daily")
        .expect("restaurant_daily is built in")
}

/// `restaurant_daily` upserts its rows in key order, so two members'
/// batches touching the same restaurants' days cannot each hold a row the
/// other waits for (in hash order they deadlocked: one retried batch in a
/// 10,000,000-event fold). A trigger records the order in which the
/// statement takes its rows, for a batch whose events come in descending
/// key order and are many enough for a hash aggregate.
#[tokio::test]
async fn restaurant_daily_takes_its_rows_in_key_order() {
    let db = TestDb::create().await;
    let store = db.migrated_store(None).await;
    let def = restaurant_daily();
    let mut client = store.client().await.expect("client");
    let tx = client.transaction().await.expect("transaction");
    tx.batch_execute(&def.schema_sql).await.expect("schema.sql");
    tx.batch_execute(
        "CREATE TABLE taken (n serial, restaurant_id text, day date);
         CREATE FUNCTION record_taken() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO taken (restaurant_id, day) VALUES (NEW.restaurant_id, NEW.day);
               RETURN NEW; END $$;
         CREATE TRIGGER taken BEFORE INSERT ON restaurant_daily
             FOR EACH ROW EXECUTE FUNCTION record_taken();
         INSERT INTO applied_events
             (event_id, event_type, order_id, customer_id, occurred_at, payload, kafka_topic,
              kafka_partition, kafka_incarnation, kafka_offset, kafka_timestamp, status,
              restaurant_id, total_cents, items, order_created_at)
         SELECT gen_random_uuid(), 'OrderCreated', gen_random_uuid(), 'c', now(), '{}', 't',
                0, 0, i, now(), 'pending', 'restaurant-' || (i % 500),
                100, '[]', timestamptz '2026-12-01' + (i % 3) * interval '1 day'
         FROM generate_series(3000, 1, -1) i;
         ANALYZE applied_events;",
    )
    .await
    .expect("setup");
    for statement in def.statements() {
        tx.batch_execute(&statement).await.expect("apply.sql");
    }
    let taken: Vec<(String, chrono::NaiveDate)> = tx
        .query("SELECT restaurant_id, day FROM taken ORDER BY n", &[])
        .await
        .expect("taken")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(taken.len(), 1500, "500 restaurants on 3 days");
    let mut sorted = taken.clone();
    sorted.sort();
    assert!(
        taken == sorted,
        "rows taken out of key order: {:?}",
        &taken[..10]
    );
    drop(tx);
    drop(client);
    db.drop_db().await;
}

/// Upgrading a database whose registry holds `restaurant_daily` as it was
/// added before its apply.sql gained `ORDER BY`: migration V12 moves the
/// registry to the binary's definition, so the member starts instead of
/// refusing a changed projection.
#[tokio::test]
async fn an_upgrade_moves_restaurant_daily_to_its_key_ordered_definition() {
    let db = TestDb::create().await;
    let store = db.migrated_store(None).await;
    let def = restaurant_daily();
    store
        .ensure_projection(&def, "upgrade-group")
        .await
        .expect("added");
    let migration = include_str!("../../migrations/V12__restaurant_daily_in_key_order.sql");
    let earlier = migration
        .split("$apply$")
        .nth(1)
        .expect("the earlier apply.sql is the migration's first quoted text");
    assert!(!earlier.contains("ORDER BY"), "{earlier}");
    let client = store.client().await.expect("client");
    let registry =
        |c: &'static str| format!("SELECT {c} FROM projections WHERE name = 'restaurant_daily'");
    let fresh_hash: String = client
        .query_one(&registry("definition_hash"), &[])
        .await
        .expect("hash")
        .get(0);
    // The registry as an earlier release left it.
    client
        .execute(
            "UPDATE projections SET apply_sql = $1, \
                 definition_hash = md5(schema_sql || E'\\n-- apply.sql\\n' || $1) \
             WHERE name = 'restaurant_daily'",
            &[&earlier],
        )
        .await
        .expect("as before");
    let refused = store.ensure_projection(&def, "upgrade-group").await;
    assert!(
        matches!(refused, Err(store::Error::ProjectionChanged { .. })),
        "without the migration the member refuses: {refused:?}"
    );
    client.batch_execute(migration).await.expect("V12");
    store
        .ensure_projection(&def, "upgrade-group")
        .await
        .expect("starts after the migration");
    let hash: String = client
        .query_one(&registry("definition_hash"), &[])
        .await
        .expect("hash")
        .get(0);
    assert_eq!(hash, fresh_hash, "the hash a fresh registration computes");
    let apply: String = client
        .query_one(&registry("apply_sql"), &[])
        .await
        .expect("apply")
        .get(0);
    assert_eq!(apply, def.apply_sql);
    drop(client);
    db.drop_db().await;
}
