//! The learning tools against real brokers: `cluster` and `doctor`.

use std::time::Duration;

use crate::harness::{
    PrivateBroker, TestDb, bootstrap_servers, foodpipe, run_ok, run_within, tail_from_beginning,
};

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
    // The memory line names the server's shared_buffers as PostgreSQL
    // itself prints it.
    let buffers: String = db
        .migrated_store(None)
        .await
        .client()
        .await
        .expect("client")
        .query_one(
            "SELECT pg_size_pretty(pg_size_bytes(current_setting('shared_buffers')))",
            &[],
        )
        .await
        .expect("shared_buffers")
        .get(0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok   history's indexes (")
                && l.ends_with(&format!("fit in PostgreSQL's shared_buffers ({buffers})"))),
        "{out}"
    );
    db.drop_db().await;
}

/// `topics create` makes a topic `topics describe` then shows with its offsets; unknown or duplicate topics are exit 2, a duplicate with `--if-not-exists` is left as it was.
#[tokio::test]
async fn topics_create_and_describe() {
    let topic = crate::harness::random_topic_name();
    let out = run_ok(foodpipe(&["topics", "create", &topic, "--partitions", "4"])).await;
    assert!(out.contains("4 partition(s)"), "{out}");
    crate::harness::produce_events(&topic, 40, 5).await;
    let out = run_ok(foodpipe(&["topics", "describe", &topic])).await;
    let (_, ends) = crate::harness::read_topic_raw(&topic).await;
    for (p, end) in &ends {
        let row = format!("{p:>9} {:>16} {end:>16} {end:>10}", 0);
        assert!(out.contains(&row), "partition {p} row {row:?} in:\n{out}");
    }
    let listed = run_ok(foodpipe(&["topics", "list"])).await;
    assert!(
        listed.contains(&format!("{topic}\t4 partition(s)")),
        "{listed}"
    );

    for args in [
        vec!["topics", "create", topic.as_str()],
        vec!["topics", "describe", "no-such-topic-here"],
    ] {
        let out = run_within(foodpipe(&args), Duration::from_secs(30)).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    }
    // An init container runs `create --if-not-exists` on every start: the
    // second time it succeeds and leaves the topic as it was.
    let again = run_ok(foodpipe(&[
        "topics",
        "create",
        &topic,
        "--partitions",
        "9",
        "--if-not-exists",
    ]))
    .await;
    assert!(
        again.contains("already exists with 4 partition(s)"),
        "{again}"
    );
    let (_, ends_after) = crate::harness::read_topic_raw(&topic).await;
    assert_eq!(ends_after, ends, "--if-not-exists changed the topic");
}

/// `tail` prints each record once with partition, offset, key and value, from the beginning, one partition, or an offset, and stops at the end.
#[tokio::test]
async fn tail_prints_records() {
    let topic = crate::harness::random_topic_name();
    crate::harness::produce_events(&topic, 90, 6).await;
    let (records, _) = crate::harness::read_topic_raw(&topic).await;
    let out = run_ok(tail_from_beginning(&topic, &["--format", "json"])).await;
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), records.len(), "every record once");
    for r in &records {
        let line = lines
            .iter()
            .find(|l| l["partition"] == r.partition && l["offset"] == r.offset)
            .expect("printed");
        assert_eq!(line["key"].as_str().map(str::as_bytes), r.key.as_deref());
        assert_eq!(
            line["value"].as_str().map(str::as_bytes),
            r.value.as_deref()
        );
    }
    let out = run_ok(foodpipe(&[
        "tail",
        "--topic",
        &topic,
        "--partition",
        "1",
        "--offset",
        "3",
    ]))
    .await;
    let in_p1 = records.iter().filter(|r| r.partition == 1).count();
    assert_eq!(out.lines().count(), in_p1 - 3);
    assert!(out.lines().all(|l| l.starts_with("1\t")), "{out}");
    // From the log end without --follow: nothing, and it exits.
    let out = run_ok(foodpipe(&["tail", "--topic", &topic])).await;
    assert!(out.is_empty(), "{out}");
}

/// A reader that stops early (`foodpipe tail | head -1`,
/// `foodpipe generate | head -1`) ends the command quietly, as it does any
/// Unix tool: exit status 0 and nothing on stderr, not `error: Broken pipe`.
#[tokio::test]
async fn a_reader_that_stops_early_ends_the_command_quietly() {
    use tokio::io::AsyncBufReadExt;
    let topic = crate::harness::random_topic_name();
    crate::harness::produce_events(&topic, 3_000, 7).await;
    for args in [
        vec!["tail", "--topic", topic.as_str(), "--from-beginning"],
        vec!["generate", "--count", "1000000"],
    ] {
        let mut cmd = foodpipe(&args);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn foodpipe");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = lines.next_line().await.expect("read a line");
        assert!(first.is_some(), "{args:?} printed nothing");
        drop(lines);
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("foodpipe ends once its reader is gone")
            .expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("error"),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
}

/// A broker slow to answer (its connection accepted, nothing said for 4 s:
/// a broker busy with other clients) still passes `doctor`, which gives
/// each address the Kafka timeout (`--kafka-timeout-secs`, 10 s by default)
/// as every other request gets, rather than failing it after 3 s.
#[tokio::test]
async fn doctor_waits_for_a_slow_bootstrap_within_the_kafka_timeout() {
    let topic = crate::harness::random_topic_name();
    let db = TestDb::create().await;
    crate::harness::consume_until_caught_up_after_produce(&topic, &db).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let slow = listener.local_addr().expect("address").to_string();
    let upstream = crate::harness::bootstrap_servers()
        .split(',')
        .next()
        .expect("a bootstrap entry")
        .to_owned();
    let relay = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(4)).await;
                if let Ok(mut broker) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                }
            });
        }
    });
    let mut cmd = foodpipe(&["doctor", "--topic", &topic]);
    cmd.env("DATABASE_URL", &db.url)
        .env("KAFKA_BOOTSTRAP_SERVERS", &slow);
    let out = run_ok(cmd).await;
    assert!(
        out.contains(&format!("ok   bootstrap {slow} answered")) && !out.contains("FAIL"),
        "{out}"
    );
    relay.abort();
    db.drop_db().await;
}
