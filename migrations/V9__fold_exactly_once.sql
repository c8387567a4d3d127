-- The recreated-topic check compares the record before the stored offset
-- with a fingerprint stored at the last commit (V2). A batch's next offset
-- steps past transaction markers and aborted records, so the record the
-- fingerprint describes is not always at next_offset - 1: after a control
-- batch that offset holds a marker, no record matched, and a recreated
-- topic that had grown past the stored offset went unnoticed. The
-- fingerprint is now stored with the offset of the record it describes.
-- NULL with a fingerprint set: written before V9, when it described
-- next_offset - 1.
ALTER TABLE consumer_offsets ADD COLUMN fingerprint_offset bigint;

-- offset_gaps.reason gains 'position_clash': a batch met a record at an
-- offset whose row in history or dead letters (same topic, partition and
-- incarnation) is a different record, so the log there is not the one that
-- was applied (a topic deleted and recreated, then `group reset`). The
-- batch goes on in a new incarnation, in the same transaction;
-- stored_offset, earliest, latest and reset_to are the batch's first offset.
COMMENT ON COLUMN offset_gaps.reason IS
    'retention | log_end | recreated | position_clash';
