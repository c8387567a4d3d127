-- The second half of the history insert when SQL projections are attached
-- (apply/rows.rs): `h` is the history rows just inserted; each
-- goes to `applied_events` (applied_events.sql) with its order's state
-- right after it. $3 and $13 are the events' ids and the statuses they
-- lead to; $14..$18 the changed orders' ids, restaurants, totals, items
-- and creation times.
INSERT INTO applied_events
SELECT h.event_id, h.event_type, h.order_id, h.customer_id, h.occurred_at,
       h.payload, h.kafka_topic, h.kafka_partition, h.kafka_incarnation,
       h.kafka_offset, h.kafka_timestamp, s.status, o.restaurant_id,
       o.total_cents, o.items::jsonb, o.created_at
FROM h
JOIN unnest($3::uuid[], $13::text[]) AS s(event_id, status)
  ON s.event_id = h.event_id
JOIN unnest($14::uuid[], $15::text[], $16::int8[], $17::text[], $18::timestamptz[])
     AS o(order_id, restaurant_id, total_cents, items, created_at)
  ON o.order_id = h.order_id
