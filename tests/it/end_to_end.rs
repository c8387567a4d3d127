//! The thin slice end to end: produce with the binary, consume with the
//! binary, check PostgreSQL against the topic read back independently.

use crate::harness::{
    TestDb, assert_db_is_fold_of_topic, consume_until_caught_up, history_len, produce_events,
    random_topic_name,
};

/// 1,000 events over 3 partitions: each lands in history once, each order shows its last event's status, and offsets equal high watermarks.
#[tokio::test]
async fn produce_then_consume_folds_every_event_exactly_once() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 1000, 42).await;
    let summary = consume_until_caught_up(&topic, &db, &[]).await;
    assert_eq!(summary["partitions"].as_array().map(Vec::len), Some(3));
    let applied: u64 = summary["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["events"].as_u64().expect("events"))
        .sum();
    assert_eq!(applied, 1000);

    assert_db_is_fold_of_topic(&db, &topic, "order-processors").await;
    let pg = db.client().await;
    assert_eq!(history_len(&pg).await, 1000);
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
    produce_events(&topic, 300, 43).await;
    consume_until_caught_up(&topic, &db, &[]).await;

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
    // Offsets by value: taking a partition's lease (owner, epoch) writes
    // the row even when there is nothing to apply.
    const OFFSETS: &str = "SELECT partition::text || ':' || next_offset::text || ':' || coalesce(last_fingerprint, 0)::text FROM consumer_offsets ORDER BY 1";
    const HISTORY: &str = "SELECT count(*)::text FROM order_events";
    let before = (
        snapshot(ORDERS).await,
        snapshot(OFFSETS).await,
        snapshot(HISTORY).await,
    );
    assert_eq!(before.2, vec!["300".to_owned()]);

    let second = consume_until_caught_up(&topic, &db, &[]).await;
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
