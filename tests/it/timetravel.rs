//! Event sourcing: the state as of a time, computed two ways that must
//! agree — from the history in PostgreSQL (`asof`) and by replaying Kafka
//! up to that time into a schema of its own (`replay --until`).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::harness::{
    TestDb, consume_until_caught_up, foodpipe, produce_events, random_topic_name, read_topic_raw,
    run_ok, run_within,
};

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
