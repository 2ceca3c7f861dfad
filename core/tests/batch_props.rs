//! Property tests for the batch codec: exact round trips in every codec, corruption
//! is caught (never a panic), arbitrary bytes never panic, and truncation at every
//! position is an error.
//!
//! proptest prints the minimal failing input and stores its seed under
//! `proptest-regressions/`, from where it is replayed first on the next run.
#![cfg(feature = "std")]

mod common;

use common::kafka_decoder::decode_kafka_batches;
use eddy_core::batch::header::{CRC_START, HEADER_LEN, compute_crc};
use eddy_core::batch::record::RecordRef;
use eddy_core::batch::{
    Attributes, Batch, BatchBuilder, BatchError, BatchHeader, BatchIter, BatchOptions, Compression,
    Record, RecordHeader, TimestampType,
};
use proptest::prelude::*;

const LIMIT: usize = 16 << 20;

#[derive(Debug, Clone)]
struct Input {
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<RecordHeader>,
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(vec![]),
        4 => proptest::collection::vec(any::<u8>(), 0..max),
        // Compressible runs, so codecs do real work.
        1 => (any::<u8>(), 0..max).prop_map(|(b, n)| vec![b; n]),
    ]
}

fn header() -> impl Strategy<Value = RecordHeader> {
    ("[a-zA-Z0-9_.é€-]{0,12}", proptest::option::of(bytes(24)))
        .prop_map(|(key, value)| RecordHeader { key, value })
}

fn input(base_ts: i64) -> impl Strategy<Value = Input> {
    (
        -1_000_000_000i64..1_000_000_000,
        proptest::option::of(bytes(40)),
        proptest::option::of(bytes(300)),
        proptest::collection::vec(header(), 0..4),
    )
        .prop_map(move |(dt, key, value, headers)| Input {
            timestamp: base_ts + dt,
            key,
            value,
            headers,
        })
}

fn codec() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Gzip),
        Just(Compression::Lz4),
        Just(Compression::Zstd),
    ]
}

fn options() -> impl Strategy<Value = BatchOptions> {
    (
        (0u64..=i64::MAX as u64 - (1 << 32), any::<i32>(), codec()),
        (any::<bool>(), any::<i64>(), any::<i16>(), any::<i32>()),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (base_offset, partition_leader_epoch, compression),
                (log_append, producer_id, producer_epoch, base_sequence),
                (transactional, control),
            )| BatchOptions {
                base_offset,
                partition_leader_epoch,
                compression,
                timestamp_type: if log_append {
                    TimestampType::LogAppendTime
                } else {
                    TimestampType::CreateTime
                },
                producer_id,
                producer_epoch,
                base_sequence,
                transactional,
                control,
            },
        )
}

fn batch_inputs() -> impl Strategy<Value = (BatchOptions, Vec<Input>)> {
    (options(), -4_000_000_000_000_000i64..4_000_000_000_000_000).prop_flat_map(
        |(opts, base_ts)| {
            (
                Just(opts),
                proptest::collection::vec(input(base_ts), 1..200),
            )
        },
    )
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
    assert_eq!(b.len(), inputs.len());
    b.build().unwrap()
}

fn expected_records(inputs: &[Input]) -> Vec<Record> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            attributes: 0,
            timestamp_delta: r.timestamp - inputs[0].timestamp,
            offset_delta: i as i32,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
        })
        .collect()
}

/// Any outcome is fine except a panic; used on arbitrary input.
fn decode_everything(buf: &[u8]) {
    for batch in BatchIter::new(buf) {
        let Ok(batch) = batch else { break };
        let _ = batch.records(1 << 20);
        let _ = batch.for_each_record_ref(1 << 20, |r| {
            let _ = r.headers().count();
        });
        if let Ok(iter) = batch.record_refs() {
            for r in iter {
                if r.is_err() {
                    break;
                }
            }
        }
    }
    let _ = Batch::parse(buf);
    let _ = RecordRef::decode(buf);
}

/// Wraps `section` in a header with a correct CRC, so the decoder goes past the
/// checksum and into the records (and the decompressors).
fn with_valid_crc(
    section: &[u8],
    codec_id: u8,
    record_count: u32,
    last_offset_delta: u32,
) -> Vec<u8> {
    let header = BatchHeader {
        base_offset: 5,
        batch_length: (HEADER_LEN - 12 + section.len()) as u32,
        partition_leader_epoch: 0,
        crc: 0,
        attributes: Attributes(u16::from(codec_id)),
        last_offset_delta,
        base_timestamp: 0,
        max_timestamp: 0,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        record_count,
    };
    let mut buf = vec![0u8; HEADER_LEN];
    header.write((&mut buf[..HEADER_LEN]).try_into().unwrap());
    buf.extend_from_slice(section);
    let crc = compute_crc(&buf);
    buf[CRC_START - 4..CRC_START].copy_from_slice(&crc.to_be_bytes());
    buf
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn round_trips_exactly((opts, inputs) in batch_inputs()) {
        let bytes = build(opts, &inputs);
        let batch = Batch::new_checked(&bytes).unwrap();
        let h = batch.header;
        prop_assert_eq!(h.total_len(), bytes.len() as u64);
        prop_assert_eq!(h.base_offset, opts.base_offset);
        prop_assert_eq!(h.partition_leader_epoch, opts.partition_leader_epoch);
        prop_assert_eq!(h.attributes.compression(), Ok(opts.compression));
        prop_assert_eq!(h.attributes.timestamp_type(), opts.timestamp_type);
        prop_assert_eq!(h.attributes.is_transactional(), opts.transactional);
        prop_assert_eq!(h.attributes.is_control(), opts.control);
        prop_assert_eq!(h.last_offset_delta, inputs.len() as u32 - 1);
        prop_assert_eq!(h.base_timestamp, inputs[0].timestamp);
        prop_assert_eq!(h.max_timestamp, inputs.iter().map(|r| r.timestamp).max().unwrap());
        prop_assert_eq!(h.producer_id, opts.producer_id);
        prop_assert_eq!(h.producer_epoch, opts.producer_epoch);
        prop_assert_eq!(h.base_sequence, opts.base_sequence);
        prop_assert_eq!(h.record_count, inputs.len() as u32);

        let expected = expected_records(&inputs);
        let records = batch.records(LIMIT).unwrap();
        prop_assert_eq!(&records, &expected);

        let mut via_refs = Vec::new();
        batch.for_each_record_ref(LIMIT, |r| via_refs.push(r.to_record())).unwrap();
        prop_assert_eq!(&via_refs, &expected);
        if opts.compression == Compression::None {
            let refs: Vec<Record> = batch.record_refs().unwrap().map(|r| r.unwrap().to_record()).collect();
            prop_assert_eq!(&refs, &expected);
        }

        // The independent reader sees the same records.
        let theirs = decode_kafka_batches(&bytes).unwrap();
        prop_assert_eq!(theirs.len(), 1);
        prop_assert_eq!(theirs[0].records.len(), expected.len());
        for (t, e) in theirs[0].records.iter().zip(&expected) {
            prop_assert_eq!(t.offset_delta, e.offset_delta);
            prop_assert_eq!(t.timestamp_delta, e.timestamp_delta);
            prop_assert_eq!(&t.key, &e.key);
            prop_assert_eq!(&t.value, &e.value);
        }

        // Two of them back to back iterate as two.
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        let batches: Vec<_> = BatchIter::new(&two).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(batches.len(), 2);
    }

    #[test]
    fn byte_flips_are_caught(
        (opts, inputs) in batch_inputs(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        let bytes = build(opts, &inputs);
        let mut bad = bytes.clone();
        // Bytes 0..8 (base offset) and 12..16 (leader epoch) are outside the CRC by
        // design; everything else is covered by the length check, the magic check
        // or the CRC.
        let mut covered_flip = None;
        for (at, mask) in &flips {
            let i = at.index(bad.len());
            bad[i] ^= mask;
            if (8..12).contains(&i) || i >= 16 {
                covered_flip = Some(i);
            }
        }
        if bad == bytes {
            return Ok(()); // flips cancelled out
        }
        if let Ok(batch) = Batch::new_checked(&bad) {
            // A CRC-32C catches any error burst of up to 32 bits, so one flipped byte
            // in the covered range is always caught.
            prop_assert!(
                flips.len() > 1 || covered_flip.is_none(),
                "flip at {covered_flip:?} not caught"
            );
            if covered_flip.is_none() {
                prop_assert_eq!(batch.records(LIMIT).unwrap(), expected_records(&inputs));
            }
        }
        decode_everything(&bad);
    }

    #[test]
    fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
        decode_everything(&buf);
    }

    #[test]
    fn arbitrary_records_behind_a_valid_crc_never_panic(
        section in proptest::collection::vec(any::<u8>(), 0..400),
        codec_id in 0u8..8,
        record_count in prop_oneof![0u32..5, Just(u32::MAX >> 1)],
        last_offset_delta in prop_oneof![0u32..5, Just(i32::MAX as u32)],
    ) {
        let buf = with_valid_crc(&section, codec_id, record_count, last_offset_delta);
        decode_everything(&buf);
    }

    #[test]
    fn mutated_records_behind_a_valid_crc_never_panic(
        (opts, inputs) in batch_inputs(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        // Take a real (possibly compressed) records section, damage it, re-checksum it.
        let bytes = build(opts, &inputs);
        let mut section = bytes[HEADER_LEN..].to_vec();
        for (at, v) in &flips {
            let i = at.index(section.len());
            section[i] = *v;
        }
        let keep = cut.index(section.len() + 1);
        let h = Batch::new_checked(&bytes).unwrap().header;
        for s in [&section[..], &section[..keep], &bytes[HEADER_LEN..HEADER_LEN + keep]] {
            let buf = with_valid_crc(s, opts.compression.id(), h.record_count, h.last_offset_delta);
            decode_everything(&buf);
            if s.len() < section.len() && s == &bytes[HEADER_LEN..HEADER_LEN + keep] {
                // A records section cut short is never accepted as a whole batch.
                let batch = Batch::new_checked(&buf).unwrap();
                prop_assert!(batch.records(LIMIT).is_err());
            }
        }
    }
}

#[test]
fn truncation_at_every_position_is_an_error() {
    let inputs: Vec<Input> = (0..12)
        .map(|i| Input {
            timestamp: 1_000 + i,
            key: Some(vec![i as u8; 3]),
            value: (i % 2 == 0).then(|| vec![7; 40]),
            headers: vec![RecordHeader::new("h", Some(b"v"))],
        })
        .collect();
    let mut log = Vec::new();
    let mut boundaries = vec![0usize];
    for (i, codec) in [
        Compression::None,
        Compression::Lz4,
        Compression::Zstd,
        Compression::Gzip,
    ]
    .into_iter()
    .enumerate()
    {
        let opts = BatchOptions {
            base_offset: i as u64 * 3,
            compression: codec,
            ..BatchOptions::default()
        };
        log.extend_from_slice(&build(opts, &inputs[i * 3..i * 3 + 3]));
        boundaries.push(log.len());
    }
    for cut in 0..=log.len() {
        let prefix = &log[..cut];
        let results: Vec<_> = BatchIter::new(prefix).collect();
        let whole = boundaries.iter().filter(|&&b| b <= cut && b > 0).count();
        let oks = results.iter().take_while(|r| r.is_ok()).count();
        assert_eq!(oks, whole, "cut {cut}");
        if boundaries.contains(&cut) {
            assert_eq!(results.len(), whole, "cut {cut}: clean end expected");
        } else {
            assert_eq!(results.len(), whole + 1, "cut {cut}");
            let err = results.last().unwrap().as_ref().unwrap_err();
            assert!(
                matches!(err, BatchError::Truncated { .. } | BatchError::Corrupt(_)),
                "cut {cut}: {err:?}"
            );
        }
        // A single batch cut short never parses.
        let first = &log[..cut.min(boundaries[1])];
        if first.len() < boundaries[1] {
            assert!(matches!(
                Batch::parse(first),
                Err(BatchError::Truncated { .. } | BatchError::Corrupt(_))
            ));
        }
    }
}

#[test]
fn truncated_records_behind_a_valid_crc_are_corrupt() {
    // The length field and CRC agree with the shortened bytes, so only the record
    // parser can notice.
    let inputs: Vec<Input> = (0..5)
        .map(|i| Input {
            timestamp: i,
            key: None,
            value: Some(vec![i as u8; 10]),
            headers: vec![RecordHeader::new("k", None)],
        })
        .collect();
    let bytes = build(BatchOptions::default(), &inputs);
    let h = Batch::new_checked(&bytes).unwrap().header;
    let section = &bytes[HEADER_LEN..];
    for keep in 0..section.len() {
        let buf = with_valid_crc(&section[..keep], 0, h.record_count, h.last_offset_delta);
        let batch = Batch::new_checked(&buf).unwrap();
        let err = batch.records(LIMIT).unwrap_err();
        assert!(
            matches!(err, BatchError::Corrupt(_)),
            "keep {keep}: {err:?}"
        );
    }
}

#[test]
fn decompression_bomb_is_too_large() {
    // 32 MiB of zeros in one record compresses to almost nothing.
    let zeros = vec![0u8; 32 << 20];
    for codec in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
        let mut b = BatchBuilder::new(BatchOptions {
            compression: codec,
            ..BatchOptions::default()
        });
        b.push(0, None, Some(&zeros), &[]).unwrap();
        let bytes = b.build().unwrap();
        assert!(bytes.len() < 2 << 20, "{codec:?}: {}", bytes.len());
        let batch = Batch::new_checked(&bytes).unwrap();
        let err = batch.records(1 << 20).unwrap_err();
        assert!(
            matches!(err, BatchError::TooLarge { .. }),
            "{codec:?}: {err:?}"
        );
    }
}
