//! Reading partitions: bounded `read_committed` fetches from an offset, one
//! partition at a time ([`PartitionReader`]) or many partitions of a topic
//! per request ([`TopicFetcher`]).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::Client;
use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};

use crate::committed::{FetchedBatch, read_committed};
use crate::{Error, Result};

/// A connection to the leader of one partition, for writing a few records
/// at a time and waiting for them (e.g. dead-letter copies); bulk producing
/// goes through [`crate::Producer`].
#[derive(Debug)]
pub struct PartitionWriter {
    client: PartitionClient,
}

impl PartitionWriter {
    pub async fn new(client: &Client, topic: &str, partition: i32) -> Result<Self> {
        let client =
            crate::partition_client(client, topic, partition, UnknownTopicHandling::Retry).await?;
        Ok(Self { client })
    }

    /// Produces `records` and waits for the acknowledgement.
    pub async fn write(&self, records: Vec<rskafka::record::Record>) -> Result<()> {
        self.client
            .produce(
                records,
                rskafka::client::partition::Compression::NoCompression,
            )
            .await
            .map(|_| ())
            .map_err(|source| Error::Partition {
                topic: self.client.topic().to_owned(),
                partition: self.client.partition(),
                source,
            })
    }
}

/// A connection to the leader of one partition, for reading.
#[derive(Debug)]
pub struct PartitionReader {
    client: PartitionClient,
}

impl PartitionReader {
    pub async fn new(client: &Client, topic: &str, partition: i32) -> Result<Self> {
        let client =
            crate::partition_client(client, topic, partition, UnknownTopicHandling::Error).await?;
        Ok(Self { client })
    }

    pub fn partition(&self) -> i32 {
        self.client.partition()
    }

    /// Fetches records from `offset` as a `read_committed` consumer sees
    /// them (see [`FetchedBatch`]): at most about `max_bytes` (the broker
    /// returns at least one whole batch even if it is larger), waiting up to
    /// `max_wait` for data to arrive if there is none yet.
    ///
    /// Continue from [`FetchedBatch::next_offset`], not from the last
    /// record: an answer may hold only a transaction marker or aborted
    /// records. A batch that cannot be decoded is returned in
    /// [`FetchedBatch::corrupt`], not as an error.
    pub async fn fetch(
        &self,
        offset: i64,
        max_bytes: i32,
        max_wait: Duration,
    ) -> Result<FetchedBatch> {
        let bytes: Range<i32> = 1..max_bytes.max(2);
        let fetched = self
            .client
            .fetch_records_detailed(offset, bytes, wait_ms(max_wait))
            .await
            .map_err(|source| Error::Fetch {
                topic: self.client.topic().to_owned(),
                partition: self.client.partition(),
                offset,
                source,
            })?;
        Ok(read_committed(offset, fetched))
    }

    /// The earliest offset still on the broker, or the log-end offset.
    pub async fn offset(&self, at: OffsetAt) -> Result<i64> {
        self.client
            .get_offset(at)
            .await
            .map_err(|source| Error::ListOffsets {
                topic: self.client.topic().to_owned(),
                partition: self.client.partition(),
                source,
            })
    }
}

fn wait_ms(max_wait: Duration) -> i32 {
    i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX)
}

/// Fetches many partitions of one topic with one request per leader broker.
///
/// A broker answers the requests of one connection one after another, and
/// a long poll holds its connection for up to `max_wait`: with one
/// connection per partition that is one socket each, with one shared
/// connection the partitions would wait for each other. One Fetch request
/// naming all the partitions a broker leads (as the Java consumer sends)
/// waits once for all of them.
#[derive(Debug)]
pub struct TopicFetcher {
    topic: String,
    /// One client per partition: each knows its partition's leader, and the
    /// first client of a leader's group sends that group's request.
    clients: BTreeMap<i32, PartitionClient>,
}

impl TopicFetcher {
    /// A fetcher of no partitions yet; [`TopicFetcher::add`] adds them.
    pub fn empty(topic: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            clients: BTreeMap::new(),
        }
    }

    /// Connects to the leaders of `partitions` of `topic`.
    pub async fn new(
        client: &Client,
        topic: &str,
        partitions: impl IntoIterator<Item = i32>,
    ) -> Result<Self> {
        let mut clients = BTreeMap::new();
        for partition in partitions {
            let c = crate::partition_client(client, topic, partition, UnknownTopicHandling::Error)
                .await?;
            clients.insert(partition, c);
        }
        Ok(Self {
            topic: topic.to_owned(),
            clients,
        })
    }

    /// The partitions this fetcher reads.
    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.clients.keys().copied()
    }

    /// Starts reading `partition` too (a consumer took it): connects to its
    /// leader through `client`.
    pub async fn add(&mut self, client: &Client, partition: i32) -> Result<()> {
        let c =
            crate::partition_client(client, &self.topic, partition, UnknownTopicHandling::Error)
                .await?;
        self.clients.insert(partition, c);
        Ok(())
    }

    /// Starts reading the partition of `reader` too, through the
    /// connection the reader already has (no new connection, no metadata
    /// request).
    pub fn insert(&mut self, reader: PartitionReader) {
        self.clients.insert(reader.partition(), reader.client);
    }

    /// Stops reading `partition` (a consumer gave it up).
    pub fn remove(&mut self, partition: i32) {
        self.clients.remove(&partition);
    }

    /// ListOffsets for one of this fetcher's partitions.
    pub async fn offset(&self, partition: i32, at: OffsetAt) -> Result<i64> {
        let client = self
            .clients
            .get(&partition)
            .ok_or_else(|| Error::NotFetched {
                topic: self.topic.clone(),
                partition,
            })?;
        client
            .get_offset(at)
            .await
            .map_err(|source| Error::ListOffsets {
                topic: self.topic.clone(),
                partition,
                source,
            })
    }

    /// Fetches `(partition, offset, max_bytes)` for each request, one Fetch
    /// per leader, waiting up to `max_wait` for data. Every request gets its
    /// own result, in request order: a partition's error (unknown to this
    /// fetcher, leader moved, offset out of range, connection lost) fails
    /// that partition only. Results are [`PartitionReader::fetch`]'s.
    ///
    /// `max_bytes` caps each leader's whole answer (Kafka's
    /// `fetch.max.bytes`; the per-partition numbers are
    /// `max.partition.fetch.bytes`): the broker fills partitions in request
    /// order until it is reached, so a caller rotates the order for
    /// fairness. `None`: the sum of the partitions' limits.
    pub async fn fetch_many(
        &self,
        requests: &[(i32, i64, i32)],
        max_bytes: Option<i32>,
        max_wait: Duration,
    ) -> Vec<(i32, Result<FetchedBatch>)> {
        let mut results: Vec<Option<Result<FetchedBatch>>> =
            requests.iter().map(|_| None).collect();
        // Group by leader, keeping each request's index.
        let mut groups: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        for (i, &(partition, offset, _)) in requests.iter().enumerate() {
            let Some(client) = self.clients.get(&partition) else {
                results[i] = Some(Err(Error::NotFetched {
                    topic: self.topic.clone(),
                    partition,
                }));
                continue;
            };
            match client.leader_id().await {
                Ok(leader) => groups.entry(leader).or_default().push(i),
                Err(source) => {
                    results[i] = Some(Err(Error::Fetch {
                        topic: self.topic.clone(),
                        partition,
                        offset,
                        source,
                    }))
                }
            }
        }

        let wait = wait_ms(max_wait);
        let answers = futures::future::join_all(groups.into_iter().map(|(leader, indexes)| {
            let batch: Vec<(i32, i64, i32)> = indexes
                .iter()
                .map(|&i| {
                    let (p, o, b) = requests[i];
                    (p, o, b.max(1))
                })
                .collect();
            // Any client of the group talks to its leader.
            let sender = &self.clients[&batch[0].0];
            let sum = batch
                .iter()
                .fold(0i32, |sum, &(_, _, b)| sum.saturating_add(b));
            let max_bytes = max_bytes.map_or(sum, |cap| cap.min(sum));
            async move {
                let answer = sender
                    .fetch_records_detailed_many(&batch, max_bytes, wait)
                    .await;
                (leader, indexes, answer)
            }
        }))
        .await;

        for (leader, indexes, answer) in answers {
            match answer {
                Ok(per_partition) => {
                    for (&i, (partition, result)) in indexes.iter().zip(per_partition) {
                        let offset = requests[i].1;
                        results[i] = Some(match result {
                            Ok(fetched) => Ok(read_committed(offset, fetched)),
                            Err(source) => {
                                if is_leader_moved(&source) {
                                    self.refresh_leader(partition).await;
                                }
                                Err(Error::Fetch {
                                    topic: self.topic.clone(),
                                    partition,
                                    offset,
                                    source,
                                })
                            }
                        });
                    }
                }
                Err(source) => {
                    // The request as a whole failed; every partition of it says so.
                    let source = Arc::new(source);
                    for &i in &indexes {
                        results[i] = Some(Err(Error::FetchRequest {
                            topic: self.topic.clone(),
                            partition: requests[i].0,
                            offset: requests[i].1,
                            leader,
                            source: Arc::clone(&source),
                        }));
                    }
                }
            }
        }

        requests
            .iter()
            .zip(results)
            .map(|(&(partition, _, _), result)| {
                // Every index was filled above: by a leader error, a
                // partition result or the group's failure.
                let result = result.unwrap_or(Err(Error::NotFetched {
                    topic: self.topic.clone(),
                    partition,
                }));
                (partition, result)
            })
            .collect()
    }

    /// After a partition's leader moved, asks the partition's own client for
    /// something: rskafka then sees the leader change itself, drops its
    /// cached leader and finds the new one, which the next grouping uses.
    async fn refresh_leader(&self, partition: i32) {
        if let Some(client) = self.clients.get(&partition)
            && let Err(e) = client.get_offset(OffsetAt::Latest).await
        {
            tracing::debug!(topic = %self.topic, partition, error = %e, "leader refresh failed");
        }
    }
}

fn is_leader_moved(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::ServerError {
            protocol_error: ProtocolError::NotLeaderOrFollower
                | ProtocolError::UnknownTopicOrPartition
                | ProtocolError::LeaderNotAvailable,
            ..
        }
    )
}
