-- What the fold must know before it decides, in one round trip:
-- 'known': event ids the fold has seen before, applied (history) or
--   refused (a dead letter that decoded). A later copy of either is a
--   duplicate, so a producer retry never gets a second chance at the
--   state machine.
-- 'history' / 'dead_letter': rows already at the batch's offsets in this
--   incarnation of the partition (dead letters of this group): the same
--   records read again, or another log (apply/positions.rs, compare_positions).
--   $7 and $8 are the batch's first and last offsets: the range keeps the
--   index scan to the batch's positions (a generic plan otherwise scanned
--   the partition's whole history and filtered it by = ANY($5): 4 s per
--   batch with 240,000 events in a partition).
-- 'projection': each attached projection as name:hash, to notice one
--   attached or dropped since this process last looked.
SELECT 'known' AS what, event_id, NULL::int8 AS kafka_offset,
       NULL::bytea AS key, NULL::bytea AS value, NULL::text AS projection
FROM order_events WHERE event_id = ANY($1)
UNION ALL
SELECT 'known', event_id, NULL, NULL, NULL, NULL
FROM dead_letters WHERE event_id = ANY($1)
UNION ALL
SELECT 'projection', NULL, NULL, NULL, NULL, name || ':' || definition_hash
FROM projections WHERE state = 'attached'
UNION ALL
SELECT 'history', event_id, kafka_offset, NULL, NULL, NULL
FROM order_events
WHERE kafka_topic = $2 AND kafka_partition = $3 AND kafka_incarnation = $4
  AND kafka_offset BETWEEN $7 AND $8 AND kafka_offset = ANY($5)
UNION ALL
SELECT 'dead_letter', event_id, kafka_offset, key, value, NULL
FROM dead_letters
WHERE group_id = $6 AND topic = $2 AND partition = $3
  AND kafka_incarnation = $4 AND kafka_offset BETWEEN $7 AND $8
  AND kafka_offset = ANY($5)
