use crate::{
    backoff::{Backoff, BackoffConfig, ErrorOrThrottle},
    client::error::{Error, RequestContext, Result},
    connection::{
        BrokerCache, BrokerCacheGeneration, BrokerConnection, BrokerConnector, MessengerTransport,
        MetadataLookupMode,
    },
    messenger::RequestError,
    protocol::{
        error::Error as ProtocolError,
        messages::{
            DeleteRecordsRequest, DeleteRecordsResponse, DeleteRequestPartition,
            DeleteRequestTopic, DeleteResponsePartition, FetchRequest, FetchRequestPartition,
            FetchRequestTopic, FetchResponse, FetchResponsePartition, IsolationLevel,
            ListOffsetsRequest, ListOffsetsRequestPartition, ListOffsetsRequestTopic,
            ListOffsetsResponse, ListOffsetsResponsePartition, NORMAL_CONSUMER, ProduceRequest,
            ProduceRequestPartitionData, ProduceRequestTopicData, ProduceResponse,
        },
        primitives::*,
        record::{Record as ProtocolRecord, *},
        traits::ReadType,
    },
    record::{Record, RecordAndOffset},
    throttle::maybe_throttle,
    validation::ExactlyOne,
};
use chrono::{DateTime, LocalResult, TimeZone, Utc};
use std::{
    io::Cursor,
    ops::{ControlFlow, Deref, Range},
    sync::Arc,
};
use tokio::sync::Mutex;
use tracing::{debug, error, info};

use super::{error::ServerErrorResponse, metadata_cache::MetadataCacheGeneration};

/// How strongly a [`PartitionClient`] is bound to a partition.
///
/// Under some circumstances and broker implementations, you might face a [`ProtocolError::UnknownTopicOrPartition`]
/// for nearly all operations directly after topic/partition creation. Since the Kafka protocol offers no (at least
/// to our knowledge) way to differentiate between "a topic/partition actually does not exist" and "our multiverse
/// split brain is not synced up yet", we can only offer you a manual way to wait for topic existence.
///
/// We offer the following ways to deal with this:
///
/// - Use a [`Error`](Self::Error). All other methods (including the creation of a [`PartitionClient`]) may produce
///   sporadic [`ProtocolError::UnknownTopicOrPartition`] errors.
/// - Use a [`Retry`](Self::Error) which assumes a partition exists and retries [`ProtocolError::UnknownTopicOrPartition`]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownTopicHandling {
    /// When a [`ProtocolError::UnknownTopicOrPartition`] is returned by Kafka,
    /// it is passed up to the user to handle.
    ///
    /// These errors may occur spuriously.
    Error,

    /// Always retry operations that return a
    /// [`ProtocolError::UnknownTopicOrPartition`], until the operation succeeds
    /// or a different error is returned.
    ///
    /// This may unpredictably increase operation latency.
    Retry,
}

/// Compression of records.
///
/// This is only relevant for [produce requests](PartitionClient::produce). There the client compresses the records.
///
/// For [fetch requests](PartitionClient::fetch_records) we have to accept a message as it exists, i.e. how it was
/// originally compressed. The broker will NOT change the data compression based on our request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    #[default]
    NoCompression,
    #[cfg(feature = "compression-gzip")]
    Gzip,
    #[cfg(feature = "compression-lz4")]
    Lz4,
    #[cfg(feature = "compression-snappy")]
    Snappy,
    #[cfg(feature = "compression-zstd")]
    Zstd,
}

/// Which type of offset should be requested by [`PartitionClient::get_offset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetAt {
    /// Earliest existing record.
    ///
    /// This is NOT the earliest produced record but the earliest record that is still kept, i.e. the offset might
    /// change if records are pruned by Kafka (retention policy) or if the are deleted.
    Earliest,

    /// The latest existing record.
    Latest,

    /// Timestamp
    ///
    /// The Kafka API supports querying an offset based on a timestamp, but the behavior seems to be
    /// semi-defined, unintuitive (even within Apache Kafka) and inconsistent between Apache Kafka and Redpanda. Mostly it
    /// offers timestamp based querying with millisecond precision.
    Timestamp(DateTime<Utc>),
}

/// The type of a control record, the marker a transaction coordinator writes when a transaction ends.
///
/// # References
/// - <https://kafka.apache.org/documentation/#controlbatch>
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRecordType {
    /// The producer's transaction was aborted: its records before this marker are not to be read.
    Abort,
    /// The producer's transaction was committed.
    Commit,
    /// A type this client does not know (Kafka's `ControlRecordType.UNKNOWN`); skipped like any control record.
    Unknown(i16),
}

/// One whole record batch of a fetch response, with what a `read_committed` consumer needs besides its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedRecordBatch {
    /// Offset of the first record of the batch.
    pub base_offset: i64,
    /// Offset of the last record of the batch (`baseOffset + lastOffsetDelta`), which may be past the last record
    /// still present after compaction. The next batch starts after it.
    pub last_offset: i64,
    /// The producer id, or -1 for a batch of a producer that is neither idempotent nor transactional.
    pub producer_id: i64,
    /// The producer epoch, or -1.
    pub producer_epoch: i16,
    /// Whether the batch belongs to a transaction.
    pub is_transactional: bool,
    /// `Some` if this is a control batch (a transaction marker), which carries no records.
    pub control: Option<ControlRecordType>,
    /// All records of the batch, including those before the requested offset.
    pub records: Vec<RecordAndOffset>,
}

/// A record batch of a fetch response that could not be decoded (CRC mismatch, unknown compression, decompression
/// error, malformed records, invalid timestamps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRecordBatch {
    /// The batch's base offset as its header says.
    pub base_offset: i64,
    /// `baseOffset + lastOffsetDelta` from the header, if the header was long enough to hold it. The header fields
    /// are CRC-protected, so with a CRC mismatch this may be wrong too.
    pub last_offset: Option<i64>,
    /// The batch's bytes as they came over the wire, from its base offset to its end (or to the end of the response
    /// if its length field is invalid).
    pub raw: Vec<u8>,
    /// Why it could not be decoded.
    pub error: String,
}

/// A transaction that was aborted, as listed in a `read_committed` fetch response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTransaction {
    /// The producer whose transaction was aborted.
    pub producer_id: i64,
    /// The offset of the transaction's first record.
    pub first_offset: i64,
}

/// The full answer of a fetch for one partition, see [`PartitionClient::fetch_records_detailed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchDetailed {
    /// The whole batches of the response, in offset order: data, control and transactional batches alike.
    pub batches: Vec<FetchedRecordBatch>,
    /// The first batch that could not be decoded; decoding stops there, so `batches` are the ones before it.
    pub corrupt: Option<CorruptRecordBatch>,
    /// The partition's high watermark.
    pub high_watermark: i64,
    /// The partition's last stable offset: the records before it belong to no open transaction.
    pub last_stable_offset: Option<i64>,
    /// The transactions aborted within the fetched range.
    pub aborted_transactions: Vec<AbortedTransaction>,
}

#[derive(Debug)]
struct CurrentBroker {
    broker: Option<BrokerConnection>,
    /// The id of the broker `broker` is connected to.
    leader: Option<i32>,
    gen_broker: BrokerCacheGeneration,
    gen_leader_from_arbitrary: Option<MetadataCacheGeneration>,
    gen_leader_from_self: Option<MetadataCacheGeneration>,
}

/// Many operations must be performed on the leader for a partition
///
/// Additionally a partition is the unit of concurrency within Kafka
///
/// As such a [`PartitionClient`] is a dedicated connection to the broker that
/// is the leader for a given partition.
///
/// In the event of a leadership change, [`PartitionClient`] will transparently
/// handle migrating to the new broker
///
pub struct PartitionClient {
    topic: String,
    partition: i32,
    brokers: Arc<BrokerConnector>,

    backoff_config: Arc<BackoffConfig>,

    /// Current broker connection if any
    current_broker: Mutex<CurrentBroker>,

    unknown_topic_handling: UnknownTopicHandling,
}

impl std::fmt::Debug for PartitionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PartitionClient({}:{})", self.topic, self.partition)
    }
}

impl PartitionClient {
    pub(super) async fn new(
        topic: String,
        partition: i32,
        brokers: Arc<BrokerConnector>,
        unknown_topic_handling: UnknownTopicHandling,
        backoff_config: Arc<BackoffConfig>,
    ) -> Result<Self> {
        let p = Self {
            topic,
            partition,
            brokers: Arc::clone(&brokers),
            backoff_config,
            current_broker: Mutex::new(CurrentBroker {
                broker: None,
                leader: None,
                gen_broker: BrokerCacheGeneration::START,
                gen_leader_from_arbitrary: None,
                gen_leader_from_self: None,
            }),
            unknown_topic_handling,
        };

        // Force discover and establish a cached connection to the leader
        let scope = &p;
        maybe_retry(
            &p.backoff_config,
            p.unknown_topic_handling,
            &*brokers,
            "leader_detection",
            || async move {
                scope
                    .get()
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e, None)))?;
                Ok(())
            },
        )
        .await?;

        Ok(p)
    }

    /// Topic
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Partition
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Produce a batch of records to the partition
    pub async fn produce(
        &self,
        records: Vec<Record>,
        compression: Compression,
    ) -> Result<Vec<i64>> {
        // skip request entirely if `records` is empty
        if records.is_empty() {
            return Ok(vec![]);
        }
        self.produce_prepared(&self.prepare_produce(records, compression))
            .await
    }

    /// Builds the produce request for `records` once, to send with
    /// [`produce_prepared`](Self::produce_prepared) as often as the caller
    /// retries: a caller that retries past this client's own backoff
    /// deadline keeps the request instead of a copy of its records.
    pub fn prepare_produce(&self, records: Vec<Record>, compression: Compression) -> PreparedProduce {
        let n = records.len() as i64;
        let request = (n > 0)
            .then(|| build_produce_request(self.partition, &self.topic, records, compression));
        PreparedProduce {
            topic: self.topic.clone(),
            partition: self.partition,
            n,
            request,
        }
    }

    /// Sends a request built by [`prepare_produce`](Self::prepare_produce)
    /// of a client of the same partition, with this client's retries.
    pub async fn produce_prepared(&self, prepared: &PreparedProduce) -> Result<Vec<i64>> {
        let Some(request) = &prepared.request else {
            return Ok(vec![]);
        };
        if (prepared.topic.as_str(), prepared.partition) != (self.topic.as_str(), self.partition) {
            return Err(Error::InvalidResponse(format!(
                "a produce request built for {}/{} sent through the client of {}/{}",
                prepared.topic, prepared.partition, self.topic, self.partition
            )));
        }
        let n = prepared.n;

        maybe_retry(
            &self.backoff_config,
            self.unknown_topic_handling,
            self,
            "produce",
            || async move {
                let (broker, r#gen) = self
                    .get()
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e, None)))?;
                let response = broker
                    .request(request)
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e.into(), Some(r#gen))))?;
                maybe_throttle(response.throttle_time_ms)?;
                process_produce_response(self.partition, &self.topic, n, response)
                    .map_err(|e| ErrorOrThrottle::Error((e, Some(r#gen))))
            },
        )
        .await
    }

    /// Fetch `bytes` bytes of record data starting at sequence number `offset`
    ///
    /// Returns the records, and the current high watermark.
    ///
    ///
    /// # Error Handling
    /// Fetching records outside the range known the to broker (marked by low and high watermark) will lead to a
    /// [`ServerError`](Error::ServerError) with [`OffsetOutOfRange`](ProtocolError::OffsetOutOfRange). You may use
    /// [`get_offset`](Self::get_offset) to determine the offset range.
    pub async fn fetch_records(
        &self,
        offset: i64,
        bytes: Range<i32>,
        max_wait_ms: i32,
    ) -> Result<(Vec<RecordAndOffset>, i64)> {
        let fetched = self
            .fetch_records_detailed(offset, bytes, max_wait_ms)
            .await?;

        if let Some(corrupt) = fetched.corrupt {
            return Err(Error::InvalidResponse(format!(
                "Cannot decode record batch at offset {}: {}",
                corrupt.base_offset, corrupt.error
            )));
        }

        let records = fetched
            .batches
            .into_iter()
            // control batches carry no records
            .flat_map(|batch| batch.records)
            // Kafka does not split record batches on the server side, so we need to do this filtering on the client
            // side
            .filter(|record| record.offset >= offset)
            .collect();

        Ok((records, fetched.high_watermark))
    }

    /// Fetch like [`fetch_records`](Self::fetch_records), but return every whole batch with its offsets, producer
    /// and control marker, the last stable offset and the aborted transactions: what a `read_committed` consumer
    /// needs to skip transaction markers and the records of aborted transactions.
    ///
    /// A batch that cannot be decoded does not fail the call: the batches before it are returned and it is reported
    /// in [`FetchDetailed::corrupt`]. A batch cut off at the end of the response (by `bytes`) is dropped, as usual.
    pub async fn fetch_records_detailed(
        &self,
        offset: i64,
        bytes: Range<i32>,
        max_wait_ms: i32,
    ) -> Result<FetchDetailed> {
        let max_bytes = bytes.end.saturating_sub(1);
        let request = &build_fetch_request(
            &[(self.partition, offset, max_bytes)],
            bytes.start,
            max_bytes,
            max_wait_ms,
            &self.topic,
        );

        let partition = maybe_retry(
            &self.backoff_config,
            self.unknown_topic_handling,
            self,
            "fetch_records",
            || async move {
                let (broker, r#gen) = self
                    .get()
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e, None)))?;
                let response = broker
                    .request(&request)
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e.into(), Some(r#gen))))?;
                maybe_throttle(response.throttle_time_ms)?;
                process_fetch_response(self.partition, &self.topic, response, offset)
                    .map_err(|e| ErrorOrThrottle::Error((e, Some(r#gen))))
            },
        )
        .await?;

        Ok(extract_fetch_detailed(partition))
    }

    /// Fetch several partitions of this client's topic in ONE request to this client's broker (the leader of its
    /// own partition), as the Java consumer does: a broker answers the requests of one connection one after another,
    /// so one long poll per partition would queue up behind each other.
    ///
    /// `partitions` are `(partition, offset, partition max bytes)`; `max_bytes` bounds the whole response. Only
    /// partitions led by this client's broker (see [`leader_id`](Self::leader_id)) can be fetched here: the others
    /// answer [`NotLeaderOrFollower`](ProtocolError::NotLeaderOrFollower) or
    /// [`UnknownTopicOrPartition`](ProtocolError::UnknownTopicOrPartition).
    ///
    /// Errors of a partition (those, [`OffsetOutOfRange`](ProtocolError::OffsetOutOfRange), ...) are returned per
    /// partition, in the order of `partitions`; the call fails only if the request as a whole does (after the usual
    /// retries of connection errors).
    pub async fn fetch_records_detailed_many(
        &self,
        partitions: &[(i32, i64, i32)],
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> Result<Vec<(i32, Result<FetchDetailed>)>> {
        if partitions.is_empty() {
            return Ok(vec![]);
        }
        let request = &build_fetch_request(partitions, 1, max_bytes, max_wait_ms, &self.topic);

        let mut response = maybe_retry(
            &self.backoff_config,
            self.unknown_topic_handling,
            self,
            "fetch_records_many",
            || async move {
                let (broker, r#gen) = self
                    .get()
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e, None)))?;
                let response = broker
                    .request(&request)
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e.into(), Some(r#gen))))?;
                maybe_throttle(response.throttle_time_ms)?;
                let topic = response
                    .responses
                    .exactly_one()
                    .map_err(|e| ErrorOrThrottle::Error((Error::exactly_one_topic(e), Some(r#gen))))?;
                if topic.topic.0 != self.topic {
                    return Err(ErrorOrThrottle::Error((
                        Error::InvalidResponse(format!(
                            "Expected data for topic '{}' but got data for topic '{}'",
                            self.topic, topic.topic.0
                        )),
                        Some(r#gen),
                    )));
                }
                Ok(topic.partitions)
            },
        )
        .await?;

        Ok(partitions
            .iter()
            .map(|&(partition, offset, _)| {
                let result = match response
                    .iter()
                    .position(|p| p.partition_index.0 == partition)
                {
                    None => Err(Error::InvalidResponse(format!(
                        "No data for partition {} of topic '{}' in fetch response",
                        partition, self.topic
                    ))),
                    Some(i) => {
                        let response_partition = response.swap_remove(i);
                        match response_partition.error_code {
                            Some(err) => Err(fetch_error(
                                &self.topic,
                                partition,
                                offset,
                                err,
                                &response_partition,
                            )),
                            None => Ok(extract_fetch_detailed(response_partition)),
                        }
                    }
                };
                (partition, result)
            })
            .collect())
    }

    /// The id of the broker this client talks to: the leader of its partition when last discovered. Connects (and so
    /// discovers the leader) if there is no connection at the moment.
    ///
    /// Lets a caller group partitions by leader for
    /// [`fetch_records_detailed_many`](Self::fetch_records_detailed_many).
    pub async fn leader_id(&self) -> Result<i32> {
        loop {
            maybe_retry(
                &self.backoff_config,
                self.unknown_topic_handling,
                self,
                "leader_id",
                || async move {
                    self.get()
                        .await
                        .map_err(|e| ErrorOrThrottle::Error((e, None)))?;
                    Ok(())
                },
            )
            .await?;
            let current_broker = self.current_broker.lock().await;
            if let (Some(_), Some(leader)) = (&current_broker.broker, current_broker.leader) {
                return Ok(leader);
            }
            // invalidated in between: connect again
        }
    }

    /// Get offset for this partition.
    ///
    /// Note that the value returned by this method should be considered stale data, since:
    ///
    /// - **[`OffsetAt::Earliest`]:** Might be change at any time due to the Kafka retention policy or by
    ///   [deleting records](Self::delete_records).
    /// - **[`OffsetAt::Latest`]:** Might be change at any time by [producing records](Self::produce).
    pub async fn get_offset(&self, at: OffsetAt) -> Result<i64> {
        let request = &build_list_offsets_request(self.partition, &self.topic, at);

        let partition = maybe_retry(
            &self.backoff_config,
            self.unknown_topic_handling,
            self,
            "get_offset",
            || async move {
                let (broker, r#gen) = self
                    .get()
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e, None)))?;
                let response = broker
                    .request(&request)
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e.into(), Some(r#gen))))?;
                maybe_throttle(response.throttle_time_ms)?;
                process_list_offsets_response(self.partition, &self.topic, response)
                    .map_err(|e| ErrorOrThrottle::Error((e, Some(r#gen))))
            },
        )
        .await?;

        extract_offset(partition)
    }

    /// Delete records whose offset is smaller than the given offset.
    ///
    /// # Supported Brokers
    /// Currently this is only supported by Apache Kafka but NOT by Redpanda, see
    /// <https://github.com/redpanda-data/redpanda/issues/1016>.
    pub async fn delete_records(&self, offset: i64, timeout_ms: i32) -> Result<()> {
        let request =
            &build_delete_records_request(offset, timeout_ms, &self.topic, self.partition);

        maybe_retry(
            &self.backoff_config,
            self.unknown_topic_handling,
            self,
            "delete_records",
            || async move {
                let (broker, r#gen) = self
                    .get()
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e, None)))?;
                let response = broker
                    .request(&request)
                    .await
                    .map_err(|e| ErrorOrThrottle::Error((e.into(), Some(r#gen))))?;
                maybe_throttle(Some(response.throttle_time_ms))?;
                process_delete_records_response(&self.topic, self.partition, response)
                    .map_err(|e| ErrorOrThrottle::Error((e, Some(r#gen))))
            },
        )
        .await?;

        Ok(())
    }

    /// Retrieve the broker ID of the partition leader
    async fn get_leader(
        &self,
        metadata_mode: MetadataLookupMode,
    ) -> Result<(i32, Option<MetadataCacheGeneration>)> {
        let (metadata, r#gen) = self
            .brokers
            .request_metadata(&metadata_mode, Some(vec![self.topic.clone()]))
            .await?;

        let topic = metadata
            .topics
            .exactly_one()
            .map_err(Error::exactly_one_topic)?;

        if topic.name.0 != self.topic {
            return Err(Error::InvalidResponse(format!(
                "Expected metadata for topic \"{}\" got \"{}\"",
                self.topic, topic.name.0
            )));
        }

        if let Some(e) = topic.error {
            // TODO: Add retry logic
            return Err(Error::ServerError {
                protocol_error: e,
                error_message: None,
                request: RequestContext::Topic(self.topic.clone()),
                response: None,
                is_virtual: false,
            });
        }

        // foodpipe patch: a partition missing from the metadata is one
        // added to the topic after the metadata was cached (or not known to
        // this broker yet). The cache is dropped and the error is
        // UnknownTopicOrPartition, which callers retry, instead of an
        // invalid response that no retry could fix: before, a consumer
        // never reached the new partitions of a topic it already knew.
        let partition = topic
            .partitions
            .iter()
            .find(|p| p.partition_index.0 == self.partition)
            .ok_or_else(|| {
                if let Some(r#gen) = r#gen {
                    self.brokers.invalidate_metadata_cache(
                        "partition client: partition not in the metadata",
                        r#gen,
                    );
                }
                Error::ServerError {
                    protocol_error: ProtocolError::UnknownTopicOrPartition,
                    error_message: Some(format!(
                        "Could not find metadata for partition {} in topic \"{}\"",
                        self.partition, self.topic
                    )),
                    request: RequestContext::Partition(self.topic.clone(), self.partition),
                    response: None,
                    is_virtual: true,
                }
            })?;

        if let Some(e) = partition.error {
            // TODO: Add retry logic
            return Err(Error::ServerError {
                protocol_error: e,
                error_message: None,
                request: RequestContext::Partition(self.topic.clone(), self.partition),
                response: None,
                is_virtual: false,
            });
        }

        if partition.leader_id.0 == -1 {
            return Err(Error::ServerError {
                protocol_error: ProtocolError::LeaderNotAvailable,
                error_message: None,
                request: RequestContext::Partition(self.topic.clone(), self.partition),
                response: None,
                is_virtual: true,
            });
        }

        info!(
            topic=%self.topic,
            partition=%self.partition,
            leader=partition.leader_id.0,
            %metadata_mode,
            "Detected leader",
        );
        Ok((partition.leader_id.0, r#gen))
    }
}

/// Caches the partition leader broker.
impl BrokerCache for &PartitionClient {
    type R = MessengerTransport;
    type E = Error;

    async fn get(&self) -> Result<(Arc<Self::R>, BrokerCacheGeneration)> {
        let mut current_broker = self.current_broker.lock().await;
        if let Some(broker) = &current_broker.broker {
            return Ok((Arc::clone(broker), current_broker.gen_broker));
        }

        info!(
            topic=%self.topic,
            partition=%self.partition,
            "Creating new partition-specific broker connection",
        );

        // Perform a request to fetch the topic metadata to determine the
        // current leader.
        //
        // Accept a cached metadata entry as a response because:
        //   * If the leader is offline, the connection call below fails and the cache is invalidated - the next call
        //     will cause the cache to be re-populate with a fresh entry.
        //   * A subsequent query is performed against the leader that does not use the cached entry - this validates
        //     the correctness of the cached entry.
        //
        let (leader, gen_leader_from_arbitrary) =
            self.get_leader(MetadataLookupMode::CachedArbitrary).await?;
        let broker = match self.brokers.connect(leader).await {
            Ok(Some(c)) => Ok(c),
            Ok(None) => {
                if let Some(r#gen) = gen_leader_from_arbitrary {
                    self.brokers.invalidate_metadata_cache(
                        "partition client: broker that is leader is unknown",
                        r#gen,
                    );
                }
                Err(Error::InvalidResponse(format!(
                    "Partition leader {} not found in metadata response",
                    leader
                )))
            }
            Err(e) => {
                if let Some(r#gen) = gen_leader_from_arbitrary {
                    self.brokers.invalidate_metadata_cache(
                        "partition client: error connecting to partition leader",
                        r#gen,
                    );
                }
                Err(e.into())
            }
        }?;

        // Check if the chosen leader also thinks it is the leader.
        //
        // For Kafka (+ Zookeeper) this seems to be required if we don't want to blindly retry `UnknownTopicOrPartition`
        // that happen after we connect to a leader (as advised by another broker) which doesn't know about its assigned
        // partition yet. The metadata query below seems to result in an LeaderNotAvailable in this case and is retried
        // by the layer above.
        //
        // This does not seem to be required for redpanda.
        //
        // Because this check requires the most up-to-date metadata from a specific broker, do not accept a cached
        // metadata response.
        let (leader_self, gen_leader_from_self) = self
            .get_leader(MetadataLookupMode::SpecificBroker(Arc::clone(&broker)))
            .await?;
        if leader != leader_self {
            if let Some(r#gen) = gen_leader_from_self {
                // The cached metadata identified an incorrect leader - it is stale and should be refreshed.
                self.brokers.invalidate_metadata_cache(
                    "partition client: broker that should be leader does treat itself as a leader",
                    r#gen,
                );
            }

            // this might happen if the leader changed after we got the hint from a arbitrary broker and this specific
            // metadata call.
            return Err(Error::ServerError {
                protocol_error: ProtocolError::NotLeaderOrFollower,
                error_message: None,
                request: RequestContext::Partition(self.topic.clone(), self.partition),
                response: Some(ServerErrorResponse::LeaderForward {
                    broker: leader,
                    new_leader: leader_self,
                }),
                is_virtual: true,
            });
        }

        *current_broker = CurrentBroker {
            broker: Some(Arc::clone(&broker)),
            leader: Some(leader),
            gen_broker: current_broker.gen_broker.bump(),
            gen_leader_from_arbitrary,
            gen_leader_from_self,
        };

        info!(
            topic=%self.topic,
            partition=%self.partition,
            leader,
            "Created new partition-specific broker connection",
        );
        Ok((broker, current_broker.gen_broker))
    }

    async fn invalidate(&self, reason: &'static str, r#gen: BrokerCacheGeneration) {
        let mut current_broker = self.current_broker.lock().await;

        if current_broker.gen_broker != r#gen {
            // stale request
            debug!(
                reason,
                current_gen = current_broker.gen_broker.get(),
                request_gen = r#gen.get(),
                "stale invalidation request for arbitrary broker cache",
            );
            return;
        }

        info!(
            topic = self.topic.deref(),
            partition = self.partition,
            reason,
            "Invaliding cached leader",
        );

        if let Some(r#gen) = current_broker.gen_leader_from_arbitrary {
            self.brokers.invalidate_metadata_cache(reason, r#gen);
        }
        if let Some(r#gen) = current_broker.gen_leader_from_self {
            self.brokers.invalidate_metadata_cache(reason, r#gen);
        }

        current_broker.broker = None
    }
}

/// Takes a `request_name` and a function yielding a fallible future
/// and handles certain classes of error
async fn maybe_retry<B, R, F, T>(
    backoff_config: &BackoffConfig,
    unknown_topic_handling: UnknownTopicHandling,
    broker_cache: B,
    request_name: &str,
    f: R,
) -> Result<T>
where
    B: BrokerCache,
    R: (Fn() -> F) + Send + Sync,
    F: std::future::Future<
            Output = Result<T, ErrorOrThrottle<(Error, Option<BrokerCacheGeneration>)>>,
        > + Send,
{
    let mut backoff = Backoff::new(backoff_config);

    backoff
        .retry_with_backoff(request_name, || async {
            let (error, cache_gen) = match f().await {
                Ok(v) => {
                    return ControlFlow::Break(Ok(v));
                }
                Err(ErrorOrThrottle::Throttle(throttle)) => {
                    return ControlFlow::Continue(ErrorOrThrottle::Throttle(throttle));
                }
                Err(ErrorOrThrottle::Error(e)) => e,
            };

            let retry = match error {
                Error::Request(RequestError::Poisoned(_) | RequestError::IO(_))
                | Error::Connection(_) => {
                    if let Some(cache_gen) = cache_gen {
                        broker_cache
                            .invalidate("partition client: connection broken", cache_gen)
                            .await;
                    }
                    true
                }
                Error::ServerError {
                    protocol_error:
                        ProtocolError::InvalidReplicationFactor
                        | ProtocolError::LeaderNotAvailable
                        | ProtocolError::OffsetNotAvailable,
                    ..
                } => true,
                Error::ServerError {
                    protocol_error: ProtocolError::NotLeaderOrFollower,
                    ..
                } => {
                    if let Some(cache_gen) = cache_gen {
                        broker_cache
                            .invalidate(
                                "partition client: server error: not leader or follower",
                                cache_gen,
                            )
                            .await;
                    }
                    true
                }
                Error::ServerError {
                    protocol_error: ProtocolError::UnknownTopicOrPartition,
                    ..
                } => {
                    if let Some(cache_gen) = cache_gen {
                        broker_cache
                            .invalidate(
                                "partition client: server error: unknown topic or partition",
                                cache_gen,
                            )
                            .await;
                    }
                    unknown_topic_handling == UnknownTopicHandling::Retry
                }
                _ => false,
            };

            if retry {
                ControlFlow::Continue(ErrorOrThrottle::Error(error))
            } else {
                error!(
                    e=%error,
                    request_name,
                    "request encountered fatal error",
                );
                ControlFlow::Break(Err(error))
            }
        })
        .await
        .map_err(Error::RetryFailed)?
}

/// A produce request built once ([`PartitionClient::prepare_produce`]),
/// sent as often as needed ([`PartitionClient::produce_prepared`]).
#[derive(Debug)]
pub struct PreparedProduce {
    topic: String,
    partition: i32,
    n: i64,
    request: Option<ProduceRequest>,
}

impl PreparedProduce {
    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.n as usize
    }

    /// Whether it holds no record (sending it sends nothing).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

fn build_produce_request(
    partition: i32,
    topic: &str,
    records: Vec<Record>,
    compression: Compression,
) -> ProduceRequest {
    let n = records.len() as i32;

    // TODO: Retry on failure

    let first_timestamp = records.first().unwrap().timestamp;
    let mut max_timestamp = first_timestamp;

    let records = records
        .into_iter()
        .enumerate()
        .map(|(offset_delta, record)| {
            max_timestamp = max_timestamp.max(record.timestamp);

            ProtocolRecord {
                key: record.key,
                value: record.value,
                timestamp_delta: (record.timestamp - first_timestamp).num_milliseconds(),
                offset_delta: offset_delta as i32,
                headers: record
                    .headers
                    .into_iter()
                    .map(|(key, value)| RecordHeader { key, value })
                    .collect(),
            }
        })
        .collect();

    let record_batch = ProduceRequestPartitionData {
        index: Int32(partition),
        records: Records(vec![RecordBatch {
            base_offset: 0,
            partition_leader_epoch: 0,
            last_offset_delta: n - 1,
            is_transactional: false,
            base_sequence: -1,
            compression: match compression {
                Compression::NoCompression => RecordBatchCompression::NoCompression,
                #[cfg(feature = "compression-gzip")]
                Compression::Gzip => RecordBatchCompression::Gzip,
                #[cfg(feature = "compression-lz4")]
                Compression::Lz4 => RecordBatchCompression::Lz4,
                #[cfg(feature = "compression-snappy")]
                Compression::Snappy => RecordBatchCompression::Snappy,
                #[cfg(feature = "compression-zstd")]
                Compression::Zstd => RecordBatchCompression::Zstd,
            },
            timestamp_type: RecordBatchTimestampType::CreateTime,
            producer_id: -1,
            producer_epoch: -1,
            first_timestamp: first_timestamp.timestamp_millis(),
            max_timestamp: max_timestamp.timestamp_millis(),
            records: ControlBatchOrRecords::Records(records),
        }]),
    };

    ProduceRequest {
        transactional_id: crate::protocol::primitives::NullableString(None),
        acks: Int16(-1),
        timeout_ms: Int32(30_000),
        topic_data: vec![ProduceRequestTopicData {
            name: String_(topic.to_string()),
            partition_data: vec![record_batch],
        }],
    }
}

fn process_produce_response(
    partition: i32,
    topic: &str,
    num_records: i64,
    response: ProduceResponse,
) -> Result<Vec<i64>> {
    let response = response
        .responses
        .exactly_one()
        .map_err(Error::exactly_one_topic)?;

    if response.name.0 != topic {
        return Err(Error::InvalidResponse(format!(
            "Expected write for topic \"{}\" got \"{}\"",
            topic, response.name.0,
        )));
    }

    let response = response
        .partition_responses
        .exactly_one()
        .map_err(Error::exactly_one_partition)?;

    if response.index.0 != partition {
        return Err(Error::InvalidResponse(format!(
            "Expected partition {} for topic \"{}\" got {}",
            partition, topic, response.index.0,
        )));
    }

    match response.error {
        Some(e) => Err(Error::ServerError {
            protocol_error: e,
            error_message: None,
            request: RequestContext::Partition(topic.to_owned(), partition),
            response: None,
            is_virtual: false,
        }),
        None => Ok((0..num_records)
            .map(|x| x + response.base_offset.0)
            .collect()),
    }
}

fn build_fetch_request(
    partitions: &[(i32, i64, i32)],
    min_bytes: i32,
    max_bytes: i32,
    max_wait_ms: i32,
    topic: &str,
) -> FetchRequest {
    FetchRequest {
        replica_id: NORMAL_CONSUMER,
        max_wait_ms: Int32(max_wait_ms),
        min_bytes: Int32(min_bytes),
        max_bytes: Some(Int32(max_bytes)),
        isolation_level: Some(IsolationLevel::ReadCommitted),
        topics: vec![FetchRequestTopic {
            topic: String_(topic.to_string()),
            partitions: partitions
                .iter()
                .map(|&(partition, offset, partition_max_bytes)| FetchRequestPartition {
                    partition: Int32(partition),
                    fetch_offset: Int64(offset),
                    partition_max_bytes: Int32(partition_max_bytes),
                })
                .collect(),
        }],
    }
}

fn process_fetch_response(
    partition: i32,
    topic: &str,
    response: FetchResponse,
    request_offset: i64,
) -> Result<FetchResponsePartition> {
    let response_topic = response
        .responses
        .exactly_one()
        .map_err(Error::exactly_one_topic)?;

    if response_topic.topic.0 != topic {
        return Err(Error::InvalidResponse(format!(
            "Expected data for topic '{}' but got data for topic '{}'",
            topic, response_topic.topic.0
        )));
    }

    let response_partition = response_topic
        .partitions
        .exactly_one()
        .map_err(Error::exactly_one_partition)?;

    if response_partition.partition_index.0 != partition {
        return Err(Error::InvalidResponse(format!(
            "Expected data for partition {} but got data for partition {}",
            partition, response_partition.partition_index.0
        )));
    }

    if let Some(err) = response_partition.error_code {
        return Err(fetch_error(
            topic,
            partition,
            request_offset,
            err,
            &response_partition,
        ));
    }

    Ok(response_partition)
}

fn fetch_error(
    topic: &str,
    partition: i32,
    request_offset: i64,
    err: ProtocolError,
    response_partition: &FetchResponsePartition,
) -> Error {
    Error::ServerError {
        protocol_error: err,
        error_message: None,
        request: RequestContext::Fetch {
            topic_name: topic.to_owned(),
            partition_id: partition,
            offset: request_offset,
        },
        response: Some(ServerErrorResponse::PartitionFetchState {
            high_watermark: response_partition.high_watermark.0,
            last_stable_offset: response_partition.last_stable_offset.map(|x| x.0),
        }),
        is_virtual: false,
    }
}

fn extract_fetch_detailed(partition: FetchResponsePartition) -> FetchDetailed {
    let (batches, corrupt) = decode_record_batches(&partition.records);
    FetchDetailed {
        batches,
        corrupt,
        high_watermark: partition.high_watermark.0,
        last_stable_offset: partition.last_stable_offset.map(|x| x.0),
        aborted_transactions: partition
            .aborted_transactions
            .iter()
            .map(|t| AbortedTransaction {
                producer_id: t.producer_id.0,
                first_offset: t.first_offset.0,
            })
            .collect(),
    }
}

/// Decode record batches (the `records` of a fetch response, or a log segment) one at a time, up to the first one
/// that cannot be decoded, as [`PartitionClient::fetch_records_detailed`] does.
///
/// Each batch starts with `baseOffset: int64` and `batchLength: int32` (the bytes after that field), so a batch can be
/// cut out and decoded on its own. A batch that does not fit in the data is the one `max_bytes` cut off: it is
/// dropped, as Kafka clients do.
pub fn decode_record_batches(data: &[u8]) -> (Vec<FetchedRecordBatch>, Option<CorruptRecordBatch>) {
    // baseOffset + batchLength
    const LOG_OVERHEAD: usize = 8 + 4;
    // baseOffset + batchLength + partitionLeaderEpoch + magic + crc + attributes
    const LAST_OFFSET_DELTA_AT: usize = LOG_OVERHEAD + 4 + 1 + 4 + 2;

    let mut batches = vec![];
    let mut rest = data;
    while rest.len() >= LOG_OVERHEAD {
        let base_offset = i64::from_be_bytes(rest[0..8].try_into().expect("8 bytes"));
        let batch_length = i32::from_be_bytes(rest[8..12].try_into().expect("4 bytes"));
        let corrupt = |raw: &[u8], error: String| CorruptRecordBatch {
            base_offset,
            last_offset: raw
                .get(LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4)
                .map(|delta| {
                    let delta = i32::from_be_bytes(delta.try_into().expect("4 bytes"));
                    base_offset.saturating_add(i64::from(delta))
                }),
            raw: raw.to_vec(),
            error,
        };

        let Some(end) = usize::try_from(batch_length)
            .ok()
            .and_then(|len| len.checked_add(LOG_OVERHEAD))
        else {
            return (
                batches,
                Some(corrupt(rest, format!("Invalid record batch length: {batch_length}"))),
            );
        };
        if end > rest.len() {
            // cut off at the end of the response by `max_bytes`
            break;
        }
        let (raw, tail) = rest.split_at(end);
        match RecordBatch::read(&mut Cursor::new(raw))
            .map_err(|e| e.to_string())
            .and_then(convert_batch)
        {
            Ok(batch) => batches.push(batch),
            Err(error) => return (batches, Some(corrupt(raw, error))),
        }
        rest = tail;
    }
    (batches, None)
}

fn convert_batch(batch: RecordBatch) -> Result<FetchedRecordBatch, String> {
    let last_offset = batch.base_offset + i64::from(batch.last_offset_delta);
    let (control, records) = match batch.records {
        ControlBatchOrRecords::ControlBatch(ControlBatchRecord::Abort) => {
            (Some(ControlRecordType::Abort), vec![])
        }
        ControlBatchOrRecords::ControlBatch(ControlBatchRecord::Commit) => {
            (Some(ControlRecordType::Commit), vec![])
        }
        ControlBatchOrRecords::ControlBatch(ControlBatchRecord::Unknown(t)) => {
            (Some(ControlRecordType::Unknown(t)), vec![])
        }
        ControlBatchOrRecords::Records(records) => (
            None,
            records
                .into_iter()
                .map(|record| {
                    Ok(RecordAndOffset {
                        offset: batch.base_offset + i64::from(record.offset_delta),
                        record: Record {
                            key: record.key,
                            value: record.value,
                            headers: record
                                .headers
                                .into_iter()
                                .map(|header| (header.key, header.value))
                                .collect(),
                            timestamp: timestamp(batch.first_timestamp, record.timestamp_delta)?,
                        },
                    })
                })
                .collect::<Result<_, String>>()?,
        ),
    };
    Ok(FetchedRecordBatch {
        base_offset: batch.base_offset,
        last_offset,
        producer_id: batch.producer_id,
        producer_epoch: batch.producer_epoch,
        is_transactional: batch.is_transactional,
        control,
        records,
    })
}

fn timestamp(first_timestamp: i64, delta: i64) -> Result<DateTime<Utc>, String> {
    let Some(timestamp_millis) = first_timestamp.checked_add(delta) else {
        return Err(format!(
            "Timestamp overflow (first_timestamp={first_timestamp}, delta={delta}"
        ));
    };
    match Utc.timestamp_millis_opt(timestamp_millis) {
        LocalResult::None => Err(format!("Not a valid timestamp ({timestamp_millis})")),
        LocalResult::Single(ts) => Ok(ts),
        LocalResult::Ambiguous(a, b) => Err(format!(
            "Ambiguous timestamp ({timestamp_millis}): {a} or {b}"
        )),
    }
}

fn build_list_offsets_request(partition: i32, topic: &str, at: OffsetAt) -> ListOffsetsRequest {
    let timestamp = match at {
        OffsetAt::Earliest => -2,
        OffsetAt::Latest => -1,
        OffsetAt::Timestamp(ts) => ts.timestamp_millis(),
    };

    ListOffsetsRequest {
        replica_id: NORMAL_CONSUMER,
        isolation_level: Some(IsolationLevel::ReadCommitted),
        topics: vec![ListOffsetsRequestTopic {
            name: String_(topic.to_owned()),
            partitions: vec![ListOffsetsRequestPartition {
                partition_index: Int32(partition),
                timestamp: Int64(timestamp),
                max_num_offsets: Some(Int32(1)),
            }],
        }],
    }
}

fn process_list_offsets_response(
    partition: i32,
    topic: &str,
    response: ListOffsetsResponse,
) -> Result<ListOffsetsResponsePartition> {
    let response_topic = response
        .topics
        .exactly_one()
        .map_err(Error::exactly_one_topic)?;

    if response_topic.name.0 != topic {
        return Err(Error::InvalidResponse(format!(
            "Expected data for topic '{}' but got data for topic '{}'",
            topic, response_topic.name.0
        )));
    }

    let response_partition = response_topic
        .partitions
        .exactly_one()
        .map_err(Error::exactly_one_partition)?;

    if response_partition.partition_index.0 != partition {
        return Err(Error::InvalidResponse(format!(
            "Expected data for partition {} but got data for partition {}",
            partition, response_partition.partition_index.0
        )));
    }

    match response_partition.error_code {
        Some(err) => Err(Error::ServerError {
            protocol_error: err,
            error_message: None,
            request: RequestContext::Partition(topic.to_owned(), partition),
            response: None,
            is_virtual: false,
        }),
        None => Ok(response_partition),
    }
}

fn extract_offset(partition: ListOffsetsResponsePartition) -> Result<i64> {
    match (
        partition.old_style_offsets.as_ref(),
        partition.offset.as_ref(),
    ) {
        // old style
        (Some(offsets), None) => match offsets.0.as_ref() {
            Some(offsets) => match offsets.len() {
                1 => Ok(offsets[0].0),
                n => Err(Error::InvalidResponse(format!(
                    "Expected 1 offset to be returned but got {}",
                    n
                ))),
            },
            None => Err(Error::InvalidResponse(
                "Got NULL as offset array".to_owned(),
            )),
        },
        // new style
        (None, Some(offset)) => Ok(offset.0),
        _ => unreachable!(),
    }
}

fn build_delete_records_request(
    offset: i64,
    timeout_ms: i32,
    topic: &str,
    partition: i32,
) -> DeleteRecordsRequest {
    DeleteRecordsRequest {
        topics: vec![DeleteRequestTopic {
            name: String_(topic.to_string()),
            partitions: vec![DeleteRequestPartition {
                partition_index: Int32(partition),
                offset: Int64(offset),
                tagged_fields: None,
            }],
            tagged_fields: None,
        }],
        timeout_ms: Int32(timeout_ms),
        tagged_fields: None,
    }
}

fn process_delete_records_response(
    topic: &str,
    partition: i32,
    response: DeleteRecordsResponse,
) -> Result<DeleteResponsePartition> {
    let response_topic = response
        .topics
        .exactly_one()
        .map_err(Error::exactly_one_topic)?;

    if response_topic.name.0 != topic {
        return Err(Error::InvalidResponse(format!(
            "Expected data for topic '{}' but got data for topic '{}'",
            topic, response_topic.name.0
        )));
    }

    let response_partition = response_topic
        .partitions
        .exactly_one()
        .map_err(Error::exactly_one_partition)?;

    if response_partition.partition_index.0 != partition {
        return Err(Error::InvalidResponse(format!(
            "Expected data for partition {} but got data for partition {}",
            partition, response_partition.partition_index.0
        )));
    }

    match response_partition.error {
        Some(err) => Err(Error::ServerError {
            protocol_error: err,
            error_message: None,
            request: RequestContext::Partition(topic.to_owned(), partition),
            response: None,
            is_virtual: false,
        }),
        None => Ok(response_partition),
    }
}
