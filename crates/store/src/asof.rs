//! Time travel over the event history.

use chrono::{DateTime, Utc};
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
