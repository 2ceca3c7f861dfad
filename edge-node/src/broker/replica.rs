//! Replication in a cluster: the partition roles this node takes from the
//! metadata, the leader's side (replica fetches, follower progress, high
//! watermark, ISR changes) and the follower's side (truncation by leader
//! epoch, fetching, high watermark from the leader).
//!
//! - **Roles**: whenever the applied metadata changes, every partition this
//!   node replicates becomes leader (the log records the new epoch's start
//!   offset in `leader-epoch-checkpoint`), follower (a fetcher task starts
//!   for the new leader and epoch) or offline.
//! - **Leader**: a `ReplicaFetch` at offset `o` says the follower has
//!   everything below `o`; the leader records it, moves the high watermark
//!   to the smallest log end offset in the ISR, and answers with batches
//!   from `o` up to its log end (waiting up to `max_wait_ms` for new ones).
//!   Every [`ISR_CHECK_MS`] a leader drops members that have not been
//!   caught up for `replica-lag-time-max-ms` and adds back replicas outside
//!   the ISR that reached the high watermark (and the start of its epoch),
//!   through the controller (`AlterIsr`, valid only in the leader's current
//!   epoch); see [`LeaderState::isr_proposal`] and
//!   [`FollowerProgress::fetched`].
//! - **Follower** (KIP-101): first asks the leader where its own latest
//!   epoch ended and truncates there (never just to its high watermark),
//!   then fetches from its log end, appends the batches as they are (offsets
//!   and epochs kept) and takes the leader's high watermark. Its fsyncs run
//!   in the background like the leader's group commit (off the log's lock);
//!   only with `flush.messages=1` does the next fetch wait for one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_client::protocol::{
    Acks, ErrorCode, NO_LEADER, PROTOCOL_VERSION, PartitionInfo, Request, RequestHeader, Response,
    TopicMetadata,
};
use eddy_client::{Client, ClientError};
use eddy_core::config::LogConfig;
use eddy_core::layout;
use eddy_core::log::PartitionLog;
use futures_lite::FutureExt as _;
use log::{debug, info, warn};

use super::group::offsets::{OFFSETS_TOPIC, OffsetMap};
use super::metadata::TopicState;
use super::partition::{
    FollowerProgress, LeaderState, Partition, Role, SyncTask, not_leader, sync_in_background,
};
use super::{Broker, BrokerError, FETCH_MAX_WAIT_MS_MAX, FETCH_RESPONSE_BYTES_MAX, Topic, now_ms};
use crate::cluster::Cluster;
use crate::cluster::state::{ClusterState, ClusterTopic, Command};
use crate::failures::FailureRun;

/// How often leaders check their ISR.
pub const ISR_CHECK_MS: u64 = 200;
/// Least time between two ISR proposals of one partition.
const ISR_REPROPOSE_MS: i64 = 1000;
/// Bytes a follower asks for per fetch.
pub const REPLICA_FETCH_BYTES: u32 = 4 * 1024 * 1024;
/// How long a follower's fetch waits at the leader for new data.
pub const REPLICA_FETCH_WAIT_MS: u32 = 500;
/// Pause after a failed replica fetch.
const FOLLOWER_BACKOFF_MS: u64 = 100;
/// Longest wait of an `acks=all` produce without a timeout of its own.
pub const ACKS_ALL_WAIT_MS_DEFAULT: u32 = 30_000;

impl Broker {
    /// Connects this broker to its cluster: from now on topics, leaders and
    /// ISRs come from the metadata quorum.
    pub fn attach_cluster(self: &Arc<Self>, cluster: Arc<Cluster>) {
        if self.cluster.set(cluster).is_err() {
            return;
        }
        let tasks = vec![
            self.rt.spawn(reconcile_loop(Arc::downgrade(self))),
            self.rt.spawn(isr_loop(Arc::downgrade(self))),
        ];
        super::lock(&self.cluster_tasks).extend(tasks);
    }

    /// The cluster, when this node is part of one (once attached).
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Whether this node belongs to a cluster (even before it has attached
    /// it).
    pub fn is_clustered(&self) -> bool {
        self.clustered
    }

    /// Whether this node serves client requests: a single node always; a
    /// node of a cluster once it has joined the cluster and caught up with
    /// the metadata quorum (see [`crate::cluster`]), `BrokerNotAvailable`
    /// until then.
    pub fn check_serving_clients(&self) -> Result<(), BrokerError> {
        if !self.clustered {
            return Ok(());
        }
        match self.cluster() {
            Some(c) if c.is_serving() => Ok(()),
            Some(c) => Err(c.not_serving()),
            None => Err(self.joining()),
        }
    }

    /// The answer of a node of a cluster that has not joined it yet (it
    /// listens before its Raft storage is open).
    pub(crate) fn joining(&self) -> BrokerError {
        BrokerError::new(
            ErrorCode::BrokerNotAvailable,
            format!(
                "node {} is starting and joining its cluster; retry in a moment, or ask another \
                 node",
                self.node_id
            ),
        )
    }

    /// Makes the open topics and partition roles match the metadata.
    async fn reconcile(self: &Arc<Self>, cluster: &Arc<Cluster>, state: &ClusterState) {
        let me = cluster.node_id();
        // Topics gone from the metadata.
        let gone: Vec<String> = self
            .list_topics()
            .into_iter()
            .filter(|name| !state.topics.contains_key(name))
            .collect();
        for name in gone {
            self.remove_topic_locally(&name).await;
        }
        for (name, ct) in &state.topics {
            if let Err(e) = self.install_cluster_topic(name, ct).await {
                warn!("cannot open topic {name}: {e}");
                continue;
            }
            let Some(topic) = self.topic(name) else {
                continue;
            };
            for (i, ps) in ct.partitions.iter().enumerate() {
                let Some(p) = topic.partitions.get(i) else {
                    continue;
                };
                let wanted = if ps.leader == Some(me) {
                    Some(me)
                } else if ps.replicas.contains(&me) {
                    ps.leader
                } else {
                    None
                };
                self.set_role(cluster, p, ps, wanted, me);
            }
        }
    }

    fn set_role(
        self: &Arc<Self>,
        cluster: &Arc<Cluster>,
        p: &Arc<Partition>,
        ps: &crate::cluster::state::PartitionState,
        wanted: Option<u32>,
        me: u32,
    ) {
        let current = p.role();
        if wanted != Some(me) && is_offsets_partition(p) {
            // Only the leader of __consumer_offsets-0 coordinates groups.
            self.groups.unload();
        }
        match wanted {
            Some(leader) if leader == me => {
                let same_epoch = matches!(&current, Role::Leader(l) if l.epoch == ps.leader_epoch);
                if same_epoch {
                    p.with_role(|role| {
                        if let Role::Leader(l) = role {
                            l.isr.clone_from(&ps.isr);
                            l.replicas.clone_from(&ps.replicas);
                        }
                    });
                    let _ = p.with_log(|log| {
                        p.advance_hw(log);
                        Ok(())
                    });
                    self.coordinate_groups_if_offsets(p, ps.leader_epoch);
                    return;
                }
                p.set_fetcher(None);
                let started = p.with_log(|log| {
                    log.assign_epoch_start(ps.leader_epoch).map_err(|e| {
                        BrokerError::new(ErrorCode::KafkaStorageError, e.to_string())
                    })?;
                    Ok(log.log_end_offset())
                });
                let epoch_start = match started {
                    Ok(end) => end,
                    Err(e) => {
                        warn!("{}-{}: cannot become leader: {e}", p.topic(), p.index());
                        return;
                    }
                };
                let now = now_ms();
                let followers: BTreeMap<u32, FollowerProgress> = ps
                    .replicas
                    .iter()
                    .filter(|r| **r != me)
                    .map(|r| (*r, FollowerProgress::new(now)))
                    .collect();
                p.with_role(|role| {
                    *role = Role::Leader(LeaderState {
                        me,
                        epoch: ps.leader_epoch,
                        epoch_start,
                        replicas: ps.replicas.clone(),
                        isr: ps.isr.clone(),
                        followers,
                        isr_proposed_ms: 0,
                    });
                });
                let _ = p.with_log(|log| {
                    p.advance_hw(log);
                    Ok(())
                });
                p.wake_all();
                info!(
                    "{}-{}: leader in epoch {} from offset {epoch_start}",
                    p.topic(),
                    p.index(),
                    ps.leader_epoch
                );
                self.coordinate_groups_if_offsets(p, ps.leader_epoch);
            }
            Some(leader) => {
                // The same leader and epoch with a fetcher running: nothing to
                // do. Without a fetcher (no client for the leader last time),
                // try again.
                let same = matches!(current, Role::Follower { leader: l, epoch } if l == leader && epoch == ps.leader_epoch);
                if same && p.has_fetcher() {
                    return;
                }
                if !same {
                    p.set_fetcher(None);
                    p.with_role(|role| {
                        *role = Role::Follower {
                            leader,
                            epoch: ps.leader_epoch,
                        };
                    });
                    p.wake_all();
                }
                let client = cluster.peer(leader).and_then(|peer| {
                    let slot = (p.index() as usize) % peer.data.len().max(1);
                    peer.data.get(slot).cloned()
                });
                let Some(client) = client else {
                    warn!(
                        "{}-{}: no connection to leader node {leader} (not a voter?); \
                         not replicating until the metadata names a reachable leader",
                        p.topic(),
                        p.index()
                    );
                    return;
                };
                let task = self.rt.spawn(follow(
                    Arc::downgrade(self),
                    p.clone(),
                    client,
                    me,
                    leader,
                    ps.leader_epoch,
                ));
                p.set_fetcher(Some(task));
                info!(
                    "{}-{}: following node {leader} in epoch {}",
                    p.topic(),
                    p.index(),
                    ps.leader_epoch
                );
            }
            None => {
                if !matches!(current, Role::Offline { epoch } if epoch == ps.leader_epoch) {
                    p.set_fetcher(None);
                    p.with_role(|role| {
                        *role = Role::Offline {
                            epoch: ps.leader_epoch,
                        }
                    });
                    p.wake_all();
                }
            }
        }
    }

    /// As the leader of `__consumer_offsets-0` in `epoch`, coordinates the
    /// consumer groups: replays the offsets from this node's copy (once per
    /// epoch; a failed replay is tried again on the next reconcile).
    fn coordinate_groups_if_offsets(&self, p: &Partition, epoch: i32) {
        if !is_offsets_partition(p) || self.groups.loaded_epoch() == Some(epoch) {
            return;
        }
        let replayed = p.with_log(|log| {
            OffsetMap::replay(log)
                .map_err(|e| BrokerError::new(ErrorCode::KafkaStorageError, e.to_string()))
        });
        match replayed {
            Ok(map) => {
                self.groups.load(map, epoch);
                info!("coordinating consumer groups ({OFFSETS_TOPIC}-0, epoch {epoch})");
            }
            Err(e) => {
                // Not the offsets of an older epoch either.
                self.groups.unload();
                warn!(
                    "{OFFSETS_TOPIC}-0: cannot load the committed offsets: {e}; \
                     group requests answer CoordinatorNotAvailable until it works"
                );
            }
        }
    }

    /// Opens a topic the metadata has (or its new partitions), or takes its
    /// new configs.
    async fn install_cluster_topic(
        self: &Arc<Self>,
        name: &str,
        ct: &ClusterTopic,
    ) -> Result<(), BrokerError> {
        let existing = self.topic(name);
        let log_config = self.topic_config(name, &ct.state.config_map())?;
        if let Some(t) = &existing
            && t.state == ct.state
        {
            return Ok(());
        }
        let first = existing.as_ref().map_or(0, |t| t.partitions.len() as u32);
        let broker = self.clone();
        let owned = name.to_owned();
        let config = log_config.clone();
        let total = ct.state.partitions;
        let logs = smol::unblock(move || -> Result<Vec<PartitionLog>, BrokerError> {
            let now = now_ms();
            let mut logs = Vec::new();
            for index in first..total {
                let dir = broker
                    .data_dir
                    .join(layout::partition_dir_name(&owned, index));
                let log = PartitionLog::open(broker.storage.clone(), &dir, config.clone(), now)
                    .map_err(|e| {
                        BrokerError::new(
                            ErrorCode::KafkaStorageError,
                            format!("cannot open {owned}-{index}: {e}"),
                        )
                    })?;
                if owned == OFFSETS_TOPIC {
                    super::group::offsets::mark_cluster_replica(&dir).map_err(|e| {
                        BrokerError::new(
                            ErrorCode::KafkaStorageError,
                            format!("cannot mark {owned}-{index} as a replica: {e}"),
                        )
                    })?;
                }
                logs.push(log);
            }
            Ok(logs)
        })
        .await?;
        let mut partitions = existing
            .as_ref()
            .map(|t| t.partitions.clone())
            .unwrap_or_default();
        if let Some(t) = &existing {
            for p in &t.partitions {
                p.set_config(log_config.clone());
            }
        }
        for (i, log) in logs.into_iter().enumerate() {
            let epoch = log.latest_epoch().map_or(0, |(e, _)| e);
            partitions.push(Partition::start_with_role(
                name,
                first + i as u32,
                log,
                &self.rt,
                Role::Offline { epoch },
            ));
        }
        if existing.is_none() {
            info!("opened topic {name} ({} partition(s))", ct.state.partitions);
        }
        self.install_topic(
            name,
            Topic {
                state: ct.state.clone(),
                log_config,
                partitions,
            },
        );
        Ok(())
    }

    async fn remove_topic_locally(self: &Arc<Self>, name: &str) {
        let Some(topic) = self
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
        else {
            return;
        };
        for p in &topic.partitions {
            if let Err(e) = p.close().await {
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
    }

    /// In a cluster: the partition, if this node leads it.
    pub(crate) fn check_leader(&self, p: &Partition) -> Result<(), BrokerError> {
        match p.role() {
            Role::Single | Role::Leader(_) => Ok(()),
            Role::Offline { .. } if self.cluster().is_some() => {
                let leaderless = self.cluster().is_some_and(|c| {
                    c.state()
                        .topics
                        .get(p.topic())
                        .and_then(|t| t.partitions.get(p.index() as usize))
                        .is_some_and(|ps| ps.leader.is_none())
                });
                if leaderless {
                    Err(BrokerError::new(
                        ErrorCode::LeaderNotAvailable,
                        format!(
                            "{}-{} has no leader: its in-sync replicas are down (unclean \
                             leader election is off); bring one back, or set \
                             unclean.leader.election.enable=true to accept data loss",
                            p.topic(),
                            p.index()
                        ),
                    ))
                } else {
                    Err(not_leader(p.topic(), p.index()))
                }
            }
            _ => Err(not_leader(p.topic(), p.index())),
        }
    }

    /// Before an `acks=all` append: the ISR must hold `min.insync.replicas`.
    pub(crate) fn check_min_isr(
        &self,
        p: &Partition,
        config: &LogConfig,
        acks: Acks,
    ) -> Result<(), BrokerError> {
        if acks != Acks::All {
            return Ok(());
        }
        if let Role::Leader(l) = p.role()
            && (l.isr.len() as u64) < u64::from(config.min_insync_replicas)
        {
            return Err(BrokerError::new(
                ErrorCode::NotEnoughReplicas,
                format!(
                    "{}-{}: {} in-sync replica(s) {:?}, fewer than min.insync.replicas={}; \
                     nothing was appended, retry when replicas are back",
                    p.topic(),
                    p.index(),
                    l.isr.len(),
                    l.isr,
                    config.min_insync_replicas
                ),
            ));
        }
        Ok(())
    }

    /// After an `acks=all` append: waits until the high watermark passes
    /// `next_offset`.
    pub(crate) async fn wait_replicated(
        &self,
        p: &Partition,
        next_offset: u64,
        min_isr: u32,
        timeout_ms: u32,
    ) -> Result<(), BrokerError> {
        if matches!(p.role(), Role::Single) {
            return Ok(());
        }
        let wait = if timeout_ms == 0 {
            ACKS_ALL_WAIT_MS_DEFAULT
        } else {
            timeout_ms
        };
        let deadline = Instant::now() + Duration::from_millis(u64::from(wait));
        loop {
            let listener = p.hw_event().listen();
            if p.high_watermark() >= next_offset {
                return Ok(());
            }
            match p.role() {
                Role::Leader(l) => {
                    if (l.isr.len() as u64) < u64::from(min_isr) {
                        return Err(BrokerError::new(
                            ErrorCode::NotEnoughReplicasAfterAppend,
                            format!(
                                "{}-{}: appended, but the ISR {:?} shrank below \
                                 min.insync.replicas={min_isr} before it was replicated; a \
                                 retry may duplicate it",
                                p.topic(),
                                p.index(),
                                l.isr
                            ),
                        ));
                    }
                }
                _ => {
                    return Err(BrokerError::new(
                        ErrorCode::NotLeaderOrFollower,
                        format!(
                            "{}-{}: this node lost the leadership before the batch was \
                             replicated; it may or may not be kept: retry on the new leader \
                             (a retry may duplicate it)",
                            p.topic(),
                            p.index()
                        ),
                    ));
                }
            }
            if self.is_shutting_down() {
                return Err(super::shutting_down());
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
            if !woke && p.high_watermark() < next_offset {
                return Err(BrokerError::new(
                    ErrorCode::RequestTimedOut,
                    format!(
                        "{}-{}: not replicated to the ISR within {wait} ms; the append may \
                         still complete, a retry may duplicate it",
                        p.topic(),
                        p.index()
                    ),
                ));
            }
        }
    }

    /// A follower's fetch: records its progress, then reads from its offset
    /// up to the log end.
    #[allow(clippy::too_many_arguments)]
    pub async fn replica_fetch(
        self: &Arc<Self>,
        topic: &str,
        partition: u32,
        replica_id: u32,
        leader_epoch: i32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<(Response, Vec<u8>), BrokerError> {
        self.check_running()?;
        let p = self.local_partition(topic, partition)?;
        check_epoch(&p, leader_epoch)?;
        let now = now_ms();
        let (end, start) = p.with_log(|log| Ok((log.log_end_offset(), log.log_start_offset())))?;
        if offset > end || offset < start {
            return Err(BrokerError::new(
                ErrorCode::OffsetOutOfRange,
                format!(
                    "{topic}-{partition}: replica {replica_id} fetches at {offset}, but the \
                     leader has {start}..{end}; truncate by leader epoch first"
                ),
            ));
        }
        p.with_role(|role| {
            if let Role::Leader(l) = role
                && let Some(f) = l.followers.get_mut(&replica_id)
            {
                f.fetched(offset, end, now);
            }
        });
        p.with_log(|log| {
            p.advance_hw(log);
            Ok(())
        })?;
        let max_bytes = u64::from(max_bytes.clamp(1, FETCH_RESPONSE_BYTES_MAX));
        let deadline = Instant::now()
            + Duration::from_millis(u64::from(max_wait_ms.min(FETCH_MAX_WAIT_MS_MAX)));
        loop {
            let listener = p.appended_event().listen();
            let (slice, hw, start, end) = p.with_log(|log| {
                let end = log.log_end_offset();
                let slice = log.read(offset, max_bytes, end).map_err(|e| {
                    BrokerError::new(
                        ErrorCode::KafkaStorageError,
                        format!("{topic}-{partition}: {e}"),
                    )
                })?;
                Ok((slice, log.high_watermark(), log.log_start_offset(), end))
            })?;
            check_epoch(&p, leader_epoch)?;
            if let Some(slice) = slice {
                let bytes = super::read_slice(slice).await.map_err(|e| {
                    BrokerError::new(
                        ErrorCode::KafkaStorageError,
                        format!("{topic}-{partition}: {e}"),
                    )
                })?;
                return Ok((
                    Response::ReplicaFetch {
                        high_watermark: hw,
                        log_start_offset: start,
                        log_end_offset: end,
                    },
                    bytes,
                ));
            }
            if Instant::now() >= deadline || self.is_shutting_down() {
                return Ok((
                    Response::ReplicaFetch {
                        high_watermark: hw,
                        log_start_offset: start,
                        log_end_offset: end,
                    },
                    Vec::new(),
                ));
            }
            async {
                listener.await;
            }
            .or(async {
                smol::Timer::at(deadline).await;
            })
            .await;
        }
    }

    /// KIP-101: where `epoch` ended in this leader's log.
    pub fn offset_for_leader_epoch(
        &self,
        topic: &str,
        partition: u32,
        current_leader_epoch: i32,
        epoch: i32,
    ) -> Result<Response, BrokerError> {
        self.check_running()?;
        let p = self.local_partition(topic, partition)?;
        check_epoch(&p, current_leader_epoch)?;
        p.with_log(|log| {
            Ok(Response::OffsetForLeaderEpoch {
                found: log.end_offset_for_epoch(epoch),
                log_start_offset: log.log_start_offset(),
            })
        })
    }

    fn local_partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, BrokerError> {
        let t = self.topic(topic).ok_or_else(|| {
            BrokerError::new(
                ErrorCode::UnknownTopicOrPartition,
                format!("topic {topic} is not open on this node yet; retry"),
            )
        })?;
        t.partitions
            .get(partition as usize)
            .cloned()
            .ok_or_else(|| {
                BrokerError::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("{topic}-{partition} is not open on this node yet; retry"),
                )
            })
    }

    /// Cluster metadata: every node and every topic's leaders.
    pub(crate) fn cluster_metadata(
        &self,
        cluster: &Cluster,
        names: Option<Vec<String>>,
    ) -> Result<(Vec<eddy_client::protocol::NodeInfo>, Vec<TopicMetadata>), BrokerError> {
        let state = cluster.state();
        let nodes = cluster
            .settings()
            .voters
            .iter()
            .map(|v| eddy_client::protocol::NodeInfo {
                id: v.id,
                address: v.address.clone(),
            })
            .collect();
        let topic_meta = |name: &str, t: &ClusterTopic| TopicMetadata {
            name: name.to_owned(),
            partitions: t
                .partitions
                .iter()
                .enumerate()
                .map(|(i, p)| (i as u32, p.leader.unwrap_or(NO_LEADER)))
                .collect(),
        };
        let topics = match names {
            None => state.topics.iter().map(|(n, t)| topic_meta(n, t)).collect(),
            Some(names) => {
                let mut out = Vec::with_capacity(names.len());
                for name in names {
                    let t = state
                        .topics
                        .get(&name)
                        .ok_or_else(|| super::unknown_topic(&name))?;
                    out.push(topic_meta(&name, t));
                }
                out
            }
        };
        Ok((nodes, topics))
    }

    /// Leader, replicas and ISR per partition from the metadata; offsets
    /// from this node's copy.
    pub(crate) fn cluster_partitions(
        &self,
        cluster: &Cluster,
        name: &str,
    ) -> Result<Vec<PartitionInfo>, BrokerError> {
        let state = cluster.state();
        let ct = state
            .topics
            .get(name)
            .ok_or_else(|| super::unknown_topic(name))?;
        let local = self.topic(name);
        let mut out = Vec::with_capacity(ct.partitions.len());
        for (i, ps) in ct.partitions.iter().enumerate() {
            let offsets = local
                .as_ref()
                .and_then(|t| t.partitions.get(i))
                .and_then(|p| {
                    p.with_log(|log| {
                        Ok((
                            log.log_start_offset(),
                            log.high_watermark(),
                            log.log_end_offset(),
                            log.size_bytes(),
                        ))
                    })
                    .ok()
                })
                .unwrap_or((0, 0, 0, 0));
            out.push(PartitionInfo {
                partition: i as u32,
                leader: ps.leader.unwrap_or(NO_LEADER),
                replicas: ps.replicas.clone(),
                isr: ps.isr.clone(),
                log_start_offset: offsets.0,
                high_watermark: offsets.1,
                log_end_offset: offsets.2,
                size_bytes: offsets.3,
            });
        }
        Ok(out)
    }

    /// Proposes a topic creation and waits until this node has opened it.
    pub(crate) async fn cluster_create(
        self: &Arc<Self>,
        cluster: &Cluster,
        state: TopicState,
    ) -> Result<(), BrokerError> {
        let name = state.name.clone();
        cluster.propose(Command::CreateTopic(state)).await?;
        self.wait_local(&name, true).await;
        Ok(())
    }

    /// Waits (bounded) until the topic is open here (or gone).
    pub(crate) async fn wait_local(&self, name: &str, present: bool) {
        for _ in 0..100 {
            if self.topic(name).is_some() == present {
                return;
            }
            smol::Timer::after(Duration::from_millis(20)).await;
        }
    }
}

fn check_epoch(p: &Partition, epoch: i32) -> Result<(), BrokerError> {
    match p.role() {
        Role::Leader(l) if l.epoch == epoch => Ok(()),
        Role::Leader(l) if epoch < l.epoch => Err(BrokerError::new(
            ErrorCode::FencedLeaderEpoch,
            format!(
                "{}-{}: epoch {epoch} is older than the leader's {}; refresh metadata",
                p.topic(),
                p.index(),
                l.epoch
            ),
        )),
        Role::Leader(l) => Err(BrokerError::new(
            ErrorCode::UnknownLeaderEpoch,
            format!(
                "{}-{}: epoch {epoch} is newer than this leader's {}; retry",
                p.topic(),
                p.index(),
                l.epoch
            ),
        )),
        _ => Err(not_leader(p.topic(), p.index())),
    }
}

async fn reconcile_loop(broker: std::sync::Weak<Broker>) {
    loop {
        let Some(b) = broker.upgrade() else { return };
        let Some(cluster) = b.cluster().cloned() else {
            return;
        };
        let listener = cluster.changed().listen();
        // A node just started takes no role from metadata that may be stale:
        // it waits until it has caught up (which notifies `changed`).
        if cluster.is_caught_up() {
            let state = cluster.state();
            b.reconcile(&cluster, &state).await;
        }
        drop(b);
        // Also on a timer, so a failed open is retried.
        async {
            listener.await;
        }
        .or(async {
            smol::Timer::after(Duration::from_millis(1000)).await;
        })
        .await;
    }
}

/// Leaders shrink and expand their ISR.
async fn isr_loop(broker: std::sync::Weak<Broker>) {
    loop {
        smol::Timer::after(Duration::from_millis(ISR_CHECK_MS)).await;
        let Some(b) = broker.upgrade() else { return };
        let Some(cluster) = b.cluster().cloned() else {
            return;
        };
        if b.is_shutting_down() {
            return;
        }
        let lag = cluster.settings().replica_lag_time_max_ms as i64;
        let now = now_ms();
        for p in b.all_partitions() {
            let Ok((end, hw)) = p.with_log(|log| Ok((log.log_end_offset(), log.high_watermark())))
            else {
                continue;
            };
            let proposal = p.with_role(|role| {
                let Role::Leader(l) = role else { return None };
                if now - l.isr_proposed_ms < ISR_REPROPOSE_MS {
                    return None;
                }
                let isr = l.isr_proposal(end, hw, now, lag)?;
                l.isr_proposed_ms = now;
                Some((l.me, l.epoch, isr))
            });
            if let Some((me, epoch, isr)) = proposal {
                info!(
                    "{}-{}: proposing ISR {isr:?} (epoch {epoch})",
                    p.topic(),
                    p.index()
                );
                let command = Command::AlterIsr {
                    topic: p.topic().to_owned(),
                    partition: p.index(),
                    leader: me,
                    leader_epoch: epoch,
                    isr,
                };
                let c = cluster.clone();
                cluster
                    .rt
                    .spawn(async move {
                        if let Err(e) = c.propose(command).await {
                            debug!("ISR change not applied: {e}");
                        }
                    })
                    .detach();
            }
        }
    }
}

async fn control_request(
    client: &Client,
    request: Request,
) -> Result<(Response, Vec<u8>), ClientError> {
    client
        .request(
            RequestHeader {
                version: PROTOCOL_VERSION,
                request,
            },
            &[],
        )
        .await
}

/// A follower's fetcher: truncate by epoch, then fetch until cancelled.
async fn follow(
    broker: std::sync::Weak<Broker>,
    p: Arc<Partition>,
    client: Client,
    me: u32,
    leader: u32,
    epoch: i32,
) {
    let topic = p.topic().to_owned();
    let index = p.index();
    let mut failing = FailureRun::default();
    // KIP-101: ask the leader where our latest epoch ended.
    loop {
        if broker.upgrade().is_none_or(|b| b.is_shutting_down()) {
            return;
        }
        match truncate_by_epoch(&p, &client, epoch).await {
            Ok(()) => break,
            Err(e) => {
                failing.failed(|| {
                    format!("{topic}-{index}: epoch check with node {leader} failed: {e}")
                });
                smol::Timer::after(Duration::from_millis(FOLLOWER_BACKOFF_MS)).await;
            }
        }
    }
    failing.ok();
    // Appends that fail here (a full disk, a log stopped after a failed
    // fsync) are retried every FOLLOWER_BACKOFF_MS: warn at once, then at
    // the pace of FailureRun, not on every retry.
    let mut appending = FailureRun::default();
    let mut sync = FollowerSync::default();
    loop {
        if broker.upgrade().is_none_or(|b| b.is_shutting_down()) {
            return;
        }
        let Ok(offset) = p.with_log(|log| Ok(log.log_end_offset())) else {
            return;
        };
        let request = Request::ReplicaFetch {
            topic: topic.clone(),
            partition: index,
            replica_id: me,
            leader_epoch: epoch,
            offset,
            max_bytes: REPLICA_FETCH_BYTES,
            max_wait_ms: REPLICA_FETCH_WAIT_MS,
        };
        match control_request(&client, request).await {
            Ok((Response::ReplicaFetch { high_watermark, .. }, batches)) => {
                let now = now_ms();
                let result = p.with_log(|log| {
                    if !batches.is_empty() {
                        log.append_as_follower(&batches, now).map_err(|e| {
                            BrokerError::new(ErrorCode::KafkaStorageError, e.to_string())
                        })?;
                    }
                    p.follower_hw(log, high_watermark);
                    // Some(wait): an fsync is due; wait for it before the next
                    // fetch only with flush.messages=1.
                    Ok(log
                        .flush_due(now)
                        .then(|| log.config().flush_messages == Some(1)))
                });
                failing.ok();
                match result {
                    Ok(due) => {
                        if appending.is_failing() {
                            info!("{topic}-{index}: follower appends work again");
                        }
                        appending.ok();
                        sync.after_append(&p, due).await;
                    }
                    Err(e) => {
                        appending.failed_loudly(|| {
                            format!(
                                "{topic}-{index}: follower append failed: {e}; this replica \
                                 stays out of the ISR until appends work again"
                            )
                        });
                        smol::Timer::after(Duration::from_millis(FOLLOWER_BACKOFF_MS)).await;
                    }
                }
            }
            Ok(_) => {
                smol::Timer::after(Duration::from_millis(FOLLOWER_BACKOFF_MS)).await;
            }
            Err(ClientError::Server(body)) if body.code == ErrorCode::OffsetOutOfRange => {
                // Diverged or behind the leader's log start: check by epoch again.
                if let Err(e) = truncate_by_epoch(&p, &client, epoch).await {
                    failing.failed(|| {
                        format!("{topic}-{index}: epoch check with node {leader} failed: {e}")
                    });
                }
                smol::Timer::after(Duration::from_millis(FOLLOWER_BACKOFF_MS)).await;
            }
            Err(e) => {
                failing.failed(|| format!("{topic}-{index}: fetch from node {leader} failed: {e}"));
                smol::Timer::after(Duration::from_millis(FOLLOWER_BACKOFF_MS)).await;
            }
        }
    }
}

/// Whether `p` is `__consumer_offsets-0`, whose leader coordinates groups.
fn is_offsets_partition(p: &Partition) -> bool {
    p.topic() == OFFSETS_TOPIC && p.index() == 0
}

fn storage_error(e: eddy_core::log::LogError) -> BrokerError {
    BrokerError::new(ErrorCode::KafkaStorageError, e.to_string())
}

/// A follower's fsyncs: in the background like the leader's group commit
/// (off the log's lock, without holding up the next fetch), except with
/// `flush.messages=1`, where the next fetch waits for one.
#[derive(Default)]
struct FollowerSync {
    running: Option<SyncTask>,
}

impl FollowerSync {
    /// After an append: records a finished fsync, and starts one when `due`
    /// (`Some(wait)`), waiting for it if `wait`.
    async fn after_append(&mut self, p: &Partition, due: Option<bool>) {
        if let Some(task) = self.running.take_if(|t| t.is_finished()) {
            Self::finish(p, task).await;
        }
        let Some(wait) = due else { return };
        if wait && let Some(task) = self.running.take() {
            Self::finish(p, task).await;
        }
        if self.running.is_some() {
            return;
        }
        let job = match p.with_log(|log| log.begin_sync().map_err(storage_error)) {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(e) => {
                warn!("{}-{}: follower fsync failed: {e}", p.topic(), p.index());
                return;
            }
        };
        let task = sync_in_background(job);
        if wait {
            Self::finish(p, task).await;
        } else {
            self.running = Some(task);
        }
    }

    /// Records a finished fsync; a failed one poisons the log (as on the
    /// leader), so later appends fail and the follower backs off.
    async fn finish(p: &Partition, task: SyncTask) {
        let (job, result) = task.await;
        if let Err(e) = p.with_log(|log| log.finish_sync(&job, result).map_err(storage_error)) {
            warn!("{}-{}: follower fsync failed: {e}", p.topic(), p.index());
        }
    }
}

/// Truncates the follower's log where its latest epoch ended on the leader.
async fn truncate_by_epoch(p: &Partition, client: &Client, epoch: i32) -> Result<(), String> {
    let (latest, end) = p
        .with_log(|log| Ok((log.latest_epoch(), log.log_end_offset())))
        .map_err(|e| e.to_string())?;
    let Some((my_epoch, _)) = latest else {
        // An empty log (or one without epochs) has nothing to diverge, but
        // may be behind the leader's log start.
        return check_log_start(p, client, epoch, end).await;
    };
    let request = Request::OffsetForLeaderEpoch {
        topic: p.topic().to_owned(),
        partition: p.index(),
        current_leader_epoch: epoch,
        epoch: my_epoch,
    };
    let (found, leader_start) = match control_request(client, request).await {
        Ok((
            Response::OffsetForLeaderEpoch {
                found,
                log_start_offset,
            },
            _,
        )) => (found, log_start_offset),
        Ok(other) => return Err(format!("unexpected answer {other:?}")),
        Err(e) => return Err(e.to_string()),
    };
    let now = now_ms();
    p.with_log(|log| {
        let target = match found {
            Some((e, leader_end)) if e == my_epoch => leader_end.min(log.log_end_offset()),
            Some((e, leader_end)) => {
                let mine = log.end_offset_for_epoch(e).map_or(0, |(_, o)| o);
                leader_end.min(mine)
            }
            None => leader_start,
        };
        if target < log.log_end_offset() {
            info!(
                "{}-{}: truncating from {} to {target} (leader epoch {epoch}, KIP-101)",
                p.topic(),
                p.index(),
                log.log_end_offset()
            );
            log.truncate_to(target, now)
                .map_err(|e| BrokerError::new(ErrorCode::KafkaStorageError, e.to_string()))?;
        }
        if log.log_end_offset() < leader_start {
            log.truncate_fully_and_start_at(leader_start, now)
                .map_err(|e| BrokerError::new(ErrorCode::KafkaStorageError, e.to_string()))?;
        }
        p.sync_hw(log);
        Ok(())
    })
    .map_err(|e| e.to_string())
}

async fn check_log_start(
    p: &Partition,
    client: &Client,
    epoch: i32,
    end: u64,
) -> Result<(), String> {
    let request = Request::OffsetForLeaderEpoch {
        topic: p.topic().to_owned(),
        partition: p.index(),
        current_leader_epoch: epoch,
        epoch: -1,
    };
    let leader_start = match control_request(client, request).await {
        Ok((
            Response::OffsetForLeaderEpoch {
                log_start_offset, ..
            },
            _,
        )) => log_start_offset,
        Ok(other) => return Err(format!("unexpected answer {other:?}")),
        Err(e) => return Err(e.to_string()),
    };
    if end < leader_start {
        let now = now_ms();
        p.with_log(|log| {
            log.truncate_fully_and_start_at(leader_start, now)
                .map_err(|e| BrokerError::new(ErrorCode::KafkaStorageError, e.to_string()))?;
            p.sync_hw(log);
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}
