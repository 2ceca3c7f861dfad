//! Topic metadata, kept in the internal compacted log `__eddy_metadata-0`.
//!
//! Each change appends one record: key = topic name, value = the topic's
//! whole state (postcard), or no value (a tombstone) when the topic is deleted.
//! The log is fsynced after every change, so a change that was answered
//! survives a crash. On start the log is replayed; the last value per key
//! wins. The log uses `cleanup.policy=compact`, so old states are dropped by
//! the same compaction user topics get.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use eddy_core::batch::{BatchBuilder, BatchIter, BatchOptions};
use eddy_core::config::LogConfig;
use eddy_core::log::{LogError, PartitionLog};
use eddy_core::storage::Storage;
use serde::{Deserialize, Serialize};

/// Name of the internal metadata topic. Topic names starting with `__` are
/// reserved for such internal topics.
pub const METADATA_TOPIC: &str = "__eddy_metadata";
/// Prefix of internal topic names.
pub const INTERNAL_PREFIX: &str = "__";
/// Segment size of the metadata log: small, so compaction has closed segments
/// to work on.
pub const METADATA_SEGMENT_BYTES: u64 = 1024 * 1024;
/// Bytes read at once while replaying the metadata log.
const REPLAY_READ_BYTES: u64 = 1024 * 1024;
/// Largest decompressed metadata batch (they are never compressed).
const REPLAY_BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A topic as stored: everything needed to reopen it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicState {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: u32,
    /// Copies of each partition.
    pub replication_factor: u16,
    /// Configs set on the topic, under Kafka's names (not the node defaults).
    pub configs: Vec<(String, String)>,
}

impl TopicState {
    /// The topic's own configs as a map.
    pub fn config_map(&self) -> BTreeMap<String, String> {
        self.configs.iter().cloned().collect()
    }
}

/// The stored value, versioned so a later node can read older records.
#[derive(Debug, Serialize, Deserialize)]
enum TopicRecord {
    V1(TopicState),
}

/// Why the metadata log could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The log failed (disk error, poisoned log, corrupt data).
    #[error("topic metadata log: {0}")]
    Log(#[from] LogError),
    /// A record does not decode.
    #[error("topic metadata log: record at offset {offset} is not valid: {reason}")]
    BadRecord {
        /// Its offset.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// The metadata log and the topics it holds.
#[derive(Debug)]
pub struct MetadataStore {
    log: PartitionLog,
}

/// The log config of the metadata log.
pub fn metadata_log_config() -> LogConfig {
    let mut c = LogConfig::default();
    c.cleanup_policy.compact = true;
    c.cleanup_policy.delete = false;
    c.retention_ms = None;
    c.retention_bytes = None;
    c.segment_bytes = METADATA_SEGMENT_BYTES;
    c.segment_index_bytes = 64 * 1024;
    // Synced explicitly after every change.
    c.flush_messages = None;
    c.flush_ms = None;
    c
}

impl MetadataStore {
    /// Opens (or creates) the metadata log under `data_dir` and replays it.
    pub fn open(
        storage: Arc<dyn Storage>,
        data_dir: &Path,
        now_ms: i64,
    ) -> Result<(MetadataStore, BTreeMap<String, TopicState>), MetadataError> {
        let dir = data_dir.join(eddy_core::layout::partition_dir_name(METADATA_TOPIC, 0));
        let log = PartitionLog::open(storage, &dir, metadata_log_config(), now_ms)?;
        let store = MetadataStore { log };
        let topics = store.replay()?;
        Ok((store, topics))
    }

    fn replay(&self) -> Result<BTreeMap<String, TopicState>, MetadataError> {
        let mut topics = BTreeMap::new();
        let end = self.log.log_end_offset();
        let mut offset = self.log.log_start_offset();
        while offset < end {
            let Some(slice) = self.log.read(offset, REPLAY_READ_BYTES, end)? else {
                break;
            };
            let bytes = slice.read_to_vec().map_err(|source| LogError::Io {
                op: "read the topic metadata log",
                source,
            })?;
            for batch in BatchIter::new(&bytes) {
                let batch = batch.map_err(LogError::InvalidBatch)?;
                let base = batch.header.base_offset;
                let records = batch
                    .records(REPLAY_BATCH_BYTES_MAX)
                    .map_err(LogError::InvalidBatch)?;
                for record in records {
                    let at = base + record.offset_delta as u64;
                    if at < offset {
                        continue;
                    }
                    let Some(key) = record.key else {
                        continue;
                    };
                    let name = String::from_utf8(key).map_err(|_| MetadataError::BadRecord {
                        offset: at,
                        reason: "key is not UTF-8".into(),
                    })?;
                    match record.value {
                        None => {
                            topics.remove(&name);
                        }
                        Some(value) => {
                            let TopicRecord::V1(state) =
                                postcard::from_bytes(&value).map_err(|e| {
                                    MetadataError::BadRecord {
                                        offset: at,
                                        reason: e.to_string(),
                                    }
                                })?;
                            if state.name != name {
                                return Err(MetadataError::BadRecord {
                                    offset: at,
                                    reason: format!("key {name:?} holds topic {:?}", state.name),
                                });
                            }
                            topics.insert(name, state);
                        }
                    }
                }
            }
            if slice.next_offset <= offset {
                break;
            }
            offset = slice.next_offset;
        }
        Ok(topics)
    }

    /// Stores a topic's state and syncs it.
    pub fn put(&mut self, state: &TopicState, now_ms: i64) -> Result<(), MetadataError> {
        let value = postcard::to_allocvec(&TopicRecord::V1(state.clone())).map_err(|e| {
            MetadataError::BadRecord {
                offset: self.log.log_end_offset(),
                reason: e.to_string(),
            }
        })?;
        self.write(&state.name, Some(&value), now_ms)
    }

    /// Stores a tombstone for `name` and syncs it.
    pub fn delete(&mut self, name: &str, now_ms: i64) -> Result<(), MetadataError> {
        self.write(name, None, now_ms)
    }

    fn write(&mut self, key: &str, value: Option<&[u8]>, now_ms: i64) -> Result<(), MetadataError> {
        let mut builder = BatchBuilder::new(BatchOptions::default());
        builder
            .push(now_ms, Some(key.as_bytes()), value, &[])
            .map_err(LogError::InvalidBatch)?;
        let mut batch = builder.build().map_err(LogError::InvalidBatch)?;
        self.log.append(&mut batch, 0, now_ms)?;
        self.log.flush(now_ms)?;
        let end = self.log.log_end_offset();
        self.log.set_high_watermark(end);
        Ok(())
    }

    /// Runs retention's file cleanup and compaction when due.
    pub fn maintain(&mut self, now_ms: i64) -> Result<(), MetadataError> {
        if self.log.compaction_due(now_ms) {
            self.log.compact(now_ms)?;
        }
        self.log.enforce_retention(now_ms)?;
        Ok(())
    }

    /// Flushes and closes the log.
    pub fn close(self, now_ms: i64) -> Result<(), MetadataError> {
        self.log.close(now_ms)?;
        Ok(())
    }

    /// What opening the log found (for tests and start-up logs).
    pub fn open_report(&self) -> &eddy_core::log::OpenReport {
        self.log.open_report()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_core::storage::FsStorage;

    fn state(name: &str, partitions: u32) -> TopicState {
        TopicState {
            name: name.into(),
            partitions,
            replication_factor: 1,
            configs: vec![("retention.ms".into(), "1000".into())],
        }
    }

    #[test]
    fn last_value_per_key_wins_and_tombstones_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage: Arc<dyn Storage> = Arc::new(FsStorage);
        {
            let (mut store, topics) =
                MetadataStore::open(storage.clone(), dir.path(), 1).expect("open");
            assert!(topics.is_empty());
            store.put(&state("a", 1), 2).expect("put");
            store.put(&state("b", 1), 3).expect("put");
            store.put(&state("a", 4), 4).expect("put");
            store.delete("b", 5).expect("delete");
            store.close(6).expect("close");
        }
        let (store, topics) = MetadataStore::open(storage, dir.path(), 7).expect("reopen");
        assert_eq!(topics.len(), 1);
        assert_eq!(topics["a"], state("a", 4));
        assert_eq!(store.open_report().recovered_batches, 0);
    }
}
