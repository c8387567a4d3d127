//! Kafka's default partitioner, bit for bit.
//!
//! A keyed record goes to `toPositive(murmur2(key)) % partitions`, exactly as
//! the Java client's default partitioner (and librdkafka's `murmur2`
//! partitioner) computes it, so foodpipe and any Java, librdkafka or
//! kafka-python producer agree on where a customer's events live. That
//! agreement is what keeps all events of one customer, and so of one order,
//! in one partition and therefore in order.
//!
//! Records without a key are spread round-robin by [`RoundRobin`]: each call
//! takes the next partition. Kafka 2.4+ instead uses a "sticky" partition
//! that changes only when a batch is full; foodpipe never produces keyless
//! order events, so the simpler and easier-to-explain round-robin is used for
//! keyless records from `foodpipe send`.
//!
//! # References
//!
//! - Kafka `clients/src/main/java/org/apache/kafka/common/utils/Utils.java`:
//!   `murmur2(byte[])` and `toPositive(int)`.
//! - Kafka `BuiltInPartitioner.partitionForKey`:
//!   `Utils.toPositive(Utils.murmur2(serializedKey)) % numPartitions`.
//! - Kafka `clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java`
//!   `testMurmur2`: the known answers in this crate's tests.
//! - librdkafka `rdmurmur2.c` and its `murmur2` partitioner, which documents
//!   itself as Java-compatible.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Seed of Kafka's murmur2, `0x9747b28c` in `Utils.murmur2`.
const SEED: u32 = 0x9747_b28c;
/// Multiplier of MurmurHash2.
const M: u32 = 0x5bd1_e995;
/// Shift of MurmurHash2.
const R: u32 = 24;

/// Kafka's 32-bit murmur2 hash of `data`, as the signed `int` Java returns.
///
/// Java's `int` arithmetic wraps, which is why every multiply here is a
/// `wrapping_mul` on `u32`; `>>>` (unsigned shift) is a plain `>>` on `u32`.
pub fn murmur2(data: &[u8]) -> i32 {
    let length = data.len();
    // Java computes `seed ^ length` with `length` as an int.
    let mut h: u32 = SEED ^ (length as u32);

    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }

    // The 1-3 trailing bytes, mirroring Java's fall-through `switch`.
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }

    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit.
///
/// This is deliberately not `abs()`: `abs(i32::MIN)` overflows, and Kafka
/// masks rather than negates, so the two disagree for every negative hash.
pub fn to_positive(n: i32) -> i32 {
    n & 0x7fff_ffff
}

/// The partition Kafka's default partitioner picks for `key` among
/// `partitions` partitions. The count is non-zero by type: a topic that
/// metadata lists with no partition is an error where the count is read,
/// not a division by zero here.
pub fn partition_for_key(key: &[u8], partitions: NonZeroU32) -> u32 {
    // `to_positive` yields 0..=i32::MAX, so the cast to u32 is lossless.
    (to_positive(murmur2(key)) as u32) % partitions
}

/// Round-robin choice for records without a key.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The next partition among `partitions`, cycling 0, 1, .., n-1, 0, ...
    pub fn next(&self, partitions: NonZeroU32) -> u32 {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // The remainder is below `partitions`, a u32.
        (n % partitions.get() as usize) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Kafka's own known answers (`UtilsTest.testMurmur2`) hash exactly the same here.
    #[test]
    fn murmur2_matches_kafka_utils_test_vectors() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            // Java writes this one as `new byte[]{'a', 'b', 'c'}`.
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key),
                *expected,
                "murmur2({:?})",
                String::from_utf8_lossy(key)
            );
        }
    }

    /// `toPositive` masks the sign bit instead of negating, as Java does.
    #[test]
    fn to_positive_masks_rather_than_negates() {
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(-1), i32::MAX);
        assert_eq!(to_positive(-973_932_308), 1_173_551_340);
        assert_eq!(to_positive(42), 42);
    }

    const THREE: NonZeroU32 = NonZeroU32::new(3).expect("non-zero");

    /// Round-robin visits every partition in turn.
    #[test]
    fn round_robin_cycles() {
        let rr = RoundRobin::default();
        let picks: Vec<u32> = (0..7).map(|_| rr.next(THREE)).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    /// Keys of any length from 0 to 64 bytes, so every tail case (1, 2, 3 bytes) is covered.
    fn arb_key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..=64)
    }

    fn arb_partitions() -> impl Strategy<Value = NonZeroU32> {
        (1u32..=1024).prop_filter_map("non-zero", NonZeroU32::new)
    }

    proptest! {
        /// The partition is always one of the topic's partitions.
        #[test]
        fn partition_is_in_range(key in arb_key(), n in arb_partitions()) {
            prop_assert!(partition_for_key(&key, n) < n.get());
        }

        /// The same key always lands in the same partition.
        #[test]
        fn partition_is_deterministic(key in arb_key(), n in arb_partitions()) {
            prop_assert_eq!(partition_for_key(&key, n), partition_for_key(&key.clone(), n));
        }

        /// `toPositive` never yields a negative number.
        #[test]
        fn to_positive_is_never_negative(x in any::<i32>()) {
            prop_assert!(to_positive(x) >= 0);
            // And it only ever clears the sign bit.
            prop_assert_eq!(to_positive(x) as u32, (x as u32) & 0x7fff_ffff);
        }

        /// Every trailing byte (tails of 1, 2 and 3 bytes) is mixed into the hash.
        #[test]
        fn tail_lengths_are_all_hashed(prefix in proptest::collection::vec(any::<u8>(), 0..16), tail in proptest::collection::vec(any::<u8>(), 1..=3)) {
            // Every step of murmur2 is a bijection of the state, so flipping
            // one input bit must change the hash; a dropped tail byte would not.
            let mut a = prefix.clone();
            a.extend_from_slice(&tail);
            let mut b = a.clone();
            let last = b.len() - 1;
            b[last] ^= 0x01;
            prop_assert_ne!(murmur2(&a), murmur2(&b));
        }
    }

    /// Many random keys spread evenly: max/min partition count stays within 1.15.
    #[test]
    fn distribution_is_even() {
        // A fixed xorshift stream makes the test repeatable without a
        // dependency: the partitioner crate has none by design.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let partitions = NonZeroU32::new(12).expect("non-zero");
        let mut counts = vec![0u32; partitions.get() as usize];
        for _ in 0..120_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let key = format!("CUST-{state:016x}");
            counts[partition_for_key(key.as_bytes(), partitions) as usize] += 1;
        }
        let max = *counts.iter().max().expect("non-empty");
        let min = *counts.iter().min().expect("non-empty");
        // Expected 10,000 each; binomial standard deviation is ~96, so a
        // 15% spread is far outside chance for a correct hash.
        assert!(
            f64::from(max) / f64::from(min) < 1.15,
            "uneven spread: {counts:?}"
        );
    }
}
