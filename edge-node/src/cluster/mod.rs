//! The cluster: a Raft metadata quorum over the static
//! `controller-quorum-voters`, the controller that runs on its leader, and
//! the node-to-node links.
//!
//! - [`state`]: the replicated metadata state and its commands, applied
//!   deterministically on every node.
//! - [`raft_log`]: the quorum's persistent storage (entries, hard state,
//!   snapshots; fsynced).
//! - this module: [`Cluster`]. One OS thread owns raft-rs' `RawNode` (no
//!   locks around it; it fsyncs without stalling the executor): it takes
//!   peer messages and proposals from its inbox, ticks every
//!   [`TICK_MS`], and on every `Ready` sends messages, installs snapshots,
//!   applies committed commands to the [`ClusterState`], persists entries and
//!   hard state, then sends the messages that had to wait for them. Each
//!   peer has one sender task that sends its messages in order, one request
//!   at a time (so they arrive in order), and reports an unreachable peer to
//!   raft.
//! - catching up: a node starts from the metadata it had applied when it
//!   stopped, which may be long out of date (it may say the node leads
//!   partitions the cluster has moved away meanwhile). Like a Kafka broker
//!   that stays fenced until it has replayed the metadata log to where it
//!   stood at registration, it takes no partition role and sends no
//!   heartbeat (so the controller keeps it fenced) until it has applied the
//!   leader's commit index as of after its start, which it learns with a
//!   Raft ReadIndex request ([`Cluster::is_caught_up`]); and it serves no
//!   client request (`BrokerNotAvailable`, also while it listens before this
//!   cluster side has started) until, caught up, it is also unfenced
//!   ([`Cluster::is_serving`]). If the quorum's storage fails later, the node
//!   goes back to that state for good.
//! - heartbeats: every node tells every peer it is alive every
//!   `broker-heartbeat-interval-ms`; the controller (the Raft leader) fences
//!   a node silent for `broker-session-timeout-ms` and unfences it when it
//!   is back (both are commands, so leader election happens at apply time),
//!   and moves leaders back to preferred replicas when
//!   `auto-leader-rebalance-enable` finds a node over
//!   `leader-imbalance-per-broker-percentage`.
//!
//! Raft ids are node ids + 1 (raft-rs reserves 0).

pub mod raft_log;
pub mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use eddy_client::protocol::{
    ClusterNodeInfo, ErrorCode, PROTOCOL_VERSION, RAFT_PAYLOAD_BYTES_MAX, Request, RequestHeader,
};
use eddy_client::{Client, ClientOptions};
use event_listener::Event;
use futures_lite::FutureExt as _;
use log::{debug, error, info, warn};
use protobuf::Message as _;
use raft::prelude::{Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use serde::{Deserialize, Serialize};
use smol::Task;

use crate::broker::{Broker, BrokerError};
use crate::config::{NodeConfig, Voter};
use crate::failures::FailureRun;
use crate::runtime::RuntimeHandle;
use raft_log::DiskStorage;
use state::{Applied, ApplyContext, ClusterState, Command};

/// Raft tick period.
pub const TICK_MS: u64 = 100;
/// Raft heartbeat period, in ticks.
const HEARTBEAT_TICKS: usize = 2;
/// Applied entries after which a snapshot is taken and the log compacted.
pub const SNAPSHOT_ENTRIES: u64 = 1000;
/// Messages queued per peer before new ones are dropped (Raft resends).
const PEER_QUEUE_MESSAGES_MAX: usize = 4096;
/// Messages sent per peer request.
const PEER_BATCH_MESSAGES_MAX: usize = 256;
/// Inputs queued for the Raft thread.
const INBOX_MAX: usize = 8192;
/// Messages accepted in one Raft request.
const RAFT_MESSAGES_PER_REQUEST_MAX: usize = 4096;
/// How long a proposal may take to commit.
pub const PROPOSE_TIMEOUT_MS: u64 = 10_000;
/// Timeout of node-to-node control requests.
const PEER_REQUEST_TIMEOUT_MS: u32 = 2000;
/// How often the controller looks at liveness.
const CONTROLLER_PERIOD_MS: u64 = 100;
/// Least time between two proposals about the same node.
const REPROPOSE_MS: u64 = 1000;
/// How often a node that has not caught up asks the Raft leader for its
/// commit index (a ReadIndex request can be dropped: a leader that has not
/// committed in its term yet, a lost message).
const CATCH_UP_ASK_MS: u64 = 300;
/// How often a node still catching up says so in its log.
const CATCH_UP_WARN_MS: u64 = 5000;
/// How this node's ReadIndex requests' contexts start; the node id, a
/// value of this start and a counter follow, so that no two requests share a
/// context (raft-rs keys pending reads by it) and an answer meant for an
/// earlier start is not taken.
const CATCH_UP_CONTEXT: &[u8] = b"catch-up";

/// A proposal as it travels through the log: who proposed it, so that node
/// can answer its caller.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    origin: u32,
    seq: u64,
    command: Command,
}

enum Input {
    Messages(Vec<Message>),
    Propose(Vec<u8>, u64),
    Unreachable(u64),
    Stop,
}

type Pending = async_channel::Sender<Result<Applied, BrokerError>>;

fn raft_id(node: u32) -> u64 {
    u64::from(node) + 1
}

fn node_of(raft: u64) -> Option<u32> {
    raft.checked_sub(1).and_then(|n| u32::try_from(n).ok())
}

/// Settings of the cluster, from the node config.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node.
    pub node_id: u32,
    /// Every voter.
    pub voters: Vec<Voter>,
    /// `broker-heartbeat-interval-ms`.
    pub heartbeat_interval_ms: u64,
    /// `broker-session-timeout-ms`.
    pub session_timeout_ms: u64,
    /// `controller-quorum-election-timeout-ms`.
    pub election_timeout_ms: u64,
    /// `replica-lag-time-max-ms`.
    pub replica_lag_time_max_ms: u64,
    /// `num-replica-fetchers`.
    pub num_replica_fetchers: u32,
    /// `auto-leader-rebalance-enable`.
    pub auto_rebalance: bool,
    /// `leader-imbalance-per-broker-percentage`.
    pub imbalance_percentage: u32,
    /// `leader-imbalance-check-interval-seconds`, in ms.
    pub imbalance_check_ms: u64,
    /// Election settings shared by every node.
    pub ctx: ApplyContext,
}

impl ClusterSettings {
    /// The settings in `config` (voters already validated).
    pub fn from_config(config: &NodeConfig) -> Result<ClusterSettings, crate::config::ConfigError> {
        Ok(ClusterSettings {
            node_id: config.node_id,
            voters: config.voters()?,
            heartbeat_interval_ms: config.broker_heartbeat_interval_ms,
            session_timeout_ms: config.broker_session_timeout_ms,
            election_timeout_ms: config.controller_quorum_election_timeout_ms,
            replica_lag_time_max_ms: config.replica_lag_time_max_ms,
            num_replica_fetchers: config.num_replica_fetchers,
            auto_rebalance: config.auto_leader_rebalance_enable,
            imbalance_percentage: config.leader_imbalance_per_broker_percentage,
            imbalance_check_ms: config
                .leader_imbalance_check_interval_seconds
                .saturating_mul(1000),
            ctx: ApplyContext {
                unclean_default: config.unclean_leader_election_enable,
            },
        })
    }
}

/// A node's link to one peer: control requests (Raft, heartbeats) and data
/// (replica fetches) use separate connections, so a long fetch never delays
/// a heartbeat.
#[derive(Debug)]
pub struct Peer {
    /// The peer's id.
    pub id: u32,
    /// Its address.
    pub address: String,
    control: Client,
    /// Connections for replica fetchers (`num-replica-fetchers`).
    pub data: Vec<Client>,
    queue: async_channel::Sender<Message>,
}

/// The cluster side of a node.
pub struct Cluster {
    settings: ClusterSettings,
    state: RwLock<Arc<ClusterState>>,
    changed: Event,
    /// Raft leader's node id + 1, 0 when unknown.
    leader: AtomicU64,
    /// Whether the applied metadata has reached the leader's commit index as
    /// of after this start (see the module docs).
    caught_up: AtomicBool,
    /// Whether this node serves clients: caught up, and unfenced by the
    /// controller since.
    serving: AtomicBool,
    inbox: async_channel::Sender<Input>,
    pending: Mutex<HashMap<u64, Pending>>,
    seq: AtomicU64,
    heartbeats: Mutex<HashMap<u32, Instant>>,
    peers: HashMap<u32, Arc<Peer>>,
    stopping: AtomicBool,
    tasks: Mutex<Vec<Task<()>>>,
    raft_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The node's runtime: peer clients and the cluster's tasks run there.
    pub(crate) rt: RuntimeHandle,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.settings.node_id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The Raft storage could not be opened.
    #[error("metadata quorum storage in {dir}: {error}; check the disk")]
    Storage {
        /// The directory.
        dir: String,
        /// What failed.
        error: std::io::Error,
    },
    /// raft-rs refused the configuration or stored state.
    #[error("metadata quorum: {0}")]
    Raft(String),
    /// A peer address or CA does not work.
    #[error("peer link: {0}")]
    Peer(String),
    /// The stored snapshot does not decode.
    #[error("metadata snapshot: {0}")]
    Snapshot(String),
    /// The config is not valid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

fn peer_client(
    voter: &Voter,
    ca: &std::path::Path,
    cert: &eddy_client::ClientCert,
    timeout_ms: u32,
    rt: &RuntimeHandle,
) -> Result<Client, ClusterError> {
    let host = voter
        .address
        .rsplit_once(':')
        .map_or(voter.address.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let options = ClientOptions {
        server: voter.address.clone(),
        ca_file: ca.to_path_buf(),
        client_cert: Some(cert.clone()),
        server_name: host,
        request_timeout_ms: timeout_ms,
        connect_timeout_ms: PEER_REQUEST_TIMEOUT_MS,
        reconnect_backoff_ms: 50,
        reconnect_backoff_max_ms: 500,
        keep_alive_interval_ms: 250,
        idle_timeout_ms: 2000,
        ..ClientOptions::default()
    };
    // On the node's I/O worker, like the listener's connections: no second
    // thread waiting on the reactor.
    Client::with_runtime(options, Arc::new(rt.clone()))
        .map_err(|e| ClusterError::Peer(format!("node {}: {e}", voter.id)))
}

impl Cluster {
    /// Opens the quorum's storage, starts the Raft thread, the peer senders,
    /// heartbeats, the controller and (through the broker) the replica
    /// manager.
    pub fn start(
        config: &NodeConfig,
        broker: &Arc<Broker>,
        rt: &RuntimeHandle,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let settings = ClusterSettings::from_config(config)?;
        let ca = crate::tls::peer_trust_file(config);
        let cert = crate::tls::node_client_cert(config);
        let raft_voters: Vec<u64> = settings.voters.iter().map(|v| raft_id(v.id)).collect();
        let storage = DiskStorage::open(&config.data_dir, &raft_voters).map_err(|error| {
            ClusterError::Storage {
                dir: config
                    .data_dir
                    .join(raft_log::RAFT_DIR)
                    .display()
                    .to_string(),
                error,
            }
        })?;
        let snapshot = storage.snapshot_now();
        let initial: ClusterState = if snapshot.data.is_empty() {
            ClusterState::default()
        } else {
            postcard::from_bytes(&snapshot.data)
                .map_err(|e| ClusterError::Snapshot(e.to_string()))?
        };
        let applied = snapshot.get_metadata().index;
        let (inbox, inputs) = async_channel::bounded(INBOX_MAX);
        let mut peers = HashMap::new();
        let mut queues = Vec::new();
        for voter in settings.voters.iter().filter(|v| v.id != settings.node_id) {
            let (queue, outgoing) = async_channel::bounded(PEER_QUEUE_MESSAGES_MAX);
            let data = (0..settings.num_replica_fetchers)
                .map(|_| peer_client(voter, &ca, &cert, 10_000, rt))
                .collect::<Result<Vec<_>, _>>()?;
            let peer = Arc::new(Peer {
                id: voter.id,
                address: voter.address.clone(),
                control: peer_client(voter, &ca, &cert, PEER_REQUEST_TIMEOUT_MS, rt)?,
                data,
                queue,
            });
            queues.push((peer.clone(), outgoing));
            peers.insert(voter.id, peer);
        }
        let cluster = Arc::new(Cluster {
            settings: settings.clone(),
            state: RwLock::new(Arc::new(initial)),
            changed: Event::new(),
            leader: AtomicU64::new(0),
            caught_up: AtomicBool::new(false),
            serving: AtomicBool::new(false),
            inbox,
            pending: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(1),
            heartbeats: Mutex::new(HashMap::new()),
            peers,
            stopping: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            raft_thread: Mutex::new(None),
            rt: rt.clone(),
        });

        let mut raft_config = raft::Config {
            id: raft_id(settings.node_id),
            election_tick: (settings.election_timeout_ms / TICK_MS).max(3) as usize,
            heartbeat_tick: HEARTBEAT_TICKS,
            applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..raft::Config::default()
        };
        if raft_config.election_tick <= raft_config.heartbeat_tick {
            raft_config.election_tick = raft_config.heartbeat_tick + 1;
        }
        raft_config
            .validate()
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = RawNode::new(&raft_config, storage.clone(), &logger)
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let weak = Arc::downgrade(&cluster);
        let thread = std::thread::Builder::new()
            .name("eddy-raft".to_owned())
            // Not `smol::block_on`: this thread must not take the async-io
            // reactor from the I/O worker (its ticks only need timers).
            .spawn(move || {
                futures_lite::future::block_on(raft_loop(weak, node, storage, inputs, applied))
            })
            .map_err(|e| ClusterError::Raft(format!("cannot start the Raft thread: {e}")))?;
        *lock(&cluster.raft_thread) = Some(thread);

        let mut tasks = Vec::new();
        for (peer, outgoing) in queues {
            tasks.push(rt.spawn(send_loop(Arc::downgrade(&cluster), peer, outgoing)));
        }
        tasks.push(rt.spawn(heartbeat_loop(Arc::downgrade(&cluster))));
        tasks.push(rt.spawn(controller_loop(Arc::downgrade(&cluster))));
        *lock(&cluster.tasks) = tasks;
        broker.attach_cluster(cluster.clone());
        info!(
            "metadata quorum of {} voter(s) started (node {})",
            settings.voters.len(),
            settings.node_id
        );
        Ok(cluster)
    }

    /// This node's id.
    pub fn node_id(&self) -> u32 {
        self.settings.node_id
    }

    /// The settings.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// The applied metadata state.
    pub fn state(&self) -> Arc<ClusterState> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Notified whenever the applied state changes.
    pub fn changed(&self) -> &Event {
        &self.changed
    }

    /// Whether this node has caught up with the metadata quorum since it
    /// started: until then its metadata may be stale, so it takes no
    /// partition role and sends no heartbeat.
    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Whether this node serves client requests: it has caught up, and the
    /// controller has unfenced it since (so that, like a Kafka broker, it
    /// never answers while the cluster still counts it out, e.g. refusing a
    /// topic for lack of live nodes when it is one of them).
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    /// Why this node does not serve clients yet (for its answers and its
    /// log).
    fn not_serving_reason(&self) -> String {
        if self.is_caught_up() {
            "it has caught up, but the controller has not counted it in yet (do its \
             heartbeats reach the controller?)"
                .to_owned()
        } else {
            match self.controller() {
                Some(id) => {
                    format!(
                        "it is catching up with the cluster's metadata from controller node {id}"
                    )
                }
                None => "it is catching up with the cluster's metadata, and no controller is \
                         reachable yet: is a majority of controller-quorum-voters up?"
                    .to_owned(),
            }
        }
    }

    /// The answer to a client request while this node is not serving.
    pub fn not_serving(&self) -> BrokerError {
        BrokerError::new(
            ErrorCode::BrokerNotAvailable,
            format!(
                "node {} has just started and {}; retry in a moment, or ask another node",
                self.settings.node_id,
                self.not_serving_reason()
            ),
        )
    }

    /// The controller (the Raft leader), if known.
    pub fn controller(&self) -> Option<u32> {
        match self.leader.load(Ordering::Acquire) {
            0 => None,
            n => node_of(n),
        }
    }

    /// The link to a peer.
    pub fn peer(&self, id: u32) -> Option<Arc<Peer>> {
        self.peers.get(&id).cloned()
    }

    /// The address of a node.
    pub fn address_of(&self, id: u32) -> Option<&str> {
        self.settings
            .voters
            .iter()
            .find(|v| v.id == id)
            .map(|v| v.address.as_str())
    }

    /// Takes Raft messages from a peer (the payload of a `Raft` request).
    pub fn receive_raft(&self, payload: &[u8]) -> Result<(), BrokerError> {
        let bad = |what: &str| {
            BrokerError::new(ErrorCode::InvalidRequest, format!("Raft payload: {what}"))
        };
        if payload.len() as u64 > RAFT_PAYLOAD_BYTES_MAX {
            return Err(bad("too large"));
        }
        let mut messages = Vec::new();
        let mut pos = 0usize;
        while pos < payload.len() {
            if messages.len() >= RAFT_MESSAGES_PER_REQUEST_MAX {
                return Err(bad("too many messages"));
            }
            let Some(len) = payload.get(pos..pos + 4) else {
                return Err(bad("truncated length"));
            };
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let Some(body) = payload.get(pos + 4..pos + 4 + len) else {
                return Err(bad("truncated message"));
            };
            let message = Message::parse_from_bytes(body).map_err(|e| bad(&e.to_string()))?;
            messages.push(message);
            pos += 4 + len;
        }
        // A full inbox drops the messages; Raft resends.
        let _ = self.inbox.try_send(Input::Messages(messages));
        Ok(())
    }

    /// Notes a heartbeat from a peer.
    pub fn heartbeat(&self, node_id: u32) {
        if self.settings.voters.iter().any(|v| v.id == node_id) {
            lock(&self.heartbeats).insert(node_id, Instant::now());
        }
    }

    /// Proposes `command` and waits until it is committed and applied here.
    pub async fn propose(&self, command: Command) -> Result<Applied, BrokerError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let envelope = Envelope {
            origin: self.settings.node_id,
            seq,
            command,
        };
        let data = postcard::to_allocvec(&envelope)
            .map_err(|e| BrokerError::new(ErrorCode::UnknownServerError, e.to_string()))?;
        let (reply, answer) = async_channel::bounded(1);
        lock(&self.pending).insert(seq, reply);
        if self.inbox.try_send(Input::Propose(data, seq)).is_err() {
            lock(&self.pending).remove(&seq);
            return Err(not_available("the metadata quorum is busy"));
        }
        let timeout = async {
            smol::Timer::after(Duration::from_millis(PROPOSE_TIMEOUT_MS)).await;
            Err(BrokerError::new(
                ErrorCode::RequestTimedOut,
                format!(
                    "the metadata change was not committed within {PROPOSE_TIMEOUT_MS} ms (is a \
                     majority of controller-quorum-voters up?); check with `eddy cluster status` \
                     and retry"
                ),
            ))
        };
        let result = async {
            answer
                .recv()
                .await
                .unwrap_or_else(|_| Err(not_available("the metadata quorum stopped")))
        }
        .or(timeout)
        .await;
        lock(&self.pending).remove(&seq);
        result
    }

    /// Nodes, liveness as the metadata says, and the controller.
    pub fn status(&self) -> (Option<u32>, Vec<ClusterNodeInfo>) {
        let state = self.state();
        let mut leaders: HashMap<u32, u32> = HashMap::new();
        let mut replicas: HashMap<u32, u32> = HashMap::new();
        for t in state.topics.values() {
            for p in &t.partitions {
                if let Some(l) = p.leader {
                    *leaders.entry(l).or_default() += 1;
                }
                for r in &p.replicas {
                    *replicas.entry(*r).or_default() += 1;
                }
            }
        }
        let nodes = self
            .settings
            .voters
            .iter()
            .map(|v| ClusterNodeInfo {
                id: v.id,
                address: v.address.clone(),
                alive: !state.is_fenced(v.id),
                leaders: leaders.get(&v.id).copied().unwrap_or(0),
                replicas: replicas.get(&v.id).copied().unwrap_or(0),
            })
            .collect();
        (self.controller(), nodes)
    }

    /// Whether node `id` heartbeats (this node: yes), and whether it is
    /// still within its session: heartbeats within `broker-session-timeout-ms`
    /// or, never heard from, a new controller's first session timeout.
    fn liveness(&self, id: u32, now: Instant, controller_since: Instant) -> (bool, bool) {
        if id == self.settings.node_id {
            return (true, true);
        }
        let timeout = Duration::from_millis(self.settings.session_timeout_ms);
        match lock(&self.heartbeats).get(&id) {
            Some(&at) => {
                let beating = now.saturating_duration_since(at) < timeout;
                (beating, beating)
            }
            None => (
                false,
                now.saturating_duration_since(controller_since) < timeout,
            ),
        }
    }

    /// Stops the Raft thread and the tasks.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.inbox.try_send(Input::Stop);
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for t in tasks {
            t.cancel().await;
        }
        let thread = lock(&self.raft_thread).take();
        if let Some(thread) = thread {
            let _ = smol::unblock(move || thread.join()).await;
        }
        for peer in self.peers.values() {
            peer.control.close().await;
            for c in &peer.data {
                c.close().await;
            }
        }
    }

    fn publish(&self, state: ClusterState) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(state);
        self.changed.notify(usize::MAX);
    }

    fn answer(&self, origin: u32, seq: u64, result: Result<Applied, BrokerError>) {
        if origin != self.settings.node_id {
            return;
        }
        if let Some(reply) = lock(&self.pending).remove(&seq) {
            let _ = reply.try_send(result);
        }
    }
}

fn not_clustered(broker: &Broker, what: &str) -> BrokerError {
    if broker.is_clustered() {
        // Listening already, the cluster not attached yet.
        return broker.joining();
    }
    BrokerError::new(
        ErrorCode::InvalidRequest,
        format!("{what}: this node is not part of a cluster (no controller-quorum-voters)"),
    )
}

/// Runs the cluster requests (Raft, heartbeats, replica fetches, epochs,
/// elections, status) on a node.
pub async fn dispatch(
    broker: &Arc<Broker>,
    request: Request,
    payload: Vec<u8>,
) -> Result<(eddy_client::protocol::Response, Vec<u8>), BrokerError> {
    use eddy_client::protocol::Response;
    let cluster = broker.cluster();
    match request {
        Request::Raft { .. } => {
            let c = cluster.ok_or_else(|| not_clustered(broker, "Raft"))?;
            c.receive_raft(&payload)?;
            Ok((Response::Raft, Vec::new()))
        }
        Request::BrokerHeartbeat { node_id } => {
            let c = cluster.ok_or_else(|| not_clustered(broker, "BrokerHeartbeat"))?;
            c.heartbeat(node_id);
            Ok((Response::BrokerHeartbeat, Vec::new()))
        }
        Request::ReplicaFetch {
            topic,
            partition,
            replica_id,
            leader_epoch,
            offset,
            max_bytes,
            max_wait_ms,
        } => {
            cluster.ok_or_else(|| not_clustered(broker, "ReplicaFetch"))?;
            broker
                .replica_fetch(
                    &topic,
                    partition,
                    replica_id,
                    leader_epoch,
                    offset,
                    max_bytes,
                    max_wait_ms,
                )
                .await
        }
        Request::OffsetForLeaderEpoch {
            topic,
            partition,
            current_leader_epoch,
            epoch,
        } => {
            cluster.ok_or_else(|| not_clustered(broker, "OffsetForLeaderEpoch"))?;
            broker
                .offset_for_leader_epoch(&topic, partition, current_leader_epoch, epoch)
                .map(|r| (r, Vec::new()))
        }
        Request::ElectLeaders { topic } => match cluster {
            None => Ok((Response::ElectLeaders { elected: 0 }, Vec::new())),
            Some(c) => match c.propose(Command::ElectPreferred(topic)).await? {
                Applied::Elected(elected) => Ok((Response::ElectLeaders { elected }, Vec::new())),
                Applied::Done => Ok((Response::ElectLeaders { elected: 0 }, Vec::new())),
            },
        },
        Request::ClusterStatus => match cluster {
            None => {
                let (nodes, _) = broker.metadata(Some(Vec::new())).await?;
                let nodes = nodes
                    .into_iter()
                    .map(|n| ClusterNodeInfo {
                        id: n.id,
                        address: n.address,
                        alive: true,
                        leaders: 0,
                        replicas: 0,
                    })
                    .collect::<Vec<_>>();
                let controller = nodes.first().map(|n| n.id);
                Ok((Response::ClusterStatus { controller, nodes }, Vec::new()))
            }
            Some(c) => {
                let (controller, nodes) = c.status();
                Ok((Response::ClusterStatus { controller, nodes }, Vec::new()))
            }
        },
        other => Err(BrokerError::new(
            ErrorCode::InvalidRequest,
            format!("{} is not handled here", other.name()),
        )),
    }
}

fn not_available(why: &str) -> BrokerError {
    BrokerError::new(
        ErrorCode::NotController,
        format!("{why}; no controller is elected yet, retry in a moment"),
    )
}

/// The Raft thread: owns the `RawNode`.
async fn raft_loop(
    cluster: Weak<Cluster>,
    mut node: RawNode<DiskStorage>,
    storage: DiskStorage,
    inputs: async_channel::Receiver<Input>,
    mut applied: u64,
) {
    let tick = Duration::from_millis(TICK_MS);
    let mut next_tick = Instant::now() + tick;
    let mut proposals: HashMap<u64, ()> = HashMap::new();
    let mut catch_up = CatchUp::new(node.raft.id);
    loop {
        let input = async { inputs.recv().await.ok() }
            .or(async {
                smol::Timer::at(next_tick).await;
                None
            })
            .await;
        let Some(c) = cluster.upgrade() else { return };
        match input {
            Some(Input::Stop) => return,
            Some(Input::Messages(messages)) => {
                for m in messages {
                    if let Err(e) = node.step(m) {
                        debug!("raft step: {e}");
                    }
                }
            }
            Some(Input::Propose(data, seq)) => {
                proposals.insert(seq, ());
                if let Err(e) = node.propose(Vec::new(), data) {
                    proposals.remove(&seq);
                    c.answer(
                        c.settings.node_id,
                        seq,
                        Err(not_available(&format!("the proposal was dropped ({e})"))),
                    );
                }
            }
            Some(Input::Unreachable(id)) => node.report_unreachable(id),
            None => {}
        }
        if Instant::now() >= next_tick {
            node.tick();
            next_tick = Instant::now() + tick;
        }
        let leader = node.raft.leader_id;
        c.leader.store(leader, Ordering::Release);
        if !c.is_serving() {
            catch_up.ask(&c, &mut node);
        }
        if !node.has_ready() {
            continue;
        }
        if let Err(e) = handle_ready(&c, &mut node, &storage, &mut applied, &mut catch_up) {
            // The quorum cannot go on without its disk. This node can no
            // longer follow the metadata, so it stops serving clients and
            // heartbeating: the controller fences it and moves its
            // leaderships away; the other voters carry on.
            c.caught_up.store(false, Ordering::Release);
            c.serving.store(false, Ordering::Release);
            error!(
                "metadata quorum stopped: {e}; this node serves no client request and is fenced \
                 until it is restarted with a working disk"
            );
            return;
        }
        proposals.clear();
    }
}

/// A starting node's way to the metadata quorum's present (see the module
/// docs): it asks the Raft leader for its commit index, and has caught up
/// once it has applied that far.
struct CatchUp {
    started: Instant,
    /// [`CATCH_UP_CONTEXT`], the Raft id and a value of this start.
    context: Vec<u8>,
    /// Requests sent.
    sent: u64,
    asked: Option<Instant>,
    warned: Instant,
    /// The largest commit index a leader answered.
    target: Option<u64>,
}

impl CatchUp {
    fn new(raft_id: u64) -> CatchUp {
        let now = Instant::now();
        // Wall-clock nanoseconds and the process id: a value no earlier
        // start of this node had.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut context = CATCH_UP_CONTEXT.to_vec();
        context.extend_from_slice(&raft_id.to_be_bytes());
        context.extend_from_slice(&nanos.to_be_bytes());
        context.extend_from_slice(&std::process::id().to_be_bytes());
        CatchUp {
            started: now,
            context,
            sent: 0,
            asked: None,
            warned: now,
            target: None,
        }
    }

    /// While the node does not serve yet: says so every
    /// [`CATCH_UP_WARN_MS`], and asks the leader, if one is known, at most
    /// every [`CATCH_UP_ASK_MS`] until it has answered.
    fn ask(&mut self, c: &Cluster, node: &mut RawNode<DiskStorage>) {
        let now = Instant::now();
        if now.saturating_duration_since(self.warned) >= Duration::from_millis(CATCH_UP_WARN_MS) {
            self.warned = now;
            warn!(
                "{} ms after start this node still serves no client request: {}",
                self.started.elapsed().as_millis(),
                c.not_serving_reason()
            );
        }
        if self.target.is_some() || node.raft.leader_id == raft::INVALID_ID {
            return;
        }
        if self.asked.is_some_and(|at| {
            now.saturating_duration_since(at) < Duration::from_millis(CATCH_UP_ASK_MS)
        }) {
            return;
        }
        self.asked = Some(now);
        self.sent += 1;
        let mut context = self.context.clone();
        context.extend_from_slice(&self.sent.to_be_bytes());
        node.read_index(context);
    }

    /// Takes the leader's answers from `ready`.
    fn answers(&mut self, ready: &mut raft::Ready) {
        for state in ready.take_read_states() {
            if state.request_ctx.starts_with(&self.context) {
                self.target = Some(self.target.map_or(state.index, |t| t.max(state.index)));
            }
        }
    }

    /// Marks the node caught up once it has applied up to the answer, and
    /// serving once the applied metadata also has it unfenced.
    fn check(&self, c: &Cluster, applied: u64) {
        if c.is_serving() {
            return;
        }
        if !c.is_caught_up() {
            if self.target.is_none_or(|t| applied < t) {
                return;
            }
            c.caught_up.store(true, Ordering::Release);
            info!(
                "caught up with the metadata quorum (index {applied}) {} ms after start",
                self.started.elapsed().as_millis()
            );
            c.changed.notify(usize::MAX);
        }
        if !c.state().is_fenced(c.settings.node_id) {
            c.serving.store(true, Ordering::Release);
            info!(
                "unfenced {} ms after start; serving clients",
                self.started.elapsed().as_millis()
            );
        }
    }
}

fn handle_ready(
    c: &Cluster,
    node: &mut RawNode<DiskStorage>,
    storage: &DiskStorage,
    applied: &mut u64,
    catch_up: &mut CatchUp,
) -> std::io::Result<()> {
    let mut ready = node.ready();
    catch_up.answers(&mut ready);
    send_messages(c, ready.take_messages());
    if !ready.snapshot().is_empty() {
        let snapshot = ready.snapshot().clone();
        storage.apply_snapshot(&snapshot)?;
        match postcard::from_bytes::<ClusterState>(&snapshot.data) {
            Ok(state) => c.publish(state),
            Err(e) => warn!("metadata snapshot from the leader does not decode: {e}"),
        }
        *applied = snapshot.get_metadata().index;
    }
    apply_entries(c, ready.take_committed_entries(), applied);
    if !ready.entries().is_empty() {
        storage.append(ready.entries())?;
    }
    if let Some(hs) = ready.hs() {
        storage.set_hard_state(hs)?;
    }
    send_messages(c, ready.take_persisted_messages());
    let mut light = node.advance(ready);
    if let Some(commit) = light.commit_index() {
        storage.set_commit(commit)?;
    }
    send_messages(c, light.take_messages());
    apply_entries(c, light.take_committed_entries(), applied);
    node.advance_apply();
    catch_up.check(c, *applied);
    if storage.entry_count() > SNAPSHOT_ENTRIES {
        let state = c.state();
        match postcard::to_allocvec(&*state) {
            Ok(data) => storage.compact(*applied, data)?,
            Err(e) => warn!("cannot encode a metadata snapshot: {e}"),
        }
    }
    Ok(())
}

fn apply_entries(c: &Cluster, entries: Vec<Entry>, applied: &mut u64) {
    if entries.is_empty() {
        return;
    }
    let mut state = (*c.state()).clone();
    let mut answers = Vec::new();
    for entry in entries {
        *applied = entry.index;
        if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
            continue;
        }
        match postcard::from_bytes::<Envelope>(&entry.data) {
            Ok(envelope) => {
                let result = state
                    .apply(&envelope.command, c.settings.ctx)
                    .map_err(|r| BrokerError::new(r.code, r.message));
                if let Err(e) = &result {
                    debug!("metadata command {:?} rejected: {e}", envelope.command);
                }
                answers.push((envelope.origin, envelope.seq, result));
            }
            Err(e) => warn!(
                "metadata entry {} does not decode: {e}; skipped",
                entry.index
            ),
        }
    }
    c.publish(state);
    for (origin, seq, result) in answers {
        c.answer(origin, seq, result);
    }
}

fn send_messages(c: &Cluster, messages: Vec<Message>) {
    for m in messages {
        let Some(to) = node_of(m.to) else { continue };
        if let Some(peer) = c.peers.get(&to) {
            // A full queue drops the message; Raft resends.
            let _ = peer.queue.try_send(m);
        }
    }
}

/// Sends one peer's messages in order, one request at a time.
async fn send_loop(
    cluster: Weak<Cluster>,
    peer: Arc<Peer>,
    outgoing: async_channel::Receiver<Message>,
) {
    let mut failing = FailureRun::default();
    while let Ok(first) = outgoing.recv().await {
        let Some(c) = cluster.upgrade() else { return };
        let mut batch = vec![first];
        while batch.len() < PEER_BATCH_MESSAGES_MAX {
            match outgoing.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut payload = Vec::new();
        for m in &batch {
            match m.write_to_bytes() {
                Ok(bytes) => {
                    payload.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                    payload.extend_from_slice(&bytes);
                }
                Err(e) => warn!("cannot encode a Raft message: {e}"),
            }
        }
        let header = RequestHeader {
            version: PROTOCOL_VERSION,
            request: Request::Raft {
                from: c.settings.node_id,
            },
        };
        drop(c);
        match peer.control.request(header, &payload).await {
            Ok(_) => failing.ok(),
            Err(e) => {
                failing.failed(|| format!("Raft messages to node {} failed: {e}", peer.id));
                if let Some(c) = cluster.upgrade() {
                    let _ = c.inbox.try_send(Input::Unreachable(raft_id(peer.id)));
                }
                smol::Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Tells every peer this node is alive, once it has caught up with the
/// metadata quorum (like a Kafka broker that asks to be unfenced only then):
/// before, the controller keeps it fenced, so elections do not make it
/// leader while it still serves nobody.
async fn heartbeat_loop(cluster: Weak<Cluster>) {
    let Some(c) = cluster.upgrade() else { return };
    let period = Duration::from_millis(c.settings.heartbeat_interval_ms);
    let peers: Vec<Arc<Peer>> = c.peers.values().cloned().collect();
    let me = c.settings.node_id;
    let rt = c.rt.clone();
    drop(c);
    let beats: Vec<_> = peers
        .into_iter()
        .map(|peer| {
            let cluster = cluster.clone();
            rt.spawn(async move {
                let mut failing = FailureRun::default();
                loop {
                    if !cluster.upgrade().is_some_and(|c| c.is_caught_up()) {
                        smol::Timer::after(period).await;
                        continue;
                    }
                    let header = RequestHeader {
                        version: PROTOCOL_VERSION,
                        request: Request::BrokerHeartbeat { node_id: me },
                    };
                    let started = Instant::now();
                    match peer.control.request(header, &[]).await {
                        Ok(_) => failing.ok(),
                        Err(e) => {
                            failing.failed(|| format!("heartbeat to node {} failed: {e}", peer.id))
                        }
                    }
                    let left = period.saturating_sub(started.elapsed());
                    smol::Timer::after(left.max(Duration::from_millis(10))).await;
                }
            })
        })
        .collect();
    // Keeps the per-peer loops alive until this task is cancelled.
    futures_lite::future::pending::<()>().await;
    drop(beats);
}

/// On the Raft leader: fences silent nodes, unfences returning ones, and
/// rebalances leaders.
async fn controller_loop(cluster: Weak<Cluster>) {
    let mut controller_since: Option<Instant> = None;
    let mut last_proposed: HashMap<u32, Instant> = HashMap::new();
    let mut last_rebalance = Instant::now();
    loop {
        smol::Timer::after(Duration::from_millis(CONTROLLER_PERIOD_MS)).await;
        let Some(c) = cluster.upgrade() else { return };
        if c.stopping.load(Ordering::Acquire) {
            return;
        }
        let me = c.settings.node_id;
        // A controller just started acts once its metadata is current.
        if c.controller() != Some(me) || !c.is_caught_up() {
            controller_since = None;
            continue;
        }
        let now = Instant::now();
        let since = *controller_since.get_or_insert_with(|| {
            info!("node {me} is the controller");
            now
        });
        let state = c.state();
        let mut commands = Vec::new();
        for v in &c.settings.voters {
            if last_proposed.get(&v.id).is_some_and(|t| {
                now.saturating_duration_since(*t) < Duration::from_millis(REPROPOSE_MS)
            }) {
                continue;
            }
            // Unfenced only on its heartbeats (a node sends them once it has
            // caught up); fenced when silent past its session.
            let (beating, in_session) = c.liveness(v.id, now, since);
            let fenced = state.is_fenced(v.id);
            if beating && fenced {
                info!("node {} is alive: unfencing it", v.id);
                commands.push((v.id, Command::UnfenceBroker(v.id)));
            } else if !in_session && !fenced {
                warn!(
                    "node {} missed its heartbeats for {} ms: fencing it",
                    v.id, c.settings.session_timeout_ms
                );
                commands.push((v.id, Command::FenceBroker(v.id)));
            }
        }
        if c.settings.auto_rebalance
            && now.saturating_duration_since(last_rebalance)
                >= Duration::from_millis(c.settings.imbalance_check_ms)
        {
            last_rebalance = now;
            let over = state
                .imbalance()
                .into_iter()
                .any(|(node, (preferred, off))| {
                    preferred > 0
                        && !state.is_fenced(node)
                        && u64::from(off) * 100
                            > u64::from(preferred) * u64::from(c.settings.imbalance_percentage)
                });
            if over {
                info!(
                    "leader imbalance over {}%: electing preferred leaders",
                    c.settings.imbalance_percentage
                );
                commands.push((u32::MAX, Command::ElectPreferred(None)));
            }
        }
        for (id, command) in commands {
            last_proposed.insert(id, now);
            let c = c.clone();
            c.rt.clone()
                .spawn(async move {
                    if let Err(e) = c.propose(command).await {
                        debug!("controller proposal failed: {e}");
                    }
                })
                .detach();
        }
        let _ = StateRole::Leader;
    }
}
