-- The record headers of each dead letter (issue 12): a producer's trace ids,
-- content types and the like are part of what is needed to look at a bad
-- record again. A JSON array in wire order, one object per header:
-- {"key": k, "value": v} when the value is UTF-8 text,
-- {"key": k, "value_hex": "..."} otherwise, so any bytes round-trip and the
-- common case stays readable in psql. (V5 is another change's.)
ALTER TABLE dead_letters
    ADD COLUMN headers jsonb NOT NULL DEFAULT '[]'::jsonb;
