//! `validate_produce` benchmarks: the checks a leader runs on every produce
//! request before it takes the partition lock.
//!
//! `cargo bench -p eddy-core --bench validate` times requests of 256-byte records:
//! - `uncompressed/16KiB`: one batch of about 16 KiB;
//! - `uncompressed/1MiB_64_batches`: a 1 MiB request of 64 such batches;
//! - `uncompressed/1MiB_1_batch`: a 1 MiB request of one batch;
//! - `lz4/16KiB`, `zstd/16KiB`, `gzip/16KiB`: one batch of 16 KiB of records, compressed.
//!
//! Each reports throughput in records; divide the time by the record count it prints
//! for nanoseconds per record.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use eddy_core::batch::{BatchBuilder, BatchOptions, Compression, RecordHeader};
use eddy_core::log::validate_produce;

const NOW_MS: i64 = 1_700_000_000_000;
/// Bytes of each encoded record, length prefix included (checked below).
const RECORD_BYTES: usize = 256;
const KIB: usize = 1024;
/// Well above every request here: the limit is not what is measured.
const MAX_MESSAGE_BYTES: u64 = 8 << 20;

/// A batch of about `bytes` bytes of 256-byte records (uncompressed size), each
/// with a 16-byte key, one header and a value that fills the rest.
fn batch(bytes: usize, compression: Compression) -> (Vec<u8>, u64) {
    let records = bytes / RECORD_BYTES;
    let mut b = BatchBuilder::new(BatchOptions {
        compression,
        ..BatchOptions::default()
    });
    // Record body: attributes 1, timestamp delta 1, offset delta ≤ 2, key 1 + 16,
    // value 2 + v, header count 1, header 1 + 6 + 1 + 4; prefix 2.
    let value_len = RECORD_BYTES - (2 + 1 + 1 + 2 + 17 + 2 + 1 + 12);
    for i in 0..records {
        let key = format!("key-{i:012}");
        let value: Vec<u8> = (0..value_len)
            .map(|j| ((i * 7 + j * 31) % 251) as u8)
            .collect();
        let headers = [RecordHeader::new("source", Some(b"bench"))];
        b.push(NOW_MS, Some(key.as_bytes()), Some(&value), &headers)
            .expect("push a record");
    }
    (b.build().expect("build a batch"), records as u64)
}

fn bench_validate(c: &mut Criterion) {
    let mut g = c.benchmark_group("validate_produce");
    let (one, one_records) = batch(16 * KIB, Compression::None);
    assert!(
        one.len() >= 16 * KIB - RECORD_BYTES && one.len() <= 16 * KIB + RECORD_BYTES,
        "a 16 KiB batch is {} bytes",
        one.len()
    );
    let mut request = Vec::new();
    for _ in 0..64 {
        request.extend_from_slice(&one);
    }
    let (big, big_records) = batch(1024 * KIB, Compression::None);
    let cases: Vec<(String, Vec<u8>, u64)> = vec![
        ("uncompressed/16KiB".into(), one.clone(), one_records),
        (
            "uncompressed/1MiB_64_batches".into(),
            request,
            one_records * 64,
        ),
        ("uncompressed/1MiB_1_batch".into(), big, big_records),
        (
            "lz4/16KiB".into(),
            batch(16 * KIB, Compression::Lz4).0,
            one_records,
        ),
        (
            "zstd/16KiB".into(),
            batch(16 * KIB, Compression::Zstd).0,
            one_records,
        ),
        (
            "gzip/16KiB".into(),
            batch(16 * KIB, Compression::Gzip).0,
            one_records,
        ),
    ];
    for (name, bytes, records) in &cases {
        let v = validate_produce(bytes, MAX_MESSAGE_BYTES).expect("a valid request");
        assert_eq!(v.records, *records, "{name}");
        eprintln!("{name}: {} bytes, {records} records", bytes.len());
        g.throughput(Throughput::Elements(*records));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| validate_produce(black_box(bytes), MAX_MESSAGE_BYTES).expect("valid"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_validate);
criterion_main!(benches);
