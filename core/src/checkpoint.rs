//! Small checkpoint files: written to a temp name, synced, renamed, directory synced.
//!
//! The format is Kafka's text checkpoint: a version line (`0`), an entry count, then
//! one entry per line. A single-offset checkpoint holds one entry, the offset; the
//! leader-epoch checkpoint holds `epoch start_offset` pairs.

use std::io;
use std::path::Path;

use crate::layout;
use crate::storage::{OpenMode, Storage};

/// Longest checkpoint file read back (a leader-epoch file with many epochs fits).
pub const CHECKPOINT_BYTES_MAX: u64 = 1024 * 1024;

/// Writes `lines` as checkpoint `name` in `dir`, durably.
pub fn write(storage: &dyn Storage, dir: &Path, name: &str, lines: &[String]) -> io::Result<()> {
    let mut text = format!("0\n{}\n", lines.len());
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    let tmp = dir.join(layout::checkpoint_tmp_name(name));
    let f = storage.open(&tmp, OpenMode::OpenOrCreate)?;
    f.set_len(0)?;
    f.write_at(text.as_bytes(), 0)?;
    f.sync_data()?;
    drop(f);
    storage.rename(&tmp, &dir.join(name))?;
    storage.sync_dir(dir)
}

/// Reads checkpoint `name`; `Ok(None)` if it does not exist or does not parse (a
/// checkpoint is a hint: without it recovery just does more work).
pub fn read(storage: &dyn Storage, dir: &Path, name: &str) -> io::Result<Option<Vec<String>>> {
    let path = dir.join(name);
    if !storage.exists(&path) {
        return Ok(None);
    }
    let f = storage.open(&path, OpenMode::Existing)?;
    let len = f.len()?;
    if len > CHECKPOINT_BYTES_MAX {
        return Ok(None);
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, 0)?;
    let Ok(text) = String::from_utf8(buf) else {
        return Ok(None);
    };
    let mut lines = text.lines();
    if lines.next() != Some("0") {
        return Ok(None);
    }
    let Some(count) = lines.next().and_then(|c| c.parse::<usize>().ok()) else {
        return Ok(None);
    };
    let entries: Vec<String> = lines.map(str::to_owned).collect();
    if entries.len() != count {
        return Ok(None);
    }
    Ok(Some(entries))
}

/// Writes a single-offset checkpoint.
pub fn write_offset(storage: &dyn Storage, dir: &Path, name: &str, offset: u64) -> io::Result<()> {
    write(storage, dir, name, &[offset.to_string()])
}

/// Reads a single-offset checkpoint.
pub fn read_offset(storage: &dyn Storage, dir: &Path, name: &str) -> io::Result<Option<u64>> {
    Ok(
        read(storage, dir, name)?.and_then(|lines| match lines.as_slice() {
            [one] => one.trim().parse().ok(),
            _ => None,
        }),
    )
}

/// Reads the leader-epoch checkpoint: `(epoch, start offset)` pairs.
pub fn read_epochs(storage: &dyn Storage, dir: &Path) -> io::Result<Option<Vec<(i32, u64)>>> {
    Ok(
        read(storage, dir, layout::LEADER_EPOCH_CHECKPOINT)?.and_then(|lines| {
            lines
                .iter()
                .map(|l| {
                    let (e, o) = l.trim().split_once(' ')?;
                    Some((e.parse().ok()?, o.parse().ok()?))
                })
                .collect()
        }),
    )
}

/// Writes the leader-epoch checkpoint.
pub fn write_epochs(storage: &dyn Storage, dir: &Path, epochs: &[(i32, u64)]) -> io::Result<()> {
    let lines: Vec<String> = epochs.iter().map(|(e, o)| format!("{e} {o}")).collect();
    write(storage, dir, layout::LEADER_EPOCH_CHECKPOINT, &lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{CrashMode, SimStorage};

    #[test]
    fn checkpoints_survive_a_crash_once_written() {
        let disk = SimStorage::new();
        let dir = Path::new("/p");
        disk.create_dir_all(dir).unwrap();
        write_offset(&disk, dir, layout::RECOVERY_POINT_CHECKPOINT, 42).unwrap();
        write_epochs(&disk, dir, &[(0, 0), (3, 100)]).unwrap();
        disk.crash(CrashMode::DropUnsynced);
        assert_eq!(
            read_offset(&disk, dir, layout::RECOVERY_POINT_CHECKPOINT).unwrap(),
            Some(42)
        );
        assert_eq!(
            read_epochs(&disk, dir).unwrap(),
            Some(vec![(0, 0), (3, 100)])
        );
        assert_eq!(
            read_offset(&disk, dir, layout::HIGH_WATERMARK_CHECKPOINT).unwrap(),
            None
        );
    }

    #[test]
    fn garbage_checkpoints_read_as_absent() {
        let disk = SimStorage::new();
        let dir = Path::new("/p");
        disk.create_dir_all(dir).unwrap();
        disk.write_file_durable(&dir.join(layout::RECOVERY_POINT_CHECKPOINT), b"0\n1\nxyz\n");
        assert_eq!(
            read_offset(&disk, dir, layout::RECOVERY_POINT_CHECKPOINT).unwrap(),
            None
        );
        disk.write_file_durable(&dir.join(layout::RECOVERY_POINT_CHECKPOINT), b"\xff\xfe");
        assert_eq!(
            read_offset(&disk, dir, layout::RECOVERY_POINT_CHECKPOINT).unwrap(),
            None
        );
    }
}
