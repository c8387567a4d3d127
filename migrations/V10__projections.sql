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

-- `asof` folds history with the fold itself (store::fold::fold_history):
-- one state machine, in Rust. The SQL copy of it goes.
DROP FUNCTION IF EXISTS orders_as_of(timestamptz, uuid, text);
