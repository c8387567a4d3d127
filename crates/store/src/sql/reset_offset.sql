-- Moves a stored offset that cannot be used as it is (see offset_gaps),
-- compare-and-set like a batch commit.
UPDATE consumer_offsets
SET next_offset = $4, incarnation = $5, last_fingerprint = NULL, fingerprint_offset = NULL, updated_at = now()
WHERE group_id = $1 AND topic = $2 AND partition = $3
  AND next_offset = $6 AND incarnation = $7
