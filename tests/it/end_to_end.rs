//! The thin slice end to end: produce with the binary, consume with the
//! binary, check PostgreSQL against the topic read back independently.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::harness::{TestDb, foodpipe, random_topic_name, read_topic, run_ok};

/// The status an order has after an event of this type: written out here
/// from the lifecycle, independently of foodpipe's state machine.
fn status_after(event_type: &str) -> &'static str {
    match event_type {
        "OrderCreated" => "pending",
        "OrderPaid" => "paid",
        "OrderShipped" => "shipped",
        "OrderDelivered" => "delivered",
        "OrderCancelled" => "cancelled",
        other => panic!("unexpected event type {other}"),
    }
}

async fn produce(topic: &str, count: u32) {
    let out = run_ok(foodpipe(&[
        "produce",
        "--topic",
        topic,
        "--count",
        &count.to_string(),
        "--partitions",
        "3",
        "--seed",
        "42",
        "--json",
    ]))
    .await;
    let summary: serde_json::Value = serde_json::from_str(&out).expect("JSON summary");
    assert_eq!(summary["events"], count, "all events delivered: {out}");
    assert_eq!(summary["failed"], 0);
}

async fn consume(topic: &str, db: &TestDb) -> serde_json::Value {
    let mut cmd = foodpipe(&["consume", "--until-caught-up", "--topic", topic, "--json"]);
    cmd.env("DATABASE_URL", &db.url);
    let out = run_ok(cmd).await;
    serde_json::from_str(&out).expect("JSON summary")
}

/// 1,000 events over 3 partitions: each lands in history once, each order shows its last event's status, and offsets equal high watermarks.
#[tokio::test]
async fn produce_then_consume_folds_every_event_exactly_once() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce(&topic, 1000).await;
    let summary = consume(&topic, &db).await;

    let (records, watermarks) = read_topic(&topic).await;
    assert_eq!(records.len(), 1000, "the topic holds what was produced");
    assert_eq!(watermarks.len(), 3);
    assert_eq!(summary["partitions"].as_array().map(Vec::len), Some(3));

    let pg = db.client().await;

    // Every event is in history exactly once, and nothing else is.
    let rows = pg
        .query(
            "SELECT event_id::text, kafka_partition, kafka_offset FROM order_events",
            &[],
        )
        .await
        .expect("query history");
    let in_history: HashMap<String, (i32, i64)> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(rows.len(), 1000, "one history row per event");
    assert_eq!(in_history.len(), 1000, "no event_id twice");
    for r in &records {
        let id = r.value["event_id"].as_str().expect("event_id");
        assert_eq!(
            in_history.get(id),
            Some(&(r.partition, r.offset)),
            "event {id} recorded with its partition and offset"
        );
    }

    // Each order's row has the status of its last event; all of an order's
    // events are in one partition (they share the customer key).
    let mut last: HashMap<String, (i32, i64, &'static str)> = HashMap::new();
    let mut partitions_of: HashMap<String, HashSet<i32>> = HashMap::new();
    for r in &records {
        let order = r.value["order_id"].as_str().expect("order_id").to_owned();
        let status = status_after(r.value["event_type"].as_str().expect("event_type"));
        partitions_of
            .entry(order.clone())
            .or_default()
            .insert(r.partition);
        let entry = last.entry(order).or_insert((r.partition, r.offset, status));
        if r.offset >= entry.1 {
            *entry = (r.partition, r.offset, status);
        }
    }
    assert!(
        partitions_of.values().all(|p| p.len() == 1),
        "an order lives in one partition"
    );
    let view: HashMap<String, String> = pg
        .query("SELECT order_id::text, status FROM orders", &[])
        .await
        .expect("query view")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(view.len(), last.len(), "one view row per order");
    for (order, (_, _, status)) in &last {
        assert_eq!(
            view.get(order).map(String::as_str),
            Some(*status),
            "order {order}"
        );
    }

    // The stored offset of each partition is its high watermark.
    let stored: BTreeMap<i32, i64> = pg
        .query(
            "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = 'order-processors' AND topic = $1",
            &[&topic],
        )
        .await
        .expect("query offsets")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(stored, watermarks);

    let dead: i64 = pg
        .query_one("SELECT count(*) FROM dead_letters", &[])
        .await
        .expect("count dead letters")
        .get(0);
    assert_eq!(dead, 0, "generated events are all valid");
    db.drop_db().await;
}

/// A second `consume --until-caught-up` over a caught-up group writes nothing at all.
#[tokio::test]
async fn second_consume_applies_nothing() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce(&topic, 300).await;
    let first = consume(&topic, &db).await;
    let applied_first: u64 = first["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["events"].as_u64().expect("events"))
        .sum();
    assert_eq!(applied_first, 300);

    let pg = db.client().await;
    // xmin changes whenever a row is rewritten, even to identical values.
    let snapshot = |sql: &'static str| {
        let pg = &pg;
        async move {
            pg.query(sql, &[])
                .await
                .expect("snapshot query")
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<String>>()
        }
    };
    const ORDERS: &str = "SELECT order_id::text || xmin::text FROM orders ORDER BY 1";
    const OFFSETS: &str = "SELECT partition::text || xmin::text || next_offset::text FROM consumer_offsets ORDER BY 1";
    const HISTORY: &str = "SELECT count(*)::text FROM order_events";
    let before = (
        snapshot(ORDERS).await,
        snapshot(OFFSETS).await,
        snapshot(HISTORY).await,
    );

    let second = consume(&topic, &db).await;
    for p in second["partitions"].as_array().expect("partitions") {
        assert_eq!(p["events"], 0, "nothing applied the second time: {p}");
        assert_eq!(p["batches"], 0, "not even an empty batch committed: {p}");
    }
    let after = (
        snapshot(ORDERS).await,
        snapshot(OFFSETS).await,
        snapshot(HISTORY).await,
    );
    assert_eq!(
        before, after,
        "no row of orders, offsets or history was written"
    );
    db.drop_db().await;
}
