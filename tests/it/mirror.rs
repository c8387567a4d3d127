//! Issue 14: the offset mirror, seen by independent Kafka clients
//! (librdkafka and kafka-python) against real brokers.

use std::time::Duration;

use crate::harness::*;

const GROUP: &str = "order-processors";

/// After `consume --until-caught-up`, librdkafka's `committed()` and kafka-python's admin `list_consumer_group_offsets` return exactly the offsets stored in PostgreSQL; after `group reset --execute` they return the new ones.
#[tokio::test]
async fn kafka_clients_see_the_stored_offsets() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_to(&topic, 1_500, 81, 3).await;
    consume_until_caught_up(&topic, &db, &[]).await;
    let stored = stored_offsets(&db, GROUP, &topic).await;
    assert_eq!(stored.len(), 3);
    let bootstrap = bootstrap_servers();
    for client in ["confluent", "kafka-python"] {
        assert_eq!(
            broker_committed(client, &bootstrap, GROUP, &topic, 3).await,
            stored,
            "{client} sees the PostgreSQL offsets"
        );
    }

    let reset = ["--to-offset", "100", "--execute"];
    run_ok(group_reset(&bootstrap, &db, &topic, &reset)).await;
    let after = stored_offsets(&db, GROUP, &topic).await;
    assert!(after.values().all(|o| *o == 100), "{after:?}");
    for client in ["confluent", "kafka-python"] {
        assert_eq!(
            broker_committed(client, &bootstrap, GROUP, &topic, 3).await,
            after,
            "{client} sees the reset"
        );
    }
    db.drop_db().await;
}

/// A running member mirrors as it goes: while it consumes new records, the broker's committed offsets follow PostgreSQL's within a few mirror intervals, and `group describe` shows both with no drift once it settles.
#[tokio::test]
async fn a_running_member_keeps_the_mirror_current() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_to(&topic, 600, 82, 3).await;
    let member = spawn_consumer(&topic, &db, &[]);
    wait_caught_up(&db, &topic, Duration::from_secs(60)).await;
    produce_events_to(&topic, 600, 83, 3).await;
    wait_caught_up(&db, &topic, Duration::from_secs(60)).await;
    let stored = stored_offsets(&db, GROUP, &topic).await;
    let bootstrap = bootstrap_servers();
    // The default --mirror-interval is 5 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen = broker_committed("confluent", &bootstrap, GROUP, &topic, 3).await;
        if seen == stored {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mirror not current after 20 s: broker {seen:?}, PostgreSQL {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut describe = foodpipe(&["group", "describe", "--topic", &topic]);
    describe.env("DATABASE_URL", &db.url);
    let described = run_ok(describe).await;
    for (p, offset) in &stored {
        let row = described
            .lines()
            .find(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.get(1) == Some(&topic.as_str()) && cols.get(2) == Some(&p.to_string().as_str())
            })
            .unwrap_or_else(|| panic!("no row for partition {p}: {described}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[3], offset.to_string(), "{row}");
        assert_eq!(
            cols[4],
            offset.to_string(),
            "broker column, no drift: {row}"
        );
    }
    stop(member).await;
    db.drop_db().await;
}

/// With the broker's group coordinator unreachable (a proxy in front of a private Tansu drops every FindCoordinator and OffsetCommit connection), the pipeline folds the whole topic as usual, `foodpipe_offset_mirror_errors_total` rises and the failure is logged, and the run exits 0.
#[tokio::test]
async fn an_unreachable_coordinator_never_stops_the_pipeline() {
    let proxy_port = free_port();
    let broker =
        PrivateBroker::start_advertising(Some(&format!("tcp://127.0.0.1:{proxy_port}"))).await;
    // FindCoordinator (10) and OffsetCommit (8) are refused.
    let proxy = KafkaProxy::start(proxy_port, broker.address.clone(), &[10, 8]).await;
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_at(&proxy.address, &topic, 900, 84).await;
    let member = spawn_consumer_at(&proxy.address, &topic, &db, &[]);
    wait_caught_up_at(&proxy.address, &db, &topic, Duration::from_secs(60)).await;
    // A few mirror intervals: the counter rises, the pipeline is fine.
    let addr: String = db
        .client()
        .await
        .query_one("SELECT metrics_addr FROM group_members", &[])
        .await
        .expect("member row")
        .get(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let errors = loop {
        let (_, metrics) = http_get(&addr, "/metrics").await;
        let errors: f64 = metrics
            .lines()
            .find(|l| l.starts_with("foodpipe_offset_mirror_errors_total{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if errors >= 2.0 {
            break errors;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mirror errors not counted within 30 s:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(errors >= 2.0);
    let (status, health) = http_get(&addr, "/healthz").await;
    assert_eq!(
        status, 200,
        "the mirror is not the pipeline's health: {health}"
    );
    assert!(
        proxy.refused.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the proxy refused the mirror's requests"
    );
    let out = stop(member).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot mirror offsets to the broker"),
        "the failure is logged: {stderr}"
    );
    assert_db_is_fold_of_topic_at(&proxy.address, &db, &topic, GROUP).await;
    db.drop_db().await;
}

/// `group describe` without --topic describes every topic the group has offsets for (here two, neither the default `food-orders`), with the broker's committed offsets beside PostgreSQL's; `group list` shows the broker's groups and marks foodpipe's.
#[tokio::test]
async fn describe_covers_every_topic_and_list_shows_the_brokers_groups() {
    let (first, second) = (random_topic_name(), random_topic_name());
    let db = TestDb::create().await;
    let group = format!("g-{}", &first[3..11]);
    for topic in [&first, &second] {
        produce_events_to(topic, 300, 85, 2).await;
        consume_until_caught_up(topic, &db, &["--group", &group]).await;
    }
    let mut describe = foodpipe(&["group", "describe", "--group", &group]);
    describe.env("DATABASE_URL", &db.url);
    let described = run_ok(describe).await;
    for topic in [&first, &second] {
        let stored = stored_offsets(&db, &group, topic).await;
        for (p, offset) in stored {
            assert!(
                described.lines().any(|l| {
                    let c: Vec<&str> = l.split_whitespace().collect();
                    c.len() > 4
                        && c[1] == topic.as_str()
                        && c[2] == p.to_string()
                        && c[3] == offset.to_string()
                        && c[4] == offset.to_string()
                }),
                "{topic}/{p} at {offset} in both columns:\n{described}"
            );
        }
    }
    assert!(!described.contains("food-orders"), "{described}");

    let mut list = foodpipe(&["group", "list"]);
    list.env("DATABASE_URL", &db.url);
    let listed = run_ok(list).await;
    let broker_part = listed
        .split("groups on the broker (ListGroups):")
        .nth(1)
        .unwrap_or_else(|| panic!("no broker section:\n{listed}"));
    assert!(
        broker_part
            .lines()
            .any(|l| l.contains(&group) && l.contains("foodpipe (mirror of PostgreSQL)")),
        "{listed}"
    );
    db.drop_db().await;
}
