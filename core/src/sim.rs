//! A simulated disk for crash tests.
//!
//! It keeps, per file, the bytes that are durable and the writes made since the last
//! `sync_data`, and, per directory, which names are durable. [`SimStorage::crash`]
//! throws away what a power cut could lose: unsynced writes (all of them, or with
//! [`CrashMode::Torn`] a random prefix with a torn last write), and directory entries
//! created, renamed or removed since the last directory sync. Faults can be armed:
//! fail the Nth write or fsync from now, or run out of space after N more bytes.
//!
//! Handles opened before a crash fail afterwards, as a dead process's would.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::{OpenMode, Storage, StorageFile};

/// What a crash loses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced write is lost.
    DropUnsynced,
    /// A prefix of the unsynced writes survives, the last of them possibly cut short
    /// (chosen by the seed).
    Torn {
        /// Seed for which writes survive.
        seed: u64,
    },
}

#[derive(Debug, Clone)]
enum Op {
    Write { pos: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<Op>,
}

impl Inode {
    fn apply(buf: &mut Vec<u8>, op: &Op) {
        match op {
            Op::Write { pos, data } => {
                let pos = *pos as usize;
                let end = pos + data.len();
                if buf.len() < end {
                    buf.resize(end, 0);
                }
                buf[pos..end].copy_from_slice(data);
            }
            Op::SetLen(len) => buf.resize(*len as usize, 0),
        }
    }
}

type InodeId = u64;

#[derive(Debug, Default)]
struct State {
    generation: u64,
    next_inode: InodeId,
    inodes: BTreeMap<InodeId, Inode>,
    /// Names as a running process sees them.
    names: BTreeMap<PathBuf, InodeId>,
    /// Names as they would be found after a crash.
    durable_names: BTreeMap<PathBuf, InodeId>,
    dirs: std::collections::BTreeSet<PathBuf>,
    faults: Faults,
    stats: SimStats,
}

#[derive(Debug, Default, Clone)]
struct Faults {
    fail_write_in: Option<u64>,
    fail_sync_in: Option<u64>,
    space_left_bytes: Option<u64>,
    sync_delay: Option<std::time::Duration>,
}

/// Counters of what the log did to the disk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SimStats {
    /// Bytes asked for by `read_at` calls.
    pub bytes_read: u64,
    /// `write_at` calls.
    pub writes: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// `sync_data` calls on files.
    pub file_syncs: u64,
    /// `sync_dir` calls.
    pub dir_syncs: u64,
}

/// The simulated disk. Cheap to clone; clones share the disk.
#[derive(Debug, Clone, Default)]
pub struct SimStorage {
    state: Arc<Mutex<State>>,
}

impl SimStorage {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a test failure already; keep the state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Power cut: loses what was not synced and invalidates every open handle.
    pub fn crash(&self, mode: CrashMode) {
        let mut st = self.lock();
        st.generation += 1;
        let mut rng = mode_rng(mode);
        for inode in st.inodes.values_mut() {
            let mut image = std::mem::take(&mut inode.durable);
            if let Some(rng) = rng.as_mut() {
                let pending = std::mem::take(&mut inode.pending);
                let keep = (rng.next() % (pending.len() as u64 + 1)) as usize;
                for (i, op) in pending.into_iter().take(keep).enumerate() {
                    match op {
                        Op::Write { pos, mut data } if i + 1 == keep && !data.is_empty() => {
                            let cut = (rng.next() % (data.len() as u64 + 1)) as usize;
                            data.truncate(cut);
                            Inode::apply(&mut image, &Op::Write { pos, data });
                        }
                        op => Inode::apply(&mut image, &op),
                    }
                }
            }
            inode.pending.clear();
            inode.current = image.clone();
            inode.durable = image;
        }
        st.names = st.durable_names.clone();
        let live: std::collections::BTreeSet<InodeId> = st.names.values().copied().collect();
        st.inodes.retain(|id, _| live.contains(id));
        st.faults = Faults::default();
    }

    /// The next `n`th write from now (1 = the very next) fails with an I/O error.
    pub fn fail_write_in(&self, n: u64) {
        self.lock().faults.fail_write_in = Some(n.max(1));
    }

    /// The next `n`th fsync (file or directory) from now fails.
    pub fn fail_sync_in(&self, n: u64) {
        self.lock().faults.fail_sync_in = Some(n.max(1));
    }

    /// Writes fail with "no space" once `bytes` more bytes have been written.
    pub fn set_space_left(&self, bytes: Option<u64>) {
        self.lock().faults.space_left_bytes = bytes;
    }

    /// Makes every file sync take `delay` (a slow SD card), without holding the disk lock.
    pub fn set_sync_delay(&self, delay: Option<std::time::Duration>) {
        self.lock().faults.sync_delay = delay;
    }

    /// Clears armed faults.
    pub fn clear_faults(&self) {
        self.lock().faults = Faults::default();
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// Current bytes of a file (what a reader in the running process sees).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.lock();
        let id = st.names.get(path)?;
        st.inodes.get(id).map(|i| i.current.clone())
    }

    /// Overwrites a file's bytes, durably (to plant garbage or corruption in tests).
    pub fn write_file_durable(&self, path: &Path, data: &[u8]) {
        let mut st = self.lock();
        let id = match st.names.get(path) {
            Some(id) => *id,
            None => {
                let id = st.next_inode;
                st.next_inode += 1;
                st.inodes.insert(id, Inode::default());
                st.names.insert(path.to_path_buf(), id);
                st.durable_names.insert(path.to_path_buf(), id);
                id
            }
        };
        if let Some(inode) = st.inodes.get_mut(&id) {
            inode.durable = data.to_vec();
            inode.current = data.to_vec();
            inode.pending.clear();
        }
    }

    /// Removes a file durably (to simulate an operator deleting an index).
    pub fn remove_durable(&self, path: &Path) {
        let mut st = self.lock();
        st.names.remove(path);
        st.durable_names.remove(path);
    }
}

fn mode_rng(mode: CrashMode) -> Option<SplitMix> {
    match mode {
        CrashMode::DropUnsynced => None,
        CrashMode::Torn { seed } => Some(SplitMix(seed)),
    }
}

/// A tiny deterministic generator, enough to choose what a crash keeps.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("simulated {what} failure"))
}

fn stale() -> io::Error {
    io::Error::other("simulated file handle from before a crash")
}

#[derive(Debug)]
struct SimFile {
    disk: SimStorage,
    inode: InodeId,
    generation: u64,
}

impl SimFile {
    fn with<R>(&self, f: impl FnOnce(&mut State, InodeId) -> io::Result<R>) -> io::Result<R> {
        let mut st = self.disk.lock();
        if st.generation != self.generation || !st.inodes.contains_key(&self.inode) {
            return Err(stale());
        }
        f(&mut st, self.inode)
    }
}

fn inode_mut(st: &mut State, id: InodeId) -> io::Result<&mut Inode> {
    st.inodes.get_mut(&id).ok_or_else(stale)
}

impl StorageFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        self.with(|st, id| Ok(inode_mut(st, id)?.current.len() as u64))
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.with(|st, id| {
            st.stats.bytes_read += buf.len() as u64;
            let data = &inode_mut(st, id)?.current;
            let pos = pos as usize;
            if pos >= data.len() {
                return Ok(0);
            }
            let n = buf.len().min(data.len() - pos);
            buf[..n].copy_from_slice(&data[pos..pos + n]);
            Ok(n)
        })
    }

    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.with(|st, id| {
            if let Some(n) = st.faults.fail_write_in.as_mut() {
                *n -= 1;
                if *n == 0 {
                    st.faults.fail_write_in = None;
                    return Err(injected("write"));
                }
            }
            if let Some(left) = st.faults.space_left_bytes.as_mut() {
                if (buf.len() as u64) > *left {
                    return Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "simulated disk is full",
                    ));
                }
                *left -= buf.len() as u64;
            }
            st.stats.writes += 1;
            st.stats.bytes_written += buf.len() as u64;
            let inode = inode_mut(st, id)?;
            let op = Op::Write {
                pos,
                data: buf.to_vec(),
            };
            Inode::apply(&mut inode.current, &op);
            inode.pending.push(op);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|st, id| {
            let inode = inode_mut(st, id)?;
            let op = Op::SetLen(len);
            Inode::apply(&mut inode.current, &op);
            inode.pending.push(op);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        let delay = self.disk.lock().faults.sync_delay;
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        self.with(|st, id| {
            if let Some(n) = st.faults.fail_sync_in.as_mut() {
                *n -= 1;
                if *n == 0 {
                    st.faults.fail_sync_in = None;
                    return Err(injected("fsync"));
                }
            }
            st.stats.file_syncs += 1;
            let inode = inode_mut(st, id)?;
            inode.durable = inode.current.clone();
            inode.pending.clear();
            Ok(())
        })
    }
}

impl Storage for SimStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut st = self.lock();
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if !st.dirs.contains(&parent) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no directory {}", parent.display()),
            ));
        }
        let existing = st.names.get(path).copied();
        let id = match (existing, mode) {
            (Some(_), OpenMode::CreateNew) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists", path.display()),
                ));
            }
            (Some(id), _) => id,
            (None, OpenMode::Existing) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no file {}", path.display()),
                ));
            }
            (None, _) => {
                let id = st.next_inode;
                st.next_inode += 1;
                st.inodes.insert(id, Inode::default());
                st.names.insert(path.to_path_buf(), id);
                id
            }
        };
        Ok(Arc::new(SimFile {
            disk: self.clone(),
            inode: id,
            generation: st.generation,
        }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.lock();
        if !st.dirs.contains(dir) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no directory {}", dir.display()),
            ));
        }
        let mut names: Vec<String> = st
            .names
            .keys()
            .chain(st.dirs.iter())
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        let id = st.names.remove(from).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no file {}", from.display()),
            )
        })?;
        st.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.names.remove(path).map(|_| ()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no file {}", path.display()),
            )
        })
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Directories are treated as durable at once: the log syncs the parent after
        // creating a partition directory, and modelling that adds nothing to its tests.
        let mut st = self.lock();
        let mut p = Some(dir);
        while let Some(d) = p {
            st.dirs.insert(d.to_path_buf());
            p = d.parent();
        }
        Ok(())
    }

    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.names.keys().any(|p| p.parent() == Some(dir)) {
            return Err(io::Error::other(format!(
                "directory {} is not empty",
                dir.display()
            )));
        }
        st.dirs.remove(dir);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if let Some(n) = st.faults.fail_sync_in.as_mut() {
            *n -= 1;
            if *n == 0 {
                st.faults.fail_sync_in = None;
                return Err(injected("directory fsync"));
            }
        }
        st.stats.dir_syncs += 1;
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        st.durable_names.retain(|p, _| !in_dir(p));
        let current: Vec<(PathBuf, InodeId)> = st
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        st.durable_names.extend(current);
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let st = self.lock();
        st.names.contains_key(path) || st.dirs.contains(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_bytes_and_names_are_lost_on_crash() {
        let disk = SimStorage::new();
        let dir = Path::new("/d");
        disk.create_dir_all(dir).unwrap();
        let f = disk.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        disk.sync_dir(dir).unwrap();
        f.write_at(b" world", 5).unwrap();
        let g = disk.open(&dir.join("b"), OpenMode::CreateNew).unwrap();
        g.write_at(b"x", 0).unwrap();
        g.sync_data().unwrap(); // data synced, name not
        disk.crash(CrashMode::DropUnsynced);
        assert_eq!(disk.read_file(&dir.join("a")).unwrap(), b"hello");
        assert!(disk.read_file(&dir.join("b")).is_none());
        assert!(f.len().is_err(), "old handles are dead after a crash");
    }

    #[test]
    fn renames_need_a_directory_sync() {
        let disk = SimStorage::new();
        let dir = Path::new("/d");
        disk.create_dir_all(dir).unwrap();
        let f = disk.open(&dir.join("a.tmp"), OpenMode::CreateNew).unwrap();
        f.write_at(b"v1", 0).unwrap();
        f.sync_data().unwrap();
        disk.sync_dir(dir).unwrap();
        disk.rename(&dir.join("a.tmp"), &dir.join("a")).unwrap();
        disk.crash(CrashMode::DropUnsynced);
        assert!(disk.exists(&dir.join("a.tmp")));
        assert!(!disk.exists(&dir.join("a")));
    }

    #[test]
    fn torn_crash_keeps_a_prefix_of_writes() {
        for seed in 0..50 {
            let disk = SimStorage::new();
            let dir = Path::new("/d");
            disk.create_dir_all(dir).unwrap();
            let f = disk.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
            disk.sync_dir(dir).unwrap();
            f.write_at(b"aaaa", 0).unwrap();
            f.write_at(b"bbbb", 4).unwrap();
            f.write_at(b"cccc", 8).unwrap();
            disk.crash(CrashMode::Torn { seed });
            let got = disk.read_file(&dir.join("a")).unwrap();
            assert!(b"aaaabbbbcccc".starts_with(&got), "seed {seed}: {got:?}");
        }
    }

    #[test]
    fn faults_fire_once_at_the_nth_call() {
        let disk = SimStorage::new();
        let dir = Path::new("/d");
        disk.create_dir_all(dir).unwrap();
        let f = disk.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        disk.fail_write_in(2);
        f.write_at(b"1", 0).unwrap();
        assert!(f.write_at(b"2", 1).is_err());
        f.write_at(b"3", 1).unwrap();
        disk.fail_sync_in(1);
        assert!(f.sync_data().is_err());
        f.sync_data().unwrap();
        disk.set_space_left(Some(3));
        assert_eq!(
            f.write_at(b"toolong", 2).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        assert_eq!(disk.stats().file_syncs, 1);
    }
}
