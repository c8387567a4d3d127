//! Consumer groups on PostgreSQL with real processes: sharing, rebalancing
//! after a crash, fencing a paused owner, resets, and independent groups.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::harness::{
    TestDb, assert_db_is_fold_of_topic, bootstrap_servers, consume_until_caught_up, counts,
    group_reset, history_len, joined_member, owners, produce_events_to, random_topic_name,
    read_topic_raw, signal, spawn_consumer, stop_all, stored_offsets, wait_balanced,
    wait_caught_up, wait_owners,
};

const GROUP: &str = "order-processors";

/// A `consume` member with a 3 s session timeout (unless `extra` sets
/// one) and tiny fetches, so it is still busy while the test acts.
fn member(topic: &str, db: &TestDb, id: &str, extra: &[&str]) -> tokio::process::Child {
    let mut args = vec!["--member-id", id, "--fetch-max-bytes", "4096"];
    if !extra.contains(&"--session-timeout") {
        args.extend_from_slice(&["--session-timeout", "3s"]);
    }
    args.extend_from_slice(extra);
    spawn_consumer(topic, db, &args)
}

/// Three members over six partitions get two each; a SIGKILLed member's partitions move to the others within the session timeout, come back when it rejoins, and no event is lost or applied twice.
#[tokio::test]
async fn three_members_share_and_rebalance() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_to(&topic, 12_000, 61, 6).await;
    let a = member(&topic, &db, "m-a", &[]);
    let b = member(&topic, &db, "m-b", &[]);
    let mut c = member(&topic, &db, "m-c", &[]);
    wait_balanced(&db, &topic, Duration::from_secs(30), 3, 2).await;

    c.start_kill().expect("SIGKILL");
    let _ = c.wait().await;
    let moved = wait_owners(
        &db,
        &topic,
        Duration::from_secs(15),
        "moved to m-a and m-b",
        |o| {
            o.values()
                .all(|m| matches!(m.as_deref(), Some("m-a" | "m-b")))
                && counts(o).values().all(|n| *n == 3)
        },
    )
    .await;
    // Session timeout 3 s, heartbeat 1 s: a few seconds at most.
    assert!(moved < Duration::from_secs(10), "took {moved:?}");

    c = member(&topic, &db, "m-c", &[]);
    wait_balanced(&db, &topic, Duration::from_secs(30), 3, 2).await;

    // More events while the three share the topic, then a clean stop (each
    // leaves at once) and one member with big fetches to finish the rest.
    produce_events_to(&topic, 3_000, 62, 6).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_all(vec![a, b, c]).await;
    consume_until_caught_up(&topic, &db, &[]).await;
    wait_caught_up(&db, &topic, Duration::from_secs(30)).await;
    assert_db_is_fold_of_topic(&db, &topic, GROUP).await;
    db.drop_db().await;
}

/// A paused (SIGSTOP) owner loses its partition to another member, which commits; woken (SIGCONT), the paused one commits nothing under its old lease and gives the partition up.
#[tokio::test]
async fn paused_owner_is_fenced() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_to(&topic, 20_000, 63, 2).await;
    let a = member(&topic, &db, "zombie", &[]);
    let b = member(&topic, &db, "healthy", &[]);
    wait_balanced(&db, &topic, Duration::from_secs(30), 2, 1).await;
    let zombie_partition = *owners(&db, &topic)
        .await
        .iter()
        .find(|(_, m)| m.as_deref() == Some("zombie"))
        .expect("zombie owns one")
        .0;

    signal(&a, "STOP");
    wait_owners(&db, &topic, Duration::from_secs(20), "taken over", |o| {
        o.get(&zombie_partition).cloned().flatten().as_deref() == Some("healthy")
    })
    .await;
    // The new owner commits on it.
    let offset_of = |rows: Vec<tokio_postgres::Row>| -> i64 { rows[0].get(0) };
    let pg = db.client().await;
    let query = "SELECT next_offset FROM consumer_offsets WHERE topic = $1 AND partition = $2";
    let taken_at = offset_of(
        pg.query(query, &[&topic, &zombie_partition])
            .await
            .expect("offset"),
    );
    let started = tokio::time::Instant::now();
    while offset_of(
        pg.query(query, &[&topic, &zombie_partition])
            .await
            .expect("offset"),
    ) == taken_at
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the new owner commits"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    signal(&a, "CONT");
    tokio::time::sleep(Duration::from_secs(5)).await;
    signal(&a, "TERM");
    let zombie = a.wait_with_output().await.expect("zombie exits");
    let log = String::from_utf8_lossy(&zombie.stderr);
    assert!(
        log.contains("lease lost"),
        "the woken member's commit was refused and it gave the partition up:\n{log}"
    );
    stop_all(vec![b]).await;
    // Finish with one member and check nothing was lost or applied twice.
    consume_until_caught_up(&topic, &db, &[]).await;
    assert_db_is_fold_of_topic(&db, &topic, GROUP).await;
    db.drop_db().await;
}

/// A live owner's lease cannot be taken; once the owner is gone it can, and a commit under the superseded epoch is refused and writes nothing, even though the stored offset still matches.
#[tokio::test]
async fn stale_epoch_cannot_commit() {
    let db = TestDb::create().await;
    let store = db.migrated_store(None).await;
    let timeout = Duration::from_secs(10);
    let a_member = joined_member(&store, GROUP, "a", timeout).await;
    let a = store
        .take_lease(&a_member, "t", 0, timeout, Some(0))
        .await
        .expect("take")
        .expect("free");
    let b_member = joined_member(&store, GROUP, "b", timeout).await;
    // "a" is live: "b" cannot take its lease.
    let refused = store
        .take_lease(&b_member, "t", 0, timeout, Some(0))
        .await
        .expect("take");
    assert_eq!(refused, None, "a live owner's lease is never taken");
    // "a" leaves (its row goes, as after expiry): "b" takes over with the next epoch.
    db.client()
        .await
        .execute("DELETE FROM group_members WHERE member_id = 'a'", &[])
        .await
        .expect("a expires");
    let b = store
        .take_lease(&b_member, "t", 0, timeout, Some(0))
        .await
        .expect("take")
        .expect("a is not live");
    assert_eq!(b.epoch, a.epoch + 1);
    let events: Vec<events::OrderEvent> = events::generator::Generator::new(Default::default())
        .take(10)
        .collect();
    let records = crate::harness::source_records(&events);
    let batch = |lease| store::Batch {
        group: GROUP,
        topic: "t",
        partition: 0,
        from_offset: 0,
        next_offset: 10,
        records: &records,
        incarnation: 0,
        lease,
    };
    let stale = store.apply_batch(&batch(Some(("a", a.epoch)))).await;
    assert!(
        matches!(stale, Err(store::Error::LeaseLost { .. })),
        "{stale:?}"
    );
    assert_eq!(
        history_len(&db.client().await).await,
        0,
        "the refused batch wrote nothing"
    );
    let current = store
        .apply_batch(&batch(Some(("b", b.epoch))))
        .await
        .expect("b commits");
    assert_eq!(current.events, 10);
    db.drop_db().await;
}

/// The stored offsets of the group on `topic`, by partition.
async fn stored(db: &TestDb, topic: &str) -> BTreeMap<i32, i64> {
    stored_offsets(db, GROUP, topic).await
}

/// `group reset` with `args`; returns the NEW-OFFSET column by partition.
async fn reset(db: &TestDb, topic: &str, args: &[&str]) -> BTreeMap<i32, i64> {
    let cmd = group_reset(&bootstrap_servers(), db, topic, args);
    let out = crate::harness::run_ok(cmd).await;
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() == 5).then(|| (cols[2].parse().ok(), cols[4].parse().ok()))
        })
        .filter_map(|(p, o)| Some((p?, o?)))
        .collect()
}

/// `group reset` plans each target like kafka-consumer-groups, changes nothing without --execute, applies with it (also for one partition), and refuses while the group has a live member.
#[tokio::test]
async fn group_reset_plans_executes_and_refuses_while_live() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    crate::harness::produce_events(&topic, 600, 71).await;
    consume_until_caught_up(&topic, &db, &[]).await;
    let (records, ends) = read_topic_raw(&topic).await;
    let before = stored(&db, &topic).await;
    assert_eq!(before, ends);

    let zeros: BTreeMap<i32, i64> = ends.keys().map(|p| (*p, 0)).collect();
    assert_eq!(reset(&db, &topic, &["--to-earliest"]).await, zeros);
    assert_eq!(reset(&db, &topic, &["--to-latest"]).await, ends);
    let fives: BTreeMap<i32, i64> = ends.keys().map(|p| (*p, 5)).collect();
    assert_eq!(reset(&db, &topic, &["--to-offset", "5"]).await, fives);
    let back: BTreeMap<i32, i64> = ends.iter().map(|(p, e)| (*p, e - 10)).collect();
    assert_eq!(reset(&db, &topic, &["--shift-by", "-10"]).await, back);
    // By time: the first record at or after the 100th record's timestamp,
    // per partition, computed here from the records themselves.
    let mut times: Vec<_> = records.iter().map(|r| r.timestamp).collect();
    times.sort();
    let t = times[100];
    let expected: BTreeMap<i32, i64> = ends
        .iter()
        .map(|(p, end)| {
            let first = records
                .iter()
                .filter(|r| r.partition == *p && r.timestamp >= t)
                .map(|r| r.offset)
                .min()
                .unwrap_or(*end);
            (*p, first)
        })
        .collect();
    let at = t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(reset(&db, &topic, &["--to-datetime", &at]).await, expected);
    assert_eq!(stored(&db, &topic).await, before, "dry runs change nothing");

    // --execute, one partition only.
    reset(
        &db,
        &topic,
        &["--to-offset", "5", "--partition", "1", "--execute"],
    )
    .await;
    let mut want = before.clone();
    want.insert(1, 5);
    assert_eq!(stored(&db, &topic).await, want);

    // A live member: refused with one clear line, nothing changed.
    let live = member(&topic, &db, "alive", &[]);
    wait_owners(
        &db,
        &topic,
        Duration::from_secs(30),
        "owned by the live member",
        |o| o.values().all(|m| m.as_deref() == Some("alive")),
    )
    .await;
    let cmd = group_reset(
        &bootstrap_servers(),
        &db,
        &topic,
        &["--to-earliest", "--execute"],
    );
    let out = crate::harness::run_within(cmd, Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("live member") && stderr.contains("alive"),
        "{stderr}"
    );
    stop_all(vec![live]).await;
    assert_ne!(
        stored(&db, &topic).await,
        zeros,
        "the refused reset changed nothing"
    );
    db.drop_db().await;
}

/// Two groups with their own schemas each fold the whole topic independently.
#[tokio::test]
async fn two_groups_fold_independently() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    crate::harness::produce_events(&topic, 500, 73).await;
    for (group, schema) in [("billing", "billing"), ("analytics", "analytics")] {
        consume_until_caught_up(&topic, &db, &["--group", group, "--schema", schema]).await;
    }
    let (records, ends) = read_topic_raw(&topic).await;
    let pg = db.client().await;
    for (group, schema) in [("billing", "billing"), ("analytics", "analytics")] {
        let history: i64 = pg
            .query_one(&format!("SELECT count(*) FROM {schema}.order_events"), &[])
            .await
            .expect("history")
            .get(0);
        assert_eq!(
            history as usize,
            records.len(),
            "{group} folded every event"
        );
        let offsets: BTreeMap<i32, i64> = pg
            .query(
                &format!("SELECT partition, next_offset FROM {schema}.consumer_offsets WHERE group_id = $1"),
                &[&group],
            )
            .await
            .expect("offsets")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(offsets, ends, "{group} caught up on its own");
    }
    db.drop_db().await;
}

/// The group's generation.
async fn generation(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT generation FROM consumer_groups WHERE group_id = $1",
            &[&GROUP],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

/// Static membership: a member restarted with the same --member-id within the session timeout takes its partitions back without a rebalance (same generation), and a clean exit leaves the group at once.
#[tokio::test]
async fn static_member_restart_keeps_its_partitions() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_to(&topic, 3_000, 75, 4).await;
    let other = member(&topic, &db, "other", &["--session-timeout", "20s"]);
    let mut fixed = member(&topic, &db, "fixed", &["--session-timeout", "20s"]);
    wait_balanced(&db, &topic, Duration::from_secs(30), 2, 2).await;
    let gen_before = generation(&db).await;
    let fixed_partitions: Vec<i32> = owners(&db, &topic)
        .await
        .into_iter()
        .filter(|(_, m)| m.as_deref() == Some("fixed"))
        .map(|(p, _)| p)
        .collect();

    fixed.start_kill().expect("SIGKILL");
    let _ = fixed.wait().await;
    let fixed = member(&topic, &db, "fixed", &["--session-timeout", "20s"]);
    // Its epochs go up as it takes them back; the assignment stays.
    let pg = db.client().await;
    let started = tokio::time::Instant::now();
    loop {
        let epochs: Vec<i64> = pg
            .query(
                "SELECT epoch FROM consumer_offsets WHERE topic = $1 AND partition = ANY($2)",
                &[&topic, &fixed_partitions],
            )
            .await
            .expect("epochs")
            .iter()
            .map(|r| r.get(0))
            .collect();
        if epochs.iter().all(|e| *e >= 2) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "retaken: {epochs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(generation(&db).await, gen_before, "no rebalance");
    let now: Vec<i32> = owners(&db, &topic)
        .await
        .into_iter()
        .filter(|(_, m)| m.as_deref() == Some("fixed"))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(now, fixed_partitions);

    // A clean exit leaves at once: the other member gets everything well
    // before the 20 s session timeout.
    stop_all(vec![fixed]).await;
    let took = wait_owners(
        &db,
        &topic,
        Duration::from_secs(10),
        "all with the other",
        |o| o.values().all(|m| m.as_deref() == Some("other")),
    )
    .await;
    assert!(took < Duration::from_secs(10));
    stop_all(vec![other]).await;
    db.drop_db().await;
}
