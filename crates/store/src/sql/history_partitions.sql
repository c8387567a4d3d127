-- Every (topic, partition) history holds, one index probe each (a loose
-- index scan on order_events_position_key), never a scan of the table.
WITH RECURSIVE parts AS (
    (SELECT kafka_topic, kafka_partition FROM order_events
     ORDER BY kafka_topic, kafka_partition LIMIT 1)
    UNION ALL
    SELECT n.kafka_topic, n.kafka_partition
    FROM parts p
    CROSS JOIN LATERAL (
        SELECT kafka_topic, kafka_partition FROM order_events
        WHERE (kafka_topic, kafka_partition) > (p.kafka_topic, p.kafka_partition)
        ORDER BY kafka_topic, kafka_partition LIMIT 1
    ) n
)
SELECT kafka_topic, kafka_partition FROM parts
