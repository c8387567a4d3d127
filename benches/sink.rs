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
//! Needs the stack of `make up`; `FOODPIPE_TEST_DATABASE_URL` names a role
//! that may create databases (default kafka_user on 127.0.0.1:5432).

mod common;

use std::time::Instant;

use common::{PARTITIONS, psql};
use store::{Store, StoreConfig};

fn main() {
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

async fn run(url: &str, events: usize) -> (f64, f64, u64) {
    let store = Store::connect(&StoreConfig {
        database_url: url.to_owned(),
        pool_size: PARTITIONS as usize + 1,
        ..StoreConfig::default()
    })
    .await
    .expect("connect");
    store.migrate().await.expect("migrate");

    let batches = std::sync::Arc::new(common::batches(events));
    let (sink_secs, _) = common::fold(&store, &batches).await;

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
    (
        events as f64 / sink_secs,
        events as f64 / copy_secs,
        csv_bytes,
    )
}
