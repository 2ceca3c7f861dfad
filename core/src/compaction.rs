//! Log compaction: keep the newest record per key in closed segments.
//!
//! For `cleanup.policy` containing `compact`, the cleanable part of the log is the
//! run of closed segments that lies below the high watermark and whose records are
//! older than `min.compaction.lag.ms`. A map of key → newest offset is built over it;
//! each of its segments is rewritten without the records a newer one supersedes:
//! - offsets are kept (a rewritten batch keeps its base offset; gaps are allowed);
//! - tombstones (null values) are dropped once their segment is older than
//!   `delete.retention.ms`, so consumers had that long to see the delete;
//! - records without a key, and control batches, are kept.
//!
//! A segment is replaced crash-safely: the new log is written as `.cleaned`, synced,
//! renamed to `.swap` (complete), the old files are renamed to `.deleted`, and the
//! `.swap` is renamed into place. Recovery removes `.cleaned` files (undo) and
//! renames `.swap` files into place (finish). Readers hold the old file open, and see
//! either the old segment or the new one, never a mix.

use std::collections::HashMap;

use crate::batch::header::BatchHeader;
use crate::batch::{Batch, BatchBuilder, BatchOptions, TimestampType};
use crate::layout::{FileState, SegmentFile};
use crate::log::{LogError, PartitionLog, io_err, stamp_log_append_time};
use crate::segment::Segment;
use crate::storage::OpenMode;

/// What a compaction pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Segments rewritten.
    pub segments_cleaned: usize,
    /// Records dropped (superseded values and expired tombstones).
    pub records_removed: u64,
    /// Bytes of the rewritten segments before.
    pub bytes_before: u64,
    /// ... and after.
    pub bytes_after: u64,
}

/// The largest decompressed batch compaction will decode.
pub const DECOMPRESSED_BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

impl PartitionLog {
    /// The closed segments compaction may rewrite now (their bases, oldest first).
    fn cleanable_bases(&self, now_ms: i64) -> Vec<u64> {
        let lag = self.config().min_compaction_lag_ms.min(i64::MAX as u64) as i64;
        let hw = self.high_watermark();
        let segs = self.segments();
        let closed = segs.len().saturating_sub(1);
        segs.values()
            .take(closed)
            .take_while(|s| {
                s.next_offset() <= hw && s.max_timestamp() <= now_ms.saturating_sub(lag)
            })
            .map(Segment::base)
            .collect()
    }

    /// Share of the cleanable bytes that were never compacted (Kafka's dirty ratio).
    pub fn dirty_ratio(&self, now_ms: i64) -> f64 {
        let bases = self.cleanable_bases(now_ms);
        let (mut total, mut dirty) = (0u64, 0u64);
        for b in bases {
            if let Some(s) = self.segments().get(&b) {
                total += s.size();
                if s.next_offset() > self.cleaned_offset {
                    dirty += s.size();
                }
            }
        }
        if total == 0 {
            0.0
        } else {
            dirty as f64 / total as f64
        }
    }

    /// Whether `cleanup.policy` has `compact` and the dirty ratio reached
    /// `min.cleanable.dirty.ratio`.
    pub fn compaction_due(&self, now_ms: i64) -> bool {
        self.config().cleanup_policy.compact
            && self.dirty_ratio(now_ms) > 0.0
            && self.dirty_ratio(now_ms) >= self.config().min_cleanable_dirty_ratio
    }

    /// Compacts the cleanable segments (see the module docs).
    pub fn compact(&mut self, now_ms: i64) -> Result<CompactionReport, LogError> {
        self.check_writable()?;
        let mut report = CompactionReport::default();
        if !self.config().cleanup_policy.compact {
            return Ok(report);
        }
        let bases = self.cleanable_bases(now_ms);
        if bases.is_empty() {
            return Ok(report);
        }
        // Key → newest offset over the cleanable range.
        let mut newest: HashMap<Vec<u8>, u64> = HashMap::new();
        for &base in &bases {
            for_each_batch(self, base, |batch| {
                if batch.header.attributes.is_control() {
                    return Ok(());
                }
                for r in batch.records(DECOMPRESSED_BATCH_BYTES_MAX)? {
                    if let Some(k) = r.key {
                        let off = batch.header.base_offset + r.offset_delta as u64;
                        newest.insert(k, off);
                    }
                }
                Ok(())
            })?;
        }
        let delete_retention = self.config().delete_retention_ms.min(i64::MAX as u64) as i64;
        let mut last_cleaned = self.cleaned_offset;
        for &base in &bases {
            let Some(seg) = self.segments().get(&base) else {
                continue;
            };
            let tombstones_expire = seg.max_timestamp() < now_ms.saturating_sub(delete_retention);
            let size_before = seg.size();
            let seg_next = seg.next_offset();
            let mut out: Vec<u8> = Vec::with_capacity(size_before as usize);
            let mut removed = 0u64;
            for_each_batch(self, base, |batch| {
                let h = batch.header;
                if h.attributes.is_control() {
                    out.extend_from_slice(batch.bytes);
                    return Ok(());
                }
                let records = batch.records(DECOMPRESSED_BATCH_BYTES_MAX)?;
                let keep: Vec<bool> = records
                    .iter()
                    .map(|r| {
                        let off = h.base_offset + r.offset_delta as u64;
                        match &r.key {
                            None => true,
                            Some(k) => {
                                newest.get(k) == Some(&off)
                                    && !(r.value.is_none() && tombstones_expire)
                            }
                        }
                    })
                    .collect();
                let kept = keep.iter().filter(|k| **k).count();
                removed += (records.len() - kept) as u64;
                if kept == records.len() {
                    out.extend_from_slice(batch.bytes);
                } else if kept > 0 {
                    let mut b = BatchBuilder::new(BatchOptions {
                        base_offset: h.base_offset,
                        partition_leader_epoch: h.partition_leader_epoch,
                        compression: h.attributes.compression()?,
                        timestamp_type: h.attributes.timestamp_type(),
                        producer_id: h.producer_id,
                        producer_epoch: h.producer_epoch,
                        base_sequence: h.base_sequence,
                        transactional: h.attributes.is_transactional(),
                        control: false,
                    });
                    for (r, _) in records.iter().zip(&keep).filter(|(_, k)| **k) {
                        b.push_with_offset_delta(
                            r.offset_delta as u32,
                            h.base_timestamp.saturating_add(r.timestamp_delta),
                            r.key.as_deref(),
                            r.value.as_deref(),
                            &r.headers,
                        )?;
                    }
                    let mut rebuilt = b.build()?;
                    if h.attributes.timestamp_type() == TimestampType::LogAppendTime {
                        // The builder takes the records' create times; the batch's
                        // timestamp is the time it was appended, and stays (as Kafka's
                        // cleaner keeps it).
                        let built = BatchHeader::parse(&rebuilt)?;
                        stamp_log_append_time(&mut rebuilt, &built, h.max_timestamp);
                    }
                    out.extend_from_slice(&rebuilt);
                }
                Ok(())
            })?;
            last_cleaned = last_cleaned.max(seg_next);
            if removed == 0 {
                continue;
            }
            self.swap_in(base, &out, now_ms)?;
            report.segments_cleaned += 1;
            report.records_removed += removed;
            report.bytes_before += size_before;
            report.bytes_after += out.len() as u64;
        }
        self.cleaned_offset = last_cleaned;
        Ok(report)
    }

    /// Replaces segment `base` with `bytes`, crash-safely (see the module docs).
    fn swap_in(&mut self, base: u64, bytes: &[u8], now_ms: i64) -> Result<(), LogError> {
        let st = self.storage().clone();
        let dir = self.dir().to_path_buf();
        let cleaned = Segment::path(&dir, base, SegmentFile::Log, FileState::Cleaned);
        let swap = Segment::path(&dir, base, SegmentFile::Log, FileState::Swap);
        let f = st
            .open(&cleaned, OpenMode::OpenOrCreate)
            .map_err(io_err("create compaction output"))?;
        f.set_len(0)
            .and_then(|()| f.write_at(bytes, 0))
            .and_then(|()| f.sync_data())
            .map_err(io_err("write compaction output"))?;
        drop(f);
        st.rename(&cleaned, &swap)
            .map_err(io_err("mark compaction output complete"))?;
        st.sync_dir(&dir)
            .map_err(io_err("sync the partition directory"))?;
        // From here on the swap is the truth: a crash finishes it on open.
        let old = self.segments_mut().remove(&base).ok_or_else(|| {
            LogError::Corrupt(format!("segment {base} vanished during compaction"))
        })?;
        let renamed = old
            .rename_to_deleted(&*st)
            .map_err(io_err("retire the old segment"))?;
        drop(old);
        st.rename(
            &swap,
            &Segment::path(&dir, base, SegmentFile::Log, FileState::Live),
        )
        .map_err(io_err("swap in compaction output"))?;
        st.sync_dir(&dir)
            .map_err(io_err("sync the partition directory"))?;
        // Readers may still hold the old files open; they go after file.delete.delay.ms.
        let due =
            now_ms.saturating_add(self.config().file_delete_delay_ms.min(i64::MAX as u64) as i64);
        self.pending_deletes
            .extend(renamed.into_iter().map(|p| (due, p)));
        let config = self.config().clone();
        let (seg, _) = Segment::open(&*st, &dir, base, &config, false, false, now_ms)?;
        self.segments_mut().insert(base, seg);
        Ok(())
    }
}

/// Calls `f` for every batch of segment `base`, with CRCs checked, one batch in
/// memory at a time.
fn for_each_batch(
    log: &PartitionLog,
    base: u64,
    mut f: impl FnMut(&Batch<'_>) -> Result<(), LogError>,
) -> Result<(), LogError> {
    let Some(seg) = log.segments().get(&base) else {
        return Ok(());
    };
    let mut buf = Vec::new();
    for loc in seg
        .headers()
        .map_err(io_err("read a segment for compaction"))?
    {
        buf.resize(loc.header.total_len() as usize, 0);
        seg.log_file()
            .read_exact_at(&mut buf, loc.position)
            .map_err(io_err("read a segment for compaction"))?;
        f(&Batch::new_checked(&buf)?)?;
    }
    Ok(())
}
