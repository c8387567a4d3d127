SELECT next_offset, incarnation, last_fingerprint, fingerprint_offset
FROM consumer_offsets
WHERE group_id = $1 AND topic = $2 AND partition = $3
