//! The storage service: topics, partitions and their logs, on smol, without
//! networking.
//!
//! [`Broker::open`] replays the topic metadata (kept in the internal compacted
//! log `__eddy_metadata-0`, see [`metadata`]), opens every partition log under
//! `data-dir` (recovering it after a crash), starts one writer task per
//! partition ([`partition`]) and a maintenance task (retention, compaction,
//! removal of deleted files; [`maintenance`]).
//!
//! Produce goes to the partition's writer (group commit); fetch reads whole
//! batches up to the high watermark, long-polling on an [`event_listener::Event`]
//! the writer notifies. Admin operations ([`admin`]) are serialized and persist
//! the topic's new state before they change anything else.
//!
//! Every error is a [`BrokerError`]: the wire error code and a message that
//! says what to do next.

pub mod admin;
pub mod group;
pub mod maintenance;
pub mod metadata;
pub mod order;
pub mod partition;
pub mod plugin_admin;
pub mod replica;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eddy_client::protocol::{Acks, ErrorBody, ErrorCode, NodeInfo, OffsetSpec, TopicMetadata};
use eddy_core::batch::header::{self, BatchHeader};
use eddy_core::batch::{Batch, Compression, RecordIter};
use eddy_core::compaction::DECOMPRESSED_BATCH_BYTES_MAX;
use eddy_core::config::LogConfig;
use eddy_core::layout;
use eddy_core::log::{LogError, PartitionLog, Validated, validate_produce};
use eddy_core::storage::{FsStorage, Storage};
use event_listener::Event;
use futures_lite::FutureExt as _;
use log::{info, warn};
use smol::Task;

use crate::config::{ConfigError, NodeConfig};
use crate::plugins::{Partitioned, PluginHost};
use crate::runtime::RuntimeHandle;
use metadata::{INTERNAL_PREFIX, MetadataError, MetadataStore, TopicState};
use order::Turn;
use partition::{Appended, Partition, QueuedAppend};

/// Longest a fetch may wait for `min_bytes` (longer requests are shortened).
pub const FETCH_MAX_WAIT_MS_MAX: u32 = 60_000;
/// Most bytes one fetch returns (a single larger batch is still sent whole).
pub const FETCH_RESPONSE_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// Reads larger than this run on a blocking thread, so a slow disk cannot
/// stall the executor.
pub const FETCH_INLINE_READ_BYTES_MAX: u64 = 256 * 1024;
/// Most partitions a topic may have.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 1_000;
/// Partitions of a topic created automatically (Kafka's `num.partitions`).
pub const AUTO_CREATE_PARTITIONS: u32 = 1;
/// Suffix of a partition directory being deleted.
pub const DELETE_DIR_SUFFIX: &str = "-delete";

/// The wall clock in milliseconds since the Unix epoch (0 if the clock is
/// before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64)
}

/// A failed broker operation: the wire error code and a message for humans
/// that says what to do next. [`BrokerError::is_retriable`] tells whether the
/// same request may succeed later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BrokerError {
    /// The wire error code.
    pub code: ErrorCode,
    /// What happened and what to do.
    pub message: String,
}

/// Whether `topic` is one of the node's internal topics (a `__` name, such as
/// `__consumer_offsets` in a cluster): clients may read them, but only the
/// node writes, deletes or reshapes them.
pub fn is_internal_topic(topic: &str) -> bool {
    topic.starts_with(INTERNAL_PREFIX)
}

/// The error for a client that tries to `what` (produce to, delete, ...) an
/// internal topic.
pub fn internal_topic_refused(topic: &str, what: &str) -> BrokerError {
    BrokerError::new(
        ErrorCode::InvalidTopic,
        format!(
            "cannot {what} {topic}: topics named {INTERNAL_PREFIX}… are the node's own (committed \
             offsets, metadata); use another topic"
        ),
    )
}

impl BrokerError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> BrokerError {
        BrokerError {
            code,
            message: message.into(),
        }
    }

    /// Whether sending the same request again later may succeed.
    pub fn is_retriable(&self) -> bool {
        self.code.is_retriable()
    }

    /// The error as the wire carries it.
    pub fn into_body(self) -> ErrorBody {
        ErrorBody {
            code: self.code,
            message: self.message,
        }
    }
}

/// Why [`Broker::open`] failed. None of these goes away by retrying alone:
/// the disk, the data directory or the config needs fixing first.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The node config is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be created or listed.
    #[error("data directory {}: {error}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The topic metadata log could not be read.
    #[error("{0}; check the disk, or move the {topic}-0 directory aside to start without topics", topic = metadata::METADATA_TOPIC)]
    Metadata(#[from] MetadataError),
    /// A stored topic config is no longer valid with this node's defaults.
    #[error("topic {topic}: stored config is invalid: {error}")]
    TopicConfig {
        /// The topic.
        topic: String,
        /// What is wrong.
        error: eddy_core::config::ConfigError,
    },
    /// The committed offsets log could not be read.
    #[error("{0}; check the disk, or move the {topic}-0 directory aside to start without committed offsets", topic = group::offsets::OFFSETS_TOPIC)]
    Offsets(#[from] group::offsets::OffsetsError),
    /// The plugin engine or registry could not be opened.
    #[error("plugins: {0}")]
    Plugins(String),
    /// A partition log could not be opened or recovered.
    #[error("cannot open partition {topic}-{partition}: {error}")]
    Partition {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// What went wrong.
        error: LogError,
    },
}

/// A topic as the broker holds it. Replaced as a whole on every change
/// (copy on write); the partitions are shared between versions.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) state: TopicState,
    pub(crate) log_config: LogConfig,
    pub(crate) partitions: Vec<Arc<Partition>>,
}

/// What a fetch returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResult {
    /// The partition's high watermark.
    pub high_watermark: u64,
    /// The partition's log start offset.
    pub log_start_offset: u64,
    /// The offset to ask for next.
    pub next_offset: u64,
    /// Whole record batches, as stored.
    pub batches: Vec<u8>,
}

/// What a produce returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceResult {
    /// The partition written.
    pub partition: u32,
    /// Offset of the first record, log append time, log start offset.
    pub appended: Appended,
}

/// Batches queued for one partition's writer, not yet answered.
struct Queued {
    partition: Arc<Partition>,
    index: u32,
    queued: QueuedAppend,
}

/// The storage service of one node.
pub struct Broker {
    node_id: u32,
    data_dir: PathBuf,
    storage: Arc<dyn Storage>,
    rt: RuntimeHandle,
    topic_defaults: LogConfig,
    max_request_bytes: u64,
    auto_create: bool,
    retention_check_interval_ms: u64,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    metadata: Mutex<Option<MetadataStore>>,
    /// Serializes admin operations (they run partly on blocking threads).
    admin: smol::lock::Mutex<()>,
    shutting_down: AtomicBool,
    shutdown_event: Event,
    round_robin: AtomicU32,
    delete_seq: AtomicU64,
    advertised: RwLock<String>,
    maintenance: Mutex<Option<Task<()>>>,
    /// Consumer groups and committed offsets.
    groups: group::Groups,
    /// Whether `controller-quorum-voters` is set: the node belongs to a
    /// cluster, even before [`Broker::attach_cluster`].
    clustered: bool,
    /// The cluster, once attached.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// The reconciler and ISR tasks of a clustered node.
    cluster_tasks: Mutex<Vec<Task<()>>>,
    plugins: Arc<PluginHost>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("node_id", &self.node_id)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Broker {
    /// Opens the node's storage: finishes interrupted topic deletions, replays
    /// the topic metadata, opens and recovers every partition log, and starts
    /// the writer and maintenance tasks on `rt`. Blocks on disk I/O.
    pub fn open(config: &NodeConfig, rt: RuntimeHandle) -> Result<Arc<Broker>, OpenError> {
        let topic_defaults = config.topic_log_config()?;
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|error| OpenError::DataDir {
            path: data_dir.clone(),
            error,
        })?;
        finish_deletes(&data_dir)?;
        let plugins = PluginHost::open(&config.plugins, &data_dir).map_err(OpenError::Plugins)?;
        let storage: Arc<dyn Storage> = Arc::new(FsStorage);
        let now = now_ms();
        // In a cluster the topics come from the metadata quorum instead.
        let (store, states) = if config.is_clustered() {
            (None, BTreeMap::new())
        } else {
            let (store, states) = MetadataStore::open(storage.clone(), &data_dir, now)?;
            (Some(store), states)
        };
        let mut topics = BTreeMap::new();
        for (name, state) in states {
            let log_config = topic_defaults
                .with_props(&state.config_map())
                .map_err(|error| OpenError::TopicConfig {
                    topic: name.clone(),
                    error,
                })?;
            let mut partitions = Vec::with_capacity(state.partitions as usize);
            for index in 0..state.partitions {
                let dir = data_dir.join(layout::partition_dir_name(&name, index));
                let log = PartitionLog::open(storage.clone(), &dir, log_config.clone(), now)
                    .map_err(|error| OpenError::Partition {
                        topic: name.clone(),
                        partition: index,
                        error,
                    })?;
                let report = log.open_report();
                if report.recovered_batches > 0 || report.truncated_bytes > 0 {
                    info!(
                        "{name}-{index}: recovered {} batch(es) in {} segment(s), cut {} byte(s)",
                        report.recovered_batches, report.recovered_segments, report.truncated_bytes
                    );
                }
                partitions.push(Partition::start(&name, index, log, &rt));
            }
            topics.insert(
                name,
                Arc::new(Topic {
                    state,
                    log_config,
                    partitions,
                }),
            );
        }
        // In a cluster the offsets are the topic __consumer_offsets, whose
        // partition directory a single node's offsets log would use.
        let groups = if config.is_clustered() {
            match group::offsets::set_aside_pre_cluster_log(&data_dir, now) {
                Ok(Some(aside)) => warn!(
                    "this node's own committed offsets, from before consumer groups were \
                     coordinated by the cluster, were moved to {}; groups now keep their \
                     offsets in the replicated topic __consumer_offsets",
                    aside.display()
                ),
                Ok(None) => {}
                Err(error) => {
                    return Err(OpenError::DataDir {
                        path: group::offsets::offsets_dir(&data_dir),
                        error,
                    });
                }
            }
            group::Groups::new_in_cluster()
        } else {
            group::Groups::new(group::offsets::OffsetStore::open(
                storage.clone(),
                &data_dir,
                now,
            )?)
        };
        if store.is_some() {
            warn_about_orphans(&data_dir, &topics);
        }
        info!("opened {} topic(s) in {}", topics.len(), data_dir.display());
        let broker = Arc::new(Broker {
            node_id: config.node_id,
            data_dir,
            storage,
            rt: rt.clone(),
            topic_defaults,
            max_request_bytes: config.max_request_bytes,
            auto_create: config.auto_create_topics_enable,
            retention_check_interval_ms: config.log_retention_check_interval_ms,
            topics: RwLock::new(topics),
            metadata: Mutex::new(store),
            admin: smol::lock::Mutex::new(()),
            shutting_down: AtomicBool::new(false),
            shutdown_event: Event::new(),
            round_robin: AtomicU32::new(0),
            delete_seq: AtomicU64::new(0),
            advertised: RwLock::new(config.listen.to_string()),
            maintenance: Mutex::new(None),
            groups,
            clustered: config.is_clustered(),
            cluster: std::sync::OnceLock::new(),
            cluster_tasks: Mutex::new(Vec::new()),
            plugins,
        });
        let task = rt.spawn(maintenance::run(Arc::downgrade(&broker)));
        *lock(&broker.maintenance) = Some(task);
        group::Groups::start(&broker);
        Ok(broker)
    }

    /// This node's id.
    pub fn node_id(&self) -> u32 {
        self.node_id
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Sets the `host:port` that metadata reports for this node (the bound
    /// listener address).
    pub fn set_advertised_address(&self, address: String) {
        *self.advertised.write().unwrap_or_else(|p| p.into_inner()) = address;
    }

    /// The largest produce payload accepted (`max-request-bytes`).
    pub fn max_request_bytes(&self) -> u64 {
        self.max_request_bytes
    }

    /// Whether [`Broker::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn check_running(&self) -> Result<(), BrokerError> {
        if self.is_shutting_down() {
            return Err(shutting_down());
        }
        Ok(())
    }

    pub(crate) fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub(crate) fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flat_map(|t| t.partitions.iter().cloned())
            .collect()
    }

    /// The topic, created with the defaults if unknown and
    /// `auto-create-topics-enable` is set.
    async fn topic_or_create(self: &Arc<Self>, name: &str) -> Result<Arc<Topic>, BrokerError> {
        if let Some(topic) = self.topic(name) {
            return Ok(topic);
        }
        if let Some(cluster) = self.cluster()
            && cluster.state().topics.contains_key(name)
        {
            return Err(BrokerError::new(
                ErrorCode::LeaderNotAvailable,
                format!("topic {name} is being opened on this node; retry in a moment"),
            ));
        }
        if !self.auto_create || name.starts_with(INTERNAL_PREFIX) {
            return Err(unknown_topic(name));
        }
        match self
            .create_topic(name, AUTO_CREATE_PARTITIONS, 1, Vec::new())
            .await
        {
            Ok(()) => info!("auto-created topic {name}"),
            Err(e) if e.code == ErrorCode::TopicAlreadyExists => {}
            Err(e) => return Err(e),
        }
        self.topic(name).ok_or_else(|| unknown_topic(name))
    }

    /// A partition this running node leads (or a single node's).
    async fn led_partition(
        self: &Arc<Self>,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<Partition>, BrokerError> {
        self.check_running()?;
        let p = self.partition(topic, partition).await?;
        self.check_leader(&p)?;
        Ok(p)
    }

    async fn partition(
        self: &Arc<Self>,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<Partition>, BrokerError> {
        let t = self.topic_or_create(topic).await?;
        t.partitions
            .get(partition as usize)
            .cloned()
            .ok_or_else(|| unknown_partition(topic, partition, t.partitions.len()))
    }

    /// Appends `batches` (one or more record batches) to `topic`.
    ///
    /// With `partition = None` the node picks it: Kafka's murmur2 of the first
    /// record's key modulo the partition count, or round-robin for a null key.
    /// With `acks = All`, `timeout_ms` (if not 0) bounds the wait.
    pub async fn produce(
        self: &Arc<Self>,
        topic: &str,
        partition: Option<u32>,
        acks: Acks,
        timeout_ms: u32,
        batches: Vec<u8>,
    ) -> Result<ProduceResult, BrokerError> {
        self.produce_in_turn(topic, partition, acks, timeout_ms, batches, None)
            .await
    }

    /// [`Broker::produce`] for a request that takes its `turn` among its
    /// connection's requests: its batches are queued for the partition
    /// writer only after every earlier request's (see [`order`]).
    pub async fn produce_in_turn(
        self: &Arc<Self>,
        topic: &str,
        partition: Option<u32>,
        acks: Acks,
        timeout_ms: u32,
        batches: Vec<u8>,
        turn: Option<Turn>,
    ) -> Result<ProduceResult, BrokerError> {
        self.check_running()?;
        if batches.len() as u64 > self.max_request_bytes {
            return Err(BrokerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "produce payload of {} bytes is over max-request-bytes ({}); send smaller requests",
                    batches.len(),
                    self.max_request_bytes
                ),
            ));
        }
        let t = self.topic_or_create(topic).await?;
        let mut batches = batches;
        if !t.log_config.interceptor_plugins.is_empty() {
            let dead_letter = t.log_config.interceptor_dead_letter_topic.clone();
            let out = self
                .plugins
                .intercept(
                    topic,
                    &t.log_config.interceptor_plugins,
                    batches,
                    dead_letter.is_some(),
                    t.log_config.compression_type,
                )
                .await?;
            if let (Some(dlt), Some(rejected)) = (dead_letter, out.dead_letter) {
                self.append_dead_letter(&dlt, topic, rejected).await?;
            }
            match out.batches {
                Some(kept) => batches = kept,
                None => return self.nothing_appended(&t, topic, partition),
            }
        }
        if partition.is_none()
            && let Some(name) = t.log_config.partitioner_plugin.clone()
        {
            let count = t.partitions.len() as u32;
            let codec = t.log_config.compression_type;
            match self
                .plugins
                .partition(&name, topic, count, batches, codec)
                .await?
            {
                Partitioned::Split(parts) => {
                    // Every part is queued in turn before any answer is awaited.
                    let mut queued = Vec::with_capacity(parts.len());
                    for (index, part) in parts {
                        queued.push(
                            self.queue_to(&t, topic, index, acks, part, turn.as_ref())
                                .await?,
                        );
                    }
                    drop(turn);
                    let mut first = None;
                    for q in queued {
                        let r = self.answer(&t, topic, q, acks, timeout_ms).await?;
                        first.get_or_insert(r);
                    }
                    return first.ok_or_else(|| {
                        BrokerError::new(ErrorCode::InvalidRequest, "empty produce request")
                    });
                }
                Partitioned::Fallback(original) => batches = original,
            }
        }
        let count = t.partitions.len() as u32;
        let index = match partition {
            Some(p) => p,
            None => {
                self.choose_partition(topic, &batches, count, t.log_config.max_message_bytes)?
            }
        };
        let queued = self
            .queue_to(&t, topic, index, acks, batches, turn.as_ref())
            .await?;
        drop(turn);
        self.answer(&t, topic, queued, acks, timeout_ms).await
    }

    /// Appends checked batches to one partition of `t`.
    async fn append_to(
        &self,
        t: &Arc<Topic>,
        topic: &str,
        index: u32,
        acks: Acks,
        timeout_ms: u32,
        batches: Vec<u8>,
    ) -> Result<ProduceResult, BrokerError> {
        let queued = self.queue_to(t, topic, index, acks, batches, None).await?;
        self.answer(t, topic, queued, acks, timeout_ms).await
    }

    /// Checks `batches` for one partition of `t` and queues them for its
    /// writer, once `turn` (if any) has come.
    async fn queue_to(
        &self,
        t: &Arc<Topic>,
        topic: &str,
        index: u32,
        acks: Acks,
        batches: Vec<u8>,
        turn: Option<&Turn>,
    ) -> Result<Queued, BrokerError> {
        let p = t
            .partitions
            .get(index as usize)
            .cloned()
            .ok_or_else(|| unknown_partition(topic, index, t.partitions.len()))?;
        let max_message_bytes = t.log_config.max_message_bytes;
        let compression_type = t.log_config.compression_type;
        self.check_leader(&p)?;
        self.check_min_isr(&p, &t.log_config, acks)?;
        check_codecs(topic, index, &batches)?;
        // The CRC pass runs here, on the request's task, so appends to one
        // partition hold its lock only to write.
        let checked = validate_produce(&batches, max_message_bytes)
            .map_err(|e| partition::append_error(topic, index, e))?;
        let rewritten = match compression_type {
            Some(codec) => recompress_batches(&batches, checked, codec, max_message_bytes)
                .map_err(|e| partition::append_error(topic, index, e))?,
            None => None,
        };
        let (batches, checked) = rewritten.unwrap_or((batches, checked));
        if let Some(turn) = turn {
            turn.wait().await;
        }
        let queued = p.queue_append(batches, checked).await?;
        Ok(Queued {
            partition: p,
            index,
            queued,
        })
    }

    /// Waits for the writer's answer to a queued append and, with
    /// `acks = All`, for the in-sync replicas; `timeout_ms` (if not 0)
    /// bounds the wait for the writer.
    async fn answer(
        &self,
        t: &Topic,
        topic: &str,
        queued: Queued,
        acks: Acks,
        timeout_ms: u32,
    ) -> Result<ProduceResult, BrokerError> {
        let Queued {
            partition: p,
            index,
            queued,
        } = queued;
        let min_isr = t.log_config.min_insync_replicas;
        let append = p.appended(queued);
        let result = if acks == Acks::All && timeout_ms > 0 {
            let timeout = async {
                smol::Timer::after(Duration::from_millis(u64::from(timeout_ms))).await;
                Err(BrokerError::new(
                    ErrorCode::RequestTimedOut,
                    format!(
                        "{topic}-{index}: not appended within timeout_ms={timeout_ms}; \
                         the append may still complete, retry with idempotence in mind"
                    ),
                ))
            };
            append.or(timeout).await
        } else {
            append.await
        };
        let result = match result {
            Ok(appended) if acks == Acks::All => self
                .wait_replicated(&p, appended.next_offset, min_isr, timeout_ms)
                .await
                .map(|()| appended),
            other => other,
        };
        match result {
            Ok(appended) => Ok(ProduceResult {
                partition: index,
                appended,
            }),
            Err(_) if self.is_shutting_down() => Err(shutting_down()),
            Err(e) => Err(e),
        }
    }

    /// The answer to a produce whose records the interceptors all dropped:
    /// nothing appended, the partition's next offset.
    fn nothing_appended(
        &self,
        t: &Topic,
        topic: &str,
        partition: Option<u32>,
    ) -> Result<ProduceResult, BrokerError> {
        let index = partition.unwrap_or(0);
        let p = t
            .partitions
            .get(index as usize)
            .ok_or_else(|| unknown_partition(topic, index, t.partitions.len()))?;
        let (base_offset, log_start_offset) =
            p.with_log(|log| Ok((log.log_end_offset(), log.log_start_offset())))?;
        Ok(ProduceResult {
            partition: index,
            appended: Appended {
                base_offset,
                log_append_time: -1,
                log_start_offset,
                next_offset: base_offset,
            },
        })
    }

    /// Appends records an interceptor rejected to the dead-letter topic
    /// (built-in partitioner, no plugins: a dead-letter topic takes
    /// everything).
    async fn append_dead_letter(
        self: &Arc<Self>,
        dead_letter: &str,
        source: &str,
        batch: Vec<u8>,
    ) -> Result<(), BrokerError> {
        if is_internal_topic(dead_letter) {
            // Set before create and alter refused it.
            return Err(internal_topic_refused(
                dead_letter,
                &format!("send records {source}'s interceptors rejected to"),
            ));
        }
        let t = self.topic_or_create(dead_letter).await.map_err(|e| {
            BrokerError::new(
                e.code,
                format!(
                    "{source}: interceptor.dead.letter.topic {dead_letter}: {}; nothing was appended",
                    e.message
                ),
            )
        })?;
        let count = t.partitions.len() as u32;
        let index =
            self.choose_partition(dead_letter, &batch, count, t.log_config.max_message_bytes)?;
        self.append_to(&t, dead_letter, index, Acks::Leader, 0, batch)
            .await
            .map(|_| ())
    }

    /// The partition of a produce that names none: the first record's key
    /// hashed, or round robin. Decompresses the first batch no further than
    /// its validation will ([`eddy_core::log::produce_decompressed_bytes_max`]).
    fn choose_partition(
        &self,
        topic: &str,
        batches: &[u8],
        partitions: u32,
        max_message_bytes: u64,
    ) -> Result<u32, BrokerError> {
        if partitions == 0 {
            return Err(unknown_topic(topic));
        }
        let corrupt = |e: eddy_core::batch::BatchError| {
            BrokerError::new(
                ErrorCode::CorruptMessage,
                format!("{topic}: first record batch is not valid: {e}; nothing was appended"),
            )
        };
        let (batch, _) = Batch::parse(batches).map_err(corrupt)?;
        let section = batch
            .decompressed(eddy_core::log::produce_decompressed_bytes_max(
                max_message_bytes,
            ))
            .map_err(corrupt)?;
        let key = match RecordIter::new(&section, &batch.header).next() {
            Some(Ok(record)) => record
                .key
                .map(|k| eddy_client::partition_for_key(k, partitions)),
            Some(Err(e)) => return Err(corrupt(e)),
            None => None,
        };
        Ok(key.unwrap_or_else(|| self.round_robin.fetch_add(1, Ordering::Relaxed) % partitions))
    }

    /// Reads whole batches from `offset`, up to the high watermark and about
    /// `max_bytes` (at least one batch if any), waiting up to `max_wait_ms`
    /// until `min_bytes` are available.
    pub async fn fetch(
        self: &Arc<Self>,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        min_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<FetchResult, BrokerError> {
        let p = self.led_partition(topic, partition).await?;
        let found = self
            .wait_for_bytes(&p, offset, max_bytes, min_bytes, max_wait_ms)
            .await?;
        let (slice, high_watermark, log_start_offset) = found;
        let Some(slice) = slice else {
            return Ok(FetchResult {
                high_watermark,
                log_start_offset,
                next_offset: offset,
                batches: Vec::new(),
            });
        };
        let next_offset = slice.next_offset;
        let bytes = read_slice(slice).await.map_err(|source| {
            read_error(
                topic,
                partition,
                LogError::Io {
                    op: "read the log",
                    source,
                },
            )
        })?;
        Ok(FetchResult {
            high_watermark,
            log_start_offset,
            next_offset,
            batches: bytes,
        })
    }

    /// A fetch's long poll: waits (at most `max_wait_ms`, while the node
    /// runs) until a read of `offset` with `max_bytes` finds at least
    /// `min_bytes` below the high watermark. Allocates nothing while it
    /// waits (slices are file positions), so a server may reserve response
    /// memory only after this: see [`Broker::fetch_ready`].
    async fn wait_for_bytes(
        &self,
        p: &Partition,
        offset: u64,
        max_bytes: u32,
        min_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<(Option<eddy_core::log::FileSlice>, u64, u64), BrokerError> {
        let max_bytes = u64::from(max_bytes.clamp(1, FETCH_RESPONSE_BYTES_MAX));
        let min_bytes = u64::from(min_bytes).min(max_bytes);
        let wait = Duration::from_millis(u64::from(max_wait_ms.min(FETCH_MAX_WAIT_MS_MAX)));
        let deadline = Instant::now() + wait;
        let read = |p: &Partition| {
            p.with_log(|log| {
                let hw = log.high_watermark();
                let slice = log
                    .read(offset, max_bytes, hw)
                    .map_err(|e| read_error(p.topic(), p.index(), e))?;
                Ok((slice, hw, log.log_start_offset()))
            })
        };
        let mut found = read(p)?;
        let available = |found: &(Option<eddy_core::log::FileSlice>, u64, u64)| {
            found.0.as_ref().map_or(0, |s| s.len)
        };
        while available(&found) < min_bytes && Instant::now() < deadline && !self.is_shutting_down()
        {
            // Listen first, then look again, so a notify in between is not lost.
            let listener = p.hw_event().listen();
            found = read(p)?;
            if available(&found) >= min_bytes || self.is_shutting_down() {
                break;
            }
            let woke = async {
                listener.await;
                true
            }
            .or(async {
                smol::Timer::at(deadline).await;
                false
            })
            .await;
            found = read(p)?;
            if !woke {
                break;
            }
        }
        Ok(found)
    }

    /// Waits like [`Broker::fetch`] would until `min_bytes` of `topic`
    /// `partition` are available from `offset` (reading at most
    /// `max_bytes`), but reads nothing: the server long-polls with this
    /// before it reserves response memory, then fetches without waiting. An
    /// error is left for that fetch to answer.
    pub async fn fetch_ready(
        self: &Arc<Self>,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        min_bytes: u32,
        max_wait_ms: u32,
    ) {
        if self.check_serving_clients().is_err() {
            return;
        }
        if let Ok(p) = self.led_partition(topic, partition).await {
            let _ = self
                .wait_for_bytes(&p, offset, max_bytes, min_bytes, max_wait_ms)
                .await;
        }
    }

    /// Looks up an offset: the log start, the high watermark, or the first
    /// record at or after a timestamp (below the high watermark). Kafka's
    /// special timestamps -1 (latest) and -2 (earliest) work too.
    pub async fn list_offsets(
        self: &Arc<Self>,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<(Option<u64>, i64), BrokerError> {
        let p = self.led_partition(topic, partition).await?;
        let spec = match spec {
            OffsetSpec::Timestamp(-1) => OffsetSpec::Latest,
            OffsetSpec::Timestamp(-2) => OffsetSpec::Earliest,
            OffsetSpec::Timestamp(ts) if ts < 0 => {
                return Err(BrokerError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "timestamp {ts} is negative; use a time in ms since 1970, or -1 (latest) / -2 (earliest)"
                    ),
                ));
            }
            other => other,
        };
        p.with_log(|log| match spec {
            OffsetSpec::Earliest => Ok((Some(log.log_start_offset()), -1)),
            OffsetSpec::Latest => Ok((Some(log.high_watermark()), -1)),
            OffsetSpec::Timestamp(ts) => {
                let found = log
                    .offset_for_timestamp(ts)
                    .map_err(|e| read_error(topic, partition, e))?;
                Ok(match found {
                    Some((offset, at)) if offset < log.high_watermark() => (Some(offset), at),
                    _ => (None, -1),
                })
            }
        })
    }

    /// The nodes and the topics (all, or the ones named; unknown names are an
    /// error unless auto-creation is on). Internal topics are not listed.
    pub async fn metadata(
        self: &Arc<Self>,
        topics: Option<Vec<String>>,
    ) -> Result<(Vec<NodeInfo>, Vec<TopicMetadata>), BrokerError> {
        self.check_running()?;
        if let Some(cluster) = self.cluster() {
            if let Some(names) = &topics {
                for name in names {
                    if !cluster.state().topics.contains_key(name) && self.auto_create {
                        let _ = self.topic_or_create(name).await;
                    }
                }
            }
            return self.cluster_metadata(cluster, topics);
        }
        let nodes = vec![NodeInfo {
            id: self.node_id,
            address: self
                .advertised
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }];
        let selected: Vec<Arc<Topic>> = match topics {
            None => self
                .topics
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect(),
            Some(names) => {
                let mut out = Vec::with_capacity(names.len());
                for name in names {
                    out.push(self.topic_or_create(&name).await?);
                }
                out
            }
        };
        let topics = selected
            .iter()
            .map(|t| TopicMetadata {
                name: t.state.name.clone(),
                partitions: (0..t.partitions.len() as u32)
                    .map(|p| (p, self.node_id))
                    .collect(),
            })
            .collect();
        Ok((nodes, topics))
    }

    /// Stops taking requests: new requests fail with `ShuttingDown`, and
    /// waiting fetches return what they have.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown_event.notify(usize::MAX);
        self.groups.notify();
        for p in self.all_partitions() {
            p.hw_event().notify(usize::MAX);
        }
    }

    /// Shuts down gracefully: stops taking requests, lets every queued append
    /// finish and be answered, then closes every log (flush and checkpoints,
    /// so the next start needs no recovery scan). Returns the first error.
    pub async fn shutdown(&self) -> Result<(), BrokerError> {
        self.begin_shutdown();
        let maintenance = lock(&self.maintenance).take();
        if let Some(task) = maintenance {
            task.await;
        }
        let cluster_tasks = std::mem::take(&mut *lock(&self.cluster_tasks));
        for task in cluster_tasks {
            task.cancel().await;
        }
        let _admin = self.admin.lock().await;
        let topics = std::mem::take(&mut *self.topics.write().unwrap_or_else(|p| p.into_inner()));
        let mut first_error = None;
        for (name, topic) in topics {
            for p in &topic.partitions {
                if let Err(e) = p.close().await {
                    warn!("{name}-{}: close failed: {e}", p.index());
                    first_error.get_or_insert(BrokerError::new(
                        ErrorCode::KafkaStorageError,
                        format!("{name}-{}: close failed: {e}", p.index()),
                    ));
                }
            }
        }
        if let Err(e) = self.groups.shutdown().await {
            warn!("{e}");
            first_error.get_or_insert(e);
        }
        let store = lock(&self.metadata).take();
        if let Some(store) = store {
            let now = now_ms();
            if let Err(e) = smol::unblock(move || store.close(now)).await {
                warn!("closing the topic metadata log failed: {e}");
                first_error.get_or_insert(BrokerError::new(
                    ErrorCode::KafkaStorageError,
                    format!("closing the topic metadata log failed: {e}"),
                ));
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// The partition's writer fsyncs so far (for tests and metrics).
    pub fn partition_syncs(&self, topic: &str, partition: u32) -> Option<u64> {
        let t = self.topic(topic)?;
        t.partitions.get(partition as usize).map(|p| p.syncs())
    }
}

pub(crate) fn shutting_down() -> BrokerError {
    BrokerError::new(
        ErrorCode::ShuttingDown,
        "the node is shutting down; retry once it is back",
    )
}

/// The error for an unknown topic, with the way to create it.
pub fn unknown_topic(name: &str) -> BrokerError {
    BrokerError::new(
        ErrorCode::UnknownTopicOrPartition,
        format!(
            "topic {name:?} does not exist; create it with `eddy topic create {name}` \
             (or start the node with auto-create-topics-enable = true)"
        ),
    )
}

fn unknown_partition(topic: &str, partition: u32, count: usize) -> BrokerError {
    BrokerError::new(
        ErrorCode::UnknownTopicOrPartition,
        format!(
            "topic {topic} has no partition {partition}: it has {count} (0..{}); \
             add partitions with `eddy topic alter {topic} --partitions N`",
            count.saturating_sub(1)
        ),
    )
}

/// The bytes of `slice`: read on the executor when at most
/// [`FETCH_INLINE_READ_BYTES_MAX`] (page-cache hits, cheaper than a thread
/// hop), on a blocking thread when larger, so a slow disk cannot stall the
/// executor. Consumer and replica fetches both read through here.
pub(crate) async fn read_slice(slice: eddy_core::log::FileSlice) -> std::io::Result<Vec<u8>> {
    if slice.len <= FETCH_INLINE_READ_BYTES_MAX {
        slice.read_to_vec()
    } else {
        smol::unblock(move || slice.read_to_vec()).await
    }
}

fn read_error(topic: &str, partition: u32, e: LogError) -> BrokerError {
    match e {
        LogError::OffsetOutOfRange {
            offset,
            log_start,
            log_end,
        } => BrokerError::new(
            ErrorCode::OffsetOutOfRange,
            format!(
                "offset {offset} is out of range for {topic}-{partition}: valid offsets are \
                 {log_start} to {log_end}; seek to the beginning or the end"
            ),
        ),
        other => BrokerError::new(
            ErrorCode::KafkaStorageError,
            format!("{topic}-{partition}: {other}; retry later, and check the disk if it persists"),
        ),
    }
}

/// Applies a topic's `compression.type` (other than `producer`): batches not
/// already in `codec` are recompressed, and `max.message.bytes` is checked on
/// them as stored (as Kafka does). `None` when nothing needed it, so the
/// producer's bytes are appended as they came.
///
/// `batches` has passed [`validate_produce`] (`checked`), so their CRCs are
/// not verified again: each header is parsed once and only the batches that
/// change are decompressed, compressed and given a new CRC, straight into the
/// request's new buffer.
fn recompress_batches(
    batches: &[u8],
    checked: Validated,
    codec: Compression,
    max_message_bytes: u64,
) -> Result<Option<(Vec<u8>, Validated)>, LogError> {
    let mut out: Option<Vec<u8>> = None;
    let mut pos = 0usize;
    while pos < batches.len() {
        let rest = &batches[pos..];
        let header = BatchHeader::parse(rest)?;
        let total = usize::try_from(header.total_len())
            .ok()
            .filter(|total| *total <= rest.len())
            .ok_or(eddy_core::batch::BatchError::Corrupt(
                "batch length past the request",
            ))?;
        let batch = Batch {
            header,
            bytes: &rest[..total],
        };
        if batch.compression()? != codec {
            let out = out.get_or_insert_with(|| {
                let mut out = Vec::with_capacity(batches.len());
                out.extend_from_slice(&batches[..pos]);
                out
            });
            let start = out.len();
            eddy_core::batch::compression::recompress_into(
                &batch,
                codec,
                DECOMPRESSED_BATCH_BYTES_MAX,
                out,
            )?;
            let size = (out.len() - start) as u64;
            if size > max_message_bytes {
                return Err(LogError::RecordTooLarge {
                    size,
                    max: max_message_bytes,
                });
            }
        } else if let Some(out) = out.as_mut() {
            out.extend_from_slice(batch.bytes);
        }
        pos += total;
    }
    Ok(out.map(|out| {
        let checked = Validated {
            bytes: out.len() as u64,
            ..checked
        };
        (out, checked)
    }))
}

/// Rejects batches whose compression codec the node cannot serve (Kafka
/// checks this too). One header parse per batch, no per-record work.
fn check_codecs(topic: &str, partition: u32, batches: &[u8]) -> Result<(), BrokerError> {
    let mut pos = 0usize;
    while pos < batches.len() {
        let rest = &batches[pos..];
        let (Some(total), Ok(h)) = (header::peek_total_len(rest), BatchHeader::parse(rest)) else {
            // Malformed: the log's own checks name the problem.
            return Ok(());
        };
        match h.attributes.compression() {
            Ok(Compression::Snappy) => {
                return Err(BrokerError::new(
                    ErrorCode::CorruptMessage,
                    format!(
                        "{topic}-{partition}: snappy-compressed batches are not supported; \
                         use lz4, zstd or gzip"
                    ),
                ));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(BrokerError::new(
                    ErrorCode::CorruptMessage,
                    format!("{topic}-{partition}: {e}; nothing was appended"),
                ));
            }
        }
        match usize::try_from(total) {
            Ok(total) if total > 0 => pos = pos.saturating_add(total),
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// Whether `name` is a partition directory being deleted
/// (`<topic>-<partition>.<tag>-delete`).
pub fn is_delete_dir(name: &str) -> bool {
    name.strip_suffix(DELETE_DIR_SUFFIX)
        .and_then(|rest| rest.rsplit_once('.'))
        .is_some_and(|(dir, tag)| {
            !tag.is_empty()
                && tag.bytes().all(|b| b.is_ascii_alphanumeric())
                && layout::parse_partition_dir(dir).is_some()
        })
}

/// Removes partition directories left by a delete that a crash interrupted.
fn finish_deletes(data_dir: &Path) -> Result<(), OpenError> {
    let entries = std::fs::read_dir(data_dir).map_err(|error| OpenError::DataDir {
        path: data_dir.to_path_buf(),
        error,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_delete_dir(name) && entry.path().is_dir() {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => info!("removed {name}, left by an interrupted topic deletion"),
                Err(e) => warn!("cannot remove {name} (left by a topic deletion): {e}"),
            }
        }
    }
    Ok(())
}

fn warn_about_orphans(data_dir: &Path, topics: &BTreeMap<String, Arc<Topic>>) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((topic, partition)) = layout::parse_partition_dir(name) else {
            continue;
        };
        if topic.starts_with(INTERNAL_PREFIX) || !entry.path().is_dir() {
            continue;
        }
        let known = topics
            .get(topic)
            .is_some_and(|t| partition < t.state.partitions);
        if !known {
            warn!(
                "{}: partition directory of no known topic (left by an interrupted delete?); \
                 it is left alone, and removed if a topic of that name is created",
                entry.path().display()
            );
        }
    }
}
