-- The incarnation a partition's new log is folded in: past the current one
-- and past every incarnation any row of history or dead letters (of any
-- group) names for this partition, so no position of the new log can meet
-- a row of an old one.
SELECT greatest(
    $3::int4 + 1,
    (SELECT max(kafka_incarnation) + 1 FROM order_events
     WHERE kafka_topic = $1 AND kafka_partition = $2),
    (SELECT max(kafka_incarnation) + 1 FROM dead_letters
     WHERE topic = $1 AND partition = $2))
