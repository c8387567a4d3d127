INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
VALUES ($1, $2, $3, $4)
ON CONFLICT (group_id, topic, partition) DO NOTHING
