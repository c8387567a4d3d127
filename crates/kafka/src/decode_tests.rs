//! The fetch path's decoder (the patched rskafka's `decode_record_batches`
//! plus [`read_committed`]) on record batches built byte for byte from
//! Kafka's specification by [`crate::record_batch`], not by rskafka.

use crate::record_batch::{BatchSpec, CRC_AT, Codec, ControlType, RecordSpec};
use crate::{ControlRecordType, FetchDetailed, decode_record_batches, read_committed};

const CODECS: [Codec; 6] = [
    Codec::None,
    Codec::Gzip,
    Codec::Snappy,
    Codec::SnappyJava,
    Codec::Lz4,
    Codec::Zstd,
];

/// `n` records with keys, JSON-ish values and two headers each; record 1
/// has a null key and record 2 a null value (a tombstone).
fn records(n: i32) -> Vec<RecordSpec> {
    (0..n)
        .map(|i| RecordSpec {
            offset_delta: i,
            timestamp_delta: i64::from(i) * 3,
            key: (i != 1).then(|| format!("customer-{i}").into_bytes()),
            value: (i != 2).then(|| {
                format!(
                    r#"{{"schema_version":1,"event_type":"order_placed","n":{i},"pad":"{}"}}"#,
                    "x".repeat(i as usize % 50)
                )
                .into_bytes()
            }),
            headers: vec![
                ("trace-id".to_owned(), format!("t{i}").into_bytes()),
                ("source".to_owned(), b"test".to_vec()),
            ],
        })
        .collect()
}

fn at(base_offset: i64, batch: BatchSpec) -> BatchSpec {
    BatchSpec {
        base_offset,
        ..batch
    }
}

fn answer(bytes: &[u8]) -> FetchDetailed {
    let (batches, corrupt) = decode_record_batches(bytes);
    // The broker's high watermark: past everything in the answer.
    let high_watermark = 1_000_000;
    FetchDetailed {
        batches,
        corrupt,
        high_watermark,
        last_stable_offset: None,
        aborted_transactions: vec![],
    }
}

/// Every codec (snappy both raw and in the Java client's framing) decodes to the same keys, values, headers, offsets and timestamps.
#[test]
fn every_codec_decodes_the_same_records() {
    let spec = records(200);
    for codec in CODECS {
        let bytes = at(1000, BatchSpec::plain(codec, spec.clone())).encode();
        let (batches, corrupt) = decode_record_batches(&bytes);
        assert!(corrupt.is_none(), "{codec:?}: {corrupt:?}");
        assert_eq!(batches.len(), 1, "{codec:?}");
        let b = &batches[0];
        assert_eq!((b.base_offset, b.last_offset), (1000, 1199), "{codec:?}");
        assert_eq!(b.records.len(), 200);
        for (r, s) in b.records.iter().zip(&spec) {
            assert_eq!(r.offset, 1000 + i64::from(s.offset_delta));
            assert_eq!(r.record.key, s.key, "{codec:?}");
            assert_eq!(r.record.value, s.value, "{codec:?}");
            assert_eq!(
                crate::record_headers(&r.record),
                vec![
                    ("source".to_owned(), b"test".to_vec()),
                    (
                        "trace-id".to_owned(),
                        format!("t{}", s.offset_delta).into_bytes()
                    ),
                ]
            );
            assert_eq!(
                r.record.timestamp.timestamp_millis(),
                1_700_000_000_000 + s.timestamp_delta
            );
        }
    }
}

/// Where the records start in a batch: after the 61 bytes of header.
const RECORDS_AT: usize = 61;

/// Replaces the records of an uncompressed batch by `compressed` (of codec
/// `id`), fixing attributes, batchLength and CRC.
fn recompress(plain: &[u8], id: i16, compressed: &[u8]) -> Vec<u8> {
    let mut out = plain[..RECORDS_AT].to_vec();
    out.extend_from_slice(compressed);
    let attributes = i16::from_be_bytes([out[21], out[22]]) | id;
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    let len = (out.len() - 12) as i32;
    out[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_AT + 4..]);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

/// A zstd body of two concatenated frames decodes (the zstd crate that rskafka used before accepts them, so ruzstd must too).
#[test]
fn zstd_body_of_two_frames_decodes() {
    use ruzstd::encoding::{CompressionLevel, compress_to_vec};
    let plain = BatchSpec::plain(Codec::None, records(10)).encode();
    let (head, tail) = plain[RECORDS_AT..].split_at(100);
    let two = [
        compress_to_vec(head, CompressionLevel::Fastest),
        compress_to_vec(tail, CompressionLevel::Fastest),
    ]
    .concat();
    let (batches, corrupt) = decode_record_batches(&recompress(&plain, 4, &two));
    assert!(corrupt.is_none(), "{corrupt:?}");
    assert_eq!(batches[0].records.len(), 10);
}

/// An lz4 body in a frame with content checksum and linked blocks (options other encoders set) decodes.
#[test]
fn lz4_frame_options_of_other_encoders_decode() {
    use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
    use std::io::Write;
    let plain = BatchSpec::plain(Codec::None, records(300)).encode();
    let mut e = FrameEncoder::with_frame_info(
        FrameInfo::new()
            .block_size(BlockSize::Max64KB)
            .block_mode(BlockMode::Linked)
            .content_checksum(true),
        Vec::new(),
    );
    e.write_all(&plain[RECORDS_AT..]).expect("in memory");
    let lz4 = e.finish().expect("in memory");
    let (batches, corrupt) = decode_record_batches(&recompress(&plain, 3, &lz4));
    assert!(corrupt.is_none(), "{corrupt:?}");
    assert_eq!(batches[0].records.len(), 300);
}

/// Several batches of mixed codecs in one answer come back in order, as whole batches.
#[test]
fn mixed_batches_in_one_answer() {
    let mut bytes = Vec::new();
    let mut base = 0;
    for codec in CODECS {
        bytes.extend(at(base, BatchSpec::plain(codec, records(5))).encode());
        base += 5;
    }
    let got = read_committed(0, answer(&bytes));
    assert_eq!(got.records.len(), 30);
    assert!(
        got.records
            .windows(2)
            .all(|w| w[1].offset == w[0].offset + 1)
    );
    assert_eq!(got.next_offset, 30);
}

/// COMMIT and ABORT control batches decode as markers (the control record's type is read from its key), carry no records, and move the position.
#[test]
fn control_batches_decode_as_markers() {
    let mut bytes = at(0, BatchSpec::transactional(11, 0, records(2))).encode();
    bytes.extend(at(2, BatchSpec::marker(11, 0, ControlType::Commit)).encode());
    bytes.extend(at(3, BatchSpec::transactional(12, 0, records(2))).encode());
    bytes.extend(at(5, BatchSpec::marker(12, 0, ControlType::Abort)).encode());
    let (batches, corrupt) = decode_record_batches(&bytes);
    assert!(corrupt.is_none(), "{corrupt:?}");
    let kinds: Vec<_> = batches
        .iter()
        .map(|b| (b.base_offset, b.producer_id, b.is_transactional, b.control))
        .collect();
    assert_eq!(
        kinds,
        [
            (0, 11, true, None),
            (2, 11, true, Some(ControlRecordType::Commit)),
            (3, 12, true, None),
            (5, 12, true, Some(ControlRecordType::Abort)),
        ]
    );
    assert!(batches[1].records.is_empty() && batches[3].records.is_empty());

    let mut a = answer(&bytes);
    a.aborted_transactions = vec![crate::AbortedTransaction {
        producer_id: 12,
        first_offset: 3,
    }];
    let got = read_committed(0, a);
    assert_eq!(
        got.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        [0, 1]
    );
    assert_eq!(
        (got.control_records, got.aborted_records, got.next_offset),
        (2, 2, 6)
    );
}

/// A compressed control batch (librdkafka compresses nothing it does not write, but a broker may) still decodes.
#[test]
fn compressed_control_batch_decodes() {
    for codec in CODECS {
        let bytes = BatchSpec {
            codec,
            ..BatchSpec::marker(3, 1, ControlType::Abort)
        }
        .encode();
        let (batches, corrupt) = decode_record_batches(&bytes);
        assert!(corrupt.is_none(), "{codec:?}: {corrupt:?}");
        assert_eq!(batches[0].control, Some(ControlRecordType::Abort));
    }
}

/// A wrong CRC: the batches before it are returned, and it is reported with its offsets, its raw bytes and the cause.
#[test]
fn bad_crc_is_reported_with_offsets_and_raw_bytes() {
    let good = at(0, BatchSpec::plain(Codec::Lz4, records(4))).encode();
    let mut bad = at(4, BatchSpec::plain(Codec::Gzip, records(3))).encode();
    bad[CRC_AT] ^= 0xff;
    let after = at(7, BatchSpec::plain(Codec::None, records(2))).encode();
    let bytes = [good.clone(), bad.clone(), after].concat();

    let got = read_committed(0, answer(&bytes));
    assert_eq!(got.records.len(), 4);
    assert_eq!(got.next_offset, 4);
    let c = got.corrupt.expect("corrupt batch reported");
    assert_eq!((c.first_offset, c.last_offset), (4, Some(6)));
    assert_eq!(c.raw, bad);
    assert!(c.error.contains("CRC"), "{}", c.error);
}

/// Codec id 5 is no Kafka codec: reported as corrupt, not a failed fetch.
#[test]
fn unknown_codec_is_reported() {
    let bytes = [
        at(0, BatchSpec::plain(Codec::None, records(2))).encode(),
        at(2, BatchSpec::plain(Codec::Id(5), records(2))).encode(),
    ]
    .concat();
    let got = read_committed(0, answer(&bytes));
    assert_eq!(got.records.len(), 2);
    let c = got.corrupt.expect("corrupt");
    assert_eq!((c.first_offset, c.last_offset), (2, Some(3)));
    assert!(c.error.contains("compression"), "{}", c.error);
}

/// A body that ends before its records do (the length and CRC agree, the records are cut) is corrupt, not "cut off by max_bytes".
#[test]
fn truncated_body_is_reported() {
    for codec in [
        Codec::None,
        Codec::Gzip,
        Codec::Lz4,
        Codec::Zstd,
        Codec::Snappy,
    ] {
        let full = at(10, BatchSpec::plain(codec, records(20))).encode();
        // Cut the body and fix up batchLength and CRC so only the records are short.
        let mut cut = full[..full.len() - 25].to_vec();
        let len = (cut.len() - 12) as i32;
        cut[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&cut[CRC_AT + 4..]);
        cut[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());

        let got = read_committed(10, answer(&cut));
        let c = got.corrupt.expect("corrupt");
        assert_eq!((c.first_offset, c.last_offset), (10, Some(29)), "{codec:?}");
        assert_eq!(c.raw, cut);
        assert_eq!(got.next_offset, 10);
    }
}

/// A batch cut off at the end of the answer (max_bytes) is silently left for the next fetch.
#[test]
fn batch_cut_at_the_end_of_the_answer_is_dropped() {
    let first = at(0, BatchSpec::plain(Codec::None, records(3))).encode();
    let second = at(3, BatchSpec::plain(Codec::None, records(3))).encode();
    for cut in [1, 11, 12, 30, second.len() - 1] {
        let bytes = [first.clone(), second[..cut].to_vec()].concat();
        let got = read_committed(0, answer(&bytes));
        assert!(got.corrupt.is_none(), "cut at {cut}");
        assert_eq!(got.records.len(), 3);
        assert_eq!(got.next_offset, 3);
    }
}

/// A negative batch length cannot be a cut-off batch: corrupt, with the rest of the answer as raw bytes.
#[test]
fn negative_batch_length_is_corrupt() {
    let mut bytes = at(0, BatchSpec::plain(Codec::None, records(1))).encode();
    bytes[8..12].copy_from_slice(&(-5i32).to_be_bytes());
    let got = read_committed(0, answer(&bytes));
    let c = got.corrupt.expect("corrupt");
    assert_eq!(c.first_offset, 0);
    assert_eq!(c.raw, bytes);
}

/// An idempotent (non-transactional) batch with a producer id is plain data.
#[test]
fn idempotent_batch_is_plain_data() {
    let bytes = BatchSpec {
        producer_id: 77,
        producer_epoch: 0,
        base_sequence: 0,
        ..BatchSpec::plain(Codec::Zstd, records(3))
    }
    .encode();
    let got = read_committed(0, answer(&bytes));
    assert_eq!(got.records.len(), 3);
}
