use rskafka::client::error::Error as ClientError;

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
    #[error("partition {partition} does not exist (topic has {partitions})")]
    NoSuchPartition { partition: u32, partitions: u32 },
    #[error("the producer has stopped")]
    ProducerClosed,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
