use super::*;

fn owner(partition: i32, next: i64, who: Option<&str>) -> PartitionOwner {
    PartitionOwner {
        partition,
        owner: who.map(str::to_owned),
        epoch: 1,
        next_offset: next,
        updated_at: Utc::now(),
        stopped_error: None,
    }
}

fn member(id: &str, silent: f64) -> MemberRow {
    MemberRow {
        member_id: id.to_owned(),
        host: "h".to_owned(),
        pid: 1,
        started_at: Utc::now(),
        silent_secs: silent,
        metrics_addr: None,
        state: "stable".to_owned(),
    }
}

fn offsets(ends: &[i64]) -> Vec<PartitionOffsets> {
    ends.iter()
        .enumerate()
        .map(|(p, &latest)| PartitionOffsets {
            partition: p as i32,
            earliest: 0,
            latest,
        })
        .collect()
}

fn reading(ends: &[i64], db: DbReading) -> Reading {
    Reading {
        broker: Ok(offsets(ends)),
        db: Ok(db),
        at: Utc::now(),
    }
}

/// Rates come from how far stored offsets and log ends moved between
/// two readings; lag is log end minus stored offset.
#[test]
fn rates_and_lag_come_from_consecutive_readings() {
    let mut t = Tracker::new("t", "g", Judgement::default());
    let db = |a, b| DbReading {
        owners: vec![owner(0, a, Some("m")), owner(1, b, Some("m"))],
        members: vec![member("m", 0.5)],
        ..DbReading::default()
    };
    let first = t.update(reading(&[100, 50], db(10, 50)), Duration::ZERO);
    assert_eq!(first.consumed_rate, 0.0, "no rate from one reading");
    assert_eq!(first.total_lag, 90);
    assert_eq!(first.partitions[0].state, PartitionState::Lagging);
    assert_eq!(first.partitions[1].state, PartitionState::Ok);
    let second = t.update(reading(&[120, 50], db(30, 50)), Duration::from_secs(2));
    assert_eq!(second.partitions[0].rate, 10.0);
    assert_eq!(second.consumed_rate, 10.0);
    assert_eq!(second.produced_rate, 10.0);
    assert_eq!(second.partitions[0].history, vec![10.0]);
    assert_eq!(second.partitions[0].lag, Some(90));
    assert_eq!(second.members[0].owned, 2);
}

/// A partition with lag is stalled when its owner is not live, or when
/// its offset has not moved for the stall window; stopped wins.
#[test]
fn states_follow_owner_liveness_and_progress() {
    let judgement = Judgement {
        stall_after: Duration::from_secs(5),
        session_timeout: Duration::from_secs(10),
    };
    let mut t = Tracker::new("t", "g", judgement);
    let mut stopped = owner(2, 0, Some("live"));
    stopped.stopped_error = Some("corrupt batch".to_owned());
    let db = DbReading {
        owners: vec![
            owner(0, 0, Some("live")),
            owner(1, 0, Some("dead")),
            stopped,
        ],
        members: vec![member("live", 1.0), member("dead", 30.0)],
        ..DbReading::default()
    };
    let s = t.update(reading(&[5, 5, 5], db.clone()), Duration::ZERO);
    let states: Vec<_> = s.partitions.iter().map(|p| p.state).collect();
    assert_eq!(
        states,
        [
            PartitionState::Lagging,
            PartitionState::Stalled,
            PartitionState::Stopped
        ]
    );
    let s = t.update(reading(&[5, 5, 5], db), Duration::from_secs(6));
    assert_eq!(s.partitions[0].state, PartitionState::Stalled);
    assert!(!s.members[1].live);
}

/// A failed side keeps its last good values and raises a banner; the
/// other side still updates.
#[test]
fn a_failing_side_is_a_banner_not_a_blank() {
    let mut t = Tracker::new("t", "g", Judgement::default());
    let db = DbReading {
        owners: vec![owner(0, 3, None)],
        ..DbReading::default()
    };
    t.update(reading(&[10], db.clone()), Duration::ZERO);
    let s = t.update(
        Reading {
            broker: Err("cannot reach any bootstrap server".to_owned()),
            db: Ok(db),
            at: Utc::now(),
        },
        Duration::from_secs(1),
    );
    assert_eq!(s.banners.len(), 1);
    assert!(s.banners[0].starts_with("broker: cannot reach"), "{s:?}");
    assert_eq!(s.partitions[0].log_end, Some(10), "last known log end kept");
    let s = t.update(
        Reading {
            broker: Ok(offsets(&[12])),
            db: Err("connection refused".to_owned()),
            at: Utc::now(),
        },
        Duration::from_secs(2),
    );
    assert!(s.banners[0].starts_with("PostgreSQL: connection refused"));
    assert_eq!(s.partitions[0].stored, Some(3));
    assert_eq!(s.partitions[0].log_end, Some(12));
}

/// Joins, leaves, generation bumps and partitions changing hands each
/// become an event line: newest reading first, in reading order within one.
#[test]
fn rebalances_are_logged() {
    let mut t = Tracker::new("t", "g", Judgement::default());
    let before = DbReading {
        owners: vec![owner(0, 0, Some("a")), owner(1, 0, Some("a"))],
        members: vec![member("a", 0.0)],
        generation: 1,
        ..DbReading::default()
    };
    let after = DbReading {
        owners: vec![owner(0, 0, Some("a")), owner(1, 0, Some("b"))],
        members: vec![member("a", 0.0), member("b", 0.0)],
        generation: 2,
        ..DbReading::default()
    };
    let s = t.update(reading(&[0, 0], before), Duration::ZERO);
    assert!(s.events.is_empty());
    let s = t.update(reading(&[0, 0], after), Duration::from_secs(1));
    let events: Vec<String> = s
        .events
        .iter()
        .map(|e| {
            e.split_once(' ')
                .map(|(_, rest)| rest.to_owned())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        events,
        ["generation 1 -> 2", "b joined", "partition 1 a -> b"]
    );
}

/// The explorer's steps are Kafka's: murmur2, sign bit cleared, modulo.
#[test]
fn key_placement_steps() {
    // Kafka's own test vector: murmur2("21") = -973932308.
    let k = KeyPlacement::of(b"21", 6).expect("partitions");
    assert_eq!(k.murmur2, -973_932_308);
    assert_eq!(k.positive, -973_932_308 & 0x7fff_ffff);
    assert_eq!(k.partition, (k.positive as u32) % 6);
    let six = std::num::NonZeroU32::new(6).expect("non-zero");
    assert_eq!(k.partition, partition::partition_for_key(b"21", six));
    assert_eq!(KeyPlacement::of(b"21", 0), None);
}
