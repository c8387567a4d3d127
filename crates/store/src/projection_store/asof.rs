//! [`Store::projection_as_of`]: a projection computed from history as of a past time.

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::SimpleQueryMessage;

use super::{applied_history, enter_scratch, primary_key, quote, relations, run_statements};
use crate::projection::{TableRows, split_statements};
use crate::{Error, Result, Store};

impl Store {
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
