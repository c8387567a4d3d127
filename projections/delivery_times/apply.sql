-- One row per order the batch touched. A batch may hold several events of
-- one order (created and paid, say), and one INSERT may not update a row
-- twice, so they are grouped first; a step already recorded keeps its time.
INSERT INTO delivery_times AS d
    (order_id, restaurant_id, created_at, paid_at, shipped_at, delivered_at, cancelled_at)
SELECT order_id,
       min(restaurant_id),
       min(order_created_at),
       min(occurred_at) FILTER (WHERE event_type = 'OrderPaid'),
       min(occurred_at) FILTER (WHERE event_type = 'OrderShipped'),
       min(occurred_at) FILTER (WHERE event_type = 'OrderDelivered'),
       min(occurred_at) FILTER (WHERE event_type = 'OrderCancelled')
FROM applied_events
GROUP BY order_id
ON CONFLICT (order_id) DO UPDATE SET
    paid_at = coalesce(d.paid_at, EXCLUDED.paid_at),
    shipped_at = coalesce(d.shipped_at, EXCLUDED.shipped_at),
    delivered_at = coalesce(d.delivered_at, EXCLUDED.delivered_at),
    cancelled_at = coalesce(d.cancelled_at, EXCLUDED.cancelled_at);
