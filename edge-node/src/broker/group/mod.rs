//! Consumer groups: the coordinator ([`state`], sans-IO), the assignment
//! strategies ([`assignor`]) and committed offsets ([`offsets`]), served by
//! the broker.
//!
//! The coordinator computes assignments itself (in the spirit of Kafka's
//! KIP-848) instead of asking a leader member, so a join is one long-polling
//! request and the assignors can be tested as pure functions. Joins and
//! heartbeats long-poll on one [`Event`] that fires whenever a group changes;
//! a ticker task wakes at the coordinator's next deadline (a session or a
//! rebalance timing out), never on a busy loop.

pub mod assignor;
pub mod offsets;
pub mod state;

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use eddy_client::protocol::{
    Acks, CommitOffset, CommittedOffset, ErrorCode, GroupListing, MemberDescription,
};
use event_listener::Event;
use futures_lite::FutureExt as _;
use log::warn;
use smol::Task;

use super::{Broker, BrokerError, now_ms, shutting_down, unknown_topic};
use offsets::{
    OFFSET_METADATA_BYTES_MAX, OFFSETS_PER_COMMIT_MAX, OFFSETS_TOPIC, OffsetMap, OffsetStore,
};
use state::{Coordinator, GroupView, JoinParams, JoinResult, check_group_id};

/// Longest a heartbeat is held waiting for a rebalance to start.
pub const HEARTBEAT_WAIT_MS_MAX: u32 = 10_000;
/// Extra time a join waits beyond the rebalance timeout before giving up.
const JOIN_SLACK_MS: u64 = 1_000;
/// Longest the ticker sleeps without a deadline.
const TICK_IDLE_MS: u64 = 1_000;
/// Longest a commit waits for the replicas of `__consumer_offsets` in a
/// cluster (Kafka's `offsets.commit.timeout.ms`).
pub const OFFSETS_COMMIT_TIMEOUT_MS: u32 = 5_000;
/// Most replicas of `__consumer_offsets` in a cluster (Kafka's
/// `offsets.topic.replication.factor`), fewer when the cluster has fewer
/// nodes.
pub const OFFSETS_TOPIC_REPLICATION_FACTOR: u16 = 3;
/// Segment size of `__consumer_offsets` in a cluster: small, so compaction
/// has closed segments to work on.
const OFFSETS_TOPIC_SEGMENT_BYTES: &str = "4194304";

/// The group coordinator and offset store of a broker.
#[derive(Debug)]
pub struct Groups {
    coordinator: Mutex<Coordinator>,
    changed: Event,
    offsets: Mutex<Source>,
    ticker: Mutex<Option<Task<()>>>,
    epoch: Instant,
    /// When this node last proposed `__consumer_offsets` (cluster only).
    offsets_topic_proposed: Mutex<Option<Instant>>,
}

/// Least time between two proposals of `__consumer_offsets` by one node.
const OFFSETS_TOPIC_PROPOSE_EVERY: Duration = Duration::from_secs(1);

/// Where committed offsets live.
#[derive(Debug)]
enum Source {
    /// A single node: its own offsets log; it coordinates every group.
    Local(Arc<OffsetStore>),
    /// A node of a cluster: the offsets of `__consumer_offsets` partition 0,
    /// replayed when this node became its leader, while it leads it. The
    /// leader of that partition coordinates every group.
    Cluster(Option<Arc<Loaded>>),
    /// Shut down.
    Closed,
}

/// The offsets a cluster node loaded when it became the coordinator.
#[derive(Debug)]
struct Loaded {
    map: OffsetMap,
    /// The leader epoch of `__consumer_offsets-0` it loaded them in.
    epoch: i32,
}

/// A handle on the offsets, for one request.
#[derive(Debug, Clone)]
enum Offsets {
    Local(Arc<OffsetStore>),
    Cluster(Arc<Loaded>),
}

impl Offsets {
    fn map(&self) -> &OffsetMap {
        match self {
            Offsets::Local(store) => store.map(),
            Offsets::Cluster(loaded) => &loaded.map,
        }
    }
}

/// A group as `DescribeGroup` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// State name.
    pub state: String,
    /// Generation.
    pub generation: i32,
    /// Strategy name, or empty.
    pub strategy: String,
    /// Members.
    pub members: Vec<MemberDescription>,
    /// Committed offsets.
    pub offsets: Vec<CommittedOffset>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Groups {
    /// Groups of a single node, over its opened offset store.
    pub fn new(offsets: OffsetStore) -> Groups {
        Groups::with_source(Source::Local(Arc::new(offsets)))
    }

    /// Groups of a cluster node: it coordinates them only while it leads
    /// `__consumer_offsets` partition 0 ([`Groups::load`]).
    pub fn new_in_cluster() -> Groups {
        Groups::with_source(Source::Cluster(None))
    }

    fn with_source(source: Source) -> Groups {
        Groups {
            coordinator: Mutex::new(Coordinator::new()),
            changed: Event::new(),
            offsets: Mutex::new(source),
            ticker: Mutex::new(None),
            epoch: Instant::now(),
            offsets_topic_proposed: Mutex::new(None),
        }
    }

    /// Monotonic milliseconds for sessions and rebalance deadlines.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis().min(u128::from(u64::MAX)) as u64
    }

    /// The offsets, when this node coordinates groups: `NotCoordinator` on a
    /// cluster node that does not lead `__consumer_offsets-0`.
    fn offsets(&self) -> Result<Offsets, BrokerError> {
        match &*lock(&self.offsets) {
            Source::Local(store) => Ok(Offsets::Local(store.clone())),
            Source::Cluster(Some(loaded)) => Ok(Offsets::Cluster(loaded.clone())),
            Source::Cluster(None) => Err(not_coordinator()),
            Source::Closed => Err(shutting_down()),
        }
    }

    /// `NotCoordinator` unless this node coordinates groups.
    fn check_coordinator(&self) -> Result<(), BrokerError> {
        self.offsets().map(|_| ())
    }

    /// The `__consumer_offsets-0` epoch this cluster node loaded the offsets
    /// in, while it coordinates groups.
    pub(crate) fn loaded_epoch(&self) -> Option<i32> {
        match &*lock(&self.offsets) {
            Source::Cluster(Some(loaded)) => Some(loaded.epoch),
            _ => None,
        }
    }

    /// A cluster node became the leader of `__consumer_offsets-0` in
    /// `epoch`: it coordinates every group from now on, with the offsets
    /// replayed from its copy. Members known before (when it coordinated
    /// earlier) are forgotten: they re-join.
    pub(crate) fn load(&self, map: OffsetMap, epoch: i32) {
        {
            let mut source = lock(&self.offsets);
            if !matches!(*source, Source::Cluster(_)) {
                return;
            }
            *source = Source::Cluster(Some(Arc::new(Loaded { map, epoch })));
        }
        *lock(&self.coordinator) = Coordinator::new();
        self.notify();
    }

    /// A cluster node no longer leads `__consumer_offsets-0`: it stops
    /// coordinating; waiting joins and heartbeats answer `NotCoordinator`.
    pub(crate) fn unload(&self) {
        {
            let mut source = lock(&self.offsets);
            if !matches!(*source, Source::Cluster(Some(_))) {
                return;
            }
            *source = Source::Cluster(None);
        }
        *lock(&self.coordinator) = Coordinator::new();
        self.notify();
    }

    /// Wakes every waiting join and heartbeat (and the ticker).
    pub fn notify(&self) {
        self.changed.notify(usize::MAX);
    }

    /// Starts the ticker on the broker's runtime.
    pub(crate) fn start(broker: &Arc<Broker>) {
        let task = broker.rt.spawn(run_ticker(Arc::downgrade(broker)));
        *lock(&broker.groups.ticker) = Some(task);
    }

    /// Stops the ticker and closes the offsets log.
    pub(crate) async fn shutdown(&self) -> Result<(), BrokerError> {
        self.notify();
        let ticker = lock(&self.ticker).take();
        drop(ticker);
        let source = std::mem::replace(&mut *lock(&self.offsets), Source::Closed);
        let Source::Local(store) = source else {
            return Ok(());
        };
        // Commits in flight hold a clone; they finish within their fsync.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut store = store;
        loop {
            match Arc::try_unwrap(store) {
                Ok(s) => {
                    let now = now_ms();
                    return smol::unblock(move || s.close(now)).await.map_err(|e| {
                        BrokerError::new(
                            ErrorCode::KafkaStorageError,
                            format!("closing the committed offsets log failed: {e}"),
                        )
                    });
                }
                Err(back) if Instant::now() < deadline => {
                    store = back;
                    smol::Timer::after(Duration::from_millis(10)).await;
                }
                Err(_) => {
                    warn!("committed offsets log still in use at shutdown; left to recovery");
                    return Ok(());
                }
            }
        }
    }
}

async fn run_ticker(broker: Weak<Broker>) {
    loop {
        let (listener, sleep) = {
            let Some(b) = broker.upgrade() else { return };
            if b.is_shutting_down() {
                return;
            }
            let listener = b.groups.changed.listen();
            let now = b.groups.now();
            let next = lock(&b.groups.coordinator).next_deadline();
            let sleep = next.map_or(TICK_IDLE_MS, |d| d.saturating_sub(now).min(TICK_IDLE_MS));
            (listener, Duration::from_millis(sleep))
        };
        async {
            listener.await;
        }
        .or(async {
            smol::Timer::after(sleep).await;
        })
        .await;
        let Some(b) = broker.upgrade() else { return };
        let changed = {
            let counts = |t: &str| b.partition_count_of(t);
            let now = b.groups.now();
            lock(&b.groups.coordinator).tick(now, &counts)
        };
        if changed {
            b.groups.notify();
        }
        // A maintenance pass for a single node's offsets log, when
        // compaction is due (a cluster's is a topic, maintained as one).
        if let Ok(Offsets::Local(store)) = b.groups.offsets() {
            let now = now_ms();
            if let Err(e) = smol::unblock(move || store.maintain(now)).await {
                warn!("committed offsets log maintenance failed: {e}");
            }
        }
    }
}

impl Broker {
    fn partition_count_of(&self, topic: &str) -> Option<u32> {
        self.topic(topic).map(|t| t.partitions.len() as u32)
    }

    /// Joins (or re-joins) a group and waits until its rebalance completes.
    pub async fn join_group(
        self: &Arc<Self>,
        group: &str,
        member_id: &str,
        params: JoinParams,
    ) -> Result<JoinResult, BrokerError> {
        self.check_running()?;
        self.groups.check_coordinator()?;
        let wait = u64::from(params.rebalance_timeout_ms) + JOIN_SLACK_MS;
        let member = {
            let counts = |t: &str| self.partition_count_of(t);
            let now = self.groups.now();
            lock(&self.groups.coordinator).join(group, member_id, params, now, &counts)?
        };
        self.groups.notify();
        let deadline = Instant::now() + Duration::from_millis(wait);
        loop {
            let listener = self.groups.changed.listen();
            let result = lock(&self.groups.coordinator).join_result(group, &member);
            if let Some(result) = result {
                // Collecting may have made the group Stable.
                self.groups.notify();
                return result;
            }
            if self.is_shutting_down() {
                return Err(shutting_down());
            }
            self.groups.check_coordinator()?;
            if Instant::now() >= deadline {
                return Err(BrokerError::new(
                    ErrorCode::RebalanceInProgress,
                    format!("the rebalance of group {group:?} did not complete in time; re-join"),
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

    /// Refreshes a member's session and holds the answer up to `wait_ms`,
    /// answering early when the member must re-join.
    pub async fn heartbeat(
        self: &Arc<Self>,
        group: &str,
        member_id: &str,
        generation: i32,
        wait_ms: u32,
    ) -> Result<(), BrokerError> {
        self.check_running()?;
        self.groups.check_coordinator()?;
        {
            let now = self.groups.now();
            lock(&self.groups.coordinator).heartbeat(group, member_id, generation, now)?;
        }
        let deadline =
            Instant::now() + Duration::from_millis(u64::from(wait_ms.min(HEARTBEAT_WAIT_MS_MAX)));
        loop {
            let listener = self.groups.changed.listen();
            self.groups.check_coordinator()?;
            lock(&self.groups.coordinator).check_member(group, member_id, generation)?;
            if Instant::now() >= deadline || self.is_shutting_down() {
                return Ok(());
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

    /// Removes a member from its group at once.
    pub fn leave_group(&self, group: &str, member_id: &str) -> Result<(), BrokerError> {
        self.check_running()?;
        self.groups.check_coordinator()?;
        {
            let counts = |t: &str| self.partition_count_of(t);
            let now = self.groups.now();
            lock(&self.groups.coordinator).leave(group, member_id, now, &counts)?;
        }
        self.groups.notify();
        Ok(())
    }

    /// Commits offsets durably after checking the member's generation.
    pub async fn commit_offsets(
        self: &Arc<Self>,
        group: &str,
        member_id: &str,
        generation: i32,
        offsets: Vec<CommitOffset>,
    ) -> Result<(), BrokerError> {
        self.check_running()?;
        let source = self.groups.offsets()?;
        lock(&self.groups.coordinator).check_commit(group, member_id, generation)?;
        if offsets.len() > OFFSETS_PER_COMMIT_MAX {
            return Err(BrokerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "{} offsets in one commit; commit at most {OFFSETS_PER_COMMIT_MAX} at once",
                    offsets.len()
                ),
            ));
        }
        for o in &offsets {
            if o.metadata.len() > OFFSET_METADATA_BYTES_MAX {
                return Err(BrokerError::new(
                    ErrorCode::OffsetMetadataTooLarge,
                    format!(
                        "metadata of {}-{} is {} bytes; at most {OFFSET_METADATA_BYTES_MAX} are kept",
                        o.topic,
                        o.partition,
                        o.metadata.len()
                    ),
                ));
            }
            let Some(count) = self.partition_count_of(&o.topic) else {
                return Err(unknown_topic(&o.topic));
            };
            if o.partition >= count {
                return Err(BrokerError::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!(
                        "topic {} has no partition {} (it has {count}); nothing was committed",
                        o.topic, o.partition
                    ),
                ));
            }
        }
        if offsets.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let batch = offsets::commit_batch(group, &offsets, now).map_err(offsets_error)?;
        let at = self.append_offsets(source, batch, now, "commit").await?;
        // Into the offsets this node coordinates with now: after a leadership
        // change the loaded map may be a newer one, replayed before this
        // record was appended (updates apply in log order).
        if let Ok(current) = self.groups.offsets() {
            current.map().committed(group, &offsets, now, at);
        }
        Ok(())
    }

    /// Appends a batch of offset commits or tombstones (`what` the client
    /// asked for) durably; returns the offset of its first record. A single
    /// node appends to its own offsets log and waits for the fsync. A
    /// cluster's coordinator produces to `__consumer_offsets-0` with
    /// `acks=all`, and errors map as Kafka maps them for offset commits: a
    /// lost leadership or disk to `NotCoordinator` (find the new
    /// coordinator), too few replicas or a timeout to
    /// `CoordinatorNotAvailable` (retry).
    async fn append_offsets(
        self: &Arc<Self>,
        source: Offsets,
        mut batch: Vec<u8>,
        now: i64,
        what: &str,
    ) -> Result<u64, BrokerError> {
        if let Offsets::Local(store) = source {
            return smol::unblock(move || store.append(&mut batch, now))
                .await
                .map_err(|e| {
                    BrokerError::new(
                        ErrorCode::KafkaStorageError,
                        format!("{e}; nothing acknowledged was lost, retry the {what}"),
                    )
                });
        }
        let result = self
            .produce(
                OFFSETS_TOPIC,
                Some(0),
                Acks::All,
                OFFSETS_COMMIT_TIMEOUT_MS,
                batch,
            )
            .await;
        result.map(|r| r.appended.base_offset).map_err(|e| {
            if e.code == ErrorCode::MessageTooLarge {
                // Not worth a retry: the same commit is as large next time.
                return BrokerError::new(
                    e.code,
                    format!(
                        "the commit does not fit in one {OFFSETS_TOPIC} batch ({}); commit \
                         fewer partitions at a time, or with shorter metadata",
                        e.message
                    ),
                );
            }
            let code = match e.code {
                ErrorCode::NotLeaderOrFollower
                | ErrorCode::FencedLeaderEpoch
                | ErrorCode::KafkaStorageError => ErrorCode::NotCoordinator,
                ErrorCode::NotEnoughReplicas
                | ErrorCode::NotEnoughReplicasAfterAppend
                | ErrorCode::RequestTimedOut
                | ErrorCode::LeaderNotAvailable
                | ErrorCode::UnknownTopicOrPartition => ErrorCode::CoordinatorNotAvailable,
                other => other,
            };
            BrokerError::new(
                code,
                format!("{OFFSETS_TOPIC}-0: {}; retry the {what}", e.message),
            )
        })
    }

    /// Which node coordinates `group` (Kafka's FindCoordinator): this node
    /// (`None`) or another one, with its address. A single node coordinates
    /// every group. In a cluster the leader of `__consumer_offsets`
    /// partition 0 does; the topic is created (replication factor
    /// [`OFFSETS_TOPIC_REPLICATION_FACTOR`] or the node count) when the
    /// first group needs it, and until it has a leader that loaded it the
    /// answer is `CoordinatorNotAvailable`.
    pub async fn find_coordinator(
        self: &Arc<Self>,
        group: &str,
    ) -> Result<(u32, Option<String>), BrokerError> {
        self.check_running()?;
        // Any group id, even the empty one ListGroups is routed by.
        if group.len() > state::GROUP_ID_BYTES_MAX {
            check_group_id(group)?;
        }
        let Some(cluster) = self.cluster() else {
            return Ok((self.node_id, None));
        };
        let me = cluster.node_id();
        let leader = cluster
            .state()
            .topics
            .get(OFFSETS_TOPIC)
            .map(|t| t.partitions.first().and_then(|p| p.leader));
        match leader {
            None => {
                self.create_offsets_topic(cluster).await;
                Err(coordinator_not_available(format!(
                    "creating {OFFSETS_TOPIC}, which holds the groups' offsets"
                )))
            }
            Some(None) => Err(coordinator_not_available(format!(
                "{OFFSETS_TOPIC}-0 has no leader right now"
            ))),
            Some(Some(leader)) if leader == me => match self.groups.check_coordinator() {
                Ok(()) => Ok((me, None)),
                Err(_) => Err(coordinator_not_available(format!(
                    "node {me} leads {OFFSETS_TOPIC}-0 and is loading it"
                ))),
            },
            Some(Some(leader)) => match cluster.address_of(leader) {
                Some(address) => Ok((leader, Some(address.to_owned()))),
                None => Err(coordinator_not_available(format!(
                    "{OFFSETS_TOPIC}-0 is led by node {leader}, which is not a voter"
                ))),
            },
        }
    }

    /// Proposes `__consumer_offsets` to the metadata quorum, at most once per
    /// [`OFFSETS_TOPIC_PROPOSE_EVERY`] from this node (when several nodes
    /// race, all but one get `TopicAlreadyExists`, which is fine). Its
    /// replication factor is [`OFFSETS_TOPIC_REPLICATION_FACTOR`], or the
    /// live node count when fewer are up (replicas go to live nodes; never
    /// one while two nodes or more are voters: it waits for a second), and
    /// `min.insync.replicas` is 2 when it has two replicas or more, so an
    /// acknowledged commit is on two nodes. Its configs are its own, not
    /// the node's topic defaults: compacted, no plugins.
    async fn create_offsets_topic(self: &Arc<Self>, cluster: &crate::cluster::Cluster) {
        {
            let mut last = lock(&self.groups.offsets_topic_proposed);
            if last.is_some_and(|t| t.elapsed() < OFFSETS_TOPIC_PROPOSE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let live = cluster.state().live_brokers().len();
        let voters = cluster.settings().voters.len();
        if live < voters.min(2) {
            // Not a single-replica topic in a cluster that is still starting.
            return;
        }
        let rf = OFFSETS_TOPIC_REPLICATION_FACTOR.min(u16::try_from(live).unwrap_or(u16::MAX));
        let configs = [
            ("cleanup.policy", "compact".to_owned()),
            ("segment.bytes", OFFSETS_TOPIC_SEGMENT_BYTES.to_owned()),
            ("min.insync.replicas", rf.min(2).to_string()),
            ("interceptor.plugins", String::new()),
            ("retention.plugin", String::new()),
            ("partitioner.plugin", String::new()),
        ];
        let state = super::metadata::TopicState {
            name: OFFSETS_TOPIC.to_owned(),
            partitions: 1,
            replication_factor: rf,
            configs: configs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        };
        match self.cluster_create(cluster, state).await {
            Ok(()) => log::info!("created {OFFSETS_TOPIC} for the consumer groups"),
            Err(e) if e.code == ErrorCode::TopicAlreadyExists => {}
            Err(e) => warn!("cannot create {OFFSETS_TOPIC}: {e}"),
        }
    }

    /// A group's committed offsets.
    pub fn fetch_offsets(
        &self,
        group: &str,
        partitions: Option<Vec<(String, u32)>>,
    ) -> Result<Vec<CommittedOffset>, BrokerError> {
        self.check_running()?;
        check_group_id(group)?;
        Ok(self
            .groups
            .offsets()?
            .map()
            .fetch(group, partitions.as_deref()))
    }

    /// Every group with members or committed offsets.
    pub fn list_groups(&self) -> Result<Vec<GroupListing>, BrokerError> {
        self.check_running()?;
        let mut ids = self.groups.offsets()?.map().groups();
        let coordinator = lock(&self.groups.coordinator);
        ids.extend(coordinator.group_ids());
        Ok(ids
            .into_iter()
            .map(|group| {
                let view = coordinator.describe(&group);
                GroupListing {
                    state: view.as_ref().map_or("Empty", |v| v.state.name()).to_owned(),
                    members: view.as_ref().map_or(0, |v| v.members.len() as u32),
                    strategy: view
                        .as_ref()
                        .and_then(|v| v.strategy)
                        .map_or("", |s| s.name())
                        .to_owned(),
                    group,
                }
            })
            .collect())
    }

    /// A group's state, members and committed offsets.
    pub fn describe_group(&self, group: &str) -> Result<GroupDescription, BrokerError> {
        self.check_running()?;
        check_group_id(group)?;
        let offsets = self.groups.offsets()?.map().fetch(group, None);
        let view: Option<GroupView> = lock(&self.groups.coordinator).describe(group);
        if view.is_none() && offsets.is_empty() {
            return Err(group_not_found(group));
        }
        Ok(match view {
            Some(v) => GroupDescription {
                state: v.state.name().to_owned(),
                generation: v.generation,
                strategy: v.strategy.map_or("", |s| s.name()).to_owned(),
                members: v
                    .members
                    .into_iter()
                    .map(|m| MemberDescription {
                        member_id: m.member_id,
                        client_id: m.client_id,
                        topics: m.topics,
                        assignment: m.assignment,
                    })
                    .collect(),
                offsets,
            },
            None => GroupDescription {
                state: "Empty".into(),
                generation: 0,
                strategy: String::new(),
                members: Vec::new(),
                offsets,
            },
        })
    }

    /// Deletes a group without members and its committed offsets (tombstones).
    pub async fn delete_group(self: &Arc<Self>, group: &str) -> Result<(), BrokerError> {
        self.check_running()?;
        check_group_id(group)?;
        let source = self.groups.offsets()?;
        let known = {
            let mut c = lock(&self.groups.coordinator);
            let known = c.describe(group).is_some();
            c.delete(group)?;
            known
        };
        let now = now_ms();
        let keys = source.map().keys_of(group);
        if !keys.is_empty() {
            let batch = offsets::tombstone_batch(&keys, now).map_err(offsets_error)?;
            let at = self.append_offsets(source, batch, now, "delete").await?;
            if let Ok(current) = self.groups.offsets() {
                current.map().deleted(&keys, at);
            }
        }
        let removed = keys.len();
        if !known && removed == 0 {
            return Err(group_not_found(group));
        }
        self.groups.notify();
        Ok(())
    }
}

fn not_coordinator() -> BrokerError {
    BrokerError::new(
        ErrorCode::NotCoordinator,
        format!(
            "this node does not coordinate consumer groups (the leader of {OFFSETS_TOPIC}-0 \
             does); find the coordinator again"
        ),
    )
}

fn coordinator_not_available(why: String) -> BrokerError {
    BrokerError::new(
        ErrorCode::CoordinatorNotAvailable,
        format!("{why}; retry shortly"),
    )
}

fn offsets_error(e: offsets::OffsetsError) -> BrokerError {
    BrokerError::new(ErrorCode::InvalidRequest, e.to_string())
}

fn group_not_found(group: &str) -> BrokerError {
    BrokerError::new(
        ErrorCode::GroupIdNotFound,
        format!("group {group:?} does not exist; list groups with `eddy group list`"),
    )
}
