//! `foodpipe rebuild`: the database rebuilt from Kafka, swapped in while
//! the live consumers keep running.
//!
//! 1. Read the live group's offsets, then fold the topic from its earliest
//!    offset up to them into a fresh shadow schema (`<schema>_rebuild`),
//!    as a consumer group of its own there. The shadow is never ahead of
//!    the live view, so the two can be compared record for record.
//! 2. Lock the live group's offset rows (`FOR UPDATE`): live commits wait.
//!    Fold the shadow up to exactly the live position where it is behind.
//! 3. Compare the shadow view with the live one (orders whose status or
//!    last event differ) and, unless this is a dry run, replace the live
//!    history, view, dead letters and offsets with the shadow's, in the
//!    same transaction that holds the lock. Commit; live consumers go on
//!    from the swapped offsets.

use std::collections::BTreeMap;
use std::future::Future;

use serde::Serialize;
use store::{Store, StoreConfig};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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
///
/// `shutdown` stops it in any phase with [`Interrupted`]: the live schema
/// is left as it was (the swap commits whole or not at all) and the shadow
/// is dropped.
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
    // Every name is checked before any statement runs: PostgreSQL truncates
    // a name past 63 bytes, and `<63-byte name>_rebuild` truncated is the
    // live schema, which the DROP below would then destroy.
    let shadow = store::derived_schema_name(&live_schema, SHADOW_SUFFIX)?;
    // One signal for every phase: the first pass, the catch-up and the swap.
    let stop = CancellationToken::new();
    let mut watcher = JoinSet::new();
    watcher.spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let result = phases(&config, dry_run, &live_schema, &shadow, &stop).await;
    if stop.is_cancelled() {
        // Best effort: the next rebuild drops a leftover shadow too.
        if let Ok(live) = Store::connect(&config.store).await {
            let _ = drop_shadow(&live, &live_schema, &shadow).await;
        }
        // A report means the swap committed before the signal came.
        if result.is_err() {
            return Err(Interrupted {
                live: live_schema,
                shadow,
            }
            .into());
        }
    }
    result
}

/// The suffix of a rebuild's shadow schema (`public_rebuild`).
const SHADOW_SUFFIX: &str = "_rebuild";

/// A rebuild stopped by a signal before its swap committed.
#[derive(Debug, thiserror::Error)]
#[error(
    "rebuild interrupted before the swap: the live schema {live} is unchanged \
     and the shadow schema {shadow} was dropped"
)]
pub struct Interrupted {
    pub live: String,
    pub shadow: String,
}

/// The rebuild's phases; any of them ends early when `stop` is cancelled.
async fn phases(
    config: &ConsumeConfig,
    dry_run: bool,
    live_schema: &str,
    shadow: &str,
    stop: &CancellationToken,
) -> anyhow::Result<RebuildReport> {
    let live = Store::connect(&config.store).await?;
    live.migrate().await?;
    drop_shadow(&live, live_schema, shadow).await?;
    create_shadow(&live, live_schema, shadow).await?;
    let shadow_config = ConsumeConfig {
        store: StoreConfig {
            schema: Some(shadow.to_owned()),
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
    let first = consume(
        ConsumeConfig {
            targets: Some(live_now.into_iter().collect()),
            ..shadow_config.clone()
        },
        stop.clone().cancelled_owned(),
    )
    .await?;
    reached(&first, stop)?;

    // 2. Hold the live position still and catch the shadow up to it.
    let mut client = live.client().await?;
    let tx = client.transaction().await?;
    let live_offsets: BTreeMap<i32, i64> = tx
        .query(
            &format!(
                "SELECT partition, next_offset FROM {live_schema}.consumer_offsets \
                 WHERE group_id = $1 AND topic = $2 FOR UPDATE"
            ),
            &[&config.group, &config.topic],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let shadow_offsets: BTreeMap<i32, i64> = tx
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
        let catch_up = consume(
            ConsumeConfig {
                targets: Some(live_offsets.clone()),
                ..shadow_config
            },
            stop.clone().cancelled_owned(),
        )
        .await?;
        // Returning drops `tx`: rolled back, the live rows unlocked.
        reached(&catch_up, stop)?;
    }

    // 3. Compare, then swap in the same transaction. A signal before the
    // commit drops `tx` (rolled back); the commit itself is not cut short.
    let compared = tokio::select! {
        biased;
        () = stop.cancelled() => return Err(anyhow::anyhow!("interrupted during the swap")),
        compared = compare_and_swap(&tx, config, dry_run, live_schema, shadow) => compared?,
    };
    tx.commit().await?;
    drop_shadow(&live, live_schema, shadow).await?;
    Ok(RebuildReport {
        swapped: !dry_run,
        ..compared
    })
}

/// Step 3 inside the transaction that holds the live offsets: the
/// differences, the shadow's counts and, unless `dry_run`, the swap.
async fn compare_and_swap(
    tx: &store::Transaction<'_>,
    config: &ConsumeConfig,
    dry_run: bool,
    live_schema: &str,
    shadow: &str,
) -> anyhow::Result<RebuildReport> {
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
                     last_fingerprint = EXCLUDED.last_fingerprint, updated_at = now()"
            ),
            &[&config.group, &config.topic],
        )
        .await?;
    }
    Ok(RebuildReport {
        events,
        orders,
        differing,
        first_differences,
        swapped: false,
    })
}

/// Orders whose status or last event differ between the two views.
fn diff_sql(live: &str, shadow: &str, select: &str, tail: &str) -> String {
    format!(
        "SELECT {select} FROM {live}.orders l FULL JOIN {shadow}.orders s USING (order_id) \
         WHERE l.status IS DISTINCT FROM s.status \
            OR l.last_event_id IS DISTINCT FROM s.last_event_id {tail}"
    )
}

/// Ends the rebuild unless a phase's consume reached its targets: a
/// signal, or a partition stopped on an error, leaves the shadow short of
/// the live position, and a short shadow must never be swapped in.
fn reached(
    summary: &crate::consume::ConsumeSummary,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    if summary.interrupted || stop.is_cancelled() {
        anyhow::bail!("interrupted while replaying into the shadow schema");
    }
    if !summary.caught_up {
        let stopped: Vec<String> = summary
            .stopped
            .iter()
            .map(|s| format!("partition {}: {}", s.partition, s.error))
            .collect();
        anyhow::bail!(
            "the replay into the shadow schema did not reach the live position ({}); \
             nothing was swapped",
            if stopped.is_empty() {
                "it ended early".to_owned()
            } else {
                stopped.join("; ")
            }
        );
    }
    Ok(())
}

/// What the shadow schema's comment says, so that a schema of the same name
/// that foodpipe did not make is never dropped.
fn shadow_marker(live_schema: &str) -> String {
    format!("foodpipe rebuild shadow of {live_schema}")
}

/// Drops the shadow schema if it exists, refusing unless it carries the
/// marker [`create_shadow`] puts on it.
async fn drop_shadow(live: &Store, live_schema: &str, shadow: &str) -> anyhow::Result<()> {
    let client = live.client().await?;
    let comment: Option<Option<String>> = client
        .query_opt(
            "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = $1",
            &[&shadow],
        )
        .await?
        .map(|r| r.get(0));
    match comment {
        None => return Ok(()),
        Some(Some(c)) if c == shadow_marker(live_schema) => {}
        Some(_) => anyhow::bail!(
            "schema {shadow} exists and is not a rebuild shadow of {live_schema} made by \
             foodpipe, so rebuild will not drop it; rename it or drop it yourself"
        ),
    }
    client
        .batch_execute(&format!("DROP SCHEMA {shadow} CASCADE"))
        .await?;
    Ok(())
}

/// Creates the shadow schema with its marker; the replay migrates it.
async fn create_shadow(live: &Store, live_schema: &str, shadow: &str) -> anyhow::Result<()> {
    // Both names passed store::check_schema_name: no quoting needed. The
    // marker is a literal made of them.
    live.client()
        .await?
        .batch_execute(&format!(
            "CREATE SCHEMA {shadow}; COMMENT ON SCHEMA {shadow} IS '{}'",
            shadow_marker(live_schema)
        ))
        .await?;
    Ok(())
}
