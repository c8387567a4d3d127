-- Delivery times per order: when it was created, paid, shipped and
-- delivered (or cancelled), and the time each step took. A SQL projection:
-- `foodpipe consume --projections projections` adds it. Copy this folder
-- to make your own (projections/README.md).
CREATE TABLE delivery_times (
    order_id      uuid        PRIMARY KEY,
    restaurant_id text        NOT NULL,
    created_at    timestamptz NOT NULL,
    paid_at       timestamptz,
    shipped_at    timestamptz,
    delivered_at  timestamptz,
    cancelled_at  timestamptz,
    to_pay        interval GENERATED ALWAYS AS (paid_at - created_at) STORED,
    to_ship       interval GENERATED ALWAYS AS (shipped_at - paid_at) STORED,
    to_deliver    interval GENERATED ALWAYS AS (delivered_at - shipped_at) STORED,
    total         interval GENERATED ALWAYS AS (delivered_at - created_at) STORED
)
-- Each row is updated at every step of its order: room on each page lets
-- PostgreSQL update it in place (a HOT update, no new index entry).
WITH (fillfactor = 70);
