//! Topic administration, like `kafka-topics`: list, describe, create,
//! delete, [`ensure_topic`] for producers, and [`TopicOffsets`] for reading
//! every partition's offsets again and again. Every function returns
//! foodpipe's types, so callers never name an rskafka one.

use std::fmt;
use std::time::Duration;

use rskafka::client::Client;
use rskafka::client::partition::OffsetAt;

use crate::{Error, PartitionReader, Result};

/// How long the controller may take to create or delete a topic.
const ADMIN_TIMEOUT_MS: i32 = 5_000;

/// A topic and its partition count, as `topics list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSummary {
    pub name: String,
    pub partitions: u32,
}

impl fmt::Display for TopicSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\t{} partition(s)", self.name, self.partitions)
    }
}

/// Every topic of the cluster, sorted by name.
pub async fn list(client: &Client) -> Result<Vec<TopicSummary>> {
    let mut topics: Vec<TopicSummary> = client
        .list_topics()
        .await
        .map_err(|source| Error::Metadata { source })?
        .into_iter()
        .map(|t| TopicSummary {
            partitions: t.partitions.len() as u32,
            name: t.name,
        })
        .collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(topics)
}

/// One partition's earliest offset still on the broker and its log end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub partition: i32,
    pub earliest: i64,
    pub latest: i64,
}

/// A topic's partitions with their offsets, as `topics describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    pub name: String,
    pub partitions: Vec<PartitionOffsets>,
}

impl fmt::Display for TopicDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "topic {}: {} partition(s)",
            self.name,
            self.partitions.len()
        )?;
        writeln!(
            f,
            "{:>9} {:>16} {:>16} {:>10}",
            "PARTITION", "EARLIEST-OFFSET", "LATEST-OFFSET", "RECORDS"
        )?;
        for p in &self.partitions {
            writeln!(
                f,
                "{:>9} {:>16} {:>16} {:>10}",
                p.partition,
                p.earliest,
                p.latest,
                p.latest - p.earliest
            )?;
        }
        Ok(())
    }
}

/// The partitions of `topic`, which must exist ([`Error::UnknownTopic`]),
/// with their earliest and latest offsets.
pub async fn describe(client: &Client, topic: &str) -> Result<TopicDescription> {
    let partitions = TopicOffsets::new(client, topic).await?.read().await?;
    Ok(TopicDescription {
        name: topic.to_owned(),
        partitions,
    })
}

/// How many ListOffsets requests [`TopicOffsets::read`] has in flight at
/// once: enough that hundreds of partitions are read in a few round trips,
/// few enough not to flood one broker.
const OFFSETS_IN_FLIGHT: usize = 16;

/// Connections to the leader of every partition of a topic, kept so that
/// the earliest and log-end offsets can be read again and again (`watch`
/// reads them every second) without a metadata request each time.
#[derive(Debug)]
pub struct TopicOffsets {
    readers: Vec<PartitionReader>,
}

impl TopicOffsets {
    /// Connects to the leaders of every partition of `topic`, which must
    /// exist ([`Error::UnknownTopic`]).
    pub async fn new(client: &Client, topic: &str) -> Result<Self> {
        let count = existing_topic_partitions(client, topic).await?;
        let mut readers = Vec::with_capacity(count as usize);
        for partition in 0..count as i32 {
            readers.push(PartitionReader::new(client, topic, partition).await?);
        }
        Ok(Self { readers })
    }

    /// The partition count when connected.
    pub fn partitions(&self) -> usize {
        self.readers.len()
    }

    /// Each partition's earliest offset still on the broker and its log
    /// end (ListOffsets), by partition.
    pub async fn read(&self) -> Result<Vec<PartitionOffsets>> {
        use futures::{StreamExt, TryStreamExt};
        // The futures are made outside the stream: a closure over borrowed
        // readers inside it would make the whole future not provably `Send`.
        futures::stream::iter(self.readers.iter().map(read_offsets))
            .buffered(OFFSETS_IN_FLIGHT)
            .try_collect()
            .await
    }
}

async fn read_offsets(reader: &PartitionReader) -> Result<PartitionOffsets> {
    Ok(PartitionOffsets {
        partition: reader.partition(),
        earliest: reader.offset(OffsetAt::Earliest).await?,
        latest: reader.offset(OffsetAt::Latest).await?,
    })
}

/// Creates `topic` with `partitions` partitions; [`Error::TopicExists`]
/// (with its partition count) if it exists already.
pub async fn create(
    client: &Client,
    topic: &str,
    partitions: u32,
    replication_factor: i16,
    configs: &[crate::topic_configs::Config],
) -> Result<TopicInfo> {
    if let Some(existing) = topic_partitions(client, topic).await? {
        return Err(Error::TopicExists {
            topic: topic.to_owned(),
            partitions: existing,
        });
    }
    if configs.is_empty() {
        return ensure_replicated(client, topic, partitions, replication_factor).await;
    }
    crate::topic_configs::create_with_configs(
        client,
        topic,
        partitions,
        replication_factor,
        configs,
    )
    .await?;
    shown(client, topic).await
}

/// Deletes `topic`, which must exist ([`Error::UnknownTopic`]).
///
/// Tansu 0.6.0 deletes every topic of the cluster instead (see
/// docs/reference.md, "A Kafka cluster").
pub async fn delete(client: &Client, topic: &str) -> Result<()> {
    existing_topic_partitions(client, topic).await?;
    client
        .controller_client()
        .map_err(|source| Error::Metadata { source })?
        .delete_topic(topic, ADMIN_TIMEOUT_MS)
        .await
        .map_err(|source| Error::DeleteTopic {
            topic: topic.to_owned(),
            source,
        })
}

/// The partition count of `topic`, or `None` if it does not exist;
/// [`Error::NoPartitions`] if the metadata lists it with none.
pub async fn topic_partitions(client: &Client, topic: &str) -> Result<Option<u32>> {
    let topics = client
        .list_topics()
        .await
        .map_err(|source| Error::Metadata { source })?;
    let Some(listed) = topics.into_iter().find(|t| t.name == topic) else {
        return Ok(None);
    };
    match partition_count(listed.partitions.len()) {
        Some(n) => Ok(Some(n)),
        None => Err(Error::NoPartitions {
            topic: topic.to_owned(),
        }),
    }
}

/// A partition count from metadata, which every caller divides by or
/// indexes with: `None` for zero, so it is an error where it is read,
/// never a later panic.
fn partition_count(listed: usize) -> Option<u32> {
    // Kafka counts partitions in an int32, so the conversion never fails.
    u32::try_from(listed).ok().filter(|n| *n > 0)
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
    // Replication factor 1: the local broker is a single node. A real
    // cluster's operators create production topics themselves (`topics
    // create --replication-factor 3`).
    ensure_replicated(client, topic, partitions, 1).await
}

/// [`ensure_topic`] with each partition on `replication_factor` brokers.
async fn ensure_replicated(
    client: &Client,
    topic: &str,
    partitions: u32,
    replication_factor: i16,
) -> Result<TopicInfo> {
    if let Some(existing) = topic_partitions(client, topic).await? {
        return Ok(TopicInfo {
            partitions: existing,
            created: false,
        });
    }
    let controller = client
        .controller_client()
        .map_err(|source| Error::Metadata { source })?;
    let created = controller
        .create_topic(
            topic,
            partitions as i32,
            replication_factor,
            ADMIN_TIMEOUT_MS,
        )
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
    shown(client, topic).await
}

/// Waits until the metadata shows a topic just created (it may lag the
/// creation by a moment).
async fn shown(client: &Client, topic: &str) -> Result<TopicInfo> {
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

    /// A topic listed with zero partitions is an error naming it; any other count passes.
    #[test]
    fn zero_partitions_is_an_error() {
        assert_eq!(partition_count(0), None);
        assert_eq!(partition_count(3), Some(3));
        let err = Error::NoPartitions {
            topic: "food-orders".to_owned(),
        };
        assert!(
            err.to_string()
                .contains("\"food-orders\" has no partitions"),
            "{err}"
        );
    }

    /// `topics describe` prints a header and one aligned row per partition with its record count.
    #[test]
    fn description_is_a_table() {
        let d = TopicDescription {
            name: "food-orders".to_owned(),
            partitions: vec![
                PartitionOffsets {
                    partition: 0,
                    earliest: 0,
                    latest: 12,
                },
                PartitionOffsets {
                    partition: 1,
                    earliest: 5,
                    latest: 9,
                },
            ],
        };
        assert_eq!(
            d.to_string(),
            "topic food-orders: 2 partition(s)\n\
             PARTITION  EARLIEST-OFFSET    LATEST-OFFSET    RECORDS\n\
             \x20       0                0               12         12\n\
             \x20       1                5                9          4\n"
        );
        let t = TopicSummary {
            name: "t".to_owned(),
            partitions: 3,
        };
        assert_eq!(t.to_string(), "t\t3 partition(s)");
    }
}
