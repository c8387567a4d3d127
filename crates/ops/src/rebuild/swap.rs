//! Steps 2 and 3 of a rebuild: the fence, the catch-up through the normal
//! consumer path, the comparison and the swap (or, for a dry run, the
//! comparison under a share lock and a rollback).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use store::{RebuildClaim, Store, StoreConfig};
use tokio_util::sync::CancellationToken;

use super::compare::{COMPARE_CONNECTIONS, Pending, compare_side_by_side};
use super::{Difference, RebuildReport, Scope, reached, rebuild_identity};
use pipeline::consume::{ConsumeConfig, run as consume};

/// The rebuild's fence on the live group, renewed every heartbeat interval
/// while it stands.
pub(super) struct Fence {
    group: String,
    by: String,
    /// The live offsets once the fence stood: nothing commits past them.
    live_offsets: BTreeMap<i32, i64>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Fence {
    pub(super) async fn raise(live: &Store, config: &ConsumeConfig) -> anyhow::Result<Fence> {
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
    pub(super) async fn lower(self, live: &Store) {
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
pub(super) async fn catch_up_and_swap(
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
    tracing::info!(projections = ?scope.projections, "comparing the shadow with the live schema and swapping");
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
pub(super) async fn compare_only(
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

/// The least time between the swap transaction's keep-alive queries while
/// the comparisons run.
const KEEP_ALIVE_MIN: Duration = Duration::from_millis(100);

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

/// Step 3 inside the swap's transaction, under the fence: the
/// differences, the shadow's counts and, unless `dry_run`, the swap.
async fn compare_and_swap(
    tx: &store::Transaction<'_>,
    config: &ConsumeConfig,
    dry_run: bool,
    scope: &Scope<'_>,
) -> anyhow::Result<RebuildReport> {
    let (live_schema, shadow) = (scope.live, scope.shadow);
    // The tables to swap, in the order a live batch writes them (history,
    // orders, dead letters, then the SQL projections by name): a batch still
    // under way when the fence went up holds some of them and waits for the
    // next, so taking them in any other order could wait in a cycle with it.
    let mut swapped: Vec<SwapGroup> = Vec::new();
    let mut pending = Vec::new();
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
        pending.extend(shadow_t.iter().map(|table| Pending {
            projection: projection.clone(),
            table: table.clone(),
            live_has: live_t.contains(table),
        }));
        swapped.push((write_order(projection), live_t, shadow_t));
    }
    // Every table is compared in this transaction's snapshot, side by side
    // on connections of their own. This transaction waits meanwhile: it
    // answers a `SELECT 1` now and then, so the server's idle timeout ends
    // it only if the rebuild itself stops (paused, cut off).
    let snapshot: String = tx
        .query_one("SELECT pg_export_snapshot()", &[])
        .await?
        .get(0);
    let compare_db = Store::connect(&StoreConfig {
        pool_size: COMPARE_CONNECTIONS,
        idle_in_transaction_timeout: Some(config.session_timeout),
        ..config.store.clone()
    })
    .await?;
    let comparing_since = Instant::now();
    let compared = {
        let comparing =
            compare_side_by_side(&compare_db, &snapshot, (live_schema, shadow), &pending);
        tokio::pin!(comparing);
        let mut keep_alive =
            tokio::time::interval((config.session_timeout / 4).max(KEEP_ALIVE_MIN));
        loop {
            tokio::select! {
                compared = &mut comparing => break compared?,
                _ = keep_alive.tick() => { tx.simple_query("SELECT 1").await?; }
            }
        }
    };
    tracing::info!(
        tables = pending.len(),
        seconds = comparing_since.elapsed().as_secs_f64(),
        "compared every table side by side"
    );
    let mut differing = 0;
    let mut first_differences = Vec::new();
    for (job, (n, first)) in pending.into_iter().zip(compared) {
        differing += n;
        first_differences.extend(first.into_iter().take(5).map(|d| Difference {
            projection: job.projection.clone(),
            table: job.table.clone(),
            key: d.key,
            live: d.live,
            rebuilt: d.rebuilt,
        }));
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
