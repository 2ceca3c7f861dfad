//! The partition log: an ordered set of segments with offsets, a high watermark,
//! leader epochs, durability, recovery, retention and truncation.
//!
//! One owner mutates it (`&mut self`); readers get [`FileSlice`]s, byte ranges of
//! whole batches that stay readable after the lock is released, even if retention
//! deletes the segment meanwhile. Nothing here keeps time: callers pass `now_ms`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::header::{self, BatchHeader, HEADER_LEN};
use crate::batch::record::RECORD_BYTES_MIN;
use crate::batch::{Batch, BatchError, Compression, TimestampType, check_record_section};
use crate::checkpoint;
use crate::compaction::DECOMPRESSED_BATCH_BYTES_MAX;
use crate::config::LogConfig;
use crate::layout::{self, FileKind, FileState, SegmentFile};
use crate::retention::{self, SegmentSummary};
pub use crate::segment::FileSlice;
use crate::segment::{RecoveryReport, Segment, SegmentError};
use crate::storage::{Storage, StorageFile};

/// How often the recovery point and high watermark are checkpointed without a
/// roll or close (Kafka's `log.flush.offset.checkpoint.interval.ms`).
pub const CHECKPOINT_INTERVAL_MS: i64 = 60_000;

pub(crate) fn warn(args: std::fmt::Arguments<'_>) {
    ::log::warn!("{args}");
}

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The disk failed. Writes that fail this way leave the log as it was.
    #[error("storage error while trying to {op}: {source}")]
    Io {
        /// What the log was doing.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
    /// An fsync failed earlier: the log refuses writes until it is reopened.
    #[error(
        "partition log {dir} is stopped after a failed fsync ({reason}); restart the node after checking the disk"
    )]
    Poisoned {
        /// The partition directory.
        dir: String,
        /// The original failure.
        reason: String,
    },
    /// The batch bytes are malformed.
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// A batch is over `max.message.bytes`.
    #[error("record batch of {size} bytes is over max.message.bytes ({max})")]
    RecordTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The offset is outside `[log start, log end]`.
    #[error("offset {offset} is out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        /// What was asked.
        offset: u64,
        /// Log start offset.
        log_start: u64,
        /// Log end offset.
        log_end: u64,
    },
    /// A replicated batch does not continue the log.
    #[error("replicated batch starts at offset {got}, the log ends at {expected}")]
    NonContiguous {
        /// Where it started.
        got: u64,
        /// The log end offset.
        expected: u64,
    },
    /// Data on disk is not what the format says and recovery cannot fix it.
    #[error("corrupt log: {0}")]
    Corrupt(String),
    /// Appended records were truncated away (the partition changed leader) before an
    /// fsync covered them: they are not in the log. Retry with the current leader.
    #[error(
        "records {base_offset}..={last_offset} were truncated away (a leader change) before they were synced"
    )]
    TruncatedBeforeSync {
        /// Offset of the first record.
        base_offset: u64,
        /// Offset of the last record.
        last_offset: u64,
    },
}

impl LogError {
    /// Whether trying again later may succeed (a full disk may drain; corrupt input won't).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LogError::Io { .. } | LogError::TruncatedBeforeSync { .. }
        )
    }

    /// Whether the disk ran out of space.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, LogError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull)
    }
}

pub(crate) fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> LogError {
    move |source| LogError::Io { op, source }
}

impl From<SegmentError> for LogError {
    fn from(e: SegmentError) -> Self {
        match e {
            SegmentError::Io(source) => LogError::Io {
                op: "read a segment",
                source,
            },
            SegmentError::Corrupt(s) => LogError::Corrupt(s),
            SegmentError::Batch(b) => LogError::InvalidBatch(b),
        }
    }
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Offset of the last record.
    pub last_offset: u64,
    /// Largest timestamp appended.
    pub max_timestamp: i64,
    /// The broker's time when the timestamp type is `LogAppendTime`, else -1.
    pub log_append_time: i64,
    /// Records appended.
    pub records: u64,
    /// Bytes appended.
    pub bytes: u64,
}

/// What opening a log found and fixed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Segments opened.
    pub segments: usize,
    /// Segments re-read batch by batch.
    pub recovered_segments: usize,
    /// Batches re-read.
    pub recovered_batches: u64,
    /// Bytes cut from torn or corrupt tails (and segments dropped after them).
    pub truncated_bytes: u64,
    /// Leftover files of interrupted deletes, compactions and rebuilds cleaned up.
    pub finished_operations: usize,
}

/// What a group-commit fsync has to sync, taken from the log under its lock.
#[derive(Debug)]
pub struct SyncJob {
    files: Vec<Arc<dyn StorageFile>>,
    up_to: u64,
    /// The log's truncation count when the job was taken.
    truncations: u64,
}

impl SyncJob {
    /// Syncs the files (call without holding the log's lock).
    pub fn run(&self) -> io::Result<()> {
        for f in &self.files {
            f.sync_data()?;
        }
        Ok(())
    }

    /// Offsets below this are durable once [`SyncJob::run`] succeeds.
    pub fn up_to(&self) -> u64 {
        self.up_to
    }
}

/// One partition's log.
#[derive(Debug)]
pub struct PartitionLog {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    config: LogConfig,
    segments: BTreeMap<u64, Segment>,
    log_start_offset: u64,
    high_watermark: u64,
    /// Offsets below this are synced (log and indexes) and covered by the checkpoint
    /// once it is written.
    recovery_point: u64,
    /// Offsets below this are synced in the log file (may run ahead of the recovery point).
    durable_offset: u64,
    /// (leader epoch, first offset of that epoch), increasing.
    epochs: Vec<(i32, u64)>,
    poisoned: Option<String>,
    unflushed_records: u64,
    first_unflushed_ms: Option<i64>,
    last_checkpoint_ms: i64,
    pub(crate) pending_deletes: Vec<(i64, PathBuf)>,
    open_report: OpenReport,
    /// Offsets below this were compacted (the cleaner's checkpoint, in memory).
    pub(crate) cleaned_offset: u64,
    /// Truncations so far: an fsync or a waiter that started before one cannot
    /// tell its records from those appended after it.
    truncations: u64,
    /// Where the latest truncation cut: records at or above it went.
    truncated_to: u64,
}

impl PartitionLog {
    /// Opens the log in `dir`, creating it if missing, and recovers it.
    ///
    /// Interrupted deletes are finished, interrupted compactions finished or undone,
    /// every batch after the recovery checkpoint is re-checked (a torn or corrupt tail
    /// is cut), and indexes that are missing or do not fit their log are rebuilt.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        config: LogConfig,
        now_ms: i64,
    ) -> Result<PartitionLog, LogError> {
        let st = &*storage;
        if !st.exists(dir) {
            st.create_dir_all(dir)
                .map_err(io_err("create the partition directory"))?;
            if let Some(parent) = dir.parent() {
                st.sync_dir(parent)
                    .map_err(io_err("sync the data directory"))?;
            }
        }
        let mut report = OpenReport::default();
        let mut bases = finish_interrupted(st, dir, &mut report)?;
        let recovery_point = checkpoint::read_offset(st, dir, layout::RECOVERY_POINT_CHECKPOINT)
            .map_err(io_err("read the recovery checkpoint"))?
            .unwrap_or(0);
        let stored_start = checkpoint::read_offset(st, dir, layout::LOG_START_CHECKPOINT)
            .map_err(io_err("read the log start checkpoint"))?;
        let stored_hw = checkpoint::read_offset(st, dir, layout::HIGH_WATERMARK_CHECKPOINT)
            .map_err(io_err("read the high watermark checkpoint"))?;
        let epochs = checkpoint::read_epochs(st, dir)
            .map_err(io_err("read the leader epoch checkpoint"))?
            .unwrap_or_default();

        bases.sort_unstable();
        // Recover from the segment holding the recovery point onwards.
        let first_to_recover = bases
            .iter()
            .rposition(|&b| b <= recovery_point)
            .unwrap_or(0);
        let mut segments = BTreeMap::new();
        let mut dropped_after_corruption = false;
        let mut recovered = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let path = Segment::path(dir, base, SegmentFile::Log, FileState::Live);
            if dropped_after_corruption {
                let size = st
                    .open(&path, crate::storage::OpenMode::Existing)
                    .and_then(|f| f.len())
                    .unwrap_or(0);
                report.truncated_bytes += size;
                delete_segment_files(st, dir, base)
                    .map_err(io_err("delete a segment after a corrupt one"))?;
                continue;
            }
            let last = i + 1 == bases.len();
            let mut recover = i >= first_to_recover;
            // After a clean close the recovery point is the end of the last segment:
            // a walk of its tail confirms that, and no batch needs re-reading.
            let mut clean = None;
            if recover
                && last
                && i == first_to_recover
                && recovery_point > 0
                && let Ok((seg, rep)) = Segment::open(st, dir, base, &config, true, false, now_ms)
                && seg.next_offset() == recovery_point
            {
                clean = Some((seg, rep));
                recover = false;
            }
            let (seg, rep): (Segment, RecoveryReport) = match clean {
                Some(opened) => opened,
                None => match Segment::open(st, dir, base, &config, last, recover, now_ms) {
                    Ok(opened) => opened,
                    // Below the recovery point a segment should be whole; if it is not
                    // (a disk that lied about a sync), recover it rather than refuse
                    // to start.
                    Err(SegmentError::Corrupt(reason)) if !recover => {
                        warn(format_args!(
                            "{}: {reason}; re-reading segment {base} batch by batch",
                            dir.display()
                        ));
                        recover = true;
                        Segment::open(st, dir, base, &config, last, true, now_ms)?
                    }
                    Err(e) => return Err(e.into()),
                },
            };
            if recover {
                recovered.push(base);
                report.recovered_segments += 1;
                report.recovered_batches += rep.batches;
                report.truncated_bytes += rep.truncated_bytes;
                // A cut segment breaks the chain unless the next segment starts right
                // where it now ends: then only a torn tail past its data went.
                let continuous = bases.get(i + 1) == Some(&seg.next_offset());
                if rep.truncated_bytes > 0 && !last && !continuous {
                    warn(format_args!(
                        "{}: segment {base} had a corrupt batch; dropping the segments after it",
                        dir.display()
                    ));
                    dropped_after_corruption = true;
                }
            }
            segments.insert(base, seg);
        }
        if dropped_after_corruption {
            st.sync_dir(dir)
                .map_err(io_err("sync the partition directory"))?;
            // The cut segment becomes the active one.
            if let Some((&base, _)) = segments.last_key_value() {
                segments.remove(&base);
                let (seg, _) = Segment::open(st, dir, base, &config, true, false, now_ms)?;
                segments.insert(base, seg);
            }
        }
        if segments.is_empty() {
            let base = stored_start.unwrap_or(0);
            let seg = Segment::create(st, dir, base, &config, now_ms)
                .map_err(io_err("create a segment"))?;
            segments.insert(base, seg);
        }
        report.segments = segments.len();
        let first_base = segments.first_key_value().map_or(0, |(b, _)| *b);
        let log_end = segments
            .last_key_value()
            .map_or(0, |(_, s)| s.next_offset());
        let log_start_offset = stored_start
            .unwrap_or(first_base)
            .clamp(first_base, log_end);
        let mut epochs = epochs;
        epochs.retain(|&(_, start)| start < log_end || start == 0);
        let mut log = PartitionLog {
            storage,
            dir: dir.to_path_buf(),
            config,
            segments,
            log_start_offset,
            high_watermark: stored_hw.unwrap_or(0).clamp(log_start_offset, log_end),
            recovery_point: 0,
            durable_offset: 0,
            epochs,
            poisoned: None,
            unflushed_records: 0,
            first_unflushed_ms: None,
            last_checkpoint_ms: now_ms,
            pending_deletes: Vec::new(),
            open_report: report,
            cleaned_offset: log_start_offset,
            truncations: 0,
            truncated_to: 0,
        };
        // Whatever recovery read back may still sit only in the page cache: sync it,
        // then record that no scan is needed next time.
        for base in recovered {
            if let Some(seg) = log.segments.get(&base) {
                seg.log_file()
                    .sync_data()
                    .map_err(io_err("sync a recovered segment"))?;
            }
        }
        log.recovery_point = log_end;
        log.durable_offset = log_end;
        match stored_start {
            // A crash lost records below a log start that was checkpointed (after
            // DeleteRecords): restart the log there, as Kafka's LogLoader does, rather
            // than hand out those offsets again.
            Some(start) if start > log_end => {
                warn(format_args!(
                    "{}: the log ends at {log_end}, below its log start offset {start}; restarting it empty at {start}",
                    dir.display()
                ));
                log.truncate_fully_and_start_at(start, now_ms)?;
            }
            _ => log
                .write_checkpoints()
                .map_err(io_err("write checkpoints"))?,
        }
        Ok(log)
    }

    /// What [`PartitionLog::open`] found.
    pub fn open_report(&self) -> &OpenReport {
        &self.open_report
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The topic config in force.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the config (alter configs). Takes effect from the next append / check.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    /// First offset still in the log.
    pub fn log_start_offset(&self) -> u64 {
        self.log_start_offset
    }

    /// Offset the next record will get.
    pub fn log_end_offset(&self) -> u64 {
        self.active().next_offset()
    }

    /// Offsets below this are committed (readable by consumers).
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    /// Offsets below this have been fsynced.
    pub fn durable_offset(&self) -> u64 {
        self.durable_offset
    }

    /// How many truncations the log has had, and the offset the latest one cut to
    /// (records at or above it went; a full truncation counts as a cut to 0).
    pub fn truncations(&self) -> (u64, u64) {
        (self.truncations, self.truncated_to)
    }

    /// Offsets below this need no scan after a crash (once checkpointed).
    pub fn recovery_point(&self) -> u64 {
        self.recovery_point
    }

    /// Bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(Segment::size).sum()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Summaries of every segment, oldest first (for retention and plugins).
    pub fn segment_summaries(&self) -> Vec<SegmentSummary> {
        self.segments
            .values()
            .map(|s| SegmentSummary {
                base_offset: s.base(),
                next_offset: s.next_offset(),
                size: s.size(),
                max_timestamp: s.max_timestamp(),
            })
            .collect()
    }

    /// Why writes are refused, if they are.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    fn active(&self) -> &Segment {
        match self.segments.last_key_value() {
            Some((_, s)) => s,
            None => unreachable!("a partition log always has an active segment"),
        }
    }

    fn active_mut(&mut self) -> &mut Segment {
        match self.segments.last_entry() {
            Some(e) => e.into_mut(),
            None => unreachable!("a partition log always has an active segment"),
        }
    }

    pub(crate) fn check_writable(&self) -> Result<(), LogError> {
        match &self.poisoned {
            Some(reason) => Err(LogError::Poisoned {
                dir: self.dir.display().to_string(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn poison(&mut self, op: &'static str, e: &dyn std::fmt::Display) -> LogError {
        let reason = format!("{op}: {e}");
        ::log::error!("{}: {reason}; refusing further writes", self.dir.display());
        self.poisoned = Some(reason.clone());
        LogError::Poisoned {
            dir: self.dir.display().to_string(),
            reason,
        }
    }

    /// Appends one or more batches as the leader: checks them ([`validate_produce`]),
    /// then [`PartitionLog::append_validated`].
    pub fn append(
        &mut self,
        batches: &mut [u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let checked = validate_produce(batches, self.config.max_message_bytes)?;
        self.append_validated(batches, checked, leader_epoch, now_ms)
    }

    /// Appends batches that [`validate_produce`] accepted: assigns offsets from the
    /// log end, stamps `leader_epoch`, applies `message.timestamp.type`. `batches`
    /// is rewritten in place; the bytes written are the bytes later served.
    ///
    /// The check runs without the log, so a server can do it before taking the
    /// partition's lock; `checked` must come from these same bytes.
    pub fn append_validated(
        &mut self,
        batches: &mut [u8],
        checked: Validated,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        self.check_writable()?;
        assert_eq!(checked.bytes, batches.len() as u64, "validated other bytes");
        let mut next = self.log_end_offset();
        let log_append = self.config.message_timestamp_type == TimestampType::LogAppendTime;
        let mut pos = 0usize;
        while pos < batches.len() {
            let h = BatchHeader::parse(&batches[pos..])?;
            let end = pos + h.total_len() as usize;
            let batch = &mut batches[pos..end];
            header::set_base_offset(batch, next);
            header::set_partition_leader_epoch(batch, leader_epoch);
            if log_append {
                stamp_log_append_time(batch, &h, now_ms);
            }
            next += h.record_count as u64;
            pos = end;
        }
        let mut info = self.append_checked(batches, now_ms)?;
        if log_append {
            info.log_append_time = now_ms;
        }
        Ok(info)
    }

    /// Appends batches fetched from the leader, keeping their offsets and epochs.
    pub fn append_as_follower(
        &mut self,
        batches: &[u8],
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        self.check_writable()?;
        let mut expected = self.log_end_offset();
        let mut pos = 0usize;
        while pos < batches.len() {
            let end = pos + whole_batch_len(&batches[pos..])? as usize;
            let h = header::verify_crc(&batches[pos..end])?;
            if h.base_offset < expected {
                return Err(LogError::NonContiguous {
                    got: h.base_offset,
                    expected,
                });
            }
            expected = h.next_offset();
            pos = end;
        }
        self.append_checked(batches, now_ms)
    }

    /// Writes batches already checked and stamped.
    fn append_checked(&mut self, batches: &[u8], now_ms: i64) -> Result<AppendInfo, LogError> {
        let mut info = AppendInfo {
            base_offset: u64::MAX,
            last_offset: 0,
            max_timestamp: crate::segment::NO_TIMESTAMP,
            log_append_time: -1,
            records: 0,
            bytes: 0,
        };
        let mut pos = 0usize;
        while pos < batches.len() {
            let h = BatchHeader::parse(&batches[pos..])?;
            let bytes = &batches[pos..pos + h.total_len() as usize];
            if self
                .active()
                .should_roll(&self.config, bytes.len() as u64, h.last_offset(), now_ms)
            {
                self.roll(h.base_offset, now_ms)?;
            }
            if h.partition_leader_epoch >= 0
                && self
                    .epochs
                    .last()
                    .is_none_or(|&(e, _)| h.partition_leader_epoch > e)
            {
                let mut epochs = self.epochs.clone();
                epochs.push((h.partition_leader_epoch, h.base_offset));
                checkpoint::write_epochs(&*self.storage, &self.dir, &epochs)
                    .map_err(io_err("write the leader epoch checkpoint"))?;
                self.epochs = epochs;
            }
            self.active_mut()
                .append(bytes, &h)
                .map_err(io_err("append to the log"))?;
            info.base_offset = info.base_offset.min(h.base_offset);
            info.last_offset = h.last_offset();
            info.max_timestamp = info.max_timestamp.max(h.max_timestamp);
            info.records += h.record_count as u64;
            info.bytes += bytes.len() as u64;
            pos += bytes.len();
        }
        self.unflushed_records += info.records;
        self.first_unflushed_ms.get_or_insert(now_ms);
        Ok(info)
    }

    /// Starts a new active segment at `base` (the old one is sealed and synced).
    pub fn roll(&mut self, base: u64, now_ms: i64) -> Result<(), LogError> {
        self.check_writable()?;
        let base = base.max(self.log_end_offset());
        if self.active().is_empty() && self.active().base() == base {
            return Ok(());
        }
        // Seal: the sealed segment is synced whole, so the recovery point can pass it.
        let active = self.active_mut();
        if let Err(e) = active.sync().and_then(|()| active.seal()) {
            return Err(self.poison("sync a segment on roll", &e));
        }
        let empty = self.active().is_empty().then(|| self.active().base());
        let seg = match Segment::create(&*self.storage, &self.dir, base, &self.config, now_ms) {
            Ok(seg) => seg,
            // The old segment is sealed and there is no new one: no way to append
            // until the log is reopened.
            Err(e) => return Err(self.poison("create a new segment", &e)),
        };
        self.segments.insert(base, seg);
        if let Some(old) = empty {
            // An empty active segment (after truncation) is replaced, not kept, once
            // its successor exists. (A crash before the next directory sync may keep
            // its files: an empty segment, which open loads as such.)
            if let Some(seg) = self.segments.remove(&old) {
                drop(seg);
                delete_segment_files(&*self.storage, &self.dir, old)
                    .map_err(io_err("remove an empty segment"))?;
            }
        }
        // Everything before the new segment is synced.
        self.recovery_point = self.recovery_point.max(base);
        self.durable_offset = self.durable_offset.max(base);
        self.write_checkpoints()
            .map_err(io_err("write checkpoints"))?;
        self.last_checkpoint_ms = now_ms;
        Ok(())
    }

    /// Whether `flush.messages` or `flush.ms` call for an fsync now.
    pub fn flush_due(&self, now_ms: i64) -> bool {
        if self.unflushed_records == 0 {
            return false;
        }
        let by_count = self
            .config
            .flush_messages
            .is_some_and(|n| self.unflushed_records >= n.max(1));
        let by_time = match (self.config.flush_ms, self.first_unflushed_ms) {
            (Some(ms), Some(first)) => {
                now_ms.saturating_sub(first) >= ms.min(i64::MAX as u64) as i64
            }
            _ => false,
        };
        by_count || by_time
    }

    /// When (ms since the epoch) `flush.ms` makes a flush due, if it will.
    pub fn flush_deadline_ms(&self) -> Option<i64> {
        let (ms, first) = (self.config.flush_ms?, self.first_unflushed_ms?);
        Some(first.saturating_add(ms.min(i64::MAX as u64) as i64))
    }

    /// Syncs every dirty segment (log and indexes): everything appended is durable.
    /// A failure poisons the log.
    pub fn flush(&mut self, now_ms: i64) -> Result<(), LogError> {
        self.check_writable()?;
        let end = self.log_end_offset();
        let mut failed = None;
        for seg in self.segments.values_mut().rev() {
            if seg.is_dirty()
                && let Err(e) = seg.sync()
            {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            return Err(self.poison("fsync the log", &e));
        }
        self.recovery_point = end;
        self.durable_offset = self.durable_offset.max(end);
        self.clear_unflushed();
        self.maybe_checkpoint(now_ms)
    }

    /// Takes what a group-commit fsync must sync, to run without the lock.
    /// `None` if everything appended is already durable.
    pub fn begin_sync(&mut self) -> Result<Option<SyncJob>, LogError> {
        self.check_writable()?;
        let end = self.log_end_offset();
        if self.durable_offset >= end {
            return Ok(None);
        }
        let files = self
            .segments
            .values()
            .rev()
            .take_while(|s| s.next_offset() > self.durable_offset)
            .map(|s| s.log_file().clone())
            .collect();
        self.clear_unflushed();
        Ok(Some(SyncJob {
            files,
            up_to: end,
            truncations: self.truncations,
        }))
    }

    /// No appended record waits for a flush (`flush.messages`, `flush.ms`).
    fn clear_unflushed(&mut self) {
        self.unflushed_records = 0;
        self.first_unflushed_ms = None;
    }

    /// Records the outcome of a [`SyncJob`]; a failure poisons the log.
    pub fn finish_sync(&mut self, job: &SyncJob, result: io::Result<()>) -> Result<u64, LogError> {
        match result {
            Ok(()) if job.truncations == self.truncations => {
                self.durable_offset = self
                    .durable_offset
                    .max(job.up_to.min(self.log_end_offset()));
                Ok(self.durable_offset)
            }
            // A truncation since `begin_sync`: the job synced files that may be gone,
            // and records appended after the cut were never part of it.
            Ok(()) => {
                self.durable_offset = self.durable_offset.min(self.log_end_offset());
                Ok(self.durable_offset)
            }
            Err(e) => Err(self.poison("fsync the log", &e)),
        }
    }

    /// Writes checkpoints if [`CHECKPOINT_INTERVAL_MS`] passed since the last ones.
    pub fn maybe_checkpoint(&mut self, now_ms: i64) -> Result<(), LogError> {
        if now_ms.saturating_sub(self.last_checkpoint_ms) >= CHECKPOINT_INTERVAL_MS {
            self.write_checkpoints()
                .map_err(io_err("write checkpoints"))?;
            self.last_checkpoint_ms = now_ms;
        }
        Ok(())
    }

    fn write_checkpoints(&self) -> io::Result<()> {
        let st = &*self.storage;
        checkpoint::write_offset(
            st,
            &self.dir,
            layout::RECOVERY_POINT_CHECKPOINT,
            self.recovery_point,
        )?;
        checkpoint::write_offset(
            st,
            &self.dir,
            layout::HIGH_WATERMARK_CHECKPOINT,
            self.high_watermark,
        )?;
        checkpoint::write_offset(
            st,
            &self.dir,
            layout::LOG_START_CHECKPOINT,
            self.log_start_offset,
        )
    }

    /// Moves the high watermark (clamped to `[log start, log end]`).
    pub fn set_high_watermark(&mut self, hw: u64) {
        self.high_watermark = hw.clamp(self.log_start_offset, self.log_end_offset());
    }

    /// Whole batches from the one holding `offset`, up to `max_bytes` (at least one
    /// batch), below `upper` (exclusive; pass the high watermark for consumers).
    /// `Ok(None)` when there is nothing yet at `offset`.
    pub fn read(
        &self,
        offset: u64,
        max_bytes: u64,
        upper: u64,
    ) -> Result<Option<FileSlice>, LogError> {
        let end = self.log_end_offset();
        if offset < self.log_start_offset || offset > end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start: self.log_start_offset,
                log_end: end,
            });
        }
        let upper = upper.min(end);
        if offset >= upper {
            return Ok(None);
        }
        let first = self
            .segments
            .range(..=offset)
            .next_back()
            .map_or(0, |(b, _)| *b);
        for (_, seg) in self.segments.range(first..) {
            if seg.base() >= upper {
                break;
            }
            if let Some(slice) = seg
                .read(offset, max_bytes, upper)
                .map_err(io_err("read the log"))?
            {
                return Ok(Some(slice));
            }
        }
        Ok(None)
    }

    /// The first record with a timestamp at or after `timestamp`: (offset, timestamp).
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(u64, i64)>, LogError> {
        let max_batch = self.config.max_message_bytes.max(self.config.segment_bytes);
        for seg in self.segments.values() {
            if seg.max_timestamp() < timestamp || seg.next_offset() <= self.log_start_offset {
                continue;
            }
            if let Some(found) =
                seg.find_offset_by_timestamp(timestamp, self.log_start_offset, max_batch)?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Removes every record at or above `offset` (a follower's truncation).
    pub fn truncate_to(&mut self, offset: u64, now_ms: i64) -> Result<(), LogError> {
        self.check_writable()?;
        if offset >= self.log_end_offset() {
            return Ok(());
        }
        if offset <= self.log_start_offset {
            return self.truncate_fully_and_start_at(offset, now_ms);
        }
        self.note_truncation(offset);
        let st = self.storage.clone();
        let doomed: Vec<u64> = self
            .segments
            .range(offset..)
            .map(|(b, _)| *b)
            .filter(|&b| b > self.log_start_offset.min(offset) && b != self.first_base())
            .collect();
        // Highest first, and synced before the remaining segment is cut: a crash
        // part-way leaves a shorter log, never a cut segment with deleted ones after
        // it coming back. A segment leaves the map once its files are gone.
        for &base in doomed.iter().rev() {
            if let Err(e) = delete_segment_files(&*st, &self.dir, base) {
                return Err(self.fail_truncation("delete a truncated segment", &e));
            }
            drop(self.segments.remove(&base));
        }
        if !doomed.is_empty()
            && let Err(e) = st.sync_dir(&self.dir)
        {
            return Err(self.fail_truncation("sync the partition directory", &e));
        }
        // The last remaining segment becomes active again: reopened writable, the old
        // handle listed until the new one exists.
        let Some((&last, _)) = self.segments.last_key_value() else {
            return self.truncate_fully_and_start_at(offset, now_ms);
        };
        let seg = match Segment::open(&*st, &self.dir, last, &self.config, true, false, now_ms) {
            Ok((seg, _)) => seg,
            Err(e) => return Err(self.fail_truncation("reopen the last segment", &e)),
        };
        drop(self.segments.insert(last, seg));
        let active = self.active_mut();
        if let Err(e) = active.truncate_to(offset).and_then(|_| active.sync()) {
            return Err(self.fail_truncation("truncate the log", &e));
        }
        self.after_truncation(now_ms)
    }

    fn first_base(&self) -> u64 {
        self.segments.first_key_value().map_or(0, |(b, _)| *b)
    }

    /// Deletes everything and restarts the log empty at `offset`.
    pub fn truncate_fully_and_start_at(
        &mut self,
        offset: u64,
        now_ms: i64,
    ) -> Result<(), LogError> {
        self.check_writable()?;
        self.note_truncation(0);
        let st = self.storage.clone();
        // Highest first, so a crash part-way leaves a shorter log. The segments stay
        // listed (their open files readable) until the new one exists.
        let bases: Vec<u64> = self.segments.keys().copied().collect();
        for &base in bases.iter().rev() {
            if let Err(e) = delete_segment_files(&*st, &self.dir, base) {
                return Err(self.fail_truncation("delete a segment", &e));
            }
        }
        let seg = match Segment::create(&*st, &self.dir, offset, &self.config, now_ms) {
            Ok(seg) => seg,
            Err(e) => return Err(self.fail_truncation("create a segment", &e)),
        };
        self.segments.clear();
        self.segments.insert(offset, seg);
        self.log_start_offset = offset;
        self.cleaned_offset = offset;
        self.after_truncation(now_ms)
    }

    fn note_truncation(&mut self, cut: u64) {
        self.truncations += 1;
        self.truncated_to = cut;
    }

    /// A truncation failed part-way: the disk holds a half-done cut, so writes stop
    /// until a reopen recovers it; the segments still listed stay readable.
    fn fail_truncation(&mut self, op: &'static str, e: &dyn std::fmt::Display) -> LogError {
        let err = self.poison(op, e);
        self.clamp_to_end();
        err
    }

    /// Brings the offsets kept about the log within its end after a cut.
    fn clamp_to_end(&mut self) {
        let end = self.log_end_offset();
        // Whole batches go: the cut may fall below the offset asked for.
        self.truncated_to = self.truncated_to.min(end);
        // Truncation cuts whole batches, so the end can drop below a log start offset
        // that pointed into the batch that went.
        self.log_start_offset = self.log_start_offset.min(end);
        self.high_watermark = self.high_watermark.clamp(self.log_start_offset, end);
        self.recovery_point = self.recovery_point.min(end);
        self.durable_offset = self.durable_offset.min(end);
        if self.durable_offset >= end {
            // The unflushed records were all cut: no flush is due (else
            // `flush_due` would stay true with nothing to sync).
            self.clear_unflushed();
        }
        self.cleaned_offset = self.cleaned_offset.min(end);
    }

    fn after_truncation(&mut self, now_ms: i64) -> Result<(), LogError> {
        self.clamp_to_end();
        let end = self.log_end_offset();
        let before = self.epochs.len();
        self.epochs.retain(|&(_, start)| start < end);
        if self.epochs.len() != before {
            checkpoint::write_epochs(&*self.storage, &self.dir, &self.epochs)
                .map_err(io_err("write the leader epoch checkpoint"))?;
        }
        self.write_checkpoints()
            .map_err(io_err("write checkpoints"))?;
        self.last_checkpoint_ms = now_ms;
        Ok(())
    }

    /// Kafka's DeleteRecords: moves the log start offset up to `offset` (at most the
    /// high watermark); whole segments below it go at the next retention check.
    pub fn delete_records_before(&mut self, offset: u64) -> Result<u64, LogError> {
        self.check_writable()?;
        if offset > self.high_watermark {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start: self.log_start_offset,
                log_end: self.high_watermark,
            });
        }
        if offset > self.log_start_offset {
            self.log_start_offset = offset;
            checkpoint::write_offset(
                &*self.storage,
                &self.dir,
                layout::LOG_START_CHECKPOINT,
                offset,
            )
            .map_err(io_err("write the log start checkpoint"))?;
        }
        Ok(self.log_start_offset)
    }

    /// Applies the log start offset, `retention.ms` and `retention.bytes`: deletes
    /// whole old segments (renamed to `*.deleted`, removed after
    /// `file.delete.delay.ms`) and removes `*.deleted` files that are due.
    /// Returns how many segments were deleted.
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<usize, LogError> {
        let plan = retention::plan(
            &self.segment_summaries(),
            &self.config,
            self.log_start_offset,
            self.high_watermark,
            now_ms,
        );
        if let Some(reason) = plan.reason {
            ::log::info!(
                "{}: deleting {} old segment(s) ({reason:?} retention)",
                self.dir.display(),
                plan.count
            );
        }
        self.delete_oldest_segments(plan.count, now_ms)?;
        self.delete_due_files(now_ms)?;
        Ok(plan.count)
    }

    /// Deletes the `n` oldest segments, bounded by [`retention::deletable_max`] (never
    /// the active segment, never data at or above the high watermark).
    pub fn delete_oldest_segments(&mut self, n: usize, now_ms: i64) -> Result<usize, LogError> {
        let n = n.min(retention::deletable_max(
            &self.segment_summaries(),
            self.high_watermark,
        ));
        if n == 0 {
            return Ok(0);
        }
        self.check_writable()?;
        let bases: Vec<u64> = self.segments.keys().take(n).copied().collect();
        let st = self.storage.clone();
        let due =
            now_ms.saturating_add(self.config.file_delete_delay_ms.min(i64::MAX as u64) as i64);
        for base in bases {
            if let Some(seg) = self.segments.remove(&base) {
                let renamed = seg
                    .rename_to_deleted(&*st)
                    .map_err(io_err("rename a segment for deletion"))?;
                self.pending_deletes
                    .extend(renamed.into_iter().map(|p| (due, p)));
            }
        }
        st.sync_dir(&self.dir)
            .map_err(io_err("sync the partition directory"))?;
        let first = self.first_base();
        if first > self.log_start_offset {
            self.log_start_offset = first;
        }
        self.cleaned_offset = self.cleaned_offset.max(self.log_start_offset);
        checkpoint::write_offset(
            &*st,
            &self.dir,
            layout::LOG_START_CHECKPOINT,
            self.log_start_offset,
        )
        .map_err(io_err("write the log start checkpoint"))?;
        Ok(n)
    }

    /// Removes `*.deleted` files whose `file.delete.delay.ms` has passed.
    pub fn delete_due_files(&mut self, now_ms: i64) -> Result<(), LogError> {
        let st = self.storage.clone();
        let mut removed = false;
        let mut keep = Vec::new();
        for (due, path) in std::mem::take(&mut self.pending_deletes) {
            if due <= now_ms {
                match st.remove(&path) {
                    Ok(()) => removed = true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        keep.push((due, path));
                        self.pending_deletes.extend(keep);
                        return Err(LogError::Io {
                            op: "remove a deleted segment file",
                            source: e,
                        });
                    }
                }
            } else {
                keep.push((due, path));
            }
        }
        self.pending_deletes = keep;
        if removed {
            st.sync_dir(&self.dir)
                .map_err(io_err("sync the partition directory"))?;
        }
        Ok(())
    }

    /// Files waiting for `file.delete.delay.ms`.
    pub fn pending_deletes(&self) -> usize {
        self.pending_deletes.len()
    }

    /// The latest leader epoch and the offset it started at.
    pub fn latest_epoch(&self) -> Option<(i32, u64)> {
        self.epochs.last().copied()
    }

    /// Every (epoch, start offset) known.
    pub fn epochs(&self) -> &[(i32, u64)] {
        &self.epochs
    }

    /// KIP-101: the largest epoch `<= epoch` and the offset where it ended (the start
    /// of the next epoch, or the log end for the latest). `None` if `epoch` is older
    /// than every epoch known.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, u64)> {
        let i = self.epochs.iter().rposition(|&(e, _)| e <= epoch)?;
        let end = match self.epochs.get(i + 1) {
            Some(&(_, next_start)) => next_start,
            None => self.log_end_offset(),
        };
        Some((self.epochs[i].0, end))
    }

    /// Records that `epoch` starts at the log end (when this replica becomes leader).
    pub fn assign_epoch_start(&mut self, epoch: i32) -> Result<(), LogError> {
        if self.epochs.last().is_some_and(|&(e, _)| e >= epoch) {
            return Ok(());
        }
        self.epochs.push((epoch, self.log_end_offset()));
        checkpoint::write_epochs(&*self.storage, &self.dir, &self.epochs)
            .map_err(io_err("write the leader epoch checkpoint"))
    }

    /// Clean shutdown: sync everything, trim the active indexes, write checkpoints so
    /// the next open needs no scan.
    pub fn close(mut self, now_ms: i64) -> Result<(), LogError> {
        if self.poisoned.is_some() {
            return Ok(());
        }
        self.flush(now_ms)?;
        let active = self.active_mut();
        active.seal().map_err(io_err("trim the active indexes"))?;
        self.write_checkpoints()
            .map_err(io_err("write checkpoints"))?;
        Ok(())
    }

    pub(crate) fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub(crate) fn segments(&self) -> &BTreeMap<u64, Segment> {
        &self.segments
    }

    pub(crate) fn segments_mut(&mut self) -> &mut BTreeMap<u64, Segment> {
        &mut self.segments
    }
}

/// Proof that a produce request's batches passed [`validate_produce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validated {
    /// Batches in the request.
    pub batches: u64,
    /// Records in the request.
    pub records: u64,
    /// Bytes checked.
    pub bytes: u64,
}

/// How many times `max.message.bytes` the records of one produced compressed batch
/// may take once decompressed (see [`produce_decompressed_bytes_max`]).
pub const PRODUCE_EXPANSION_MAX: u64 = 64;

/// The most bytes the records of one produced compressed batch may decompress to:
/// [`PRODUCE_EXPANSION_MAX`] × `max_message_bytes`, and never more than
/// [`DECOMPRESSED_BATCH_BYTES_MAX`], the most consumers' and compaction's decoders
/// take (a larger batch could be stored but never read back).
pub fn produce_decompressed_bytes_max(max_message_bytes: u64) -> usize {
    let bound = max_message_bytes
        .saturating_mul(PRODUCE_EXPANSION_MAX)
        .min(DECOMPRESSED_BATCH_BYTES_MAX as u64);
    usize::try_from(bound).unwrap_or(DECOMPRESSED_BATCH_BYTES_MAX)
}

/// Checks a produce request's batches without touching a log: each is whole, at
/// most `max_message_bytes`, passes its CRC, names a codec this build decodes, and
/// holds records 0..n-1 (n ≥ 1), every one of which parses, with nothing after the
/// last; no control batches. Compressed batches are decompressed to check their
/// records, up to [`produce_decompressed_bytes_max`] bytes each. Needs no lock, so
/// servers run it before queueing an append.
///
/// Every record is walked as Kafka's `LogValidator` does: a batch whose header
/// promises records its bytes do not hold would otherwise take offsets it has no
/// records for (up to 2³¹ per 61-byte batch) and be served to every consumer as
/// corrupt.
pub fn validate_produce(batches: &[u8], max_message_bytes: u64) -> Result<Validated, LogError> {
    let decompressed_bytes_max = produce_decompressed_bytes_max(max_message_bytes);
    let mut pos = 0usize;
    let mut v = Validated {
        batches: 0,
        records: 0,
        bytes: batches.len() as u64,
    };
    while pos < batches.len() {
        let total = whole_batch_len(&batches[pos..])?;
        if total > max_message_bytes {
            return Err(LogError::RecordTooLarge {
                size: total,
                max: max_message_bytes,
            });
        }
        let end = pos + total as usize;
        let h = header::verify_crc(&batches[pos..end])?;
        if h.record_count == 0 || h.last_offset_delta != h.record_count - 1 {
            return Err(BatchError::Invalid("a produced batch must hold records 0..n-1").into());
        }
        if h.attributes.is_control() {
            return Err(BatchError::Invalid("producers may not send control batches").into());
        }
        check_records(
            &Batch {
                header: h,
                bytes: &batches[pos..end],
            },
            decompressed_bytes_max,
        )?;
        v.batches += 1;
        v.records += h.record_count as u64;
        pos = end;
    }
    if v.batches == 0 {
        return Err(BatchError::Invalid("no record batch in the request").into());
    }
    Ok(v)
}

/// Walks every record of a produced batch whose header and CRC passed: each parses
/// to its last byte, offset deltas are 0, 1, .., n-1 (the header's last offset delta
/// is n-1), there are exactly `record_count` of them and no bytes after the last.
/// A compressed batch is decompressed first, to at most `decompressed_bytes_max`.
///
/// Records are decoded by consumers' own [`crate::batch::RecordIter`] (borrowed,
/// nothing allocated per record), so what is accepted is what they read; an
/// uncompressed batch is checked where it lies.
fn check_records(batch: &Batch<'_>, decompressed_bytes_max: usize) -> Result<(), BatchError> {
    let h = &batch.header;
    let codec = batch.compression()?;
    // Every record takes at least RECORD_BYTES_MIN bytes: a count the records
    // cannot fit is refused before anything is decompressed or walked.
    let count = h.record_count as usize;
    match codec {
        Compression::None if count > batch.records_section().len() / RECORD_BYTES_MIN => {
            return Err(BatchError::Corrupt(
                "record count is more than the batch's bytes can hold",
            ));
        }
        Compression::None => {}
        _ if count > decompressed_bytes_max / RECORD_BYTES_MIN => {
            return Err(BatchError::Corrupt(
                "record count is more than a produced batch may hold decompressed",
            ));
        }
        _ => {}
    }
    let section = batch
        .decompressed(decompressed_bytes_max)
        .map_err(|e| match e {
            BatchError::TooLarge { .. } => BatchError::ExpandsTooFar {
                codec: codec.name(),
                limit: decompressed_bytes_max as u64,
            },
            e => e,
        })?;
    check_record_section(&section, h)
}

/// The length of the batch at the start of `rest`, checked to lie within `rest`.
fn whole_batch_len(rest: &[u8]) -> Result<u64, BatchError> {
    let available = rest.len() as u64;
    let total = header::peek_total_len(rest).ok_or(BatchError::Truncated {
        needed: header::LOG_OVERHEAD as u64,
        available,
    })?;
    if total > available {
        return Err(BatchError::Truncated {
            needed: total,
            available,
        });
    }
    Ok(total)
}

/// Sets the LogAppendTime bit and timestamps and recomputes the CRC.
pub(crate) fn stamp_log_append_time(batch: &mut [u8], h: &BatchHeader, now_ms: i64) {
    let attrs = h
        .attributes
        .with_timestamp_type(TimestampType::LogAppendTime);
    batch[21..23].copy_from_slice(&attrs.0.to_be_bytes());
    batch[35..43].copy_from_slice(&now_ms.to_be_bytes());
    let crc = header::compute_crc(batch);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    debug_assert!(batch.len() >= HEADER_LEN);
}

/// Renames nothing: removes all three files of a segment, if present.
fn delete_segment_files(storage: &dyn Storage, dir: &Path, base: u64) -> io::Result<()> {
    for f in SegmentFile::ALL {
        let p = Segment::path(dir, base, f, FileState::Live);
        if storage.exists(&p) {
            storage.remove(&p)?;
        }
    }
    Ok(())
}

/// Finishes what a crash interrupted and returns the bases of the live segments.
fn finish_interrupted(
    storage: &dyn Storage,
    dir: &Path,
    report: &mut OpenReport,
) -> Result<Vec<u64>, LogError> {
    let names = storage
        .list(dir)
        .map_err(io_err("list the partition directory"))?;
    let mut changed = false;
    // Complete compaction output replaces the segment of the same base first.
    for name in &names {
        if let Some(FileKind::Segment {
            base,
            file: SegmentFile::Log,
            state: FileState::Swap,
        }) = layout::parse(name)
        {
            delete_segment_files(storage, dir, base)
                .map_err(io_err("replace a compacted segment"))?;
            storage
                .rename(
                    &dir.join(name),
                    &Segment::path(dir, base, SegmentFile::Log, FileState::Live),
                )
                .map_err(io_err("finish a compaction swap"))?;
            report.finished_operations += 1;
            changed = true;
        }
    }
    let names = storage
        .list(dir)
        .map_err(io_err("list the partition directory"))?;
    let mut logs = Vec::new();
    let mut indexes = Vec::new();
    for name in &names {
        match layout::parse(name) {
            Some(FileKind::Segment {
                state: FileState::Live,
                file: SegmentFile::Log,
                base,
            }) => logs.push(base),
            Some(FileKind::Segment {
                state: FileState::Live,
                base,
                ..
            }) => indexes.push((base, name)),
            Some(FileKind::Segment { .. }) | Some(FileKind::CheckpointTmp) => {
                // `.deleted`: finish the delete. `.cleaned`, `.tmp`: incomplete output,
                // undone. Index `.swap` files: indexes are rebuilt from the log.
                storage
                    .remove(&dir.join(name))
                    .map_err(io_err("remove a leftover file"))?;
                report.finished_operations += 1;
                changed = true;
            }
            _ => {}
        }
    }
    for (base, name) in indexes {
        if !logs.contains(&base) {
            storage
                .remove(&dir.join(name))
                .map_err(io_err("remove an orphan index"))?;
            report.finished_operations += 1;
            changed = true;
        }
    }
    if changed {
        storage
            .sync_dir(dir)
            .map_err(io_err("sync the partition directory"))?;
    }
    Ok(logs)
}
