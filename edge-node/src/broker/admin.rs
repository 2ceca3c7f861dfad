//! Topic administration: create, describe, alter configs, add partitions,
//! delete.
//!
//! Operations are serialized by the broker's admin lock. Each one checks the
//! request first, then persists the topic's new state in the metadata log
//! (fsynced: the commit point), then changes the open logs. Disk work runs on
//! blocking threads.
//!
//! Delete writes the tombstone first, closes the partitions, renames every
//! partition directory to `<dir>.<tag>-delete` and then removes it; start-up
//! removes such leftovers. A partition directory of a deleted topic that a
//! crash left un-renamed is removed before a topic of the same name is
//! created, so old records never reappear in a new topic.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use eddy_client::protocol::{ConfigChange, ErrorCode, PartitionInfo};
use eddy_core::config::{KEYS, LogConfig};
use eddy_core::layout;
use eddy_core::log::PartitionLog;
use log::{info, warn};

use super::metadata::TopicState;
use super::partition::Partition;
use super::{
    Broker, BrokerError, DELETE_DIR_SUFFIX, PARTITIONS_PER_TOPIC_MAX, Topic, lock, now_ms,
};

/// Longest file name most file systems allow.
const FILE_NAME_BYTES_MAX: usize = 255;

/// A topic's configs and per-partition state: the same type the client returns.
pub use eddy_client::TopicDescription;

fn invalid_config(topic: &str, reason: impl std::fmt::Display) -> BrokerError {
    BrokerError::new(ErrorCode::InvalidConfig, format!("topic {topic}: {reason}"))
}

fn storage_error(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::new(
        ErrorCode::KafkaStorageError,
        format!("{what}: {e}; check the disk and retry"),
    )
}

impl Broker {
    /// Publishes a topic's new state (after its metadata record is durable).
    pub(crate) fn install_topic(&self, name: &str, topic: Topic) {
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), Arc::new(topic));
    }

    /// Names of every user topic, sorted.
    pub fn list_topics(&self) -> Vec<String> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Checks a topic's own configs on top of the node defaults.
    pub(crate) fn topic_config(
        &self,
        topic: &str,
        configs: &BTreeMap<String, String>,
    ) -> Result<LogConfig, BrokerError> {
        let config = self
            .topic_defaults
            .with_props(configs)
            .map_err(|e| invalid_config(topic, e))?;
        self.check_topic_plugins(topic, &config)?;
        if config.max_message_bytes > self.max_request_bytes {
            return Err(invalid_config(
                topic,
                format!(
                    "max.message.bytes={} is over the node's max-request-bytes ({}); \
                     lower it, or raise max-request-bytes in the node config",
                    config.max_message_bytes, self.max_request_bytes
                ),
            ));
        }
        Ok(config)
    }

    /// Creates a topic with `partitions` partitions and Kafka-named `configs`
    /// on top of the node's topic defaults.
    pub async fn create_topic(
        self: &Arc<Self>,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        configs: Vec<(String, String)>,
    ) -> Result<(), BrokerError> {
        self.check_running()?;
        layout::validate_topic_name(name)
            .map_err(|e| BrokerError::new(ErrorCode::InvalidTopic, e))?;
        if super::is_internal_topic(name) {
            return Err(super::internal_topic_refused(name, "create"));
        }
        check_partition_count(name, partitions)?;
        let nodes = self
            .cluster()
            .map_or(1, |c| c.settings().voters.len() as u16);
        if replication_factor == 0 || replication_factor > nodes {
            return Err(BrokerError::new(
                ErrorCode::InvalidReplicationFactor,
                format!(
                    "replication factor {replication_factor} is not possible: this cluster has \
                     {nodes} node(s); use --replication-factor 1 to {nodes}"
                ),
            ));
        }
        let mut map = BTreeMap::new();
        for (key, value) in &configs {
            if map.insert(key.clone(), value.clone()).is_some() {
                return Err(invalid_config(name, format!("config {key} is given twice")));
            }
        }
        let log_config = self.topic_config(name, &map)?;
        check_dead_letter_topic(name, &log_config)?;
        if let Some(cluster) = self.cluster() {
            let state = TopicState {
                name: name.to_owned(),
                partitions,
                replication_factor,
                configs: map.into_iter().collect(),
            };
            return self.cluster_create(cluster, state).await;
        }

        let _admin = self.admin.lock().await;
        self.check_running()?;
        if self.topic(name).is_some() {
            return Err(BrokerError::new(
                ErrorCode::TopicAlreadyExists,
                format!("topic {name} already exists; see it with `eddy topic describe {name}`"),
            ));
        }
        let state = TopicState {
            name: name.to_owned(),
            partitions,
            replication_factor,
            configs: map.into_iter().collect(),
        };
        let broker = self.clone();
        let stored = state.clone();
        let config = log_config.clone();
        let logs = smol::unblock(move || broker.create_blocking(&stored, 0, &config)).await?;
        let parts: Vec<Arc<Partition>> = logs
            .into_iter()
            .enumerate()
            .map(|(i, log)| Partition::start(name, i as u32, log, &self.rt))
            .collect();
        self.install_topic(
            name,
            Topic {
                state,
                log_config,
                partitions: parts,
            },
        );
        info!("created topic {name} with {partitions} partition(s)");
        Ok(())
    }

    /// Persists `state` and opens its partitions from `first` on (removing
    /// stale directories of a deleted topic of the same name first).
    fn create_blocking(
        &self,
        state: &TopicState,
        first: u32,
        config: &LogConfig,
    ) -> Result<Vec<PartitionLog>, BrokerError> {
        for index in first..state.partitions {
            self.clear_partition_dir(&state.name, index)?;
        }
        self.metadata_put(state)?;
        let now = now_ms();
        let mut logs = Vec::with_capacity((state.partitions - first) as usize);
        for index in first..state.partitions {
            let dir = self.partition_dir(&state.name, index);
            match PartitionLog::open(self.storage.clone(), &dir, config.clone(), now) {
                Ok(log) => logs.push(log),
                Err(e) => {
                    let error = storage_error(
                        &format!("cannot create partition {}-{index}", state.name),
                        e,
                    );
                    // Undo the commit so the topic does not half-exist.
                    if first == 0 {
                        let _ = self.metadata_delete(&state.name);
                    }
                    return Err(error);
                }
            }
        }
        Ok(logs)
    }

    fn partition_dir(&self, topic: &str, index: u32) -> PathBuf {
        self.data_dir.join(layout::partition_dir_name(topic, index))
    }

    fn metadata_put(&self, state: &TopicState) -> Result<(), BrokerError> {
        let mut guard = lock(&self.metadata);
        let store = guard.as_mut().ok_or_else(super::shutting_down)?;
        store
            .put(state, now_ms())
            .map_err(|e| storage_error("cannot store the topic metadata", e))
    }

    fn metadata_delete(&self, name: &str) -> Result<(), BrokerError> {
        let mut guard = lock(&self.metadata);
        let store = guard.as_mut().ok_or_else(super::shutting_down)?;
        store
            .delete(name, now_ms())
            .map_err(|e| storage_error("cannot store the topic metadata", e))
    }

    /// The name a partition directory gets while it is deleted.
    fn delete_dir_name(&self, topic: &str, index: u32) -> String {
        let seq = self.delete_seq.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{:x}{seq:x}", now_ms());
        let suffix = format!("-{index}.{tag}{DELETE_DIR_SUFFIX}");
        let room = FILE_NAME_BYTES_MAX.saturating_sub(suffix.len());
        // Topic names are ASCII, so any byte boundary is a char boundary.
        let topic = &topic[..topic.len().min(room)];
        format!("{topic}{suffix}")
    }

    /// Renames a partition directory out of the way and removes it. Nothing
    /// to do when it does not exist.
    pub(crate) fn clear_partition_dir(&self, topic: &str, index: u32) -> Result<(), BrokerError> {
        let dir = self.partition_dir(topic, index);
        if !dir.exists() {
            return Ok(());
        }
        let doomed = self.data_dir.join(self.delete_dir_name(topic, index));
        std::fs::rename(&dir, &doomed)
            .and_then(|()| self.storage.sync_dir(&self.data_dir))
            .map_err(|e| storage_error(&format!("cannot delete {}", dir.display()), e))?;
        if let Err(e) = std::fs::remove_dir_all(&doomed) {
            // Renamed: start-up finishes the removal.
            warn!(
                "cannot remove {}: {e}; it is removed at the next start",
                doomed.display()
            );
        }
        Ok(())
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(self: &Arc<Self>, name: &str) -> Result<(), BrokerError> {
        self.check_running()?;
        if super::is_internal_topic(name) {
            return Err(super::internal_topic_refused(name, "delete"));
        }
        if let Some(cluster) = self.cluster() {
            cluster
                .propose(crate::cluster::state::Command::DeleteTopic(name.to_owned()))
                .await?;
            self.wait_local(name, false).await;
            return Ok(());
        }
        let _admin = self.admin.lock().await;
        self.check_running()?;
        let Some(topic) = self.topic(name) else {
            return Err(super::unknown_topic(name));
        };
        let broker = self.clone();
        let owned = name.to_owned();
        smol::unblock(move || broker.metadata_delete(&owned)).await?;
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        for p in &topic.partitions {
            if let Err(e) = p.close().await {
                // The data goes anyway.
                warn!("{name}-{}: close before delete failed: {e}", p.index());
            }
        }
        let broker = self.clone();
        let owned = name.to_owned();
        let count = topic.partitions.len() as u32;
        smol::unblock(move || {
            for index in 0..count {
                if let Err(e) = broker.clear_partition_dir(&owned, index) {
                    warn!("{owned}-{index}: {e}");
                }
            }
        })
        .await;
        info!("deleted topic {name}");
        Ok(())
    }

    /// Applies config changes, in order, to a topic's own configs.
    pub async fn alter_configs(
        self: &Arc<Self>,
        name: &str,
        changes: Vec<ConfigChange>,
    ) -> Result<(), BrokerError> {
        if super::is_internal_topic(name) {
            return Err(super::internal_topic_refused(name, "alter the configs of"));
        }
        self.check_running()?;
        let _admin = self.admin.lock().await;
        self.check_running()?;
        let clustered = self
            .cluster()
            .map(|c| c.state().topics.get(name).map(|t| t.state.clone()));
        let stored = match clustered {
            Some(Some(state)) => state,
            Some(None) => return Err(super::unknown_topic(name)),
            None => match self.topic(name) {
                Some(topic) => topic.state.clone(),
                None => return Err(super::unknown_topic(name)),
            },
        };
        let mut map = stored.config_map();
        for change in changes {
            match change {
                ConfigChange::Set(key, value) => {
                    map.insert(key, value);
                }
                ConfigChange::Delete(key) => {
                    if !KEYS.contains(&key.as_str()) {
                        return Err(invalid_config(
                            name,
                            format!(
                                "unknown topic config {key:?}; known keys are: {}",
                                KEYS.join(", ")
                            ),
                        ));
                    }
                    map.remove(&key);
                }
            }
        }
        let log_config = self.topic_config(name, &map)?;
        check_dead_letter_topic(name, &log_config)?;
        if let Some(cluster) = self.cluster() {
            let configs: Vec<(String, String)> = map.into_iter().collect();
            cluster
                .propose(crate::cluster::state::Command::SetConfigs {
                    name: name.to_owned(),
                    configs,
                })
                .await?;
            return Ok(());
        }
        let Some(topic) = self.topic(name) else {
            return Err(super::unknown_topic(name));
        };
        let state = TopicState {
            configs: map.into_iter().collect(),
            ..topic.state.clone()
        };
        let broker = self.clone();
        let stored = state.clone();
        smol::unblock(move || broker.metadata_put(&stored)).await?;
        for p in &topic.partitions {
            p.set_config(log_config.clone());
        }
        self.install_topic(
            name,
            Topic {
                state,
                log_config,
                partitions: topic.partitions.clone(),
            },
        );
        info!("altered configs of topic {name}");
        Ok(())
    }

    /// Grows a topic to `total` partitions.
    pub async fn create_partitions(
        self: &Arc<Self>,
        name: &str,
        total: u32,
    ) -> Result<(), BrokerError> {
        if super::is_internal_topic(name) {
            return Err(super::internal_topic_refused(name, "add partitions to"));
        }
        self.check_running()?;
        if let Some(cluster) = self.cluster() {
            check_partition_count(name, total)?;
            cluster
                .propose(crate::cluster::state::Command::CreatePartitions {
                    name: name.to_owned(),
                    total,
                })
                .await?;
            return Ok(());
        }
        let _admin = self.admin.lock().await;
        self.check_running()?;
        let Some(topic) = self.topic(name) else {
            return Err(super::unknown_topic(name));
        };
        let current = topic.state.partitions;
        if total <= current {
            return Err(BrokerError::new(
                ErrorCode::InvalidPartitions,
                format!(
                    "topic {name} has {current} partition(s); the count can only grow \
                     (asked for {total})"
                ),
            ));
        }
        check_partition_count(name, total)?;
        let state = TopicState {
            partitions: total,
            ..topic.state.clone()
        };
        let broker = self.clone();
        let stored = state.clone();
        let config = topic.log_config.clone();
        let logs = smol::unblock(move || broker.create_blocking(&stored, current, &config)).await?;
        let mut partitions = topic.partitions.clone();
        for (i, log) in logs.into_iter().enumerate() {
            partitions.push(Partition::start(name, current + i as u32, log, &self.rt));
        }
        self.install_topic(
            name,
            Topic {
                state,
                log_config: topic.log_config.clone(),
                partitions,
            },
        );
        info!("topic {name} grew from {current} to {total} partitions");
        Ok(())
    }

    /// A topic's configs and per-partition state.
    pub fn describe_topic(&self, name: &str) -> Result<TopicDescription, BrokerError> {
        self.check_running()?;
        if let Some(cluster) = self.cluster() {
            let state = cluster.state();
            let stored = state
                .topics
                .get(name)
                .ok_or_else(|| super::unknown_topic(name))?;
            let log_config = self.topic_config(name, &stored.state.config_map())?;
            return Ok(TopicDescription {
                name: name.to_owned(),
                configs: stored.state.configs.clone(),
                effective_configs: log_config.to_props().into_iter().collect(),
                partitions: self.cluster_partitions(cluster, name)?,
            });
        }
        let Some(topic) = self.topic(name) else {
            return Err(super::unknown_topic(name));
        };
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let info = p.with_log(|log| {
                Ok(PartitionInfo {
                    partition: p.index(),
                    leader: self.node_id,
                    replicas: vec![self.node_id],
                    isr: vec![self.node_id],
                    log_start_offset: log.log_start_offset(),
                    high_watermark: log.high_watermark(),
                    log_end_offset: log.log_end_offset(),
                    size_bytes: log.size_bytes(),
                })
            })?;
            partitions.push(info);
        }
        Ok(TopicDescription {
            name: name.to_owned(),
            configs: topic.state.configs.clone(),
            effective_configs: topic.log_config.to_props().into_iter().collect(),
            partitions,
        })
    }
}

/// A dead-letter topic takes records a client sent: never an internal one
/// (rejected records in `__consumer_offsets` would be replayed as offsets).
fn check_dead_letter_topic(topic: &str, config: &LogConfig) -> Result<(), BrokerError> {
    match &config.interceptor_dead_letter_topic {
        Some(dead_letter) if super::is_internal_topic(dead_letter) => Err(invalid_config(
            topic,
            format!(
                "interceptor.dead.letter.topic={dead_letter} names an internal topic (the \
                 node's own); name another topic"
            ),
        )),
        _ => Ok(()),
    }
}

fn check_partition_count(name: &str, partitions: u32) -> Result<(), BrokerError> {
    if partitions == 0 || partitions > PARTITIONS_PER_TOPIC_MAX {
        return Err(BrokerError::new(
            ErrorCode::InvalidPartitions,
            format!(
                "topic {name}: {partitions} partitions is not allowed; use 1 to \
                 {PARTITIONS_PER_TOPIC_MAX}"
            ),
        ));
    }
    Ok(())
}
