-- The applied events as history holds them, with the order's state right
-- after each, in the columns of `applied_events` (applied_events.sql), in
-- the same order. `{events}` is the part of order_events wanted (a
-- partition's range, or what occurred by a time) and `{created}` how each
-- one's OrderCreated is found; projection_store/ fills both in. Filling
-- a new projection and `asof --projection` read this.
-- History holds exactly the events the fold applied, each a step the state
-- machine allowed, so the status after an event is the status its type
-- leads to, and an order's restaurant, items, total and creation time are
-- those of its OrderCreated event, which never change afterwards. A fill's
-- chunk looks that event up per row (LATERAL, by the (order_id,
-- occurred_at) index), so it costs what it holds whatever the planner
-- thinks of the table's size; `asof`, which reads most of history, joins
-- all OrderCreated events at once (a hash join: 0.8 s over a million
-- events, against 3 s looked up one by one). (Not a view: a view follows
-- its tables when rebuild moves them to the shadow, and would be dropped
-- with it.)
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
JOIN {created} o ON o.order_id = e.order_id
