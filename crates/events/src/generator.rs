//! A deterministic stream of realistic, interleaved order lifecycles.
//!
//! Many orders are in flight at once, so consecutive events on a partition
//! belong to different orders, as in a real log. Each order runs
//! `OrderCreated → OrderPaid → OrderShipped → OrderDelivered`, or is
//! cancelled from pending or paid for a configurable share of orders.
//! Everything, including ids and timestamps, comes from one seeded ChaCha
//! stream, so the same [`GeneratorConfig`] yields the same events on every
//! machine and every run.

use chrono::{DateTime, Duration, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use uuid::Uuid;

use crate::state::Status;
use crate::wire::{
    CancelledBy, EventBody, LineItem, OrderCancelled, OrderCreated, OrderDelivered, OrderEvent,
    OrderPaid, OrderShipped, SCHEMA_VERSION,
};

/// What the generator makes.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    /// Seed of the whole stream: same seed, same events.
    pub seed: u64,
    /// Size of the fixed customer population (`CUST-0001` ...). 500 gives
    /// every partition of a small topic many keys.
    pub customers: u32,
    /// Size of the restaurant population.
    pub restaurants: u32,
    /// Share of orders that end cancelled instead of delivered (0.0..=1.0).
    pub cancel_share: f64,
    /// How many orders are open at once; higher interleaves more.
    pub in_flight: usize,
    /// Time of the first event; later events follow 1 ms to 2 s apart.
    pub start: DateTime<Utc>,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            customers: 500,
            restaurants: 40,
            cancel_share: 0.1,
            in_flight: 100,
            // A fixed instant, so a default config is reproducible too.
            start: DateTime::from_timestamp_millis(ID_EPOCH_MILLIS).unwrap_or_default(),
        }
    }
}

/// Dishes and their prices in cents.
const MENU: &[(&str, i64)] = &[
    ("Margherita pizza", 1150),
    ("Pepperoni pizza", 1350),
    ("Pad thai", 1290),
    ("Chicken tikka masala", 1490),
    ("Veggie burrito", 990),
    ("Cheeseburger", 1090),
    ("Salmon poke bowl", 1450),
    ("Falafel wrap", 850),
    ("Ramen", 1390),
    ("Caesar salad", 920),
    ("Sushi platter", 2290),
    ("Fries", 390),
    ("Lemonade", 350),
    ("Tiramisu", 590),
];

const PAYMENT_METHODS: &[&str] = &["card", "card", "card", "paypal", "apple_pay", "cash"];
const COURIERS: &[&str] = &["bike", "scooter", "car", "on_foot"];
const CANCEL_REASONS: &[&str] = &[
    "customer changed their mind",
    "restaurant too busy",
    "item out of stock",
    "payment problem",
];

/// An order that has not reached a final state yet.
#[derive(Debug)]
struct Open {
    order_id: Uuid,
    customer_id: String,
    total_cents: i64,
    status: Status,
    /// The state from which this order will be cancelled, if it will be.
    cancel_from: Option<Status>,
}

/// An endless iterator of order events; use `.take(n)`.
#[derive(Debug)]
pub struct Generator {
    config: GeneratorConfig,
    rng: ChaCha8Rng,
    clock: DateTime<Utc>,
    /// Where the clock started: ids count time from here (see `uuid`).
    origin: DateTime<Utc>,
    open: Vec<Open>,
}

/// The time field of the first id of every stream: 2026-01-01T00:00:00Z,
/// the default `start`.
const ID_EPOCH_MILLIS: i64 = 1_767_225_600_000;

impl Generator {
    pub fn new(config: GeneratorConfig) -> Self {
        // Millisecond precision, like Kafka record timestamps: an event's
        // `occurred_at` and its record's timestamp are then the same instant,
        // so "as of T" from history and from Kafka agree to the millisecond.
        let start = DateTime::from_timestamp_millis(config.start.timestamp_millis())
            .unwrap_or(config.start);
        Self {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            clock: start,
            origin: start,
            open: Vec::with_capacity(config.in_flight),
            config,
        }
    }

    /// A version 7 id: a time in milliseconds, then 74 random bits. Ids
    /// made later sort after earlier ones, as RFC 9562 recommends for
    /// database keys: PostgreSQL then adds each new id of history and the
    /// view at the right end of their primary keys, instead of on a random
    /// page that may have to be read back from disk once the indexes
    /// outgrow `shared_buffers` (docs/benchmarks.md, "Growth").
    ///
    /// The time is the event's time within the stream, counted from
    /// [`ID_EPOCH_MILLIS`] rather than from `config.start`, so the same seed
    /// gives the same ids whenever it runs (`produce` starts at now, and
    /// `make chaos` checks what it produced against `generate` of the same
    /// seed). With the default start the two are the same instant.
    fn uuid(&mut self) -> Uuid {
        let elapsed = (self.clock - self.origin).num_milliseconds();
        let millis = u64::try_from(ID_EPOCH_MILLIS + elapsed).unwrap_or(0);
        // 16 bytes drawn as before the ids were v7, so the rest of the
        // stream (customers, items, times) is unchanged for every seed.
        let random: [u8; 16] = self.rng.random();
        let mut bits = [0u8; 10];
        bits.copy_from_slice(&random[..10]);
        uuid::Builder::from_unix_timestamp_millis(millis, &bits).into_uuid()
    }

    fn pick<T: Copy>(&mut self, options: &[T]) -> T {
        options[self.rng.random_range(0..options.len())]
    }

    fn create(&mut self) -> OrderEvent {
        let customer = self.rng.random_range(1..=self.config.customers.max(1));
        let restaurant = self.rng.random_range(1..=self.config.restaurants.max(1));
        let lines = self.rng.random_range(1..=5);
        let items: Vec<LineItem> = (0..lines)
            .map(|_| {
                let (name, price) = self.pick(MENU);
                LineItem {
                    name: name.to_owned(),
                    quantity: self.rng.random_range(1..=3),
                    unit_price_cents: price,
                }
            })
            .collect();
        let total_cents = items
            .iter()
            .map(|i| i64::from(i.quantity) * i.unit_price_cents)
            .sum();
        let cancel_from = if self
            .rng
            .random_bool(self.config.cancel_share.clamp(0.0, 1.0))
        {
            Some(self.pick(&[Status::Pending, Status::Paid]))
        } else {
            None
        };
        let order_id = self.uuid();
        let customer_id = format!("CUST-{customer:04}");
        self.open.push(Open {
            order_id,
            customer_id: customer_id.clone(),
            total_cents,
            status: Status::Pending,
            cancel_from,
        });
        self.event(
            order_id,
            customer_id,
            EventBody::OrderCreated(OrderCreated {
                restaurant_id: format!("REST-{restaurant:03}"),
                items,
                total_cents,
            }),
        )
    }

    /// Moves the open order at `index` one step along its lifecycle.
    fn advance(&mut self, index: usize) -> OrderEvent {
        let (status, cancel_from, total_cents) = {
            let o = &self.open[index];
            (o.status, o.cancel_from, o.total_cents)
        };
        let (next, body) = if cancel_from == Some(status) {
            let reason = self.pick(CANCEL_REASONS);
            let by = self.pick(&[CancelledBy::Customer, CancelledBy::Restaurant]);
            (
                Status::Cancelled,
                EventBody::OrderCancelled(OrderCancelled {
                    reason: reason.to_owned(),
                    cancelled_by: by,
                }),
            )
        } else {
            match status {
                Status::Pending => {
                    let payment_id = self.uuid();
                    let method = self.pick(PAYMENT_METHODS);
                    (
                        Status::Paid,
                        EventBody::OrderPaid(OrderPaid {
                            payment_id,
                            amount_cents: total_cents,
                            method: method.to_owned(),
                        }),
                    )
                }
                Status::Paid => {
                    let courier = self.pick(COURIERS);
                    (
                        Status::Shipped,
                        EventBody::OrderShipped(OrderShipped {
                            courier: courier.to_owned(),
                        }),
                    )
                }
                // Open orders are never final; Shipped is the only one left.
                _ => (
                    Status::Delivered,
                    EventBody::OrderDelivered(OrderDelivered {}),
                ),
            }
        };
        let (order_id, customer_id) = if matches!(next, Status::Delivered | Status::Cancelled) {
            let done = self.open.swap_remove(index);
            (done.order_id, done.customer_id)
        } else {
            let o = &mut self.open[index];
            o.status = next;
            (o.order_id, o.customer_id.clone())
        };
        self.event(order_id, customer_id, body)
    }

    fn event(&mut self, order_id: Uuid, customer_id: String, body: EventBody) -> OrderEvent {
        // The clock only moves forward, so events of an order are monotonic.
        self.clock += Duration::milliseconds(self.rng.random_range(1..=2000));
        OrderEvent {
            event_id: self.uuid(),
            schema_version: SCHEMA_VERSION,
            order_id,
            customer_id,
            occurred_at: self.clock,
            body,
        }
    }
}

impl Iterator for Generator {
    type Item = OrderEvent;

    fn next(&mut self) -> Option<OrderEvent> {
        let room = self.open.len() < self.config.in_flight.max(1);
        // With room, open a new order half the time; otherwise move one on.
        if self.open.is_empty() || (room && self.rng.random_bool(0.5)) {
            Some(self.create())
        } else {
            let index = self.rng.random_range(0..self.open.len());
            Some(self.advance(index))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::OrderState;
    use std::collections::HashMap;

    fn config(seed: u64) -> GeneratorConfig {
        GeneratorConfig {
            seed,
            ..GeneratorConfig::default()
        }
    }

    /// The same seed gives the same events; another seed gives others.
    #[test]
    fn deterministic_per_seed() {
        let a: Vec<_> = Generator::new(config(1)).take(300).collect();
        let b: Vec<_> = Generator::new(config(1)).take(300).collect();
        let c: Vec<_> = Generator::new(config(2)).take(300).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    /// Every generated stream is a valid fold: no event the state machine refuses.
    #[test]
    fn every_event_is_a_valid_transition() {
        let mut orders: HashMap<Uuid, OrderState> = HashMap::new();
        let mut last_time: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
        for event in Generator::new(config(3)).take(20_000) {
            let next = OrderState::apply(orders.get(&event.order_id), &event)
                .expect("generator only makes allowed transitions");
            if let Some(prev) = last_time.insert(event.order_id, event.occurred_at) {
                assert!(
                    prev < event.occurred_at,
                    "occurred_at is monotonic per order"
                );
            }
            assert_eq!(
                next.customer_id, event.customer_id,
                "an order keeps its customer"
            );
            orders.insert(event.order_id, next);
        }
        let finished = orders
            .values()
            .filter(|o| matches!(o.status, Status::Delivered | Status::Cancelled))
            .count();
        let cancelled = orders
            .values()
            .filter(|o| o.status == Status::Cancelled)
            .count();
        assert!(finished > 3000, "most orders finish: {finished}");
        // 10% cancel share, with generous slack for chance.
        let share = cancelled as f64 / finished as f64;
        assert!((0.05..0.15).contains(&share), "cancel share {share}");
    }

    /// Orders interleave: consecutive events usually belong to different orders.
    #[test]
    fn orders_interleave() {
        let events: Vec<_> = Generator::new(config(4)).take(2000).collect();
        let switches = events
            .windows(2)
            .filter(|w| w[0].order_id != w[1].order_id)
            .count();
        assert!(switches > 1800, "only {switches} switches in 2000 events");
    }

    /// Ids are version 7 and carry their event's time (with the default
    /// start), so each new event id sorts after every earlier one (the
    /// clock moves at least 1 ms per event) and history's primary key grows
    /// at its right end.
    #[test]
    fn event_ids_are_version_7_and_grow_with_time() {
        let events: Vec<_> = Generator::new(config(6)).take(5000).collect();
        for pair in events.windows(2) {
            assert!(
                pair[0].event_id < pair[1].event_id,
                "{} then {}",
                pair[0].event_id,
                pair[1].event_id
            );
        }
        for event in &events {
            assert_eq!(event.event_id.get_version_num(), 7);
            assert_eq!(event.order_id.get_version_num(), 7);
            let (secs, nanos) = event
                .event_id
                .get_timestamp()
                .expect("a v7 id has a timestamp")
                .to_unix();
            let millis = i64::try_from(secs).expect("a time after 1970") * 1000
                + i64::from(nanos / 1_000_000);
            assert_eq!(millis, event.occurred_at.timestamp_millis());
        }
    }

    /// `produce` starts its clock at now and `generate` too, so the ids
    /// must not depend on the start: `make chaos` regenerates what it
    /// produced minutes earlier, by seed, and compares event ids.
    #[test]
    fn the_same_seed_gives_the_same_ids_from_any_start() {
        let later = GeneratorConfig {
            start: config(7).start + Duration::days(300),
            ..config(7)
        };
        let a: Vec<_> = Generator::new(config(7)).take(200).collect();
        let b: Vec<_> = Generator::new(later).take(200).collect();
        assert_ne!(a[0].occurred_at, b[0].occurred_at);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.event_id, y.event_id);
            assert_eq!(x.order_id, y.order_id);
        }
    }

    /// Only customers of the configured population appear.
    #[test]
    fn customers_come_from_the_population() {
        let cfg = GeneratorConfig {
            customers: 7,
            ..config(5)
        };
        for event in Generator::new(cfg).take(1000) {
            let n: u32 = event.customer_id["CUST-".len()..]
                .parse()
                .expect("numbered");
            assert!((1..=7).contains(&n));
        }
    }
}
