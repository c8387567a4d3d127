//! foodpipe's Kafka side, on rskafka.
//!
//! rskafka speaks the protocol per partition: produce a batch, fetch from an
//! offset, list offsets. Everything a Java client does on top of that is
//! built here in plain sight:
//!
//! - [`connect`]: a client from a bootstrap list, with a deadline so an
//!   unreachable cluster is an error rather than an endless retry.
//! - [`ensure_topic`]: create the topic if missing; an existing topic keeps
//!   its partition count.
//! - [`Producer`]: per-partition batching (linger, batch size), compression,
//!   a bound on bytes in flight (backpressure), retries, delivery report.
//! - [`PartitionReader`]: fetch a bounded batch of records from an offset.
//!
//! This crate knows nothing of PostgreSQL or of what the records mean.

mod cluster;
mod error;
mod producer;
mod reader;
mod security;

use std::time::Duration;

use rskafka::BackoffConfig;
use rskafka::client::ClientBuilder;

pub use cluster::{Broker, ClusterView, describe_cluster};
pub use error::{Error, Result};
pub use producer::{PartitionReport, ProduceReport, Producer, ProducerConfig};
pub use reader::{FetchedBatch, PartitionReader, PartitionWriter};
pub use rskafka::client::Client;
pub use rskafka::client::partition::{Compression, OffsetAt};
pub use rskafka::record::{Record, RecordAndOffset};
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
    /// TLS and SASL; plaintext by default.
    pub security: Security,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: vec!["localhost:9092".to_owned()],
            timeout: Duration::from_secs(10),
            security: Security::default(),
        }
    }
}

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
        .backoff_config(backoff);
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

/// The partition count of `topic`, or `None` if it does not exist.
pub async fn topic_partitions(client: &Client, topic: &str) -> Result<Option<u32>> {
    let topics = client
        .list_topics()
        .await
        .map_err(|source| Error::Metadata { source })?;
    Ok(topics
        .into_iter()
        .find(|t| t.name == topic)
        .map(|t| t.partitions.len() as u32))
}

/// The partition count of `topic`, which must exist
/// ([`Error::UnknownTopic`] otherwise).
pub async fn existing_topic_partitions(client: &Client, topic: &str) -> Result<u32> {
    topic_partitions(client, topic)
        .await?
        .ok_or_else(|| Error::UnknownTopic {
            topic: topic.to_owned(),
        })
}

/// What [`ensure_topic`] found or made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicInfo {
    pub partitions: u32,
    /// True if this call created the topic.
    pub created: bool,
}

/// Creates `topic` with `partitions` partitions unless it exists; an
/// existing topic keeps its own partition count, which is returned.
pub async fn ensure_topic(client: &Client, topic: &str, partitions: u32) -> Result<TopicInfo> {
    if let Some(existing) = topic_partitions(client, topic).await? {
        return Ok(TopicInfo {
            partitions: existing,
            created: false,
        });
    }
    let controller = client
        .controller_client()
        .map_err(|source| Error::Metadata { source })?;
    // Replication factor 1: the local broker is a single node. A real
    // cluster's operators create production topics themselves.
    let created = controller
        .create_topic(topic, partitions as i32, 1, 5_000)
        .await;
    match created {
        Ok(()) => {}
        // Someone else created it between our check and our request.
        Err(rskafka::client::error::Error::ServerError {
            protocol_error: rskafka::client::error::ProtocolError::TopicAlreadyExists,
            ..
        }) => {}
        Err(source) => {
            return Err(Error::CreateTopic {
                topic: topic.to_owned(),
                source,
            });
        }
    }
    // Metadata may lag creation by a moment; wait until it shows.
    for _ in 0..50 {
        if let Some(n) = topic_partitions(client, topic).await? {
            return Ok(TopicInfo {
                partitions: n,
                created: true,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::UnknownTopic {
        topic: topic.to_owned(),
    })
}

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
