-- One statement for the whole batch: each array holds one column.
-- The conflict target is the event id alone: a copy of an event applied
-- before is a no-op (the fold already skips the copies it can see). A row
-- already at one of these positions (topic, partition, incarnation,
-- offset) is a different record, and is an error, never silence: apply/mod.rs
-- compares positions first and moves another log to a new incarnation.
INSERT INTO order_events (
    event_id, order_id, customer_id, event_type, schema_version, payload,
    occurred_at, kafka_topic, kafka_partition, kafka_incarnation, kafka_offset,
    kafka_timestamp)
SELECT e.event_id, e.order_id, e.customer_id, e.event_type, e.schema_version,
       e.payload::jsonb, e.occurred_at, $1, $2, $12, e.kafka_offset,
       e.kafka_timestamp
FROM unnest($3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::int4[],
            $8::text[], $9::timestamptz[], $10::int8[], $11::timestamptz[])
     AS e(event_id, order_id, customer_id, event_type, schema_version,
          payload, occurred_at, kafka_offset, kafka_timestamp)
ON CONFLICT (event_id) DO NOTHING
