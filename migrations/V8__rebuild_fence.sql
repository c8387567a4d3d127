-- `rebuild` fences the live group while it catches its shadow up and swaps
-- it in, instead of holding the live offset rows FOR UPDATE across a replay
-- (which deadlocked with a live commit: the commit holds order_events and
-- waits for its offset row, the swap holds the row and waits to truncate
-- order_events).
--
-- While fenced_until is in the future no member takes a lease of the group
-- (take_lease.sql checks it), and the fence itself bumps every lease epoch,
-- so a commit already under way is refused by its epoch check. The fence
-- is a lease too: the rebuild renews it, and if the rebuild dies it lapses
-- after a session timeout and the group goes on by itself.
ALTER TABLE consumer_groups
    ADD COLUMN fenced_by text,
    ADD COLUMN fenced_until timestamptz;
