-- A topic deleted and recreated under the same name starts again at offset
-- 0. Its records are new records, so the position of a record is
-- (topic, partition, incarnation, offset): the incarnation goes up by one
-- each time the consumer notices the partition's log is not the one its
-- stored offset was taken from (invariant 8).

ALTER TABLE consumer_offsets
    ADD COLUMN incarnation integer NOT NULL DEFAULT 0,
    -- A hash of the last applied record (timestamp, key, value). When a
    -- partition is taken, the record just before the stored offset is
    -- fetched and compared: a different record means a different log.
    ADD COLUMN last_fingerprint bigint;

ALTER TABLE order_events
    ADD COLUMN kafka_incarnation integer NOT NULL DEFAULT 0,
    DROP CONSTRAINT order_events_kafka_topic_kafka_partition_kafka_offset_key,
    ADD CONSTRAINT order_events_position_key
        UNIQUE (kafka_topic, kafka_partition, kafka_incarnation, kafka_offset);

ALTER TABLE orders
    ADD COLUMN source_incarnation integer NOT NULL DEFAULT 0;

ALTER TABLE dead_letters
    ADD COLUMN kafka_incarnation integer NOT NULL DEFAULT 0,
    DROP CONSTRAINT dead_letters_group_id_topic_partition_kafka_offset_key,
    ADD CONSTRAINT dead_letters_position_key
        UNIQUE (group_id, topic, partition, kafka_incarnation, kafka_offset);

-- Every time a stored offset could not be used as it was: records removed
-- by retention, a log shorter than the stored offset, or a recreated topic.
CREATE TABLE offset_gaps (
    id             bigserial PRIMARY KEY,
    group_id       text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    -- 'retention': the stored offset is below the earliest offset on the
    -- broker; 'log_end': it is above the log end; 'recreated': the record
    -- before it is not the one that was applied.
    reason         text        NOT NULL,
    stored_offset  bigint      NOT NULL,
    earliest       bigint      NOT NULL,
    latest         bigint      NOT NULL,
    -- Where the consumer went on from, by the --offset-reset policy.
    reset_to       bigint      NOT NULL,
    policy         text        NOT NULL,
    old_incarnation integer    NOT NULL,
    new_incarnation integer    NOT NULL,
    detected_at    timestamptz NOT NULL DEFAULT now()
);
