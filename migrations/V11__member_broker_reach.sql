-- Whether each member can reach the Kafka brokers (issue 21). A member
-- that heartbeats to PostgreSQL but gets no answer from any broker for
-- --broker-timeout says so here (cut_off: why, e.g. "no broker answered
-- for 16 s: localhost:9092: no answer within 2s"); brokers_answering says
-- the brokers have answered it steadily for a while. The assignment leaves
-- out members that are cut off, but only while some member is answering:
-- when every member loses the brokers, nothing moves (see ARCHITECTURE.md,
-- "A member cut off from the brokers").
ALTER TABLE group_members
    ADD COLUMN cut_off text,
    ADD COLUMN brokers_answering boolean NOT NULL DEFAULT true;
