-- The applied events as history holds them, with the order's state right
-- after each, in the columns of `applied_events` (applied_events.sql), in
-- the same order. `{events}` is the part of order_events wanted (a
-- partition's range, or what occurred by a time); projection_store.rs
-- fills it in. Filling a new projection and `asof --projection` read this.
-- History holds exactly the events the fold applied, each a step the state
-- machine allowed, so the status after an event is the status its type
-- leads to, and an order's restaurant, items, total and creation time are
-- those of its OrderCreated event, which never change afterwards. That
-- event is looked up per row (LATERAL, by the (order_id, occurred_at)
-- index), so a chunk costs what it holds, whatever the planner thinks of
-- the table's size. (Not a view: a view follows its tables when rebuild
-- moves them to the shadow, and would be dropped with it.)
SELECT e.event_id, e.event_type, e.order_id, e.customer_id, e.occurred_at,
       e.payload, e.kafka_topic, e.kafka_partition, e.kafka_incarnation,
       e.kafka_offset, e.kafka_timestamp,
       CASE e.event_type
           WHEN 'OrderCreated' THEN 'pending'
           WHEN 'OrderPaid' THEN 'paid'
           WHEN 'OrderShipped' THEN 'shipped'
           WHEN 'OrderDelivered' THEN 'delivered'
           WHEN 'OrderCancelled' THEN 'cancelled'
       END AS status,
       o.payload -> 'payload' ->> 'restaurant_id' AS restaurant_id,
       (o.payload -> 'payload' ->> 'total_cents')::bigint AS total_cents,
       o.payload -> 'payload' -> 'items' AS items,
       o.occurred_at AS order_created_at
FROM {events} e
CROSS JOIN LATERAL (
    SELECT c.payload, c.occurred_at FROM order_events c
    WHERE c.order_id = e.order_id AND c.event_type = 'OrderCreated'
    LIMIT 1
) o
