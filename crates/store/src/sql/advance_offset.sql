-- Compare-and-set, and the fence of invariant 5: the offset only moves from
-- the value (and incarnation) this batch was fetched at, and only while the
-- committing member still holds the partition's lease at its epoch. If
-- anything changed, no row matches and the whole transaction rolls back.
UPDATE consumer_offsets
SET next_offset = $4, last_fingerprint = $7, updated_at = now()
WHERE group_id = $1 AND topic = $2 AND partition = $3
  AND next_offset = $5 AND incarnation = $6
  AND ($8::text IS NULL OR (owner = $8 AND epoch = $9))
