//! The rows a batch writes, as columns: each write is one statement whose
//! parameters are arrays, one per column (`unnest` in the SQL). Built
//! before the batch's writes are sent, so the statements can go out
//! together ([`super::pipeline`]); each `params` borrows its columns.

use chrono::{DateTime, Utc};
use events::Status;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::Batch;
use crate::fold::{self, Current};

type Param<'a> = &'a (dyn ToSql + Sync);

/// History rows for the plan's applied events. With `applied_events` (SQL
/// projections attached) the same statement also fills it from the rows
/// it inserted (insert_applied_events.sql), each with its order's state
/// right after it: the status its type leads to (every applied event is a
/// step the machine allowed), and the order's restaurant, items, total and
/// creation time, which never change after creation. Each payload is
/// parsed once, by the history insert.
pub(crate) struct HistoryRows<'r> {
    event_id: Vec<Uuid>,
    order_id: Vec<Uuid>,
    customer_id: Vec<&'r str>,
    event_type: Vec<&'static str>,
    schema_version: Vec<i32>,
    payload: Vec<&'r str>,
    occurred_at: Vec<DateTime<Utc>>,
    offset: Vec<i64>,
    timestamp: Vec<DateTime<Utc>>,
    /// Only with `applied_events`: the statuses, and the changed orders.
    applied: Option<AppliedOrders<'r>>,
}

struct AppliedOrders<'r> {
    status: Vec<&'static str>,
    ids: Vec<Uuid>,
    restaurant: Vec<&'r str>,
    total: Vec<i64>,
    items: Vec<String>,
    created: Vec<DateTime<Utc>>,
}

impl<'r> HistoryRows<'r> {
    pub(crate) fn new(batch: &Batch<'r>, plan: &'r fold::Plan, applied_events: bool) -> Self {
        let n = plan.history.len();
        let mut rows = HistoryRows {
            event_id: Vec::with_capacity(n),
            order_id: Vec::with_capacity(n),
            customer_id: Vec::with_capacity(n),
            event_type: Vec::with_capacity(n),
            schema_version: Vec::with_capacity(n),
            payload: Vec::with_capacity(n),
            occurred_at: Vec::with_capacity(n),
            offset: Vec::with_capacity(n),
            timestamp: Vec::with_capacity(n),
            applied: None,
        };
        let mut status = Vec::new();
        for &i in &plan.history {
            let record = &batch.records[i];
            let Ok(event) = &record.event else { continue };
            rows.event_id.push(event.event_id);
            rows.order_id.push(event.order_id);
            rows.customer_id.push(event.customer_id.as_str());
            rows.event_type.push(event.body.event_type());
            rows.schema_version.push(event.schema_version as i32);
            // A decoded event's value is valid UTF-8 JSON by construction.
            rows.payload.push(
                record
                    .value
                    .as_deref()
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .unwrap_or("{}"),
            );
            rows.occurred_at.push(event.occurred_at);
            rows.offset.push(record.offset);
            rows.timestamp.push(record.timestamp);
            if applied_events {
                status.push(Status::after(&event.body).as_str());
            }
        }
        if applied_events {
            // The orders' attributes, one row per order the batch changed.
            let orders = &plan.view;
            rows.applied = Some(AppliedOrders {
                status,
                ids: orders.iter().map(|c| c.state.order_id).collect(),
                restaurant: orders
                    .iter()
                    .map(|c| c.state.restaurant_id.as_str())
                    .collect(),
                total: orders.iter().map(|c| c.state.total_cents).collect(),
                items: orders.iter().map(|c| items_json(&c.state)).collect(),
                created: orders.iter().map(|c| c.state.created_at).collect(),
            });
        }
        rows
    }

    /// The statement: the plain insert, or the insert that also fills
    /// `applied_events`.
    pub(crate) fn sql(&self) -> String {
        let insert = include_str!("../sql/insert_history.sql");
        match self.applied {
            None => insert.to_owned(),
            Some(_) => format!(
                "WITH h AS ({} RETURNING *) {}",
                insert.trim_end(),
                include_str!("../sql/insert_applied_events.sql")
            ),
        }
    }

    pub(crate) fn params<'p>(&'p self, batch: &'p Batch<'_>) -> Vec<Param<'p>> {
        let mut params: Vec<Param<'p>> = vec![
            &batch.topic,
            &batch.partition,
            &self.event_id,
            &self.order_id,
            &self.customer_id,
            &self.event_type,
            &self.schema_version,
            &self.payload,
            &self.occurred_at,
            &self.offset,
            &self.timestamp,
            &batch.incarnation,
        ];
        if let Some(a) = &self.applied {
            params.extend([
                &a.status as Param<'p>,
                &a.ids,
                &a.restaurant,
                &a.total,
                &a.items,
                &a.created,
            ]);
        }
        params
    }
}

/// The orders view rows the batch changed (upsert_orders.sql).
pub(crate) struct ViewRows<'r> {
    order_id: Vec<Uuid>,
    customer_id: Vec<&'r str>,
    restaurant_id: Vec<&'r str>,
    status: Vec<&'static str>,
    items: Vec<String>,
    total: Vec<i64>,
    created: Vec<DateTime<Utc>>,
    updated: Vec<DateTime<Utc>>,
    last_event: Vec<Uuid>,
    source_offset: Vec<i64>,
}

impl<'r> ViewRows<'r> {
    pub(crate) fn new(rows: &'r [Current]) -> Self {
        ViewRows {
            order_id: rows.iter().map(|c| c.state.order_id).collect(),
            customer_id: rows.iter().map(|c| c.state.customer_id.as_str()).collect(),
            restaurant_id: rows
                .iter()
                .map(|c| c.state.restaurant_id.as_str())
                .collect(),
            status: rows.iter().map(|c| c.state.status.as_str()).collect(),
            items: rows.iter().map(|c| items_json(&c.state)).collect(),
            total: rows.iter().map(|c| c.state.total_cents).collect(),
            created: rows.iter().map(|c| c.state.created_at).collect(),
            updated: rows.iter().map(|c| c.state.updated_at).collect(),
            last_event: rows.iter().map(|c| c.state.last_event_id).collect(),
            source_offset: rows.iter().map(|c| c.source_offset).collect(),
        }
    }

    pub(crate) fn params<'p>(&'p self, batch: &'p Batch<'_>) -> [Param<'p>; 13] {
        [
            &batch.topic,
            &batch.partition,
            &self.order_id,
            &self.customer_id,
            &self.restaurant_id,
            &self.status,
            &self.items,
            &self.total,
            &self.created,
            &self.updated,
            &self.last_event,
            &self.source_offset,
            &batch.incarnation,
        ]
    }
}

/// The records that go to `dead_letters` (insert_dead_letters.sql), each
/// with its headers: the only rows that keep them.
pub(crate) struct DeadLetterRows<'r> {
    offset: Vec<i64>,
    timestamp: Vec<DateTime<Utc>>,
    key: Vec<Option<&'r [u8]>>,
    value: Vec<Option<&'r [u8]>>,
    kind: Vec<&'static str>,
    message: Vec<&'r str>,
    headers: Vec<serde_json::Value>,
    event_id: Vec<Option<Uuid>>,
}

impl<'r> DeadLetterRows<'r> {
    pub(crate) fn new(batch: &Batch<'r>, dead: &'r [fold::DeadLetter]) -> Self {
        let n = dead.len();
        let mut rows = DeadLetterRows {
            offset: Vec::with_capacity(n),
            timestamp: Vec::with_capacity(n),
            key: Vec::with_capacity(n),
            value: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            message: Vec::with_capacity(n),
            headers: Vec::with_capacity(n),
            event_id: Vec::with_capacity(n),
        };
        for d in dead {
            let record = &batch.records[d.index];
            tracing::warn!(
                partition = batch.partition,
                offset = record.offset,
                kind = d.kind,
                error = %d.message,
                "dead letter"
            );
            rows.event_id
                .push(record.event.as_ref().ok().map(|e| e.event_id));
            rows.offset.push(record.offset);
            rows.timestamp.push(record.timestamp);
            rows.key.push(record.key.as_deref());
            rows.value.push(record.value.as_deref());
            rows.kind.push(d.kind);
            rows.message.push(d.message.as_str());
            rows.headers.push(crate::headers::to_json(&record.headers));
        }
        rows
    }

    pub(crate) fn params<'p>(&'p self, batch: &'p Batch<'_>) -> [Param<'p>; 12] {
        [
            &batch.group,
            &batch.topic,
            &batch.partition,
            &self.offset,
            &self.timestamp,
            &self.key,
            &self.value,
            &self.kind,
            &self.message,
            &batch.incarnation,
            &self.headers,
            &self.event_id,
        ]
    }
}

fn items_json(state: &events::OrderState) -> String {
    serde_json::to_string(&state.items).unwrap_or_else(|_| "[]".to_owned())
}
