INSERT INTO offset_gaps (
    group_id, topic, partition, reason, stored_offset, earliest, latest,
    reset_to, policy, old_incarnation, new_incarnation)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
