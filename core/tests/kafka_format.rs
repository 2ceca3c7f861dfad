//! Checks Eddy's batch codec against Kafka's documented RecordBatch v2 format, using
//! the independent reader in `common::kafka_decoder` (its own varints, CRC-32C and
//! parser; only the compression crates are shared), a batch assembled by hand from
//! the spec, and batches written by another Kafka client (Sarama's test vectors).
#![cfg(feature = "std")]

mod common;

use common::kafka_decoder::{
    KafkaBatch, check_contiguous, crc32c, decode_kafka_batches, decode_kafka_log,
};
use eddy_core::batch::header::set_base_offset;
use eddy_core::batch::{
    Batch, BatchBuilder, BatchIter, BatchOptions, Compression, Record, RecordHeader, TimestampType,
};

const LIMIT: usize = 16 << 20;

#[test]
fn crc32c_check_value() {
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(b""), 0);
    // The library's CRC agrees (the reader's own is table-free and bitwise).
    assert_eq!(
        eddy_core::batch::header::CRC32C.checksum(b"123456789"),
        0xE306_9283
    );
    assert_eq!(
        eddy_core::batch::header::crc32c_of(b"123456789"),
        0xE306_9283
    );
    // The accelerated CRC agrees with the bitwise one at every length and
    // alignment the instructions treat differently (tails, 8-byte words,
    // the large-block path).
    let bytes: Vec<u8> = (0..70_016u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for len in (0..80).chain([255, 256, 4095, 4096, 8193, 65_536, 69_999]) {
        for start in [0usize, 1, 3, 7] {
            let slice = &bytes[start..start + len];
            assert_eq!(
                eddy_core::batch::header::crc32c_of(slice),
                crc32c(slice),
                "length {len}, offset {start}"
            );
        }
    }
}

/// A batch assembled byte by byte from the spec. Its CRC was computed with the
/// bitwise CRC-32C of the attributes..end bytes (and is re-checked below).
#[rustfmt::skip]
const HAND_ASSEMBLED: [u8; 86] = [
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, // baseOffset 42
    0x00, 0x00, 0x00, 0x4a,                         // batchLength 74 = 49 + 25 bytes of records
    0x00, 0x00, 0x00, 0x03,                         // partitionLeaderEpoch 3
    0x02,                                           // magic 2
    0x8e, 0x68, 0xc5, 0xa1,                         // crc (CRC-32C of the rest)
    0x00, 0x00,                                     // attributes: no compression, CreateTime
    0x00, 0x00, 0x00, 0x01,                         // lastOffsetDelta 1
    0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, // baseTimestamp 1_700_000_000_000
    0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x05, // maxTimestamp 1_700_000_000_005
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, // producerId 7
    0x00, 0x01,                                     // producerEpoch 1
    0x00, 0x00, 0x00, 0x64,                         // baseSequence 100
    0x00, 0x00, 0x00, 0x02,                         // records count 2
    // record 0
    0x12,                                           // length 9 (zigzag 18)
    0x00,                                           // attributes
    0x00,                                           // timestampDelta 0
    0x00,                                           // offsetDelta 0
    0x02, b'k',                                     // keyLength 1, "k"
    0x04, b'v', b'1',                               // valueLength 2, "v1"
    0x00,                                           // headers count 0
    // record 1
    0x1c,                                           // length 14 (zigzag 28)
    0x00,                                           // attributes
    0x0a,                                           // timestampDelta 5 (zigzag 10)
    0x02,                                           // offsetDelta 1 (zigzag 2)
    0x01,                                           // keyLength -1: null key
    0x0a, b'v', b'a', b'l', b'u', b'e',             // valueLength 5, "value"
    0x02,                                           // headers count 1
    0x02, b'h',                                     // headerKeyLength 1, "h"
    0x01,                                           // headerValueLength -1: null
];

fn hand_assembled_options() -> BatchOptions {
    BatchOptions {
        base_offset: 42,
        partition_leader_epoch: 3,
        producer_id: 7,
        producer_epoch: 1,
        base_sequence: 100,
        ..BatchOptions::default()
    }
}

#[test]
fn hand_assembled_vector_is_self_consistent() {
    assert_eq!(crc32c(&HAND_ASSEMBLED[21..]), 0x8e68_c5a1);
    let batches = decode_kafka_batches(&HAND_ASSEMBLED).unwrap();
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    assert_eq!(b.base_offset, 42);
    assert_eq!(b.record_count, 2);
    assert_eq!(b.records[1].headers, vec![("h".to_string(), None)]);
}

#[test]
fn core_decoder_accepts_the_hand_assembled_vector() {
    let batch = Batch::new_checked(&HAND_ASSEMBLED).unwrap();
    let h = batch.header;
    assert_eq!(h.base_offset, 42);
    assert_eq!(h.batch_length, 74);
    assert_eq!(h.partition_leader_epoch, 3);
    assert_eq!(h.crc, 0x8e68_c5a1);
    assert_eq!(h.attributes.compression(), Ok(Compression::None));
    assert_eq!(h.attributes.timestamp_type(), TimestampType::CreateTime);
    assert_eq!(h.last_offset_delta, 1);
    assert_eq!(h.base_timestamp, 1_700_000_000_000);
    assert_eq!(h.max_timestamp, 1_700_000_000_005);
    assert_eq!(h.producer_id, 7);
    assert_eq!(h.producer_epoch, 1);
    assert_eq!(h.base_sequence, 100);
    assert_eq!(h.record_count, 2);
    let records = batch.records(LIMIT).unwrap();
    assert_eq!(
        records,
        vec![
            Record {
                attributes: 0,
                timestamp_delta: 0,
                offset_delta: 0,
                key: Some(b"k".to_vec()),
                value: Some(b"v1".to_vec()),
                headers: vec![],
            },
            Record {
                attributes: 0,
                timestamp_delta: 5,
                offset_delta: 1,
                key: None,
                value: Some(b"value".to_vec()),
                headers: vec![RecordHeader {
                    key: "h".to_string(),
                    value: None
                }],
            },
        ]
    );
}

#[test]
fn builder_reproduces_the_hand_assembled_vector_byte_for_byte() {
    let mut b = BatchBuilder::new(hand_assembled_options());
    b.push(1_700_000_000_000, Some(b"k"), Some(b"v1"), &[])
        .unwrap();
    b.push(
        1_700_000_000_005,
        None,
        Some(b"value"),
        &[RecordHeader::new("h", None)],
    )
    .unwrap();
    assert_eq!(b.build().unwrap(), HAND_ASSEMBLED);
}

/// Test vectors from Sarama (IBM/sarama, `record_test.go`, MIT licence): v2 batches
/// written by a different Kafka client, one record with key 01 02 03 04, value
/// 05 06 07, timestamp delta 5 and header 08 09 0a = 0b 0c.
mod sarama {
    #[rustfmt::skip]
    pub const UNCOMPRESSED: &[u8] = &[
        0, 0, 0, 0, 0, 0, 0, 0, // First Offset
        0, 0, 0, 70, // Length
        0, 0, 0, 0, // Partition Leader Epoch
        2,                // Version
        84, 121, 97, 253, // CRC
        0, 0, // Attributes
        0, 0, 0, 0, // Last Offset Delta
        0, 0, 1, 88, 141, 205, 89, 56, // First Timestamp
        0, 0, 0, 0, 0, 0, 0, 0, // Max Timestamp
        0, 0, 0, 0, 0, 0, 0, 0, // Producer ID
        0, 0, // Producer Epoch
        0, 0, 0, 0, // First Sequence
        0, 0, 0, 1, // Number of Records
        40, 0, 10, 0, 8, 1, 2, 3, 4, 6, 5, 6, 7, 2, 6, 8, 9, 10, 4, 11, 12,
    ];

    #[rustfmt::skip]
    pub const GZIP: &[u8] = &[
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 95, 0, 0, 0, 0, 2,
        231, 74, 206, 165, // CRC
        0, 1, // Attributes: gzip
        0, 0, 0, 0, 0, 0, 1, 88, 141, 205, 89, 56, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        31, 139, 8, 0, 0, 9, 110, 136, 0, 255, 0, 21, 0, 234, 255, 40, 0, 10, 0, 8, 1, 2,
        3, 4, 6, 5, 6, 7, 2, 6, 8, 9, 10, 4, 11, 12, 3, 0, 173, 201, 88, 103, 21, 0, 0, 0,
    ];

    #[rustfmt::skip]
    pub const LZ4: &[u8] = &[
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 89, 0, 0, 0, 0, 2,
        169, 74, 119, 197, // CRC
        0, 3, // Attributes: lz4
        0, 0, 0, 0, 0, 0, 1, 88, 141, 205, 89, 56, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        4, 34, 77, 24, 100, 112, 185, 21, 0, 0, 128, 40, 0, 10, 0, 8, 1, 2, 3, 4, 6, 5, 6, 7, 2,
        6, 8, 9, 10, 4, 11, 12, 0, 0, 0, 0, 12, 59, 239, 146,
    ];

    /// A control batch with no records.
    #[rustfmt::skip]
    pub const EMPTY_CONTROL: &[u8] = &[
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 49, 0, 0, 0, 0, 2,
        81, 46, 67, 217, // CRC
        0, 32, // Attributes: control
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
}

#[test]
fn core_decoder_reads_another_clients_batches() {
    let expected = Record {
        attributes: 0,
        timestamp_delta: 5,
        offset_delta: 0,
        key: Some(vec![1, 2, 3, 4]),
        value: Some(vec![5, 6, 7]),
        headers: vec![RecordHeader::new("\u{8}\u{9}\u{a}", Some(&[11, 12]))],
    };
    for (name, bytes, codec) in [
        ("uncompressed", sarama::UNCOMPRESSED, Compression::None),
        ("gzip", sarama::GZIP, Compression::Gzip),
        ("lz4", sarama::LZ4, Compression::Lz4),
    ] {
        let batch = Batch::new_checked(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(batch.compression(), Ok(codec), "{name}");
        assert_eq!(batch.header.base_timestamp, 1_479_847_795_000, "{name}");
        assert_eq!(
            batch.records(LIMIT).unwrap(),
            vec![expected.clone()],
            "{name}"
        );
        // The independent reader agrees.
        let theirs = decode_kafka_batches(bytes).unwrap();
        assert_eq!(theirs[0].records[0].value, expected.value, "{name}");
    }
    let control = Batch::new_checked(sarama::EMPTY_CONTROL).unwrap();
    assert!(control.header.attributes.is_control());
    assert_eq!(control.records(LIMIT).unwrap(), vec![]);
    assert_eq!(decode_kafka_log(sarama::EMPTY_CONTROL).unwrap(), vec![]);
}

struct Input {
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<RecordHeader>,
}

fn inputs() -> Vec<Input> {
    (0..50)
        .map(|i: i64| Input {
            timestamp: 1_700_000_000_000 + (i * 37) % 23 - 11,
            key: (i % 3 != 0).then(|| format!("key-{i}").into_bytes()),
            value: match i % 5 {
                0 => None,
                1 => Some(vec![]),
                _ => Some(format!("value {i} ").repeat(i as usize).into_bytes()),
            },
            headers: (0..i % 4)
                .map(|h| {
                    RecordHeader::new(
                        &format!("h{h}"),
                        (h % 2 == 0).then_some(&b"header value"[..]),
                    )
                })
                .collect(),
        })
        .collect()
}

fn build(opts: BatchOptions, inputs: &[Input]) -> Vec<u8> {
    let mut b = BatchBuilder::new(opts);
    for r in inputs {
        b.push(
            r.timestamp,
            r.key.as_deref(),
            r.value.as_deref(),
            &r.headers,
        )
        .unwrap();
    }
    b.build().unwrap()
}

fn check_fields(theirs: &KafkaBatch, opts: &BatchOptions, inputs: &[Input], codec: i16) {
    assert_eq!(theirs.base_offset, opts.base_offset as i64);
    assert_eq!(theirs.partition_leader_epoch, opts.partition_leader_epoch);
    assert_eq!(theirs.magic, 2);
    assert_eq!(theirs.compression(), codec);
    assert_eq!(
        theirs.is_log_append_time(),
        opts.timestamp_type == TimestampType::LogAppendTime
    );
    assert_eq!(theirs.is_transactional(), opts.transactional);
    assert_eq!(theirs.is_control(), opts.control);
    assert_eq!(theirs.attributes & !0x3f, 0, "unused attribute bits set");
    assert_eq!(theirs.last_offset_delta, inputs.len() as i32 - 1);
    assert_eq!(theirs.base_timestamp, inputs[0].timestamp);
    assert_eq!(
        theirs.max_timestamp,
        inputs.iter().map(|r| r.timestamp).max().unwrap()
    );
    assert_eq!(theirs.producer_id, opts.producer_id);
    assert_eq!(theirs.producer_epoch, opts.producer_epoch);
    assert_eq!(theirs.base_sequence, opts.base_sequence);
    assert_eq!(theirs.record_count, inputs.len() as i32);
    assert_eq!(theirs.records.len(), inputs.len());
    for (i, (r, input)) in theirs.records.iter().zip(inputs).enumerate() {
        assert_eq!(r.attributes, 0);
        assert_eq!(r.offset_delta, i as i32);
        assert_eq!(theirs.offset_of(r), opts.base_offset as i64 + i as i64);
        assert_eq!(r.timestamp_delta, input.timestamp - inputs[0].timestamp);
        assert_eq!(r.key, input.key);
        assert_eq!(r.value, input.value);
        let headers: Vec<_> = input
            .headers
            .iter()
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect();
        assert_eq!(r.headers, headers);
    }
}

#[test]
fn independent_reader_reads_built_batches_in_every_codec() {
    let inputs = inputs();
    let base = BatchOptions {
        base_offset: 1_000_000,
        partition_leader_epoch: 12,
        producer_id: 4242,
        producer_epoch: 3,
        base_sequence: 77,
        transactional: true,
        ..BatchOptions::default()
    };
    let uncompressed = build(base, &inputs);
    let records_section = &uncompressed[61..];
    for (codec, id) in [
        (Compression::None, 0),
        (Compression::Gzip, 1),
        (Compression::Lz4, 3),
        (Compression::Zstd, 4),
    ] {
        let opts = BatchOptions {
            compression: codec,
            ..base
        };
        let bytes = build(opts, &inputs);
        let batches = decode_kafka_batches(&bytes).unwrap_or_else(|e| panic!("{codec:?}: {e}"));
        assert_eq!(batches.len(), 1);
        check_fields(&batches[0], &opts, &inputs, id);
        // The compressed section is exactly the uncompressed records section.
        let section = &bytes[61..];
        let plain = match codec {
            Compression::None => section.to_vec(),
            Compression::Gzip => read(flate2::read::GzDecoder::new(section)),
            Compression::Lz4 => read(lz4_flex::frame::FrameDecoder::new(section)),
            Compression::Zstd => zstd::stream::decode_all(section).unwrap(),
            _ => unreachable!(),
        };
        assert_eq!(plain, records_section, "{codec:?}");
        // Only the compression bits differ in the header's checksummed fields.
        assert_eq!(bytes[23..61], uncompressed[23..61], "{codec:?}");
    }
}

fn read(mut r: impl std::io::Read) -> Vec<u8> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    out
}

#[test]
fn flags_and_log_append_time_are_where_the_spec_puts_them() {
    let inputs = inputs();
    let opts = BatchOptions {
        timestamp_type: TimestampType::LogAppendTime,
        control: true,
        ..BatchOptions::default()
    };
    let bytes = build(opts, &inputs[..3]);
    let theirs = &decode_kafka_batches(&bytes).unwrap()[0];
    check_fields(theirs, &opts, &inputs[..3], 0);
    assert_eq!(theirs.attributes, 0x08 | 0x20);
    // Kafka reports the batch's max timestamp for every LogAppendTime record.
    let log = decode_kafka_log(&bytes).unwrap();
    assert!(log.iter().all(|e| e.1 == theirs.max_timestamp));
}

#[test]
fn gaps_from_compaction_are_encoded_as_kafka_expects() {
    let mut b = BatchBuilder::new(BatchOptions {
        base_offset: 10,
        ..BatchOptions::default()
    });
    for (delta, ts) in [(0u32, 5i64), (3, 6), (9, 4)] {
        b.push_with_offset_delta(delta, ts, Some(b"k"), None, &[])
            .unwrap();
    }
    let bytes = b.build().unwrap();
    let theirs = &decode_kafka_batches(&bytes).unwrap()[0];
    assert_eq!(theirs.last_offset_delta, 9);
    assert_eq!(theirs.record_count, 3);
    assert_eq!(theirs.max_timestamp, 6);
    let offsets: Vec<u64> = decode_kafka_log(&bytes)
        .unwrap()
        .iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(offsets, vec![10, 13, 19]);
    assert!(check_contiguous(&decode_kafka_log(&bytes).unwrap()).is_err());
}

#[test]
fn a_log_of_batches_reads_as_contiguous_offsets() {
    let inputs = inputs();
    let mut log = Vec::new();
    let mut next = 0u64;
    for (i, codec) in [
        Compression::None,
        Compression::Lz4,
        Compression::Zstd,
        Compression::Gzip,
    ]
    .into_iter()
    .enumerate()
    {
        let chunk = &inputs[i * 10..i * 10 + 10];
        let mut bytes = build(
            BatchOptions {
                compression: codec,
                ..BatchOptions::default()
            },
            chunk,
        );
        // Offsets are assigned on append, outside the CRC, as the log does.
        set_base_offset(&mut bytes, next);
        next += chunk.len() as u64;
        log.extend_from_slice(&bytes);
    }
    let entries = decode_kafka_log(&log).unwrap();
    assert_eq!(entries.len(), 40);
    check_contiguous(&entries).unwrap();
    assert_eq!(entries[0].0, 0);
    for (e, input) in entries.iter().zip(&inputs) {
        assert_eq!(e.1, input.timestamp);
        assert_eq!(e.2, input.key);
        assert_eq!(e.3, input.value);
    }
    // The core iterator agrees batch by batch.
    let mut seen = 0;
    for batch in BatchIter::new(&log) {
        let batch = batch.unwrap();
        for r in batch.records(LIMIT).unwrap() {
            let e = &entries[seen];
            assert_eq!(batch.record_offset(r.offset_delta), e.0);
            assert_eq!(batch.record_timestamp(r.timestamp_delta), e.1);
            assert_eq!(r.key, e.2);
            assert_eq!(r.value, e.3);
            seen += 1;
        }
    }
    assert_eq!(seen, 40);
}

#[test]
fn independent_reader_rejects_what_it_should() {
    let mut bytes = HAND_ASSEMBLED.to_vec();
    bytes[70] ^= 0x01;
    let e = decode_kafka_log(&bytes).unwrap_err();
    assert!(e.contains("CRC"), "{e}");
    let e = decode_kafka_log(&HAND_ASSEMBLED[..80]).unwrap_err();
    assert!(e.contains("remain"), "{e}");
}
