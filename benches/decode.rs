//! Record-batch decode throughput per codec, on realistic order events: the
//! work the fetch path does for every answer (CRC, decompression, records,
//! headers), through the patched rskafka's `decode_record_batches`.
//!
//! One fetch answer of 10 batches x 500 generated events (keys, JSON
//! values, one header each), encoded byte for byte by
//! `kafka::record_batch` with each codec. Throughput is in uncompressed
//! key+value bytes and in records. Run with `make bench` or
//! `cargo bench --bench decode`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use events::generator::{Generator, GeneratorConfig};
use kafka::record_batch::{BatchSpec, Codec, RecordSpec};

const BATCHES: usize = 10;
const PER_BATCH: usize = 500;

fn answer(codec: Codec, events: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (b, chunk) in events.chunks(PER_BATCH).enumerate() {
        let records = chunk
            .iter()
            .enumerate()
            .map(|(i, (k, v))| RecordSpec {
                offset_delta: i as i32,
                timestamp_delta: i as i64,
                key: Some(k.clone()),
                value: Some(v.clone()),
                headers: vec![("source".to_owned(), b"bench".to_vec())],
            })
            .collect();
        out.extend(
            BatchSpec {
                base_offset: (b * PER_BATCH) as i64,
                ..BatchSpec::plain(codec, records)
            }
            .encode(),
        );
    }
    out
}

fn decode(c: &mut Criterion) {
    let events: Vec<(Vec<u8>, Vec<u8>)> = Generator::new(GeneratorConfig {
        seed: 7,
        ..GeneratorConfig::default()
    })
    .take(BATCHES * PER_BATCH)
    .map(|e| (e.customer_id.clone().into_bytes(), e.to_json()))
    .collect();
    let raw_bytes: usize = events.iter().map(|(k, v)| k.len() + v.len()).sum();

    let mut group = c.benchmark_group("decode_fetch_answer");
    group.throughput(Throughput::Bytes(raw_bytes as u64));
    for (name, codec) in [
        ("none", Codec::None),
        ("gzip", Codec::Gzip),
        ("snappy", Codec::Snappy),
        ("lz4", Codec::Lz4),
        ("zstd", Codec::Zstd),
    ] {
        let bytes = answer(codec, &events);
        let (batches, corrupt) = kafka::decode_record_batches(&bytes);
        assert!(corrupt.is_none() && batches.len() == BATCHES, "{name}");
        eprintln!(
            "{name}: {} records, {raw_bytes} key+value bytes in {} bytes on the wire ({:.1}%)",
            BATCHES * PER_BATCH,
            bytes.len(),
            100.0 * bytes.len() as f64 / raw_bytes as f64
        );
        group.bench_with_input(BenchmarkId::from_parameter(name), &bytes, |b, bytes| {
            b.iter(|| kafka::decode_record_batches(black_box(bytes)));
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
