-- Projections: many views from one stream (crates/store/src/projection.rs).
-- A projection is a name, the tables it owns and an apply step that runs in
-- every batch's transaction over the events the fold applied. `history`
-- (order_events) and `orders` are projections written in Rust; the others
-- are SQL, shipped in the binary (kind builtin) or read from a directory
-- (kind sql), and their SQL is kept here so that every member of the group
-- applies the same definition.
CREATE TABLE projections (
    name            text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,47}$'),
    kind            text NOT NULL CHECK (kind IN ('builtin', 'sql')),
    -- The tables it owns: what `rebuild` swaps and compares, and what
    -- `projection drop` drops.
    tables          text[] NOT NULL DEFAULT '{}',
    -- NULL for the projections written in Rust.
    schema_sql      text,
    apply_sql       text,
    -- sha256 of schema.sql and apply.sql as they were added: a definition
    -- that changed since is refused, never applied halfway.
    definition_hash text NOT NULL,
    -- filling: being filled from history, not yet applied by batches;
    -- attached: applied by every batch, in the batch's transaction.
    state           text NOT NULL CHECK (state IN ('filling', 'attached')),
    added_at        timestamptz NOT NULL DEFAULT now(),
    attached_at     timestamptz
);

INSERT INTO projections (name, kind, tables, definition_hash, state, attached_at) VALUES
    ('history', 'builtin', '{order_events}', 'rust', 'attached', now()),
    ('orders', 'builtin', '{orders}', 'rust', 'attached', now());

-- The applied events as history holds them, with the order's state right
-- after each, in the columns of the `applied_events` relation a batch's
-- SQL projections read (applied_events.sql). Filling a new projection and
-- `asof --projection` read this view. History holds exactly the events the
-- fold applied, each one a step the state machine allowed, so the status
-- after an event is the status its type leads to, and an order's customer,
-- restaurant, items, total and creation time are those of its
-- OrderCreated event, which never change afterwards.
CREATE VIEW applied_history AS
SELECT e.event_id, e.event_type, e.order_id, e.customer_id, e.occurred_at,
       e.payload, e.kafka_topic, e.kafka_partition, e.kafka_incarnation,
       e.kafka_offset, e.kafka_timestamp,
       CASE e.event_type
           WHEN 'OrderCreated' THEN 'pending'
           WHEN 'OrderPaid' THEN 'paid'
           WHEN 'OrderShipped' THEN 'shipped'
           WHEN 'OrderDelivered' THEN 'delivered'
           WHEN 'OrderCancelled' THEN 'cancelled'
       END AS status,
       c.payload -> 'payload' ->> 'restaurant_id' AS restaurant_id,
       (c.payload -> 'payload' ->> 'total_cents')::bigint AS total_cents,
       c.payload -> 'payload' -> 'items' AS items,
       c.occurred_at AS order_created_at
FROM order_events e
JOIN order_events c ON c.order_id = e.order_id AND c.event_type = 'OrderCreated';
