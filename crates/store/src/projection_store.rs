//! Adding, checking, listing, dropping a projection, and computing one as
//! of a past time: the registry side of [`crate::projection`].

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::SimpleQueryMessage;

use crate::projection::{
    Definition, ProjectionRow, RUST_PROJECTIONS, TableRows, check_name, split_statements,
    statement_head,
};
use crate::{Error, Result, Store};

/// History as applied events (sql/applied_history.sql).
const APPLIED_HISTORY: &str = include_str!("sql/applied_history.sql");

/// How a projection's fill names itself when it holds the rebuild's claim.
const FILL_CLAIM: &str = "projection add";

/// Applied events filled into a new projection per transaction.
const FILL_CHUNK: i64 = 20_000;

/// What [`Store::ensure_projection`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// Attached before, with this definition.
    Attached,
    /// Added now: filled from this many events of history and attached.
    Added { events: i64 },
    /// Another process is adding it; batches apply it once it is attached.
    AddedElsewhere,
}

/// A registry row: what a projection was added with.
struct Registered {
    state: String,
    schema_sql: Option<String>,
    apply_sql: Option<String>,
    tables: Vec<String>,
}

impl Store {
    /// The schema named in the config, or `public`.
    pub(crate) fn schema_name(&self) -> &str {
        self.schema.as_deref().unwrap_or("public")
    }

    async fn registered(
        client: &impl deadpool_postgres::GenericClient,
        name: &str,
        lock: bool,
    ) -> Result<Option<Registered>> {
        let sql = format!(
            "SELECT state, schema_sql, apply_sql, tables FROM projections WHERE name = $1{}",
            if lock { " FOR UPDATE" } else { "" }
        );
        Ok(client.query_opt(&sql, &[&name]).await?.map(|r| Registered {
            state: r.get(0),
            schema_sql: r.get(1),
            apply_sql: r.get(2),
            tables: r.get(3),
        }))
    }

    /// Checks a definition without changing anything: its `schema.sql`
    /// runs in a scratch schema and each statement of its `apply.sql` runs
    /// there against an empty `applied_events`, then all is rolled back.
    /// A failure is [`Error::ProjectionInvalid`] naming the file.
    pub async fn check_projection(&self, def: &Definition) -> Result<()> {
        check_name(&def.name)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let scratch = enter_scratch(&tx, "check").await?;
        tx.batch_execute(&def.schema_sql)
            .await
            .map_err(|e| invalid(def, "schema.sql", &def.schema_sql, &def.schema_sql, &e))?;
        let (_, others) = relations(&tx, &scratch).await?;
        if let Some(other) = others.first() {
            return Err(Error::ProjectionInvalid {
                name: def.name.clone(),
                file: file_of(def, "schema.sql"),
                message: format!(
                    "it creates {other}, which is not a table: a projection owns tables (and \
                     their indexes) only, which rebuild swaps; keep views and queries in \
                     files of their own"
                ),
            });
        }
        let statements = split_statements(&def.apply_sql);
        if statements.is_empty() {
            return Err(Error::ProjectionInvalid {
                name: def.name.clone(),
                file: file_of(def, "apply.sql"),
                message: "it holds no statement".to_owned(),
            });
        }
        for statement in &statements {
            tx.batch_execute(statement)
                .await
                .map_err(|e| invalid(def, "apply.sql", &def.apply_sql, statement, &e))?;
        }
        // Dropping `tx` rolls back: the scratch schema never existed.
        Ok(())
    }

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
            .query(include_str!("sql/history_partitions.sql"), &[])
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

    /// The SQL projections in the registry, as definitions.
    pub async fn projection_definitions(&self) -> Result<Vec<Definition>> {
        Ok(self
            .client()
            .await?
            .query(
                "SELECT name, kind, schema_sql, apply_sql FROM projections \
                 WHERE schema_sql IS NOT NULL AND apply_sql IS NOT NULL ORDER BY name",
                &[],
            )
            .await?
            .iter()
            .map(|r| Definition {
                name: r.get(0),
                kind: if r.get::<_, &str>(1) == "sql" {
                    crate::projection::Kind::Sql
                } else {
                    crate::projection::Kind::Builtin
                },
                schema_sql: r.get(2),
                apply_sql: r.get(3),
                origin: "the registry".to_owned(),
            })
            .collect())
    }

    /// Drops a SQL projection's tables and its registry row. Batches under
    /// way finish first (the attach lock); the next ones no longer apply it.
    pub async fn drop_projection(&self, name: &str) -> Result<Vec<String>> {
        if RUST_PROJECTIONS.contains(&name) {
            return Err(Error::ProjectionInvalid {
                name: name.to_owned(),
                file: String::new(),
                message: "the fold reads it to decide every batch, so it cannot be dropped"
                    .to_owned(),
            });
        }
        if crate::projection::builtins().iter().any(|b| b.name == name) {
            return Err(Error::ProjectionInvalid {
                name: name.to_owned(),
                file: String::new(),
                message: "it is built into foodpipe, and every `consume` adds it back at start"
                    .to_owned(),
            });
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let (class, key) = crate::apply::attach_lock_key(self.schema_name());
        tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&class, &key])
            .await?;
        let Some(r) = Self::registered(&tx, name, true).await? else {
            return Err(Error::ProjectionUnknown(name.to_owned()));
        };
        for table in &r.tables {
            tx.batch_execute(&format!("DROP TABLE IF EXISTS {}", quote(table)))
                .await?;
        }
        tx.execute("DELETE FROM projections WHERE name = $1", &[&name])
            .await?;
        tx.commit().await?;
        Ok(r.tables)
    }

    /// Every projection in the registry, with the rows of its tables.
    pub async fn projections(&self) -> Result<Vec<ProjectionRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT name, kind, state, tables, added_at, attached_at FROM projections \
                 ORDER BY name",
                &[],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let tables: Vec<String> = r.get(3);
            let mut count = 0;
            for t in &tables {
                if let Some(row) = client
                    .query_opt(
                        &format!(
                            "SELECT count(*) FROM {} WHERE to_regclass($1) IS NOT NULL",
                            quote(t)
                        ),
                        &[&t],
                    )
                    .await
                    .ok()
                    .flatten()
                {
                    count += row.get::<_, i64>(0);
                }
            }
            out.push(ProjectionRow {
                name: r.get(0),
                kind: r.get(1),
                state: r.get(2),
                tables,
                rows: count,
                added_at: r.get(4),
                attached_at: r.get(5),
            });
        }
        Ok(out)
    }

    /// Each projection's name and state, without counting rows (`watch`
    /// reads it every second).
    pub async fn projection_states(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .client()
            .await?
            .query("SELECT name, state FROM projections ORDER BY name", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    /// A SQL projection as of `t`: its tables made in a scratch schema,
    /// filled by its own apply from the history of events that occurred
    /// at or before `t`, read, and rolled back.
    pub async fn projection_as_of(&self, name: &str, t: DateTime<Utc>) -> Result<Vec<TableRows>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(r) = Self::registered(&tx, name, false).await? else {
            return Err(Error::ProjectionUnknown(name.to_owned()));
        };
        let (Some(schema_sql), Some(apply_sql)) = (r.schema_sql, r.apply_sql) else {
            if name == "history" {
                // History as of `t` is its events that occurred by then.
                return Ok(vec![
                    select_rows(
                        &tx,
                        "order_events",
                        &format!(
                            "SELECT event_id, order_id, customer_id, event_type, occurred_at, \
                                    kafka_topic, kafka_partition, kafka_offset \
                             FROM order_events WHERE occurred_at <= '{}'::timestamptz \
                             ORDER BY occurred_at, event_id",
                            t.to_rfc3339()
                        ),
                    )
                    .await?,
                ]);
            }
            return Err(Error::ProjectionInvalid {
                name: name.to_owned(),
                file: String::new(),
                message: "it is written in Rust; `foodpipe asof` without --projection gives \
                          the orders as of a time"
                    .to_owned(),
            });
        };
        let scratch = enter_scratch(&tx, "asof").await?;
        tx.batch_execute(&schema_sql).await?;
        let (tables, _) = relations(&tx, &scratch).await?;
        // `applied_events` here is a view of history up to `t` in the
        // scratch schema, found before the temporary table (pg_temp is
        // put last on the path): the apply reads history where it lies,
        // instead of a copy of every event written to a temporary table.
        // (JIT compiling the one big query costs more than it saves.)
        let live: String = tx
            .query_one("SELECT (current_schemas(false))[2]", &[])
            .await?
            .get(0);
        tx.batch_execute(&format!(
            "SET LOCAL search_path = {scratch}, {}, pg_temp; SET LOCAL jit = off; \
             CREATE VIEW {scratch}.applied_events AS {}",
            quote(&live),
            applied_history(
                &format!(
                    "(SELECT * FROM order_events WHERE occurred_at <= '{}'::timestamptz)",
                    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                ),
                false
            )
        ))
        .await?;
        run_statements(&tx, name, &split_statements(&apply_sql), None).await?;
        let mut out = Vec::new();
        for table in tables {
            let key = primary_key(&tx, &scratch, &table).await?;
            let order = if key.is_empty() {
                "1".to_owned()
            } else {
                key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ")
            };
            let sql = format!("SELECT * FROM {scratch}.{} ORDER BY {order}", quote(&table));
            out.push(select_rows(&tx, &table, &sql).await?);
        }
        Ok(out)
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

/// A query's rows as text, with its column names, as `table`.
async fn select_rows(tx: &Transaction<'_>, table: &str, sql: &str) -> Result<TableRows> {
    let mut rows = TableRows {
        table: table.to_owned(),
        columns: Vec::new(),
        rows: Vec::new(),
    };
    for message in tx.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = message {
            if rows.columns.is_empty() {
                rows.columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
            }
            rows.rows.push(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            );
        }
    }
    Ok(rows)
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

/// History as applied events (sql/applied_history.sql), over `events`: a
/// parenthesized query of `order_events` rows. `few`: a chunk, whose
/// orders' OrderCreated are looked up one by one; otherwise all of them
/// are joined at once.
fn applied_history(events: &str, few: bool) -> String {
    let created = if few {
        "LATERAL (SELECT c.order_id, c.payload, c.occurred_at FROM order_events c \
                  WHERE c.order_id = e.order_id AND c.event_type = 'OrderCreated' LIMIT 1)"
    } else {
        "(SELECT order_id, payload, occurred_at FROM order_events \
          WHERE event_type = 'OrderCreated')"
    };
    APPLIED_HISTORY
        .replace("{events}", events)
        .replace("{created}", created)
}

/// Runs a projection's statements in `tx`, one by one, so a failure names
/// the one that failed. `offsets` (first, last) are the batch's, for the
/// message.
pub(crate) async fn run_statements(
    tx: &Transaction<'_>,
    name: &str,
    statements: &[String],
    offsets: Option<(i64, i64)>,
) -> Result<()> {
    for statement in statements {
        let failed = |source| Error::ProjectionFailed {
            name: name.to_owned(),
            statement: statement_head(statement),
            offsets,
            source,
        };
        if offsets.is_some() {
            // A batch: the statement is prepared once per connection and
            // its plan kept, instead of planned again for every batch.
            let stmt = tx.prepare_cached(statement).await.map_err(failed)?;
            tx.execute(&stmt, &[]).await.map_err(failed)?;
        } else {
            tx.batch_execute(statement).await.map_err(failed)?;
        }
    }
    Ok(())
}

/// Makes a scratch schema inside `tx` (gone with its rollback) and puts it
/// first on the search path, the live schema after it.
async fn enter_scratch(tx: &Transaction<'_>, what: &str) -> Result<String> {
    let row = tx
        .query_one(
            "SELECT pg_backend_pid(), coalesce(current_schema(), 'public')",
            &[],
        )
        .await?;
    let (pid, live): (i32, String) = (row.get(0), row.get(1));
    let scratch = format!("foodpipe_{what}_{pid}");
    tx.batch_execute(&format!(
        "CREATE SCHEMA {scratch}; SET LOCAL search_path = {scratch}, {}",
        quote(&live)
    ))
    .await?;
    Ok(scratch)
}

/// The tables of `schema`, and its other relations that are neither
/// tables nor what tables bring with them (indexes, sequences, TOAST).
async fn relations(tx: &Transaction<'_>, schema: &str) -> Result<(BTreeSet<String>, Vec<String>)> {
    let rows = tx
        .query(
            "SELECT c.relname::text, c.relkind::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1",
            &[&schema],
        )
        .await?;
    let mut tables = BTreeSet::new();
    let mut others = Vec::new();
    for r in rows {
        let (name, kind): (String, String) = (r.get(0), r.get(1));
        match kind.as_str() {
            "r" | "p" => {
                tables.insert(name);
            }
            "i" | "I" | "S" | "t" | "c" => {}
            "v" => others.push(format!("view {name}")),
            "m" => others.push(format!("materialized view {name}")),
            _ => others.push(format!("relation {name}")),
        }
    }
    Ok((tables, others))
}

/// The primary key columns of `schema.table`, in key order.
pub(crate) async fn primary_key(
    client: &impl deadpool_postgres::GenericClient,
    schema: &str,
    table: &str,
) -> Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, pos) ON true \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
             WHERE i.indisprimary AND n.nspname = $1 AND c.relname = $2 ORDER BY k.pos",
            &[&schema, &table],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// An identifier quoted for SQL.
pub fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

fn file_of(def: &Definition, file: &str) -> String {
    match def.kind {
        crate::projection::Kind::Sql => format!("{}/{file}", def.origin),
        crate::projection::Kind::Builtin => format!("{file} (built in)"),
    }
}

/// A definition's SQL refused by PostgreSQL: the file, the line, the error.
fn invalid(
    def: &Definition,
    file: &str,
    whole: &str,
    statement: &str,
    e: &tokio_postgres::Error,
) -> Error {
    let db = e.as_db_error();
    let mut message = db.map_or_else(|| e.to_string(), |d| d.message().to_owned());
    let start = whole.find(statement).unwrap_or(0);
    let at = match db.and_then(|d| d.position()) {
        Some(tokio_postgres::error::ErrorPosition::Original(p)) => {
            let chars = (*p as usize).saturating_sub(1);
            statement
                .char_indices()
                .nth(chars)
                .map_or(statement.len(), |(i, _)| i)
        }
        _ => 0,
    };
    let line = whole[..(start + at).min(whole.len())].matches('\n').count() + 1;
    message.push_str(&format!(" (line {line})"));
    Error::ProjectionInvalid {
        name: def.name.clone(),
        file: file_of(def, file),
        message,
    }
}
