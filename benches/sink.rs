//! The PostgreSQL sink alone, against `psql \copy` of the same rows.
//!
//! `make bench-sink` runs this after the end-to-end measurement. Kafka is
//! left out on purpose: N generated events are decoded and grouped into
//! ~1 MiB batches per partition in memory first, then three partition
//! writers apply them concurrently with `Store::apply_batch` (history +
//! view + offset, one transaction per batch), as `consume` does. The
//! history rows that result are exported to CSV and loaded again with
//! `psql \copy` into a copy of `order_events` with the same indexes.
//!
//! With `BENCH_CAPTURE=FILE` (Fetch answers captured from a broker by
//! `scripts/bench_capture.py`), the records are not generated: the captured
//! bytes go through the path `consume` takes after the socket (rskafka's
//! `decode_record_batches`, `kafka::read_committed`, consume's decode) on
//! one decoding task, handed to the three partition writers, one batch per
//! captured answer: the fold's own ceiling with no broker. The decode alone
//! is timed first, on its own.
//!
//! Needs the stack of `make up`; `FOODPIPE_TEST_DATABASE_URL` names a role
//! that may create databases (default kafka_user on 127.0.0.1:5432).

mod common;

use std::time::Instant;

use common::{PARTITIONS, psql};
use store::{Store, StoreConfig};

/// consume's default --max-record-bytes.
const MAX_RECORD_BYTES: usize = 1024 * 1024;

fn main() {
    if let Ok(path) = std::env::var("BENCH_CAPTURE") {
        return replay_main(&path);
    }
    let events = common::events_from_env(200_000);
    let (name, url) = common::create_database("sinkonly");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let result = runtime.block_on(run(&url, events));
    common::drop_database(&name);
    let (sink_rate, copy_rate, csv_bytes) = result;
    println!(
        "{events} events, {:.1} MB of history CSV, {PARTITIONS} partitions, batches of ~1 MiB",
        csv_bytes as f64 / 1e6
    );
    println!();
    println!("| writer | rows/s | ratio |");
    println!("|---|---|---|");
    println!("| psql \\copy into a copy of order_events | {copy_rate:.0} | 1.00x |");
    println!(
        "| foodpipe Store::apply_batch (history + view + offsets) | {sink_rate:.0} | {:.2}x |",
        sink_rate / copy_rate
    );
}

fn replay_main(path: &str) {
    let answers = common::load_capture(path);
    let wire: usize = answers.iter().map(|a| a.records.len()).sum();
    // The decode alone, on one thread, as the fetcher task does it.
    let started = Instant::now();
    let mut decoded = 0usize;
    for a in &answers {
        decoded += std::hint::black_box(common::decode_answer(a, MAX_RECORD_BYTES))
            .2
            .len();
    }
    let decode_secs = started.elapsed().as_secs_f64();
    let (name, url) = common::create_database("replay");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let answers = std::sync::Arc::new(answers);
    let count = answers.len();
    let result = runtime.block_on(async {
        let store = connect(&url).await;
        let (secs, events) = common::replay(&store, answers, MAX_RECORD_BYTES).await;
        assert_eq!(events, decoded, "every decoded record applied");
        let (copy_rate, csv_bytes) = copy_history(&url, events);
        (events as f64 / secs, copy_rate, csv_bytes)
    });
    common::drop_database(&name);
    let (fold_rate, copy_rate, csv_bytes) = result;
    println!(
        "{decoded} events in {count} captured fetch answers ({:.1} MB of record batches), {:.1} MB of history CSV",
        wire as f64 / 1e6,
        csv_bytes as f64 / 1e6
    );
    println!();
    println!("| writer | rows/s | ratio |");
    println!("|---|---|---|");
    println!("| psql \\copy into a copy of order_events | {copy_rate:.0} | 1.00x |");
    println!(
        "| foodpipe broker-free fold (captured fetch answers -> decode -> apply_batch) | {fold_rate:.0} | {:.2}x |",
        fold_rate / copy_rate
    );
    println!(
        "| decode alone, one thread (decode_record_batches + read_committed + consume's decode) | {:.0} | {:.2}x |",
        decoded as f64 / decode_secs,
        decoded as f64 / decode_secs / copy_rate
    );
}

async fn connect(url: &str) -> Store {
    let store = Store::connect(&StoreConfig {
        database_url: url.to_owned(),
        pool_size: PARTITIONS as usize + 1,
        ..StoreConfig::default()
    })
    .await
    .expect("connect");
    store.migrate().await.expect("migrate");
    store
}

async fn run(url: &str, events: usize) -> (f64, f64, u64) {
    let store = connect(url).await;
    let batches = std::sync::Arc::new(common::batches(events));
    let (sink_secs, _) = common::fold(&store, &batches).await;
    let (copy_rate, csv_bytes) = copy_history(url, events);
    (events as f64 / sink_secs, copy_rate, csv_bytes)
}

/// Exports the history rows to CSV and times `psql \copy` of them into a
/// copy of `order_events`; returns (rows/s, CSV bytes).
fn copy_history(url: &str, events: usize) -> (f64, u64) {
    let dir = std::env::temp_dir().join(format!("foodpipe-sink-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let csv = dir.join("history.csv");
    let csv = csv.display();
    psql(
        url,
        &format!("\\copy (SELECT * FROM order_events) TO '{csv}' CSV"),
    );
    psql(
        url,
        "CREATE TABLE order_events_copy (LIKE order_events INCLUDING ALL)",
    );
    let started = Instant::now();
    psql(url, &format!("\\copy order_events_copy FROM '{csv}' CSV"));
    let copy_secs = started.elapsed().as_secs_f64();
    let csv_bytes = std::fs::metadata(dir.join("history.csv"))
        .map(|m| m.len())
        .unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    let rows: i64 = psql(url, "SELECT count(*) FROM order_events_copy")
        .parse()
        .expect("count");
    assert_eq!(rows as usize, events, "every event written once");
    (events as f64 / copy_secs, csv_bytes)
}
