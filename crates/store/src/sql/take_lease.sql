-- Take a partition's lease by bumping its epoch (invariant 5), if nobody
-- else holds it. Liveness is decided here, by PostgreSQL's clock at this
-- moment: a member list read a heartbeat ago may be stale. Two members
-- taking at once serialize on the row lock, and the second re-checks the
-- WHERE against the first's new owner (live), so only one wins.
UPDATE consumer_offsets o
SET owner = $4, epoch = o.epoch + 1, stopped_error = NULL, stopped_at = NULL,
    updated_at = now()
WHERE o.group_id = $1 AND o.topic = $2 AND o.partition = $3
  -- Nobody takes while a rebuild fences the group (V8__rebuild_fence.sql).
  AND NOT EXISTS (SELECT 1 FROM consumer_groups g
                  WHERE g.group_id = $1 AND g.fenced_until > clock_timestamp())
  -- Only a process whose session still holds its member id takes.
  AND EXISTS (SELECT 1 FROM group_members me
              WHERE me.group_id = $1 AND me.member_id = $4 AND me.session = $5)
  AND (o.owner IS NULL OR o.owner = $4 OR NOT EXISTS (
        SELECT 1 FROM group_members m
        WHERE m.group_id = $1 AND m.member_id = o.owner
          AND m.heartbeat_at >= clock_timestamp() - make_interval(secs => $6)))
RETURNING o.epoch, o.next_offset, o.incarnation, o.last_fingerprint, o.fingerprint_offset
