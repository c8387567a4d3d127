-- Event ids the fold has seen before: applied (history) or refused (a dead
-- letter that decoded). A later copy of either is a duplicate, so a
-- producer retry never gets a second chance at the state machine.
SELECT event_id FROM order_events WHERE event_id = ANY($1)
UNION
SELECT event_id FROM dead_letters WHERE event_id = ANY($1)
