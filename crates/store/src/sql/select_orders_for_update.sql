-- The current state of the orders a batch touches, locked until commit so
-- no other transaction folds them at the same time.
SELECT order_id, customer_id, restaurant_id, status, items::text,
       total_cents, created_at, updated_at, last_event_id, source_topic,
       source_partition, source_incarnation, source_offset
FROM orders
WHERE order_id = ANY($1)
FOR UPDATE
