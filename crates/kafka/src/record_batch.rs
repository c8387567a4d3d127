//! Kafka record batches (message format v2), encoded byte for byte from the
//! specification, independently of rskafka's encoder.
//!
//! foodpipe's producer writes through rskafka; this module exists so that
//! what foodpipe *reads* can be tested against bytes built from the
//! specification rather than against rskafka's own encoder (which would only
//! prove that rskafka agrees with itself): transactional batches, control
//! batches (transaction markers), every codec including the Java client's
//! framed snappy, a wrong CRC, an unknown codec id, a cut-off body. The
//! integration tests also send these bytes to a broker with a raw Produce
//! request, and the decode benchmark measures decoding them.
//!
//! ```text
//! baseOffset: int64
//! batchLength: int32            bytes after this field
//! partitionLeaderEpoch: int32
//! magic: int8                   2
//! crc: uint32                   CRC-32C of everything after this field
//! attributes: int16             bits 0-2 codec, 3 timestamp type,
//!                               4 transactional, 5 control
//! lastOffsetDelta: int32
//! baseTimestamp: int64
//! maxTimestamp: int64
//! producerId: int64
//! producerEpoch: int16
//! baseSequence: int32
//! records: [Record]             int32 count, then the (compressed) records
//! ```
//!
//! # References
//! - <https://kafka.apache.org/documentation/#recordbatch>
//! - <https://kafka.apache.org/documentation/#record>
//! - <https://kafka.apache.org/documentation/#controlbatch>
//! - Kafka's `DefaultRecordBatch`, `DefaultRecord`, `EndTransactionMarker`,
//!   and xerial snappy-java's `SnappyOutputStream` (the Java client's framing)

use std::io::Write;

/// How the records of a batch are compressed (attribute bits 0-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    /// Raw (unframed) snappy, as librdkafka writes it.
    Snappy,
    /// Snappy in xerial snappy-java's framing, as the Java client writes it.
    SnappyJava,
    /// The standard LZ4 frame format with independent blocks.
    Lz4,
    Zstd,
    /// Any codec id: ids 5-7 are not defined by Kafka. The records are
    /// written uncompressed.
    Id(i16),
}

impl Codec {
    /// The id in the attributes' low three bits.
    pub fn id(self) -> i16 {
        match self {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Snappy | Codec::SnappyJava => 2,
            Codec::Lz4 => 3,
            Codec::Zstd => 4,
            Codec::Id(id) => id & 0x7,
        }
    }
}

/// One record of a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordSpec {
    pub offset_delta: i32,
    pub timestamp_delta: i64,
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone (null value).
    pub value: Option<Vec<u8>>,
    /// In order; a key may repeat.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A transaction marker's type (the control record key's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlType {
    Abort,
    Commit,
}

/// A whole batch, header fields included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSpec {
    pub base_offset: i64,
    pub partition_leader_epoch: i32,
    pub codec: Codec,
    pub transactional: bool,
    pub control: bool,
    /// Defaults to the last record's offset delta (0 with no records).
    pub last_offset_delta: Option<i32>,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    /// -1 for a producer that is neither idempotent nor transactional.
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records: Vec<RecordSpec>,
}

impl BatchSpec {
    /// A plain (non-idempotent) batch of `records` key/value pairs.
    pub fn plain(codec: Codec, records: Vec<RecordSpec>) -> Self {
        Self {
            base_offset: 0,
            partition_leader_epoch: 0,
            codec,
            transactional: false,
            control: false,
            last_offset_delta: None,
            base_timestamp: 1_700_000_000_000,
            max_timestamp: 1_700_000_000_000,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records,
        }
    }

    /// A transactional batch of producer `producer_id`.
    pub fn transactional(producer_id: i64, producer_epoch: i16, records: Vec<RecordSpec>) -> Self {
        Self {
            transactional: true,
            producer_id,
            producer_epoch,
            base_sequence: 0,
            ..Self::plain(Codec::None, records)
        }
    }

    /// The marker that ends a transaction of `producer_id`: a transactional
    /// control batch of one control record.
    pub fn marker(producer_id: i64, producer_epoch: i16, control: ControlType) -> Self {
        let kind: i16 = match control {
            ControlType::Abort => 0,
            ControlType::Commit => 1,
        };
        // key: version int16 (0), type int16.
        let mut key = Vec::with_capacity(4);
        key.extend_from_slice(&0i16.to_be_bytes());
        key.extend_from_slice(&kind.to_be_bytes());
        // value: version int16 (0), coordinatorEpoch int32.
        let mut value = Vec::with_capacity(6);
        value.extend_from_slice(&0i16.to_be_bytes());
        value.extend_from_slice(&0i32.to_be_bytes());
        Self {
            control: true,
            // Markers carry no sequence (RecordBatch.NO_SEQUENCE).
            base_sequence: -1,
            ..Self::transactional(
                producer_id,
                producer_epoch,
                vec![RecordSpec {
                    key: Some(key),
                    value: Some(value),
                    ..RecordSpec::default()
                }],
            )
        }
    }

    /// The batch's bytes as a broker stores and serves them.
    pub fn encode(&self) -> Vec<u8> {
        let mut records = Vec::new();
        for r in &self.records {
            encode_record(r, &mut records);
        }
        let compressed = compress(self.codec, &records);

        let mut attributes = self.codec.id();
        if self.transactional {
            attributes |= 1 << 4;
        }
        if self.control {
            attributes |= 1 << 5;
        }
        let last_offset_delta = self
            .last_offset_delta
            .unwrap_or_else(|| self.records.last().map_or(0, |r| r.offset_delta));

        // The CRC covers attributes to the end.
        let mut body = Vec::with_capacity(40 + compressed.len());
        body.extend_from_slice(&attributes.to_be_bytes());
        body.extend_from_slice(&last_offset_delta.to_be_bytes());
        body.extend_from_slice(&self.base_timestamp.to_be_bytes());
        body.extend_from_slice(&self.max_timestamp.to_be_bytes());
        body.extend_from_slice(&self.producer_id.to_be_bytes());
        body.extend_from_slice(&self.producer_epoch.to_be_bytes());
        body.extend_from_slice(&self.base_sequence.to_be_bytes());
        body.extend_from_slice(&(self.records.len() as i32).to_be_bytes());
        body.extend_from_slice(&compressed);

        let mut out = Vec::with_capacity(12 + 9 + body.len());
        out.extend_from_slice(&self.base_offset.to_be_bytes());
        // batchLength: partitionLeaderEpoch + magic + crc + body.
        out.extend_from_slice(&((4 + 1 + 4 + body.len()) as i32).to_be_bytes());
        out.extend_from_slice(&self.partition_leader_epoch.to_be_bytes());
        out.push(2);
        out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }
}

/// Where the CRC sits in an encoded batch (after baseOffset, batchLength,
/// partitionLeaderEpoch and magic), for tests that damage it.
pub const CRC_AT: usize = 8 + 4 + 4 + 1;

fn encode_record(r: &RecordSpec, out: &mut Vec<u8>) {
    let mut body = Vec::new();
    body.push(0); // attributes: unused
    put_varlong(r.timestamp_delta, &mut body);
    put_varlong(i64::from(r.offset_delta), &mut body);
    put_nullable(r.key.as_deref(), &mut body);
    put_nullable(r.value.as_deref(), &mut body);
    put_varlong(r.headers.len() as i64, &mut body);
    for (k, v) in &r.headers {
        put_varlong(k.len() as i64, &mut body);
        body.extend_from_slice(k.as_bytes());
        put_varlong(v.len() as i64, &mut body);
        body.extend_from_slice(v);
    }
    put_varlong(body.len() as i64, out);
    out.extend_from_slice(&body);
}

fn put_nullable(bytes: Option<&[u8]>, out: &mut Vec<u8>) {
    match bytes {
        None => put_varlong(-1, out),
        Some(b) => {
            put_varlong(b.len() as i64, out);
            out.extend_from_slice(b);
        }
    }
}

/// Zig-zag varint, as protobuf and Kafka's `ByteUtils.writeVarlong`.
fn put_varlong(value: i64, out: &mut Vec<u8>) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Compresses `records` as the producers of each codec do. In-memory
/// writers cannot fail, so the encoders' errors are impossible here.
fn compress(codec: Codec, records: &[u8]) -> Vec<u8> {
    match codec {
        Codec::None | Codec::Id(_) => records.to_vec(),
        Codec::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(records).expect("in-memory gzip");
            e.finish().expect("in-memory gzip")
        }
        Codec::Snappy => snap::raw::Encoder::new()
            .compress_vec(records)
            .expect("in-memory snappy"),
        Codec::SnappyJava => {
            // xerial framing: magic, version 1, compatible version 1, then
            // (int32 length, raw snappy block) chunks of up to 32 KiB input.
            let mut out = vec![0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            for chunk in records.chunks(32 * 1024) {
                let block = snap::raw::Encoder::new()
                    .compress_vec(chunk)
                    .expect("in-memory snappy");
                out.extend_from_slice(&(block.len() as i32).to_be_bytes());
                out.extend_from_slice(&block);
            }
            out
        }
        Codec::Lz4 => {
            use lz4_flex::frame::{BlockMode, FrameEncoder, FrameInfo};
            let mut e = FrameEncoder::with_frame_info(
                FrameInfo::new().block_mode(BlockMode::Independent),
                Vec::new(),
            );
            e.write_all(records).expect("in-memory lz4");
            e.finish().expect("in-memory lz4")
        }
        Codec::Zstd => {
            ruzstd::encoding::compress_to_vec(records, ruzstd::encoding::CompressionLevel::Fastest)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Varints match Kafka's zig-zag encoding on known answers.
    #[test]
    fn varlong_known_answers() {
        let enc = |v| {
            let mut out = Vec::new();
            put_varlong(v, &mut out);
            out
        };
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(-1), [0x01]);
        assert_eq!(enc(1), [0x02]);
        assert_eq!(enc(63), [0x7e]);
        assert_eq!(enc(-64), [0x7f]);
        assert_eq!(enc(64), [0x80, 0x01]);
        assert_eq!(enc(300), [0xd8, 0x04]);
    }

    /// An uncompressed one-record batch is laid out exactly as the spec says.
    #[test]
    fn header_layout() {
        let batch = BatchSpec {
            base_offset: 42,
            ..BatchSpec::plain(
                Codec::None,
                vec![RecordSpec {
                    key: Some(b"k".to_vec()),
                    value: Some(b"v".to_vec()),
                    ..RecordSpec::default()
                }],
            )
        }
        .encode();
        assert_eq!(&batch[0..8], &42i64.to_be_bytes());
        let len = i32::from_be_bytes(batch[8..12].try_into().expect("4 bytes"));
        assert_eq!(len as usize, batch.len() - 12);
        assert_eq!(batch[16], 2, "magic");
        let crc = u32::from_be_bytes(batch[CRC_AT..CRC_AT + 4].try_into().expect("4 bytes"));
        assert_eq!(crc, crc32c::crc32c(&batch[CRC_AT + 4..]));
        // record: length 8, attributes, ts delta 0, offset delta 0, key "k",
        // value "v", no headers.
        assert_eq!(
            &batch[batch.len() - 9..],
            &[16, 0, 0, 0, 2, b'k', 2, b'v', 0][..]
        );
    }
}
