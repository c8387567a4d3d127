-- No conflict is ignored: a dead letter already at one of these positions
-- (the same record read again after a group reset) was left out by
-- apply/mod.rs, and a different record there moved the batch to a new
-- incarnation, so a clash here is a bug to hear about.
INSERT INTO dead_letters (
    group_id, topic, partition, kafka_incarnation, kafka_offset,
    kafka_timestamp, key, value, error_kind, error, headers, event_id)
SELECT $1, $2, $3, $10, d.kafka_offset, d.kafka_timestamp, d.key, d.value,
       d.error_kind, d.error, d.headers, d.event_id
FROM unnest($4::int8[], $5::timestamptz[], $6::bytea[], $7::bytea[],
            $8::text[], $9::text[], $11::jsonb[], $12::uuid[])
     AS d(kafka_offset, kafka_timestamp, key, value, error_kind, error, headers,
          event_id)
