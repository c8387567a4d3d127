//! foodpipe's partitioner against an independent client, and the
//! `partition` command.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use rand::Rng;
use tokio::io::AsyncWriteExt;

use crate::harness::{
    bootstrap_servers, create_topic, foodpipe, librdkafka_python, random_topic_name,
    read_topic_raw, script,
};

/// librdkafka's murmur2 partitioner and foodpipe put each of 3,000 random keys (1 to 64 arbitrary bytes) in the same partition of a 7-partition topic.
#[tokio::test]
async fn librdkafka_murmur2_agrees_with_foodpipe() {
    let topic = random_topic_name();
    create_topic(&topic, 7).await;
    let mut rng = rand::rng();
    // Every length 1..=64 many times, so each murmur2 tail case is hit;
    // distinct, so each key's partition can be looked up after reading back.
    let mut seen = std::collections::HashSet::new();
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut i = 0usize;
    while keys.len() < 3000 {
        let len = 1 + i % 64;
        i += 1;
        let key: Vec<u8> = (0..len).map(|_| rng.random::<u8>()).collect();
        if seen.insert(key.clone()) {
            keys.push(key);
        }
    }
    let input: String = keys.iter().map(|k| format!("{}\n", hex(k))).collect();

    let mut child = tokio::process::Command::new(librdkafka_python())
        .arg(script("librdkafka_produce.py"))
        .arg(bootstrap_servers())
        .arg(&topic)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).await.expect("write keys");
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("librdkafka producer finishes")
        .expect("output");
    assert!(
        output.status.success(),
        "librdkafka producer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Read what the broker stored, and where.
    let (records, _) = read_topic_raw(&topic).await;
    let stored: HashMap<Vec<u8>, i32> = records
        .into_iter()
        .map(|r| (r.key.expect("keyed record"), r.partition))
        .collect();
    assert_eq!(stored.len(), keys.len(), "every key was delivered once");
    let mut disagreements = Vec::new();
    for key in &keys {
        let ours = crate::harness::partition_of(key, 7) as i32;
        if stored[key] != ours {
            disagreements.push((hex(key), stored[key], ours));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} keys placed differently (key, librdkafka, foodpipe): {:?}",
        disagreements.len(),
        &disagreements[..disagreements.len().min(5)]
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `foodpipe partition` places Kafka's test-vector keys where their known hashes say, from arguments and from stdin.
#[tokio::test]
async fn partition_command_prints_key_and_partition() {
    // Expected partitions computed from the signed hashes in Kafka's
    // UtilsTest (e.g. "21" → -973932308 → toPositive 1173551340 → % 7 = 3).
    let mut cmd = foodpipe(&["partition", "--partitions", "7", "21", "foobar", "-", "abc"]);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"a-little-bit-long-string\n")
        .await
        .expect("write");
    drop(stdin);
    let output = child.wait_with_output().await.expect("output");
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "21\t3\nfoobar\t0\na-little-bit-long-string\t1\nabc\t4\n"
    );
}

/// `send` reading from a pipe that stays open (someone typing, a script
/// writing now and then) sends each line as it comes: records are not
/// held back for more input, whether the input so far ends with a whole
/// line or stops inside one.
#[tokio::test]
async fn send_delivers_lines_while_its_input_stays_open() {
    let topic = random_topic_name();
    create_topic(&topic, 3).await;
    let mut cmd = foodpipe(&["send", "--topic", &topic, "--json"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let values_in_topic = || async {
        let (records, _) = read_topic_raw(&topic).await;
        let mut values: Vec<Vec<u8>> = records.into_iter().filter_map(|r| r.value).collect();
        values.sort();
        values
    };
    let wait_for = |want: Vec<&'static [u8]>| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let values = values_in_topic().await;
            if values == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "within 30 s of writing them, with the input still open, the topic holds {values:?}, not {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    stdin
        .write_all(b"CUST-1\tfirst\nCUST-2\tsecond\n")
        .await
        .expect("write");
    stdin.flush().await.expect("flush");
    wait_for(vec![b"first", b"second"]).await;
    // A whole line, then half of the next: the whole one goes out.
    stdin
        .write_all(b"CUST-3\tthird\nCUST-4\tfou")
        .await
        .expect("write");
    stdin.flush().await.expect("flush");
    wait_for(vec![b"first", b"second", b"third"]).await;
    stdin.write_all(b"rth\n").await.expect("write");
    drop(stdin);
    let summary = send_summary(child).await;
    assert_eq!(summary["events"], 4);
    assert_eq!(
        values_in_topic().await,
        [&b"first"[..], b"fourth", b"second", b"third"]
    );
}

/// `foodpipe send` writes keyed lines to the key's partition and keyless lines round-robin, bytes unchanged.
#[tokio::test]
async fn send_places_lines_by_key() {
    let topic = random_topic_name();
    let mut input = Vec::new();
    for i in 0..30 {
        input.extend_from_slice(format!("CUST-{i:04}\tvalue {i}\n").as_bytes());
    }
    for i in 0..6 {
        input.extend_from_slice(format!("keyless {i}\n").as_bytes());
    }
    // A value that is not UTF-8 reaches the topic exactly as written.
    input.extend_from_slice(b"CUST-BIN\t\xff\xfe{\n");
    let mut cmd = foodpipe(&["send", "--topic", &topic, "--partitions", "3", "--json"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(&input).await.expect("write");
    drop(stdin);
    let summary = send_summary(child).await;
    assert_eq!(summary["events"], 37);

    let (records, _) = read_topic_raw(&topic).await;
    assert_eq!(records.len(), 37);
    let mut keyless_per_partition = [0; 3];
    for r in &records {
        match &r.key {
            Some(key) => assert_eq!(
                r.partition,
                crate::harness::partition_of(key, 3) as i32,
                "key {:?}",
                String::from_utf8_lossy(key)
            ),
            None => keyless_per_partition[r.partition as usize] += 1,
        }
    }
    assert_eq!(
        keyless_per_partition,
        [2, 2, 2],
        "keyless lines go round-robin"
    );
    let binary = records
        .iter()
        .find(|r| r.key.as_deref() == Some(b"CUST-BIN"))
        .expect("binary record");
    assert_eq!(binary.value.as_deref(), Some(&b"\xff\xfe{"[..]));
}

/// Producing to an existing topic with another --partitions uses the topic's count and says so.
#[tokio::test]
async fn existing_topic_keeps_its_partition_count() {
    let topic = random_topic_name();
    create_topic(&topic, 2).await;
    let mut cmd = foodpipe(&[
        "produce",
        "--topic",
        &topic,
        "--count",
        "50",
        "--partitions",
        "5",
        "--json",
    ]);
    cmd.stderr(Stdio::piped());
    let output = crate::harness::run_within(cmd, Duration::from_secs(60)).await;
    assert!(output.status.success());
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(summary["partitions"], 2);
    assert_eq!(summary["per_partition"].as_array().map(Vec::len), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("already exists with 2 partitions"),
        "says it uses the existing count: {stderr}"
    );
}

/// Waits for `foodpipe send --json` to exit, successfully, and returns the
/// summary it printed.
async fn send_summary(child: tokio::process::Child) -> serde_json::Value {
    let output = child.wait_with_output().await.expect("output");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("json")
}
