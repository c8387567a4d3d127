//! foodpipe's Kafka side, on rskafka.
//!
//! rskafka speaks the protocol per partition: produce a batch, fetch from an
//! offset, list offsets. Everything a Java client does on top of that is
//! built here in plain sight:
//!
//! - [`connect`]: a client from a bootstrap list, with a deadline so an
//!   unreachable cluster is an error rather than an endless retry.
//! - [`topics`]: topic administration (list, describe, create, delete,
//!   [`ensure_topic`]) returning foodpipe's types; an existing topic keeps
//!   its partition count.
//! - [`Producer`]: per-partition batching (linger, batch size), compression,
//!   a bound on bytes in flight (backpressure), retries, delivery report.
//! - [`PartitionReader`]: fetch a bounded batch of records from an offset,
//!   as a `read_committed` consumer sees them ([`read_committed`]: control
//!   batches stepped over, aborted transactions dropped, an undecodable
//!   batch reported as [`CorruptBatch`]); [`TopicFetcher`]: the same for
//!   many partitions of a topic, one request per leader broker.
//! - [`record_batch`]: record batches encoded byte for byte from Kafka's
//!   specification, for tests, benchmarks and raw produce.
//!
//! All four codecs (gzip, snappy, lz4, zstd) are pure Rust, through a
//! vendored, patched rskafka (`vendor/rskafka/FOODPIPE-PATCH.md`).
//!
//! This crate knows nothing of PostgreSQL or of what the records mean.

mod broker_groups;
mod cluster;
mod committed;
mod error;
mod producer;
mod reader;
pub mod record_batch;
mod security;
pub mod topic_configs;
pub mod topics;

use std::time::Duration;

use rskafka::BackoffConfig;
use rskafka::client::ClientBuilder;

pub use broker_groups::{BrokerGroups, ListedGroup};
pub use cluster::{Broker, ClusterView, describe_cluster};
pub use committed::{CorruptBatch, FetchedBatch, read_committed};
pub use error::{Error, ErrorKind, Result};
pub use producer::{PartitionReport, ProduceReport, Producer, ProducerConfig};
pub use reader::{PartitionReader, PartitionWriter, TopicFetcher};
pub use rskafka::client::Client;
pub use rskafka::client::error::ProtocolError;
pub use rskafka::client::partition::{
    AbortedTransaction, Compression, ControlRecordType, CorruptRecordBatch, FetchDetailed,
    FetchedRecordBatch, OffsetAt, decode_record_batches,
};
pub use rskafka::record::{Record, RecordAndOffset};
pub use topics::{
    PartitionOffsets, TopicInfo, TopicOffsets, ensure_topic, existing_topic_partitions,
    topic_partitions,
};

/// A record's headers as `(key, value)` pairs sorted by key: the form
/// dead letters keep them in.
///
/// rskafka's [`Record`] holds headers in a map, so of several headers with
/// one key (which Kafka allows) only the last one reaches foodpipe.
pub fn record_headers(record: &Record) -> Vec<(String, Vec<u8>)> {
    record
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
#[cfg(feature = "tls")]
pub use security::tls_client_config;
pub use security::{SaslCredentials, SaslMechanism, Security};

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:port` entries; any one that answers is enough, as with
    /// `bootstrap.servers`. The cluster then tells us its advertised brokers.
    pub bootstrap_servers: Vec<String>,
    /// How long any one operation (including the first metadata request)
    /// keeps retrying before it gives up with an error.
    pub timeout: Duration,
    /// How long one request (or a connect) may go unanswered before it
    /// fails and its connection is closed (Kafka's `request.timeout.ms`,
    /// 30 s by default). Without it, a broker whose packets are dropped
    /// holds a request for as long as the kernel keeps the connection.
    pub request_timeout: Duration,
    /// TLS and SASL; plaintext by default.
    pub security: Security,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: vec!["localhost:9092".to_owned()],
            timeout: Duration::from_secs(10),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            security: Security::default(),
        }
    }
}

/// Kafka's default `request.timeout.ms`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Parses a `KAFKA_BOOTSTRAP_SERVERS`-style comma list, dropping blanks.
pub fn parse_bootstrap_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Connects to the cluster through the bootstrap list.
pub async fn connect(config: &KafkaConfig) -> Result<Client> {
    let backoff = BackoffConfig {
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        base: 2.0,
        deadline: Some(config.timeout),
    };
    let mut builder = ClientBuilder::new(config.bootstrap_servers.clone())
        .client_id("foodpipe")
        .backoff_config(backoff)
        .request_timeout(config.request_timeout);
    #[cfg(feature = "tls")]
    if let Some(tls) = &config.security.tls {
        builder = builder.tls_config(tls.clone());
    }
    if let Some(sasl) = &config.security.sasl {
        builder = builder.sasl_config(sasl.to_rskafka());
    }
    builder.build().await.map_err(|source| Error::Bootstrap {
        servers: config.bootstrap_servers.join(", "),
        hint: bootstrap_hint(&source.to_string()),
        source,
    })
}

/// The setting to check for a failure whose text names its cause.
fn bootstrap_hint(error: &str) -> &'static str {
    if error.contains("Sasl") {
        " (check KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD)"
    } else if error.contains("UnknownIssuer") || error.contains("invalid peer certificate") {
        " (the broker's certificate is not signed by a trusted CA: check KAFKA_SSL_CA_LOCATION)"
    } else if error.contains("early eof") {
        " (the broker closed the connection: does it want TLS or SASL? check KAFKA_SECURITY_PROTOCOL)"
    } else {
        ""
    }
}

/// A client of the leader of `topic`/`partition`, with errors that name it.
async fn partition_client(
    client: &Client,
    topic: &str,
    partition: i32,
    unknown_topic: rskafka::client::partition::UnknownTopicHandling,
) -> Result<rskafka::client::partition::PartitionClient> {
    client
        .partition_client(topic, partition, unknown_topic)
        .await
        .map_err(|source| Error::Partition {
            topic: topic.to_owned(),
            partition,
            source,
        })
}

#[cfg(test)]
mod decode_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// A comma list with spaces and empty entries parses to its servers.
    #[test]
    fn bootstrap_list_parses() {
        assert_eq!(
            parse_bootstrap_list(" a:9092, b:9093,,c:1 "),
            vec!["a:9092", "b:9093", "c:1"]
        );
        assert!(parse_bootstrap_list(" , ").is_empty());
    }
}
