//! One segment: a `.log` file of record batches and its two sparse indexes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::header::{self, BatchHeader, HEADER_LEN, LOG_OVERHEAD};
use crate::batch::{Batch, BatchError, TimestampType};
use crate::config::LogConfig;
use crate::index::{OffsetIndex, TimeIndex};
use crate::layout::{self, FileState, SegmentFile};
use crate::storage::{OpenMode, Storage, StorageFile};

/// How much a header walk reads at once: several small batches' headers per
/// read. After a batch at least this long it reads just the next header: the
/// chunk would hold no other.
const HEADER_READ_BYTES: usize = 8 * 1024;
/// How much recovery reads at once.
const RECOVERY_READ_BYTES: usize = 4 * 1024 * 1024;
/// "No timestamp", as Kafka writes it.
pub const NO_TIMESTAMP: i64 = -1;

/// A byte range of a segment file holding whole batches, ready to send as is.
#[derive(Debug, Clone)]
pub struct FileSlice {
    /// The segment's log file (kept open even if the segment is deleted meanwhile).
    pub file: Arc<dyn StorageFile>,
    /// Where the first batch starts.
    pub position: u64,
    /// Bytes of whole batches.
    pub len: u64,
    /// Base offset of the first batch.
    pub first_offset: u64,
    /// Offset after the last batch in the range.
    pub next_offset: u64,
}

impl FileSlice {
    /// Reads the range into memory.
    pub fn read_to_vec(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; self.len as usize];
        self.file.read_exact_at(&mut buf, self.position)?;
        Ok(buf)
    }
}

/// What recovery found in a segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Valid batches.
    pub batches: u64,
    /// Bytes cut from the end (torn or corrupt tail).
    pub truncated_bytes: u64,
}

/// A segment of a partition log.
#[derive(Debug)]
pub struct Segment {
    base: u64,
    dir: PathBuf,
    log: Arc<dyn StorageFile>,
    size: u64,
    offset_index: OffsetIndex,
    time_index: TimeIndex,
    bytes_since_index_entry: u64,
    index_interval_bytes: u64,
    max_timestamp: i64,
    offset_of_max_timestamp: u64,
    next_offset: u64,
    /// When `segment.ms` counts from: the broker's clock when the segment was created
    /// or opened. (Kafka counts from the first batch's timestamp; a gateway's sensors
    /// may have no real-time clock, and a timestamp from 1970 would roll every append.)
    created_ms: i64,
    writable: bool,
    /// Bytes written since the last sync.
    dirty: bool,
}

/// A batch header with where it sits in the file.
#[derive(Debug, Clone, Copy)]
pub struct Located {
    /// File position of the batch.
    pub position: u64,
    /// Its header.
    pub header: BatchHeader,
}

impl Segment {
    /// Path of one of this segment's files.
    pub fn path(dir: &Path, base: u64, file: SegmentFile, state: FileState) -> PathBuf {
        dir.join(layout::segment_file_name(base, file, state))
    }

    /// Creates a new, empty, writable segment (replacing stale files of the same base).
    pub fn create(
        storage: &dyn Storage,
        dir: &Path,
        base: u64,
        config: &LogConfig,
        now_ms: i64,
    ) -> io::Result<Segment> {
        let log = storage.open(
            &Self::path(dir, base, SegmentFile::Log, FileState::Live),
            OpenMode::OpenOrCreate,
        )?;
        log.set_len(0)?;
        for f in [SegmentFile::Index, SegmentFile::TimeIndex] {
            let p = Self::path(dir, base, f, FileState::Live);
            if storage.exists(&p) {
                storage.remove(&p)?;
            }
        }
        let offset_index = OffsetIndex::open(
            storage,
            &Self::path(dir, base, SegmentFile::Index, FileState::Live),
            base,
            config.offset_index_entries_max(),
            OpenMode::CreateNew,
            true,
        )?;
        let time_index = TimeIndex::open(
            storage,
            &Self::path(dir, base, SegmentFile::TimeIndex, FileState::Live),
            base,
            config.time_index_entries_max(),
            OpenMode::CreateNew,
            true,
        )?;
        storage.sync_dir(dir)?;
        Ok(Segment {
            base,
            dir: dir.to_path_buf(),
            log,
            size: 0,
            offset_index,
            time_index,
            bytes_since_index_entry: 0,
            index_interval_bytes: config.index_interval_bytes,
            max_timestamp: NO_TIMESTAMP,
            offset_of_max_timestamp: base,
            next_offset: base,
            created_ms: now_ms,
            writable: true,
            dirty: false,
        })
    }

    /// Opens an existing segment.
    ///
    /// With `recover`, every batch is checked (length, CRC, offsets), a bad tail is cut
    /// and both indexes are rebuilt from the log. Without it, the indexes are checked
    /// against the log and rebuilt only if they do not fit. Either way the segment's
    /// next offset and largest timestamp come from the log itself.
    pub fn open(
        storage: &dyn Storage,
        dir: &Path,
        base: u64,
        config: &LogConfig,
        writable: bool,
        recover: bool,
        now_ms: i64,
    ) -> Result<(Segment, RecoveryReport), SegmentError> {
        let log = storage.open(
            &Self::path(dir, base, SegmentFile::Log, FileState::Live),
            OpenMode::Existing,
        )?;
        let size = log.len()?;
        let mut report = RecoveryReport::default();
        let mut scanned = None;
        let size = if recover {
            let scan = scan_log(&*log, base, size, config, true)?;
            report.batches = scan.batches;
            report.truncated_bytes = size - scan.valid_bytes;
            if scan.valid_bytes < size {
                log.set_len(scan.valid_bytes)?;
                log.sync_data()?;
            }
            write_index_files(storage, dir, base, &scan)?;
            let valid = scan.valid_bytes;
            scanned = Some(scan);
            valid
        } else {
            size
        };
        if size > u32::MAX as u64 {
            return Err(SegmentError::Corrupt(format!(
                "segment {base} is {size} bytes, more than a 32-bit position can address"
            )));
        }
        let open_indexes = |mode| -> io::Result<(OffsetIndex, TimeIndex)> {
            Ok((
                OffsetIndex::open(
                    storage,
                    &Self::path(dir, base, SegmentFile::Index, FileState::Live),
                    base,
                    config.offset_index_entries_max(),
                    mode,
                    writable,
                )?,
                TimeIndex::open(
                    storage,
                    &Self::path(dir, base, SegmentFile::TimeIndex, FileState::Live),
                    base,
                    config.time_index_entries_max(),
                    mode,
                    writable,
                )?,
            ))
        };
        let missing = [SegmentFile::Index, SegmentFile::TimeIndex]
            .iter()
            .any(|f| !storage.exists(&Self::path(dir, base, *f, FileState::Live)));
        let (mut offset_index, mut time_index) = open_indexes(OpenMode::OpenOrCreate)?;
        let tail = match scanned.as_ref() {
            Some(scan) => scan.tail,
            None => {
                // The batches after the last offset index entry are read from the log;
                // everything before it is summarised by the last time index entry.
                let start = offset_index.last().map_or(0, |(_, p)| p as u64);
                let tail = if start < size {
                    tail_from(&*log, base, start, size).ok()
                } else {
                    None
                };
                let consistent = offset_index
                    .check(size, tail.map_or(base, |t| t.next_offset))
                    .and_then(|()| time_index.check(tail.map_or(base, |t| t.next_offset)))
                    .and_then(|()| {
                        if (offset_index.entries() == 0) != (time_index.entries() == 0) {
                            Err("one index is empty and the other is not".to_owned())
                        } else {
                            Ok(())
                        }
                    });
                let consistent = if missing && size > 0 {
                    Err("an index file is missing".to_owned())
                } else {
                    consistent
                };
                match (tail, consistent) {
                    (None, Ok(())) if size == 0 => Tail {
                        next_offset: base,
                        max_timestamp: NO_TIMESTAMP,
                        offset_of_max_timestamp: base,
                    },
                    (Some(mut tail), Ok(())) => {
                        if let Some((t, o)) = time_index.last()
                            && t >= tail.max_timestamp
                        {
                            tail.max_timestamp = t;
                            tail.offset_of_max_timestamp = o;
                        }
                        tail
                    }
                    (tail, consistent) => {
                        let reason = match (tail, consistent) {
                            (_, Err(reason)) => reason,
                            (None, _) if size == 0 => "empty log".to_owned(),
                            _ => "the last index entry does not point at a batch".to_owned(),
                        };
                        if size > 0 {
                            crate::log::warn(format_args!(
                                "rebuilding the indexes of segment {base} in {}: {reason}",
                                dir.display()
                            ));
                        }
                        let scan = scan_log(&*log, base, size, config, false)?;
                        if scan.valid_bytes != size {
                            return Err(SegmentError::Corrupt(format!(
                                "segment {base} in {} has a bad batch at byte {} below the recovery point",
                                dir.display(),
                                scan.valid_bytes
                            )));
                        }
                        drop((offset_index, time_index));
                        write_index_files(storage, dir, base, &scan)?;
                        (offset_index, time_index) = open_indexes(OpenMode::Existing)?;
                        scan.tail
                    }
                }
            }
        };
        let (max_timestamp, offset_of_max_timestamp) =
            (tail.max_timestamp, tail.offset_of_max_timestamp);
        let bytes_since_index_entry = size - offset_index.last().map_or(0, |(_, p)| p as u64);
        Ok((
            Segment {
                base,
                dir: dir.to_path_buf(),
                log,
                size,
                offset_index,
                time_index,
                bytes_since_index_entry,
                index_interval_bytes: config.index_interval_bytes,
                max_timestamp,
                offset_of_max_timestamp,
                next_offset: if size == 0 { base } else { tail.next_offset },
                created_ms: now_ms,
                writable,
                dirty: false,
            },
            report,
        ))
    }

    /// Base offset.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Bytes of log.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Offset after the last batch (the base if empty).
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Whether the segment has no batches.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Largest record timestamp, or [`NO_TIMESTAMP`].
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    /// The log file.
    pub fn log_file(&self) -> &Arc<dyn StorageFile> {
        &self.log
    }

    /// Whether `batch_len` more bytes or `now` call for a new segment first.
    pub fn should_roll(
        &self,
        config: &LogConfig,
        batch_len: u64,
        last_offset: u64,
        now_ms: i64,
    ) -> bool {
        // Even an empty segment cannot take offsets its 32-bit relative offsets do
        // not reach (a follower's batch far past it): it is replaced at the batch.
        if last_offset - self.base > u32::MAX as u64 {
            return true;
        }
        if self.size == 0 {
            return false;
        }
        let base_ms = self.created_ms;
        self.size + batch_len > config.segment_bytes
            || now_ms.saturating_sub(base_ms) >= config.segment_ms.min(i64::MAX as u64) as i64
            || self.offset_index.is_full()
            || self.time_index.is_full()
    }

    /// Appends one batch whose offsets are already assigned.
    pub fn append(&mut self, batch: &[u8], header: &BatchHeader) -> io::Result<u64> {
        assert!(self.writable, "append to a closed segment {}", self.base);
        assert!(header.base_offset >= self.next_offset);
        assert!(header.last_offset() - self.base <= u32::MAX as u64);
        assert!(self.size + batch.len() as u64 <= u32::MAX as u64);
        let position = self.size;
        let last = header.last_offset();
        let wants_entry = self.bytes_since_index_entry > self.index_interval_bytes;
        let (max_timestamp, offset_of_max) = if header.max_timestamp > self.max_timestamp {
            (header.max_timestamp, last)
        } else {
            (self.max_timestamp, self.offset_of_max_timestamp)
        };
        let written = self.log.write_at(batch, position).and_then(|()| {
            if wants_entry {
                self.offset_index.append(last, position as u32)?;
                self.time_index.maybe_append(max_timestamp, offset_of_max)?;
            }
            Ok(())
        });
        if let Err(e) = written {
            // Undo, so the caller's error means "not appended": cut whatever part of the
            // batch reached the file and any index entry for it. If the cut fails too,
            // the next append overwrites the same bytes, and recovery stops at the first
            // batch that does not continue the offsets.
            let _ = self.log.set_len(position);
            let _ = self.offset_index.truncate_to(header.base_offset);
            let _ = self.time_index.truncate_to(header.base_offset);
            // The file changed (written, then cut) since the last sync: the next sync
            // must make the cut durable too, or a crash could bring the bytes back.
            self.dirty = true;
            return Err(e);
        }
        self.dirty = true;
        self.size += batch.len() as u64;
        self.max_timestamp = max_timestamp;
        self.offset_of_max_timestamp = offset_of_max;
        if wants_entry {
            self.bytes_since_index_entry = 0;
        }
        self.bytes_since_index_entry += batch.len() as u64;
        self.next_offset = header.next_offset();
        Ok(position)
    }

    /// Whole batches from the first one holding an offset `>= offset`, up to `max_bytes`
    /// (at least one batch, whatever its size), stopping before any batch that reaches
    /// `max_offset` (exclusive). `None` if there is nothing to read.
    pub fn read(
        &self,
        offset: u64,
        max_bytes: u64,
        max_offset: u64,
    ) -> io::Result<Option<FileSlice>> {
        let (_, start) = self.offset_index.lookup(offset);
        let mut walker = HeaderWalker::new(&*self.log, start as u64, self.size);
        let mut first: Option<Located> = None;
        let mut end = 0u64;
        let mut next = 0u64;
        while let Some(loc) = walker.next_header()? {
            let h = loc.header;
            if first.is_none() {
                if h.last_offset() < offset {
                    continue;
                }
                if h.last_offset() >= max_offset {
                    return Ok(None);
                }
                first = Some(loc);
            } else if h.last_offset() >= max_offset
                || loc.position + h.total_len() - first.map_or(0, |f| f.position) > max_bytes
            {
                break;
            }
            end = loc.position + h.total_len();
            next = h.next_offset();
        }
        Ok(first.map(|f| FileSlice {
            file: self.log.clone(),
            position: f.position,
            len: end - f.position,
            first_offset: f.header.base_offset,
            next_offset: next,
        }))
    }

    /// The first record at or after `min_offset` with a timestamp at or after
    /// `timestamp`: (offset, its timestamp).
    pub fn find_offset_by_timestamp(
        &self,
        timestamp: i64,
        min_offset: u64,
        max_batch_bytes: u64,
    ) -> Result<Option<(u64, i64)>, SegmentError> {
        if self.max_timestamp < timestamp {
            return Ok(None);
        }
        let by_time = match self.time_index.lookup_before(timestamp) {
            Some(o) => self.offset_index.lookup(o).1 as u64,
            None => 0,
        };
        // Both lookups give the start of a batch at or before what is wanted.
        let start = by_time.max(self.offset_index.lookup(min_offset).1 as u64);
        let mut walker = HeaderWalker::new(&*self.log, start, self.size);
        while let Some(loc) = walker.next_header()? {
            let h = loc.header;
            if h.max_timestamp < timestamp || h.last_offset() < min_offset {
                continue;
            }
            if h.attributes.timestamp_type() == TimestampType::LogAppendTime {
                return Ok(Some((h.base_offset.max(min_offset), h.max_timestamp)));
            }
            let len = h.total_len();
            if len > max_batch_bytes {
                return Err(SegmentError::Corrupt(format!(
                    "batch at {} is {len} bytes",
                    loc.position
                )));
            }
            let mut buf = vec![0u8; len as usize];
            self.log.read_exact_at(&mut buf, loc.position)?;
            let batch = Batch::new_checked(&buf)?;
            let records = batch.records(max_batch_bytes.saturating_mul(64) as usize)?;
            for r in records {
                let offset = h.base_offset + r.offset_delta as u64;
                let ts = h.base_timestamp.saturating_add(r.timestamp_delta);
                if ts >= timestamp && offset >= min_offset {
                    return Ok(Some((offset, ts)));
                }
            }
        }
        Ok(None)
    }

    /// Cuts the segment so it holds only batches ending before `offset`; returns the new
    /// next offset.
    pub fn truncate_to(&mut self, offset: u64) -> io::Result<u64> {
        let (_, start) = self.offset_index.lookup(offset.saturating_sub(1));
        let mut walker = HeaderWalker::new(&*self.log, start as u64, self.size);
        let mut cut = None;
        while let Some(loc) = walker.next_header()? {
            if loc.header.last_offset() >= offset {
                cut = Some(loc.position);
                break;
            }
        }
        let Some(cut) = cut else {
            return Ok(self.next_offset);
        };
        self.log.set_len(cut)?;
        self.size = cut;
        self.dirty = true;
        self.offset_index.truncate_to(offset)?;
        self.time_index.truncate_to(offset)?;
        // Recompute the tail state from the log.
        let scan_start = self.offset_index.last().map_or(0, |(_, p)| p as u64);
        let tail = tail_from(&*self.log, self.base, scan_start, self.size)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let (mut mt, mut mo) = self.time_index.last().unwrap_or((NO_TIMESTAMP, self.base));
        if tail.max_timestamp > mt {
            (mt, mo) = (tail.max_timestamp, tail.offset_of_max_timestamp);
        }
        self.max_timestamp = mt;
        self.offset_of_max_timestamp = mo;
        self.next_offset = if self.size == 0 {
            self.base
        } else {
            tail.next_offset
        };
        self.bytes_since_index_entry = self.size - scan_start;
        Ok(self.next_offset)
    }

    /// Syncs the log and both indexes if anything was written since the last sync.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            self.log.sync_data()?;
            self.offset_index.sync()?;
            self.time_index.sync()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Whether bytes were written since the last sync.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Stops appends: trims and syncs the index files (on roll and close).
    pub fn seal(&mut self) -> io::Result<()> {
        self.offset_index.trim()?;
        self.time_index.trim()?;
        self.writable = false;
        Ok(())
    }

    /// Renames all files of the segment to `*.deleted`; the caller syncs the directory.
    pub fn rename_to_deleted(&self, storage: &dyn Storage) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for f in SegmentFile::ALL {
            let from = Self::path(&self.dir, self.base, f, FileState::Live);
            if storage.exists(&from) {
                let to = Self::path(&self.dir, self.base, f, FileState::Deleted);
                storage.rename(&from, &to)?;
                out.push(to);
            }
        }
        Ok(out)
    }

    /// Headers of every batch, in order (for compaction and tests).
    pub fn headers(&self) -> io::Result<Vec<Located>> {
        let mut walker = HeaderWalker::new(&*self.log, 0, self.size);
        let mut out = Vec::new();
        while let Some(loc) = walker.next_header()? {
            out.push(loc);
        }
        Ok(out)
    }
}

/// Why a segment could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// The disk failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The data is not what the format says.
    #[error("corrupt segment: {0}")]
    Corrupt(String),
    /// A batch did not decode.
    #[error(transparent)]
    Batch(#[from] BatchError),
}

/// Walks batch headers through small reads, skipping bodies.
struct HeaderWalker<'a> {
    file: &'a dyn StorageFile,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    buf_start: u64,
    /// The length of the batch walked last (0 before the first).
    last_len: u64,
}

impl<'a> HeaderWalker<'a> {
    fn new(file: &'a dyn StorageFile, pos: u64, end: u64) -> Self {
        HeaderWalker {
            file,
            pos,
            end,
            buf: Vec::new(),
            buf_start: 0,
            last_len: 0,
        }
    }

    fn next_header(&mut self) -> io::Result<Option<Located>> {
        if self.pos + HEADER_LEN as u64 > self.end {
            return Ok(None);
        }
        let in_buf = self.pos >= self.buf_start
            && self.pos + HEADER_LEN as u64 <= self.buf_start + self.buf.len() as u64;
        if !in_buf {
            // Batches as long as a chunk (producers' default is 16 KiB) are
            // usually followed by more like them.
            let chunk = if self.last_len >= HEADER_READ_BYTES as u64 {
                HEADER_LEN
            } else {
                HEADER_READ_BYTES
            };
            let n = (self.end - self.pos).min(chunk as u64) as usize;
            self.buf.resize(n, 0);
            self.file.read_exact_at(&mut self.buf, self.pos)?;
            self.buf_start = self.pos;
        }
        let at = (self.pos - self.buf_start) as usize;
        let header = BatchHeader::parse(&self.buf[at..at + HEADER_LEN])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        if self.pos + header.total_len() > self.end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("batch at {} runs past the end of the segment", self.pos),
            ));
        }
        let loc = Located {
            position: self.pos,
            header,
        };
        self.pos += header.total_len();
        self.last_len = header.total_len();
        Ok(Some(loc))
    }
}

/// The end state of a run of batches.
#[derive(Debug, Clone, Copy, Default)]
struct Tail {
    next_offset: u64,
    max_timestamp: i64,
    offset_of_max_timestamp: u64,
}

/// Reads headers from `start` to `end` (trusting lengths; the segment was recovered).
fn tail_from(file: &dyn StorageFile, base: u64, start: u64, end: u64) -> io::Result<Tail> {
    let mut walker = HeaderWalker::new(file, start, end);
    let mut t = Tail {
        next_offset: base,
        max_timestamp: NO_TIMESTAMP,
        offset_of_max_timestamp: base,
    };
    let mut last_end = start;
    while let Some(loc) = walker.next_header()? {
        let h = loc.header;
        t.next_offset = h.next_offset();
        if h.max_timestamp > t.max_timestamp {
            t.max_timestamp = h.max_timestamp;
            t.offset_of_max_timestamp = h.last_offset();
        }
        last_end = loc.position + h.total_len();
    }
    if last_end != end {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "segment ends inside a batch",
        ));
    }
    Ok(t)
}

/// What a full scan of a log file found.
#[derive(Debug, Default)]
struct Scan {
    valid_bytes: u64,
    batches: u64,
    tail: Tail,
    offset_entries: Vec<(u64, u32)>,
    time_entries: Vec<(i64, u64)>,
}

/// Reads every batch of a segment, checking lengths, CRCs and offsets, and computes
/// the index entries an appender would have written. Stops at the first bad batch.
fn scan_log(
    file: &dyn StorageFile,
    base: u64,
    size: u64,
    config: &LogConfig,
    check_crc: bool,
) -> io::Result<Scan> {
    let mut scan = Scan {
        tail: Tail {
            next_offset: base,
            max_timestamp: NO_TIMESTAMP,
            offset_of_max_timestamp: base,
        },
        ..Scan::default()
    };
    let batch_max = config
        .max_message_bytes
        .max(config.segment_bytes)
        .min(u32::MAX as u64);
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_start = 0u64;
    let mut pos = 0u64;
    let mut since_index = 0u64;
    loop {
        if pos + LOG_OVERHEAD as u64 > size {
            break;
        }
        // Make sure the whole batch is in the buffer.
        let have = |buf: &Vec<u8>, buf_start: u64, need: u64| {
            pos >= buf_start && pos + need <= buf_start + buf.len() as u64
        };
        if !have(&buf, buf_start, HEADER_LEN as u64) {
            let n = (size - pos).min(RECOVERY_READ_BYTES as u64) as usize;
            buf.resize(n, 0);
            file.read_exact_at(&mut buf, pos)?;
            buf_start = pos;
        }
        let at = (pos - buf_start) as usize;
        let Some(total) = header::peek_total_len(&buf[at..]) else {
            break;
        };
        if total < HEADER_LEN as u64 || total > batch_max || pos + total > size {
            break;
        }
        if !have(&buf, buf_start, total) {
            let n = (size - pos).min((RECOVERY_READ_BYTES as u64).max(total)) as usize;
            buf.resize(n, 0);
            file.read_exact_at(&mut buf, pos)?;
            buf_start = pos;
        }
        let at = (pos - buf_start) as usize;
        let bytes = &buf[at..at + total as usize];
        let h = if check_crc {
            match header::verify_crc(bytes) {
                Ok(h) => h,
                Err(_) => break,
            }
        } else {
            match BatchHeader::parse(bytes) {
                Ok(h) => h,
                Err(_) => break,
            }
        };
        if h.base_offset < scan.tail.next_offset || h.last_offset() - base > u32::MAX as u64 {
            break;
        }
        if since_index > config.index_interval_bytes {
            scan.offset_entries.push((h.last_offset(), pos as u32));
            let ts = scan.tail.max_timestamp.max(h.max_timestamp);
            let off = if h.max_timestamp > scan.tail.max_timestamp {
                h.last_offset()
            } else {
                scan.tail.offset_of_max_timestamp
            };
            if scan.time_entries.last().is_none_or(|&(t, _)| ts > t) {
                scan.time_entries.push((ts, off));
            }
            since_index = 0;
        }
        since_index += total;
        if h.max_timestamp > scan.tail.max_timestamp {
            scan.tail.max_timestamp = h.max_timestamp;
            scan.tail.offset_of_max_timestamp = h.last_offset();
        }
        scan.tail.next_offset = h.next_offset();
        scan.batches += 1;
        pos += total;
    }
    scan.valid_bytes = pos;
    let max_o = config.offset_index_entries_max() as usize;
    let max_t = config.time_index_entries_max() as usize;
    scan.offset_entries.truncate(max_o);
    scan.time_entries.truncate(max_t);
    Ok(scan)
}

/// Writes both indexes of a segment from a scan: temp file, fsync, rename, dir fsync.
fn write_index_files(storage: &dyn Storage, dir: &Path, base: u64, scan: &Scan) -> io::Result<()> {
    let mut offset_bytes = Vec::with_capacity(scan.offset_entries.len() * 8);
    for &(o, p) in &scan.offset_entries {
        offset_bytes.extend_from_slice(&((o - base) as u32).to_be_bytes());
        offset_bytes.extend_from_slice(&p.to_be_bytes());
    }
    let mut time_bytes = Vec::with_capacity(scan.time_entries.len() * 12);
    for &(t, o) in &scan.time_entries {
        time_bytes.extend_from_slice(&t.to_be_bytes());
        time_bytes.extend_from_slice(&((o - base) as u32).to_be_bytes());
    }
    for (file, bytes) in [
        (SegmentFile::Index, offset_bytes),
        (SegmentFile::TimeIndex, time_bytes),
    ] {
        let tmp = Segment::path(dir, base, file, FileState::Tmp);
        let f = storage.open(&tmp, OpenMode::OpenOrCreate)?;
        f.set_len(0)?;
        f.write_at(&bytes, 0)?;
        f.sync_data()?;
        drop(f);
        storage.rename(&tmp, &Segment::path(dir, base, file, FileState::Live))?;
    }
    storage.sync_dir(dir)
}
