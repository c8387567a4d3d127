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

use std::process::Command;
use std::time::Instant;

use events::generator::{Generator, GeneratorConfig};
use store::{Batch, SourceRecord, Store, StoreConfig};

const PARTITIONS: u32 = 3;
const PARTITION_COUNT: std::num::NonZeroU32 =
    std::num::NonZeroU32::new(PARTITIONS).expect("non-zero");
const BATCH_BYTES: usize = 1024 * 1024;

fn admin_url() -> String {
    std::env::var("FOODPIPE_TEST_DATABASE_URL").unwrap_or_else(|_| {
        "postgres://kafka_user:kafka_password@127.0.0.1:5432/food_orders".to_owned()
    })
}

fn psql(url: &str, command: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qtA", "-c", command])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn main() {
    // `cargo bench` passes `--bench`; take N from the environment instead.
    let events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let name = format!(
        "fp_bench_sinkonly_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    let admin = admin_url();
    psql(&admin, &format!("CREATE DATABASE {name}"));
    let url = format!(
        "{}/{name}",
        admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin)
    );

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let result = runtime.block_on(run(&url, events));
    psql(
        &admin,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    );
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

    // Records per partition, decoded, cut into ~1 MiB batches.
    let mut per_partition: Vec<Vec<Vec<SourceRecord>>> =
        vec![vec![Vec::new()]; PARTITIONS as usize];
    let mut sizes = vec![0usize; PARTITIONS as usize];
    let mut offsets = vec![0i64; PARTITIONS as usize];
    let generator = Generator::new(GeneratorConfig {
        seed: 11,
        ..GeneratorConfig::default()
    });
    for event in generator.take(events) {
        let key = event.customer_id.clone().into_bytes();
        let p = partition::partition_for_key(&key, PARTITION_COUNT) as usize;
        let value = event.to_json();
        if sizes[p] + value.len() > BATCH_BYTES {
            per_partition[p].push(Vec::new());
            sizes[p] = 0;
        }
        sizes[p] += value.len();
        let record = SourceRecord {
            offset: offsets[p],
            timestamp: event.occurred_at,
            key: Some(key),
            event: events::decode(Some(&value)),
            value: Some(value),
            headers: Vec::new(),
        };
        offsets[p] += 1;
        per_partition[p].last_mut().expect("a batch").push(record);
    }
    for p in 0..PARTITIONS as i32 {
        store
            .init_offset("bench", "bench", p, 0)
            .await
            .expect("offset row");
    }

    let started = Instant::now();
    let mut writers = Vec::new();
    for (p, batches) in per_partition.into_iter().enumerate() {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut from = 0i64;
            for records in batches {
                let next = from + records.len() as i64;
                let batch = Batch {
                    group: "bench",
                    topic: "bench",
                    partition: p as i32,
                    from_offset: from,
                    next_offset: next,
                    records: &records,
                    incarnation: 0,
                    lease: None,
                };
                store.apply_batch(&batch).await.expect("apply");
                from = next;
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let sink_secs = started.elapsed().as_secs_f64();

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
