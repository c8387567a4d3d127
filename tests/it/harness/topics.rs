//! Producing to, reading back and managing the topics under test.

use std::collections::BTreeMap;
use std::time::Duration;

use rskafka::client::Client;
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use tokio::process::Command;

use super::{PrivateBroker, bootstrap_servers, foodpipe, kafka_client_at, run_ok};

/// Where Kafka's default partitioner puts `key` among `partitions` (at least one).
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    let n = std::num::NonZeroU32::new(partitions).expect("a topic has partitions");
    partition::partition_for_key(key, n)
}

/// What `foodpipe generate` prints: `count` events made with `seed` (and
/// the generator flags `extra`), as `KEY<TAB>JSON` lines.
pub async fn generated(count: u32, seed: u64, extra: &[&str]) -> String {
    let (count, seed) = (count.to_string(), seed.to_string());
    let mut args = vec!["generate", "--count", &count, "--seed", &seed];
    args.extend_from_slice(extra);
    run_ok(foodpipe(&args)).await
}

/// `foodpipe tail` of `topic` from the beginning, with `extra` flags.
pub fn tail_from_beginning(topic: &str, extra: &[&str]) -> Command {
    let mut args = vec!["tail", "--topic", topic, "--from-beginning"];
    args.extend_from_slice(extra);
    foodpipe(&args)
}

/// `foodpipe send` of raw bytes (lines of `KEY<TAB>VALUE`) to `topic`.
pub async fn send_lines(topic: &str, input: &[u8]) {
    send_lines_at(&bootstrap_servers(), topic, input).await;
}

/// Like [`send_lines`], to the broker at `bootstrap`.
pub async fn send_lines_at(bootstrap: &str, topic: &str, input: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let mut cmd = foodpipe(&["send", "--topic", topic, "--partitions", "3", "--quiet"]);
    cmd.env("KAFKA_BOOTSTRAP_SERVERS", bootstrap);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("send runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).await.expect("write lines");
    drop(stdin);
    let out = child.wait_with_output().await.expect("send finishes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A record read back from the topic, independently of foodpipe.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: std::collections::BTreeMap<String, Vec<u8>>,
    pub timestamp: chrono::DateTime<chrono::Utc>,
}

/// A record whose value is JSON, parsed.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub value: serde_json::Value,
}

/// Every record of every partition of `topic`, read with rskafka directly,
/// and each partition's high watermark.
pub async fn read_topic_raw(topic: &str) -> (Vec<RawRecord>, BTreeMap<i32, i64>) {
    read_topic_raw_at(&bootstrap_servers(), topic).await
}

/// Like [`read_topic_raw`], from the broker at `bootstrap`.
pub async fn read_topic_raw_at(
    bootstrap: &str,
    topic: &str,
) -> (Vec<RawRecord>, BTreeMap<i32, i64>) {
    let client = kafka_client_at(bootstrap).await;
    let partitions = client
        .list_topics()
        .await
        .expect("list topics")
        .into_iter()
        .find(|t| t.name == topic)
        .unwrap_or_else(|| panic!("topic {topic} exists"))
        .partitions;
    let mut records = Vec::new();
    let mut watermarks = BTreeMap::new();
    for partition in partitions {
        let pc = client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .expect("partition client");
        let end = pc
            .get_offset(OffsetAt::Latest)
            .await
            .expect("latest offset");
        watermarks.insert(partition, end);
        let mut offset = pc
            .get_offset(OffsetAt::Earliest)
            .await
            .expect("earliest offset");
        while offset < end {
            // Step by whole batches, so a transaction marker (a batch of no
            // records) is passed rather than asked for again forever.
            let fetched = pc
                .fetch_records_detailed(offset, 1..4_000_000, 100)
                .await
                .expect("fetch");
            let fetched = kafka::read_committed(offset, fetched);
            assert!(fetched.corrupt.is_none(), "corrupt batch: {fetched:?}");
            for r in fetched.records {
                records.push(RawRecord {
                    partition,
                    offset: r.offset,
                    key: r.record.key,
                    value: r.record.value,
                    headers: r.record.headers,
                    timestamp: r.record.timestamp,
                });
            }
            offset = fetched.next_offset;
        }
    }
    (records, watermarks)
}

/// Every record of `topic` on the broker at `bootstrap`, for topics of
/// JSON values.
pub async fn read_topic_at(bootstrap: &str, topic: &str) -> (Vec<TopicRecord>, BTreeMap<i32, i64>) {
    let (raw, watermarks) = read_topic_raw_at(bootstrap, topic).await;
    let records = raw
        .into_iter()
        .map(|r| TopicRecord {
            partition: r.partition,
            offset: r.offset,
            value: serde_json::from_slice(r.value.as_deref().expect("record has a value"))
                .expect("JSON value"),
        })
        .collect();
    (records, watermarks)
}

/// Creates `topic` with `partitions` partitions through rskafka.
pub async fn create_topic(topic: &str, partitions: i32) {
    create_topic_at(&bootstrap_servers(), topic, partitions).await;
}

/// Creates `topic` on the broker at `bootstrap`; returns the client.
pub async fn create_topic_at(bootstrap: &str, topic: &str, partitions: i32) -> Client {
    let client = kafka_client_at(bootstrap).await;
    client
        .controller_client()
        .expect("controller client")
        .create_topic(topic, partitions, 1, 5_000)
        .await
        .unwrap_or_else(|e| panic!("cannot create topic {topic}: {e}"));
    client
}

/// Produces `count` generated events with `seed` to `topic` (3 partitions).
pub async fn produce_events(topic: &str, count: u32, seed: u64) {
    produce_events_at(&bootstrap_servers(), topic, count, seed).await;
}

/// Produces `count` generated events with `seed` to `topic`, creating it
/// with `partitions` partitions.
pub async fn produce_events_to(topic: &str, count: u32, seed: u64, partitions: u32) {
    produce(&bootstrap_servers(), topic, count, seed, partitions).await;
}

/// Like [`produce_events`], to the broker at `bootstrap`.
pub async fn produce_events_at(bootstrap: &str, topic: &str, count: u32, seed: u64) {
    produce(bootstrap, topic, count, seed, 3).await;
}

async fn produce(bootstrap: &str, topic: &str, count: u32, seed: u64, partitions: u32) {
    let mut cmd = foodpipe(&[
        "produce",
        "--topic",
        topic,
        "--count",
        &count.to_string(),
        "--partitions",
        &partitions.to_string(),
        "--seed",
        &seed.to_string(),
        "--json",
    ]);
    cmd.env("KAFKA_BOOTSTRAP_SERVERS", bootstrap);
    let out = run_ok(cmd).await;
    let summary: serde_json::Value = serde_json::from_str(&out).expect("JSON summary");
    assert_eq!(summary["events"], count, "all events delivered: {out}");
}

/// Deletes `topic` and waits until the cluster no longer lists it.
///
/// Only on a [`PrivateBroker`]: Tansu 0.6.0's DeleteTopics deletes every
/// topic of the cluster (its `topic_delete_by.sql` filters on the cluster
/// only), which would wreck the other tests on the shared broker.
pub async fn delete_topic(broker: &PrivateBroker, topic: &str) {
    let client = send_delete_topic(broker, topic).await;
    for _ in 0..50 {
        let topics = client.list_topics().await.expect("list topics");
        if !topics.iter().any(|t| t.name == topic) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("topic {topic} still listed after delete");
}

/// Sends DeleteTopics for `topic` to a [`PrivateBroker`] (see
/// [`delete_topic`]) and returns the client, without waiting to see it
/// gone: with a consumer fetching the topic, Tansu 0.6.0's storage may
/// panic at once and answer nothing more until restarted.
pub async fn send_delete_topic(broker: &PrivateBroker, topic: &str) -> Client {
    let client = kafka_client_at(&broker.address).await;
    client
        .controller_client()
        .expect("controller client")
        .delete_topic(topic, 5_000)
        .await
        .unwrap_or_else(|e| panic!("cannot delete topic {topic}: {e}"));
    client
}

/// Each partition's log-end offset (ListOffsets only: no record is read).
pub async fn log_ends(topic: &str) -> BTreeMap<i32, i64> {
    log_ends_at(&bootstrap_servers(), topic).await
}

/// Like [`log_ends`], on the broker at `bootstrap`.
pub async fn log_ends_at(bootstrap: &str, topic: &str) -> BTreeMap<i32, i64> {
    let client = kafka_client_at(bootstrap).await;
    let count = client
        .list_topics()
        .await
        .expect("list topics")
        .into_iter()
        .find(|t| t.name == topic)
        .map_or(0, |t| t.partitions.len() as i32);
    let mut ends = BTreeMap::new();
    for partition in 0..count {
        let pc = client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .expect("partition client");
        ends.insert(
            partition,
            pc.get_offset(OffsetAt::Latest)
                .await
                .expect("latest offset"),
        );
    }
    ends
}
