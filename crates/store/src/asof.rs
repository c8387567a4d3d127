//! Time travel over the event history.

use std::fmt;

use chrono::{DateTime, Utc};
use events::escape_for_terminal;
use uuid::Uuid;

use crate::{Result, Store};

/// An order as it was at some moment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OrderAsOf {
    pub order_id: Uuid,
    pub customer_id: String,
    pub restaurant_id: Option<String>,
    pub status: String,
    pub total_cents: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_event_id: Uuid,
}

/// Every order asked for as of one moment; its `Display` is `asof`'s table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrdersAsOf {
    pub time: DateTime<Utc>,
    pub orders: Vec<OrderAsOf>,
}

impl fmt::Display for OrdersAsOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} orders as of {}",
            self.orders.len(),
            self.time.to_rfc3339()
        )?;
        for o in &self.orders {
            writeln!(
                f,
                "{}  {:<10} {:<10} {:>9}  updated {}",
                o.order_id,
                // Written by whoever produced the event.
                escape_for_terminal(o.customer_id.as_bytes()),
                o.status,
                o.total_cents
                    .map_or("-".to_owned(), |c| format!("{}.{:02}", c / 100, c % 100)),
                o.updated_at.to_rfc3339()
            )?;
        }
        Ok(())
    }
}

impl Store {
    /// Every order (or one, or one customer's) as of `t`: history up to
    /// `t` (events that occurred at or before it) folded again by the
    /// fold itself ([`crate::fold::fold_history`]), so there is one state
    /// machine, in Rust. After the last event this is exactly the view.
    pub async fn orders_as_of(
        &self,
        t: DateTime<Utc>,
        order: Option<Uuid>,
        customer: Option<&str>,
    ) -> Result<Vec<OrderAsOf>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT payload::text FROM order_events \
                 WHERE occurred_at <= $1 \
                   AND ($2::uuid IS NULL OR order_id = $2) \
                   AND ($3::text IS NULL OR customer_id = $3)",
                &[&t, &order, &customer],
            )
            .await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let payload: &str = row.get(0);
            // History holds what decoded once; a row that no longer does was
            // written by something else, and is named rather than skipped.
            let event = events::decode(Some(payload.as_bytes())).map_err(|e| {
                crate::Error::UnreadableHistory(format!("{}: {payload:.200}", e.message))
            })?;
            events.push(event);
        }
        let mut orders: Vec<OrderAsOf> = crate::fold::fold_history(events)
            .into_iter()
            .map(|s| OrderAsOf {
                order_id: s.order_id,
                customer_id: s.customer_id,
                restaurant_id: Some(s.restaurant_id),
                status: s.status.as_str().to_owned(),
                total_cents: Some(s.total_cents),
                created_at: s.created_at,
                updated_at: s.updated_at,
                last_event_id: s.last_event_id,
            })
            .collect();
        orders.sort_by_key(|o| o.order_id);
        Ok(orders)
    }
}
