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

/// One Fetch answer of one partition as `scripts/bench_capture.py` wrote
/// it: the partition fields and the raw `records` bytes, as Tansu sent them.
#[derive(Debug)]
pub struct Captured {
    pub partition: i32,
    pub fetch_offset: i64,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub aborted: Vec<(i64, i64)>,
    pub records: Vec<u8>,
}

/// Reads a capture file (format in `scripts/bench_capture.py`).
pub fn load_capture(path: &str) -> Vec<Captured> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    assert!(data.starts_with(b"FPCAP1"), "{path} is not a capture");
    let mut at = 6;
    let mut take = |n: usize| -> Option<Vec<u8>> {
        let s = data.get(at..at + n)?.to_vec();
        at += n;
        Some(s)
    };
    let i32_at = |b: Option<Vec<u8>>| i32::from_be_bytes(b.expect("whole").try_into().expect("4"));
    let i64_at = |b: Option<Vec<u8>>| i64::from_be_bytes(b.expect("whole").try_into().expect("8"));
    let mut out = Vec::new();
    while let Some(p) = take(4) {
        let partition = i32_at(Some(p));
        let fetch_offset = i64_at(take(8));
        let high_watermark = i64_at(take(8));
        let last_stable_offset = i64_at(take(8));
        let aborted = (0..i32_at(take(4)))
            .map(|_| (i64_at(take(8)), i64_at(take(8))))
            .collect();
        let len = i32_at(take(4)) as usize;
        let records = take(len).expect("whole records");
        out.push(Captured {
            partition,
            fetch_offset,
            high_watermark,
            last_stable_offset,
            aborted,
            records,
        });
    }
    out
}

/// What `consume` does with one partition's Fetch answer, minus the
/// socket: rskafka's `decode_record_batches` (CRC, decompression, records;
/// as its `extract_fetch_detailed`), `kafka::read_committed`, then each
/// record turned into a `SourceRecord` by `pipeline::consume::decode`. Returns
/// (from offset, next offset, records).
pub fn decode_answer(c: &Captured, max_record_bytes: usize) -> (i64, i64, Vec<SourceRecord>) {
    let (from, next, fetched) = read_answer(c);
    let records = fetched
        .into_iter()
        .map(|r| pipeline::consume::decode(r, max_record_bytes))
        .collect();
    (from, next, records)
}

/// The fetcher's half of [`decode_answer`]: the records as fetched, not
/// decoded yet (consume's workers decode them).
pub fn read_answer(c: &Captured) -> (i64, i64, Vec<kafka::RecordAndOffset>) {
    let (batches, corrupt) = kafka::decode_record_batches(&c.records);
    assert!(corrupt.is_none(), "a captured batch does not decode");
    let detailed = kafka::FetchDetailed {
        batches,
        corrupt,
        high_watermark: c.high_watermark,
        last_stable_offset: Some(c.last_stable_offset),
        aborted_transactions: c
            .aborted
            .iter()
            .map(|&(producer_id, first_offset)| kafka::AbortedTransaction {
                producer_id,
                first_offset,
            })
            .collect(),
    };
    let fetched = kafka::read_committed(c.fetch_offset, detailed);
    (c.fetch_offset, fetched.next_offset, fetched.records)
}

/// The broker-free fold: `answers` (in capture order) read on one task, as
/// `consume`'s fetcher reads them (batches, CRC, decompression), handed to
/// one writer per partition through a channel of one batch (one applied,
/// one waiting: consume's read-ahead), which decodes its records, as
/// consume's workers do, and applies them with `Store::apply_batch`.
/// Returns (seconds, events).
pub async fn replay(
    store: &Store,
    answers: std::sync::Arc<Vec<Captured>>,
    max_record_bytes: usize,
) -> (f64, usize) {
    let mut partitions: Vec<i32> = answers.iter().map(|a| a.partition).collect();
    partitions.sort_unstable();
    partitions.dedup();
    for &p in &partitions {
        store
            .init_offset("bench", "bench", p, 0)
            .await
            .expect("offset row");
    }
    // Round by round, as the fetcher's rounds take every busy partition:
    // the i-th answer of each partition, then the (i+1)-th.
    let mut order: Vec<(usize, usize)> = Vec::new();
    let mut seen = std::collections::BTreeMap::<i32, usize>::new();
    for (i, a) in answers.iter().enumerate() {
        let n = seen.entry(a.partition).or_default();
        order.push((*n, i));
        *n += 1;
    }
    order.sort_unstable();

    let started = Instant::now();
    let mut senders = std::collections::BTreeMap::new();
    let mut writers = Vec::new();
    for &p in &partitions {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(i64, i64, Vec<kafka::RecordAndOffset>)>(1);
        senders.insert(p, tx);
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut events = 0usize;
            while let Some((from, next, fetched)) = rx.recv().await {
                let records: Vec<SourceRecord> = fetched
                    .into_iter()
                    .map(|r| pipeline::consume::decode(r, max_record_bytes))
                    .collect();
                let batch = Batch {
                    group: "bench",
                    topic: "bench",
                    partition: p,
                    from_offset: from,
                    next_offset: next,
                    records: &records,
                    incarnation: 0,
                    lease: None,
                };
                events += store.apply_batch(&batch).await.expect("apply").events;
            }
            events
        }));
    }
    let decoder = tokio::spawn(async move {
        for (_, i) in order {
            let a = &answers[i];
            senders[&a.partition]
                .send(read_answer(a))
                .await
                .expect("writer");
        }
    });
    decoder.await.expect("decoder");
    let mut events = 0;
    for w in writers {
        events += w.await.expect("writer");
    }
    (started.elapsed().as_secs_f64(), events)
}
