//! The partition log under faults and races: truncation while an fsync is in flight,
//! fsync failures and crashes in the middle of a truncation or a roll, and the edges
//! of recovery, compaction, timestamp lookups and follower offsets.
#![cfg(feature = "std")]

mod util;

use std::path::Path;
use std::sync::Arc;

use eddy_core::batch::{Batch, Compression, TimestampType};
use eddy_core::log::PartitionLog;
use eddy_core::sim::{CrashMode, SimStorage};
use util::*;

const DIR: &str = "/data/t-0";

fn open(disk: &SimStorage, c: eddy_core::config::LogConfig) -> PartitionLog {
    PartitionLog::open(Arc::new(disk.clone()), Path::new(DIR), c, 0).expect("open")
}

/// The offsets `read_all` returns over the whole log.
fn offsets(log: &PartitionLog) -> Vec<u64> {
    read_all(log, log.log_start_offset(), log.log_end_offset())
        .iter()
        .map(|r| r.0)
        .collect()
}

#[test]
fn a_log_start_beyond_the_recovered_end_restarts_the_log_there() {
    let (disk, _) = sim();
    let mut log = open(&disk, small());
    log.append(&mut numbered("x", 10, 10, 0), 0, 0).unwrap();
    log.flush(0).unwrap();
    log.append(&mut numbered("y", 10, 10, 0), 0, 0).unwrap(); // not synced
    log.set_high_watermark(20);
    assert_eq!(log.delete_records_before(15).unwrap(), 15);
    drop(log);
    disk.crash(CrashMode::DropUnsynced);
    let mut log = open(&disk, small());
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (15, 15),
        "offsets below the checkpointed log start must not be handed out again"
    );
    let info = log.append(&mut numbered("z", 1, 1, 0), 0, 0).unwrap();
    assert_eq!(info.base_offset, 15);
    log.set_high_watermark(16);
    assert_eq!(values(&read_all(&log, 15, 16)), ["z:0"]);
    // And it stays so across a crash after the restart.
    drop(log);
    disk.crash(CrashMode::DropUnsynced);
    let log = open(&disk, small());
    assert_eq!(log.log_start_offset(), 15);
    assert!(log.log_end_offset() >= 15);
}

fn first_batch(log: &PartitionLog) -> eddy_core::batch::header::BatchHeader {
    let s = log.read(0, 1 << 20, log.log_end_offset()).unwrap().unwrap();
    let bytes = s.read_to_vec().unwrap();
    let (b, _) = Batch::parse(&bytes).unwrap();
    b.header
}

#[test]
fn compaction_keeps_the_log_append_time_of_a_rewritten_batch() {
    let (disk, _) = sim();
    let c = config(&[
        ("cleanup.policy", "compact"),
        ("message.timestamp.type", "LogAppendTime"),
        ("segment.bytes", "14"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("retention.ms", "-1"),
    ]);
    let mut log = open(&disk, c);
    // Created at 5, appended at 1_000_000; k0@0 is superseded by k0@2.
    let pairs: Vec<Pair<'_>> = [b"k0", b"k1", b"k0"]
        .iter()
        .map(|k| (Some(&k[..]), Some(&b"v"[..])))
        .collect();
    log.append(&mut batch(&pairs, 5, Compression::None), 0, 1_000_000)
        .unwrap();
    log.append(&mut numbered("later", 1, 1, 5), 0, 1_000_001)
        .unwrap();
    log.set_high_watermark(log.log_end_offset());
    assert_eq!(first_batch(&log).max_timestamp, 1_000_000);
    let rep = log.compact(2_000_000).unwrap();
    assert_eq!((rep.segments_cleaned, rep.records_removed), (1, 1));
    let h = first_batch(&log);
    assert_eq!(h.record_count, 2);
    assert_eq!(h.attributes.timestamp_type(), TimestampType::LogAppendTime);
    assert_eq!(h.max_timestamp, 1_000_000, "the append time changed");
    assert_eq!(offsets(&log), [1, 2, 3]);
    // The segment's timestamp follows the batch's: a lookup still finds the batch.
    let (offset, ts) = log.offset_for_timestamp(1_000_000).unwrap().unwrap();
    assert_eq!(ts, 1_000_000);
    assert!(offset <= 1, "{offset}");
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
