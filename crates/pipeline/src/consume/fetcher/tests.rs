use super::*;

/// A corrupt batch skipped from a position inside it: the skip batch starts at the position (the worker's stored offset), ends past the batch or at the target, and its dead letter sits at the position naming the whole range.
#[test]
fn a_corrupt_batch_is_skipped_from_the_fetched_position() {
    let config = ConsumeConfig {
        on_corrupt_batch: super::super::OnCorruptBatch::Skip,
        ..ConsumeConfig::default()
    };
    let corrupt = kafka::CorruptBatch {
        first_offset: 10,
        last_offset: Some(13),
        raw: vec![1, 2, 3],
        error: "bad".to_owned(),
    };
    let at = |from_offset, target| Position {
        from_offset,
        high_watermark: 20,
        target,
    };
    let Delivery::Batch(b) = corrupt_delivery(&config, 0, corrupt.clone(), at(12, None)) else {
        panic!("skipped");
    };
    assert_eq!(
        (b.from_offset, b.next_offset, b.high_watermark),
        (12, 14, 20)
    );
    assert_eq!(b.records[0].offset, 12);
    let message = &b.records[0]
        .event
        .as_ref()
        .expect_err("a dead letter")
        .message;
    assert!(message.contains("10..=13"), "{message}");
    let Delivery::Batch(b) = corrupt_delivery(&config, 0, corrupt.clone(), at(11, Some(13))) else {
        panic!("skipped");
    };
    assert_eq!(
        (b.from_offset, b.next_offset),
        (11, 13),
        "never past the target"
    );
    assert!(matches!(
        corrupt_delivery(&config, 0, corrupt, at(14, None)),
        Delivery::Corrupt(_)
    ));
}

/// Whichever partitions have room, the one served longest ago leads the round, so none starves behind busier ones.
#[test]
fn the_partition_waiting_longest_leads() {
    let mut served = BTreeMap::new();
    // Partitions 0 and 2 alternate having room; 1 always has room.
    // With a rotation by round number, 1 was always second.
    for round in 1..=10u64 {
        let mut ready = if round % 2 == 0 {
            vec![0, 1]
        } else {
            vec![1, 2]
        };
        least_recently_served_first(&mut ready, &served);
        // The broker serves only the first partition of a round.
        served.insert(ready[0], round);
    }
    assert!(served.get(&1).is_some_and(|r| *r >= 8), "{served:?}");
    let mut ready = vec![2, 0, 1];
    let served: BTreeMap<i32, u64> = [(0, 5), (1, 3)].into_iter().collect();
    least_recently_served_first(&mut ready, &served);
    assert_eq!(ready, vec![2, 1, 0], "never served, then oldest");
}
