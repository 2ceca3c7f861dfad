//! Every file name the log uses, formatted and parsed in one place.
//!
//! A partition directory `<topic>-<partition>/` holds:
//! - `{base:020}.log`, `.index`, `.timeindex`: a segment and its two sparse indexes;
//! - the same names with a suffix: `.deleted` (waiting for `file.delete.delay.ms`),
//!   `.cleaned` (compaction output being written), `.swap` (compaction output complete,
//!   about to replace the old segment), `.tmp` (an index being rebuilt);
//! - checkpoints: `recovery-point-offset-checkpoint`, `replication-offset-checkpoint`
//!   (the high watermark), `log-start-offset-checkpoint`, `leader-epoch-checkpoint`.
//!
//! Anything else is not ours and is left alone.

/// Suffix of a segment's record file.
pub const LOG_SUFFIX: &str = ".log";
/// Suffix of a segment's offset index.
pub const INDEX_SUFFIX: &str = ".index";
/// Suffix of a segment's time index.
pub const TIME_INDEX_SUFFIX: &str = ".timeindex";
/// Marks a file scheduled for removal.
pub const DELETED_SUFFIX: &str = ".deleted";
/// Marks compaction output still being written.
pub const CLEANED_SUFFIX: &str = ".cleaned";
/// Marks complete compaction output waiting to replace the old segment.
pub const SWAP_SUFFIX: &str = ".swap";
/// Marks an index being rebuilt.
pub const TMP_SUFFIX: &str = ".tmp";

/// The recovery point: every byte below this offset was synced.
pub const RECOVERY_POINT_CHECKPOINT: &str = "recovery-point-offset-checkpoint";
/// The high watermark.
pub const HIGH_WATERMARK_CHECKPOINT: &str = "replication-offset-checkpoint";
/// The log start offset.
pub const LOG_START_CHECKPOINT: &str = "log-start-offset-checkpoint";
/// Leader epochs and the offset each began at.
pub const LEADER_EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";

/// The three files of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SegmentFile {
    /// Record batches.
    Log,
    /// Sparse offset index.
    Index,
    /// Sparse time index.
    TimeIndex,
}

impl SegmentFile {
    /// All three, log first.
    pub const ALL: [SegmentFile; 3] =
        [SegmentFile::Log, SegmentFile::Index, SegmentFile::TimeIndex];

    fn suffix(self) -> &'static str {
        match self {
            SegmentFile::Log => LOG_SUFFIX,
            SegmentFile::Index => INDEX_SUFFIX,
            SegmentFile::TimeIndex => TIME_INDEX_SUFFIX,
        }
    }
}

/// The state a segment file is in, by its trailing suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileState {
    /// In use.
    Live,
    /// Renamed for deletion.
    Deleted,
    /// Compaction output, incomplete.
    Cleaned,
    /// Compaction output, complete.
    Swap,
    /// An index being rebuilt.
    Tmp,
}

impl FileState {
    fn suffix(self) -> &'static str {
        match self {
            FileState::Live => "",
            FileState::Deleted => DELETED_SUFFIX,
            FileState::Cleaned => CLEANED_SUFFIX,
            FileState::Swap => SWAP_SUFFIX,
            FileState::Tmp => TMP_SUFFIX,
        }
    }
}

/// What a file name in a partition directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A segment file.
    Segment {
        /// The segment's base offset.
        base: u64,
        /// Log, index or time index.
        file: SegmentFile,
        /// Live, deleted, cleaned, swap or tmp.
        state: FileState,
    },
    /// `recovery-point-offset-checkpoint`.
    RecoveryPoint,
    /// `replication-offset-checkpoint`.
    HighWatermark,
    /// `log-start-offset-checkpoint`.
    LogStart,
    /// `leader-epoch-checkpoint`.
    LeaderEpoch,
    /// A checkpoint being written (`<checkpoint>.tmp`).
    CheckpointTmp,
}

/// The name of a segment file: `{base:020}{suffix}{state suffix}`.
pub fn segment_file_name(base: u64, file: SegmentFile, state: FileState) -> String {
    format!("{base:020}{}{}", file.suffix(), state.suffix())
}

/// The temp name a checkpoint is written under before its rename.
pub fn checkpoint_tmp_name(checkpoint: &str) -> String {
    format!("{checkpoint}{TMP_SUFFIX}")
}

/// Parses a file name found in a partition directory; `None` if it is not ours.
pub fn parse(name: &str) -> Option<FileKind> {
    match name {
        RECOVERY_POINT_CHECKPOINT => return Some(FileKind::RecoveryPoint),
        HIGH_WATERMARK_CHECKPOINT => return Some(FileKind::HighWatermark),
        LOG_START_CHECKPOINT => return Some(FileKind::LogStart),
        LEADER_EPOCH_CHECKPOINT => return Some(FileKind::LeaderEpoch),
        _ => {}
    }
    if let Some(stem) = name.strip_suffix(TMP_SUFFIX)
        && matches!(
            stem,
            RECOVERY_POINT_CHECKPOINT
                | HIGH_WATERMARK_CHECKPOINT
                | LOG_START_CHECKPOINT
                | LEADER_EPOCH_CHECKPOINT
        )
    {
        return Some(FileKind::CheckpointTmp);
    }
    let (rest, state) = [
        FileState::Deleted,
        FileState::Cleaned,
        FileState::Swap,
        FileState::Tmp,
    ]
    .into_iter()
    .find_map(|s| name.strip_suffix(s.suffix()).map(|r| (r, s)))
    .unwrap_or((name, FileState::Live));
    let (digits, file) = SegmentFile::ALL
        .into_iter()
        .find_map(|f| rest.strip_suffix(f.suffix()).map(|d| (d, f)))?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let base = digits.parse::<u64>().ok()?;
    Some(FileKind::Segment { base, file, state })
}

/// The directory name of a partition: `<topic>-<partition>`.
pub fn partition_dir_name(topic: &str, partition: u32) -> String {
    format!("{topic}-{partition}")
}

/// Splits a partition directory name into topic and partition.
pub fn parse_partition_dir(name: &str) -> Option<(&str, u32)> {
    let (topic, partition) = name.rsplit_once('-')?;
    if topic.is_empty() || partition.is_empty() || !partition.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((topic, partition.parse().ok()?))
}

/// Checks a topic name the way Kafka does: 1–249 characters of `[a-zA-Z0-9._-]`,
/// not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is not allowed"));
    }
    if name.len() > 249 {
        return Err(format!(
            "topic name is {} characters, the limit is 249",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} has the character {c:?}; use letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        for base in [0u64, 1, 4096, u64::MAX / 2, u64::MAX] {
            for file in SegmentFile::ALL {
                for state in [
                    FileState::Live,
                    FileState::Deleted,
                    FileState::Cleaned,
                    FileState::Swap,
                    FileState::Tmp,
                ] {
                    let name = segment_file_name(base, file, state);
                    assert_eq!(
                        parse(&name),
                        Some(FileKind::Segment { base, file, state }),
                        "{name}"
                    );
                }
            }
        }
        assert_eq!(
            segment_file_name(42, SegmentFile::Log, FileState::Live),
            "00000000000000000042.log"
        );
        for (name, kind) in [
            (RECOVERY_POINT_CHECKPOINT, FileKind::RecoveryPoint),
            (HIGH_WATERMARK_CHECKPOINT, FileKind::HighWatermark),
            (LOG_START_CHECKPOINT, FileKind::LogStart),
            (LEADER_EPOCH_CHECKPOINT, FileKind::LeaderEpoch),
        ] {
            assert_eq!(parse(name), Some(kind));
            assert_eq!(
                parse(&checkpoint_tmp_name(name)),
                Some(FileKind::CheckpointTmp)
            );
        }
    }

    #[test]
    fn foreign_names_are_not_ours() {
        for name in [
            "README",
            "42.log",
            "0000000000000000004x.log",
            "00000000000000000042.logx",
            "00000000000000000042.snapshot",
            ".nfs000123",
            "000000000000000000042.log",
        ] {
            assert_eq!(parse(name), None, "{name}");
        }
    }

    #[test]
    fn partition_dirs_round_trip() {
        assert_eq!(
            parse_partition_dir(&partition_dir_name("a-b.c", 7)),
            Some(("a-b.c", 7))
        );
        assert_eq!(parse_partition_dir("nodash"), None);
        assert_eq!(parse_partition_dir("t-x"), None);
        assert!(validate_topic_name("sensors.temp_1-a").is_ok());
        assert!(validate_topic_name("bad/name").is_err());
        assert!(validate_topic_name("..").is_err());
    }
}
