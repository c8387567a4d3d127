//! The producer under faults: nothing it was given disappears silently.

use std::time::Duration;

use crate::harness::{PrivateBroker, foodpipe, random_topic_name};

/// When the broker dies mid-run, every record is either acknowledged or counted lost with a reason, and the exit status says so.
#[tokio::test]
async fn lost_records_are_reported_not_dropped() {
    let mut broker = PrivateBroker::start().await;
    let topic = random_topic_name();
    let mut cmd = foodpipe(&[
        "produce",
        "--topic",
        &topic,
        "--count",
        "20000",
        "--rate",
        "5000",
        "--kafka-timeout-secs",
        "1",
        "--delivery-timeout-secs",
        "3",
        "--json",
    ]);
    cmd.env("KAFKA_BOOTSTRAP_SERVERS", &broker.address)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("foodpipe runs");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    broker.kill().await;
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("producer gives up within the delivery timeout")
        .expect("output");

    assert_eq!(output.status.code(), Some(1), "lost records fail the run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("could not be delivered"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON summary");
    let delivered = summary["events"].as_u64().expect("events");
    let failed = summary["failed"].as_u64().expect("failed");
    assert!(delivered > 0, "some records made it before the kill");
    assert!(failed > 0, "the rest are counted lost");
    assert_eq!(
        delivered + failed,
        20000,
        "every record is accounted for: {summary}"
    );
    assert!(
        summary["last_error"].is_string(),
        "with a reason: {summary}"
    );

    // Every acknowledged record is really on the broker after a restart.
    broker.restart().await;
    let client = rskafka::client::ClientBuilder::new(vec![broker.address.clone()])
        .build()
        .await
        .expect("restarted broker answers");
    let mut stored = 0i64;
    for p in 0..3 {
        let pc = client
            .partition_client(
                topic.as_str(),
                p,
                rskafka::client::partition::UnknownTopicHandling::Retry,
            )
            .await
            .expect("partition client");
        stored += pc
            .get_offset(rskafka::client::partition::OffsetAt::Latest)
            .await
            .expect("latest");
    }
    assert!(
        stored as u64 >= delivered,
        "acknowledged {delivered}, stored {stored}"
    );
}
