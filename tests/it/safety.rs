//! Data safety (issue 13): `rebuild` never touches the live schema by
//! accident, whatever the schema's length, and stops cleanly on Ctrl-C.

use std::time::Duration;

use tokio::task::JoinSet;

use crate::harness::{
    TestDb, bootstrap_servers, consume_until_caught_up, damage_orders, foodpipe, produce_events,
    random_topic_name, signal,
};

/// The tables of a live schema, in an order that makes a fingerprint.
const LIVE_TABLES: [&str; 4] = ["order_events", "orders", "dead_letters", "consumer_offsets"];

/// Row count and an md5 of every row of each live table of `schema`.
async fn fingerprint(pg: &tokio_postgres::Client, schema: &str) -> Vec<(String, i64, String)> {
    let mut out = Vec::new();
    for table in LIVE_TABLES {
        let row = pg
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') \
                     FROM {schema}.{table} t"
                ),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{schema}.{table}: {e}"));
        out.push((table.to_owned(), row.get(0), row.get(1)));
    }
    out
}

/// Schemas of the test database whose name starts with `prefix`.
async fn schemas_like(pg: &tokio_postgres::Client, prefix: &str) -> Vec<String> {
    pg.query(
        "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1) ORDER BY 1",
        &[&prefix],
    )
    .await
    .expect("schemas")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// A `rebuild --dry-run` at every accepted schema length, 1 to 63 bytes, leaves the live schema's tables and rows exactly as they were and drops its shadow.
#[tokio::test]
async fn dry_run_at_every_schema_length_changes_nothing() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 40, 131).await;
    // One live schema folded by a real consumer; the others are copies.
    let mut seed = foodpipe(&[
        "consume",
        "--until-caught-up",
        "--topic",
        &topic,
        "--schema",
        "seed",
    ]);
    seed.env("DATABASE_URL", &db.url);
    crate::harness::run_ok(seed).await;
    let pg = db.client().await;
    let seeded = fingerprint(&pg, "seed").await;
    assert!(seeded[0].1 > 0 && seeded[3].1 == 3, "{seeded:?}");

    // Names that can only collide by truncation: l, ll, lll, ... (63 of them).
    let names: Vec<String> = (1..=store::MAX_SCHEMA_NAME_BYTES)
        .map(|n| "l".repeat(n))
        .collect();
    for name in &names {
        db.migrated_store(Some(name)).await;
        pg.batch_execute(&format!(
            "INSERT INTO {name}.order_events SELECT * FROM seed.order_events;
             INSERT INTO {name}.orders SELECT * FROM seed.orders;
             INSERT INTO {name}.dead_letters SELECT * FROM seed.dead_letters;
             INSERT INTO {name}.consumer_offsets SELECT * FROM seed.consumer_offsets;"
        ))
        .await
        .expect("copy the seed");
        // Damage one order, so a dry run has something to report.
        assert_eq!(damage_orders(&pg, name, 1).await, 1);
    }
    let mut before = Vec::new();
    for name in &names {
        before.push(fingerprint(&pg, name).await);
    }

    let mut runs = JoinSet::new();
    let mut pending = names.iter().cloned();
    let start = |runs: &mut JoinSet<_>, name: String| {
        let config = pipeline::consume::ConsumeConfig {
            kafka: kafka::KafkaConfig {
                bootstrap_servers: vec![bootstrap_servers()],
                ..kafka::KafkaConfig::default()
            },
            store: store::StoreConfig {
                database_url: db.url.clone(),
                schema: Some(name.clone()),
                ..store::StoreConfig::default()
            },
            topic: topic.clone(),
            heartbeat_interval: Duration::from_millis(100),
            ..pipeline::consume::ConsumeConfig::default()
        };
        runs.spawn(async move {
            let report = ops::rebuild::run(
                config,
                ops::rebuild::Options {
                    dry_run: true,
                    projection: None,
                },
                std::future::pending(),
            )
            .await;
            (name, report)
        });
    };
    // Four at a time: the machine has two cores.
    for name in pending.by_ref().take(4) {
        start(&mut runs, name);
    }
    while let Some(done) = runs.join_next().await {
        let (name, report) = done.expect("rebuild task");
        let report = report.unwrap_or_else(|e| panic!("rebuild of {name}: {e:#}"));
        assert!(!report.swapped, "{name}");
        assert_eq!(report.differing, 1, "{name}: {report}");
        assert_eq!(report.events, seeded[0].1, "{name}: {report}");
        if let Some(next) = pending.next() {
            start(&mut runs, next);
        }
    }

    for (name, before) in names.iter().zip(&before) {
        assert_eq!(&fingerprint(&pg, name).await, before, "live schema {name}");
    }
    // Every shadow was dropped; every live schema is still there.
    let left: Vec<String> = schemas_like(&pg, "l")
        .await
        .into_iter()
        .filter(|s| !names.contains(s))
        .collect();
    assert!(left.is_empty(), "leftover shadows: {left:?}");
    db.drop_db().await;
}

/// `rebuild` refuses to drop a schema named like its shadow that foodpipe did not make, and changes nothing.
#[tokio::test]
async fn rebuild_never_drops_a_schema_it_did_not_make() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 20, 132).await;
    consume_until_caught_up(&topic, &db, &[]).await;
    let pg = db.client().await;
    pg.batch_execute("CREATE SCHEMA public_rebuild; CREATE TABLE public_rebuild.precious (x int); INSERT INTO public_rebuild.precious VALUES (1)")
        .await
        .expect("a user's schema");
    let before = fingerprint(&pg, "public").await;
    let mut cmd = foodpipe(&["rebuild", "--topic", &topic]);
    cmd.env("DATABASE_URL", &db.url);
    let out = crate::harness::run_within(cmd, Duration::from_secs(60)).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.lines().count() == 1
            && err.contains("public_rebuild")
            && err.contains("drop it yourself"),
        "{err}"
    );
    let kept: i64 = pg
        .query_one("SELECT count(*) FROM public_rebuild.precious", &[])
        .await
        .expect("still there")
        .get(0);
    assert_eq!(kept, 1);
    assert_eq!(fingerprint(&pg, "public").await, before);
    db.drop_db().await;
}

/// Ctrl-C during rebuild's replay stops it: exit 1 with one line, the live schema (damaged on purpose) unchanged, no swap, the shadow dropped.
#[tokio::test]
async fn ctrl_c_during_rebuild_leaves_the_live_schema_untouched() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 60_000, 133).await;
    consume_until_caught_up(&topic, &db, &[]).await;
    let pg = db.client().await;
    // Damage the live view: a swap would repair it, so it shows whether one happened.
    assert_eq!(damage_orders(&pg, "public", 3).await, 3);
    let before = fingerprint(&pg, "public").await;

    let mut cmd = foodpipe(&["rebuild", "--topic", &topic]);
    cmd.env("DATABASE_URL", &db.url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("rebuild starts");
    // Wait until the replay has committed into the shadow, then Ctrl-C.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let replayed: i64 = pg
            .query_one("SELECT count(*) FROM public_rebuild.order_events", &[])
            .await
            .map_or(0, |r| r.get(0));
        if replayed > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replay never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&child, "INT");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("rebuild exits soon after Ctrl-C")
        .expect("output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("interrupted") && errors[0].contains("public is unchanged"),
        "{err}"
    );
    assert_eq!(
        fingerprint(&pg, "public").await,
        before,
        "live schema changed"
    );
    assert!(schemas_like(&pg, "public_rebuild").await.is_empty());
    db.drop_db().await;
}

/// Applies `records` to partition 0 of topic "t" as one batch without a lease.
async fn apply(
    store: &store::Store,
    records: &[store::SourceRecord],
    from: i64,
) -> store::Result<store::Applied> {
    store
        .apply_batch(&store::Batch {
            group: "g",
            topic: "t",
            partition: 0,
            from_offset: from,
            next_offset: from + records.len() as i64,
            records,
            incarnation: 0,
            lease: None,
        })
        .await
}

/// A view row this build cannot read back (unknown status, items that are not line items) stops the batch with an error naming the order; nothing is written.
#[tokio::test]
async fn unreadable_view_row_is_an_error_naming_the_order() {
    let db = TestDb::create().await;
    let store = db.migrated_store(None).await;
    store.init_offset("g", "t", 0, 0).await.expect("offset");
    let events: Vec<events::OrderEvent> = events::generator::Generator::new(Default::default())
        .take(400)
        .collect();
    let records = crate::harness::source_records(&events);
    // The first event creates an order; fold it, then damage its row.
    let first = events[0].order_id;
    let later = records
        .iter()
        .position(|r| r.offset > 0 && r.event.as_ref().is_ok_and(|e| e.order_id == first))
        .expect("the order has a second event");
    apply(&store, &records[..later], 0)
        .await
        .expect("first batch");
    let pg = db.client().await;
    for damage in [
        "UPDATE orders SET items = '\"not a list\"' WHERE order_id = $1",
        "ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_status_check; \
         UPDATE orders SET items = '[]', status = 'teleported' WHERE order_id = $1",
    ] {
        let (ddl, update) = damage.rsplit_once("; ").unwrap_or(("", damage));
        if !ddl.is_empty() {
            pg.batch_execute(ddl).await.expect("ddl");
        }
        pg.execute(update, &[&first]).await.expect("damage");
        let err = apply(&store, &records[later..=later], later as i64)
            .await
            .expect_err("an unreadable row is an error");
        assert!(
            matches!(&err, store::Error::UnreadableOrder { order_id, .. } if *order_id == first),
            "{err}"
        );
        assert!(err.to_string().contains(&first.to_string()), "{err}");
        let stored = store.stored_offset("g", "t", 0).await.expect("read");
        assert_eq!(
            stored.map(|s| s.next_offset),
            Some(later as i64),
            "nothing committed"
        );
    }
    db.drop_db().await;
}

/// `asof` (history folded again by the fold, `Store::orders_as_of`) after every event equals the view, even when a later step of an order carries an earlier occurred_at.
#[tokio::test]
async fn asof_at_the_end_of_time_equals_the_view() {
    let db = TestDb::create().await;
    let store = db.migrated_store(None).await;
    store.init_offset("g", "t", 0, 0).await.expect("offset");
    let mut events: Vec<events::OrderEvent> = events::generator::Generator::new(Default::default())
        .take(600)
        .collect();
    // Turn the clock back on the last event of every tenth order: V4 read
    // those orders as of their earlier step.
    let mut orders: Vec<uuid::Uuid> = events.iter().map(|e| e.order_id).collect();
    orders.dedup();
    for order in orders.iter().step_by(10) {
        if let Some(last) = events.iter_mut().rev().find(|e| e.order_id == *order)
            && !matches!(last.body, events::EventBody::OrderCreated(_))
        {
            last.occurred_at -= chrono::Duration::days(1);
        }
    }
    let records = crate::harness::source_records(&events);
    for (i, chunk) in records.chunks(97).enumerate() {
        apply(&store, chunk, (i * 97) as i64).await.expect("batch");
    }
    let pg = db.client().await;
    let view: std::collections::BTreeMap<
        uuid::Uuid,
        (String, uuid::Uuid, chrono::DateTime<chrono::Utc>),
    > = pg
        .query(
            "SELECT order_id, status, last_event_id, updated_at FROM orders",
            &[],
        )
        .await
        .expect("view")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    let as_of: std::collections::BTreeMap<
        uuid::Uuid,
        (String, uuid::Uuid, chrono::DateTime<chrono::Utc>),
    > = store
        .orders_as_of("9999-12-31T00:00:00Z".parse().expect("time"), None, None)
        .await
        .expect("asof")
        .into_iter()
        .map(|o| (o.order_id, (o.status, o.last_event_id, o.updated_at)))
        .collect();
    assert!(!view.is_empty());
    let differing = view
        .iter()
        .filter(|(k, v)| as_of.get(*k) != Some(*v))
        .count()
        + as_of.keys().filter(|k| !view.contains_key(*k)).count();
    assert_eq!(differing, 0, "asof at the end of time is the view");
    let orders_in_view: i64 = pg
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("count")
        .get(0);
    assert!(orders_in_view > 50, "{orders_in_view}");
    db.drop_db().await;
}
