//! The fold the database must hold, computed here from the topic
//! independently of foodpipe, and the assertions that compare the two.

use std::collections::BTreeMap;

use super::{TestDb, TopicRecord, bootstrap_servers, read_topic_at};

/// What the `orders` view must hold for one order: the status and id of
/// its last event, folded here independently of foodpipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedOrder {
    pub status: &'static str,
    pub last_event_id: String,
}

/// The status an order has after an event of this type, written out from
/// the lifecycle rather than taken from foodpipe's state machine.
pub fn status_after(event_type: &str) -> &'static str {
    match event_type {
        "OrderCreated" => "pending",
        "OrderPaid" => "paid",
        "OrderShipped" => "shipped",
        "OrderDelivered" => "delivered",
        "OrderCancelled" => "cancelled",
        other => panic!("unexpected event type {other}"),
    }
}

/// The view a correct fold of these (valid, generated) records gives:
/// each order's last event by offset, all of an order's events being in
/// one partition.
pub fn expected_view(records: &[TopicRecord]) -> std::collections::HashMap<String, ExpectedOrder> {
    let mut last: std::collections::HashMap<String, (i32, i64, ExpectedOrder)> =
        std::collections::HashMap::new();
    for r in records {
        let order = r.value["order_id"].as_str().expect("order_id").to_owned();
        let expected = ExpectedOrder {
            status: status_after(r.value["event_type"].as_str().expect("event_type")),
            last_event_id: r.value["event_id"].as_str().expect("event_id").to_owned(),
        };
        if let Some((p, _, _)) = last.get(&order) {
            assert_eq!(*p, r.partition, "order {order} spans partitions");
        }
        let entry = last
            .entry(order)
            .or_insert((r.partition, r.offset, expected.clone()));
        if r.offset >= entry.1 {
            *entry = (r.partition, r.offset, expected);
        }
    }
    last.into_iter().map(|(k, (_, _, v))| (k, v)).collect()
}

/// Asserts the database is exactly the fold of the whole topic: every
/// event in history once, the view equal to [`expected_view`], and the
/// group's stored offsets equal to the high watermarks.
pub async fn assert_db_is_fold_of_topic(db: &TestDb, topic: &str, group: &str) {
    assert_db_is_fold_of_topic_at(&bootstrap_servers(), db, topic, group).await;
}

/// Like [`assert_db_is_fold_of_topic`], for a topic on the broker at `bootstrap`.
pub async fn assert_db_is_fold_of_topic_at(bootstrap: &str, db: &TestDb, topic: &str, group: &str) {
    let (records, watermarks) = read_topic_at(bootstrap, topic).await;
    let pg = db.client().await;
    let rows = pg
        .query(
            "SELECT event_id::text, kafka_partition, kafka_offset FROM order_events WHERE kafka_topic = $1",
            &[&topic],
        )
        .await
        .expect("query history");
    let in_history: std::collections::HashMap<String, (i32, i64)> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(in_history.len(), rows.len(), "no event_id twice in history");
    let mut first_copy: std::collections::HashMap<String, (i32, i64)> =
        std::collections::HashMap::new();
    for r in &records {
        let id = r.value["event_id"].as_str().expect("event_id").to_owned();
        first_copy.entry(id).or_insert((r.partition, r.offset));
    }
    assert_eq!(
        rows.len(),
        first_copy.len(),
        "one history row per distinct event"
    );
    for (id, at) in &first_copy {
        assert_eq!(
            in_history.get(id),
            Some(at),
            "event {id} from its first copy"
        );
    }

    let view: std::collections::HashMap<String, ExpectedOrder> = pg
        .query(
            "SELECT order_id::text, status, last_event_id::text FROM orders",
            &[],
        )
        .await
        .expect("query view")
        .iter()
        .map(|r| {
            let status: String = r.get(1);
            let status = ["pending", "paid", "shipped", "delivered", "cancelled"]
                .into_iter()
                .find(|s| *s == status)
                .unwrap_or_else(|| panic!("unknown status {status}"));
            (
                r.get(0),
                ExpectedOrder {
                    status,
                    last_event_id: r.get(2),
                },
            )
        })
        .collect();
    let expected = expected_view(&records);
    assert_eq!(view.len(), expected.len(), "one view row per order");
    for (order, want) in &expected {
        assert_eq!(view.get(order), Some(want), "order {order}");
    }
    assert_projections_match(&pg, &records).await;

    let stored: BTreeMap<i32, i64> = pg
        .query(
            "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2",
            &[&group, &topic],
        )
        .await
        .expect("query offsets")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(stored, watermarks, "stored offsets equal high watermarks");
}

/// Per restaurant and day: orders, delivered, revenue, cancellations.
type RestaurantDay = BTreeMap<(String, String), (i64, i64, i64, i64)>;
/// Per customer: orders, delivered, cancelled, spend, first and last order.
type CustomerStats = BTreeMap<String, (i64, i64, i64, i64, String, String)>;

/// The built-in projections as the test computes them from the topic's
/// distinct events (every generated event is applied): per restaurant and
/// day of the order's creation (UTC), and per customer.
pub fn expected_projections(records: &[TopicRecord]) -> (RestaurantDay, CustomerStats) {
    let mut seen = std::collections::HashSet::new();
    let events: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| seen.insert(r.value["event_id"].as_str().expect("event_id").to_owned()))
        .map(|r| &r.value)
        .collect();
    let time = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v["occurred_at"].as_str().expect("occurred_at"))
            .expect("RFC 3339")
            .with_timezone(&chrono::Utc)
    };
    // Each order's restaurant, total and creation time, from OrderCreated.
    let created: std::collections::HashMap<&str, (String, i64, chrono::DateTime<chrono::Utc>)> =
        events
            .iter()
            .filter(|v| v["event_type"] == "OrderCreated")
            .map(|v| {
                (
                    v["order_id"].as_str().expect("order_id"),
                    (
                        v["payload"]["restaurant_id"]
                            .as_str()
                            .expect("restaurant")
                            .to_owned(),
                        v["payload"]["total_cents"].as_i64().expect("total"),
                        time(v),
                    ),
                )
            })
            .collect();
    let mut days = RestaurantDay::new();
    let mut customers = CustomerStats::new();
    for v in &events {
        let (restaurant, total, at) = &created[v["order_id"].as_str().expect("order_id")];
        let day = days
            .entry((restaurant.clone(), at.date_naive().to_string()))
            .or_default();
        let customer = customers
            .entry(v["customer_id"].as_str().expect("customer").to_owned())
            .or_insert((0, 0, 0, 0, String::new(), String::new()));
        match v["event_type"].as_str().expect("event_type") {
            "OrderCreated" => {
                day.0 += 1;
                customer.0 += 1;
                let t = time(v).timestamp_micros();
                let earlier = |held: &str| held.parse::<i64>().map_or(true, |h| t < h);
                let later = |held: &str| held.parse::<i64>().map_or(true, |h| t > h);
                if earlier(&customer.4) {
                    customer.4 = t.to_string();
                }
                if later(&customer.5) {
                    customer.5 = t.to_string();
                }
            }
            "OrderDelivered" => {
                day.1 += 1;
                day.2 += total;
                customer.1 += 1;
                customer.3 += total;
            }
            "OrderCancelled" => {
                day.3 += 1;
                customer.2 += 1;
            }
            _ => {}
        }
    }
    (days, customers)
}

/// Asserts `restaurant_daily` and `customer_stats` equal
/// [`expected_projections`] of `records`, when history holds one topic.
pub async fn assert_projections_match(pg: &tokio_postgres::Client, records: &[TopicRecord]) {
    let topics: i64 = pg
        .query_one("SELECT count(DISTINCT kafka_topic) FROM order_events", &[])
        .await
        .expect("topics")
        .get(0);
    if topics > 1 {
        return;
    }
    let (days, customers) = expected_projections(records);
    let got_days: RestaurantDay = pg
        .query(
            "SELECT restaurant_id, day::text, orders, delivered, revenue_cents, cancellations \
             FROM restaurant_daily",
            &[],
        )
        .await
        .expect("restaurant_daily")
        .iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                (r.get(2), r.get(3), r.get(4), r.get(5)),
            )
        })
        .collect();
    assert_eq!(got_days, days, "restaurant_daily is the fold of the topic");
    let got_customers: CustomerStats = pg
        .query(
            "SELECT customer_id, orders, delivered, cancelled, spend_cents, \
                    coalesce(((extract(epoch FROM first_order_at) * 1000000)::int8)::text, ''), \
                    coalesce(((extract(epoch FROM last_order_at) * 1000000)::int8)::text, '') \
             FROM customer_stats",
            &[],
        )
        .await
        .expect("customer_stats")
        .iter()
        .map(|r| {
            (
                r.get(0),
                (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)),
            )
        })
        .collect();
    assert_eq!(
        got_customers, customers,
        "customer_stats is the fold of the topic"
    );
}
