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
    /// The offset of its record in the offsets log: of two commits of one
    /// partition, the later record wins, whichever is applied last.
    at: u64,
}

/// (group, topic, partition).
pub type Key = (String, String, u32);

/// Committed offsets in memory: what a replay of an offsets log gives.
///
/// Updates are applied in log order whatever order they arrive in: each
/// entry keeps the log offset of its record, and the offset of each group's
/// latest tombstone is kept, so a commit that was appended before a later
/// commit or a delete of its group never overwrites them.
#[derive(Debug, Default)]
pub struct OffsetMap {
    state: Mutex<MapState>,
}

#[derive(Debug, Default)]
struct MapState {
    committed: BTreeMap<Key, Committed>,
    /// Group → log offset of its latest tombstone.
    deleted: BTreeMap<String, u64>,
}

impl MapState {
    fn commit(&mut self, key: Key, value: Committed) {
        if self.deleted.get(&key.0).is_some_and(|d| *d > value.at) {
            return;
        }
        match self.committed.get(&key) {
            Some(old) if old.at > value.at => {}
            _ => {
                self.committed.insert(key, value);
            }
        }
    }

    fn tombstone(&mut self, key: &Key, at: u64) {
        if self.committed.get(key).is_some_and(|old| old.at < at) {
            self.committed.remove(key);
        }
        let latest = self.deleted.entry(key.0.clone()).or_insert(at);
        *latest = (*latest).max(at);
    }
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
        let log = PartitionLog::open(
            storage,
            &offsets_dir(data_dir),
            offsets_log_config(),
            now_ms,
        )?;
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

    /// Stores `offsets` of `group` durably (blocks on an fsync). The broker
    /// appends through [`OffsetStore::append`] for a single node and a
    /// cluster alike; this is the same for the store's own tests.
    #[cfg(test)]
    pub fn commit(
        &self,
        group: &str,
        offsets: &[CommitOffset],
        now_ms: i64,
    ) -> Result<(), OffsetsError> {
        let mut batch = commit_batch(group, offsets, now_ms)?;
        let at = self.append(&mut batch, now_ms)?;
        self.map.committed(group, offsets, now_ms, at);
        Ok(())
    }

    /// Writes tombstones for every offset of `group` (durably) and forgets
    /// them. Returns how many there were. (For tests, as `commit`.)
    #[cfg(test)]
    pub fn delete_group(&self, group: &str, now_ms: i64) -> Result<usize, OffsetsError> {
        let keys = self.map.keys_of(group);
        if keys.is_empty() {
            return Ok(0);
        }
        let mut batch = tombstone_batch(&keys, now_ms)?;
        let at = self.append(&mut batch, now_ms)?;
        self.map.deleted(&keys, at);
        Ok(keys.len())
    }

    /// Appends durably (blocks on an fsync); returns the offset of the
    /// batch's first record.
    pub fn append(&self, batch: &mut [u8], now_ms: i64) -> Result<u64, OffsetsError> {
        let info = self.log.append_durable(batch, 0, now_ms)?;
        self.log.with(|log| {
            let end = log.log_end_offset();
            log.set_high_watermark(end);
        });
        Ok(info.base_offset)
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

/// The directory of `__consumer_offsets-0` under `data_dir`: a single node's
/// offsets log, or a cluster node's replica of the topic.
pub fn offsets_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join(eddy_core::layout::partition_dir_name(OFFSETS_TOPIC, 0))
}

/// The file that marks `__consumer_offsets-0` as a replica of the cluster's
/// topic. Nodes of a cluster before the topic was replicated kept a log of
/// their own in that directory; without the marker a cluster node moves it
/// aside ([`set_aside_pre_cluster_log`]) rather than take it for a replica.
pub const CLUSTER_REPLICA_MARKER: &str = "cluster-replica";

/// Marks the directory `dir` of `__consumer_offsets-0` as a replica of the
/// cluster's topic (an empty file, synced with its directory).
pub fn mark_cluster_replica(dir: &Path) -> std::io::Result<()> {
    let marker = dir.join(CLUSTER_REPLICA_MARKER);
    if marker.exists() {
        return Ok(());
    }
    std::fs::File::create(&marker)?.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// On a cluster node: moves a `__consumer_offsets-0` directory without the
/// replica marker (the node's own offsets log from before groups were
/// coordinated by the cluster) to `__consumer_offsets-0.pre-cluster-<ms>`,
/// so that the replicated topic starts from its leader's copy. Returns where
/// it went, if it was there.
pub fn set_aside_pre_cluster_log(
    data_dir: &Path,
    now_ms: i64,
) -> std::io::Result<Option<std::path::PathBuf>> {
    let dir = offsets_dir(data_dir);
    if !dir.is_dir() || dir.join(CLUSTER_REPLICA_MARKER).exists() {
        return Ok(None);
    }
    let mut aside = dir.clone().into_os_string();
    aside.push(format!(".pre-cluster-{now_ms}"));
    let aside = std::path::PathBuf::from(aside);
    std::fs::rename(&dir, &aside)?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(Some(aside))
}

impl OffsetMap {
    /// The offsets an offsets log holds: the last record per key wins, a
    /// tombstone removes the key.
    pub fn replay(log: &PartitionLog) -> Result<OffsetMap, OffsetsError> {
        Ok(OffsetMap {
            state: Mutex::new(replay(log)?),
        })
    }

    fn lock(&self) -> MutexGuard<'_, MapState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a commit of `offsets` of `group` that is now durable, its
    /// records at log offsets `at`, `at + 1`, ... ([`commit_batch`] order).
    pub fn committed(&self, group: &str, offsets: &[CommitOffset], now_ms: i64, at: u64) {
        let mut state = self.lock();
        for (i, o) in offsets.iter().enumerate() {
            state.commit(
                (group.to_owned(), o.topic.clone(), o.partition),
                Committed {
                    offset: o.offset,
                    metadata: o.metadata.clone(),
                    commit_timestamp: now_ms,
                    at: at + i as u64,
                },
            );
        }
    }

    /// Every key of `group`.
    pub fn keys_of(&self, group: &str) -> Vec<Key> {
        self.lock()
            .committed
            .range((group.to_owned(), String::new(), 0)..)
            .take_while(|(k, _)| k.0 == group)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Takes the tombstones of `keys`, now durable at log offsets `at`, ...
    pub fn deleted(&self, keys: &[Key], at: u64) {
        let mut state = self.lock();
        for (i, k) in keys.iter().enumerate() {
            state.tombstone(k, at + i as u64);
        }
    }

    /// The committed offsets of `group` (of `partitions`, or all).
    pub fn fetch(&self, group: &str, partitions: Option<&[(String, u32)]>) -> Vec<CommittedOffset> {
        let state = self.lock();
        let map = &state.committed;
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
        self.lock().committed.keys().map(|k| k.0.clone()).collect()
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

fn replay(log: &PartitionLog) -> Result<MapState, OffsetsError> {
    let mut map = MapState::default();
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
                    None => map.tombstone(&k, at),
                    Some(value) => {
                        let OffsetValue::V1 {
                            offset,
                            metadata,
                            commit_timestamp,
                        } = postcard::from_bytes(&value).map_err(bad)?;
                        map.commit(
                            k,
                            Committed {
                                offset,
                                metadata,
                                commit_timestamp,
                                at,
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
    fn a_pre_cluster_offsets_log_is_set_aside_and_a_marked_replica_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage: Arc<dyn Storage> = Arc::new(FsStorage);
        let store = OffsetStore::open(storage, dir.path(), 1).expect("open");
        store.commit("g", &[o("t", 0, 5)], 2).expect("commit");
        store.close(3).expect("close");
        let aside = set_aside_pre_cluster_log(dir.path(), 4)
            .expect("set aside")
            .expect("it was there");
        assert!(aside.join("00000000000000000000.log").is_file());
        let live = dir.path().join("__consumer_offsets-0");
        assert!(!live.exists());
        assert_eq!(
            set_aside_pre_cluster_log(dir.path(), 5).expect("none"),
            None
        );
        std::fs::create_dir(&live).expect("replica dir");
        mark_cluster_replica(&live).expect("mark");
        assert_eq!(
            set_aside_pre_cluster_log(dir.path(), 6).expect("kept"),
            None
        );
        assert!(live.is_dir());
    }

    #[test]
    fn updates_apply_in_log_order_whatever_order_they_arrive_in() {
        let map = OffsetMap::default();
        let value = |g: &str| map.fetch(g, None).first().map(|c| c.offset);
        // The commit at log offset 7 is applied before the one at 5.
        map.committed("g", &[o("t", 0, 150)], 1, 7);
        map.committed("g", &[o("t", 0, 100)], 1, 5);
        assert_eq!(value("g"), Some(150), "the later record wins");
        // A delete at 9, then a commit appended before it (at 8) arrives.
        map.deleted(&map.keys_of("g"), 9);
        map.committed("g", &[o("t", 0, 120)], 1, 8);
        assert_eq!(value("g"), None, "the delete is later");
        // A commit after the delete counts.
        map.committed("g", &[o("t", 0, 200)], 1, 10);
        assert_eq!(value("g"), Some(200));
        // A tombstone older than the entry leaves it.
        map.deleted(&[("g".into(), "t".into(), 0)], 6);
        assert_eq!(value("g"), Some(200));
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
