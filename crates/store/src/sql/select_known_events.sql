SELECT event_id FROM order_events WHERE event_id = ANY($1)
