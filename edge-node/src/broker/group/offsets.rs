//! Committed offsets, kept in the internal compacted log `__consumer_offsets-0`
//! (Kafka's idea, on the core's `PartitionLog`).
//!
//! One record per committed partition: key = postcard `(group, topic,
//! partition)`, value = postcard offset, metadata text and commit time; a
//! tombstone (no value) when the group is deleted. A commit is one batch and
//! is answered only after an fsync ([`SharedLog::append_durable`]: concurrent
//! commits share one), so an acknowledged commit survives `kill -9`. On start
//! the log is replayed into memory; the last record per key wins.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use eddy_client::protocol::{CommitOffset, CommittedOffset};
use eddy_core::batch::{BatchBuilder, BatchIter, BatchOptions};
use eddy_core::config::LogConfig;
use eddy_core::group_commit::SharedLog;
use eddy_core::log::{LogError, PartitionLog};
use eddy_core::storage::Storage;
use serde::{Deserialize, Serialize};

/// Name of the internal offsets topic.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Most bytes of metadata text per committed offset (Kafka's
/// `offset.metadata.max.bytes`).
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// Most partitions in one commit.
pub const OFFSETS_PER_COMMIT_MAX: usize = 10_000;
/// Segment size of the offsets log: small, so compaction has closed segments.
const OFFSETS_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// Bytes read at once while replaying.
const REPLAY_READ_BYTES: u64 = 1024 * 1024;
/// Largest decompressed batch while replaying (they are never compressed).
const REPLAY_BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum OffsetKey {
    V1 {
        group: String,
        topic: String,
        partition: u32,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum OffsetValue {
    V1 {
        offset: u64,
        metadata: String,
        commit_timestamp: i64,
    },
}

/// Why the offsets log failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OffsetsError {
    /// The log failed (disk error, poisoned log, corrupt data).
    #[error("committed offsets log: {0}")]
    Log(#[from] LogError),
    /// A record does not decode.
    #[error("committed offsets log: record at offset {offset} is not valid: {reason}")]
    BadRecord {
        /// Its offset.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct Committed {
    offset: u64,
    metadata: String,
    commit_timestamp: i64,
}

/// (group, topic, partition).
pub type Key = (String, String, u32);

/// Committed offsets in memory: what a replay of an offsets log gives.
#[derive(Debug, Default)]
pub struct OffsetMap {
    committed: Mutex<BTreeMap<Key, Committed>>,
}

/// The offsets log of a single node and the offsets it holds.
#[derive(Debug)]
pub struct OffsetStore {
    log: SharedLog,
    map: OffsetMap,
}

/// The log config of the offsets log.
pub fn offsets_log_config() -> LogConfig {
    let mut c = LogConfig::default();
    c.cleanup_policy.compact = true;
    c.cleanup_policy.delete = false;
    c.retention_ms = None;
    c.retention_bytes = None;
    c.segment_bytes = OFFSETS_SEGMENT_BYTES;
    c.segment_index_bytes = 256 * 1024;
    // Synced by every commit (group commit).
    c.flush_messages = None;
    c.flush_ms = None;
    c
}

impl OffsetStore {
    /// Opens (or creates) the offsets log under `data_dir` and replays it.
    pub fn open(
        storage: Arc<dyn Storage>,
        data_dir: &Path,
        now_ms: i64,
    ) -> Result<OffsetStore, OffsetsError> {
        let dir = data_dir.join(eddy_core::layout::partition_dir_name(OFFSETS_TOPIC, 0));
        let log = PartitionLog::open(storage, &dir, offsets_log_config(), now_ms)?;
        let map = OffsetMap::replay(&log)?;
        Ok(OffsetStore {
            log: SharedLog::new(log),
            map,
        })
    }

    /// The offsets it holds.
    pub fn map(&self) -> &OffsetMap {
        &self.map
    }

    /// Stores `offsets` of `group` durably (blocks on an fsync).
    pub fn commit(
        &self,
        group: &str,
        offsets: &[CommitOffset],
        now_ms: i64,
    ) -> Result<(), OffsetsError> {
        let mut batch = commit_batch(group, offsets, now_ms)?;
        self.append(&mut batch, now_ms)?;
        self.map.committed(group, offsets, now_ms);
        Ok(())
    }

    /// Writes tombstones for every offset of `group` (durably) and forgets
    /// them. Returns how many there were.
    pub fn delete_group(&self, group: &str, now_ms: i64) -> Result<usize, OffsetsError> {
        let keys = self.map.keys_of(group);
        if keys.is_empty() {
            return Ok(0);
        }
        let mut batch = tombstone_batch(&keys, now_ms)?;
        self.append(&mut batch, now_ms)?;
        self.map.deleted(&keys);
        Ok(keys.len())
    }

    fn append(&self, batch: &mut [u8], now_ms: i64) -> Result<(), OffsetsError> {
        self.log.append_durable(batch, 0, now_ms)?;
        self.log.with(|log| {
            let end = log.log_end_offset();
            log.set_high_watermark(end);
        });
        Ok(())
    }

    /// Group-commit fsyncs so far.
    pub fn syncs(&self) -> u64 {
        self.log.syncs()
    }

    /// Compaction and removal of deleted files, when due.
    pub fn maintain(&self, now_ms: i64) -> Result<(), OffsetsError> {
        self.log.with(|log| -> Result<(), LogError> {
            if log.compaction_due(now_ms) {
                log.compact(now_ms)?;
            }
            log.enforce_retention(now_ms)?;
            Ok(())
        })?;
        Ok(())
    }

    /// Flushes and closes the log.
    pub fn close(self, now_ms: i64) -> Result<(), OffsetsError> {
        self.log.into_inner().close(now_ms)?;
        Ok(())
    }
}

impl OffsetMap {
    /// The offsets an offsets log holds: the last record per key wins, a
    /// tombstone removes the key.
    pub fn replay(log: &PartitionLog) -> Result<OffsetMap, OffsetsError> {
        Ok(OffsetMap {
            committed: Mutex::new(replay(log)?),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Key, Committed>> {
        self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a commit of `offsets` of `group` that is now durable.
    pub fn committed(&self, group: &str, offsets: &[CommitOffset], now_ms: i64) {
        let mut map = self.lock();
        for o in offsets {
            map.insert(
                (group.to_owned(), o.topic.clone(), o.partition),
                Committed {
                    offset: o.offset,
                    metadata: o.metadata.clone(),
                    commit_timestamp: now_ms,
                },
            );
        }
    }

    /// Every key of `group`.
    pub fn keys_of(&self, group: &str) -> Vec<Key> {
        self.lock()
            .range((group.to_owned(), String::new(), 0)..)
            .take_while(|(k, _)| k.0 == group)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Forgets `keys`, whose tombstones are now durable.
    pub fn deleted(&self, keys: &[Key]) {
        let mut map = self.lock();
        for k in keys {
            map.remove(k);
        }
    }

    /// The committed offsets of `group` (of `partitions`, or all).
    pub fn fetch(&self, group: &str, partitions: Option<&[(String, u32)]>) -> Vec<CommittedOffset> {
        let map = self.lock();
        let view = |(k, c): (&Key, &Committed)| CommittedOffset {
            topic: k.1.clone(),
            partition: k.2,
            offset: c.offset,
            metadata: c.metadata.clone(),
            commit_timestamp: c.commit_timestamp,
        };
        match partitions {
            Some(list) => list
                .iter()
                .filter_map(|(t, p)| {
                    let k = (group.to_owned(), t.clone(), *p);
                    map.get_key_value(&k).map(view)
                })
                .collect(),
            None => map
                .range((group.to_owned(), String::new(), 0)..)
                .take_while(|(k, _)| k.0 == group)
                .map(view)
                .collect(),
        }
    }

    /// Every group with committed offsets.
    pub fn groups(&self) -> BTreeSet<String> {
        self.lock().keys().map(|k| k.0.clone()).collect()
    }
}

/// The record batch that commits `offsets` of `group`: one record per
/// partition.
pub fn commit_batch(
    group: &str,
    offsets: &[CommitOffset],
    now_ms: i64,
) -> Result<Vec<u8>, OffsetsError> {
    let mut records = Vec::with_capacity(offsets.len());
    for o in offsets {
        let key = encode(&OffsetKey::V1 {
            group: group.to_owned(),
            topic: o.topic.clone(),
            partition: o.partition,
        })?;
        let value = encode(&OffsetValue::V1 {
            offset: o.offset,
            metadata: o.metadata.clone(),
            commit_timestamp: now_ms,
        })?;
        records.push((key, Some(value)));
    }
    build_batch(&records, now_ms)
}

/// The record batch of tombstones for `keys`.
pub fn tombstone_batch(keys: &[Key], now_ms: i64) -> Result<Vec<u8>, OffsetsError> {
    let mut records = Vec::with_capacity(keys.len());
    for (group, topic, partition) in keys {
        let key = encode(&OffsetKey::V1 {
            group: group.clone(),
            topic: topic.clone(),
            partition: *partition,
        })?;
        records.push((key, None));
    }
    build_batch(&records, now_ms)
}

fn build_batch(
    records: &[(Vec<u8>, Option<Vec<u8>>)],
    now_ms: i64,
) -> Result<Vec<u8>, OffsetsError> {
    let mut builder = BatchBuilder::new(BatchOptions::default());
    for (key, value) in records {
        builder
            .push(now_ms, Some(key), value.as_deref(), &[])
            .map_err(LogError::InvalidBatch)?;
    }
    Ok(builder.build().map_err(LogError::InvalidBatch)?)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, OffsetsError> {
    postcard::to_allocvec(value).map_err(|e| OffsetsError::BadRecord {
        offset: 0,
        reason: e.to_string(),
    })
}

fn replay(log: &PartitionLog) -> Result<BTreeMap<Key, Committed>, OffsetsError> {
    let mut map = BTreeMap::new();
    let end = log.log_end_offset();
    let mut offset = log.log_start_offset();
    while offset < end {
        let Some(slice) = log.read(offset, REPLAY_READ_BYTES, end)? else {
            break;
        };
        let bytes = slice.read_to_vec().map_err(|source| LogError::Io {
            op: "read the committed offsets log",
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
                let Some(key) = record.key else { continue };
                let bad = |e: postcard::Error| OffsetsError::BadRecord {
                    offset: at,
                    reason: e.to_string(),
                };
                let OffsetKey::V1 {
                    group,
                    topic,
                    partition,
                } = postcard::from_bytes(&key).map_err(bad)?;
                let k = (group, topic, partition);
                match record.value {
                    None => {
                        map.remove(&k);
                    }
                    Some(value) => {
                        let OffsetValue::V1 {
                            offset,
                            metadata,
                            commit_timestamp,
                        } = postcard::from_bytes(&value).map_err(bad)?;
                        map.insert(
                            k,
                            Committed {
                                offset,
                                metadata,
                                commit_timestamp,
                            },
                        );
                    }
                }
            }
        }
        if slice.next_offset <= offset {
            break;
        }
        offset = slice.next_offset;
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_core::storage::FsStorage;

    fn o(topic: &str, partition: u32, offset: u64) -> CommitOffset {
        CommitOffset {
            topic: topic.into(),
            partition,
            offset,
            metadata: format!("m{offset}"),
        }
    }

    #[test]
    fn commits_and_tombstones_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage: Arc<dyn Storage> = Arc::new(FsStorage);
        {
            let store = OffsetStore::open(storage.clone(), dir.path(), 1).expect("open");
            store
                .commit("g", &[o("t", 0, 5), o("t", 1, 7)], 2)
                .expect("commit");
            store.commit("g", &[o("t", 0, 9)], 3).expect("commit");
            store.commit("h", &[o("t", 0, 1)], 4).expect("commit");
            store.commit("x", &[o("t", 0, 1)], 4).expect("commit");
            assert_eq!(store.delete_group("x", 5).expect("delete"), 1);
            assert!(store.syncs() >= 5, "every commit is synced");
            // Not closed: as after kill -9 (the data was synced).
            drop(store);
        }
        let store = OffsetStore::open(storage, dir.path(), 6).expect("reopen");
        let g = store.map().fetch("g", None);
        assert_eq!(g.len(), 2);
        assert_eq!(
            (g[0].partition, g[0].offset, g[0].metadata.as_str()),
            (0, 9, "m9")
        );
        assert_eq!((g[1].partition, g[1].offset), (1, 7));
        assert_eq!(
            store
                .map()
                .fetch("h", Some(&[("t".into(), 0), ("t".into(), 3)]))
                .len(),
            1
        );
        assert!(store.map().fetch("x", None).is_empty());
        assert_eq!(
            store.map().groups().into_iter().collect::<Vec<_>>(),
            vec!["g".to_string(), "h".to_string()]
        );
        store.close(7).expect("close");
    }
}
