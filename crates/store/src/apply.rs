//! One fetched batch, one PostgreSQL transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use events::{LineItem, OrderState, Status};
use uuid::Uuid;

use crate::fold::{self, Current, SourceRecord};
use crate::{Error, Result, Store};

/// A fetched batch of one partition, ready to apply.
#[derive(Debug)]
pub struct Batch<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    /// The stored offset the batch was fetched from. The commit only
    /// succeeds if the stored offset is still this (compare-and-set).
    pub from_offset: i64,
    /// The offset to store: one past the last record of the batch.
    pub next_offset: i64,
    /// The records, in offset order.
    pub records: &'a [SourceRecord],
    /// The incarnation of the partition's log the stored offset refers to.
    pub incarnation: i32,
    /// The member committing and its lease epoch; the commit only succeeds
    /// while that lease is current. `None` commits without a lease (tools
    /// and benchmarks on a private database).
    pub lease: Option<(&'a str, i64)>,
}

/// What a committed batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Events written to history.
    pub events: usize,
    /// Orders whose view row was written.
    pub orders: usize,
    /// The records that went to `dead_letters`, in offset order.
    pub dead_letters: Vec<fold::DeadLetter>,
    pub duplicates: usize,
    pub stale: usize,
}

impl Store {
    /// Applies `batch` in one transaction: history rows, the orders view,
    /// dead letters and the partition's next offset. On any error nothing is
    /// written, and the same batch can be applied again.
    #[tracing::instrument(
        skip(self, batch),
        fields(partition = batch.partition, from = batch.from_offset, to = batch.next_offset, records = batch.records.len())
    )]
    pub async fn apply_batch(&self, batch: &Batch<'_>) -> Result<Applied> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;

        // Which events are new, and the current state of the orders they touch.
        let event_ids: Vec<Uuid> = batch
            .records
            .iter()
            .filter_map(|r| r.event.as_ref().ok().map(|e| e.event_id))
            .collect();
        let mut order_ids: Vec<Uuid> = batch
            .records
            .iter()
            .filter_map(|r| r.event.as_ref().ok().map(|e| e.order_id))
            .collect();
        order_ids.sort_unstable();
        order_ids.dedup();

        let stmt = tx
            .prepare_cached(include_str!("sql/select_known_events.sql"))
            .await?;
        let known: HashSet<Uuid> = tx
            .query(&stmt, &[&event_ids])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let stmt = tx
            .prepare_cached(include_str!("sql/select_orders_for_update.sql"))
            .await?;
        let mut current = HashMap::with_capacity(order_ids.len());
        for row in tx.query(&stmt, &[&order_ids]).await? {
            let c = current_from_row(&row)?;
            current.insert(c.state.order_id, c);
        }

        let source = fold::Source {
            topic: batch.topic,
            partition: batch.partition,
            incarnation: batch.incarnation,
        };
        let plan = fold::plan(source, batch.records, &known, current);

        if !plan.history.is_empty() {
            insert_history(&tx, batch, &plan.history).await?;
        }
        if !plan.view.is_empty() {
            upsert_orders(&tx, batch, &plan.view).await?;
        }
        if !plan.dead_letters.is_empty() {
            insert_dead_letters(&tx, batch, &plan.dead_letters).await?;
        }

        let last_fingerprint = batch
            .records
            .last()
            .map(|r| fold::fingerprint(r.timestamp, r.key.as_deref(), r.value.as_deref()));
        let stmt = tx
            .prepare_cached(include_str!("sql/advance_offset.sql"))
            .await?;
        let moved = tx
            .execute(
                &stmt,
                &[
                    &batch.group,
                    &batch.topic,
                    &batch.partition,
                    &batch.next_offset,
                    &batch.from_offset,
                    &batch.incarnation,
                    &last_fingerprint,
                    &batch.lease.map(|(owner, _)| owner),
                    &batch.lease.map_or(0, |(_, epoch)| epoch),
                ],
            )
            .await?;
        if moved != 1 {
            // Dropping `tx` rolls everything back.
            return Err(Error::LeaseLost {
                group: batch.group.to_owned(),
                topic: batch.topic.to_owned(),
                partition: batch.partition,
                expected: batch.from_offset,
            });
        }
        tx.commit().await?;

        Ok(Applied {
            events: plan.history.len(),
            orders: plan.view.len(),
            dead_letters: plan.dead_letters,
            duplicates: plan.duplicates,
            stale: plan.stale,
        })
    }
}

/// An order's view row, read back to fold the batch onto it. A row this
/// build cannot read (a status it does not know, items that are not its
/// line items) is an error naming the order: guessing `pending` or no
/// items would write the guess back as the order's state.
fn current_from_row(row: &tokio_postgres::Row) -> Result<Current> {
    let order_id: Uuid = row.get(0);
    let status: &str = row.get(3);
    let status = Status::parse(status).ok_or_else(|| Error::UnreadableOrder {
        order_id,
        problem: format!("unknown status {status:?}"),
    })?;
    let items: &str = row.get(4);
    let items: Vec<LineItem> = serde_json::from_str(items).map_err(|e| Error::UnreadableOrder {
        order_id,
        problem: format!("items are not a list of line items: {e}"),
    })?;
    Ok(Current {
        state: OrderState {
            order_id,
            customer_id: row.get(1),
            restaurant_id: row.get(2),
            status,
            items,
            total_cents: row.get(5),
            created_at: row.get(6),
            updated_at: row.get(7),
            last_event_id: row.get(8),
        },
        source_topic: row.get(9),
        source_partition: row.get(10),
        source_incarnation: row.get(11),
        source_offset: row.get(12),
    })
}

async fn insert_history(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &Batch<'_>,
    indexes: &[usize],
) -> Result<()> {
    let n = indexes.len();
    let mut event_id = Vec::with_capacity(n);
    let mut order_id = Vec::with_capacity(n);
    let mut customer_id = Vec::with_capacity(n);
    let mut event_type = Vec::with_capacity(n);
    let mut schema_version = Vec::with_capacity(n);
    let mut payload: Vec<&str> = Vec::with_capacity(n);
    let mut occurred_at = Vec::with_capacity(n);
    let mut offset = Vec::with_capacity(n);
    let mut timestamp: Vec<DateTime<Utc>> = Vec::with_capacity(n);
    for &i in indexes {
        let record = &batch.records[i];
        let Ok(event) = &record.event else { continue };
        event_id.push(event.event_id);
        order_id.push(event.order_id);
        customer_id.push(event.customer_id.as_str());
        event_type.push(event.body.event_type());
        schema_version.push(event.schema_version as i32);
        // A decoded event's value is valid UTF-8 JSON by construction.
        payload.push(
            record
                .value
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .unwrap_or("{}"),
        );
        occurred_at.push(event.occurred_at);
        offset.push(record.offset);
        timestamp.push(record.timestamp);
    }
    let stmt = tx
        .prepare_cached(include_str!("sql/insert_history.sql"))
        .await?;
    tx.execute(
        &stmt,
        &[
            &batch.topic,
            &batch.partition,
            &event_id,
            &order_id,
            &customer_id,
            &event_type,
            &schema_version,
            &payload,
            &occurred_at,
            &offset,
            &timestamp,
            &batch.incarnation,
        ],
    )
    .await?;
    Ok(())
}

async fn upsert_orders(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &Batch<'_>,
    rows: &[Current],
) -> Result<()> {
    let n = rows.len();
    let mut order_id = Vec::with_capacity(n);
    let mut customer_id = Vec::with_capacity(n);
    let mut restaurant_id = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut items = Vec::with_capacity(n);
    let mut total = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut updated = Vec::with_capacity(n);
    let mut last_event = Vec::with_capacity(n);
    let mut source_offset = Vec::with_capacity(n);
    for c in rows {
        let s = &c.state;
        order_id.push(s.order_id);
        customer_id.push(s.customer_id.as_str());
        restaurant_id.push(s.restaurant_id.as_str());
        status.push(s.status.as_str());
        items.push(serde_json::to_string(&s.items).unwrap_or_else(|_| "[]".to_owned()));
        total.push(s.total_cents);
        created.push(s.created_at);
        updated.push(s.updated_at);
        last_event.push(s.last_event_id);
        source_offset.push(c.source_offset);
    }
    let stmt = tx
        .prepare_cached(include_str!("sql/upsert_orders.sql"))
        .await?;
    tx.execute(
        &stmt,
        &[
            &batch.topic,
            &batch.partition,
            &order_id,
            &customer_id,
            &restaurant_id,
            &status,
            &items,
            &total,
            &created,
            &updated,
            &last_event,
            &source_offset,
            &batch.incarnation,
        ],
    )
    .await?;
    Ok(())
}

async fn insert_dead_letters(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &Batch<'_>,
    dead: &[fold::DeadLetter],
) -> Result<()> {
    let n = dead.len();
    let mut offset = Vec::with_capacity(n);
    let mut timestamp = Vec::with_capacity(n);
    let mut key: Vec<Option<&[u8]>> = Vec::with_capacity(n);
    let mut value: Vec<Option<&[u8]>> = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut message = Vec::with_capacity(n);
    let mut headers = Vec::with_capacity(n);
    let mut event_id: Vec<Option<Uuid>> = Vec::with_capacity(n);
    for d in dead {
        let record = &batch.records[d.index];
        event_id.push(record.event.as_ref().ok().map(|e| e.event_id));
        tracing::warn!(
            partition = batch.partition,
            offset = record.offset,
            kind = d.kind,
            error = %d.message,
            "dead letter"
        );
        offset.push(record.offset);
        timestamp.push(record.timestamp);
        key.push(record.key.as_deref());
        value.push(record.value.as_deref());
        kind.push(d.kind);
        message.push(d.message.as_str());
        headers.push(crate::headers::to_json(&record.headers));
    }
    let stmt = tx
        .prepare_cached(include_str!("sql/insert_dead_letters.sql"))
        .await?;
    tx.execute(
        &stmt,
        &[
            &batch.group,
            &batch.topic,
            &batch.partition,
            &offset,
            &timestamp,
            &key,
            &value,
            &kind,
            &message,
            &batch.incarnation,
            &headers,
            &event_id,
        ],
    )
    .await?;
    Ok(())
}
