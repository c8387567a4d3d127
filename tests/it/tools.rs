//! The learning tools against real brokers: `cluster` and `doctor`.

use std::time::Duration;

use crate::harness::{PrivateBroker, TestDb, bootstrap_servers, foodpipe, run_ok, run_within};

/// `cluster` reports which bootstrap entries answered and the brokers as they advertise themselves.
#[tokio::test]
async fn cluster_shows_bootstrap_and_advertised_brokers() {
    let mut cmd = foodpipe(&["cluster"]);
    cmd.env(
        "KAFKA_BOOTSTRAP_SERVERS",
        format!("127.0.0.1:1,{}", bootstrap_servers()),
    );
    let out = run_ok(cmd).await;
    assert!(out.contains("bootstrap 127.0.0.1:1: no answer"), "{out}");
    assert!(
        out.contains(&format!("bootstrap {}: answered", bootstrap_servers())),
        "{out}"
    );
    assert!(out.contains("(controller)"), "{out}");
}

/// `doctor` against a broker advertising kafka:29092 names the seed's gotcha: bootstrap answers, the advertised address does not resolve, check KAFKA_ADVERTISED_LISTENERS.
#[tokio::test]
async fn doctor_names_the_advertised_listener_gotcha() {
    let broker = PrivateBroker::start_advertising(Some("tcp://kafka:29092")).await;
    let db = TestDb::create().await;
    let mut cmd = foodpipe(&["doctor"]);
    cmd.env("KAFKA_BOOTSTRAP_SERVERS", &broker.address)
        .env("DATABASE_URL", &db.url);
    let out = run_within(cmd, Duration::from_secs(60)).await;
    assert_eq!(out.status.code(), Some(1), "a failed check fails the run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = format!(
        "FAIL bootstrap {} answered, but it advertises kafka:29092, which does not resolve from here",
        broker.address
    );
    assert!(stdout.contains(&expected), "{stdout}");
    assert!(
        stdout.contains("check KAFKA_ADVERTISED_LISTENERS"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok   PostgreSQL"),
        "the other checks still run: {stdout}"
    );

    let mut cmd = foodpipe(&["cluster"]);
    cmd.env("KAFKA_BOOTSTRAP_SERVERS", &broker.address);
    let out = run_ok(cmd).await;
    assert!(out.contains("kafka:29092"), "{out}");
    db.drop_db().await;
}

/// `doctor` on the healthy stack passes every check once the topic exists.
#[tokio::test]
async fn doctor_passes_on_a_healthy_stack() {
    let topic = crate::harness::random_topic_name();
    let db = TestDb::create().await;
    crate::harness::consume_until_caught_up_after_produce(&topic, &db).await;
    let mut cmd = foodpipe(&["doctor", "--topic", &topic]);
    cmd.env("DATABASE_URL", &db.url);
    let out = run_ok(cmd).await;
    assert!(out.contains("all ") && !out.contains("FAIL"), "{out}");
    db.drop_db().await;
}
