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
//!    transaction, moving tables between schemas rather than copying rows
//!    ([`swap_tables`]: locks held for a few catalog changes, bounded by
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

use crate::consume::{ConsumeConfig, run as consume};

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
    let host = crate::consume::hostname();
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
    let definitions = install_projections(live, &shadow_store, config, options).await?;
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
        store: shadow_store,
        projections: definitions,
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
        let by = rebuild_identity();
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

/// Steps 2 and 3 under the fence: catch the shadow up to the fenced live
/// offsets, then compare and swap in one transaction. A signal before the
/// commit drops the transaction (rolled back); the commit itself is not
/// cut short.
async fn catch_up_and_swap(
    live: &Store,
    claim: &RebuildClaim,
    config: &ConsumeConfig,
    shadow_config: &ConsumeConfig,
    scope: &Scope<'_>,
    fence: &Fence,
    stop: &CancellationToken,
) -> anyhow::Result<RebuildReport> {
    let (live_schema, shadow) = (scope.live, scope.shadow);
    catch_up(
        live,
        config,
        shadow_config,
        shadow,
        &fence.live_offsets,
        stop,
    )
    .await?;
    // 3. Compare, then swap in the same transaction.
    let mut client = live.client().await?;
    let tx = client.transaction().await?;
    // Whatever ends the swap's transaction early rolls all of it back.
    let rolled_back = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "the swap did not complete and was rolled back, so the live schema {live_schema} is \
             unchanged ({e}); a rebuild paused or cut off with its swap open for \
             --session-timeout has its transaction ended by PostgreSQL: run rebuild again"
        )
    };
    let compared = tokio::select! {
        biased;
        () = stop.cancelled() => return Err(anyhow::anyhow!("interrupted during the swap")),
        compared = compare_and_swap(&tx, config, false, scope) => {
            compared.map_err(|e| rolled_back(&e))?
        }
    };
    if !claim.held().await? {
        anyhow::bail!(
            "this rebuild's claim on schema {live_schema} ended (its PostgreSQL session was \
             cut), so another rebuild may have replaced the shadow; nothing was swapped"
        );
    }
    tx.commit().await.map_err(|e| rolled_back(&e))?;
    Ok(compared)
}

/// A dry run's steps 2 and 3: the live offsets held still by a share lock
/// (no fence, no epoch bumped), the shadow caught up to them, the
/// comparison, and a rollback.
async fn compare_only(
    live: &Store,
    config: &ConsumeConfig,
    shadow_config: &ConsumeConfig,
    scope: &Scope<'_>,
    stop: &CancellationToken,
) -> anyhow::Result<RebuildReport> {
    let (live_schema, shadow) = (scope.live, scope.shadow);
    // Most of the way without holding anything: the live offsets as they
    // are now. Then, with the rows held still, only what the live group
    // committed meanwhile.
    let now: BTreeMap<i32, i64> = live
        .offsets(&config.group, &config.topic)
        .await?
        .into_iter()
        .collect();
    catch_up(live, config, shadow_config, shadow, &now, stop).await?;
    let mut client = live.client().await?;
    let tx = client.transaction().await?;
    // The hold lasts through the last stretch of catch-up, which starts a
    // consumer of the shadow (joins, takes, fetches) while this transaction
    // sits idle: allow it several session timeouts, still a bound on how
    // long a paused dry run can keep live commits waiting.
    tx.batch_execute(&format!(
        "SET LOCAL idle_in_transaction_session_timeout = {}",
        (config.session_timeout * DRY_RUN_HOLD_TIMEOUTS)
            .as_millis()
            .max(1)
    ))
    .await?;
    let live_offsets: BTreeMap<i32, i64> = tx
        .query(
            &format!(
                "SELECT partition, next_offset FROM {live_schema}.consumer_offsets \
                 WHERE group_id = $1 AND topic = $2 FOR SHARE"
            ),
            &[&config.group, &config.topic],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    catch_up(live, config, shadow_config, shadow, &live_offsets, stop).await?;
    let compared = tokio::select! {
        biased;
        () = stop.cancelled() => return Err(anyhow::anyhow!("interrupted while comparing")),
        compared = compare_and_swap(&tx, config, true, scope) => compared?,
    };
    // Dropping `tx` rolls it back and lets the live commits go on.
    Ok(compared)
}

/// Folds the shadow up to exactly `live_offsets` where it is behind.
async fn catch_up(
    live: &Store,
    config: &ConsumeConfig,
    shadow_config: &ConsumeConfig,
    shadow: &str,
    live_offsets: &BTreeMap<i32, i64>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
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
        let catch_up = consume(
            ConsumeConfig {
                targets: Some(live_offsets.clone()),
                ..shadow_config.clone()
            },
            stop.clone().cancelled_owned(),
        )
        .await?;
        reached(&catch_up, stop)?;
    }
    Ok(())
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
/// Returns the definitions the shadow's consumer is to ensure.
async fn install_projections(
    live: &Store,
    shadow_store: &StoreConfig,
    config: &ConsumeConfig,
    options: &Options,
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
        shadow.install_projection(d).await?;
    }
    Ok(definitions.into_values().collect())
}

/// Step 3 inside the swap's transaction, under the fence: the
/// differences, the shadow's counts and, unless `dry_run`, the swap.
async fn compare_and_swap(
    tx: &store::Transaction<'_>,
    config: &ConsumeConfig,
    dry_run: bool,
    scope: &Scope<'_>,
) -> anyhow::Result<RebuildReport> {
    let (live_schema, shadow) = (scope.live, scope.shadow);
    let mut differing = 0;
    let mut first_differences = Vec::new();
    // The tables to swap, in the order a live batch writes them (history,
    // orders, dead letters, then the SQL projections by name): a batch still
    // under way when the fence went up holds some of them and waits for the
    // next, so taking them in any other order could wait in a cycle with it.
    let mut swapped: Vec<SwapGroup> = Vec::new();
    for projection in &scope.projections {
        let tables =
            |schema: &str| format!("SELECT tables FROM {schema}.projections WHERE name = $1");
        let live_t: Vec<String> = tx
            .query_opt(&tables(live_schema), &[projection])
            .await?
            .map(|r| r.get(0))
            .unwrap_or_default();
        let shadow_t: Vec<String> = tx
            .query_opt(&tables(shadow), &[projection])
            .await?
            .map(|r| r.get(0))
            .unwrap_or_default();
        for table in &shadow_t {
            let (n, first) =
                store::compare_tables(tx, (live_schema, shadow), table, live_t.contains(table))
                    .await?;
            differing += n;
            first_differences.extend(first.into_iter().take(5).map(|d| Difference {
                projection: projection.clone(),
                table: table.clone(),
                key: d.key,
                live: d.live,
                rebuilt: d.rebuilt,
            }));
        }
        swapped.push((write_order(projection), live_t, shadow_t));
    }
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
        // epoch check at the end) finishes before the swap gets its locks, and holds
        // nothing this transaction holds, so the two cannot wait on each
        // other. The offset rows come last, with the epochs bumped again
        // and the owners cleared: a member that re-took after a lapsed
        // fence is fenced here too, and starts again from the swapped offset.
        if scope.whole {
            let dead_letters = vec!["dead_letters".to_owned()];
            swapped.push(((2, String::new()), dead_letters.clone(), dead_letters));
        }
        swapped.sort_by(|a, b| a.0.cmp(&b.0));
        let live_tables: Vec<String> = swapped.iter().flat_map(|s| s.1.clone()).collect();
        let shadow_tables: Vec<String> = swapped.iter().flat_map(|s| s.2.clone()).collect();
        swap_tables(
            tx,
            config,
            (live_schema, shadow),
            &live_tables,
            &shadow_tables,
        )
        .await?;
        // The registry rows of what was swapped: their definitions now
        // are the shadow's.
        tx.execute(
            &format!(
                "INSERT INTO {live_schema}.projections \
                 SELECT * FROM {shadow}.projections WHERE name = ANY($1) \
                 ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, \
                     tables = EXCLUDED.tables, schema_sql = EXCLUDED.schema_sql, \
                     apply_sql = EXCLUDED.apply_sql, \
                     definition_hash = EXCLUDED.definition_hash, state = 'attached', \
                     attached_at = now()"
            ),
            &[&scope.projections],
        )
        .await?;
        if scope.whole {
            tx.execute(
                &format!(
                    "INSERT INTO {live_schema}.consumer_offsets \
                         (group_id, topic, partition, next_offset, incarnation, \
                          last_fingerprint, fingerprint_offset) \
                     SELECT group_id, topic, partition, next_offset, incarnation, \
                            last_fingerprint, fingerprint_offset \
                     FROM {shadow}.consumer_offsets WHERE group_id = $1 AND topic = $2 \
                     ON CONFLICT (group_id, topic, partition) DO UPDATE SET \
                         next_offset = EXCLUDED.next_offset, \
                         incarnation = EXCLUDED.incarnation, \
                         last_fingerprint = EXCLUDED.last_fingerprint, \
                         fingerprint_offset = EXCLUDED.fingerprint_offset, owner = NULL, \
                         epoch = {live_schema}.consumer_offsets.epoch + 1, updated_at = now()"
                ),
                &[&config.group, &config.topic],
            )
            .await?;
        }
    }
    Ok(RebuildReport {
        events,
        orders,
        projections: scope.projections.clone(),
        differing,
        first_differences,
        swapped: false,
    })
}

/// One projection's tables to swap: its place in the write order, its
/// live tables and its rebuilt ones.
type SwapGroup = ((u8, String), Vec<String>, Vec<String>);

/// Where a projection's tables come in the order a batch writes them:
/// history, orders, (dead letters), then SQL projections by name.
fn write_order(projection: &str) -> (u8, String) {
    match projection {
        "history" => (0, String::new()),
        "orders" => (1, String::new()),
        name => (3, name.to_owned()),
    }
}

/// Puts the shadow's tables in the live schema and the live ones in the
/// shadow (dropped with it afterwards), by moving them between schemas:
/// no row is copied, so the swap's locks on the live tables are held for
/// the few catalog changes it makes, not for a copy of every table. Each
/// table moves with its indexes, constraints and its own sequences (so
/// `dead_letters.id` goes on past the ids it holds), through a parking
/// schema made and dropped inside the transaction, since live and shadow
/// tables' indexes have the same names. Privileges granted on a live table
/// to other roles are granted on its replacement. The tables come from the
/// projections' registry rows, never from a list here: a projection's
/// table the live schema has and the rebuild does not (its definition
/// changed) goes to the shadow and is dropped with it.
///
/// The swap waits for its locks at most the session timeout
/// (`lock_timeout`: a long reader cannot make it queue, and every reader
/// and commit behind it, for longer), and the connection is closed by the
/// server if the rebuild stops between statements while its transaction is
/// open (`idle_in_transaction_session_timeout`, set on the rebuild's
/// connections): a paused or cut-off rebuild rolls back and releases every
/// lock.
async fn swap_tables(
    tx: &store::Transaction<'_>,
    config: &ConsumeConfig,
    (live_schema, shadow): (&str, &str),
    live_tables: &[String],
    shadow_tables: &[String],
) -> anyhow::Result<()> {
    let parking = store::derived_schema_name(live_schema, PARKING_SUFFIX)?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = {}; CREATE SCHEMA {parking}",
        config.session_timeout.as_millis().max(1)
    ))
    .await?;
    let mut grants: Vec<(String, String, String)> = Vec::new();
    for table in live_tables {
        for r in tx
            .query(
                "SELECT grantee::text, privilege_type::text \
                 FROM information_schema.table_privileges \
                 WHERE table_schema = $1 AND table_name = $2 AND grantee <> current_user",
                &[&live_schema, table],
            )
            .await?
        {
            grants.push((table.clone(), r.get(0), r.get(1)));
        }
        let t = store::quote_identifier(table);
        tx.batch_execute(&format!(
            "ALTER TABLE {live_schema}.{t} SET SCHEMA {parking}"
        ))
        .await?;
    }
    for table in shadow_tables {
        let t = store::quote_identifier(table);
        tx.batch_execute(&format!(
            "ALTER TABLE {shadow}.{t} SET SCHEMA {live_schema}"
        ))
        .await?;
    }
    for table in live_tables {
        let t = store::quote_identifier(table);
        tx.batch_execute(&format!("ALTER TABLE {parking}.{t} SET SCHEMA {shadow}"))
            .await?;
    }
    for (table, grantee, privilege) in grants {
        if !shadow_tables.contains(&table) {
            continue;
        }
        let grantee = if grantee == "PUBLIC" {
            grantee
        } else {
            store::quote_identifier(&grantee)
        };
        // The privilege comes from PostgreSQL's own list (SELECT,
        // INSERT, ...), never from a user.
        tx.batch_execute(&format!(
            "GRANT {privilege} ON {live_schema}.{} TO {grantee}",
            store::quote_identifier(&table)
        ))
        .await?;
    }
    tx.batch_execute(&format!("DROP SCHEMA {parking}")).await?;
    Ok(())
}

/// How many session timeouts a dry run may sit idle while it holds the live
/// offset rows (its last stretch of catch-up).
const DRY_RUN_HOLD_TIMEOUTS: u32 = 6;

/// The suffix of the schema the live tables pass through during a swap.
const PARKING_SUFFIX: &str = "_swap";

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
