-- Time travel: the state of orders as of a moment, from the event history
-- alone. `foodpipe asof T` calls it; so can anyone with psql:
--
--   SELECT * FROM orders_as_of('2026-11-24T12:00:00Z');
--   SELECT * FROM orders_as_of(now() - interval '1 hour', only_customer => 'CUST-0042');
--
-- Each order's row comes from its last event at or before `t` (by
-- occurred_at, then by source position), with what OrderCreated said about
-- it. History holds only applied events, so this is the fold of the stream
-- up to `t`.
CREATE FUNCTION orders_as_of(
    t timestamptz,
    only_order uuid DEFAULT NULL,
    only_customer text DEFAULT NULL
)
RETURNS TABLE (
    order_id uuid,
    customer_id text,
    restaurant_id text,
    status text,
    items jsonb,
    total_cents bigint,
    created_at timestamptz,
    updated_at timestamptz,
    last_event_id uuid
)
LANGUAGE sql STABLE
AS $$
    SELECT DISTINCT ON (e.order_id)
        e.order_id,
        e.customer_id,
        c.payload -> 'payload' ->> 'restaurant_id',
        CASE e.event_type
            WHEN 'OrderCreated' THEN 'pending'
            WHEN 'OrderPaid' THEN 'paid'
            WHEN 'OrderShipped' THEN 'shipped'
            WHEN 'OrderDelivered' THEN 'delivered'
            WHEN 'OrderCancelled' THEN 'cancelled'
        END,
        c.payload -> 'payload' -> 'items',
        (c.payload -> 'payload' ->> 'total_cents')::bigint,
        c.occurred_at,
        e.occurred_at,
        e.event_id
    FROM order_events e
    JOIN order_events c
      ON c.order_id = e.order_id AND c.event_type = 'OrderCreated'
    WHERE e.occurred_at <= t
      AND (only_order IS NULL OR e.order_id = only_order)
      AND (only_customer IS NULL OR e.customer_id = only_customer)
    ORDER BY e.order_id, e.occurred_at DESC, e.kafka_incarnation DESC, e.kafka_offset DESC
$$;

CREATE INDEX order_events_customer_time ON order_events (customer_id, occurred_at);
