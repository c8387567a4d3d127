SELECT partition, next_offset
FROM consumer_offsets
WHERE group_id = $1 AND topic = $2
ORDER BY partition
