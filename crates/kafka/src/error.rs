use std::sync::Arc;

use rskafka::client::error::{Error as ClientError, ProtocolError};

/// Errors of foodpipe's Kafka side; each names what it was doing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot reach any bootstrap server of [{servers}]: {source}{hint}")]
    Bootstrap {
        servers: String,
        source: ClientError,
        /// What to check, when the failure says (empty otherwise).
        hint: &'static str,
    },
    #[error("cannot read cluster metadata: {source}")]
    Metadata { source: ClientError },
    #[error("cannot create topic {topic:?}: {source}")]
    CreateTopic { topic: String, source: ClientError },
    /// Asked to create a topic that exists; says how many partitions it has.
    #[error("topic {topic:?} already exists with {partitions} partition(s)")]
    TopicExists { topic: String, partitions: u32 },
    #[error("cannot delete topic {topic}: {source}")]
    DeleteTopic { topic: String, source: ClientError },
    #[error(
        "topic {topic:?} does not exist: `foodpipe topics list` shows the topics; check --topic"
    )]
    UnknownTopic { topic: String },
    #[error("cannot reach the leader of {topic}/{partition}: {source}")]
    Partition {
        topic: String,
        partition: i32,
        source: ClientError,
    },
    #[error("fetch from {topic}/{partition} at offset {offset} failed: {source}")]
    Fetch {
        topic: String,
        partition: i32,
        offset: i64,
        source: ClientError,
    },
    #[error("listing offsets of {topic}/{partition} failed: {source}")]
    ListOffsets {
        topic: String,
        partition: i32,
        source: ClientError,
    },
    #[error(
        "fetch from {topic}/{partition} at offset {offset} failed: the request to broker {leader} failed: {source}"
    )]
    FetchRequest {
        topic: String,
        partition: i32,
        offset: i64,
        /// The broker the request for this and other partitions went to.
        leader: i32,
        /// Shared by every partition of the failed request.
        source: Arc<ClientError>,
    },
    #[error("{topic}/{partition} is not one of the partitions this fetcher reads")]
    NotFetched { topic: String, partition: i32 },
    #[error(
        "record batch of {topic}/{partition} at offset {first_offset}{} cannot be decoded: {cause}",
        last_offset.map(|o| format!("..={o}")).unwrap_or_default()
    )]
    CorruptBatch {
        topic: String,
        partition: i32,
        first_offset: i64,
        last_offset: Option<i64>,
        cause: String,
    },
    /// A request rskafka does not model, about a consumer group (the
    /// offset mirror, `group describe`, `group list`) or a topic's
    /// configuration; `group` names what it was about, e.g. `group "g"`.
    #[error("{operation} for {group} failed: {cause}")]
    BrokerGroup {
        operation: &'static str,
        group: String,
        cause: String,
        /// The broker's error code, if it answered with one.
        code: Option<ProtocolError>,
        /// The client error, if the request did not get an answer.
        client: Option<Arc<ClientError>>,
    },
    /// The broker's metadata lists the topic with no partition at all:
    /// nothing can be placed on it or read from it.
    #[error(
        "topic {topic:?} has no partitions in the broker's metadata; \
         recreate it with `foodpipe topics create --partitions N`"
    )]
    NoPartitions { topic: String },
    #[error("partition {partition} does not exist (topic has {partitions})")]
    NoSuchPartition { partition: u32, partitions: u32 },
    #[error("the producer has stopped")]
    ProducerClosed,
}

impl Error {
    /// The Kafka error code the broker answered, if this error is one: lets
    /// a caller decide by code (retry, re-take, stop), never by text.
    pub fn protocol_error(&self) -> Option<ProtocolError> {
        let source = match self {
            Error::Fetch { source, .. }
            | Error::ListOffsets { source, .. }
            | Error::Partition { source, .. } => source,
            Error::FetchRequest { source, .. } => source.as_ref(),
            _ => return None,
        };
        match source {
            ClientError::ServerError { protocol_error, .. } => Some(*protocol_error),
            _ => None,
        }
    }
}

impl Error {
    /// True when the broker answered the request with an error code (as
    /// opposed to no answer at all: a closed connection, a timeout). A
    /// transient code (`NotLeaderOrFollower`, `LeaderNotAvailable`, ...)
    /// then says what happened; nothing is wrong with the partition itself.
    pub fn broker_answered(&self) -> bool {
        self.protocol_error().is_some()
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a caller should do about an [`Error`], decided from its type and
/// the broker's error code, never from its text (like librdkafka's
/// retriable/fatal flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The broker is unreachable, restarting, moving leadership or busy:
    /// the same request can succeed later. Retry after a backoff.
    Transient,
    /// The requested offset is not in the partition's log (retention
    /// removed it, or the topic was recreated): the position must be
    /// decided again, by the offset-reset policy.
    OffsetOutOfRange,
    /// The topic or partition does not exist (any more).
    UnknownTopicOrPartition,
    /// Asking again gives the same answer: a bad request, a response that
    /// cannot be read, an authorization failure.
    Permanent,
}

impl Error {
    /// What to do about this error (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Bootstrap { .. } => ErrorKind::Transient,
            Error::UnknownTopic { .. } => ErrorKind::UnknownTopicOrPartition,
            // Asking again gives the same answer.
            Error::TopicExists { .. } => ErrorKind::Permanent,
            Error::NoSuchPartition { .. } => ErrorKind::UnknownTopicOrPartition,
            // Nothing to read or place: as if the topic were missing.
            Error::NoPartitions { .. } => ErrorKind::UnknownTopicOrPartition,
            Error::ProducerClosed => ErrorKind::Permanent,
            // Asked of a fetcher for a partition it was never given: a bug
            // that asking again does not fix.
            Error::NotFetched { .. } => ErrorKind::Permanent,
            Error::CorruptBatch { .. } => ErrorKind::Permanent,
            Error::FetchRequest { source, .. } => client_error_kind(source),
            Error::BrokerGroup { code, client, .. } => match (code, client) {
                (Some(code), _) => protocol_error_kind(*code),
                (None, Some(source)) => client_error_kind(source),
                (None, None) => ErrorKind::Permanent,
            },
            Error::Metadata { source }
            | Error::CreateTopic { source, .. }
            | Error::DeleteTopic { source, .. }
            | Error::Partition { source, .. }
            | Error::Fetch { source, .. }
            | Error::ListOffsets { source, .. } => client_error_kind(source),
        }
    }
}

/// The kind of an rskafka error.
fn client_error_kind(error: &ClientError) -> ErrorKind {
    use rskafka::client::error::RequestError;
    match error {
        ClientError::Connection(_) | ClientError::Timeout => ErrorKind::Transient,
        ClientError::Request(RequestError::IO(_) | RequestError::Poisoned(_)) => {
            ErrorKind::Transient
        }
        ClientError::Request(_) | ClientError::InvalidResponse(_) => ErrorKind::Permanent,
        ClientError::ServerError { protocol_error, .. } => protocol_error_kind(*protocol_error),
        // rskafka retries only retriable errors until its deadline; what is
        // left is the last of them, still retriable, unless it says the
        // topic is gone.
        ClientError::RetryFailed(rskafka::BackoffError::DeadlineExceded { source, .. }) => {
            match source.downcast_ref::<ClientError>() {
                Some(inner) if client_error_kind(inner) == ErrorKind::UnknownTopicOrPartition => {
                    ErrorKind::UnknownTopicOrPartition
                }
                _ => ErrorKind::Transient,
            }
        }
        _ => ErrorKind::Permanent,
    }
}

/// The kind of a Kafka error code, following the `RetriableException`
/// subclasses of Kafka's `org.apache.kafka.common.errors`.
///
/// # References
/// - <https://kafka.apache.org/protocol#protocol_error_codes> ("Retriable")
fn protocol_error_kind(code: rskafka::client::error::ProtocolError) -> ErrorKind {
    use rskafka::client::error::ProtocolError as P;
    match code {
        P::OffsetOutOfRange => ErrorKind::OffsetOutOfRange,
        P::UnknownTopicOrPartition | P::UnknownTopicId => ErrorKind::UnknownTopicOrPartition,
        P::CorruptMessage
        | P::LeaderNotAvailable
        | P::NotLeaderOrFollower
        | P::RequestTimedOut
        | P::ReplicaNotAvailable
        | P::NetworkException
        | P::CoordinatorLoadInProgress
        | P::CoordinatorNotAvailable
        | P::NotCoordinator
        | P::NotEnoughReplicas
        | P::NotEnoughReplicasAfterAppend
        | P::NotController
        | P::KafkaStorageError
        | P::FetchSessionIdNotFound
        | P::InvalidFetchSessionEpoch
        | P::FencedLeaderEpoch
        | P::UnknownLeaderEpoch
        | P::OffsetNotAvailable
        | P::PreferredLeaderNotAvailable
        | P::EligibleLeadersNotAvailable
        | P::ThrottlingQuotaExceeded
        | P::UnstableOffsetCommit => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rskafka::client::error::{ProtocolError, RequestContext, RequestError};

    fn fetch_error(source: ClientError) -> Error {
        Error::Fetch {
            topic: "t".into(),
            partition: 0,
            offset: 5,
            source,
        }
    }

    /// A leader move is an answer with a transient code; a closed connection is no answer at all (the case that may count against a partition).
    #[test]
    fn leader_moves_are_transient_answers() {
        for code in [
            ProtocolError::NotLeaderOrFollower,
            ProtocolError::LeaderNotAvailable,
        ] {
            let e = fetch_error(ClientError::ServerError {
                protocol_error: code,
                error_message: None,
                request: RequestContext::Partition("t".into(), 0),
                response: None,
                is_virtual: false,
            });
            assert_eq!(e.kind(), ErrorKind::Transient, "{code:?}");
            assert!(e.broker_answered(), "{code:?}");
        }
        let closed = fetch_error(ClientError::Request(RequestError::IO(
            std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
        )));
        assert_eq!(closed.kind(), ErrorKind::Transient);
        assert!(!closed.broker_answered());
    }
}
