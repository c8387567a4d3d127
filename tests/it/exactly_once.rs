//! The fold is exactly-once in the unusual cases too (issue 19): one
//! order's events in two partitions, a position that another log already
//! used, a fingerprint behind a transaction marker.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use events::{OrderEvent, OrderState, Status};
use proptest::prelude::*;
use uuid::Uuid;

use crate::harness::{self, TestDb};

/// One truth for history, view and dead letters, whatever order the
/// partitions' batches were folded in:
/// - every event id reached the database once: in history or in dead
///   letters, never both, never neither (`expected`);
/// - each order's history is one chain the state machine allows, taken in
///   lifecycle order, and the view is where that chain ends.
async fn assert_one_truth(pg: &tokio_postgres::Client, schema: &str, expected: &HashSet<Uuid>) {
    let both: i64 = pg
        .query_one(
            &format!(
                "SELECT count(*) FROM {schema}.order_events e \
                 JOIN {schema}.dead_letters d USING (event_id)"
            ),
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(both, 0, "an event is both applied and dead-lettered");
    let mut seen: HashSet<Uuid> = HashSet::new();
    for row in pg
        .query(
            &format!(
                "SELECT event_id FROM {schema}.order_events UNION ALL \
                 SELECT event_id FROM {schema}.dead_letters WHERE event_id IS NOT NULL"
            ),
            &[],
        )
        .await
        .expect("ids")
    {
        assert!(seen.insert(row.get(0)), "an event id is stored twice");
    }
    let lost: Vec<&Uuid> = expected.difference(&seen).collect();
    assert!(lost.is_empty(), "{} events lost: {lost:?}", lost.len());

    let mut chains: HashMap<Uuid, Vec<OrderEvent>> = HashMap::new();
    for row in pg
        .query(
            &format!("SELECT payload::text FROM {schema}.order_events"),
            &[],
        )
        .await
        .expect("history")
    {
        let payload: &str = row.get(0);
        let event = events::decode(Some(payload.as_bytes())).expect("history holds events");
        chains.entry(event.order_id).or_default().push(event);
    }
    let view: HashMap<Uuid, (String, Uuid)> = pg
        .query(
            &format!("SELECT order_id, status, last_event_id FROM {schema}.orders"),
            &[],
        )
        .await
        .expect("view")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(view.len(), chains.len(), "one view row per order in history");
    for (order, mut chain) in chains {
        chain.sort_by_key(|e| lifecycle_rank(Status::after(&e.body)));
        let mut state: Option<OrderState> = None;
        for e in &chain {
            state = Some(OrderState::apply(state.as_ref(), e).unwrap_or_else(|err| {
                panic!("history of order {order} is not one chain: {err}")
            }));
        }
        let state = state.expect("a chain has events");
        let (status, last) = &view[&order];
        assert_eq!(
            (status.as_str(), *last),
            (state.status.as_str(), state.last_event_id),
            "order {order}: the view is not where its history ends"
        );
    }
}

fn lifecycle_rank(status: Status) -> u8 {
    match status {
        Status::Pending => 0,
        Status::Paid => 1,
        Status::Shipped => 2,
        Status::Delivered | Status::Cancelled => 3,
    }
}

/// Reads the view over and over until `stop`, failing if any order is ever
/// seen in a state that does not lead on from one seen before it.
async fn watch_view_never_moves_back(
    url: String,
    schema: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> usize {
    let (pg, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("watcher connects");
    tokio::spawn(connection);
    let mut shown: HashMap<Uuid, Status> = HashMap::new();
    let mut reads = 0;
    loop {
        let done = *stop.borrow();
        for row in pg
            .query(&format!("SELECT order_id, status FROM {schema}.orders"), &[])
            .await
            .expect("read the view")
        {
            let order: Uuid = row.get(0);
            let status = Status::parse(row.get(1)).expect("a known status");
            if let Some(before) = shown.insert(order, status) {
                assert!(
                    before.leads_to(status),
                    "order {order} moved back: shown {before:?}, then {status:?}"
                );
            }
        }
        reads += 1;
        if done {
            return reads;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Folds `records` of `partition` into `store` batch by batch, cut at `cuts`.
async fn fold_partition(
    store: store::Store,
    partition: i32,
    records: Vec<store::SourceRecord>,
    cuts: Vec<usize>,
) {
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (records.len() + 1)).collect();
    bounds.extend([0, records.len()]);
    bounds.sort_unstable();
    bounds.dedup();
    for w in bounds.windows(2) {
        let batch = &records[w[0]..w[1]];
        store
            .apply_batch(&store::Batch {
                group: "g",
                topic: "t",
                partition,
                from_offset: w[0] as i64,
                next_offset: w[1] as i64,
                records: batch,
                incarnation: 0,
                lease: None,
            })
            .await
            .unwrap_or_else(|e| panic!("partition {partition} batch at {}: {e}", w[0]));
        tokio::task::yield_now().await;
    }
}

/// Records of `events` at offsets 0, 1, ... with keys other than the
/// customer (as a producer keying by something else writes them).
fn records_keyed_otherwise(events: &[OrderEvent]) -> Vec<store::SourceRecord> {
    harness::source_records(events)
        .into_iter()
        .map(|r| store::SourceRecord {
            key: r.key.map(|k| k.into_iter().rev().collect()),
            ..r
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Two partitions carrying events of the same orders (partition 0 the
    /// whole stream, partition 1 a copy of a part of it under other keys),
    /// folded at once by two connections with batch cuts chosen by
    /// proptest: the view never shows an order going back, ends where each
    /// order's history ends, and every event is applied or dead-lettered
    /// exactly once (issue 19, item 2).
    #[test]
    fn two_partitions_sharing_orders_fold_as_one(
        seed in 0u64..1_000,
        keep in proptest::collection::vec(any::<bool>(), 200),
        cuts0 in proptest::collection::vec(any::<usize>(), 1..12),
        cuts1 in proptest::collection::vec(any::<usize>(), 1..12),
    ) {
        RUNTIME.block_on(async {
            let db = shared_db().await;
            let schema = format!("race_{}", Uuid::new_v4().simple());
            let store = db.migrated_store(Some(&schema)).await;
            store.set_offsets("g", "t", &[(0, 0), (1, 0)]).await.expect("offsets");
            let events: Vec<OrderEvent> = events::generator::Generator::new(
                events::generator::GeneratorConfig { seed, ..Default::default() },
            )
            .take(200)
            .collect();
            let copies: Vec<OrderEvent> = events
                .iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(e, _)| e.clone())
                .collect();
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let watcher = tokio::spawn(watch_view_never_moves_back(
                db.url.clone(),
                schema.clone(),
                stopped,
            ));
            let a = tokio::spawn(fold_partition(
                store.clone(),
                0,
                harness::source_records(&events),
                cuts0,
            ));
            let b = tokio::spawn(fold_partition(
                store.clone(),
                1,
                records_keyed_otherwise(&copies),
                cuts1,
            ));
            a.await.expect("partition 0 folds");
            b.await.expect("partition 1 folds");
            stop.send(true).expect("watcher listens");
            watcher.await.expect("the view never moved back");
            let pg = db.client().await;
            let expected: HashSet<Uuid> = events.iter().map(|e| e.event_id).collect();
            assert_one_truth(&pg, &schema, &expected).await;
            pg.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                .await
                .expect("drop the case's schema");
        });
    }
}

static RUNTIME: std::sync::LazyLock<tokio::runtime::Runtime> =
    std::sync::LazyLock::new(|| tokio::runtime::Runtime::new().expect("a tokio runtime"));

/// One database for every case of the property (each case has a schema).
async fn shared_db() -> &'static TestDb {
    static DB: tokio::sync::OnceCell<TestDb> = tokio::sync::OnceCell::const_new();
    DB.get_or_init(TestDb::create).await
}
