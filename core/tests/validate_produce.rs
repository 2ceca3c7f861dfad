//! `validate_produce` walks every record of every produced batch, as Kafka's
//! `LogValidator` does: batches whose header promises records their bytes do not
//! hold, or whose records do not parse, are refused before they take offsets;
//! compressed batches are decompressed within a bound.
#![cfg(feature = "std")]

mod util;

use std::path::Path;

use eddy_core::batch::compression;
use eddy_core::batch::header::{CRC_START, HEADER_LEN, LOG_OVERHEAD, compute_crc};
use eddy_core::batch::{
    BatchBuilder, BatchError, BatchHeader, BatchOptions, Compression, Record, RecordHeader,
    RecordIter, check_record_section,
};
use eddy_core::compaction::DECOMPRESSED_BATCH_BYTES_MAX;
use eddy_core::log::{
    LogError, PRODUCE_EXPANSION_MAX, PartitionLog, produce_decompressed_bytes_max, validate_produce,
};
use eddy_core::sim::SimStorage;
use proptest::prelude::*;
use util::{config, sim};

/// Topic default `max.message.bytes`.
const MAX: u64 = 1_048_588;
const CODECS: [Compression; 4] = [
    Compression::None,
    Compression::Gzip,
    Compression::Lz4,
    Compression::Zstd,
];

/// A batch of `n` records with keys, values and a header each.
fn valid(n: usize, codec: Compression) -> Vec<u8> {
    let mut b = BatchBuilder::new(BatchOptions {
        compression: codec,
        ..BatchOptions::default()
    });
    for i in 0..n {
        let key = format!("key-{}", i % 7);
        let value = format!("{{\"reading\": {i}, \"unit\": \"C\"}}");
        let headers = [RecordHeader::new("source", Some(b"line-3"))];
        b.push(
            1_700_000_000_000 + i as i64,
            Some(key.as_bytes()),
            Some(value.as_bytes()),
            &headers,
        )
        .expect("push");
    }
    b.build().expect("build")
}

/// Encodes records with the given offset deltas (an uncompressed records section).
fn section(offset_deltas: &[i32]) -> Vec<u8> {
    let mut out = Vec::new();
    for &d in offset_deltas {
        Record {
            offset_delta: d,
            timestamp_delta: i64::from(d),
            key: Some(format!("k{d}").into_bytes()),
            value: Some(vec![b'v'; 20]),
            headers: vec![RecordHeader::new("h", Some(b"x"))],
            ..Record::default()
        }
        .encode(&mut out)
        .expect("encode");
    }
    out
}

/// A batch with a valid header around `records` (stored as given, so compress it
/// first for a compressed `codec`), claiming `count` records and `last_offset_delta`,
/// its length and CRC recomputed so only the records can be wrong.
fn assemble(records: &[u8], codec: Compression, count: i32, last_offset_delta: i32) -> Vec<u8> {
    let mut batch = valid(1, Compression::None);
    batch.truncate(HEADER_LEN);
    batch.extend_from_slice(records);
    let batch_length = i32::try_from(batch.len() - LOG_OVERHEAD).expect("batch length");
    batch[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let attributes = u16::from_be_bytes([batch[21], batch[22]]) & !0x07 | u16::from(codec.id());
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    batch[23..27].copy_from_slice(&last_offset_delta.to_be_bytes());
    batch[57..61].copy_from_slice(&count.to_be_bytes());
    fix_crc(&mut batch);
    batch
}

fn fix_crc(batch: &mut [u8]) {
    let crc = compute_crc(batch);
    batch[CRC_START - 4..CRC_START].copy_from_slice(&crc.to_be_bytes());
}

/// The records error `validate_produce` gave, or a panic naming what it did instead.
fn corrupt_reason(batch: &[u8], max: u64) -> &'static str {
    match validate_produce(batch, max) {
        Err(LogError::InvalidBatch(BatchError::Corrupt(why))) => why,
        other => panic!("expected a corrupt-records error, got {other:?}"),
    }
}

fn sim_log(max_message_bytes: u64) -> (SimStorage, PartitionLog) {
    let (disk, st) = sim();
    let max = max_message_bytes.to_string();
    let log = PartitionLog::open(
        st,
        Path::new("/data/t-0"),
        config(&[("max.message.bytes", &max)]),
        0,
    )
    .expect("open");
    (disk, log)
}

#[test]
fn a_header_only_batch_claiming_i32_max_records_is_refused() {
    let batch = assemble(&[], Compression::None, i32::MAX, i32::MAX - 1);
    assert_eq!(batch.len(), HEADER_LEN);
    assert_eq!(
        corrupt_reason(&batch, MAX),
        "record count is more than the batch's bytes can hold"
    );
    // Compressed, it is refused before anything is decompressed.
    let empty = compression::compress(Compression::Zstd, &[]).expect("compress");
    let batch = assemble(&empty, Compression::Zstd, i32::MAX, i32::MAX - 1);
    assert_eq!(
        corrupt_reason(&batch, MAX),
        "record count is more than a produced batch may hold decompressed"
    );

    // Through the log: nothing is appended, no offsets are taken, no segment rolls.
    let (_disk, mut log) = sim_log(MAX);
    let mut request = Vec::new();
    for _ in 0..100 {
        request.extend_from_slice(&assemble(&[], Compression::None, i32::MAX, i32::MAX - 1));
    }
    let err = log.append(&mut request, 0, 0).expect_err("refused");
    assert!(matches!(err, LogError::InvalidBatch(_)), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(log.segment_count(), 1);
    assert!(log.poisoned().is_none());
    let mut good = valid(3, Compression::None);
    log.append(&mut good, 0, 0)
        .expect("a good batch still appends");
    assert_eq!(log.log_end_offset(), 3);
}

#[test]
fn fewer_records_than_the_count_are_refused() {
    let batch = assemble(&section(&[0, 1, 2]), Compression::None, 4, 3);
    assert_eq!(
        corrupt_reason(&batch, MAX),
        "fewer records than the batch's record count"
    );
}

#[test]
fn more_records_than_the_count_are_refused() {
    let batch = assemble(&section(&[0, 1, 2, 3]), Compression::None, 3, 2);
    assert_eq!(
        corrupt_reason(&batch, MAX),
        "bytes after the batch's last record (more records than its record count)"
    );
}

#[test]
fn trailing_bytes_after_the_last_record_are_refused() {
    let mut records = section(&[0, 1]);
    records.extend_from_slice(&[0, 0, 0]);
    let batch = assemble(&records, Compression::None, 2, 1);
    assert_eq!(
        corrupt_reason(&batch, MAX),
        "bytes after the batch's last record (more records than its record count)"
    );
}

#[test]
fn a_garbage_records_section_is_refused() {
    // Deterministic noise of the size of three records.
    let len = section(&[0, 1, 2]).len();
    let mut x: u32 = 0x9e37_79b9;
    let garbage: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let batch = assemble(&garbage, Compression::None, 3, 2);
    corrupt_reason(&batch, MAX);
    // A record that runs past the section, and a body with a field cut short.
    let mut cut = section(&[0, 1]);
    cut.truncate(cut.len() - 1);
    let batch = assemble(&cut, Compression::None, 2, 1);
    assert_eq!(
        corrupt_reason(&batch, MAX),
        "record runs past the end of the batch"
    );
    // Length 6 (zigzag 12): attributes, timestamp and offset deltas, then a key
    // of length 5 (zigzag 10) with only two of its bytes inside the record.
    let short = [12, 0, 0, 0, 10, b'a', b'b'];
    let batch = assemble(&short, Compression::None, 1, 0);
    assert_eq!(
        corrupt_reason(&batch, MAX),
        "record field runs past the record's length"
    );
    // A header key that is not UTF-8.
    let mut bad_key = Vec::new();
    Record {
        headers: vec![RecordHeader {
            key: "ab".into(),
            value: None,
        }],
        ..Record::default()
    }
    .encode(&mut bad_key)
    .expect("encode");
    let at = bad_key
        .windows(2)
        .position(|w| w == b"ab")
        .expect("header key");
    bad_key[at] = 0xff;
    let batch = assemble(&bad_key, Compression::None, 1, 0);
    assert_eq!(corrupt_reason(&batch, MAX), "header key is not UTF-8");
}

#[test]
fn offset_deltas_other_than_0_to_n_minus_1_are_refused() {
    for deltas in [
        &[0, 2, 1][..],
        &[1, 2, 3],
        &[0, 0, 1],
        &[0, 1, 3],
        &[-1, 0, 1],
    ] {
        let batch = assemble(&section(deltas), Compression::None, 3, 2);
        assert_eq!(
            corrupt_reason(&batch, MAX),
            "record offset deltas are not 0, 1, .., n-1 in order",
            "{deltas:?}"
        );
    }
    // The header's own claim is still checked first.
    let batch = assemble(&section(&[0, 1, 2]), Compression::None, 3, 5);
    assert!(matches!(
        validate_produce(&batch, MAX),
        Err(LogError::InvalidBatch(BatchError::Invalid(_)))
    ));
}

#[test]
fn valid_batches_in_every_codec_are_accepted() {
    let mut request = Vec::new();
    for codec in CODECS {
        let batch = valid(50, codec);
        let v = validate_produce(&batch, MAX).unwrap_or_else(|e| panic!("{codec:?}: {e}"));
        assert_eq!((v.batches, v.records), (1, 50), "{codec:?}");
        assert_eq!(v.bytes, batch.len() as u64);
        request.extend_from_slice(&batch);
    }
    let v = validate_produce(&request, MAX).expect("a request of every codec");
    assert_eq!((v.batches, v.records), (4, 200));
    // A record with null key and value, no headers, and one with an empty key.
    let mut b = BatchBuilder::new(BatchOptions::default());
    b.push(0, None, None, &[]).expect("push");
    b.push(0, Some(b""), Some(b""), &[RecordHeader::new("", None)])
        .expect("push");
    // Varints past the two-byte fast path: a far timestamp, a 10 000-byte value,
    // and a non-ASCII header key.
    b.push(
        i64::MAX / 3,
        Some(b"k"),
        Some(&[7u8; 10_000]),
        &[RecordHeader::new("é€-key", Some(b"v"))],
    )
    .expect("push");
    let v = validate_produce(&b.build().expect("build"), MAX).expect("edge-case records");
    assert_eq!(v.records, 3);

    let (_disk, mut log) = sim_log(MAX);
    log.append(&mut request, 0, 0).expect("append");
    assert_eq!(log.log_end_offset(), 200);
}

#[test]
fn bad_records_inside_a_compressed_batch_are_refused() {
    for codec in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
        let fewer = compression::compress(codec, &section(&[0, 1])).expect("compress");
        let batch = assemble(&fewer, codec, 3, 2);
        assert_eq!(
            corrupt_reason(&batch, MAX),
            "fewer records than the batch's record count",
            "{codec:?}"
        );
        let gaps = compression::compress(codec, &section(&[0, 2])).expect("compress");
        let batch = assemble(&gaps, codec, 2, 1);
        assert_eq!(
            corrupt_reason(&batch, MAX),
            "record offset deltas are not 0, 1, .., n-1 in order",
            "{codec:?}"
        );
        // Not the codec's format at all.
        let batch = assemble(b"definitely not compressed", codec, 1, 0);
        assert!(
            matches!(
                validate_produce(&batch, MAX),
                Err(LogError::InvalidBatch(BatchError::Compression { .. }))
            ),
            "{codec:?}"
        );
    }
    let batch = assemble(&section(&[0]), Compression::Snappy, 1, 0);
    assert!(matches!(
        validate_produce(&batch, MAX),
        Err(LogError::InvalidBatch(BatchError::UnsupportedCompression(
            "snappy"
        )))
    ));
}

#[test]
fn the_decompression_bound_is_64_times_max_message_bytes_up_to_64_mib() {
    assert_eq!(PRODUCE_EXPANSION_MAX, 64);
    assert_eq!(produce_decompressed_bytes_max(4096), 64 * 4096);
    assert_eq!(
        produce_decompressed_bytes_max(MAX),
        DECOMPRESSED_BATCH_BYTES_MAX
    );
    assert_eq!(
        produce_decompressed_bytes_max(i32::MAX as u64),
        DECOMPRESSED_BATCH_BYTES_MAX
    );
    assert_eq!(DECOMPRESSED_BATCH_BYTES_MAX, 64 << 20);
}

#[test]
fn a_compression_bomb_beyond_the_bound_is_refused() {
    let max = 4096u64;
    let bound = produce_decompressed_bytes_max(max);
    // One well-formed record whose zero-filled value takes the bound and more.
    let zeros = vec![0u8; bound + 1];
    for codec in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
        let mut b = BatchBuilder::new(BatchOptions {
            compression: codec,
            ..BatchOptions::default()
        });
        b.push(0, None, Some(&zeros), &[]).expect("push");
        let bomb = b.build().expect("build");
        assert!(bomb.len() as u64 <= max, "{codec:?}: {} bytes", bomb.len());
        match validate_produce(&bomb, max) {
            Err(LogError::InvalidBatch(e @ BatchError::ExpandsTooFar { limit, .. })) => {
                assert_eq!(limit, bound as u64);
                let message = e.to_string();
                assert!(
                    message.contains(&format!("expands beyond {bound} bytes")),
                    "{message}"
                );
                assert!(message.contains(codec.name()), "{message}");
            }
            other => panic!("{codec:?}: expected ExpandsTooFar, got {other:?}"),
        }
        // The same batch is fine where the bound is larger.
        let v = validate_produce(&bomb, MAX).expect("within 64 MiB");
        assert_eq!(v.records, 1);
    }
    // Beyond the absolute cap even for the largest max.message.bytes.
    let huge = vec![0u8; DECOMPRESSED_BATCH_BYTES_MAX + 1];
    let packed = compression::compress(Compression::Zstd, &huge).expect("compress");
    let batch = assemble(&packed, Compression::Zstd, 1, 0);
    assert!(matches!(
        validate_produce(&batch, i32::MAX as u64),
        Err(LogError::InvalidBatch(BatchError::ExpandsTooFar { limit, .. }))
            if limit == DECOMPRESSED_BATCH_BYTES_MAX as u64
    ));
}

#[test]
fn the_error_reaches_a_log_append_unretryable_and_changes_nothing() {
    let (_disk, mut log) = sim_log(MAX);
    let mut request = valid(2, Compression::None);
    request.extend_from_slice(&assemble(&section(&[0, 1]), Compression::None, 3, 2));
    let err = log.append(&mut request, 0, 0).expect_err("refused");
    assert!(!err.is_retryable());
    let message = err.to_string();
    assert!(
        message.contains("fewer records than the batch's record count"),
        "{message}"
    );
    assert_eq!(log.log_end_offset(), 0);
}

/// Whether `RecordIter` reads every record of `records` without an error.
fn record_iter_accepts(records: &[u8], header: &BatchHeader) -> bool {
    RecordIter::new(records, header).all(|r| r.is_ok())
}

proptest! {
    /// The produce check accepts exactly what consumers' `RecordIter` reads without
    /// an error (for headers with `lastOffsetDelta = recordCount - 1`), whatever is
    /// done to the records section.
    #[test]
    fn the_section_check_agrees_with_record_iter(
        n in 1usize..6,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 0..4),
        count_change in -1i32..=1,
    ) {
        let batch = valid(n, Compression::None);
        let mut records = batch[HEADER_LEN..].to_vec();
        for (at, byte, kind) in edits {
            if records.is_empty() {
                break;
            }
            let i = at.index(records.len());
            match kind {
                0 => records[i] = byte,
                1 => records[i] ^= 1 << (byte % 8),
                2 => records.insert(i, byte),
                _ => {
                    records.truncate(i);
                }
            }
        }
        let count = (n as i32 + count_change).max(1);
        let assembled = assemble(&records, Compression::None, count, count - 1);
        let header = BatchHeader::parse(&assembled).expect("header");
        let checked = check_record_section(&records, &header).is_ok();
        prop_assert_eq!(checked, record_iter_accepts(&records, &header));
        prop_assert_eq!(checked, validate_produce(&assembled, MAX).is_ok());
    }
}
