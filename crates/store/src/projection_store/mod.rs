//! The registry side of [`crate::projection`]: listing and dropping
//! projections, and the SQL helpers adding (`add`), checking (`check`) and
//! computing one as of a past time (`asof`) share.

use std::collections::BTreeSet;

use deadpool_postgres::Transaction;

use crate::projection::{Definition, ProjectionRow, RUST_PROJECTIONS, statement_head};
use crate::{Error, Result, Store};

/// History as applied events (sql/applied_history.sql).
const APPLIED_HISTORY: &str = include_str!("../sql/applied_history.sql");

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

mod add;
mod asof;
mod check;

pub(crate) use add::fill_chunk;

impl Store {
    /// The schema named in the config, or `public`.
    pub fn schema_name(&self) -> &str {
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
pub async fn primary_key(
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
