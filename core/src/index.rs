//! Sparse offset index and time index of one segment.
//!
//! Both are arrays of fixed-size big-endian entries, Kafka's layout:
//! - `.index`: relative offset u32, file position u32 (8 bytes);
//! - `.timeindex`: timestamp i64, relative offset u32 (12 bytes).
//!
//! On a real disk the active segment's index files are preallocated to
//! `segment.index.bytes` and memory-mapped; they are trimmed to their entries when
//! the segment rolls or the log closes. On a disk without maps (the simulated one)
//! entries are kept in memory and written through with positional writes.
//!
//! An index is derived from its log, never evidence about it: callers check what a
//! lookup points at, and [`OffsetIndex::check`] / [`TimeIndex::check`] reject an
//! index that does not fit its log so it gets rebuilt.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::storage::{OpenMode, Storage, StorageFile};

/// Bytes per offset index entry.
pub const OFFSET_ENTRY_BYTES: usize = 8;
/// Bytes per time index entry.
pub const TIME_ENTRY_BYTES: usize = 12;

enum Backing {
    Mapped(memmap2::MmapMut),
    Buffered(Vec<u8>),
}

/// A file of fixed-size entries.
struct IndexFile {
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    backing: Backing,
    entry_bytes: usize,
    entries: u32,
    max_entries: u32,
}

impl std::fmt::Debug for IndexFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexFile")
            .field("path", &self.path)
            .field("entries", &self.entries)
            .field("max_entries", &self.max_entries)
            .finish()
    }
}

impl IndexFile {
    /// Opens or creates the file. `entries` of an existing file are taken from its
    /// length; with `writable`, the file is extended to `max_entries` and mapped.
    fn open(
        storage: &dyn Storage,
        path: &Path,
        entry_bytes: usize,
        max_entries: u32,
        mode: OpenMode,
        writable: bool,
    ) -> io::Result<IndexFile> {
        let file = storage.open(path, mode)?;
        let len = file.len()?;
        let entries = (len / entry_bytes as u64).min(max_entries as u64) as u32;
        let used = entries as u64 * entry_bytes as u64;
        let mut index = IndexFile {
            path: path.to_path_buf(),
            file,
            backing: Backing::Buffered(Vec::new()),
            entry_bytes,
            entries,
            max_entries,
        };
        if writable {
            let full = max_entries as u64 * entry_bytes as u64;
            if len != full {
                index.file.set_len(full)?;
            }
            if let Some(map) = index.file.map_mut()? {
                index.backing = Backing::Mapped(map);
                return Ok(index);
            }
            // No maps on this storage: go back to the exact size, write through.
            index.file.set_len(used)?;
        } else if len != used {
            index.file.set_len(used)?;
        }
        let mut buf = vec![0u8; used as usize];
        index.file.read_exact_at(&mut buf, 0)?;
        index.backing = Backing::Buffered(buf);
        Ok(index)
    }

    fn bytes(&self) -> &[u8] {
        let used = self.entries as usize * self.entry_bytes;
        match &self.backing {
            Backing::Mapped(m) => &m[..used],
            Backing::Buffered(b) => &b[..used],
        }
    }

    fn entry(&self, i: u32) -> &[u8] {
        let at = i as usize * self.entry_bytes;
        &self.bytes()[at..at + self.entry_bytes]
    }

    fn push(&mut self, entry: &[u8]) -> io::Result<()> {
        assert_eq!(entry.len(), self.entry_bytes);
        assert!(
            self.entries < self.max_entries,
            "index {:?} is full",
            self.path
        );
        let at = self.entries as usize * self.entry_bytes;
        match &mut self.backing {
            Backing::Mapped(m) => m[at..at + entry.len()].copy_from_slice(entry),
            Backing::Buffered(b) => {
                self.file.write_at(entry, at as u64)?;
                b.truncate(at);
                b.extend_from_slice(entry);
            }
        }
        self.entries += 1;
        Ok(())
    }

    fn truncate_entries(&mut self, entries: u32) -> io::Result<()> {
        if entries >= self.entries {
            return Ok(());
        }
        self.entries = entries;
        let used = entries as usize * self.entry_bytes;
        match &mut self.backing {
            Backing::Mapped(m) => m[used..].fill(0),
            Backing::Buffered(b) => {
                b.truncate(used);
                self.file.set_len(used as u64)?;
            }
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        match &self.backing {
            Backing::Mapped(m) => m.flush(),
            Backing::Buffered(_) => self.file.sync_data(),
        }
    }

    /// Drops the map and cuts the file to its entries (on roll and close).
    fn trim(&mut self) -> io::Result<()> {
        let used = self.entries as usize * self.entry_bytes;
        if let Backing::Mapped(m) = &self.backing {
            m.flush()?;
            let buf = m[..used].to_vec();
            self.backing = Backing::Buffered(buf);
        }
        if self.file.len()? != used as u64 {
            self.file.set_len(used as u64)?;
        }
        self.file.sync_data()
    }

    fn is_full(&self) -> bool {
        self.entries >= self.max_entries
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    i64::from_be_bytes(a)
}

/// Largest `i` in `0..n` with `key(i) <= target`, given `key` increasing; `None` if none.
fn floor_search(n: u32, target: i128, key: impl Fn(u32) -> i128) -> Option<u32> {
    let (mut lo, mut hi) = (0u32, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if key(mid) <= target {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo.checked_sub(1)
}

/// Sparse map from offset to file position within one segment.
#[derive(Debug)]
pub struct OffsetIndex {
    base: u64,
    file: IndexFile,
}

impl OffsetIndex {
    /// Opens or creates the index of the segment starting at `base`.
    pub fn open(
        storage: &dyn Storage,
        path: &Path,
        base: u64,
        max_entries: u32,
        mode: OpenMode,
        writable: bool,
    ) -> io::Result<OffsetIndex> {
        let file = IndexFile::open(
            storage,
            path,
            OFFSET_ENTRY_BYTES,
            max_entries,
            mode,
            writable,
        )?;
        Ok(OffsetIndex { base, file })
    }

    /// Number of entries.
    pub fn entries(&self) -> u32 {
        self.file.entries
    }

    /// No room for another entry.
    pub fn is_full(&self) -> bool {
        self.file.is_full()
    }

    /// Entry `i` as (absolute offset, position).
    pub fn entry(&self, i: u32) -> (u64, u32) {
        let e = self.file.entry(i);
        (self.base + be_u32(&e[0..4]) as u64, be_u32(&e[4..8]))
    }

    /// The last entry.
    pub fn last(&self) -> Option<(u64, u32)> {
        self.file.entries.checked_sub(1).map(|i| self.entry(i))
    }

    /// Adds an entry; ignored unless offset and position are past the last entry.
    pub fn append(&mut self, offset: u64, position: u32) -> io::Result<()> {
        if let Some((o, p)) = self.last()
            && (offset <= o || position <= p)
        {
            return Ok(());
        }
        let rel = offset - self.base;
        assert!(
            rel <= u32::MAX as u64,
            "offset {offset} too far from base {}",
            self.base
        );
        let mut e = [0u8; OFFSET_ENTRY_BYTES];
        e[0..4].copy_from_slice(&(rel as u32).to_be_bytes());
        e[4..8].copy_from_slice(&position.to_be_bytes());
        self.file.push(&e)
    }

    /// The entry with the largest offset `<= target`, or the segment start.
    pub fn lookup(&self, target: u64) -> (u64, u32) {
        match floor_search(self.file.entries, target as i128, |i| {
            self.entry(i).0 as i128
        }) {
            Some(i) => self.entry(i),
            None => (self.base, 0),
        }
    }

    /// Removes entries for offsets `>= offset`.
    pub fn truncate_to(&mut self, offset: u64) -> io::Result<()> {
        let keep = floor_search(self.file.entries, offset as i128 - 1, |i| {
            self.entry(i).0 as i128
        })
        .map_or(0, |i| i + 1);
        self.file.truncate_entries(keep)
    }

    /// Checks entries increase and point inside a log of `log_bytes` whose offsets end
    /// before `next_offset`.
    pub fn check(&self, log_bytes: u64, next_offset: u64) -> Result<(), String> {
        let mut prev: Option<(u64, u32)> = None;
        for i in 0..self.file.entries {
            let (o, p) = self.entry(i);
            if let Some((po, pp)) = prev
                && (o <= po || p <= pp)
            {
                return Err(format!("entry {i} ({o}, {p}) does not increase"));
            }
            if o >= next_offset || p as u64 >= log_bytes {
                return Err(format!("entry {i} ({o}, {p}) points past the log"));
            }
            prev = Some((o, p));
        }
        Ok(())
    }

    /// Makes the entries durable.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync()
    }

    /// Cuts the file to its entries and syncs it.
    pub fn trim(&mut self) -> io::Result<()> {
        self.file.trim()
    }
}

/// Sparse map from timestamp to offset within one segment.
#[derive(Debug)]
pub struct TimeIndex {
    base: u64,
    file: IndexFile,
}

impl TimeIndex {
    /// Opens or creates the time index of the segment starting at `base`.
    pub fn open(
        storage: &dyn Storage,
        path: &Path,
        base: u64,
        max_entries: u32,
        mode: OpenMode,
        writable: bool,
    ) -> io::Result<TimeIndex> {
        let file = IndexFile::open(storage, path, TIME_ENTRY_BYTES, max_entries, mode, writable)?;
        Ok(TimeIndex { base, file })
    }

    /// Number of entries.
    pub fn entries(&self) -> u32 {
        self.file.entries
    }

    /// No room for another entry.
    pub fn is_full(&self) -> bool {
        self.file.is_full()
    }

    /// Entry `i` as (timestamp, absolute offset).
    pub fn entry(&self, i: u32) -> (i64, u64) {
        let e = self.file.entry(i);
        (be_i64(&e[0..8]), self.base + be_u32(&e[8..12]) as u64)
    }

    /// The last entry.
    pub fn last(&self) -> Option<(i64, u64)> {
        self.file.entries.checked_sub(1).map(|i| self.entry(i))
    }

    /// Adds an entry if `timestamp` is larger than the last one's.
    pub fn maybe_append(&mut self, timestamp: i64, offset: u64) -> io::Result<()> {
        if let Some((t, o)) = self.last()
            && (timestamp <= t || offset < o)
        {
            return Ok(());
        }
        let rel = offset - self.base;
        assert!(rel <= u32::MAX as u64);
        let mut e = [0u8; TIME_ENTRY_BYTES];
        e[0..8].copy_from_slice(&timestamp.to_be_bytes());
        e[8..12].copy_from_slice(&(rel as u32).to_be_bytes());
        self.file.push(&e)
    }

    /// The offset of the last entry whose timestamp is `< target`: every record up to
    /// and including it is older than `target`, so a search may start after it.
    pub fn lookup_before(&self, target: i64) -> Option<u64> {
        floor_search(self.file.entries, target as i128 - 1, |i| {
            self.entry(i).0 as i128
        })
        .map(|i| self.entry(i).1)
    }

    /// Removes entries for offsets `>= offset`.
    pub fn truncate_to(&mut self, offset: u64) -> io::Result<()> {
        let keep = floor_search(self.file.entries, offset as i128 - 1, |i| {
            self.entry(i).1 as i128
        })
        .map_or(0, |i| i + 1);
        self.file.truncate_entries(keep)
    }

    /// Checks timestamps increase and offsets stay inside the segment.
    pub fn check(&self, next_offset: u64) -> Result<(), String> {
        let mut prev: Option<(i64, u64)> = None;
        for i in 0..self.file.entries {
            let (t, o) = self.entry(i);
            if let Some((pt, po)) = prev
                && (t <= pt || o < po)
            {
                return Err(format!("time entry {i} ({t}, {o}) does not increase"));
            }
            if o >= next_offset {
                return Err(format!("time entry {i} ({t}, {o}) points past the log"));
            }
            prev = Some((t, o));
        }
        Ok(())
    }

    /// Makes the entries durable.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync()
    }

    /// Cuts the file to its entries and syncs it.
    pub fn trim(&mut self) -> io::Result<()> {
        self.file.trim()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimStorage;
    use crate::storage::FsStorage;

    fn check_offset_index(storage: &dyn Storage, dir: &Path) {
        let path = dir.join("00000000000000000100.index");
        let mut idx = OffsetIndex::open(storage, &path, 100, 4, OpenMode::CreateNew, true).unwrap();
        assert_eq!(idx.lookup(150), (100, 0));
        idx.append(110, 4096).unwrap();
        idx.append(120, 8192).unwrap();
        idx.append(120, 9000).unwrap(); // not increasing: ignored
        idx.append(130, 12288).unwrap();
        assert_eq!(idx.entries(), 3);
        assert_eq!(idx.lookup(105), (100, 0));
        assert_eq!(idx.lookup(110), (110, 4096));
        assert_eq!(idx.lookup(125), (120, 8192));
        assert_eq!(idx.lookup(1000), (130, 12288));
        idx.append(140, 16384).unwrap();
        assert!(idx.is_full());
        idx.truncate_to(121).unwrap();
        assert_eq!(idx.entries(), 2);
        assert_eq!(idx.lookup(1000), (120, 8192));
        idx.trim().unwrap();
        drop(idx);
        let idx = OffsetIndex::open(storage, &path, 100, 4, OpenMode::Existing, false).unwrap();
        assert_eq!(idx.entries(), 2);
        assert_eq!(idx.last(), Some((120, 8192)));
        assert!(idx.check(10_000, 200).is_ok());
        assert!(idx.check(5_000, 200).is_err());
        assert!(idx.check(10_000, 115).is_err());
    }

    #[test]
    fn offset_index_on_real_and_simulated_disks() {
        let tmp = tempfile::tempdir().unwrap();
        check_offset_index(&FsStorage, tmp.path());
        let sim = SimStorage::new();
        sim.create_dir_all(Path::new("/p")).unwrap();
        check_offset_index(&sim, Path::new("/p"));
    }

    #[test]
    fn mapped_index_is_preallocated_then_trimmed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("00000000000000000000.index");
        let mut idx =
            OffsetIndex::open(&FsStorage, &path, 0, 512, OpenMode::CreateNew, true).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 512 * 8);
        idx.append(5, 100).unwrap();
        idx.trim().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8);
        drop(idx);
        // Reopened as active again: preallocated, entries kept.
        let idx = OffsetIndex::open(&FsStorage, &path, 0, 512, OpenMode::Existing, true).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 512 * 8);
        assert_eq!(idx.lookup(7), (5, 100));
    }

    #[test]
    fn time_index_finds_where_to_start() {
        let sim = SimStorage::new();
        sim.create_dir_all(Path::new("/p")).unwrap();
        let mut t = TimeIndex::open(
            &sim,
            Path::new("/p/x.timeindex"),
            0,
            10,
            OpenMode::CreateNew,
            true,
        )
        .unwrap();
        t.maybe_append(1000, 10).unwrap();
        t.maybe_append(1000, 12).unwrap(); // not larger: ignored
        t.maybe_append(2000, 20).unwrap();
        t.maybe_append(3000, 30).unwrap();
        assert_eq!(t.entries(), 3);
        assert_eq!(t.lookup_before(1000), None);
        assert_eq!(t.lookup_before(1001), Some(10));
        assert_eq!(t.lookup_before(2500), Some(20));
        assert_eq!(t.lookup_before(i64::MAX), Some(30));
        t.truncate_to(20).unwrap();
        assert_eq!(t.last(), Some((1000, 10)));
        assert!(t.check(11).is_ok());
        assert!(t.check(10).is_err());
    }
}
