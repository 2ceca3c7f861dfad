//! The native wire protocol, `eddy/1` over QUIC. Sans-IO: types and framing only.
//!
//! One bidirectional QUIC stream per request. Each direction carries one frame and
//! then finishes its side of the stream:
//!
//! ```text
//! u32 (big-endian) header length | postcard header | raw payload (to end of stream)
//! ```
//!
//! The payload of a Produce request and of a Fetch response is record-batch bytes
//! (Kafka RecordBatch v2, one or more batches), never postcard: the node writes the
//! bytes it received and serves the bytes it stored. Every other message has an
//! empty payload. Every length read from the network is checked against a limit
//! before anything is allocated.
//!
//! Errors are a [`ResponseHeader::Error`] with a stable numeric [`ErrorCode`]
//! (Kafka's numbers where Kafka has the error) and a human message, never a dropped
//! stream.

use serde::{Deserialize, Serialize};

/// ALPN protocol id of this protocol.
pub const ALPN: &[u8] = b"eddy/1";
/// Version of the message set below. A node answers an unknown version with
/// [`ErrorCode::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest postcard header of a request a node accepts (a cooperative
/// re-join or an offset commit naming a thousand partitions fits).
pub const REQUEST_HEADER_BYTES_MAX: u32 = 256 * 1024;
/// Largest postcard header of a response a client accepts (a group's
/// assignments, the metadata of many partitions).
pub const RESPONSE_HEADER_BYTES_MAX: u32 = 4 * 1024 * 1024;
/// Up to this size a node reads a request header without counting it
/// against its request memory budget (the limit of protocol version 1's
/// first nodes, which every header then fitted).
pub const SMALL_HEADER_BYTES_MAX: u32 = 64 * 1024;
/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;
/// Default UDP port of a node.
pub const DEFAULT_PORT: u16 = 7878;
/// Largest WebAssembly component a PluginAdd request may carry.
pub const PLUGIN_WASM_BYTES_MAX: u32 = 32 * 1024 * 1024;
/// The leader id a partition without a leader reports in
/// [`TopicMetadata::partitions`] and [`PartitionInfo::leader`].
pub const NO_LEADER: u32 = u32::MAX;
/// Largest payload of a [`Request::Raft`] (the metadata quorum's messages).
pub const RAFT_PAYLOAD_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// A request: the first frame on a new stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestHeader {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// What is asked.
    pub request: Request,
}

/// Where ListOffsets should look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The high watermark (the next offset a consumer will see).
    Latest,
    /// The first offset whose record timestamp is at or after this (ms).
    Timestamp(i64),
}

/// `acks`: when the node answers a produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Acks {
    /// 0: the node sends no response; the client does not wait.
    None,
    /// 1: after the leader appended (and synced, with `fsync = always`).
    Leader,
    /// all: after every in-sync replica has it (the leader alone until replication).
    All,
}

/// A topic config change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigChange {
    /// Set `key` to `value`.
    Set(String, String),
    /// Return `key` to the node's default.
    Delete(String),
}

/// Every request type. Variants are only ever added, at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Append the payload (record batches) to a partition.
    Produce {
        /// Topic.
        topic: String,
        /// Partition, or `None` to let the node's partitioner choose.
        partition: Option<u32>,
        /// When to answer.
        acks: Acks,
        /// How long the node may take before answering `RequestTimedOut` (acks=all).
        timeout_ms: u32,
    },
    /// Read batches from a partition, long-polling until `min_bytes` or `max_wait_ms`.
    Fetch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// First offset wanted.
        offset: u64,
        /// Most payload bytes (at least one whole batch is sent if any exists).
        max_bytes: u32,
        /// Answer early once this many bytes are available.
        min_bytes: u32,
        /// Longest wait for `min_bytes`.
        max_wait_ms: u32,
    },
    /// Look up an offset.
    ListOffsets {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Which offset.
        spec: OffsetSpec,
    },
    /// Topics, their partition counts and the nodes leading them.
    Metadata {
        /// Only these topics, or all.
        topics: Option<Vec<String>>,
    },
    /// Create a topic.
    CreateTopic {
        /// Name.
        name: String,
        /// Partitions.
        partitions: u32,
        /// Copies of each partition.
        replication_factor: u16,
        /// Kafka-named configs.
        configs: Vec<(String, String)>,
    },
    /// Delete a topic and its data.
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// A topic's configs and per-partition state.
    DescribeTopic {
        /// Name.
        name: String,
    },
    /// Change topic configs.
    AlterConfigs {
        /// Topic.
        name: String,
        /// Changes, applied in order.
        changes: Vec<ConfigChange>,
    },
    /// Grow a topic to `total` partitions.
    CreatePartitions {
        /// Topic.
        name: String,
        /// New partition count (larger than the current one).
        total: u32,
    },
    /// Join (or re-join) a consumer group. Long-polls until the group's
    /// rebalance completes (at most `rebalance_timeout_ms`) and answers with the
    /// member's assignment; the node computes assignments (see
    /// `docs/ARCHITECTURE.md`).
    JoinGroup {
        /// Group id.
        group: String,
        /// The id the node gave this member, or empty to join as a new member.
        member_id: String,
        /// `client.id`, for `eddy group describe`.
        client_id: String,
        /// Topics subscribed to.
        topics: Vec<String>,
        /// `partition.assignment.strategy` names, in order of preference.
        strategies: Vec<String>,
        /// `session.timeout.ms`.
        session_timeout_ms: u32,
        /// `rebalance.timeout.ms` (Kafka's `max.poll.interval.ms`).
        rebalance_timeout_ms: u32,
        /// Partitions this member owns now (cooperative rebalancing).
        owned: Vec<(String, u32)>,
    },
    /// Tells the coordinator a member is alive. Long-polls up to `wait_ms`,
    /// answering early with `RebalanceInProgress` when a rebalance starts.
    Heartbeat {
        /// Group id.
        group: String,
        /// Member id.
        member_id: String,
        /// The member's generation.
        generation: i32,
        /// Longest the node may hold the answer (below `session.timeout.ms`).
        wait_ms: u32,
    },
    /// Leaves a group at once (no wait for `session.timeout.ms`).
    LeaveGroup {
        /// Group id.
        group: String,
        /// Member id.
        member_id: String,
    },
    /// Commits offsets of a group, durably. `generation = -1` and an empty
    /// `member_id` commit for a group without members (manual `assign`).
    OffsetCommit {
        /// Group id.
        group: String,
        /// Member id, or empty.
        member_id: String,
        /// The member's generation, or -1.
        generation: i32,
        /// The offsets.
        offsets: Vec<CommitOffset>,
    },
    /// Reads a group's committed offsets.
    OffsetFetch {
        /// Group id.
        group: String,
        /// Only these partitions, or every partition the group committed.
        partitions: Option<Vec<(String, u32)>>,
    },
    /// Every group the node knows (with members or committed offsets).
    ListGroups,
    /// A group's state, members, assignments and committed offsets.
    DescribeGroup {
        /// Group id.
        group: String,
    },
    /// Deletes a group without members and its committed offsets.
    DeleteGroup {
        /// Group id.
        group: String,
    },
    /// Messages of the metadata quorum (Raft) from a peer node. The payload
    /// holds them as `u32` length + protobuf, repeated, in order.
    Raft {
        /// The sending node.
        from: u32,
    },
    /// A node tells a peer it is alive (sent to every peer, so that a new
    /// controller knows who is alive at once).
    BrokerHeartbeat {
        /// The sending node.
        node_id: u32,
    },
    /// A follower fetches a partition from its leader (Kafka's Fetch with a
    /// replica id): reads past the high watermark, up to the log end.
    ReplicaFetch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The follower's node id.
        replica_id: u32,
        /// The leader epoch the follower follows.
        leader_epoch: i32,
        /// The follower's log end offset: it has everything below.
        offset: u64,
        /// Most payload bytes (at least one whole batch).
        max_bytes: u32,
        /// Longest wait when there is nothing new.
        max_wait_ms: u32,
    },
    /// KIP-101: where `epoch` ended in the leader's log.
    OffsetForLeaderEpoch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The leader epoch the asking follower follows.
        current_leader_epoch: i32,
        /// The epoch asked about (the follower's latest).
        epoch: i32,
    },
    /// Preferred leader election, for one topic or all.
    ElectLeaders {
        /// Only this topic.
        topic: Option<String>,
    },
    /// Nodes, their liveness and the controller.
    ClusterStatus,
    /// Install a WebAssembly plugin, or replace the one of that name; the
    /// payload is the component (at most [`PLUGIN_WASM_BYTES_MAX`] bytes).
    PluginAdd {
        /// Plugin name (what topic configs refer to).
        name: String,
        /// The plugin's own `key=value` config.
        config: Vec<(String, String)>,
    },
    /// Every installed plugin with its status and call statistics.
    PluginList,
    /// Uninstall a plugin no topic uses.
    PluginRemove {
        /// Plugin name.
        name: String,
    },
    /// Enable a plugin that was disabled after repeated failures (it is
    /// reloaded from its stored component, with fresh statistics).
    PluginEnable {
        /// Plugin name.
        name: String,
    },
    /// Which node coordinates a consumer group (Kafka's FindCoordinator): in
    /// a cluster, the leader of the group's partition of
    /// `__consumer_offsets`; a single node coordinates every group itself.
    FindCoordinator {
        /// Group id.
        group: String,
    },
}

/// One offset in an [`Request::OffsetCommit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The next offset to read.
    pub offset: u64,
    /// Free text stored with the offset.
    pub metadata: String,
}

/// A committed offset in a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The next offset to read.
    pub offset: u64,
    /// Free text stored with the offset.
    pub metadata: String,
    /// When it was committed (ms since the epoch, node clock).
    pub commit_timestamp: i64,
}

/// A group in [`Response::ListGroups`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupListing {
    /// Group id.
    pub group: String,
    /// State name (`Empty`, `PreparingRebalance`, `CompletingRebalance`, `Stable`).
    pub state: String,
    /// Members.
    pub members: u32,
    /// The assignment strategy in use (empty without members).
    pub strategy: String,
}

/// A member in [`Response::DescribeGroup`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// `client.id`.
    pub client_id: String,
    /// Topics subscribed to.
    pub topics: Vec<String>,
    /// Partitions assigned in the current generation.
    pub assignment: Vec<(String, u32)>,
}

impl Request {
    /// Whether only the nodes of a cluster may send it (Raft messages, broker
    /// heartbeats, replica fetches, leader-epoch lookups): a node refuses it
    /// with [`ErrorCode::ClusterAuthorizationFailed`] from a connection that
    /// did not present a node certificate.
    pub fn is_node_only(&self) -> bool {
        matches!(
            self,
            Request::Raft { .. }
                | Request::BrokerHeartbeat { .. }
                | Request::ReplicaFetch { .. }
                | Request::OffsetForLeaderEpoch { .. }
        )
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Produce { .. } => "Produce",
            Request::Fetch { .. } => "Fetch",
            Request::ListOffsets { .. } => "ListOffsets",
            Request::Metadata { .. } => "Metadata",
            Request::CreateTopic { .. } => "CreateTopic",
            Request::DeleteTopic { .. } => "DeleteTopic",
            Request::DescribeTopic { .. } => "DescribeTopic",
            Request::AlterConfigs { .. } => "AlterConfigs",
            Request::CreatePartitions { .. } => "CreatePartitions",
            Request::JoinGroup { .. } => "JoinGroup",
            Request::Heartbeat { .. } => "Heartbeat",
            Request::LeaveGroup { .. } => "LeaveGroup",
            Request::OffsetCommit { .. } => "OffsetCommit",
            Request::OffsetFetch { .. } => "OffsetFetch",
            Request::ListGroups => "ListGroups",
            Request::DescribeGroup { .. } => "DescribeGroup",
            Request::DeleteGroup { .. } => "DeleteGroup",
            Request::Raft { .. } => "Raft",
            Request::BrokerHeartbeat { .. } => "BrokerHeartbeat",
            Request::ReplicaFetch { .. } => "ReplicaFetch",
            Request::OffsetForLeaderEpoch { .. } => "OffsetForLeaderEpoch",
            Request::ElectLeaders { .. } => "ElectLeaders",
            Request::ClusterStatus => "ClusterStatus",
            Request::PluginAdd { .. } => "PluginAdd",
            Request::PluginList => "PluginList",
            Request::PluginRemove { .. } => "PluginRemove",
            Request::PluginEnable { .. } => "PluginEnable",
            Request::FindCoordinator { .. } => "FindCoordinator",
        }
    }
}

/// Per-partition state in [`Response::DescribeTopic`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// Partition number.
    pub partition: u32,
    /// Node id of the leader.
    pub leader: u32,
    /// Node ids holding a copy.
    pub replicas: Vec<u32>,
    /// Node ids in sync.
    pub isr: Vec<u32>,
    /// First offset.
    pub log_start_offset: u64,
    /// Offsets below this are committed.
    pub high_watermark: u64,
    /// Offset the next record gets.
    pub log_end_offset: u64,
    /// Bytes on disk.
    pub size_bytes: u64,
}

/// A topic in [`Response::Metadata`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMetadata {
    /// Name.
    pub name: String,
    /// Partitions, each with its leader node id.
    pub partitions: Vec<(u32, u32)>,
}

/// A node in [`Response::Metadata`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `node.id`.
    pub id: u32,
    /// `host:port` clients reach it at.
    pub address: String,
}

/// One plugin in [`Response::PluginList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Name.
    pub name: String,
    /// `partitioner`, `interceptor` or `retention`.
    pub kind: String,
    /// `enabled`, or `disabled: <why>` / `failed: <why>`.
    pub status: String,
    /// SHA-256 of the component, hex.
    pub sha256: String,
    /// Size of the component in bytes.
    pub wasm_bytes: u64,
    /// The plugin's own config.
    pub config: Vec<(String, String)>,
    /// Topics whose configs name it.
    pub topics: Vec<String>,
    /// Calls since it was (re)loaded.
    pub calls: u64,
    /// Failed calls since it was (re)loaded.
    pub failures: u64,
    /// Failed calls in a row, now.
    pub failures_in_a_row: u32,
    /// Mean time per call, ns (0 without calls).
    pub mean_ns: u64,
    /// 99th percentile time per call, ns (0 without calls).
    pub p99_ns: u64,
    /// Records passed to it since it was (re)loaded.
    pub records: u64,
}

/// A successful answer. The variant matches the request's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Produce appended.
    Produce {
        /// The partition written (the node's choice if the request left it open).
        partition: u32,
        /// Offset of the first record.
        base_offset: u64,
        /// The broker's time for `LogAppendTime` topics, else -1.
        log_append_time: i64,
        /// The partition's log start offset.
        log_start_offset: u64,
    },
    /// Fetch result; the payload holds the batches (possibly none).
    Fetch {
        /// The partition's high watermark.
        high_watermark: u64,
        /// The partition's log start offset.
        log_start_offset: u64,
        /// Offset after the last batch in the payload (the next offset to ask for),
        /// or the requested offset if the payload is empty.
        next_offset: u64,
    },
    /// The offset found (`None` when no record is at or after a timestamp).
    ListOffsets {
        /// The offset.
        offset: Option<u64>,
        /// Its record's timestamp, for timestamp lookups; -1 otherwise.
        timestamp: i64,
    },
    /// Cluster metadata.
    Metadata {
        /// Nodes.
        nodes: Vec<NodeInfo>,
        /// Topics.
        topics: Vec<TopicMetadata>,
    },
    /// Topic created.
    CreateTopic,
    /// Topic deleted.
    DeleteTopic,
    /// Topic state.
    DescribeTopic {
        /// Name.
        name: String,
        /// Configs set on the topic (not defaults).
        configs: Vec<(String, String)>,
        /// Every config in force, defaults included.
        effective_configs: Vec<(String, String)>,
        /// Partitions.
        partitions: Vec<PartitionInfo>,
    },
    /// Configs changed.
    AlterConfigs,
    /// Partitions added.
    CreatePartitions,
    /// The member's place in the new generation.
    JoinGroup {
        /// Generation of the group.
        generation: i32,
        /// This member's id (keep it for every later group request).
        member_id: String,
        /// The strategy the group uses.
        strategy: String,
        /// Partitions assigned to this member.
        assignment: Vec<(String, u32)>,
    },
    /// The member is in the current generation.
    Heartbeat,
    /// The member left.
    LeaveGroup,
    /// Every offset was committed and synced.
    OffsetCommit,
    /// Committed offsets (partitions without one are left out).
    OffsetFetch {
        /// The offsets.
        offsets: Vec<CommittedOffset>,
    },
    /// Groups.
    ListGroups {
        /// Groups, by id.
        groups: Vec<GroupListing>,
    },
    /// A group.
    DescribeGroup {
        /// Group id.
        group: String,
        /// State name.
        state: String,
        /// Current generation (0 before the first rebalance).
        generation: i32,
        /// Assignment strategy in use.
        strategy: String,
        /// Members.
        members: Vec<MemberDescription>,
        /// Committed offsets.
        offsets: Vec<CommittedOffset>,
    },
    /// The group and its offsets are gone.
    DeleteGroup,
    /// Raft messages taken.
    Raft,
    /// Heartbeat noted.
    BrokerHeartbeat,
    /// Replica fetch result; the payload holds the batches (possibly none).
    ReplicaFetch {
        /// The leader's high watermark.
        high_watermark: u64,
        /// The leader's log start offset.
        log_start_offset: u64,
        /// The leader's log end offset.
        log_end_offset: u64,
    },
    /// Where the epoch ended: the largest epoch at or below the one asked
    /// about and its end offset; `None` when the leader knows no such epoch.
    OffsetForLeaderEpoch {
        /// Epoch and end offset.
        found: Option<(i32, u64)>,
        /// The leader's log start offset.
        log_start_offset: u64,
    },
    /// Leaders moved to their preferred replicas.
    ElectLeaders {
        /// Partitions whose leader changed.
        elected: u32,
    },
    /// Cluster state.
    ClusterStatus {
        /// The controller (the metadata quorum's leader), if one is known.
        controller: Option<u32>,
        /// Every node.
        nodes: Vec<ClusterNodeInfo>,
    },
    /// Plugin installed.
    PluginAdd {
        /// The world it implements: `partitioner`, `interceptor` or `retention`.
        kind: String,
        /// Whether it replaced an installed plugin of the same name.
        replaced: bool,
        /// SHA-256 of the component, hex.
        sha256: String,
    },
    /// Installed plugins.
    PluginList {
        /// By name.
        plugins: Vec<PluginInfo>,
    },
    /// Plugin removed.
    PluginRemove,
    /// Plugin enabled.
    PluginEnable {
        /// Why it had been disabled; `None` if it was enabled already.
        was_disabled: Option<String>,
    },
    /// The group's coordinator.
    FindCoordinator {
        /// Its node id.
        node_id: u32,
        /// Its address, or `None` when the answering node is the coordinator.
        address: Option<String>,
    },
}

/// A node in [`Response::ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNodeInfo {
    /// `node.id`.
    pub id: u32,
    /// `host:port`.
    pub address: String,
    /// Whether the controller counts it alive (heartbeating, not fenced).
    pub alive: bool,
    /// Partitions it leads.
    pub leaders: u32,
    /// Partition replicas it holds.
    pub replicas: u32,
}

/// Stable error codes. Numbers are Kafka's where Kafka has the error; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// -1: a bug or an unexpected failure on the node.
    UnknownServerError,
    /// 1: the offset is outside the partition's log.
    OffsetOutOfRange,
    /// 2: a batch failed its CRC or does not parse.
    CorruptMessage,
    /// 3: no such topic or partition.
    UnknownTopicOrPartition,
    /// 6: this node does not lead the partition.
    NotLeaderOrFollower,
    /// 7: the request took longer than allowed.
    RequestTimedOut,
    /// 10: a batch is over `max.message.bytes`.
    MessageTooLarge,
    /// 17: the topic name is not allowed.
    InvalidTopic,
    /// 19: fewer in-sync replicas than `min.insync.replicas`.
    NotEnoughReplicas,
    /// 35: the request's protocol version is not supported.
    UnsupportedVersion,
    /// 36: the topic exists.
    TopicAlreadyExists,
    /// 37: the partition count is not valid.
    InvalidPartitions,
    /// 38: the replication factor is not valid.
    InvalidReplicationFactor,
    /// 40: a topic config key or value is not valid.
    InvalidConfig,
    /// 42: the request is malformed or over a limit.
    InvalidRequest,
    /// 56: the disk failed or is full (retry later), or the partition is stopped.
    KafkaStorageError,
    /// 1000: the node is shutting down.
    ShuttingDown,
    /// 89: the node's memory budget for payloads stayed full; retry later.
    ThrottlingQuotaExceeded,
    /// 22: the member's generation is not the group's current one (fenced).
    IllegalGeneration,
    /// 23: the member's assignment strategies share none with the group's.
    InconsistentGroupProtocol,
    /// 24: the group id is empty or not allowed.
    InvalidGroupId,
    /// 25: the coordinator does not know this member (expired, left, or fenced).
    UnknownMemberId,
    /// 26: `session.timeout.ms` is outside what the node allows.
    InvalidSessionTimeout,
    /// 27: the group is rebalancing: re-join.
    RebalanceInProgress,
    /// 68: the group still has members.
    NonEmptyGroup,
    /// 69: no such group.
    GroupIdNotFound,
    /// 12: the offset's metadata text is over the node's limit.
    OffsetMetadataTooLarge,
    /// 5: the partition has no leader right now (election in progress, or
    /// the whole ISR is down).
    LeaderNotAvailable,
    /// 20: the batch was appended, but the ISR shrank below
    /// `min.insync.replicas` before it was replicated.
    NotEnoughReplicasAfterAppend,
    /// 41: this node is not the controller.
    NotController,
    /// 74: the request's leader epoch is older than the partition's.
    FencedLeaderEpoch,
    /// 75: the request's leader epoch is newer than this node knows.
    UnknownLeaderEpoch,
    /// 87: an interceptor plugin rejected a record; the message has its reason.
    InvalidRecord,
    /// 1050: a plugin call failed (trap, timeout, memory, or an error it
    /// returned); retriable: after repeated failures the plugin is disabled
    /// and the topic falls back to its built-in behaviour.
    PluginFailed,
    /// 1051: no plugin of that name is installed, or it cannot be used.
    PluginNotFound,
    /// 31: a request only the nodes of a cluster may send (Raft, broker
    /// heartbeats, replica fetches, leader-epoch lookups) came over a
    /// connection without a node certificate of the cluster's CA.
    ClusterAuthorizationFailed,
    /// 15: the group's coordinator is not available yet (its
    /// `__consumer_offsets` partition is being created, has no leader, or is
    /// being loaded); retry.
    CoordinatorNotAvailable,
    /// 16: this node does not coordinate the group; find its coordinator
    /// again.
    NotCoordinator,
    /// 8: this node of a cluster has just started and has not yet caught up
    /// with the metadata quorum, so it serves no client request; retry, or
    /// ask another node.
    BrokerNotAvailable,
}

impl ErrorCode {
    /// The stable number.
    pub fn code(self) -> i16 {
        match self {
            ErrorCode::UnknownServerError => -1,
            ErrorCode::OffsetOutOfRange => 1,
            ErrorCode::CorruptMessage => 2,
            ErrorCode::UnknownTopicOrPartition => 3,
            ErrorCode::NotLeaderOrFollower => 6,
            ErrorCode::RequestTimedOut => 7,
            ErrorCode::MessageTooLarge => 10,
            ErrorCode::InvalidTopic => 17,
            ErrorCode::NotEnoughReplicas => 19,
            ErrorCode::UnsupportedVersion => 35,
            ErrorCode::TopicAlreadyExists => 36,
            ErrorCode::InvalidPartitions => 37,
            ErrorCode::InvalidReplicationFactor => 38,
            ErrorCode::InvalidConfig => 40,
            ErrorCode::InvalidRequest => 42,
            ErrorCode::KafkaStorageError => 56,
            ErrorCode::ShuttingDown => 1000,
            ErrorCode::ThrottlingQuotaExceeded => 89,
            ErrorCode::IllegalGeneration => 22,
            ErrorCode::InconsistentGroupProtocol => 23,
            ErrorCode::InvalidGroupId => 24,
            ErrorCode::UnknownMemberId => 25,
            ErrorCode::InvalidSessionTimeout => 26,
            ErrorCode::RebalanceInProgress => 27,
            ErrorCode::NonEmptyGroup => 68,
            ErrorCode::GroupIdNotFound => 69,
            ErrorCode::OffsetMetadataTooLarge => 12,
            ErrorCode::LeaderNotAvailable => 5,
            ErrorCode::NotEnoughReplicasAfterAppend => 20,
            ErrorCode::NotController => 41,
            ErrorCode::FencedLeaderEpoch => 74,
            ErrorCode::UnknownLeaderEpoch => 75,
            ErrorCode::InvalidRecord => 87,
            ErrorCode::PluginFailed => 1050,
            ErrorCode::PluginNotFound => 1051,
            ErrorCode::ClusterAuthorizationFailed => 31,
            ErrorCode::CoordinatorNotAvailable => 15,
            ErrorCode::NotCoordinator => 16,
            ErrorCode::BrokerNotAvailable => 8,
        }
    }

    /// Whether the same request may succeed if sent again later.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotLeaderOrFollower
                | ErrorCode::RequestTimedOut
                | ErrorCode::NotEnoughReplicas
                | ErrorCode::KafkaStorageError
                | ErrorCode::ShuttingDown
                | ErrorCode::ThrottlingQuotaExceeded
                | ErrorCode::LeaderNotAvailable
                | ErrorCode::NotEnoughReplicasAfterAppend
                | ErrorCode::NotController
                | ErrorCode::FencedLeaderEpoch
                | ErrorCode::UnknownLeaderEpoch
                | ErrorCode::PluginFailed
                | ErrorCode::CoordinatorNotAvailable
                | ErrorCode::NotCoordinator
                | ErrorCode::BrokerNotAvailable
        )
    }
}

/// A typed error with a message for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What kind.
    pub code: ErrorCode,
    /// What happened and what to do.
    pub message: String,
}

/// The first frame of a response stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResponseHeader {
    /// Success.
    Ok(Response),
    /// Failure.
    Error(ErrorBody),
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than the length prefix says.
    #[error("frame truncated: needed {needed} bytes, had {available}")]
    Truncated {
        /// Needed.
        needed: usize,
        /// Had.
        available: usize,
    },
    /// A length over its limit.
    #[error("{what} of {len} bytes is over the limit of {limit}")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The header does not decode.
    #[error("malformed header: {0}")]
    Malformed(String),
}

/// A frame's header: a request's or a response's, each with its own limit.
pub trait Header {
    /// Largest encoded size accepted.
    const BYTES_MAX: u32;
    /// What it is, for errors.
    const WHAT: &'static str;
}

impl Header for RequestHeader {
    const BYTES_MAX: u32 = REQUEST_HEADER_BYTES_MAX;
    const WHAT: &'static str = "request header";
}

impl Header for ResponseHeader {
    const BYTES_MAX: u32 = RESPONSE_HEADER_BYTES_MAX;
    const WHAT: &'static str = "response header";
}

/// Encodes a frame's header part (length prefix + postcard); the payload follows.
pub fn encode_header<T: Serialize + Header>(header: &T) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_allocvec(header).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if body.len() > T::BYTES_MAX as usize {
        return Err(FrameError::TooLarge {
            what: T::WHAT,
            len: body.len() as u64,
            limit: u64::from(T::BYTES_MAX),
        });
    }
    let mut out = Vec::with_capacity(LENGTH_PREFIX_BYTES + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads the length of a `T` header from the first 4 bytes and checks it
/// against `T`'s limit.
pub fn decode_header_len<T: Header>(
    prefix: [u8; LENGTH_PREFIX_BYTES],
) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix);
    if len > T::BYTES_MAX {
        return Err(FrameError::TooLarge {
            what: T::WHAT,
            len: u64::from(len),
            limit: u64::from(T::BYTES_MAX),
        });
    }
    Ok(len as usize)
}

/// Decodes a header body (without the prefix).
pub fn decode_header<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, FrameError> {
    postcard::from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Splits a complete frame (prefix + header + payload) into the header and payload.
pub fn split_frame<'a, T: Deserialize<'a> + Header>(
    frame: &'a [u8],
) -> Result<(T, &'a [u8]), FrameError> {
    if frame.len() < LENGTH_PREFIX_BYTES {
        return Err(FrameError::Truncated {
            needed: LENGTH_PREFIX_BYTES,
            available: frame.len(),
        });
    }
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    prefix.copy_from_slice(&frame[..LENGTH_PREFIX_BYTES]);
    let len = decode_header_len::<T>(prefix)?;
    let end = LENGTH_PREFIX_BYTES + len;
    if frame.len() < end {
        return Err(FrameError::Truncated {
            needed: end,
            available: frame.len(),
        });
    }
    Ok((
        decode_header(&frame[LENGTH_PREFIX_BYTES..end])?,
        &frame[end..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let req = RequestHeader {
            version: PROTOCOL_VERSION,
            request: Request::Fetch {
                topic: "sensors".into(),
                partition: 3,
                offset: 42,
                max_bytes: 1 << 20,
                min_bytes: 1,
                max_wait_ms: 500,
            },
        };
        let mut frame = encode_header(&req).unwrap();
        frame.extend_from_slice(b"payload");
        let (back, payload): (RequestHeader, _) = split_frame(&frame).unwrap();
        assert_eq!(back, req);
        assert_eq!(payload, b"payload");
        let resp = ResponseHeader::Error(ErrorBody {
            code: ErrorCode::UnknownTopicOrPartition,
            message: "no topic".into(),
        });
        let frame = encode_header(&resp).unwrap();
        let (back, payload): (ResponseHeader, _) = split_frame(&frame).unwrap();
        assert_eq!(back, resp);
        assert!(payload.is_empty());
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        assert!(matches!(
            decode_header_len::<RequestHeader>((REQUEST_HEADER_BYTES_MAX + 1).to_be_bytes()),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            split_frame::<RequestHeader>(&[0, 0]),
            Err(FrameError::Truncated { .. })
        ));
        assert!(matches!(
            split_frame::<RequestHeader>(&[0, 0, 0, 9, 1]),
            Err(FrameError::Truncated { .. })
        ));
        assert!(matches!(
            split_frame::<RequestHeader>(&[0, 0, 0, 3, 0xff, 0xff, 0xff]),
            Err(FrameError::Malformed(_))
        ));
        // Arbitrary bytes never panic.
        for seed in 0u32..2000 {
            let bytes: Vec<u8> = (0..(seed % 40))
                .map(|i| (seed.wrapping_mul(2654435761).rotate_left(i)) as u8)
                .collect();
            let _ = split_frame::<RequestHeader>(&bytes);
            let _ = split_frame::<ResponseHeader>(&bytes);
        }
    }

    #[test]
    fn error_codes_are_stable() {
        assert_eq!(ErrorCode::UnknownTopicOrPartition.code(), 3);
        assert_eq!(ErrorCode::MessageTooLarge.code(), 10);
        assert_eq!(ErrorCode::KafkaStorageError.code(), 56);
        assert!(ErrorCode::KafkaStorageError.is_retriable());
        assert!(!ErrorCode::CorruptMessage.is_retriable());
        assert_eq!(ErrorCode::IllegalGeneration.code(), 22);
        assert_eq!(ErrorCode::UnknownMemberId.code(), 25);
        assert_eq!(ErrorCode::RebalanceInProgress.code(), 27);
        assert_eq!(ErrorCode::GroupIdNotFound.code(), 69);
        assert_eq!(ErrorCode::NotEnoughReplicas.code(), 19);
        assert_eq!(ErrorCode::NotEnoughReplicasAfterAppend.code(), 20);
        assert_eq!(ErrorCode::LeaderNotAvailable.code(), 5);
        assert_eq!(ErrorCode::FencedLeaderEpoch.code(), 74);
    }
}
