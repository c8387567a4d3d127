-- Consumer groups emulated on PostgreSQL (rskafka has no group protocol).

-- One row per group: its generation goes up on every join, leave or expiry,
-- like the generation of a Kafka group coordinator.
CREATE TABLE consumer_groups (
    group_id   text PRIMARY KEY,
    generation bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per live `foodpipe consume` process. A member whose heartbeat is
-- older than the session timeout is expired by whichever member notices.
-- Heartbeats use PostgreSQL's clock, so members on different machines
-- agree on what "older" means.
CREATE TABLE group_members (
    group_id     text        NOT NULL,
    member_id    text        NOT NULL,
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (group_id, member_id)
);
