//! `rebuild`'s bulk fill (issue 22): the shadow filled with binary COPY
//! and a fold in memory writes exactly the rows the live consumer wrote.

use std::time::Duration;

use crate::harness::{
    TestDb, consume_until_caught_up, foodpipe, history_len, produce_events, random_topic_name,
    run_within, send_lines,
};

/// Every row a rebuild swaps in, as text, without what legitimately
/// differs (ids from a sequence, when a row was written, owners and lease
/// epochs).
async fn snapshot(pg: &tokio_postgres::Client) -> Vec<(&'static str, String)> {
    let tables: [(&str, &str); 6] = [
        (
            "history",
            "SELECT event_id, order_id, customer_id, event_type, schema_version, payload, \
                    occurred_at, kafka_topic, kafka_partition, kafka_incarnation, kafka_offset, \
                    kafka_timestamp \
             FROM order_events ORDER BY kafka_partition, kafka_offset",
        ),
        ("orders", "SELECT * FROM orders ORDER BY order_id"),
        (
            "dead letters",
            "SELECT group_id, topic, partition, kafka_incarnation, kafka_offset, \
                    kafka_timestamp, key, value, error_kind, error, headers, event_id \
             FROM dead_letters ORDER BY partition, kafka_offset",
        ),
        (
            "offsets",
            "SELECT group_id, topic, partition, next_offset, incarnation, last_fingerprint, \
                    fingerprint_offset \
             FROM consumer_offsets ORDER BY partition",
        ),
        (
            "restaurant_daily",
            "SELECT * FROM restaurant_daily ORDER BY restaurant_id, day",
        ),
        (
            "customer_stats",
            "SELECT * FROM customer_stats ORDER BY customer_id",
        ),
    ];
    let mut out = Vec::new();
    for (name, query) in tables {
        let text: String = pg
            .query_one(
                &format!("SELECT coalesce(json_agg(t)::text, '[]') FROM ({query}) t"),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .get(0);
        out.push((name, text));
    }
    out
}

/// A topic with a malformed record, an event for an order never created
/// (an invalid transition) and an event written three times (twice in a
/// row, once much later), folded by `consume`; then `rebuild --dry-run`
/// and `rebuild`, whose shadow is filled in bulk: no key differs, and
/// history, the orders view, dead letters, offsets (fingerprints included)
/// and the SQL projections are the same rows after the swap as the live
/// fold wrote.
#[tokio::test]
async fn the_bulk_fill_writes_the_rows_the_live_fold_wrote() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    let first = events::generator::Generator::new(events::generator::GeneratorConfig {
        seed: 4242,
        ..Default::default()
    })
    .next()
    .expect("an event");
    let orphan = events::OrderEvent {
        event_id: uuid::Uuid::from_u128(0xb01c),
        order_id: uuid::Uuid::from_u128(0xdead),
        body: events::EventBody::OrderDelivered(events::OrderDelivered {}),
        ..first.clone()
    };
    let line = |e: &events::OrderEvent| {
        let mut l = e.customer_id.clone().into_bytes();
        l.push(b'\t');
        l.extend(e.to_json());
        l.push(b'\n');
        l
    };
    let mut lines = line(&first);
    lines.extend(line(&first));
    lines.extend(b"CUST-0001\t{not json\n");
    lines.extend(line(&orphan));
    send_lines(&topic, &lines).await;
    produce_events(&topic, 3000, 4243).await;
    send_lines(&topic, &line(&first)).await;
    let summary = consume_until_caught_up(&topic, &db, &[]).await;
    assert_eq!(summary["caught_up"], true, "{summary}");
    let pg = db.client().await;
    let live = snapshot(&pg).await;
    let dead: Vec<String> = pg
        .query(
            "SELECT error_kind FROM dead_letters ORDER BY error_kind",
            &[],
        )
        .await
        .expect("dead letters")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(dead, ["invalid_transition", "malformed_json"]);

    for extra in [&["--dry-run"][..], &[]] {
        let mut args = vec!["rebuild", "--topic", topic.as_str(), "--json"];
        args.extend_from_slice(extra);
        let mut cmd = foodpipe(&args);
        cmd.env("DATABASE_URL", &db.url);
        let out = run_within(cmd, Duration::from_secs(120)).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "rebuild {extra:?}: {err}");
        assert!(
            err.contains("bulk fill done") && !err.contains("through the consumer path"),
            "rebuild {extra:?} filled the shadow in bulk, all of it: {err}"
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(report["differing"], 0, "{report}");
        assert_eq!(report["swapped"], extra.is_empty(), "{report}");
        assert_eq!(report["events"], 3001, "{report}");
    }
    let rebuilt = snapshot(&pg).await;
    for ((name, was), (_, now)) in live.iter().zip(&rebuilt) {
        assert!(
            was == now,
            "{name} differs after the bulk rebuild:\nlive fold: {was:.2000}\nrebuilt:   {now:.2000}"
        );
    }
    let unlogged: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relpersistence <> 'p'",
            &[],
        )
        .await
        .expect("persistence")
        .get(0);
    assert_eq!(unlogged, 0, "every swapped-in table and index is logged");
    db.drop_db().await;
}

/// How `rebuild` compares a table in the live and the rebuilt schema
/// (`ops::rebuild::compare::compare_tables`), on a real PostgreSQL: a changed value in any
/// column (one whose type has no `=`, `json`, included), a key missing on
/// either side, each counted once and shown in key order; the bookkeeping
/// columns and the order of the columns ignored; a table without a primary
/// key, or copies whose columns differ, still compared.
#[tokio::test]
async fn the_rebuild_comparison_finds_every_changed_row_and_only_those() {
    let db = TestDb::create().await;
    let store = db.migrated_store(None).await;
    let mut client = store.client().await.expect("client");
    client
        .batch_execute(
            "CREATE SCHEMA l; CREATE SCHEMA s;
             CREATE TABLE l.t (a int, b text, doc json, n numeric, recorded_at timestamptz,
                               PRIMARY KEY (a, b));
             -- The same columns in another order.
             CREATE TABLE s.t (recorded_at timestamptz, n numeric, doc json, b text, a int,
                               PRIMARY KEY (a, b));
             INSERT INTO l.t SELECT i, 'k' || i, json_build_object('i', i), i, now()
               FROM generate_series(1, 1000) i;
             INSERT INTO s.t SELECT now() - interval '1 day', i, json_build_object('i', i), 'k' || i, i
               FROM generate_series(1, 1000) i;
             UPDATE s.t SET doc = '{\"i\": -1}' WHERE a = 7;
             UPDATE s.t SET n = NULL WHERE a = 20;
             DELETE FROM s.t WHERE a = 300;
             DELETE FROM l.t WHERE a = 5;
             CREATE TABLE l.nokey (x int, y text);
             CREATE TABLE s.nokey (x int, y text);
             INSERT INTO l.nokey VALUES (1, 'a'), (2, 'b');
             INSERT INTO s.nokey VALUES (1, 'a'), (2, 'c');
             CREATE TABLE l.grown (id int PRIMARY KEY, v int);
             CREATE TABLE s.grown (id int PRIMARY KEY, v int, w int);
             INSERT INTO l.grown VALUES (1, 1), (2, 2);
             INSERT INTO s.grown VALUES (1, 1, NULL), (2, 2, 5);",
        )
        .await
        .expect("tables");
    let tx = client.transaction().await.expect("transaction");
    let (n, first) = ops::rebuild::compare::compare_tables(&tx, ("l", "s"), "t", true)
        .await
        .expect("compare t");
    let keys: Vec<(&str, bool, bool)> = first
        .iter()
        .map(|d| (d.key.as_str(), d.live.is_some(), d.rebuilt.is_some()))
        .collect();
    assert_eq!(n, 4, "{first:?}");
    assert_eq!(
        keys,
        [
            ("[20, \"k20\"]", true, true),
            ("[300, \"k300\"]", true, false),
            ("[5, \"k5\"]", false, true),
            ("[7, \"k7\"]", true, true),
        ]
    );
    let seven = &first[3];
    assert!(
        seven.rebuilt.as_deref().is_some_and(|r| r.contains("-1"))
            && !seven
                .rebuilt
                .as_deref()
                .is_some_and(|r| r.contains("recorded_at")),
        "{seven:?}"
    );
    let (n, first) = ops::rebuild::compare::compare_tables(&tx, ("l", "s"), "nokey", true)
        .await
        .expect("compare nokey");
    assert_eq!(n, 2, "(2, b) only live, (2, c) only rebuilt: {first:?}");
    let (n, first) = ops::rebuild::compare::compare_tables(&tx, ("l", "s"), "grown", true)
        .await
        .expect("compare grown");
    assert_eq!(n, 2, "a column more: every row differs: {first:?}");
    let (n, _) = ops::rebuild::compare::compare_tables(&tx, ("l", "s"), "t", false)
        .await
        .expect("compare t, new");
    assert_eq!(n, 999, "a table the live schema lacks: every rebuilt row");
    drop(tx);
    drop(client);
    db.drop_db().await;
}

/// The snapshot `tx` exports, for other sessions to import.
async fn export_snapshot(tx: &store::Transaction<'_>) -> String {
    tx.query_one("SELECT pg_export_snapshot()", &[])
        .await
        .expect("export")
        .get(0)
}

/// `rebuild` compares its tables side by side, each on a connection of its
/// own (`ops::rebuild::compare::compare_side_by_side`), in the snapshot the
/// swap's transaction exported: rows committed after that snapshot, by
/// anyone, are not what it compares, and the results come back in the
/// order asked, whichever connection finished first.
#[tokio::test]
async fn the_side_by_side_comparison_sees_the_swap_transactions_snapshot() {
    use ops::rebuild::compare::{COMPARE_CONNECTIONS, Pending, compare_side_by_side};
    let db = TestDb::create().await;
    let store = db.migrated_store(None).await;
    let tables = COMPARE_CONNECTIONS + 2;
    let mut script = "CREATE SCHEMA l; CREATE SCHEMA s;".to_owned();
    for t in 0..tables {
        // Table t differs in t keys.
        script.push_str(&format!(
            "CREATE TABLE l.t{t} (k int PRIMARY KEY, v int);
             CREATE TABLE s.t{t} (k int PRIMARY KEY, v int);
             INSERT INTO l.t{t} SELECT i, i FROM generate_series(1, 2000) i;
             INSERT INTO s.t{t} SELECT i, CASE WHEN i <= {t} THEN -i ELSE i END
               FROM generate_series(1, 2000) i;"
        ));
    }
    let mut client = store.client().await.expect("client");
    client.batch_execute(&script).await.expect("tables");
    let tx = client.transaction().await.expect("transaction");
    let snapshot = export_snapshot(&tx).await;
    // Committed after the snapshot, on another connection: a new key on
    // one side and a changed value on the other.
    store
        .client()
        .await
        .expect("client")
        .batch_execute("INSERT INTO s.t0 VALUES (5000, 1); UPDATE l.t1 SET v = 0 WHERE k = 1000")
        .await
        .expect("later writes");
    let pending: Vec<Pending> = (0..tables)
        .map(|t| Pending {
            projection: "p".to_owned(),
            table: format!("t{t}"),
            live_has: true,
        })
        .collect();
    let compared = compare_side_by_side(&store, &snapshot, ("l", "s"), &pending)
        .await
        .expect("compare");
    let counts: Vec<i64> = compared.iter().map(|(n, _)| *n).collect();
    let expected: Vec<i64> = (0..tables as i64).collect();
    assert_eq!(
        counts, expected,
        "table t differs in t keys, as of the snapshot"
    );
    assert_eq!(compared[2].1[0].key, "[1]", "{:?}", compared[2]);
    drop(tx);
    // The same tables now, in a snapshot taken after the writes.
    let tx = client.transaction().await.expect("transaction");
    let snapshot = export_snapshot(&tx).await;
    let compared = compare_side_by_side(&store, &snapshot, ("l", "s"), &pending[..2])
        .await
        .expect("compare");
    assert_eq!(
        (compared[0].0, compared[1].0),
        (1, 2),
        "the later writes, in a later snapshot"
    );
    drop(tx);
    drop(client);
    db.drop_db().await;
}

/// The rebuild fills its projections partition by partition side by side
/// (`Store::fill_projections_from_history`), so two chunks can deadlock on
/// rows they share when a projection's SQL takes them in different orders;
/// the chunk PostgreSQL ends is tried again. What it tries again, and only
/// that: a real deadlock between two transactions is
/// `store::Error::is_conflict`, a broken constraint is not.
#[tokio::test]
async fn a_deadlock_is_a_conflict_to_try_again_and_a_broken_constraint_is_not() {
    let db = TestDb::create().await;
    let store = db.migrated_store(None).await;
    let mut a = store.client().await.expect("client");
    let mut b = store.client().await.expect("client");
    a.batch_execute(
        "CREATE TABLE d (k int PRIMARY KEY, n int); INSERT INTO d VALUES (1, 0), (2, 0)",
    )
    .await
    .expect("table");
    let ta = a.transaction().await.expect("transaction");
    let tb = b.transaction().await.expect("transaction");
    let take = "UPDATE d SET n = n + 1 WHERE k = $1";
    ta.execute(take, &[&1]).await.expect("a takes 1");
    tb.execute(take, &[&2]).await.expect("b takes 2");
    // Each now waits for the other's row: PostgreSQL ends one of them.
    let (ra, rb) = tokio::join!(ta.execute(take, &[&2]), tb.execute(take, &[&1]));
    let ended: Vec<store::Error> = [ra, rb]
        .into_iter()
        .filter_map(|r| r.err().map(store::Error::from))
        .collect();
    assert_eq!(
        ended.len(),
        1,
        "one transaction of the two is ended: {ended:?}"
    );
    assert!(
        ended[0].is_conflict(),
        "a deadlock is a conflict: {:?}",
        ended[0]
    );
    drop((ta, tb));
    let duplicate = a
        .execute("INSERT INTO d VALUES (1, 0)", &[])
        .await
        .map_err(store::Error::from)
        .expect_err("the key exists");
    assert!(
        !duplicate.is_conflict(),
        "a broken key is no conflict: {duplicate:?}"
    );
    db.drop_db().await;
}

/// The projections of a rebuild's shadow are filled partition by
/// partition side by side (`Store::fill_projections_from_history`). A
/// projection that takes two shared rows in an order that depends on the
/// partition makes the chunks of partitions 0 and 1 deadlock, for
/// certain: each takes its first row, waits (`pg_sleep`), then asks for
/// the other's (other partitions take neither).
/// PostgreSQL ends one; that chunk rolls back whole and is tried again,
/// and the fill ends with every event of history applied exactly once.
#[tokio::test]
async fn a_projection_fill_chunk_ended_by_a_deadlock_is_tried_again() {
    let (db, store, pg, history) = folded_300_events(4244).await;
    assert_eq!(
        history_partitions(&pg).await,
        3,
        "history spans every partition"
    );
    // Partition 0 takes row 'a' then 'b', partition 1 'b' then 'a'.
    let first = "(SELECT CASE min(kafka_partition) WHEN 0 THEN 'a' WHEN 1 THEN 'b' END \
                 FROM applied_events)";
    let second = "(SELECT CASE min(kafka_partition) WHEN 0 THEN 'b' WHEN 1 THEN 'a' END \
                  FROM applied_events)";
    let def = store::Definition {
        name: "crossed".to_owned(),
        kind: store::ProjectionKind::Sql,
        schema_sql: "CREATE TABLE crossed_gate (k text PRIMARY KEY, chunks int NOT NULL);
                     INSERT INTO crossed_gate VALUES ('a', 0), ('b', 0);
                     CREATE TABLE crossed_events (event_id uuid PRIMARY KEY);"
            .to_owned(),
        apply_sql: format!(
            "UPDATE crossed_gate SET chunks = chunks + 1 WHERE k = {first};
             SELECT pg_sleep(0.3);
             UPDATE crossed_gate SET chunks = chunks + 1 WHERE k = {second};
             INSERT INTO crossed_events SELECT event_id FROM applied_events;"
        ),
        origin: "test".to_owned(),
    };
    let applied = store
        .fill_projections_from_history(&[def], "order-processors")
        .await
        .expect("the fill ends despite the deadlock");
    assert_eq!(applied, history, "every event of history applied");
    let rows: i64 = pg
        .query_one("SELECT count(*) FROM crossed_events", &[])
        .await
        .expect("events")
        .get(0);
    assert_eq!(
        rows, history,
        "each event once: the ended chunk left nothing"
    );
    let chunks: Vec<i32> = pg
        .query("SELECT chunks FROM crossed_gate ORDER BY k", &[])
        .await
        .expect("gate")
        .iter()
        .map(|r| r.get(0))
        .collect();
    // The one chunk of partition 0 and of partition 1, each committed
    // once: the ended attempt's update is gone with it.
    assert_eq!(chunks, [2, 2], "committed chunks only");
    db.drop_db().await;
}

/// 300 generated events (of `seed`) on 3 partitions, folded by one
/// `consume` into a new database: the database, a store and a client on
/// it, and the length of history.
async fn folded_300_events(seed: u64) -> (TestDb, store::Store, tokio_postgres::Client, i64) {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 300, seed).await;
    let summary = consume_until_caught_up(&topic, &db, &[]).await;
    assert_eq!(summary["caught_up"], true, "{summary}");
    let store = db.migrated_store(None).await;
    let pg = db.client().await;
    let history = history_len(&pg).await;
    (db, store, pg, history)
}

/// Partitions that history holds events of.
async fn history_partitions(pg: &tokio_postgres::Client) -> i64 {
    pg.query_one(
        "SELECT count(DISTINCT kafka_partition) FROM order_events",
        &[],
    )
    .await
    .expect("partitions")
    .get(0)
}

/// A projection's SQL runs once per chunk of history that holds events,
/// and never over a partition's final, empty chunk (which ends that
/// partition's fill): a projection that counts its own runs, or does
/// anything that is not per event, sees no run with nothing applied.
#[tokio::test]
async fn a_projection_fill_runs_its_sql_only_over_chunks_that_hold_events() {
    let (db, store, pg, history) = folded_300_events(4245).await;
    // 300 events are far below a chunk's 20,000: one chunk per partition.
    let partitions = history_partitions(&pg).await;
    assert_eq!(partitions, 3, "history spans every partition");
    let def = store::Definition {
        name: "runs".to_owned(),
        kind: store::ProjectionKind::Sql,
        schema_sql: "CREATE TABLE fill_runs (n int NOT NULL, empty int NOT NULL);
                     INSERT INTO fill_runs VALUES (0, 0);"
            .to_owned(),
        apply_sql: "UPDATE fill_runs SET n = n + 1, \
                        empty = empty + (NOT EXISTS (SELECT FROM applied_events))::int;"
            .to_owned(),
        origin: "test".to_owned(),
    };
    let applied = store
        .fill_projections_from_history(&[def], "order-processors")
        .await
        .expect("fill");
    assert_eq!(applied, history, "every event of history applied");
    let row = pg
        .query_one("SELECT n::bigint, empty FROM fill_runs", &[])
        .await
        .expect("runs");
    let (runs, empty): (i64, i32) = (row.get(0), row.get(1));
    assert_eq!(empty, 0, "no run over an empty chunk");
    assert_eq!(runs, partitions, "one run per partition's one chunk");
    db.drop_db().await;
}
