-- Per customer: orders placed, delivered and cancelled, what the
-- delivered ones cost, and when the first and the last order was placed.
CREATE TABLE customer_stats (
    customer_id    text   PRIMARY KEY,
    orders         bigint NOT NULL DEFAULT 0,
    delivered      bigint NOT NULL DEFAULT 0,
    cancelled      bigint NOT NULL DEFAULT 0,
    spend_cents    bigint NOT NULL DEFAULT 0,
    first_order_at timestamptz,
    last_order_at  timestamptz
)
-- Updated at every step of a customer's orders: room for in-place updates.
WITH (fillfactor = 70);
