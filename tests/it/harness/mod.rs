//! Shared helpers: where the stack is, a fresh database per test, a random
//! topic per test, running the `foodpipe` binary, reading a topic back.
//!
//! - [`db`]: a database of a test's own, read-only roles, the store.
//! - [`broker`]: Kafka clients, private Tansu brokers, proxies, network cuts.
//! - [`topics`]: producing to, reading back and managing topics.
//! - [`members`]: `consume` processes: starting them, waiting for ownership
//!   and for them to catch up, stopping them; the group's stored state.
//! - [`oracle`]: the fold the database must hold, computed independently.

mod broker;
mod db;
mod members;
mod oracle;
mod topics;

pub use broker::*;
pub use db::*;
pub use members::*;
pub use oracle::*;
pub use topics::*;

use std::process::Output;
use std::time::Duration;

use tokio::process::Command;

/// The bootstrap list under test, as users set it.
pub fn bootstrap_servers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "localhost:9092".to_owned())
}

fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A topic name no other test uses.
pub fn random_topic_name() -> String {
    format!("it-{}", random_suffix())
}

/// A `foodpipe` command aimed at the stack under test, logging at defaults.
pub fn foodpipe(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_foodpipe"));
    cmd.args(args)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap_servers())
        .env_remove("RUST_LOG")
        .env_remove("DATABASE_URL")
        .env_remove("FOODPIPE_TOPIC")
        .env_remove("FOODPIPE_GROUP")
        .env_remove("FOODPIPE_SCHEMA")
        .env_remove("FOODPIPE_PROJECTIONS")
        // Many consumers run at once, each with the default metrics
        // address: they fall back to free ports, as on a user's host.
        .env_remove("FOODPIPE_METRICS_ADDR")
        .kill_on_drop(true);
    cmd
}

/// Runs a command to completion, failing the test if it takes over `limit`.
pub async fn run_within(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("foodpipe binary runs");
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(output) => output.expect("foodpipe output readable"),
        Err(_) => panic!("foodpipe did not exit within {limit:?}: {cmd:?}"),
    }
}

/// Runs a command that must succeed, returning its stdout.
pub async fn run_ok(cmd: Command) -> String {
    let output = run_within(cmd, Duration::from_secs(120)).await;
    assert!(
        output.status.success(),
        "foodpipe failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 stdout")
}

/// Asserts that a finished command exited with `code`, showing its
/// stderr if not.
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A script of `scripts/`.
pub fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Held by the tests that load the machine most (three members and a
/// producer under faults, 400 partitions), so that no two of them run at
/// once: on two cores, two of them side by side slow each other past their
/// own limits. Hold it for the whole test: `let _heavy = heavy().await;`.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}
