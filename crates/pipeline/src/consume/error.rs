//! The consumer runtime's errors, and what each one means for a partition.

/// What the runtime does about an error (like librdkafka's retriable and
/// fatal flags): decided from error types and Kafka error codes, never
/// from message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The broker or PostgreSQL is unavailable: back off, try again, stay
    /// the owner. Health says what is being retried once it lasts.
    Retry,
    /// The partition must be decided again: its lease was lost (another
    /// member owns it now), or its offset is no longer in the log (the
    /// offset-reset policy decides where to go on).
    Retake,
    /// Trying again gives the same answer (a batch that cannot be decoded,
    /// the `fail` reset policy, an error PostgreSQL will repeat): the
    /// partition stops loudly, and health, metrics and `group describe`
    /// say why.
    Stop,
}

/// Errors of the consumer runtime; each says where it happened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Kafka(#[from] kafka::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The stored offset cannot be used and `--offset-reset fail` says stop.
    #[error("{0}")]
    OffsetResetRefused(String),
    /// Records from the broker that cannot be decoded.
    #[error(
        "{topic}/{partition}: the batch at offsets {first}..={last} cannot be decoded: {cause}. \
         The partition is stopped; to skip the batch (it is kept in dead_letters with its raw bytes), \
         restart with --on-corrupt-batch skip"
    )]
    CorruptBatch {
        topic: String,
        partition: i32,
        first: i64,
        last: String,
        cause: String,
    },
    /// Fetching this partition at `offset` fails every time, while the
    /// broker answers other requests about it.
    #[error(
        "{topic}/{partition}: every fetch at offset {offset} fails ({attempts} times alone, \
         the broker answering ListOffsets for the partition in between), last: {source}. \
         The broker cannot serve the batch there (Tansu 0.6 cannot serve snappy batches); \
         the partition is stopped"
    )]
    FetchKeepsFailing {
        topic: String,
        partition: i32,
        offset: i64,
        attempts: u32,
        source: kafka::Error,
    },
    /// The position is past the log end: the log is shorter than it was.
    #[error("{topic}/{partition}: offset {offset} is past the log end {high_watermark}")]
    PastLogEnd {
        topic: String,
        partition: i32,
        offset: i64,
        high_watermark: i64,
    },
    /// The metrics server could not start.
    #[error(
        "cannot serve metrics on {addr}: {source}; choose another address with --metrics-addr, or `--metrics-addr off`"
    )]
    Metrics {
        addr: String,
        source: std::io::Error,
    },
    /// Another process took this member id over (static membership).
    #[error("{0}")]
    Replaced(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::observe::ServeError> for Error {
    fn from(e: crate::observe::ServeError) -> Self {
        match e {
            crate::observe::ServeError::Bind { addr, source } => Error::Metrics { addr, source },
            crate::observe::ServeError::Internal(reason) => Error::Internal(reason),
        }
    }
}

impl Error {
    /// What to do about it (see [`Action`]).
    pub fn action(&self) -> Action {
        match self {
            Error::Kafka(e) => match e.kind() {
                kafka::ErrorKind::Transient => Action::Retry,
                kafka::ErrorKind::OffsetOutOfRange => Action::Retake,
                // The topic is gone or not there yet: decide again (the
                // coordinator watches the topic and says so in health).
                kafka::ErrorKind::UnknownTopicOrPartition => Action::Retake,
                kafka::ErrorKind::Permanent => Action::Stop,
            },
            Error::Store(e) if e.is_transient() => Action::Retry,
            Error::Store(store::Error::LeaseLost { .. }) => Action::Retake,
            Error::Store(_) => Action::Stop,
            Error::PastLogEnd { .. } => Action::Retake,
            Error::OffsetResetRefused(_)
            | Error::CorruptBatch { .. }
            | Error::FetchKeepsFailing { .. } => Action::Stop,
            Error::Metrics { .. } | Error::Replaced(_) | Error::Internal(_) => Action::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lost lease is handed back to the coordinator; a refused reset and an undecodable batch stop the partition.
    #[test]
    fn actions_follow_error_types() {
        let lost = Error::Store(store::Error::LeaseLost {
            group: "g".into(),
            topic: "t".into(),
            partition: 1,
            expected: 5,
        });
        assert_eq!(lost.action(), Action::Retake);
        assert_eq!(
            Error::OffsetResetRefused("no".into()).action(),
            Action::Stop
        );
        let corrupt = Error::CorruptBatch {
            topic: "t".into(),
            partition: 0,
            first: 10,
            last: "12".into(),
            cause: "CRC mismatch".into(),
        };
        assert_eq!(corrupt.action(), Action::Stop);
        assert!(corrupt.to_string().contains("--on-corrupt-batch skip"));
        let unknown = Error::Kafka(kafka::Error::UnknownTopic { topic: "t".into() });
        assert_eq!(unknown.action(), Action::Retake);
    }
}
