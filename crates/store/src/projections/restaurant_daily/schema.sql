-- Per restaurant and day (UTC; the day the order was created): orders
-- placed, orders delivered and their revenue, cancellations, and the
-- cancellation rate.
CREATE TABLE restaurant_daily (
    restaurant_id     text   NOT NULL,
    day               date   NOT NULL,
    orders            bigint NOT NULL DEFAULT 0,
    delivered         bigint NOT NULL DEFAULT 0,
    -- The totals of the day's orders that were delivered, in cents.
    revenue_cents     bigint NOT NULL DEFAULT 0,
    cancellations     bigint NOT NULL DEFAULT 0,
    cancellation_rate numeric GENERATED ALWAYS AS (
        CASE WHEN orders > 0 THEN round(cancellations::numeric / orders, 4) END
    ) STORED,
    PRIMARY KEY (restaurant_id, day)
)
-- A few rows, each updated by nearly every batch: room for in-place updates.
WITH (fillfactor = 50);
