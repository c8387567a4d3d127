//! Wrong addresses give one clear line and a non-zero exit, quickly.

use std::time::Duration;

use crate::harness::{foodpipe, random_topic_name, run_within};

/// The one non-empty stderr line of a failed run, checked for panics.
fn single_error_line(output: &std::process::Output) -> String {
    assert!(!output.status.success(), "must fail: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr, got:\n{stderr}");
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    assert!(!stderr.contains("backtrace"), "no backtrace: {stderr}");
    lines[0].to_owned()
}

/// Producing to an unreachable bootstrap list fails within 15 s naming every address.
#[tokio::test]
async fn unreachable_bootstrap_is_one_clear_line() {
    let mut cmd = foodpipe(&["produce", "--count", "1", "--topic", &random_topic_name()]);
    cmd.env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1,127.0.0.1:2");
    let output = run_within(cmd, Duration::from_secs(15)).await;
    let line = single_error_line(&output);
    assert!(line.starts_with("error: "), "{line}");
    assert!(
        line.contains("bootstrap"),
        "says it is the bootstrap list: {line}"
    );
    assert!(
        line.contains("127.0.0.1:1") && line.contains("127.0.0.1:2"),
        "names the servers: {line}"
    );
}

/// The one error line of `consume` run with `database_url`, within 15 s.
async fn consume_error_with_database_url(database_url: &str) -> String {
    let mut cmd = foodpipe(&[
        "consume",
        "--until-caught-up",
        "--topic",
        &random_topic_name(),
    ]);
    cmd.env("DATABASE_URL", database_url);
    let output = run_within(cmd, Duration::from_secs(15)).await;
    single_error_line(&output)
}

/// Consuming with a DATABASE_URL whose server is unreachable fails within 15 s, naming it and hiding the password.
#[tokio::test]
async fn unreachable_database_is_one_clear_line() {
    let line = consume_error_with_database_url(
        "postgres://kafka_user:hunter2secret@127.0.0.1:1/food_orders",
    )
    .await;
    assert!(line.contains("PostgreSQL"), "says it is PostgreSQL: {line}");
    assert!(
        line.contains("kafka_user@127.0.0.1:1/food_orders"),
        "names the target: {line}"
    );
    assert!(
        !line.contains("hunter2secret"),
        "never prints the password: {line}"
    );
}

/// A DATABASE_URL that is not a URL at all is refused with what to write instead.
#[tokio::test]
async fn malformed_database_url_is_one_clear_line() {
    let line =
        consume_error_with_database_url("postgres://kafka_user:pw@127.0.0.1:notaport/db").await;
    assert!(line.contains("invalid DATABASE_URL"), "{line}");
    assert!(
        line.contains("postgres://user:password@host:port/database"),
        "says the form: {line}"
    );
}

/// A count of zero is a usage error (exit 2), not a run that produces nothing.
#[tokio::test]
async fn zero_count_is_a_usage_error() {
    let output = run_within(
        foodpipe(&["produce", "--count", "0"]),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--count"), "{stderr}");
}
