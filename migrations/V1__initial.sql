-- foodpipe's schema: the event history, the orders view, the consumer
-- offsets stored next to the rows they produced, and the dead letters.

-- Every applied event, append-only. Kafka is the source of truth; this is
-- its folded, queryable copy, and the input of time travel (`asof`).
CREATE TABLE order_events (
    -- A producer retry writes the same event twice; this key makes the
    -- second copy a no-op (invariant 4).
    event_id        uuid PRIMARY KEY,
    order_id        uuid        NOT NULL,
    customer_id     text        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    -- The whole record value as it was on the topic.
    payload         jsonb       NOT NULL,
    occurred_at     timestamptz NOT NULL,
    kafka_topic     text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    kafka_timestamp timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    -- One row per record: re-applying an offset is a no-op too.
    UNIQUE (kafka_topic, kafka_partition, kafka_offset)
);

CREATE INDEX order_events_order_time ON order_events (order_id, occurred_at);
CREATE INDEX order_events_time ON order_events (occurred_at);

-- The materialized view: each order's current state.
CREATE TABLE orders (
    order_id         uuid PRIMARY KEY,
    customer_id      text        NOT NULL,
    restaurant_id    text        NOT NULL,
    status           text        NOT NULL
        CHECK (status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled')),
    items            jsonb       NOT NULL,
    total_cents      bigint      NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    last_event_id    uuid        NOT NULL,
    -- Where the last applied event came from. An event from an earlier
    -- offset never overwrites a later one (invariant 7).
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL
);

CREATE INDEX orders_customer ON orders (customer_id);
CREATE INDEX orders_status ON orders (status);

-- Kafka keeps consumer offsets in __consumer_offsets; foodpipe keeps them
-- here, updated in the same transaction as the rows they produced, so the
-- rows and the offset can never disagree after a crash (invariant 3).
CREATE TABLE consumer_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    -- The offset of the next record to apply (Kafka's committed offset).
    next_offset bigint      NOT NULL CHECK (next_offset >= 0),
    -- The member that owns the partition and its lease epoch; every commit
    -- checks them (invariant 5).
    owner       text,
    epoch       bigint      NOT NULL DEFAULT 0,
    -- The topic's id when the offset was stored, to notice a topic deleted
    -- and recreated under the same name (invariant 8).
    topic_id    uuid,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

-- Records that could not be applied, with everything needed to look at
-- them again (invariant 6).
CREATE TABLE dead_letters (
    id              bigserial PRIMARY KEY,
    group_id        text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    kafka_timestamp timestamptz NOT NULL,
    key             bytea,
    value           bytea,
    error_kind      text        NOT NULL,
    error           text        NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (group_id, topic, partition, kafka_offset)
);
