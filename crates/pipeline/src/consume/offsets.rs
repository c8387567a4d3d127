//! Taking a partition: the lease, then the stored offset checked against
//! the broker's log (invariant 8).
//!
//! A stored offset can stop meaning what it meant: retention removed the
//! records before it, or the topic was deleted and recreated (its offsets
//! restart at 0). Kafka's `OffsetOutOfRange` does not catch every case
//! (Tansu answers a fetch past the end with an empty batch; a recreated
//! topic may have grown past the old offset), so each take compares the
//! stored offset with ListOffsets earliest/latest and the record just
//! before it with the fingerprint stored at the last commit.

use std::time::Duration;

use kafka::{OffsetAt, PartitionReader};
use store::{Gap, Lease, Member, Store, StoredOffset};

use super::error::{Error, Result};
use super::{ConsumeConfig, OffsetReset};

/// A partition this member now owns, ready for a worker.
#[derive(Debug)]
pub(crate) struct Taken {
    pub lease: Lease,
    /// The partition's reader, handed on to the fetcher: rskafka opens a
    /// connection per partition client, so one per partition is enough.
    pub reader: PartitionReader,
    /// Where the worker starts: the stored offset, or where a reset put it.
    pub start: StoredOffset,
    /// The log end when taken (ListOffsets, read_committed: the last
    /// stable offset), so lag is known before the first fetch.
    pub latest: i64,
}

/// Why a take did not give a partition.
#[derive(Debug)]
pub(crate) enum NotTaken {
    /// Another live member holds the lease (or this process was replaced),
    /// or a rebuild fences the group: who, for health to name.
    Held(String),
    /// It failed; `epoch` is set if the lease was taken before the failure.
    Failed { epoch: Option<i64>, error: Error },
}

/// Takes `partition` for `member`: reads the log's bounds, takes the lease
/// (creating the offset row by the reset policy for a partition the group
/// never read), then checks the stored offset against the log and resets
/// it by policy (recorded in `offset_gaps`) if the log no longer backs it.
pub(crate) async fn take(
    store: &Store,
    client: &kafka::Client,
    config: &ConsumeConfig,
    member: &Member,
    partition: i32,
) -> Result<Taken, NotTaken> {
    let failed = |epoch: Option<i64>| move |error: Error| NotTaken::Failed { epoch, error };
    let reader = PartitionReader::new(client, &config.topic, partition)
        .await
        .map_err(|e| failed(None)(e.into()))?;
    let earliest = reader
        .offset(OffsetAt::Earliest)
        .await
        .map_err(|e| failed(None)(e.into()))?;
    let latest = reader
        .offset(OffsetAt::Latest)
        .await
        .map_err(|e| failed(None)(e.into()))?;
    let initial = match config.offset_reset {
        OffsetReset::Earliest => Some(earliest),
        OffsetReset::Latest => Some(latest),
        OffsetReset::Fail => None,
    };
    let lease = store
        .take_lease(
            member,
            &config.topic,
            partition,
            config.session_timeout,
            initial,
        )
        .await
        .map_err(|e| failed(None)(e.into()))?;
    let Some(lease) = lease else {
        if initial.is_none()
            && store
                .stored_offset(&config.group, &config.topic, partition)
                .await
                .map_err(|e| failed(None)(e.into()))?
                .is_none()
        {
            return Err(failed(None)(Error::OffsetResetRefused(format!(
                "group {} has no stored offset and --offset-reset is fail; use earliest or latest",
                config.group
            ))));
        }
        let holder = match store
            .fenced_by(&config.group)
            .await
            .map_err(|e| failed(None)(e.into()))?
        {
            Some(by) => format!("the group's fence, held by {by}"),
            None => "another live member".to_owned(),
        };
        return Err(NotTaken::Held(holder));
    };
    let failed = failed(Some(lease.epoch));
    let stored = lease.stored;
    let previous_matches =
        previous_record_matches(store, &reader, config, &stored, earliest, latest)
            .await
            .map_err(&failed)?;
    let start = match decide(
        &stored,
        earliest,
        latest,
        previous_matches,
        config.offset_reset,
    ) {
        Start::Resume => stored,
        Start::Fail(message) => return Err(failed(Error::OffsetResetRefused(message))),
        Start::Reset {
            reason,
            to,
            new_incarnation,
        } => {
            let gap = Gap {
                group: &config.group,
                topic: &config.topic,
                partition,
                reason,
                stored,
                earliest,
                latest,
                reset_to: to,
                new_incarnation,
                policy: config.offset_reset.as_str(),
            };
            if !store
                .reset_offset(&gap)
                .await
                .map_err(|e| failed(e.into()))?
            {
                // The stored offset moved between the take and the reset:
                // someone else commits to this partition. Let the next
                // round decide again.
                return Err(failed(Error::Store(store::Error::LeaseLost {
                    group: config.group.clone(),
                    topic: config.topic.clone(),
                    partition,
                    expected: stored.next_offset,
                })));
            }
            tracing::warn!(
                partition,
                reason,
                stored = stored.next_offset,
                earliest,
                latest,
                reset_to = to,
                "stored offset unusable ({reason}); continuing from {to} by --offset-reset {}; recorded in offset_gaps",
                config.offset_reset.as_str()
            );
            StoredOffset {
                next_offset: to,
                incarnation: new_incarnation,
                last_fingerprint: None,
                fingerprint_offset: None,
            }
        }
    };
    Ok(Taken {
        lease,
        reader,
        start,
        latest,
    })
}

/// Bytes asked for when fetching the record before a stored offset.
const FINGERPRINT_FETCH_BYTES: i32 = 4096;

/// Is the record before the stored offset still the one that was applied?
/// Compared by the fingerprint stored with every commit or, for offsets
/// stored before fingerprints existed, by the event id in history.
/// `None`: nothing to compare (retention removed it, nothing applied yet).
async fn previous_record_matches(
    store: &Store,
    reader: &PartitionReader,
    config: &ConsumeConfig,
    stored: &StoredOffset,
    earliest: i64,
    latest: i64,
) -> Result<Option<bool>> {
    // The record the stored fingerprint describes: the last one applied,
    // which is before the stored offset but not always right before it
    // (transaction markers and aborted records are stepped past).
    let previous = stored.fingerprinted_offset();
    if previous < earliest || previous >= latest {
        return Ok(None);
    }
    // One record is wanted, so ask for little: a broker serves at least
    // one whole batch anyway (Kafka), and some pay for every record they
    // serve (Tansu, a few hundred milliseconds for 64 KiB). A record too
    // large for this on such a broker cannot be compared: `None`.
    let fetched = reader
        .fetch(previous, FINGERPRINT_FETCH_BYTES, Duration::ZERO)
        .await?;
    let Some(r) = fetched.records.into_iter().find(|r| r.offset == previous) else {
        return Ok(None);
    };
    Ok(match stored.last_fingerprint {
        Some(expected) => Some(
            store::fold::fingerprint(
                r.record.timestamp,
                r.record.key.as_deref(),
                r.record.value.as_deref(),
            ) == expected,
        ),
        None => store
            .event_id_at(
                &config.topic,
                reader.partition(),
                stored.incarnation,
                previous,
            )
            .await?
            .map(|id| {
                events::decode(r.record.value.as_deref()).is_ok_and(|event| event.event_id == id)
            }),
    })
}

/// What to do with a partition's stored offset, given the broker's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Start {
    /// The stored offset is good: go on from it.
    Resume,
    /// The stored offset cannot be used; continue from `to`.
    Reset {
        reason: &'static str,
        to: i64,
        new_incarnation: i32,
    },
    /// The policy says stop, with this message.
    Fail(String),
}

/// Decides whether a stored offset is still valid on the broker (pure).
///
/// `previous_matches` tells whether the record before the stored offset is
/// the one that was applied (`None`: nothing to compare, e.g. retention
/// removed it or nothing was applied yet).
pub(crate) fn decide(
    stored: &StoredOffset,
    earliest: i64,
    latest: i64,
    previous_matches: Option<bool>,
    policy: OffsetReset,
) -> Start {
    let next = stored.next_offset;
    let (reason, new_incarnation, what) = if next < earliest {
        // The same log, trimmed by retention: offsets keep their meaning.
        (
            "retention",
            stored.incarnation,
            format!(
                "stored offset {next} is below the earliest offset {earliest} on the broker ({} records removed by retention)",
                earliest - next
            ),
        )
    } else if next > latest {
        // Offsets before `latest` are not the ones applied: a new log.
        (
            "log_end",
            stored.incarnation + 1,
            format!(
                "stored offset {next} is past the log end {latest} (was the topic deleted and recreated?)"
            ),
        )
    } else if previous_matches == Some(false) {
        (
            "recreated",
            stored.incarnation + 1,
            format!(
                "the record at offset {} is not the one that was applied (the topic was deleted and recreated)",
                next - 1
            ),
        )
    } else {
        return Start::Resume;
    };
    let to = match policy {
        OffsetReset::Earliest => earliest,
        OffsetReset::Latest => latest,
        OffsetReset::Fail => {
            return Start::Fail(format!(
                "{what}; rerun with --offset-reset earliest or latest to go on"
            ));
        }
    };
    Start::Reset {
        reason,
        to,
        new_incarnation,
    }
}

/// The one way a partition is stopped on an error retrying cannot fix
/// (invariant: stop loudly): an error in the log, `State::Stopped` in the
/// status (health, metrics, `group describe`), and the error recorded in
/// its `consumer_offsets` row under `lease` (member id, epoch) when the
/// partition was leased, so every member sees the stop. Failing to record
/// it is a warning: the status still says it.
pub(crate) async fn record_stop(
    store: &Store,
    status: &super::status::Status,
    config: &ConsumeConfig,
    partition: i32,
    lease: Option<(&str, i64)>,
    message: &str,
) {
    tracing::error!(partition, error = %message, "partition stopped");
    status.set(partition, super::status::State::Stopped(message.to_owned()));
    let Some(lease) = lease else {
        return;
    };
    if let Err(e) = store
        .mark_stopped(&config.group, &config.topic, partition, lease, message)
        .await
    {
        tracing::warn!(partition, error = %e, "could not record the stop in consumer_offsets");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(next_offset: i64) -> StoredOffset {
        StoredOffset {
            next_offset,
            incarnation: 2,
            last_fingerprint: Some(7),
            fingerprint_offset: Some(next_offset - 1),
        }
    }

    /// A stored offset inside the log whose previous record matches (or cannot be checked) is used as it is.
    #[test]
    fn valid_offsets_resume() {
        for matches in [Some(true), None] {
            assert_eq!(
                decide(&stored(50), 0, 100, matches, OffsetReset::Fail),
                Start::Resume
            );
        }
        assert_eq!(
            decide(&stored(100), 0, 100, None, OffsetReset::Fail),
            Start::Resume
        );
        assert_eq!(
            decide(&stored(10), 10, 100, None, OffsetReset::Fail),
            Start::Resume
        );
    }

    /// Below the earliest offset: a retention gap, same log, reset by policy.
    #[test]
    fn retention_gap_keeps_the_incarnation() {
        assert_eq!(
            decide(&stored(5), 20, 100, None, OffsetReset::Earliest),
            Start::Reset {
                reason: "retention",
                to: 20,
                new_incarnation: 2
            }
        );
        assert_eq!(
            decide(&stored(5), 20, 100, None, OffsetReset::Latest),
            Start::Reset {
                reason: "retention",
                to: 100,
                new_incarnation: 2
            }
        );
    }

    /// Past the log end, or a different record before the offset: a new log, a new incarnation.
    #[test]
    fn recreated_topic_is_a_new_incarnation() {
        assert_eq!(
            decide(&stored(150), 0, 40, None, OffsetReset::Earliest),
            Start::Reset {
                reason: "log_end",
                to: 0,
                new_incarnation: 3
            }
        );
        assert_eq!(
            decide(&stored(50), 0, 400, Some(false), OffsetReset::Earliest),
            Start::Reset {
                reason: "recreated",
                to: 0,
                new_incarnation: 3
            }
        );
    }

    /// With the fail policy every unusable offset is an error with the numbers and the way out.
    #[test]
    fn fail_policy_explains() {
        let Start::Fail(message) = decide(&stored(150), 0, 40, None, OffsetReset::Fail) else {
            panic!("must fail");
        };
        assert!(
            message.contains("stored offset 150") && message.contains("log end 40"),
            "{message}"
        );
        assert!(message.contains("--offset-reset"), "{message}");
    }
}
