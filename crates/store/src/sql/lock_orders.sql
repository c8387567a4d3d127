-- Invariant 13: one order's events are folded by one batch at a time,
-- whichever partitions they come from (records not keyed by customer,
-- partitions added to a live topic). $2 is sorted, so every transaction
-- takes shared keys in the same order and none waits in a cycle; the locks
-- are the transaction's and end with it. See order_lock_keys in apply/locks.rs.
-- First the attach lock ($3, $4), shared: a projection being attached
-- (projection_store/add.rs) holds it exclusively while it fills the last
-- stretch, so this batch either committed before or sees it attached.
WITH attach AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared($3, $4))
SELECT count(pg_advisory_xact_lock($1, k)) FROM attach, unnest($2::int4[]) AS k
