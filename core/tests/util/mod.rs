//! Helpers shared by the log tests.
#![allow(dead_code)]
#![cfg(feature = "std")]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use eddy_core::batch::{Batch, BatchBuilder, BatchOptions, Compression};
use eddy_core::config::LogConfig;
use eddy_core::log::PartitionLog;
use eddy_core::sim::SimStorage;
use eddy_core::storage::Storage;

/// A key and a value, either possibly null.
pub type Pair<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// A record as a test sees it: (offset, key, value, timestamp).
pub type Rec = (u64, Option<Vec<u8>>, Option<Vec<u8>>, i64);

/// A batch of `values` with keys, all at `ts`.
pub fn batch(pairs: &[Pair<'_>], ts: i64, compression: Compression) -> Vec<u8> {
    let mut b = BatchBuilder::new(BatchOptions {
        compression,
        ..BatchOptions::default()
    });
    for (k, v) in pairs {
        b.push(ts, *k, *v, &[]).expect("push");
    }
    b.build().expect("build")
}

/// A batch of `n` records whose values are `tag:i` and keys `k{i % keys}`.
pub fn numbered(tag: &str, n: usize, keys: usize, ts: i64) -> Vec<u8> {
    let owned: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                format!("k{}", i % keys.max(1)).into_bytes(),
                format!("{tag}:{i}").into_bytes(),
            )
        })
        .collect();
    let pairs: Vec<Pair<'_>> = owned
        .iter()
        .map(|(k, v)| (Some(k.as_slice()), Some(v.as_slice())))
        .collect();
    batch(&pairs, ts, Compression::None)
}

/// Every record in `[from, upper)` read through `PartitionLog::read`, checking each
/// batch's CRC and that offsets increase.
pub fn read_all(log: &PartitionLog, from: u64, upper: u64) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut offset = from;
    let mut rounds = 0;
    while let Some(slice) = log.read(offset, 64 * 1024, upper).expect("read") {
        rounds += 1;
        assert!(rounds < 1_000_000, "read loop does not advance");
        let bytes = slice.read_to_vec().expect("read bytes");
        let mut rest: &[u8] = &bytes;
        while !rest.is_empty() {
            let (b, tail) = Batch::parse(rest).expect("every served batch checks out");
            for r in b.records(1 << 26).expect("records") {
                let off = b.header.base_offset + r.offset_delta as u64;
                if off >= offset && off < upper {
                    if let Some(last) = out.last() {
                        let last: &Rec = last;
                        assert!(
                            off > last.0,
                            "offsets go backwards: {} after {}",
                            off,
                            last.0
                        );
                    }
                    out.push((
                        off,
                        r.key,
                        r.value,
                        b.header.base_timestamp + r.timestamp_delta,
                    ));
                }
            }
            rest = tail;
        }
        assert!(slice.next_offset > offset);
        offset = slice.next_offset;
    }
    out
}

/// Topic config from Kafka-named pairs.
pub fn config(pairs: &[(&str, &str)]) -> LogConfig {
    let m: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    LogConfig::from_props(&m).expect("config")
}

/// A simulated disk with a partition directory.
pub fn sim() -> (SimStorage, Arc<dyn Storage>) {
    let disk = SimStorage::new();
    disk.create_dir_all(Path::new("/data")).expect("mkdir");
    let st: Arc<dyn Storage> = Arc::new(disk.clone());
    (disk, st)
}

/// Small segments and indexes so tests roll often.
pub fn small() -> LogConfig {
    config(&[
        ("segment.bytes", "4096"),
        ("segment.index.bytes", "240"),
        ("index.interval.bytes", "256"),
        ("retention.ms", "-1"),
        ("file.delete.delay.ms", "0"),
    ])
}

pub fn values(recs: &[Rec]) -> Vec<String> {
    recs.iter()
        .map(|r| String::from_utf8_lossy(r.2.as_deref().unwrap_or(b"<null>")).into_owned())
        .collect()
}
