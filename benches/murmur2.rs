//! ns per key of Kafka's murmur2 partitioner for 8, 16 and 64-byte keys.
//! Run with `make bench` or `cargo bench --bench murmur2`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const TWELVE: std::num::NonZeroU32 = std::num::NonZeroU32::new(12).expect("non-zero");

fn murmur2(c: &mut Criterion) {
    let mut group = c.benchmark_group("partition_for_key");
    for len in [8usize, 16, 64] {
        let key: Vec<u8> = (0..len).map(|i| b'A' + (i % 26) as u8).collect();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(len), &key, |b, key| {
            b.iter(|| partition::partition_for_key(black_box(key), black_box(TWELVE)));
        });
    }
    group.finish();
}

criterion_group!(benches, murmur2);
criterion_main!(benches);
