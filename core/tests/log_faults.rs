//! The partition log under faults and races: truncation while an fsync is in flight,
//! fsync failures and crashes in the middle of a truncation or a roll, and the edges
//! of recovery, compaction, timestamp lookups and follower offsets.
#![cfg(feature = "std")]

mod util;

use std::path::Path;
use std::sync::Arc;

use eddy_core::batch::Compression;
use eddy_core::log::PartitionLog;
use eddy_core::sim::SimStorage;
use util::*;

const DIR: &str = "/data/t-0";

fn open(disk: &SimStorage, c: eddy_core::config::LogConfig) -> PartitionLog {
    PartitionLog::open(Arc::new(disk.clone()), Path::new(DIR), c, 0).expect("open")
}

#[test]
fn a_timestamp_lookup_answers_from_the_log_start() {
    let (disk, _) = sim();
    let mut log = open(&disk, small());
    for ts in [100i64, 50, 200] {
        log.append(
            &mut batch(&[(Some(b"k"), Some(b"v"))], ts, Compression::None),
            0,
            0,
        )
        .unwrap();
    }
    log.set_high_watermark(3);
    log.delete_records_before(1).unwrap();
    // Offset 0 (100) is below the log start and offset 1 is at 50: the first record
    // at or after the log start with a timestamp at or after 100 is offset 2.
    assert_eq!(log.offset_for_timestamp(100).unwrap(), Some((2, 200)));
    assert_eq!(log.offset_for_timestamp(50).unwrap(), Some((1, 50)));
    assert_eq!(log.offset_for_timestamp(201).unwrap(), None);
    // A LogAppendTime batch that starts below the log start: its records all have
    // the append time, so the answer is the log start.
    let (disk, _) = sim();
    let mut log = open(
        &disk,
        config(&[("message.timestamp.type", "LogAppendTime")]),
    );
    log.append(&mut numbered("a", 4, 4, 0), 0, 700).unwrap();
    log.set_high_watermark(4);
    log.delete_records_before(2).unwrap();
    assert_eq!(log.offset_for_timestamp(600).unwrap(), Some((2, 700)));
}

#[test]
fn a_follower_batch_far_past_an_empty_segment_starts_a_segment_at_its_offset() {
    const FAR: u64 = 5_000_000_000;
    let (disk, _) = sim();
    let mut log = open(&disk, small());
    let mut b = numbered("f", 2, 2, 0);
    eddy_core::batch::header::set_base_offset(&mut b, FAR);
    let info = log.append_as_follower(&b, 0).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (FAR, FAR + 1));
    assert_eq!(log.log_end_offset(), FAR + 2);
    assert_eq!(log.segment_count(), 1);
    log.set_high_watermark(FAR + 2);
    assert_eq!(values(&read_all(&log, FAR, FAR + 2)), ["f:0", "f:1"]);
    log.close(0).unwrap();
    let log = open(&disk, small());
    assert_eq!(log.log_end_offset(), FAR + 2);
}
