-- The relation a batch's SQL projections read: one row per event the fold
-- applied in the batch, with the order's state right after it. Made once
-- per connection; emptied by every commit. The columns are those of the
-- query in applied_history.sql, in the same order.
CREATE TEMP TABLE IF NOT EXISTS applied_events (
    event_id          uuid        NOT NULL,
    event_type        text        NOT NULL,
    order_id          uuid        NOT NULL,
    customer_id       text        NOT NULL,
    occurred_at       timestamptz NOT NULL,
    payload           jsonb       NOT NULL,
    kafka_topic       text        NOT NULL,
    kafka_partition   integer     NOT NULL,
    kafka_incarnation integer     NOT NULL,
    kafka_offset      bigint      NOT NULL,
    kafka_timestamp   timestamptz NOT NULL,
    status            text        NOT NULL,
    restaurant_id     text,
    total_cents       bigint,
    items             jsonb,
    order_created_at  timestamptz
) ON COMMIT DELETE ROWS
