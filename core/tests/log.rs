//! Behaviour of the partition log on real and simulated disks.
#![cfg(feature = "std")]

mod util;

use std::path::Path;
use std::sync::Arc;

use eddy_core::batch::Compression;
use eddy_core::batch::header::HEADER_LEN;
use eddy_core::layout;
use eddy_core::log::{LogError, PartitionLog};
use eddy_core::sim::{CrashMode, SimStorage};
use eddy_core::storage::{FsStorage, Storage};
use util::*;

const DIR: &str = "/data/t-0";

fn open(st: &Arc<dyn Storage>, c: eddy_core::config::LogConfig, now: i64) -> PartitionLog {
    PartitionLog::open(st.clone(), Path::new(DIR), c, now).expect("open")
}

#[test]
fn offsets_start_at_zero_and_reads_return_whole_batches() {
    let (_disk, st) = sim();
    let mut log = open(&st, small(), 0);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
    let a = log.append(&mut numbered("a", 3, 3, 10), -1, 100).unwrap();
    let b = log.append(&mut numbered("b", 2, 2, 20), -1, 100).unwrap();
    assert_eq!((a.base_offset, a.last_offset), (0, 2));
    assert_eq!((b.base_offset, b.last_offset), (3, 4));
    assert_eq!(log.log_end_offset(), 5);
    // Nothing is visible above the high watermark.
    assert!(
        log.read(0, 1 << 20, log.high_watermark())
            .unwrap()
            .is_none()
    );
    log.set_high_watermark(5);
    let all = read_all(&log, 0, 5);
    assert_eq!(values(&all), ["a:0", "a:1", "a:2", "b:0", "b:1"]);
    assert_eq!(all.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    // Starting in the middle of a batch returns that whole batch.
    let s = log.read(4, 1, 5).unwrap().unwrap();
    assert_eq!((s.first_offset, s.next_offset), (3, 5));
    // max_bytes smaller than a batch still returns one batch.
    let s = log.read(0, 1, 5).unwrap().unwrap();
    assert_eq!(s.next_offset, 3);
    assert!(matches!(
        log.read(6, 10, 5),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert!(log.read(5, 10, 5).unwrap().is_none());
}

#[test]
fn segments_roll_on_size_and_reads_cross_them() {
    let (disk, st) = sim();
    let mut log = open(&st, small(), 0);
    for i in 0..100 {
        log.append(&mut numbered(&format!("r{i}"), 10, 4, i), -1, 0)
            .unwrap();
    }
    assert!(log.segment_count() >= 5, "{} segments", log.segment_count());
    log.set_high_watermark(log.log_end_offset());
    let all = read_all(&log, 0, 1000);
    assert_eq!(all.len(), 1000);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.0, i as u64);
    }
    // Reads from any offset land on the right record.
    for off in [0u64, 1, 57, 123, 255, 399, 999] {
        let s = log.read(off, 1, 1000).unwrap().unwrap();
        assert!(
            s.first_offset <= off && off < s.next_offset,
            "offset {off}: {s:?}"
        );
    }
    // Every segment is named by its base offset.
    let names = disk.list(Path::new(DIR)).unwrap();
    let logs: Vec<_> = names.iter().filter(|n| n.ends_with(".log")).collect();
    assert_eq!(logs.len(), log.segment_count());
    assert_eq!(logs[0], "00000000000000000000.log");
}

#[test]
fn reads_over_large_batches_read_only_their_headers() {
    let (disk, st) = sim();
    let c = config(&[
        ("segment.bytes", "1048576"),
        ("segment.index.bytes", "4096"),
        ("retention.ms", "-1"),
    ]);
    let mut log = open(&st, c, 0);
    let big = vec![b'x'; 20_000];
    let big_batch = |tag: &str| {
        let value = [tag.as_bytes(), &big].concat();
        batch(&[(None, Some(&value))], 10, Compression::None)
    };
    // Large batches, small ones, then large ones again: one record each.
    let mut tags = Vec::new();
    for i in 0..40 {
        let tag = format!("{i}:");
        let mut b = if (10..30).contains(&i) {
            numbered(&tag, 1, 1, 10)
        } else {
            big_batch(&tag)
        };
        log.append(&mut b, -1, 0).unwrap();
        tags.push(tag);
    }
    log.set_high_watermark(log.log_end_offset());
    // Every record comes back once, in order, from any mix of sizes.
    let all = read_all(&log, 0, 40);
    assert_eq!(all.len(), 40);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.0, i as u64);
        let value = r.2.as_deref().unwrap_or_default();
        assert!(value.starts_with(tags[i].as_bytes()), "record {i}");
    }
    for from in [0u64, 5, 9, 10, 11, 29, 30, 31, 39] {
        let s = log.read(from, 1 << 20, 40).unwrap().unwrap();
        assert_eq!((s.first_offset, s.next_offset), (from, 40), "from {from}");
    }
    // Finding the last ten large batches reads one chunk, then only headers
    // (it read a chunk per header before).
    let before = disk.stats();
    let s = log.read(30, 1 << 20, 40).unwrap().unwrap();
    assert_eq!((s.first_offset, s.next_offset), (30, 40));
    let read = disk.stats().bytes_read - before.bytes_read;
    assert!(
        read <= (8 * 1024 + 10 * HEADER_LEN) as u64,
        "the walk read {read} bytes"
    );
}

#[test]
fn segments_roll_on_segment_ms_and_on_a_full_index() {
    let (_disk, st) = sim();
    let mut log = open(
        &st,
        config(&[("segment.ms", "1000"), ("retention.ms", "-1")]),
        0,
    );
    log.append(&mut numbered("a", 1, 1, 0), -1, 0).unwrap();
    log.append(&mut numbered("b", 1, 1, 500), -1, 500).unwrap();
    assert_eq!(log.segment_count(), 1);
    log.append(&mut numbered("c", 1, 1, 1000), -1, 1000)
        .unwrap();
    assert_eq!(log.segment_count(), 2);

    let (_disk, st) = sim();
    // Two index entries per index file: rolls after a few entries.
    let c = config(&[
        ("segment.index.bytes", "36"),
        ("index.interval.bytes", "0"),
        ("retention.ms", "-1"),
    ]);
    let mut log = open(&st, c, 0);
    for i in 0..10 {
        log.append(&mut numbered("x", 1, 1, i), -1, 0).unwrap();
    }
    assert!(log.segment_count() >= 3, "{}", log.segment_count());
}

#[test]
fn timestamps_find_the_first_record_at_or_after() {
    let (_disk, st) = sim();
    let mut log = open(&st, small(), 0);
    for i in 0..50i64 {
        log.append(&mut numbered("t", 2, 2, 1000 + i * 10), -1, 0)
            .unwrap();
    }
    // Record 2i and 2i+1 have timestamp 1000 + 10i.
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 1000)));
    assert_eq!(log.offset_for_timestamp(1000).unwrap(), Some((0, 1000)));
    assert_eq!(log.offset_for_timestamp(1001).unwrap(), Some((2, 1010)));
    assert_eq!(log.offset_for_timestamp(1250).unwrap(), Some((50, 1250)));
    assert_eq!(log.offset_for_timestamp(1490).unwrap(), Some((98, 1490)));
    assert_eq!(log.offset_for_timestamp(1491).unwrap(), None);
    // Non-monotonic timestamps inside a batch: the first record at or after wins.
    let mut b = batch(
        &[(None, Some(b"late")), (None, Some(b"early"))],
        0,
        Compression::None,
    );
    let _ = &mut b;
    let (_disk, st) = sim();
    let mut log = open(&st, small(), 0);
    let mut builder = eddy_core::batch::BatchBuilder::new(Default::default());
    builder.push(5000, None, Some(b"x"), &[]).unwrap();
    builder.push(3000, None, Some(b"y"), &[]).unwrap();
    builder.push(4000, None, Some(b"z"), &[]).unwrap();
    log.append(&mut builder.build().unwrap(), -1, 0).unwrap();
    assert_eq!(log.offset_for_timestamp(3500).unwrap(), Some((0, 5000)));
    assert_eq!(log.offset_for_timestamp(5001).unwrap(), None);
}

#[test]
fn truncation_removes_the_tail_across_segments() {
    let (_disk, st) = sim();
    let mut log = open(&st, small(), 0);
    for i in 0..60 {
        log.append(&mut numbered(&format!("r{i}"), 2, 2, i), 3, 0)
            .unwrap();
    }
    let before = log.segment_count();
    log.truncate_to(31, 0).unwrap();
    // Truncation works at batch boundaries: the batch holding offset 31 (30..31) goes.
    assert_eq!(log.log_end_offset(), 30);
    assert!(log.segment_count() < before);
    let next = log.append(&mut numbered("new", 2, 2, 0), 4, 0).unwrap();
    assert_eq!(next.base_offset, 30);
    log.set_high_watermark(32);
    let all = read_all(&log, 0, 32);
    assert_eq!(all.len(), 32);
    assert_eq!(values(&all)[30], "new:0");
    assert_eq!(log.end_offset_for_epoch(3), Some((3, 30)));
    assert_eq!(log.end_offset_for_epoch(4), Some((4, 32)));
    assert_eq!(log.end_offset_for_epoch(2), None);
    // Survives a reopen.
    let log = {
        log.close(0).unwrap();
        open(&st, small(), 0)
    };
    assert_eq!(log.log_end_offset(), 32);
    assert_eq!(log.epochs(), &[(3, 0), (4, 30)]);
    // Truncate to 0: empty log starting at 0.
    let mut log = log;
    log.truncate_to(0, 0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
}

#[test]
fn truncating_the_unflushed_tail_leaves_no_flush_due() {
    let (_disk, st) = sim();
    let c = config(&[("flush.ms", "1000")]);
    let mut log = open(&st, c, 0);
    log.append(&mut numbered("kept", 2, 2, 0), 1, 0).unwrap();
    log.flush(0).unwrap();
    assert_eq!(log.durable_offset(), 2);
    // A leader's divergent tail, never flushed, then cut by a truncation
    // (it became a follower): nothing is left to flush, so no flush may be
    // due, or the writer would wake at once, find nothing to sync, and spin.
    log.append(&mut numbered("divergent", 3, 3, 0), 1, 100)
        .unwrap();
    assert_eq!(log.flush_deadline_ms(), Some(1100));
    log.truncate_to(2, 200).unwrap();
    assert_eq!(log.log_end_offset(), 2);
    assert!(!log.flush_due(5000));
    assert_eq!(log.flush_deadline_ms(), None);
    assert!(log.begin_sync().unwrap().is_none());
    // The next append arms the flush again.
    log.append(&mut numbered("next", 1, 1, 0), 2, 300).unwrap();
    assert_eq!(log.flush_deadline_ms(), Some(1300));
    assert!(log.flush_due(1300));
}

#[test]
fn retention_by_time_size_and_log_start_renames_then_deletes() {
    let (disk, st) = sim();
    let c = config(&[
        ("segment.bytes", "2048"),
        ("retention.ms", "10000"),
        ("file.delete.delay.ms", "5000"),
    ]);
    let mut log = open(&st, c.clone(), 0);
    for i in 0..40i64 {
        log.append(&mut numbered("x", 20, 4, i * 1000), -1, i * 1000)
            .unwrap();
    }
    log.set_high_watermark(log.log_end_offset());
    let segs = log.segment_count();
    assert!(segs > 4);
    let deleted = log.enforce_retention(45_000).unwrap();
    assert!(deleted > 0 && deleted < segs, "{deleted} of {segs}");
    // Every remaining segment but the active one is within retention.
    let summaries = log.segment_summaries();
    assert!(summaries[0].max_timestamp >= 45_000 - 10_000);
    assert_eq!(log.log_start_offset(), summaries[0].base_offset);
    let deleted_files = |d: &SimStorage| {
        d.list(Path::new(DIR))
            .unwrap()
            .into_iter()
            .filter(|n| n.ends_with(".deleted"))
            .count()
    };
    assert_eq!(deleted_files(&disk), deleted * 3);
    log.delete_due_files(49_999).unwrap();
    assert_eq!(
        deleted_files(&disk),
        deleted * 3,
        "files stay for file.delete.delay.ms"
    );
    log.delete_due_files(50_000).unwrap();
    assert_eq!(deleted_files(&disk), 0);
    let start = log.log_start_offset();
    assert!(matches!(
        log.read(start - 1, 10, u64::MAX),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(
        read_all(&log, start, u64::MAX).first().map(|r| r.0),
        Some(start)
    );

    // Size: the partition stays at or above retention.bytes.
    let (_disk, st) = sim();
    let c = config(&[
        ("segment.bytes", "2048"),
        ("retention.bytes", "6000"),
        ("retention.ms", "-1"),
    ]);
    let mut log = open(&st, c, 0);
    for _ in 0..40 {
        log.append(&mut numbered("x", 20, 4, 0), -1, 0).unwrap();
    }
    log.set_high_watermark(log.log_end_offset());
    log.enforce_retention(0).unwrap();
    let size = log.size_bytes();
    let first = log.segment_summaries()[0].size;
    assert!(
        size >= 6000 && size - first < 6000,
        "size {size}, first segment {first}"
    );

    // Log start: delete-records moves it, retention drops whole segments below it.
    let (_disk, st) = sim();
    let mut log = open(&st, small(), 0);
    for _ in 0..40 {
        log.append(&mut numbered("x", 4, 4, 0), -1, 0).unwrap();
    }
    assert!(
        log.delete_records_before(100).is_err(),
        "not above the high watermark"
    );
    log.set_high_watermark(120);
    assert_eq!(log.delete_records_before(100).unwrap(), 100);
    log.enforce_retention(0).unwrap();
    assert_eq!(log.log_start_offset(), 100);
    assert!(log.segment_summaries()[0].base_offset <= 100);
    assert_eq!(read_all(&log, 100, 120).len(), 20);
    // Never above the high watermark: nothing at or past offset 120 is deleted.
    assert!(log.segment_summaries().iter().any(|s| s.next_offset > 120));
}

#[test]
fn clean_reopen_needs_no_scan_and_keeps_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let st: Arc<dyn Storage> = Arc::new(FsStorage);
    let dir = tmp.path().join("t-0");
    let mut log = PartitionLog::open(st.clone(), &dir, small(), 0).unwrap();
    for i in 0..30 {
        log.append(&mut numbered(&format!("r{i}"), 3, 3, i), -1, 0)
            .unwrap();
    }
    log.set_high_watermark(90);
    log.close(0).unwrap();
    let log = PartitionLog::open(st.clone(), &dir, small(), 0).unwrap();
    assert_eq!(
        log.open_report().recovered_batches,
        0,
        "{:?}",
        log.open_report()
    );
    assert_eq!(log.high_watermark(), 90);
    assert_eq!(read_all(&log, 0, 90).len(), 90);
    // The closed active index was trimmed and is preallocated again on open.
    drop(log);
}

#[test]
fn garbage_tail_is_cut_and_good_batches_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let st: Arc<dyn Storage> = Arc::new(FsStorage);
    let dir = tmp.path().join("t-0");
    let mut log = PartitionLog::open(st.clone(), &dir, small(), 0).unwrap();
    for i in 0..5 {
        log.append(&mut numbered(&format!("r{i}"), 3, 3, i), -1, 0)
            .unwrap();
    }
    log.flush(0).unwrap();
    drop(log); // no clean close
    let active = dir.join("00000000000000000000.log");
    let good_len = std::fs::metadata(&active).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&active)
            .unwrap();
        f.write_all(&[0xAB; 300]).unwrap();
    }
    let mut log = PartitionLog::open(st.clone(), &dir, small(), 0).unwrap();
    assert_eq!(log.open_report().truncated_bytes, 300);
    assert_eq!(std::fs::metadata(&active).unwrap().len(), good_len);
    assert_eq!(log.log_end_offset(), 15);
    let next = log.append(&mut numbered("after", 1, 1, 0), -1, 0).unwrap();
    assert_eq!(next.base_offset, 15);
    log.set_high_watermark(16);
    assert_eq!(read_all(&log, 0, 16).len(), 16);

    // A flipped byte inside the last batch: that batch goes, the rest stays.
    drop(log);
    let mut bytes = std::fs::read(&active).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0xFF;
    std::fs::write(&active, &bytes).unwrap();
    std::fs::remove_file(dir.join(layout::RECOVERY_POINT_CHECKPOINT)).unwrap();
    let log = PartitionLog::open(st, &dir, small(), 0).unwrap();
    assert_eq!(log.log_end_offset(), 15);
}

#[test]
fn deleted_or_wrong_indexes_are_rebuilt_from_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let st: Arc<dyn Storage> = Arc::new(FsStorage);
    let dir = tmp.path().join("t-0");
    let mut log = PartitionLog::open(st.clone(), &dir, small(), 0).unwrap();
    for i in 0..80 {
        log.append(&mut numbered(&format!("r{i}"), 2, 2, 1000 + i), -1, 0)
            .unwrap();
    }
    log.set_high_watermark(160);
    log.close(0).unwrap();
    let first_index = dir.join("00000000000000000000.index");
    let original = std::fs::read(&first_index).unwrap();
    assert!(!original.is_empty(), "the first segment has index entries");
    std::fs::remove_file(&first_index).unwrap();
    std::fs::remove_file(dir.join("00000000000000000000.timeindex")).unwrap();
    let log = PartitionLog::open(st.clone(), &dir, small(), 0).unwrap();
    assert_eq!(
        std::fs::read(&first_index).unwrap(),
        original,
        "rebuilt byte for byte"
    );
    assert_eq!(read_all(&log, 0, 160).len(), 160);
    assert_eq!(log.offset_for_timestamp(1040).unwrap(), Some((80, 1040)));
    drop(log);
    // An index pointing past its log is rebuilt too.
    std::fs::write(&first_index, [0u8, 0, 0, 9, 0xFF, 0xFF, 0xFF, 0xF0]).unwrap();
    let log = PartitionLog::open(st, &dir, small(), 0).unwrap();
    assert_eq!(std::fs::read(&first_index).unwrap(), original);
    assert_eq!(read_all(&log, 0, 160).len(), 160);
}

#[test]
fn interrupted_deletes_and_compactions_are_finished_or_undone_and_foreign_files_stay() {
    let (disk, st) = sim();
    let mut log = open(&st, small(), 0);
    for i in 0..40 {
        log.append(&mut numbered(&format!("r{i}"), 4, 4, i), -1, 0)
            .unwrap();
    }
    log.close(0).unwrap();
    let d = Path::new(DIR);
    disk.write_file_durable(&d.join("00000000000000000000.log.deleted"), b"old");
    disk.write_file_durable(&d.join("00000000000000000099.log.cleaned"), b"half");
    disk.write_file_durable(&d.join("00000000000000000000.index.tmp"), b"tmp");
    disk.write_file_durable(&d.join("NOTES.txt"), b"operator notes");
    let log = open(&st, small(), 0);
    assert_eq!(log.open_report().finished_operations, 3);
    let names = disk.list(d).unwrap();
    assert!(names.contains(&"NOTES.txt".to_string()));
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with(".deleted") || n.ends_with(".cleaned") || n.ends_with(".tmp"))
    );
    assert_eq!(read_all(&log, 0, 160).len(), 160);
}

#[test]
fn failed_fsync_poisons_the_partition() {
    let (disk, st) = sim();
    let mut log = open(&st, small(), 0);
    log.append(&mut numbered("a", 1, 1, 0), -1, 0).unwrap();
    disk.fail_sync_in(1);
    let err = log.flush(0).unwrap_err();
    assert!(matches!(err, LogError::Poisoned { .. }), "{err}");
    let err = log.append(&mut numbered("b", 1, 1, 0), -1, 0).unwrap_err();
    assert!(matches!(err, LogError::Poisoned { .. }));
    assert!(err.to_string().contains("fsync"), "{err}");
    assert!(!err.is_retryable());
    assert!(log.poisoned().is_some());
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let (_disk, st) = sim();
    let mut log = open(&st, config(&[("max.message.bytes", "2000")]), 0);
    let mut big = numbered("big", 300, 1, 0);
    assert!(matches!(
        log.append(&mut big, -1, 0),
        Err(LogError::RecordTooLarge { .. })
    ));
    let mut good = numbered("ok", 2, 2, 0);
    let mut corrupt = good.clone();
    let n = corrupt.len();
    corrupt[n - 1] ^= 1;
    assert!(matches!(
        log.append(&mut corrupt, -1, 0),
        Err(LogError::InvalidBatch(_))
    ));
    let mut truncated = good[..good.len() - 3].to_vec();
    assert!(matches!(
        log.append(&mut truncated, -1, 0),
        Err(LogError::InvalidBatch(_))
    ));
    // Two good batches and a bad one in one request: nothing is appended.
    let mut mixed = good.clone();
    mixed.extend_from_slice(&corrupt);
    assert!(log.append(&mut mixed, -1, 0).is_err());
    assert_eq!(log.log_end_offset(), 0);
    log.append(&mut good, -1, 0).unwrap();
    assert_eq!(log.log_end_offset(), 2);
}

#[test]
fn a_full_disk_fails_the_append_and_loses_nothing() {
    let (disk, st) = sim();
    let mut log = open(&st, small(), 0);
    log.append(&mut numbered("a", 2, 2, 0), -1, 0).unwrap();
    disk.set_space_left(Some(10));
    let err = log.append(&mut numbered("b", 2, 2, 0), -1, 0).unwrap_err();
    assert!(err.is_disk_full() && err.is_retryable(), "{err}");
    disk.set_space_left(None);
    log.append(&mut numbered("c", 2, 2, 0), -1, 0).unwrap();
    log.set_high_watermark(4);
    assert_eq!(values(&read_all(&log, 0, 4)), ["a:0", "a:1", "c:0", "c:1"]);
    log.flush(0).unwrap();
    disk.crash(CrashMode::DropUnsynced);
    let log = open(&st, small(), 0);
    assert_eq!(log.log_end_offset(), 4);
}

#[test]
fn log_append_time_is_stamped_and_checksummed() {
    let (_disk, st) = sim();
    let mut log = open(
        &st,
        config(&[("message.timestamp.type", "LogAppendTime")]),
        0,
    );
    let info = log
        .append(&mut numbered("a", 3, 3, 5), -1, 777_000)
        .unwrap();
    assert_eq!(info.log_append_time, 777_000);
    log.set_high_watermark(3);
    let s = log.read(0, 1 << 20, 3).unwrap().unwrap();
    let bytes = s.read_to_vec().unwrap();
    let h = eddy_core::batch::header::verify_crc(&bytes).unwrap();
    assert_eq!(h.max_timestamp, 777_000);
    assert_eq!(
        h.attributes.timestamp_type(),
        eddy_core::batch::TimestampType::LogAppendTime
    );
}

#[test]
fn compaction_keeps_the_newest_value_per_key_and_its_offset() {
    let (_disk, st) = sim();
    let c = config(&[
        ("cleanup.policy", "compact"),
        ("segment.bytes", "1024"),
        ("delete.retention.ms", "100000"),
        ("file.delete.delay.ms", "0"),
    ]);
    let mut log = open(&st, c, 0);
    // 10 keys, each written 10 times; key k3 deleted (tombstone) at the end.
    let mut expected = std::collections::BTreeMap::new();
    for round in 0..10 {
        for k in 0..10 {
            let key = format!("k{k}");
            let val = format!("v{round}");
            let info = log
                .append(
                    &mut batch(
                        &[(Some(key.as_bytes()), Some(val.as_bytes()))],
                        1000,
                        Compression::None,
                    ),
                    -1,
                    0,
                )
                .unwrap();
            expected.insert(key, (info.base_offset, Some(val)));
        }
    }
    let info = log
        .append(
            &mut batch(&[(Some(b"k3"), None)], 1000, Compression::Lz4),
            -1,
            0,
        )
        .unwrap();
    expected.insert("k3".into(), (info.base_offset, None));
    // Filler so the records above sit in closed segments.
    for _ in 0..20 {
        log.append(
            &mut batch(&[(Some(b"filler"), Some(b"f"))], 1000, Compression::None),
            -1,
            0,
        )
        .unwrap();
    }
    let end = log.log_end_offset();
    log.set_high_watermark(end);
    let before: Vec<Rec> = read_all(&log, 0, end);
    assert!(log.compaction_due(2000));
    let report = log.compact(2000).unwrap();
    assert!(report.records_removed >= 90, "{report:?}");
    let after: Vec<Rec> = read_all(&log, 0, end);
    assert!(after.len() < before.len());
    // Each surviving record is the newest for its key, at its original offset.
    for k in 0..10 {
        let key = format!("k{k}");
        let (off, val) = expected[&key].clone();
        let got: Vec<&Rec> = after
            .iter()
            .filter(|r| r.1.as_deref() == Some(key.as_bytes()))
            .collect();
        assert_eq!(got.len(), 1, "{key}: {got:?}");
        assert_eq!(got[0].0, off);
        assert_eq!(
            got[0]
                .2
                .as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            val
        );
    }
    assert_eq!(log.log_end_offset(), end, "offsets are kept");
    // Tombstones go once delete.retention.ms has passed.
    let report = log.compact(1000 + 100_001).unwrap();
    assert!(report.records_removed >= 1, "{report:?}");
    let after: Vec<Rec> = read_all(&log, 0, end);
    assert!(!after.iter().any(|r| r.1.as_deref() == Some(b"k3")));
    // And it all survives a crash and reopen.
    drop(log);
    let log = open(&st, small(), 0);
    let reopened = read_all(&log, 0, end);
    assert_eq!(reopened, after);
}

#[test]
fn a_crash_mid_compaction_finishes_or_undoes_the_swap() {
    let (disk, st) = sim();
    let c = config(&[
        ("cleanup.policy", "compact"),
        ("segment.bytes", "1024"),
        ("file.delete.delay.ms", "0"),
    ]);
    let mut log = open(&st, c.clone(), 0);
    for round in 0..20 {
        for k in 0..4 {
            let key = format!("k{k}");
            let val = format!("v{round}");
            log.append(
                &mut batch(
                    &[(Some(key.as_bytes()), Some(val.as_bytes()))],
                    0,
                    Compression::None,
                ),
                -1,
                0,
            )
            .unwrap();
        }
    }
    let end = log.log_end_offset();
    log.set_high_watermark(end);
    log.flush(0).unwrap();
    let before = read_all(&log, 0, end);
    // Fail at each write or sync compaction makes; after a crash, the log reads either
    // the old records or the compacted ones, never a mix that loses a key's value.
    let newest = |recs: &[Rec]| {
        let mut m = std::collections::BTreeMap::new();
        for r in recs {
            m.insert(r.1.clone(), r.2.clone());
        }
        m
    };
    let want = newest(&before);
    for n in 1..12u64 {
        let (disk2, st2) = (disk.clone(), st.clone());
        let mut l = open(&st2, c.clone(), 0);
        l.set_high_watermark(end);
        disk2.fail_sync_in(n);
        let _ = l.compact(0);
        drop(l);
        disk2.clear_faults();
        disk2.crash(CrashMode::DropUnsynced);
        let l = open(&st2, c.clone(), 0);
        let got = read_all(&l, 0, end);
        assert_eq!(newest(&got), want, "sync failure {n}");
        assert_eq!(l.log_end_offset(), end);
    }
}

#[test]
fn a_torn_tail_below_the_recovery_point_is_cut_and_later_segments_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let st: Arc<dyn Storage> = Arc::new(FsStorage);
    let dir = tmp.path().join("t-0");
    let mut log = PartitionLog::open(st.clone(), &dir, small(), 0).unwrap();
    for i in 0..60 {
        log.append(&mut numbered(&format!("r{i}"), 10, 3, i), -1, 0)
            .unwrap();
    }
    assert!(log.segment_count() > 2);
    log.close(0).unwrap();
    // A disk that lied about a sync: bytes past the first segment's data.
    let first = dir.join("00000000000000000000.log");
    let mut bytes = std::fs::read(&first).unwrap();
    bytes.extend_from_slice(&[0x5A; 77]);
    std::fs::write(&first, &bytes).unwrap();
    let log = PartitionLog::open(st, &dir, small(), 0).expect("opens, recovering that segment");
    assert_eq!(log.open_report().truncated_bytes, 77);
    assert_eq!(log.log_end_offset(), 600, "the segments after it stay");
    assert_eq!(read_all(&log, 0, 600).len(), 600);
}
