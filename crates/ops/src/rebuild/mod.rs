//! `foodpipe rebuild`: the database rebuilt from Kafka, swapped in while
//! the live consumers keep running.
//!
//! 1. Read the live group's offsets, then fold the topic from its earliest
//!    offset up to them into a fresh shadow schema (`<schema>_rebuild`):
//!    in bulk ([`bulk`]: binary COPY into tables without indexes,
//!    the fold in memory, indexes built once), then through the consumer
//!    path, as a group of its own there, for whatever the bulk fill
//!    stopped short of. The shadow is never ahead of the live view, so the
//!    two can be compared record for record.
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
//!    transaction, moving tables between schemas rather than copying rows
//!    (`swap::swap_tables`: locks held for a few catalog changes, bounded by
//!    `lock_timeout`, and rolled back by the server if the rebuild stops
//!    with the transaction open). Lift the fence; live consumers take
//!    their partitions again within a heartbeat and go on from the
//!    swapped offsets.
//!
//! Before step 1 touches anything, the rebuild claims the schema
//! (`Store::claim_rebuild`: an advisory lock on a session of its own,
//! named after the rebuild's host and pid), and holds the claim to the end.
//! A second rebuild of the same schema, dry run or not, is refused there,
//! naming the first, instead of dropping the first's shadow mid-replay.
//!
//! A dry run (`--dry-run`) changes nothing, not even lease epochs: instead
//! of the fence it catches up without a lock, then holds the live offset
//! rows `FOR SHARE` while it catches up the last stretch and compares
//! (live commits wait for it; it writes nothing, so no lock cycle), then
//! rolls back.

use std::collections::BTreeMap;
use std::future::Future;

use serde::Serialize;
use store::{REBUILD_SHADOW_SUFFIX as SHADOW_SUFFIX, RebuildClaim, Store, StoreConfig};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use pipeline::consume::{ConsumeConfig, run as consume};
use swap::{Fence, catch_up_and_swap, compare_only};

mod bulk;
pub mod bulk_fill;
pub mod compare;
mod swap;

/// A key of a projection's table whose rebuilt row differs from the live one.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub projection: String,
    pub table: String,
    /// The row's primary key, as a JSON array.
    pub key: String,
    /// The live row (as JSON, cut short), if the key is there.
    pub live: Option<String>,
    /// The same in the rebuild.
    pub rebuilt: Option<String>,
}

/// What a rebuild found and did.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildReport {
    pub events: i64,
    pub orders: i64,
    /// The projections compared (and swapped, unless a dry run).
    pub projections: Vec<String>,
    /// Keys whose rows differ, over every table compared.
    pub differing: i64,
    pub first_differences: Vec<Difference>,
    pub swapped: bool,
}

impl std::fmt::Display for RebuildReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "rebuilt from Kafka: {} events, {} orders; projections {}: {} key(s) differ from the \
             live ones",
            self.events,
            self.orders,
            self.projections.join(", "),
            self.differing
        )?;
        for d in &self.first_differences {
            writeln!(
                f,
                "  {} {} {}: live {} | rebuilt {}",
                d.projection,
                d.table,
                d.key,
                d.live.as_deref().unwrap_or("(missing)"),
                d.rebuilt.as_deref().unwrap_or("(missing)")
            )?;
        }
        if self.swapped {
            writeln!(
                f,
                "swapped in from the rebuild: {}",
                if self.projections.len() > 2 || self.projections.iter().any(|p| p == "history") {
                    format!("{}, dead letters and offsets", self.projections.join(", "))
                } else {
                    self.projections.join(", ")
                }
            )
        } else {
            writeln!(f, "verify only: nothing swapped")
        }
    }
}

/// What to rebuild.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Compare only (`--verify-only`).
    pub dry_run: bool,
    /// One projection only; `None`: all of them, with dead letters and
    /// offsets.
    pub projection: Option<String>,
}

/// Rebuilds the view of `config.group` on `config.topic` in
/// `config.store.schema` (default `public`). `dry_run` compares only.
///
/// `shutdown` stops it in any phase with [`Interrupted`]: the live schema
/// is left as it was (the swap commits whole or not at all) and the shadow
/// is dropped.
pub async fn run(
    config: ConsumeConfig,
    options: Options,
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
    // The server ends a rebuild's session that sits inside a transaction,
    // doing nothing, for a session timeout (paused, cut off): its swap
    // rolls back and its locks go, so live commits and readers never wait
    // on a rebuild that stopped.
    let live = Store::connect(&StoreConfig {
        idle_in_transaction_timeout: Some(config.session_timeout),
        ..config.store.clone()
    })
    .await?;
    // Before anything is touched: one rebuild of a schema at a time. A
    // second one would drop the first's shadow in the middle of its replay.
    let claim = live
        .claim_rebuild(&live_schema, &shadow, &rebuild_identity())
        .await?;
    let result = phases(
        &live,
        &claim,
        &config,
        &options,
        &live_schema,
        &shadow,
        &stop,
    )
    .await;
    if stop.is_cancelled() {
        // Best effort: the next rebuild drops a leftover shadow too.
        let _ = drop_shadow(&live, &live_schema, &shadow).await;
    }
    claim.release().await;
    // A report means the swap committed before the signal came.
    if stop.is_cancelled() && result.is_err() {
        return Err(Interrupted {
            live: live_schema,
            shadow,
        }
        .into());
    }
    result
}

/// Who this rebuild is, for the fence (`consumer_groups.fenced_by`) and
/// its claim: `rebuild (host H, pid P)`, the host shortened so that the
/// whole fits PostgreSQL's 63-byte `application_name`.
fn rebuild_identity() -> String {
    let pid = std::process::id();
    let host = pipeline::consume::hostname();
    let room = 63usize.saturating_sub(format!("rebuild (host , pid {pid})").len());
    let host = if host.len() <= room {
        host
    } else {
        let mut end = room.saturating_sub(3);
        while !host.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &host[..end])
    };
    format!("rebuild (host {host}, pid {pid})")
}

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
    live: &Store,
    claim: &RebuildClaim,
    config: &ConsumeConfig,
    options: &Options,
    live_schema: &str,
    shadow: &str,
    stop: &CancellationToken,
) -> anyhow::Result<RebuildReport> {
    let dry_run = options.dry_run;
    live.migrate().await?;
    drop_shadow(live, live_schema, shadow).await?;
    create_shadow(live, live_schema, shadow).await?;
    let shadow_store = StoreConfig {
        schema: Some(shadow.to_owned()),
        ..config.store.clone()
    };
    // The bulk fill makes the SQL projections after history is filled
    // (from history, as `projection add` does); the consumer path makes
    // them first and applies them batch by batch.
    let bulk = match bulk::unusable(config, shadow) {
        None => true,
        Some(why) => {
            tracing::info!("rebuild replays through the consumer path, not in bulk: {why}");
            false
        }
    };
    let definitions = install_projections(live, &shadow_store, config, options, !bulk).await?;
    let scope = Scope {
        live: live_schema,
        shadow,
        projections: match &options.projection {
            Some(name) => vec![name.clone()],
            None => live_projections(live).await?,
        },
        whole: options.projection.is_none(),
    };
    let shadow_config = ConsumeConfig {
        store: shadow_store.clone(),
        projections: definitions.clone(),
        until_caught_up: true,
        member_id: Some("rebuild".to_owned()),
        progress: config.progress,
        metrics: pipeline::consume::MetricsListen::Off,
        // The shadow's progress is not the live group's: never mirrored.
        mirror_interval: None,
        dead_letter_topic: None,
        ..config.clone()
    };
    // 1. Everything up to where the live consumers are now: in bulk, then
    //    (only if the fill stopped short somewhere) the consumer path for
    //    the rest; or the consumer path all the way.
    let live_now: BTreeMap<i32, i64> = live
        .offsets(&config.group, &config.topic)
        .await?
        .into_iter()
        .collect();
    let short = if bulk {
        let filled = bulk::fill(config, &shadow_store, &live_now, stop).await?;
        live_now
            .iter()
            .any(|(p, target)| filled.get(p).is_none_or(|o| o < target))
    } else {
        true
    };
    if short {
        tracing::info!(schema = %shadow, "replaying {} through the consumer path", config.topic);
        let first = consume(
            ConsumeConfig {
                targets: Some(live_now),
                ..shadow_config.clone()
            },
            stop.clone().cancelled_owned(),
        )
        .await?;
        reached(&first, stop)?;
    }
    if bulk {
        // From history, in chunks, every projection over each chunk (one
        // the consumer path above attached already is left as it is),
        // partitions side by side.
        let shadow_db = Store::connect(&StoreConfig {
            pool_size: store::FILL_PARTITIONS_AT_ONCE + 1,
            ..shadow_store
        })
        .await?;
        shadow_db
            .fill_projections_from_history(&definitions, &config.group)
            .await?;
    }

    // 2. Fence the live group (no takes, every lease epoch bumped, so no
    //    live commit lands any more) and catch the shadow up to where it
    //    stopped. No row lock is held across the replay: a live commit
    //    under way finishes first or fails its epoch check.
    //    A dry run fences nothing: it holds the live offset rows `FOR
    //    SHARE` while it catches up and compares (live commits wait; it
    //    writes nothing, so nothing waits on it), then rolls back, leaving
    //    every row, epochs and owners included, as it was.
    let result = if dry_run {
        compare_only(live, config, &shadow_config, &scope, stop).await
    } else {
        let fence = Fence::raise(live, config).await?;
        let result =
            catch_up_and_swap(live, claim, config, &shadow_config, &scope, &fence, stop).await;
        fence.lower(live).await;
        result
    };
    let compared = result?;
    drop_shadow(live, live_schema, shadow).await?;
    Ok(RebuildReport {
        swapped: !dry_run,
        ..compared
    })
}

/// Which projections a rebuild compares and swaps.
struct Scope<'a> {
    live: &'a str,
    shadow: &'a str,
    projections: Vec<String>,
    /// Every projection: dead letters and offsets are swapped too.
    whole: bool,
}

/// The projections of the live registry.
async fn live_projections(live: &Store) -> anyhow::Result<Vec<String>> {
    Ok(live
        .projections()
        .await?
        .into_iter()
        .filter(|p| p.state == "attached")
        .map(|p| p.name)
        .collect())
}

/// Migrates the shadow and makes the SQL projections being rebuilt there:
/// the definitions given (built-in, `--projections`) over those of the
/// live registry, so a changed definition is rebuilt with its new SQL.
/// `install` false: only checks them (a bulk fill adds them once history
/// is filled). Returns the definitions the shadow's consumer is to ensure.
async fn install_projections(
    live: &Store,
    shadow_store: &StoreConfig,
    config: &ConsumeConfig,
    options: &Options,
    install: bool,
) -> anyhow::Result<Vec<store::Definition>> {
    let mut definitions: BTreeMap<String, store::Definition> = live
        .projection_definitions()
        .await?
        .into_iter()
        .map(|d| (d.name.clone(), d))
        .collect();
    for d in &config.projections {
        definitions.insert(d.name.clone(), d.clone());
    }
    if let Some(name) = &options.projection {
        let rust = store::projection::RUST_PROJECTIONS.contains(&name.as_str());
        if !rust && !definitions.contains_key(name) {
            return Err(store::Error::ProjectionUnknown(name.clone()).into());
        }
        definitions.retain(|n, _| n == name);
    }
    let shadow = Store::connect(&StoreConfig {
        pool_size: 1,
        ..shadow_store.clone()
    })
    .await?;
    shadow.migrate().await?;
    for d in definitions.values() {
        shadow.check_projection(d).await?;
        if install {
            shadow.install_projection(d).await?;
        }
    }
    Ok(definitions.into_values().collect())
}

/// Ends the rebuild unless a phase's consume reached its targets: a
/// signal, or a partition stopped on an error, leaves the shadow short of
/// the live position, and a short shadow must never be swapped in.
fn reached(
    summary: &pipeline::consume::ConsumeSummary,
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
