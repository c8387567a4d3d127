-- consumer_offsets.topic_id was meant to hold the topic's id (Metadata
-- v10+) to notice a topic deleted and recreated under the same name. It was
-- never written: rskafka speaks Metadata up to v4, which has no topic ids,
-- and foodpipe notices a recreated topic by the fingerprint of the last
-- applied record instead (V2: incarnation, last_fingerprint). A column
-- nothing writes only misleads whoever reads the schema.
ALTER TABLE consumer_offsets DROP COLUMN IF EXISTS topic_id;

-- One truth for history and view. History holds only applied events: an
-- event the view is already past (a `stale` one) is a dead letter, never
-- history (crates/store/src/fold.rs). Every applied event of an order was
-- allowed by the state machine from the one before it, so an order's
-- history is one chain, pending -> paid -> shipped -> delivered or
-- pending [-> paid] -> cancelled, and its steps are ordered by how far
-- along the lifecycle they are, whatever their occurred_at says. As of `t`,
-- an order is therefore its furthest step that occurred at or before `t`;
-- with `t` past every event that is the step the view holds. V4 ordered by
-- occurred_at first, which disagrees with the view when a producer's clock
-- (or a hand-sent event) puts a later step at an earlier time.
CREATE OR REPLACE FUNCTION orders_as_of(
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
    ORDER BY e.order_id,
        -- How far along the lifecycle; delivered and cancelled never meet
        -- in one chain.
        CASE e.event_type
            WHEN 'OrderCreated' THEN 0
            WHEN 'OrderPaid' THEN 1
            WHEN 'OrderShipped' THEN 2
            ELSE 3
        END DESC,
        e.occurred_at DESC, e.kafka_incarnation DESC, e.kafka_offset DESC
$$;

-- A dead letter that decoded keeps its event id, and the fold treats a
-- later copy of it as a duplicate, as it does a copy of an applied event:
-- a producer retry must not give a refused event a second chance once the
-- order has moved on (the view would then depend on the retry).
ALTER TABLE dead_letters ADD COLUMN event_id uuid;
CREATE INDEX dead_letters_event_id ON dead_letters (event_id) WHERE event_id IS NOT NULL;
