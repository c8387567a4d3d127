//! Reading one partition: bounded fetches from an offset.

use std::ops::Range;
use std::time::Duration;

use rskafka::client::Client;
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::record::RecordAndOffset;

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

/// One fetch's worth of records.
#[derive(Debug)]
pub struct FetchedBatch {
    /// Records at or after the requested offset, in offset order.
    pub records: Vec<RecordAndOffset>,
    /// The partition's high watermark when the broker answered: the offset
    /// the next produced record will get.
    pub high_watermark: i64,
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

    /// Fetches records from `offset`: at most about `max_bytes` (the broker
    /// returns at least one whole batch even if it is larger), waiting up to
    /// `max_wait` for data to arrive if there is none yet.
    pub async fn fetch(
        &self,
        offset: i64,
        max_bytes: i32,
        max_wait: Duration,
    ) -> Result<FetchedBatch> {
        let bytes: Range<i32> = 1..max_bytes.max(2);
        let wait_ms = i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX);
        let (records, high_watermark) = self
            .client
            .fetch_records(offset, bytes, wait_ms)
            .await
            .map_err(|source| Error::Fetch {
                topic: self.client.topic().to_owned(),
                partition: self.client.partition(),
                offset,
                source,
            })?;
        Ok(FetchedBatch {
            records,
            high_watermark,
        })
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
