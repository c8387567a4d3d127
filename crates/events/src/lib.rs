//! Order lifecycle events, independent of Kafka and PostgreSQL.
//!
//! - [`OrderEvent`] is the JSON record on the `food-orders` topic, keyed by
//!   `customer_id`; [`decode`] turns raw record bytes into one, or into a
//!   [`DecodeError`] whose [`ErrorKind`] says why it is a dead letter.
//! - [`state`] is the order state machine (pending → paid → shipped →
//!   delivered, pending|paid → cancelled) and the fold of events into an
//!   order's current state.
//! - [`generator`] makes a deterministic, realistic stream of interleaved
//!   order lifecycles.
//! - [`escape_for_terminal`]: record bytes as text a terminal prints and
//!   does not obey, for every printer of record bytes.

pub mod generator;
pub mod state;
mod terminal;
mod wire;

pub use state::{OrderState, Status, TransitionError};
pub use terminal::{escape_for_terminal, escape_for_terminal_onto, json_for_terminal};
pub use wire::{
    CancelledBy, DecodeError, ErrorKind, EventBody, LineItem, OrderCancelled, OrderCreated,
    OrderDelivered, OrderEvent, OrderPaid, OrderShipped, SCHEMA_VERSION, decode,
};
