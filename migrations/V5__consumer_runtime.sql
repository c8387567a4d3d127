-- The consumer runtime's bookkeeping: who a member is, where it can be
-- asked about its health, what state it is in, and which partitions it
-- stopped and why.

ALTER TABLE group_members
    -- A random token of the process holding this member id. The first
    -- heartbeat of a process claims the id (a second process started with
    -- a live member's id takes it over, as Kafka's static membership does
    -- with group.instance.id); every later heartbeat, take and commit of
    -- the earlier process then finds the token changed and stops.
    ADD COLUMN session uuid,
    -- Where this member serves /metrics and /healthz, if anywhere: the
    -- default port falls back to the next free one when several members
    -- share a host, so `group describe` says which is whose.
    ADD COLUMN metrics_addr text,
    -- A one-line summary the member writes with each heartbeat: `stable`,
    -- `rebalancing (waiting for 3 held by m-b)`, `degraded (partition 2
    -- stopped)` ...
    ADD COLUMN state text NOT NULL DEFAULT 'joining';

ALTER TABLE consumer_offsets
    -- Set when the owner stopped the partition on an error that retrying
    -- cannot fix (a batch that cannot be decoded, the fail reset policy).
    -- The owner keeps the lease, so the partition is not passed around to
    -- fail again elsewhere; the next member to take it (a restart, or
    -- another member once this one is gone) clears it and tries again.
    ADD COLUMN stopped_error text,
    ADD COLUMN stopped_at timestamptz;
