//! The order state machine and the fold of events into an order's state.
//!
//! ```text
//! pending ──paid──> paid ──shipped──> shipped ──delivered──> delivered
//!    │                │
//!    └──cancelled─────┴──> cancelled
//! ```
//!
//! `delivered` and `cancelled` are final. An event the machine forbids is
//! not applied: the sink turns the [`TransitionError`] into a dead letter.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::wire::{EventBody, LineItem, OrderEvent};

/// Where an order is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Pending,
    Paid,
    Shipped,
    Delivered,
    Cancelled,
}

impl Status {
    /// The name stored in `orders.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Paid => "paid",
            Status::Shipped => "shipped",
            Status::Delivered => "delivered",
            Status::Cancelled => "cancelled",
        }
    }

    /// Parses the name stored in `orders.status`.
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "paid" => Status::Paid,
            "shipped" => Status::Shipped,
            "delivered" => Status::Delivered,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }

    /// The state an event of this body moves an order in `self` to, if the
    /// machine allows it. `OrderCreated` is handled by [`OrderState::apply`]
    /// because it has no prior state.
    fn next(self, body: &EventBody) -> Option<Status> {
        match (self, body) {
            (Status::Pending, EventBody::OrderPaid(_)) => Some(Status::Paid),
            (Status::Paid, EventBody::OrderShipped(_)) => Some(Status::Shipped),
            (Status::Shipped, EventBody::OrderDelivered(_)) => Some(Status::Delivered),
            (Status::Pending | Status::Paid, EventBody::OrderCancelled(_)) => {
                Some(Status::Cancelled)
            }
            _ => None,
        }
    }
}

impl Status {
    /// The status an event of this body leaves an order in.
    pub fn after(body: &EventBody) -> Status {
        match body {
            EventBody::OrderCreated(_) => Status::Pending,
            EventBody::OrderPaid(_) => Status::Paid,
            EventBody::OrderShipped(_) => Status::Shipped,
            EventBody::OrderDelivered(_) => Status::Delivered,
            EventBody::OrderCancelled(_) => Status::Cancelled,
        }
    }

    /// Whether an order in `self` can get to `later` by the machine's
    /// steps (zero or more). An event whose status leads to the order's
    /// current one is *behind* the order: it was one of its steps, met
    /// late, rather than a step the machine forbids.
    pub fn leads_to(self, later: Status) -> bool {
        use Status::*;
        match self {
            Pending => true,
            Paid => matches!(later, Paid | Shipped | Delivered | Cancelled),
            Shipped => matches!(later, Shipped | Delivered),
            Delivered => later == Delivered,
            Cancelled => later == Cancelled,
        }
    }
}

/// An event the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("{event_type} for order {order_id}, which was never created")]
    UnknownOrder {
        event_type: &'static str,
        order_id: Uuid,
    },
    #[error("OrderCreated for order {order_id}, which already exists")]
    AlreadyCreated { order_id: Uuid },
    #[error("{event_type} is not allowed for order {order_id} in state {from}")]
    Forbidden {
        event_type: &'static str,
        order_id: Uuid,
        from: &'static str,
    },
}

/// The current state of one order: a row of the `orders` view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderState {
    pub order_id: Uuid,
    pub customer_id: String,
    pub restaurant_id: String,
    pub status: Status,
    pub items: Vec<LineItem>,
    pub total_cents: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_event_id: Uuid,
}

impl OrderState {
    /// Applies `event` to the order's state (`None` if the order does not
    /// exist yet) and returns the new state, or why the machine refuses it.
    pub fn apply(
        state: Option<&OrderState>,
        event: &OrderEvent,
    ) -> Result<OrderState, TransitionError> {
        let event_type = event.body.event_type();
        match (state, &event.body) {
            (None, EventBody::OrderCreated(created)) => Ok(OrderState {
                order_id: event.order_id,
                customer_id: event.customer_id.clone(),
                restaurant_id: created.restaurant_id.clone(),
                status: Status::Pending,
                items: created.items.clone(),
                total_cents: created.total_cents,
                created_at: event.occurred_at,
                updated_at: event.occurred_at,
                last_event_id: event.event_id,
            }),
            (None, _) => Err(TransitionError::UnknownOrder {
                event_type,
                order_id: event.order_id,
            }),
            (Some(current), _) => {
                let mut next = current.clone();
                next.advance(event)?;
                Ok(next)
            }
        }
    }

    /// Applies `event` to this existing order in place (its items and
    /// names are not copied), or says why the machine refuses it, leaving
    /// the state as it was. The fold steps each order this way, event
    /// after event.
    pub fn advance(&mut self, event: &OrderEvent) -> Result<(), TransitionError> {
        if let EventBody::OrderCreated(_) = event.body {
            return Err(TransitionError::AlreadyCreated {
                order_id: event.order_id,
            });
        }
        match self.status.next(&event.body) {
            Some(status) => {
                self.status = status;
                self.updated_at = event.occurred_at;
                self.last_event_id = event.event_id;
                Ok(())
            }
            None => Err(TransitionError::Forbidden {
                event_type: event.body.event_type(),
                order_id: event.order_id,
                from: self.status.as_str(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::*;

    fn event(body: EventBody) -> OrderEvent {
        OrderEvent {
            event_id: Uuid::from_u128(1),
            schema_version: SCHEMA_VERSION,
            order_id: Uuid::from_u128(2),
            customer_id: "CUST-0001".into(),
            occurred_at: DateTime::UNIX_EPOCH,
            body,
        }
    }

    /// `leads_to` is exactly "reachable by the machine's own steps": the
    /// reflexive-transitive closure of `next`, computed here by search.
    #[test]
    fn leads_to_is_the_closure_of_the_machine() {
        let all = [
            Status::Pending,
            Status::Paid,
            Status::Shipped,
            Status::Delivered,
            Status::Cancelled,
        ];
        let bodies = [created(), paid(), shipped(), delivered(), cancelled()];
        for from in all {
            let mut reached = vec![from];
            let mut i = 0;
            while i < reached.len() {
                for body in &bodies {
                    if let Some(to) = reached[i].next(body)
                        && !reached.contains(&to)
                    {
                        reached.push(to);
                    }
                }
                i += 1;
            }
            for to in all {
                assert_eq!(
                    from.leads_to(to),
                    reached.contains(&to),
                    "{from:?} -> {to:?}"
                );
            }
        }
        // `after` names where each allowed step of the machine lands.
        assert_eq!(Status::after(&bodies[0]), Status::Pending);
        for from in all {
            for body in &bodies {
                if let Some(to) = from.next(body) {
                    assert_eq!(Status::after(body), to, "{body:?} from {from:?}");
                }
            }
        }
    }

    fn created() -> EventBody {
        EventBody::OrderCreated(OrderCreated {
            restaurant_id: "R-1".into(),
            items: vec![],
            total_cents: 0,
        })
    }
    fn paid() -> EventBody {
        EventBody::OrderPaid(OrderPaid {
            payment_id: Uuid::from_u128(3),
            amount_cents: 0,
            method: "card".into(),
        })
    }
    fn shipped() -> EventBody {
        EventBody::OrderShipped(OrderShipped {
            courier: "c".into(),
        })
    }
    fn delivered() -> EventBody {
        EventBody::OrderDelivered(OrderDelivered {})
    }
    fn cancelled() -> EventBody {
        EventBody::OrderCancelled(OrderCancelled {
            reason: "r".into(),
            cancelled_by: CancelledBy::Customer,
        })
    }

    fn fold(bodies: Vec<EventBody>) -> Result<Option<OrderState>, TransitionError> {
        let mut state = None;
        for body in bodies {
            state = Some(OrderState::apply(state.as_ref(), &event(body))?);
        }
        Ok(state)
    }

    /// The happy path ends delivered; cancellation is allowed from pending and paid.
    #[test]
    fn allowed_paths() {
        let status = |b| fold(b).expect("allowed").expect("exists").status;
        assert_eq!(
            status(vec![created(), paid(), shipped(), delivered()]),
            Status::Delivered
        );
        assert_eq!(status(vec![created(), cancelled()]), Status::Cancelled);
        assert_eq!(
            status(vec![created(), paid(), cancelled()]),
            Status::Cancelled
        );
    }

    /// Skipped steps, events after a final state and events for unknown orders are refused.
    #[test]
    fn forbidden_paths() {
        assert!(matches!(
            fold(vec![created(), delivered()]),
            Err(TransitionError::Forbidden {
                from: "pending",
                ..
            })
        ));
        assert!(matches!(
            fold(vec![created(), paid(), shipped(), cancelled()]),
            Err(TransitionError::Forbidden {
                from: "shipped",
                ..
            })
        ));
        assert!(matches!(
            fold(vec![created(), cancelled(), paid()]),
            Err(TransitionError::Forbidden {
                from: "cancelled",
                ..
            })
        ));
        assert!(matches!(
            fold(vec![created(), paid(), shipped(), delivered(), delivered()]),
            Err(TransitionError::Forbidden { .. })
        ));
        assert!(matches!(
            fold(vec![paid()]),
            Err(TransitionError::UnknownOrder { .. })
        ));
        assert!(matches!(
            fold(vec![created(), created()]),
            Err(TransitionError::AlreadyCreated { .. })
        ));
    }

    /// Status names round-trip through their stored form.
    #[test]
    fn status_names_round_trip() {
        for s in [
            Status::Pending,
            Status::Paid,
            Status::Shipped,
            Status::Delivered,
            Status::Cancelled,
        ] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("teleported"), None);
    }
}
