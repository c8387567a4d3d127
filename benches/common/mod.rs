//! What the PostgreSQL benches share: a database of their own, generated
//! events cut into ~1 MiB batches per partition, and the fold of them with
//! `Store::apply_batch`, one writer per partition, as `consume` does.

// Each bench binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::process::Command;
use std::time::Instant;

use events::generator::{Generator, GeneratorConfig};
use store::{Batch, SourceRecord, Store};

pub const PARTITIONS: u32 = 3;
const PARTITION_COUNT: std::num::NonZeroU32 =
    std::num::NonZeroU32::new(PARTITIONS).expect("non-zero");
const BATCH_BYTES: usize = 1024 * 1024;

pub fn admin_url() -> String {
    std::env::var("FOODPIPE_TEST_DATABASE_URL").unwrap_or_else(|_| {
        "postgres://kafka_user:kafka_password@127.0.0.1:5432/food_orders".to_owned()
    })
}

pub fn psql(url: &str, command: &str) -> String {
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

/// Creates a database named `fp_bench_<what>_<time>`; returns its name and URL.
pub fn create_database(what: &str) -> (String, String) {
    let name = format!(
        "fp_bench_{what}_{}",
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
    (name, url)
}

pub fn drop_database(name: &str) {
    if std::env::var_os("BENCH_KEEP_DB").is_some() {
        eprintln!("kept database {name} (BENCH_KEEP_DB)");
        return;
    }
    psql(
        &admin_url(),
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    );
}

/// `BENCH_EVENTS` from the environment (`cargo bench` passes `--bench`).
pub fn events_from_env(default: usize) -> usize {
    std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `events` generated events (seed 11), keyed by customer, decoded and cut
/// into ~1 MiB batches per partition.
pub fn batches(events: usize) -> Vec<Vec<Vec<SourceRecord>>> {
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
    per_partition
}

/// Seconds each projection's apply took, summed over the batches.
pub type ProjectionSeconds = std::collections::BTreeMap<String, f64>;

/// Folds `batches` into `store` (group and topic `bench`), one writer per
/// partition at once; returns the seconds it took and the time each
/// projection's apply took in all.
pub async fn fold(
    store: &Store,
    batches: &std::sync::Arc<Vec<Vec<Vec<SourceRecord>>>>,
) -> (f64, ProjectionSeconds) {
    fold_range(store, batches, 0..usize::MAX).await
}

/// Like [`fold`], for the batches of each partition whose index is in
/// `range` (a run may fold a stream in parts, alternating with another).
pub async fn fold_range(
    store: &Store,
    batches: &std::sync::Arc<Vec<Vec<Vec<SourceRecord>>>>,
    range: std::ops::Range<usize>,
) -> (f64, ProjectionSeconds) {
    if range.start == 0 {
        for p in 0..batches.len() as i32 {
            store
                .init_offset("bench", "bench", p, 0)
                .await
                .expect("offset row");
        }
    }
    let started = Instant::now();
    let mut writers = Vec::new();
    for p in 0..batches.len() {
        let (store, batches, range) = (store.clone(), batches.clone(), range.clone());
        writers.push(tokio::spawn(async move {
            let mut times = ProjectionSeconds::new();
            let mut from: i64 = batches[p][..range.start.min(batches[p].len())]
                .iter()
                .map(|b| b.len() as i64)
                .sum();
            let end = range.end.min(batches[p].len());
            for records in &batches[p][range.start.min(end)..end] {
                let next = from + records.len() as i64;
                let batch = Batch {
                    group: "bench",
                    topic: "bench",
                    partition: p as i32,
                    from_offset: from,
                    next_offset: next,
                    records,
                    incarnation: 0,
                    lease: None,
                };
                let applied = store.apply_batch(&batch).await.expect("apply");
                for (name, took) in applied.projection_times {
                    *times.entry(name).or_default() += took.as_secs_f64();
                }
                from = next;
            }
            times
        }));
    }
    let mut times = ProjectionSeconds::new();
    for w in writers {
        for (name, t) in w.await.expect("writer") {
            *times.entry(name).or_default() += t;
        }
    }
    (started.elapsed().as_secs_f64(), times)
}
