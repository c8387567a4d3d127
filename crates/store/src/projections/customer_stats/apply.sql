INSERT INTO customer_stats AS c
    (customer_id, orders, delivered, cancelled, spend_cents, first_order_at, last_order_at)
SELECT customer_id,
       count(*) FILTER (WHERE event_type = 'OrderCreated'),
       count(*) FILTER (WHERE event_type = 'OrderDelivered'),
       count(*) FILTER (WHERE event_type = 'OrderCancelled'),
       coalesce(sum(total_cents) FILTER (WHERE event_type = 'OrderDelivered'), 0),
       min(occurred_at) FILTER (WHERE event_type = 'OrderCreated'),
       max(occurred_at) FILTER (WHERE event_type = 'OrderCreated')
FROM applied_events
GROUP BY customer_id
ON CONFLICT (customer_id) DO UPDATE SET
    orders = c.orders + EXCLUDED.orders,
    delivered = c.delivered + EXCLUDED.delivered,
    cancelled = c.cancelled + EXCLUDED.cancelled,
    spend_cents = c.spend_cents + EXCLUDED.spend_cents,
    -- least/greatest skip NULLs: a batch without OrderCreated keeps them.
    first_order_at = least(c.first_order_at, EXCLUDED.first_order_at),
    last_order_at = greatest(c.last_order_at, EXCLUDED.last_order_at);
