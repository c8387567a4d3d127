INSERT INTO dead_letters (
    group_id, topic, partition, kafka_incarnation, kafka_offset,
    kafka_timestamp, key, value, error_kind, error)
SELECT $1, $2, $3, $10, d.kafka_offset, d.kafka_timestamp, d.key, d.value,
       d.error_kind, d.error
FROM unnest($4::int8[], $5::timestamptz[], $6::bytea[], $7::bytea[],
            $8::text[], $9::text[])
     AS d(kafka_offset, kafka_timestamp, key, value, error_kind, error)
ON CONFLICT DO NOTHING
