-- The batch's applied events, for its SQL projections (applied_events.sql).
INSERT INTO applied_events
SELECT e.event_id, e.event_type, e.order_id, e.customer_id, e.occurred_at,
       e.payload::jsonb, $1, $2, $3, e.kafka_offset, e.kafka_timestamp,
       e.status, e.restaurant_id, e.total_cents, e.items::jsonb,
       e.order_created_at
FROM unnest($4::uuid[], $5::text[], $6::uuid[], $7::text[], $8::timestamptz[],
            $9::text[], $10::int8[], $11::timestamptz[], $12::text[],
            $13::text[], $14::int8[], $15::text[], $16::timestamptz[])
     AS e(event_id, event_type, order_id, customer_id, occurred_at, payload,
          kafka_offset, kafka_timestamp, status, restaurant_id, total_cents,
          items, order_created_at)
