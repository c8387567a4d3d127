-- One row per order touched by the batch, already folded to its final
-- state. The WHERE guard keeps the view from moving backwards: a row is
-- only replaced by one from a later offset of its partition.
INSERT INTO orders (
    order_id, customer_id, restaurant_id, status, items, total_cents,
    created_at, updated_at, last_event_id, source_topic, source_partition,
    source_incarnation, source_offset)
SELECT v.order_id, v.customer_id, v.restaurant_id, v.status, v.items::jsonb,
       v.total_cents, v.created_at, v.updated_at, v.last_event_id, $1, $2,
       $13, v.source_offset
FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::int8[], $9::timestamptz[], $10::timestamptz[], $11::uuid[],
            $12::int8[])
     AS v(order_id, customer_id, restaurant_id, status, items, total_cents,
          created_at, updated_at, last_event_id, source_offset)
ON CONFLICT (order_id) DO UPDATE SET
    customer_id = EXCLUDED.customer_id,
    restaurant_id = EXCLUDED.restaurant_id,
    status = EXCLUDED.status,
    items = EXCLUDED.items,
    total_cents = EXCLUDED.total_cents,
    created_at = EXCLUDED.created_at,
    updated_at = EXCLUDED.updated_at,
    last_event_id = EXCLUDED.last_event_id,
    source_topic = EXCLUDED.source_topic,
    source_partition = EXCLUDED.source_partition,
    source_incarnation = EXCLUDED.source_incarnation,
    source_offset = EXCLUDED.source_offset
WHERE orders.source_topic <> EXCLUDED.source_topic
   OR orders.source_partition <> EXCLUDED.source_partition
   OR (orders.source_incarnation, orders.source_offset)
      < (EXCLUDED.source_incarnation, EXCLUDED.source_offset)
