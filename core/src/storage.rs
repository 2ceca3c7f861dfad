//! The small file-system surface the log runs on.
//!
//! Everything the partition log does to disk goes through [`Storage`] and
//! [`StorageFile`], in the spirit of redb's `StorageBackend`: the real backend
//! ([`FsStorage`]) uses positional I/O on `std::fs::File`; tests run the same log
//! code on [`crate::sim::SimStorage`], a disk that can lose unsynced bytes and fail
//! the Nth write or fsync.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The file must exist.
    Existing,
    /// The file must not exist; it is created empty.
    CreateNew,
    /// Open it, creating it empty if missing.
    OpenOrCreate,
}

/// One open file, shared between the writer and readers (positional I/O only).
pub trait StorageFile: Send + Sync + Debug {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Reads up to `buf.len()` bytes at `pos`; returns how many (0 at end of file).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `pos`, extending the file if needed.
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Truncates or extends (with zeros) to `len`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes written data (and the length) durable.
    fn sync_data(&self) -> io::Result<()>;
    /// A writable memory map of the whole file, where the backend supports one.
    ///
    /// Index files use it on a real disk; the simulated disk returns `None` and the
    /// index falls back to buffered positional writes.
    fn map_mut(&self) -> io::Result<Option<memmap2::MmapMut>> {
        Ok(None)
    }

    /// Reads exactly `buf.len()` bytes at `pos`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, pos)? {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file ended before the bytes expected",
                    ));
                }
                n => {
                    buf = &mut buf[n..];
                    pos += n as u64;
                }
            }
        }
        Ok(())
    }
}

/// A directory tree of files: the operations the log needs, and no more.
pub trait Storage: Send + Sync + Debug {
    /// Opens (or creates) a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;
    /// Names of the entries directly in `dir` (files and directories).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Renames a file, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, dir: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether a file exists.
    fn exists(&self, path: &Path) -> bool;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsStorage;

/// A file on the real file system.
#[derive(Debug)]
pub struct FsFile {
    file: File,
    path: PathBuf,
}

impl FsFile {
    /// The underlying file, for zero-copy sends (`sendfile`) by a server.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where the file was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl StorageFile for FsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        loop {
            match FileExt::read_at(&self.file, buf, pos) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.file.write_all_at(buf, pos)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn map_mut(&self) -> io::Result<Option<memmap2::MmapMut>> {
        // SAFETY: index files are only written through this map by the one writer
        // that owns the segment; readers go through the same map under the log's lock.
        // Another process truncating the file would be outside the broker's contract.
        let map = unsafe { memmap2::MmapOptions::new().map_mut(&self.file)? };
        Ok(Some(map))
    }
}

impl Storage for FsStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        match mode {
            OpenMode::Existing => {}
            OpenMode::CreateNew => {
                opts.create_new(true);
            }
            OpenMode::OpenOrCreate => {
                opts.create(true);
            }
        }
        let file = opts.open(path).map_err(|e| with_path(e, "open", path))?;
        Ok(Arc::new(FsFile {
            file,
            path: path.to_path_buf(),
        }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| with_path(e, "list", dir))? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to).map_err(|e| with_path(e, "rename", from))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path).map_err(|e| with_path(e, "remove", path))
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| with_path(e, "create directory", dir))
    }

    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir(dir).map_err(|e| with_path(e, "remove directory", dir))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| with_path(e, "sync directory", dir))
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}
