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
    /// Every order (or one, or one customer's) as of `t`, from history, in
    /// one query (`orders_as_of`, migration V4).
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
                "SELECT order_id, customer_id, restaurant_id, status, total_cents, \
                        created_at, updated_at, last_event_id \
                 FROM orders_as_of($1, $2, $3) ORDER BY order_id",
                &[&t, &order, &customer],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| OrderAsOf {
                order_id: r.get(0),
                customer_id: r.get(1),
                restaurant_id: r.get(2),
                status: r.get(3),
                total_cents: r.get(4),
                created_at: r.get(5),
                updated_at: r.get(6),
                last_event_id: r.get(7),
            })
            .collect())
    }
}
