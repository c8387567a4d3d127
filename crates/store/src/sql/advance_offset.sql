-- Compare-and-set, and the fence of invariant 5: the offset only moves from
-- the value (and incarnation) this batch was fetched at, and only while the
-- committing member still holds the partition's lease at its epoch. If
-- anything changed, no row matches (none returned) and apply/mod.rs rolls the
-- transaction back. It runs at the start of the batch's transaction, right
-- after the order locks, so the offset row stays locked until the commit.
-- $11 is the incarnation after the batch: apply/mod.rs passes $6, and moves the
-- row to a new one itself if the batch meets another log of the partition
-- (a position clash). The fingerprint ($7) describes
-- the record at offset $10; a batch without records ($7 NULL: markers or
-- aborted records only) keeps the one stored.
UPDATE consumer_offsets
SET next_offset = $4,
    incarnation = $11,
    last_fingerprint = coalesce($7, last_fingerprint),
    fingerprint_offset = CASE WHEN $7::int8 IS NULL THEN fingerprint_offset ELSE $10 END,
    updated_at = now()
WHERE group_id = $1 AND topic = $2 AND partition = $3
  AND next_offset = $5 AND incarnation = $6
  AND ($8::text IS NULL OR (owner = $8 AND epoch = $9))
RETURNING next_offset
