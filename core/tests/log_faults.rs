//! The partition log under faults and races: truncation while an fsync is in flight,
//! fsync failures and crashes in the middle of a truncation or a roll, and the edges
//! of recovery, compaction, timestamp lookups and follower offsets.
#![cfg(feature = "std")]

mod util;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_core::batch::{Batch, Compression, TimestampType};
use eddy_core::group_commit::SharedLog;
use eddy_core::log::{LogError, PartitionLog};
use eddy_core::sim::{CrashMode, SimStorage};
use util::*;

const DIR: &str = "/data/t-0";

fn open(disk: &SimStorage, c: eddy_core::config::LogConfig) -> PartitionLog {
    PartitionLog::open(Arc::new(disk.clone()), Path::new(DIR), c, 0).expect("open")
}

/// Polls `cond` on the shared log until it holds (at most 10 s).
fn wait_for(shared: &SharedLog, what: &str, cond: impl Fn(&PartitionLog) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !shared.with(|l| cond(l)) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Joins `thread`, failing the test if it does not finish within 10 s.
fn join_within<T: Send + 'static>(thread: std::thread::JoinHandle<T>, what: &str) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(thread.join());
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(joined) => joined.unwrap_or_else(|_| panic!("{what} panicked")),
        Err(_) => panic!("{what} never returns"),
    }
}

/// The offsets `read_all` returns over the whole log.
fn offsets(log: &PartitionLog) -> Vec<u64> {
    read_all(log, log.log_start_offset(), log.log_end_offset())
        .iter()
        .map(|r| r.0)
        .collect()
}

/// Checks a log that failed an operation: it refuses writes and still reads.
fn assert_poisoned_but_readable(log: &mut PartitionLog) {
    assert!(log.poisoned().is_some());
    let end = log.log_end_offset();
    assert!(log.log_start_offset() <= end);
    assert!(log.high_watermark() <= end && log.durable_offset() <= end);
    let _ = read_all(log, log.log_start_offset(), end);
    let err = log
        .append(&mut numbered("refused", 1, 1, 0), 0, 0)
        .unwrap_err();
    assert!(matches!(err, LogError::Poisoned { .. }), "{err}");
}

#[test]
fn a_durable_append_truncated_away_while_waiting_fails_instead_of_hanging() {
    let (disk, _) = sim();
    let log = open(&disk, config(&[("flush.messages", "1")]));
    let shared = Arc::new(SharedLog::new(log));
    shared
        .append_durable(&mut numbered("w", 5, 5, 0), 0, 0)
        .unwrap();
    // A (5..9) appends and starts a slow fsync; B (10..14) appends and waits for it,
    // or runs its own, slow too.
    disk.set_sync_delay(Some(Duration::from_millis(200)));
    let s = shared.clone();
    let a = std::thread::spawn(move || s.append_durable(&mut numbered("a", 5, 5, 0), 0, 0));
    wait_for(&shared, "A's append", |l| l.log_end_offset() == 10);
    let s = shared.clone();
    let b = std::thread::spawn(move || s.append_durable(&mut numbered("b", 5, 5, 0), 0, 0));
    wait_for(&shared, "B's append", |l| l.log_end_offset() == 15);
    // A leader change cuts B's records before any fsync covered them.
    shared.with(|l| l.truncate_to(10, 0)).unwrap();
    disk.set_sync_delay(None);
    let a = join_within(a, "A's append_durable");
    let b = join_within(b, "append_durable of truncated records");
    // A's records were below the cut: still there, and durable.
    assert_eq!(
        a.expect("A's records survived the truncation").last_offset,
        9
    );
    let err = b.expect_err("B's records were truncated");
    assert!(matches!(err, LogError::TruncatedBeforeSync { .. }), "{err}");
    assert!(err.is_retryable());
    shared.with(|l| {
        assert_eq!(l.log_end_offset(), 10);
        assert_eq!(l.durable_offset(), 10);
    });
    // The log still works.
    let c = shared
        .append_durable(&mut numbered("c", 1, 1, 0), 0, 0)
        .unwrap();
    assert_eq!(c.base_offset, 10);
}

#[test]
fn an_fsync_begun_before_a_truncation_does_not_make_later_appends_durable() {
    for full in [false, true] {
        let (disk, _) = sim();
        let mut log = open(&disk, small());
        log.append(&mut numbered("a", 10, 10, 0), 0, 0).unwrap();
        log.flush(0).unwrap();
        log.append(&mut numbered("b", 10, 10, 0), 0, 0).unwrap();
        let job = log.begin_sync().unwrap().expect("records to sync");
        assert_eq!(job.up_to(), 20);
        // While the job runs: a truncation, and new records the job never covered.
        if full {
            log.truncate_fully_and_start_at(0, 0).unwrap();
        } else {
            log.truncate_to(10, 0).unwrap();
        }
        let cut = log.log_end_offset();
        log.append(&mut numbered("c", 20, 20, 0), 1, 0).unwrap();
        let result = job.run();
        let durable = log.finish_sync(&job, result).unwrap();
        assert!(
            durable <= cut,
            "full {full}: durable {durable}, cut to {cut}"
        );
        assert_eq!(log.durable_offset(), durable);
        assert!(
            log.begin_sync().unwrap().is_some(),
            "the new records still need an fsync"
        );
        drop(log);
        disk.crash(CrashMode::DropUnsynced);
        let log = open(&disk, small());
        assert!(
            log.log_end_offset() >= durable,
            "full {full}: records below {durable} were called durable, {} survived",
            log.log_end_offset()
        );
    }
}

#[test]
fn group_commit_after_a_full_truncation_acknowledges_only_synced_records() {
    let (disk, _) = sim();
    let c = config(&[("flush.messages", "1")]);
    let shared = Arc::new(SharedLog::new(open(&disk, c.clone())));
    shared
        .append_durable(&mut numbered("a", 10, 10, 0), 0, 0)
        .unwrap();
    disk.set_sync_delay(Some(Duration::from_millis(200)));
    let s = shared.clone();
    let a2 = std::thread::spawn(move || s.append_durable(&mut numbered("a2", 10, 10, 0), 0, 0));
    wait_for(&shared, "A2's append", |l| l.log_end_offset() == 20);
    // While A2's fsync is in flight: a full truncation and a new leader's append C.
    shared
        .with(|l| l.truncate_fully_and_start_at(0, 0))
        .unwrap();
    let s = shared.clone();
    let c_append =
        std::thread::spawn(move || s.append_durable(&mut numbered("c", 20, 20, 0), 1, 0));
    wait_for(&shared, "C's append", |l| l.log_end_offset() == 20);
    disk.set_sync_delay(None);
    let acked = join_within(c_append, "C's append_durable")
        .unwrap()
        .last_offset;
    assert_eq!(acked, 19);
    let err = join_within(a2, "A2's append_durable").unwrap_err();
    assert!(matches!(err, LogError::TruncatedBeforeSync { .. }), "{err}");
    drop(shared);
    disk.crash(CrashMode::DropUnsynced);
    let log = open(&disk, c);
    assert!(
        log.log_end_offset() > acked,
        "records acknowledged durable up to {acked} lost in a crash: the log ends at {}",
        log.log_end_offset()
    );
}

#[test]
fn a_failed_fsync_in_truncation_leaves_a_readable_poisoned_log() {
    for n in 1.. {
        let (disk, _) = sim();
        let mut log = open(&disk, small());
        for i in 0..5 {
            log.append(&mut numbered(&format!("b{i}"), 2, 2, 0), 0, 0)
                .unwrap();
        }
        log.set_high_watermark(4);
        disk.fail_sync_in(n);
        if log.truncate_to(6, 0).is_ok() {
            assert_eq!(log.log_end_offset(), 6);
            assert!(n > 1, "no fsync failure point found");
            return;
        }
        if log.poisoned().is_some() {
            assert_poisoned_but_readable(&mut log);
        } else {
            // Only writing the checkpoints failed: the cut itself is done and synced.
            assert_eq!(log.log_end_offset(), 6);
            assert_eq!(offsets(&log), (0..6).collect::<Vec<_>>());
        }
        // Reopened, the log holds a whole prefix of what it had.
        drop(log);
        let log = open(&disk, small());
        let offs = offsets(&log);
        assert!(offs.len() >= 6, "sync {n}: {offs:?}");
        assert_eq!(offs, (0..log.log_end_offset()).collect::<Vec<_>>());
    }
}

#[test]
fn a_failed_full_truncation_leaves_a_readable_poisoned_log() {
    let (disk, _) = sim();
    let mut log = open(&disk, small());
    for i in 0..100 {
        log.append(&mut numbered(&format!("b{i}"), 3, 3, 0), 0, 0)
            .unwrap();
    }
    assert!(log.segment_count() > 2);
    // The new segment's directory sync fails.
    disk.fail_sync_in(1);
    let err = log.truncate_fully_and_start_at(1000, 0).unwrap_err();
    assert!(matches!(err, LogError::Poisoned { .. }), "{err}");
    assert_poisoned_but_readable(&mut log);
    drop(log);
    let log = open(&disk, small());
    assert_eq!(
        offsets(&log),
        (log.log_start_offset()..log.log_end_offset()).collect::<Vec<_>>()
    );
}

#[test]
fn a_failed_roll_of_an_empty_segment_leaves_a_readable_poisoned_log() {
    for n in 1.. {
        let (disk, _) = sim();
        let mut log = open(&disk, small());
        // The empty active segment 0 is replaced by one at 50: fail each fsync on the way.
        disk.fail_sync_in(n);
        let Err(err) = log.roll(50, 0) else {
            assert_eq!(log.log_end_offset(), 50);
            assert_eq!(log.segment_count(), 1);
            assert!(n > 1, "no fsync failure point found");
            return;
        };
        if log.poisoned().is_some() {
            assert_poisoned_but_readable(&mut log);
        } else {
            // Only the checkpoints failed: the new segment is in place.
            assert_eq!(log.log_end_offset(), 50, "{err}");
        }
        drop(log);
        let log = open(&disk, small());
        assert!(offsets(&log).is_empty());
    }
}

#[test]
fn a_crash_during_truncation_never_resurrects_deleted_segments() {
    let mut dir_sync_failed = false;
    for n in 1.. {
        let (disk, _) = sim();
        let mut log = open(&disk, small());
        for i in 0..200 {
            log.append(&mut numbered(&format!("b{i}"), 3, 3, 0), 0, 0)
                .unwrap();
        }
        log.flush(0).unwrap();
        let end_before = log.log_end_offset();
        disk.fail_sync_in(n);
        let result = log.truncate_to(10, 0);
        let Err(err) = result else {
            break;
        };
        dir_sync_failed |= err.to_string().contains("sync the partition directory");
        // A power cut right after the failure.
        drop(log);
        disk.crash(CrashMode::DropUnsynced);
        let log = open(&disk, small());
        let offs = offsets(&log);
        let hole = offs.windows(2).find(|w| w[1] != w[0] + 1);
        assert!(
            offs.first() == Some(&0) && hole.is_none(),
            "sync {n} failed ({err}): a hole {hole:?} after the crash (the log ended at {end_before})"
        );
        assert_eq!(offs.len() as u64, log.log_end_offset());
    }
    assert!(dir_sync_failed, "no directory sync failure point found");
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
