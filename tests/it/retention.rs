//! Retention and compaction for real: a private Tansu whose store runs its
//! maintenance every second deletes records past a topic's `retention.ms`
//! (by record timestamp) and compacts `cleanup.policy=compact` topics.

use std::time::{Duration, Instant};

use crate::harness::{
    PrivateBroker, TestDb, consume_until_caught_up_at, foodpipe, generated, group_reset,
    log_ends_at, random_topic_name, run_ok, send_lines_at, stored_offsets,
};

const GROUP: &str = "order-processors";

fn at(broker: &PrivateBroker, db: &TestDb, args: &[&str]) -> tokio::process::Command {
    let mut cmd = foodpipe(args);
    cmd.env("KAFKA_BOOTSTRAP_SERVERS", &broker.address)
        .env("DATABASE_URL", &db.url);
    cmd
}

/// `generate | send`: `count` events with `seed`, stamped now.
async fn send_generated(broker: &PrivateBroker, topic: &str, count: u32, seed: u64) {
    let lines = generated(count, seed, &[]).await;
    send_lines_at(&broker.address, topic, lines.as_bytes()).await;
}

/// `topics create` of `topic` with one partition and `configs` (each a
/// `--config`); returns what `topics describe` then says of it.
async fn create_one_partition(
    broker: &PrivateBroker,
    db: &TestDb,
    topic: &str,
    configs: &[&str],
) -> String {
    let mut args = vec!["topics", "create", topic, "--partitions", "1"];
    for config in configs {
        args.extend(["--config", config]);
    }
    run_ok(at(broker, db, &args)).await;
    run_ok(at(broker, db, &["topics", "describe", topic])).await
}

/// Partition 0's earliest and latest offsets, from `topics describe`.
async fn offsets(broker: &PrivateBroker, db: &TestDb, topic: &str) -> (i64, i64) {
    let out = run_ok(at(broker, db, &["topics", "describe", topic])).await;
    out.lines()
        .find_map(|l| {
            let cols: Vec<i64> = l.split_whitespace().map_while(|c| c.parse().ok()).collect();
            (cols.len() == 4 && cols[0] == 0).then(|| (cols[1], cols[2]))
        })
        .unwrap_or_else(|| panic!("partition 0 in:\n{out}"))
}

/// Polls partition 0's earliest and latest [`offsets`] until `done` holds
/// of them, failing after 60 s saying that `what` did not happen.
async fn wait_offsets(
    broker: &PrivateBroker,
    db: &TestDb,
    topic: &str,
    what: &str,
    done: impl Fn(i64, i64) -> bool,
) {
    let since = Instant::now();
    loop {
        let (first, end) = offsets(broker, db, topic).await;
        if done(first, end) {
            return;
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "{what} did not happen within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A group whose stored offset fell below the earliest offset the broker still has (retention deleted the records past `retention.ms`): the next take records the gap in `offset_gaps` (reason retention, the stored and earliest offsets) and goes on from `--offset-reset` (earliest), folding what is left; `topics describe` shows the topic's configs.
#[tokio::test]
async fn retention_below_the_stored_offset_is_a_recorded_gap() {
    let broker = PrivateBroker::start_maintaining("1s").await;
    let db = TestDb::create().await;
    let topic = random_topic_name();
    let configs = ["cleanup.policy=delete", "retention.ms=8000"];
    let described = create_one_partition(&broker, &db, &topic, &configs).await;
    assert!(described.contains("cleanup.policy=delete"), "{described}");
    assert!(described.contains("retention.ms=8000"), "{described}");

    // `send` stamps records with the time they are sent (`produce` uses
    // each event's own time, up to an hour and a half ahead).
    send_generated(&broker, &topic, 300, 2201).await;
    consume_until_caught_up_at(&broker.address, &topic, &db, &[]).await;
    // The group goes back to offset 100; then retention removes all 300.
    let reset = ["--to-offset", "100", "--execute"];
    run_ok(group_reset(&broker.address, &db, &topic, &reset)).await;
    // Tansu 0.6.0 answers ListOffsets with 0 and 0 for a partition whose
    // records all expired (Kafka keeps the log end), so "gone" is no
    // records left; the next records then start at 300.
    let removed = |first, end| first >= 300 || first == end;
    wait_offsets(
        &broker,
        &db,
        &topic,
        "retention's removal of the records",
        removed,
    )
    .await;
    send_generated(&broker, &topic, 50, 2202).await;
    consume_until_caught_up_at(&broker.address, &topic, &db, &[]).await;

    let pg = db.client().await;
    let gap = pg
        .query_one(
            "SELECT reason, stored_offset, earliest, reset_to FROM offset_gaps \
             WHERE topic = $1 AND partition = 0",
            &[&topic],
        )
        .await
        .expect("one gap recorded");
    let (reason, stored, earliest_then, reset_to): (String, i64, i64, i64) =
        (gap.get(0), gap.get(1), gap.get(2), gap.get(3));
    assert_eq!(reason, "retention");
    assert_eq!(stored, 100);
    assert!(earliest_then >= 300, "earliest {earliest_then}");
    assert_eq!(reset_to, earliest_then, "--offset-reset earliest");
    let ends = log_ends_at(&broker.address, &topic).await;
    assert_eq!(stored_offsets(&db, GROUP, &topic).await, ends);
    db.drop_db().await;
}

/// A `cleanup.policy=compact` topic: `topics describe` shows the policy, and the store's maintenance keeps only the last record of each key, so the earliest offsets move while the newest record per key stays.
#[tokio::test]
async fn a_compacted_topic_keeps_the_last_record_of_each_key() {
    let broker = PrivateBroker::start_maintaining("1s").await;
    let db = TestDb::create().await;
    let topic = random_topic_name();
    let described = create_one_partition(&broker, &db, &topic, &["cleanup.policy=compact"]).await;
    assert!(described.contains("cleanup.policy=compact"), "{described}");
    // Three versions of two keys, as `send` reads them: KEY<TAB>VALUE.
    send_lines_at(
        &broker.address,
        &topic,
        b"k1\tv1\nk2\tv1\nk1\tv2\nk2\tv2\nk1\tv3\nk2\tv3\n",
    )
    .await;
    wait_offsets(&broker, &db, &topic, "compaction", |first, _| first > 0).await;
    let (records, _) = crate::harness::read_topic_raw_at(&broker.address, &topic).await;
    let mut last = std::collections::BTreeMap::new();
    for r in &records {
        last.insert(r.key.clone(), r.value.clone());
    }
    assert_eq!(
        last.get(&Some(b"k1".to_vec())),
        Some(&Some(b"v3".to_vec())),
        "{records:?}"
    );
    assert!(
        records.len() < 6,
        "compaction removed older versions: {records:?}"
    );
    db.drop_db().await;
}
