//! The consumer's fetch path alone, no database: a fetch-only drain of
//! every partition of a topic at once, against librdkafka reading the same
//! topic (`scripts/librdkafka_drain.py`).
//!
//! `kafka::TopicFetcher::fetch_many`, the call `consume`'s fetcher makes:
//! one Fetch for all partitions of a leader, 1 MiB per partition
//! (`--fetch-max-bytes`), no wait while records remain; every record of
//! every answer turned into a `SourceRecord` as `consume` does
//! (`pipeline::consume::decode`), then dropped. From offset 0 to the log end
//! (ListOffsets at the start, or the answers' high watermark if higher).
//!
//! `BENCH_BOOTSTRAP=host:port BENCH_TOPIC=topic cargo bench --bench drain`;
//! prints one JSON line: {"records", "seconds", "cpu_seconds"} (this
//! process's CPU over the drain).

mod common;

use std::time::{Duration, Instant};

const PARTITION_BYTES: i32 = 1024 * 1024;
const MAX_RECORD_BYTES: usize = 1024 * 1024;

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (no libc).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

fn main() {
    let bootstrap = std::env::var("BENCH_BOOTSTRAP").expect("BENCH_BOOTSTRAP");
    let topic = std::env::var("BENCH_TOPIC").expect("BENCH_TOPIC");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (records, seconds, cpu) = runtime.block_on(async {
        let client = kafka::connect(&kafka::KafkaConfig {
            bootstrap_servers: kafka::parse_bootstrap_list(&bootstrap),
            ..kafka::KafkaConfig::default()
        })
        .await
        .expect("connect");
        // Where to stop: the log ends ListOffsets gives, raised to the high
        // watermark every answer brings (Tansu's memory:// store answers
        // ListOffsets with the last batch's base offset + 1).
        let mut ends: Vec<(i32, i64)> = kafka::TopicOffsets::new(&client, &topic)
            .await
            .expect("topic")
            .read()
            .await
            .expect("offsets")
            .into_iter()
            .map(|p| (p.partition, p.latest))
            .collect();
        let fetcher = kafka::TopicFetcher::new(&client, &topic, ends.iter().map(|(p, _)| *p))
            .await
            .expect("fetcher");
        let mut at: Vec<i64> = vec![0; ends.len()];
        let mut records = 0usize;
        let cpu = cpu_seconds();
        let started = Instant::now();
        loop {
            let requests: Vec<(i32, i64, i32)> = ends
                .iter()
                .zip(&at)
                .filter(|((_, end), offset)| *offset < end)
                .map(|((p, _), offset)| (*p, *offset, PARTITION_BYTES))
                .collect();
            if requests.is_empty() {
                break;
            }
            let answers = fetcher
                .fetch_many(&requests, None, Duration::from_millis(0))
                .await;
            for (partition, answer) in answers {
                let fetched = answer.expect("fetch");
                let i = ends
                    .iter()
                    .position(|(p, _)| *p == partition)
                    .expect("asked");
                at[i] = at[i].max(fetched.next_offset);
                ends[i].1 = ends[i].1.max(fetched.high_watermark);
                for r in fetched.records {
                    std::hint::black_box(pipeline::consume::decode(r, MAX_RECORD_BYTES));
                    records += 1;
                }
            }
        }
        (
            records,
            started.elapsed().as_secs_f64(),
            cpu_seconds() - cpu,
        )
    });
    println!("{{\"records\": {records}, \"seconds\": {seconds:.6}, \"cpu_seconds\": {cpu:.3}}}");
}
