-- consumer_offsets.topic_id was meant to hold the topic's id (Metadata
-- v10+) to notice a topic deleted and recreated under the same name. It was
-- never written: rskafka speaks Metadata up to v4, which has no topic ids,
-- and foodpipe notices a recreated topic by the fingerprint of the last
-- applied record instead (V2: incarnation, last_fingerprint). A column
-- nothing writes only misleads whoever reads the schema.
ALTER TABLE consumer_offsets DROP COLUMN IF EXISTS topic_id;
