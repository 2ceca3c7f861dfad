//! The partition log under faults and races: truncation while an fsync is in flight,
//! fsync failures and crashes in the middle of a truncation or a roll, and the edges
//! of recovery, compaction, timestamp lookups and follower offsets.
#![cfg(feature = "std")]

mod util;

use std::path::Path;
use std::sync::Arc;

use eddy_core::log::PartitionLog;
use eddy_core::sim::SimStorage;
use util::*;

const DIR: &str = "/data/t-0";

fn open(disk: &SimStorage, c: eddy_core::config::LogConfig) -> PartitionLog {
    PartitionLog::open(Arc::new(disk.clone()), Path::new(DIR), c, 0).expect("open")
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
