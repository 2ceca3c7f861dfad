//! The metadata quorum's persistent Raft storage: entries, hard state and
//! the latest snapshot, on disk in `<data-dir>/__eddy_raft/`, fsynced before
//! raft-rs is told they are stored.
//!
//! - `entries`: an append-only file of records `u32 length | u32 CRC-32C |
//!   protobuf Entry`. Raft may overwrite a tail: a record whose index is at
//!   or below the last one replaces everything from that index on, at replay
//!   as in memory. A torn or corrupt tail ends the replay there and is cut.
//!   After a snapshot the file is rewritten with the entries it still needs.
//! - `hardstate`, `snapshot`: protobuf, replaced whole (temp file, fsync,
//!   rename, directory fsync).

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

/// Directory of the Raft storage under `data-dir`.
pub const RAFT_DIR: &str = "__eddy_raft";
const ENTRIES_FILE: &str = "entries";
const HARDSTATE_FILE: &str = "hardstate";
const SNAPSHOT_FILE: &str = "snapshot";
/// Largest entry record accepted at replay.
const ENTRY_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// Largest snapshot or hard-state file read.
const STATE_FILE_BYTES_MAX: u64 = 256 * 1024 * 1024;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

#[derive(Debug, Default)]
struct Core {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    /// `entries[0].index == snapshot index + 1`.
    entries: Vec<Entry>,
}

impl Core {
    fn snap_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn first_index(&self) -> u64 {
        self.snap_index() + 1
    }

    fn last_index(&self) -> u64 {
        self.entries.last().map_or(self.snap_index(), |e| e.index)
    }

    /// Drops entries from `index` on.
    fn cut_from(&mut self, index: u64) {
        let first = self.first_index();
        let keep = index.saturating_sub(first) as usize;
        self.entries.truncate(keep);
    }
}

/// The Raft storage: shared between the raft-rs `RawNode` (reads) and the
/// node task (writes, which persist before they return).
#[derive(Debug, Clone)]
pub struct DiskStorage {
    core: Arc<RwLock<Core>>,
    dir: PathBuf,
    entries_file: Arc<std::sync::Mutex<File>>,
}

fn io_raft(e: io::Error) -> raft::Error {
    raft::Error::Io(e)
}

fn read_bounded(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match File::open(path) {
        Ok(f) => {
            let mut bytes = Vec::new();
            f.take(STATE_FILE_BYTES_MAX).read_to_end(&mut bytes)?;
            Ok(Some(bytes))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
}

fn encode_record(e: &Entry, out: &mut Vec<u8>) -> io::Result<()> {
    let bytes = e.write_to_bytes().map_err(|e| corrupt("encode entry", e))?;
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&CRC.checksum(&bytes).to_be_bytes());
    out.extend_from_slice(&bytes);
    Ok(())
}

impl DiskStorage {
    /// Opens (or creates) the storage in `data_dir`; a new one starts with
    /// `voters` (raft ids) as its configuration.
    pub fn open(data_dir: &Path, voters: &[u64]) -> io::Result<DiskStorage> {
        let dir = data_dir.join(RAFT_DIR);
        std::fs::create_dir_all(&dir)?;
        let mut core = Core::default();
        if let Some(bytes) = read_bounded(&dir.join(SNAPSHOT_FILE))? {
            core.snapshot =
                Snapshot::parse_from_bytes(&bytes).map_err(|e| corrupt("raft snapshot", e))?;
            core.conf_state = core.snapshot.get_metadata().get_conf_state().clone();
        } else {
            core.conf_state.voters = voters.to_vec();
            core.snapshot
                .mut_metadata()
                .set_conf_state(core.conf_state.clone());
        }
        if let Some(bytes) = read_bounded(&dir.join(HARDSTATE_FILE))? {
            core.hard_state =
                HardState::parse_from_bytes(&bytes).map_err(|e| corrupt("raft hard state", e))?;
        }
        let path = dir.join(ENTRIES_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut pos = 0usize;
        while pos + 8 <= bytes.len() {
            let len =
                u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]);
            let crc = u32::from_be_bytes([
                bytes[pos + 4],
                bytes[pos + 5],
                bytes[pos + 6],
                bytes[pos + 7],
            ]);
            let end = pos + 8 + len as usize;
            if len > ENTRY_BYTES_MAX || end > bytes.len() {
                break;
            }
            let body = &bytes[pos + 8..end];
            if CRC.checksum(body) != crc {
                break;
            }
            let Ok(entry) = Entry::parse_from_bytes(body) else {
                break;
            };
            pos = end;
            if entry.index <= core.snap_index() {
                continue;
            }
            if entry.index > core.last_index() + 1 {
                return Err(corrupt(
                    "raft entries",
                    format!(
                        "gap before entry {} (last {})",
                        entry.index,
                        core.last_index()
                    ),
                ));
            }
            core.cut_from(entry.index);
            core.entries.push(entry);
        }
        if pos < bytes.len() {
            log::warn!(
                "{}: cut a torn or corrupt tail of {} byte(s)",
                path.display(),
                bytes.len() - pos
            );
            file.set_len(pos as u64)?;
            file.sync_all()?;
        }
        // The commit index can never be below the snapshot.
        if core.hard_state.commit < core.snap_index() {
            core.hard_state.commit = core.snap_index();
        }
        Ok(DiskStorage {
            core: Arc::new(RwLock::new(core)),
            dir,
            entries_file: Arc::new(std::sync::Mutex::new(file)),
        })
    }

    fn write_core(&self) -> std::sync::RwLockWriteGuard<'_, Core> {
        self.core.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read_core(&self) -> std::sync::RwLockReadGuard<'_, Core> {
        self.core.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends (or overwrites from their first index) `entries`, durably.
    pub fn append(&self, entries: &[Entry]) -> io::Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut buf = Vec::new();
        for e in entries {
            encode_record(e, &mut buf)?;
        }
        {
            let mut file = self.entries_file.lock().unwrap_or_else(|p| p.into_inner());
            file.write_all(&buf)?;
            file.sync_data()?;
        }
        let mut core = self.write_core();
        if first.index <= core.snap_index() {
            return Err(corrupt(
                "raft append",
                format!("entry {} is below the snapshot", first.index),
            ));
        }
        core.cut_from(first.index);
        core.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Stores the hard state durably.
    pub fn set_hard_state(&self, hs: &HardState) -> io::Result<()> {
        let bytes = hs
            .write_to_bytes()
            .map_err(|e| corrupt("encode hard state", e))?;
        replace_file(&self.dir, HARDSTATE_FILE, &bytes)?;
        self.write_core().hard_state = hs.clone();
        Ok(())
    }

    /// Sets the commit index (from a light ready) durably.
    pub fn set_commit(&self, commit: u64) -> io::Result<()> {
        let mut hs = self.read_core().hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// Installs a snapshot received from the leader: the entries it covers go.
    pub fn apply_snapshot(&self, snapshot: &Snapshot) -> io::Result<()> {
        let bytes = snapshot
            .write_to_bytes()
            .map_err(|e| corrupt("encode snapshot", e))?;
        replace_file(&self.dir, SNAPSHOT_FILE, &bytes)?;
        let mut core = self.write_core();
        let meta = snapshot.get_metadata();
        core.conf_state = meta.get_conf_state().clone();
        if core.hard_state.commit < meta.index {
            core.hard_state.commit = meta.index;
        }
        if core.hard_state.term < meta.term {
            core.hard_state.term = meta.term;
        }
        let index = meta.index;
        let keep: Vec<Entry> = core
            .entries
            .iter()
            .filter(|e| e.index > index)
            .cloned()
            .collect();
        core.snapshot = snapshot.clone();
        // Entries after the snapshot survive only if they follow on from it.
        core.entries = if keep.first().is_some_and(|e| e.index == index + 1) {
            keep
        } else {
            Vec::new()
        };
        drop(core);
        self.rewrite_entries()?;
        let hs = self.read_core().hard_state.clone();
        self.set_hard_state(&hs)
    }

    /// Takes a snapshot of the state at `index` (applied here) holding
    /// `data`, and drops the entries it covers.
    pub fn compact(&self, index: u64, data: Vec<u8>) -> io::Result<()> {
        let mut snapshot = Snapshot::default();
        {
            let core = self.read_core();
            if index <= core.snap_index() || index > core.last_index() {
                return Ok(());
            }
            let term = core
                .entries
                .get((index - core.first_index()) as usize)
                .map_or(0, |e| e.term);
            let meta = snapshot.mut_metadata();
            meta.index = index;
            meta.term = term;
            meta.set_conf_state(core.conf_state.clone());
        }
        snapshot.data = data.into();
        let bytes = snapshot
            .write_to_bytes()
            .map_err(|e| corrupt("encode snapshot", e))?;
        replace_file(&self.dir, SNAPSHOT_FILE, &bytes)?;
        {
            let mut core = self.write_core();
            core.entries.retain(|e| e.index > index);
            core.snapshot = snapshot;
        }
        self.rewrite_entries()
    }

    fn rewrite_entries(&self) -> io::Result<()> {
        let mut buf = Vec::new();
        for e in &self.read_core().entries {
            encode_record(e, &mut buf)?;
        }
        let mut file = self.entries_file.lock().unwrap_or_else(|p| p.into_inner());
        replace_file(&self.dir, ENTRIES_FILE, &buf)?;
        *file = OpenOptions::new()
            .append(true)
            .read(true)
            .open(self.dir.join(ENTRIES_FILE))?;
        Ok(())
    }

    /// The latest snapshot (its data is the metadata state at its index).
    pub fn snapshot_now(&self) -> Snapshot {
        self.read_core().snapshot.clone()
    }

    /// Entries stored after the snapshot.
    pub fn entry_count(&self) -> u64 {
        self.read_core().entries.len() as u64
    }
}

impl raft::Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let core = self.read_core();
        Ok(RaftState::new(
            core.hard_state.clone(),
            core.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let core = self.read_core();
        if low < core.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > core.last_index() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let first = core.first_index();
        let mut out = core.entries[(low - first) as usize..(high - first) as usize].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let core = self.read_core();
        if idx == core.snap_index() {
            return Ok(core.snapshot.get_metadata().term);
        }
        if idx < core.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > core.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(core.entries[(idx - core.first_index()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read_core().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read_core().last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let core = self.read_core();
        if core.snap_index() < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(core.snapshot.clone())
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<DiskStorage>();
    let _ = io_raft;
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 3].into(),
            ..Default::default()
        }
    }

    #[test]
    fn entries_hard_state_and_snapshots_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = DiskStorage::open(dir.path(), &[1, 2, 3]).expect("open");
        assert_eq!(
            s.initial_state().expect("state").conf_state.voters,
            vec![1, 2, 3]
        );
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
            .expect("append");
        // A new leader overwrites the tail.
        s.append(&[entry(3, 2), entry(4, 2)]).expect("overwrite");
        let hs = HardState {
            term: 2,
            commit: 3,
            ..Default::default()
        };
        s.set_hard_state(&hs).expect("hs");
        drop(s);

        let s = DiskStorage::open(dir.path(), &[1, 2, 3]).expect("reopen");
        assert_eq!(s.last_index().expect("last"), 4);
        assert_eq!(s.term(3).expect("term"), 2);
        assert_eq!(s.initial_state().expect("state").hard_state.commit, 3);
        assert_eq!(
            s.initial_state().expect("state").conf_state.voters,
            vec![1, 2, 3]
        );

        s.compact(3, b"state".to_vec()).expect("compact");
        assert_eq!(s.first_index().expect("first"), 4);
        assert_eq!(s.term(3).expect("term of the snapshot"), 2);
        assert!(matches!(
            s.entries(2, 4, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        drop(s);
        // After a snapshot, its configuration is the one in force.
        let s = DiskStorage::open(dir.path(), &[9]).expect("reopen");
        assert_eq!(
            s.initial_state().expect("state").conf_state.voters,
            vec![1, 2, 3]
        );
        assert_eq!(s.first_index().expect("first"), 4);
        assert_eq!(s.last_index().expect("last"), 4);
        assert_eq!(&s.snapshot(0, 2).expect("snap").data[..], b"state");
    }

    #[test]
    fn a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = DiskStorage::open(dir.path(), &[1]).expect("open");
        s.append(&[entry(1, 1), entry(2, 1)]).expect("append");
        drop(s);
        let path = dir.path().join(RAFT_DIR).join(ENTRIES_FILE);
        let len = std::fs::metadata(&path).expect("meta").len();
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.set_len(len - 2).expect("tear");
        let s = DiskStorage::open(dir.path(), &[1]).expect("reopen");
        assert_eq!(s.last_index().expect("last"), 1);
    }
}
