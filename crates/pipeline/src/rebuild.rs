//! `foodpipe rebuild`: the database rebuilt from Kafka, swapped in while
//! the live consumers keep running.
//!
//! 1. Read the live group's offsets, then fold the topic from its earliest
//!    offset up to them into a fresh shadow schema (`<schema>_rebuild`),
//!    as a consumer group of its own there. The shadow is never ahead of
//!    the live view, so the two can be compared record for record.
//! 2. Fence the live group (`Store::fence_group`): no member takes a
//!    lease while the fence stands, and every lease epoch is bumped, so a
//!    live commit under way is refused by its own epoch check. The live
//!    offsets stand still; fold the shadow up to exactly them. No row lock
//!    is held across this replay (holding the offset rows `FOR UPDATE`
//!    while truncating deadlocked with a live commit that held
//!    `order_events` and waited for its offset row).
//! 3. Compare the shadow view with the live one (orders whose status or
//!    last event differ) and, unless this is a dry run, replace the live
//!    history, view, dead letters and offsets with the shadow's in one
//!    transaction. Lift the fence; live consumers take their partitions
//!    again within a heartbeat and go on from the swapped offsets.

use std::collections::BTreeMap;
use std::future::Future;

use serde::Serialize;
use store::{Store, StoreConfig};

use crate::consume::{ConsumeConfig, run as consume};

/// An order whose rebuilt state differs from the live one.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub order_id: String,
    /// `status / last_event_id` in the live view, if the order is there.
    pub live: Option<String>,
    /// The same in the rebuilt view.
    pub rebuilt: Option<String>,
}

/// What a rebuild found and did.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildReport {
    pub events: i64,
    pub orders: i64,
    pub differing: i64,
    pub first_differences: Vec<Difference>,
    pub swapped: bool,
}

impl std::fmt::Display for RebuildReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "rebuilt from Kafka: {} events, {} orders; {} order(s) differ from the live view",
            self.events, self.orders, self.differing
        )?;
        for d in &self.first_differences {
            writeln!(
                f,
                "  {}: live {} | rebuilt {}",
                d.order_id,
                d.live.as_deref().unwrap_or("(missing)"),
                d.rebuilt.as_deref().unwrap_or("(missing)")
            )?;
        }
        if self.swapped {
            writeln!(
                f,
                "swapped in: history, view, dead letters and offsets now come from the rebuild"
            )
        } else {
            writeln!(f, "dry run: nothing swapped")
        }
    }
}

/// Rebuilds the view of `config.group` on `config.topic` in
/// `config.store.schema` (default `public`). `dry_run` compares only.
pub async fn run(
    config: ConsumeConfig,
    dry_run: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RebuildReport> {
    let live_schema = config
        .store
        .schema
        .clone()
        .unwrap_or_else(|| "public".to_owned());
    let shadow = format!("{live_schema}_rebuild");
    let live = Store::connect(&config.store).await?;
    live.migrate().await?;
    live.client()
        .await?
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {shadow} CASCADE"))
        .await?;
    let shadow_config = ConsumeConfig {
        store: StoreConfig {
            schema: Some(shadow.clone()),
            ..config.store.clone()
        },
        until_caught_up: true,
        member_id: Some("rebuild".to_owned()),
        progress: config.progress,
        metrics: crate::consume::MetricsListen::Off,
        // The shadow's progress is not the live group's: never mirrored.
        mirror_interval: None,
        dead_letter_topic: None,
        ..config.clone()
    };
    // 1. Everything up to where the live consumers are now.
    let live_now = live.offsets(&config.group, &config.topic).await?;
    tracing::info!(schema = %shadow, "replaying {} from the earliest offset", config.topic);
    consume(
        ConsumeConfig {
            targets: Some(live_now.into_iter().collect()),
            ..shadow_config.clone()
        },
        shutdown,
    )
    .await?;

    // 2. Fence the live group (no takes, every lease epoch bumped, so no
    //    live commit lands any more) and catch the shadow up to where it
    //    stopped. No row lock is held across the replay: a live commit
    //    under way finishes first or fails its epoch check.
    let fence = Fence::raise(&live, &config).await?;
    let schemas = (live_schema.as_str(), shadow.as_str());
    let result = catch_up_and_swap(&live, &config, &shadow_config, schemas, &fence, dry_run).await;
    fence.lower(&live).await;
    let (events, orders, differing, first_differences) = result?;
    live.client()
        .await?
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {shadow} CASCADE"))
        .await?;
    Ok(RebuildReport {
        events,
        orders,
        differing,
        first_differences,
        swapped: !dry_run,
    })
}

/// The rebuild's fence on the live group, renewed every heartbeat interval
/// while it stands.
struct Fence {
    group: String,
    by: String,
    /// The live offsets once the fence stood: nothing commits past them.
    live_offsets: BTreeMap<i32, i64>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Fence {
    async fn raise(live: &Store, config: &ConsumeConfig) -> anyhow::Result<Fence> {
        let by = format!(
            "rebuild (host {}, pid {})",
            crate::consume::hostname(),
            std::process::id()
        );
        let ttl = config.session_timeout;
        let live_offsets = live
            .fence_group(&config.group, &config.topic, &by, ttl)
            .await?;
        let renewer = {
            let (live, group, by) = (live.clone(), config.group.clone(), by.clone());
            let every = config.heartbeat_interval;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match live.renew_fence(&group, &by, ttl).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(
                                "the rebuild's fence lapsed; the swap resets the offsets anyway"
                            );
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot renew the rebuild's fence"),
                    }
                }
            })
        };
        Ok(Fence {
            group: config.group.clone(),
            by,
            live_offsets,
            renewer,
        })
    }

    /// Lifts the fence (also after a failure: the live group must go on).
    async fn lower(self, live: &Store) {
        self.renewer.abort();
        if let Err(e) = live.lift_fence(&self.group, &self.by).await {
            tracing::warn!(error = %e, "cannot lift the rebuild's fence; it lapses after a session timeout");
        }
    }
}

type Compared = (i64, i64, i64, Vec<Difference>);

/// Steps 2 and 3 under the fence.
async fn catch_up_and_swap(
    live: &Store,
    config: &ConsumeConfig,
    shadow_config: &ConsumeConfig,
    (live_schema, shadow): (&str, &str),
    fence: &Fence,
    dry_run: bool,
) -> anyhow::Result<Compared> {
    let live_offsets = &fence.live_offsets;
    let shadow_offsets: BTreeMap<i32, i64> = live
        .client()
        .await?
        .query(
            &format!(
                "SELECT partition, next_offset FROM {shadow}.consumer_offsets \
                 WHERE group_id = $1 AND topic = $2"
            ),
            &[&config.group, &config.topic],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let behind = live_offsets
        .iter()
        .any(|(p, live)| shadow_offsets.get(p).is_none_or(|s| s < live));
    if behind {
        tracing::info!(position = ?live_offsets, "catching the rebuild up to the live position");
        consume(
            ConsumeConfig {
                targets: Some(live_offsets.clone()),
                ..shadow_config.clone()
            },
            std::future::pending(),
        )
        .await?;
    }

    let mut client = live.client().await?;
    let tx = client.transaction().await?;
    // 3. Compare, then swap in the same transaction.
    let differing: i64 = tx
        .query_one(&diff_sql(live_schema, shadow, "count(*)", ""), &[])
        .await?
        .get(0);
    let first_differences = tx
        .query(
            &diff_sql(
                live_schema,
                shadow,
                "coalesce(l.order_id, s.order_id)::text, \
                 l.status || ' / ' || l.last_event_id, s.status || ' / ' || s.last_event_id",
                "ORDER BY 1 LIMIT 5",
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| Difference {
            order_id: r.get(0),
            live: r.get(1),
            rebuilt: r.get(2),
        })
        .collect();
    let events: i64 = tx
        .query_one(&format!("SELECT count(*) FROM {shadow}.order_events"), &[])
        .await?
        .get(0);
    let orders: i64 = tx
        .query_one(&format!("SELECT count(*) FROM {shadow}.orders"), &[])
        .await?
        .get(0);
    if !dry_run {
        // The tables first: a live commit still under way (it fails its
        // epoch check at the end) finishes before the truncate, and holds
        // nothing this transaction holds, so the two cannot wait on each
        // other. The offset rows come last, with the epochs bumped again
        // and the owners cleared: a member that re-took after a lapsed
        // fence is fenced here too, and starts again from the swapped offset.
        tx.batch_execute(&format!(
            "TRUNCATE {live_schema}.order_events, {live_schema}.orders, {live_schema}.dead_letters;
             INSERT INTO {live_schema}.order_events SELECT * FROM {shadow}.order_events;
             INSERT INTO {live_schema}.orders SELECT * FROM {shadow}.orders;
             INSERT INTO {live_schema}.dead_letters SELECT * FROM {shadow}.dead_letters;"
        ))
        .await?;
        tx.execute(
            &format!(
                "INSERT INTO {live_schema}.consumer_offsets \
                     (group_id, topic, partition, next_offset, incarnation, last_fingerprint) \
                 SELECT group_id, topic, partition, next_offset, incarnation, last_fingerprint \
                 FROM {shadow}.consumer_offsets WHERE group_id = $1 AND topic = $2 \
                 ON CONFLICT (group_id, topic, partition) DO UPDATE SET \
                     next_offset = EXCLUDED.next_offset, incarnation = EXCLUDED.incarnation, \
                     last_fingerprint = EXCLUDED.last_fingerprint, owner = NULL, \
                     epoch = {live_schema}.consumer_offsets.epoch + 1, updated_at = now()"
            ),
            &[&config.group, &config.topic],
        )
        .await?;
    }
    tx.commit().await?;
    Ok((events, orders, differing, first_differences))
}

/// Orders whose status or last event differ between the two views.
fn diff_sql(live: &str, shadow: &str, select: &str, tail: &str) -> String {
    format!(
        "SELECT {select} FROM {live}.orders l FULL JOIN {shadow}.orders s USING (order_id) \
         WHERE l.status IS DISTINCT FROM s.status \
            OR l.last_event_id IS DISTINCT FROM s.last_event_id {tail}"
    )
}
