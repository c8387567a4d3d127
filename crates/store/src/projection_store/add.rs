//! Adding a projection: [`Store::ensure_projection`], [`Store::add_projection`],
//! the fill from history in chunks and the attach, [`Store::install_projection`].

use std::collections::BTreeMap;

use deadpool_postgres::Transaction;

use super::{Ensured, applied_history, file_of, invalid, quote, relations, run_statements};
use crate::projection::{Definition, check_name, split_statements};
use crate::{Error, Result, Store};

/// How a projection's fill names itself when it holds the rebuild's claim.
const FILL_CLAIM: &str = "projection add";

/// Applied events filled into a new projection per transaction.
const FILL_CHUNK: i64 = 20_000;

impl Store {
    /// Makes sure `def` is attached: added (filled from history, then
    /// attached) if the registry does not hold it, refused with the fix if
    /// the registry holds another definition of it. `group` is the group
    /// whose stored offsets split the fill into the part done without a
    /// lock and the part done under the attach lock.
    pub async fn ensure_projection(&self, def: &Definition, group: &str) -> Result<Ensured> {
        let client = self.client().await?;
        if let Some(r) = Self::registered(&client, &def.name, false).await? {
            for (file, was, now) in [
                ("schema.sql", &r.schema_sql, &def.schema_sql),
                ("apply.sql", &r.apply_sql, &def.apply_sql),
            ] {
                if was.as_deref() != Some(now.as_str()) {
                    return Err(Error::ProjectionChanged {
                        name: def.name.clone(),
                        file: file_of(def, file),
                    });
                }
            }
            if r.state == "attached" {
                return Ok(Ensured::Attached);
            }
        }
        drop(client);
        self.add_projection(def, group).await
    }

    /// Adds a projection to a running system: its tables made, filled from
    /// history while the group's members keep committing, the rest filled
    /// and the projection attached under the attach lock, which waits for
    /// the batches under way and holds the next ones back only for that
    /// last stretch.
    ///
    /// History holds exactly the events the fold applied, in the columns of
    /// `applied_events` (sql/applied_history.sql), so filling from it gives
    /// what folding the topic would: the fold's decisions are made once.
    /// The split point is the group's stored offsets read at the start:
    /// every history row below them was committed with them, and no batch
    /// writes below a stored offset again.
    pub async fn add_projection(&self, def: &Definition, group: &str) -> Result<Ensured> {
        check_name(&def.name)?;
        let schema = self.schema_name().to_owned();
        let shadow = crate::derived_schema_name(&schema, crate::REBUILD_SHADOW_SUFFIX)?;
        let fill_key = (
            crate::apply::fnv32(format!("{schema}:fill").as_bytes()),
            crate::apply::fnv32(def.name.as_bytes()),
        );
        let mut client = self.client().await?;
        let mine: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&fill_key.0, &fill_key.1],
            )
            .await?
            .get(0);
        if !mine {
            return Ok(Ensured::AddedElsewhere);
        }
        // A rebuild moves history and the projections' tables between
        // schemas: the fill and a rebuild of the schema never run at once
        // (the rebuild's claim, held by either). Another projection's fill
        // holding it is waited for: two members starting together add
        // their new projections one after the other.
        let mut waiting = false;
        let claim = loop {
            let claim = self
                .claim_rebuild(
                    &schema,
                    &shadow,
                    &format!("{FILL_CLAIM} {} (pid {})", def.name, std::process::id()),
                )
                .await;
            match claim {
                Err(Error::RebuildRunning { by, .. }) if by.starts_with(FILL_CLAIM) => {
                    if !waiting {
                        waiting = true;
                        tracing::info!(projection = %def.name, "waiting for {by} to finish");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                other => break other,
            }
        };
        let result = match claim {
            Ok(claim) => {
                let result = self.fill_and_attach(&mut client, def, group).await;
                claim.release().await;
                result
            }
            Err(Error::RebuildRunning { by, .. }) => Err(Error::ProjectionWaitsForRebuild {
                name: def.name.clone(),
                by,
            }),
            Err(e) => Err(e),
        };
        // The session lock goes with the session if this fails.
        let _ = client
            .query_one(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&fill_key.0, &fill_key.1],
            )
            .await;
        result
    }

    async fn fill_and_attach(
        &self,
        client: &mut deadpool_postgres::Object,
        def: &Definition,
        group: &str,
    ) -> Result<Ensured> {
        let schema = self.schema_name().to_owned();
        // 1. The registry row and the tables.
        let tx = client.transaction().await?;
        match Self::registered(&tx, &def.name, true).await? {
            Some(r) if r.state == "attached" => return Ok(Ensured::Attached),
            Some(r) => {
                // A fill that stopped part way: start again.
                for table in r.tables {
                    tx.batch_execute(&format!("DROP TABLE IF EXISTS {}", quote(&table)))
                        .await?;
                }
                tx.execute("DELETE FROM projections WHERE name = $1", &[&def.name])
                    .await?;
            }
            None => {}
        }
        let tables = create_projection(&tx, &schema, def, "filling").await?;
        tx.commit().await?;
        tracing::info!(projection = %def.name, tables = ?tables, "projection added; filling it from history");

        // 2. Below the stored offsets, without a lock, a chunk per
        //    transaction.
        let statements = split_statements(&def.apply_sql);
        let cut: BTreeMap<(String, i32), (i32, i64)> = client
            .query(
                "SELECT topic, partition, incarnation, next_offset FROM consumer_offsets \
                 WHERE group_id = $1",
                &[&group],
            )
            .await?
            .iter()
            .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
            .collect();
        let mut events: i64 = 0;
        for ((topic, partition), below) in &cut {
            let mut after = (i32::MIN, i64::MIN);
            loop {
                let tx = client.transaction().await?;
                let (n, last) = fill_chunk(&tx, topic, *partition, after, Some(*below)).await?;
                if n == 0 {
                    break;
                }
                after = last;
                run_statements(&tx, &def.name, &statements, None).await?;
                tx.commit().await?;
                events += n;
                tracing::info!(projection = %def.name, events, topic = %topic, partition, "filling from history");
            }
        }

        // 3. The rest under the attach lock: every partition history holds,
        //    from its stored offset (or its start, for one the group has no
        //    offset for), and attach.
        let tx = client.transaction().await?;
        let (class, key) = crate::apply::attach_lock_key(&schema);
        tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&class, &key])
            .await?;
        let partitions: Vec<(String, i32)> = tx
            .query(include_str!("../sql/history_partitions.sql"), &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut rest: i64 = 0;
        for (topic, partition) in partitions {
            // Rows from the stored offset on: just after the one before it.
            let mut after = cut
                .get(&(topic.clone(), partition))
                .map_or((i32::MIN, i64::MIN), |&(incarnation, offset)| {
                    (incarnation, offset - 1)
                });
            loop {
                let (n, last) = fill_chunk(&tx, &topic, partition, after, None).await?;
                if n == 0 {
                    break;
                }
                after = last;
                run_statements(&tx, &def.name, &statements, None).await?;
                tx.execute("DELETE FROM applied_events", &[]).await?;
                rest += n;
            }
        }
        tx.execute(
            "UPDATE projections SET state = 'attached', attached_at = now() WHERE name = $1",
            &[&def.name],
        )
        .await?;
        tx.commit().await?;
        events += rest;
        tracing::info!(projection = %def.name, events, "projection filled and attached");
        Ok(Ensured::Added { events })
    }

    /// Makes a projection's tables and registers it attached, as it is in
    /// a rebuild's shadow, which folds from the first offset; nothing to
    /// fill. A projection registered already is left as it is.
    pub async fn install_projection(&self, def: &Definition) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if Self::registered(&tx, &def.name, true).await?.is_none() {
            create_projection(&tx, self.schema_name(), def, "attached").await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Runs `schema.sql` in `schema` and registers the projection with the
/// tables it made, in `state`. Returns the tables.
async fn create_projection(
    tx: &Transaction<'_>,
    schema: &str,
    def: &Definition,
    state: &str,
) -> Result<Vec<String>> {
    let (before, _) = relations(tx, schema).await?;
    tx.batch_execute(&def.schema_sql)
        .await
        .map_err(|e| invalid(def, "schema.sql", &def.schema_sql, &def.schema_sql, &e))?;
    let (after, _) = relations(tx, schema).await?;
    let tables: Vec<String> = after.difference(&before).cloned().collect();
    tx.execute(
        "INSERT INTO projections (name, kind, tables, schema_sql, apply_sql, \
                                  definition_hash, state, attached_at) \
         VALUES ($1, $2, $3, $4, $5, md5($4 || E'\\n-- apply.sql\\n' || $5), $6, \
                 CASE WHEN $6 = 'attached' THEN now() END)",
        &[
            &def.name,
            &def.kind.as_str(),
            &tables,
            &def.schema_sql,
            &def.apply_sql,
            &state,
        ],
    )
    .await?;
    Ok(tables)
}

/// Fills `applied_events` with at most [`FILL_CHUNK`] events of one
/// partition's history, in position order, after `after` and before
/// `before` (if given). Returns how many, and the position of the last.
pub(crate) async fn fill_chunk(
    tx: &Transaction<'_>,
    topic: &str,
    partition: i32,
    after: (i32, i64),
    before: Option<(i32, i64)>,
) -> Result<(i64, (i32, i64))> {
    let (until_incarnation, until_offset) = before.unwrap_or((i32::MAX, i64::MAX));
    let events = "(SELECT * FROM order_events \
                  WHERE kafka_topic = $1 AND kafka_partition = $2 \
                    AND (kafka_incarnation, kafka_offset) > ($3, $4) \
                    AND (kafka_incarnation, kafka_offset) < ($5, $6) \
                  ORDER BY kafka_incarnation, kafka_offset LIMIT $7)";
    let stmt = tx
        .prepare_cached(&format!(
            "WITH chunk AS (INSERT INTO applied_events {} \
                            RETURNING kafka_incarnation, kafka_offset) \
             SELECT count(*), max(kafka_incarnation), \
                    max(kafka_offset) FILTER (WHERE kafka_incarnation = \
                        (SELECT max(kafka_incarnation) FROM chunk)) \
             FROM chunk",
            applied_history(events, true)
        ))
        .await?;
    let row = tx
        .query_one(
            &stmt,
            &[
                &topic,
                &partition,
                &after.0,
                &after.1,
                &until_incarnation,
                &until_offset,
                &FILL_CHUNK,
            ],
        )
        .await?;
    let n: i64 = row.get(0);
    let last = (
        row.get::<_, Option<i32>>(1).unwrap_or(after.0),
        row.get::<_, Option<i64>>(2).unwrap_or(after.1),
    );
    Ok((n, last))
}
