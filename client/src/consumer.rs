//! The consumer: manual assignment, seeking, and long-polling fetches across the
//! assigned partitions.
//!
//! [`Consumer::poll`] keeps one Fetch in flight per assigned partition (each on
//! its own QUIC stream, long-polling on the node with `fetch_min_bytes` and
//! `fetch_max_wait_ms`), and returns as soon as any of them brings records.
//! Fetches that are still waiting when `poll` returns stay in flight, so the next
//! `poll` picks up their records without a new round trip. Decoding (and
//! decompression) happens in the fetch task, off the caller's task.
//!
//! A fetch returns whole batches, so records below the fetch offset are skipped.
//! Positions follow what `poll` returned: [`Consumer::position`] is the offset of
//! the next record `poll` will return. A partition without a position (freshly
//! assigned, not sought) starts where [`ConsumerConfig::auto_offset_reset`] says, and
//! so does one whose position fell out of the log (`OffsetOutOfRange`, e.g. after
//! retention). Lost connections and retriable errors are retried after
//! `retry_backoff_ms`; the [`Client`] re-dials on its own.

mod membership;

pub use membership::RebalanceListener;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_core::batch::{BatchError, BatchIter, RecordHeader, RecordIter, TimestampType};

use crate::connection::{Client, ClientError, with_timeout};
use crate::protocol::{ErrorCode, OffsetSpec, PROTOCOL_VERSION, Request, RequestHeader, Response};

/// Where a partition without a valid position starts (Kafka's `auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoOffsetReset {
    /// At the log start offset.
    #[default]
    Earliest,
    /// At the high watermark: only records produced from now on.
    Latest,
    /// Nowhere: `poll` fails with [`ConsumeError::NoOffset`] or
    /// [`ConsumeError::OffsetOutOfRange`].
    None,
}

impl AutoOffsetReset {
    /// Parses Kafka's names: `earliest`, `latest`, `none`.
    pub fn from_name(name: &str) -> Option<AutoOffsetReset> {
        match name {
            "earliest" => Some(AutoOffsetReset::Earliest),
            "latest" => Some(AutoOffsetReset::Latest),
            "none" => Some(AutoOffsetReset::None),
            _ => None,
        }
    }
}

/// Consumer settings, under Kafka's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// The node answers a fetch once this many bytes are available
    /// (`fetch.min.bytes`, 1).
    pub fetch_min_bytes: u32,
    /// Longest the node holds a fetch waiting for `fetch_min_bytes`
    /// (`fetch.max.wait.ms`, 500).
    pub fetch_max_wait_ms: u32,
    /// Most bytes per partition per fetch; at least one whole batch is returned even
    /// if larger (`max.partition.fetch.bytes`, 1 MiB).
    pub max_partition_fetch_bytes: u32,
    /// Most records one `poll` returns (`max.poll.records`, 500).
    pub max_poll_records: u32,
    /// Where a partition without a valid position starts (`auto.offset.reset`).
    /// Earliest by default.
    pub auto_offset_reset: AutoOffsetReset,
    /// Wait before fetching a partition again after a retriable error
    /// (`retry.backoff.ms`, 100).
    pub retry_backoff_ms: u32,
    /// Largest decompressed records section of one batch accepted, and
    /// most records bytes one fetch response is decoded into (64 MiB): a
    /// response whose batches expand beyond it is taken a part at a time.
    pub decompressed_batch_bytes_max: u32,
    /// The consumer group (`group.id`): needed by [`Consumer::subscribe`] and
    /// to commit offsets. `None` by default.
    pub group_id: Option<String>,
    /// `client.id`, shown by `eddy group describe` (`eddy-consumer`).
    pub client_id: String,
    /// Commit the positions in the background of `poll`, every
    /// `auto_commit_interval_ms`, and before partitions are revoked
    /// (`enable.auto.commit`, true).
    pub enable_auto_commit: bool,
    /// `auto.commit.interval.ms` (5000).
    pub auto_commit_interval_ms: u32,
    /// A member not heard from for this long is dropped from its group
    /// (`session.timeout.ms`, 45 000).
    pub session_timeout_ms: u32,
    /// How often the background task tells the coordinator the member is alive
    /// (`heartbeat.interval.ms`, 3000; below a third of the session timeout).
    pub heartbeat_interval_ms: u32,
    /// Longest a rebalance waits for this member to re-join, i.e. the longest
    /// time between two `poll` calls (Kafka's `max.poll.interval.ms`, 300 000).
    pub rebalance_timeout_ms: u32,
    /// Assignment strategies, preferred first (`partition.assignment.strategy`):
    /// `range` (default), `roundrobin`, `cooperative-sticky`.
    pub partition_assignment_strategy: Vec<String>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            fetch_min_bytes: 1,
            fetch_max_wait_ms: 500,
            max_partition_fetch_bytes: 1024 * 1024,
            max_poll_records: 500,
            auto_offset_reset: AutoOffsetReset::Earliest,
            retry_backoff_ms: 100,
            decompressed_batch_bytes_max: 64 * 1024 * 1024,
            group_id: None,
            client_id: "eddy-consumer".to_owned(),
            enable_auto_commit: true,
            auto_commit_interval_ms: 5000,
            session_timeout_ms: 45_000,
            heartbeat_interval_ms: 3000,
            rebalance_timeout_ms: 300_000,
            partition_assignment_strategy: vec!["range".to_owned()],
        }
    }
}

impl ConsumerConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), ConsumeError> {
        if self.max_poll_records == 0 {
            return Err(ConsumeError::Config(
                "max_poll_records must be above 0".into(),
            ));
        }
        if self.max_partition_fetch_bytes == 0 {
            return Err(ConsumeError::Config(
                "max_partition_fetch_bytes must be above 0".into(),
            ));
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms >= self.session_timeout_ms
        {
            return Err(ConsumeError::Config(format!(
                "heartbeat.interval.ms ({}) must be above 0 and below session.timeout.ms ({})",
                self.heartbeat_interval_ms, self.session_timeout_ms
            )));
        }
        if self.auto_commit_interval_ms == 0 || self.rebalance_timeout_ms == 0 {
            return Err(ConsumeError::Config(
                "auto.commit.interval.ms and max.poll.interval.ms must be above 0".into(),
            ));
        }
        if self.partition_assignment_strategy.is_empty() {
            return Err(ConsumeError::Config(
                "partition.assignment.strategy needs at least one strategy".into(),
            ));
        }
        if self.group_id.as_deref() == Some("") {
            return Err(ConsumeError::Config("group.id must not be empty".into()));
        }
        Ok(())
    }

    /// Sets a setting by its Kafka name: `group.id`, `client.id`,
    /// `enable.auto.commit`, `auto.commit.interval.ms`, `session.timeout.ms`,
    /// `heartbeat.interval.ms`, `max.poll.interval.ms`,
    /// `partition.assignment.strategy` (comma-separated), `auto.offset.reset`,
    /// `fetch.min.bytes`, `fetch.max.wait.ms`, `max.partition.fetch.bytes`,
    /// `max.poll.records`, `retry.backoff.ms`.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ConsumeError> {
        let number = || {
            value.parse::<u32>().map_err(|_| {
                ConsumeError::Config(format!("{name} must be a whole number, got `{value}`"))
            })
        };
        match name {
            "group.id" => self.group_id = Some(value.to_owned()),
            "client.id" => self.client_id = value.to_owned(),
            "enable.auto.commit" => {
                self.enable_auto_commit = match value {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ConsumeError::Config(format!(
                            "enable.auto.commit must be true or false, got `{value}`"
                        )));
                    }
                }
            }
            "auto.commit.interval.ms" => self.auto_commit_interval_ms = number()?,
            "session.timeout.ms" => self.session_timeout_ms = number()?,
            "heartbeat.interval.ms" => self.heartbeat_interval_ms = number()?,
            "max.poll.interval.ms" | "rebalance.timeout.ms" => {
                self.rebalance_timeout_ms = number()?
            }
            "partition.assignment.strategy" => {
                self.partition_assignment_strategy = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            "auto.offset.reset" => {
                self.auto_offset_reset = AutoOffsetReset::from_name(value).ok_or_else(|| {
                    ConsumeError::Config(format!(
                        "auto.offset.reset must be earliest, latest or none, got `{value}`"
                    ))
                })?
            }
            "fetch.min.bytes" => self.fetch_min_bytes = number()?,
            "fetch.max.wait.ms" => self.fetch_max_wait_ms = number()?,
            "max.partition.fetch.bytes" => self.max_partition_fetch_bytes = number()?,
            "max.poll.records" => self.max_poll_records = number()?,
            "retry.backoff.ms" => self.retry_backoff_ms = number()?,
            _ => {
                return Err(ConsumeError::Config(format!(
                    "unknown consumer setting `{name}` (Kafka names, e.g. session.timeout.ms)"
                )));
            }
        }
        Ok(())
    }
}

/// A record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Timestamp (ms since the epoch): create time, or the node's append time.
    pub timestamp: i64,
    /// Which of the two `timestamp` is.
    pub timestamp_type: TimestampType,
    /// Key; `None` is Kafka's null key.
    pub key: Option<Vec<u8>>,
    /// Value; `None` is a null value.
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<RecordHeader>,
}

/// Why a consumer call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumeError {
    /// The consumer config is inconsistent.
    #[error("invalid consumer config: {0}")]
    Config(String),
    /// The partition is not in the assignment.
    #[error("partition {topic}-{partition} is not assigned to this consumer")]
    NotAssigned {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
    /// No position and `auto_offset_reset` is `None`.
    #[error("no offset for {topic}-{partition} and auto_offset_reset is none: seek first")]
    NoOffset {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
    /// The position is outside the log and `auto_offset_reset` is `None`.
    #[error(
        "offset {offset} is out of range for {topic}-{partition} and auto_offset_reset is none"
    )]
    OffsetOutOfRange {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The position that failed.
        offset: u64,
    },
    /// A fetched batch does not decode (bad CRC, bad structure, too large).
    #[error("corrupt data in {topic}-{partition} at offset {offset}: {reason}")]
    Corrupt {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The fetch offset.
        offset: u64,
        /// What was wrong.
        reason: BatchError,
    },
    /// The node or the connection failed.
    #[error(transparent)]
    Client(ClientError),
}

impl ConsumeError {
    /// The node's error code, if the node answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ConsumeError::Client(e) => e.code(),
            _ => None,
        }
    }

    /// Whether the same call may succeed later.
    pub fn is_retriable(&self) -> bool {
        match self {
            ConsumeError::Client(e) => e.is_retriable(),
            _ => false,
        }
    }
}

impl From<ClientError> for ConsumeError {
    fn from(e: ClientError) -> Self {
        ConsumeError::Client(e)
    }
}

/// Reads records from assigned partitions of one node.
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    partitions: Vec<PartitionState>,
    /// Outcomes of fetch tasks. At most one fetch per assigned partition is in flight,
    /// which bounds the queue.
    outcomes_tx: async_channel::Sender<FetchOutcome>,
    outcomes_rx: async_channel::Receiver<FetchOutcome>,
    next_fetch_id: u64,
    /// Where the next `poll` starts handing out records, for fairness.
    next_partition: usize,
    /// Group membership, after [`Consumer::subscribe`].
    group: Option<membership::Membership>,
}

#[derive(Debug)]
struct PartitionState {
    topic: Arc<str>,
    partition: u32,
    /// Offset of the next record `poll` returns; `None` until known.
    position: Option<u64>,
    /// Where the next fetch starts (past the buffered records).
    fetch_offset: u64,
    buffer: VecDeque<ConsumerRecord>,
    inflight: Option<Inflight>,
    /// After a retriable error, no fetch before this.
    retry_at: Option<Instant>,
    /// Newly assigned by the group: the position comes from the committed
    /// offset, looked up before `auto_offset_reset` may apply.
    pending_committed: bool,
}

#[derive(Debug)]
struct Inflight {
    id: u64,
    /// Dropping it cancels the fetch.
    _task: smol::Task<()>,
}

#[derive(Debug)]
struct FetchOutcome {
    id: u64,
    result: Result<Fetched, ConsumeError>,
}

#[derive(Debug)]
struct Fetched {
    records: Vec<ConsumerRecord>,
    next_offset: u64,
}

impl Consumer {
    /// A consumer with nothing assigned.
    pub fn new(client: Client, config: ConsumerConfig) -> Result<Consumer, ConsumeError> {
        config.validate()?;
        let (outcomes_tx, outcomes_rx) = async_channel::unbounded();
        Ok(Consumer {
            client,
            config,
            partitions: Vec::new(),
            outcomes_tx,
            outcomes_rx,
            next_fetch_id: 0,
            next_partition: 0,
            group: None,
        })
    }

    /// The client this consumer fetches through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The config this consumer runs with.
    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// The number of partitions of `topic` (to assign them all).
    pub async fn partition_count(&self, topic: &str) -> Result<u32, ConsumeError> {
        Ok(self.client.partition_count(topic).await?)
    }

    /// Replaces the assignment. Partitions that stay keep their positions; new ones
    /// start per `auto_offset_reset` unless sought. Duplicates are ignored.
    ///
    /// Manual assignment uses no group management: it ends a subscription (without
    /// leaving the group: call [`Consumer::unsubscribe`] first for that). With a
    /// `group_id`, [`Consumer::commit_sync`] still stores offsets for the group,
    /// which the node accepts only while the group has no active members.
    pub fn assign(&mut self, partitions: Vec<(String, u32)>) {
        self.group = None;
        self.set_assignment(partitions);
    }

    fn set_assignment(&mut self, partitions: Vec<(String, u32)>) {
        let mut old = std::mem::take(&mut self.partitions);
        for (topic, partition) in partitions {
            if self.find(&topic, partition).is_some() {
                continue;
            }
            let kept = old
                .iter()
                .position(|p| *p.topic == *topic && p.partition == partition);
            let state = match kept {
                Some(i) => old.swap_remove(i),
                None => PartitionState {
                    topic: Arc::from(topic),
                    partition,
                    position: None,
                    fetch_offset: 0,
                    buffer: VecDeque::new(),
                    inflight: None,
                    retry_at: None,
                    pending_committed: false,
                },
            };
            self.partitions.push(state);
        }
        // `old` now holds only unassigned partitions: dropping them cancels their fetches.
        self.next_partition = 0;
    }

    /// The assigned partitions.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.partitions
            .iter()
            .map(|p| (p.topic.to_string(), p.partition))
            .collect()
    }

    /// The next `poll` returns records of this partition from `offset` on.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: u64) -> Result<(), ConsumeError> {
        let i = self.index(topic, partition)?;
        self.partitions[i].reset_to(offset);
        Ok(())
    }

    /// Seeks to the partition's log start offset.
    pub async fn seek_to_beginning(
        &mut self,
        topic: &str,
        partition: u32,
    ) -> Result<(), ConsumeError> {
        let offset = self.lookup(topic, partition, OffsetSpec::Earliest).await?;
        self.seek(topic, partition, offset)
    }

    /// Seeks to the partition's high watermark: only records produced later are seen.
    pub async fn seek_to_end(&mut self, topic: &str, partition: u32) -> Result<(), ConsumeError> {
        let offset = self.lookup(topic, partition, OffsetSpec::Latest).await?;
        self.seek(topic, partition, offset)
    }

    /// Seeks to the first record with a timestamp at or after `timestamp_ms`, or to the
    /// end when there is none.
    pub async fn seek_to_timestamp(
        &mut self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<(), ConsumeError> {
        self.index(topic, partition)?;
        let found = self
            .client
            .list_offsets(topic, partition, OffsetSpec::Timestamp(timestamp_ms))
            .await?;
        let offset = match found.offset {
            Some(offset) => offset,
            None => self.lookup(topic, partition, OffsetSpec::Latest).await?,
        };
        self.seek(topic, partition, offset)
    }

    /// The offset of the next record `poll` will return for this partition, looking it
    /// up per `auto_offset_reset` if there is none yet.
    pub async fn position(&mut self, topic: &str, partition: u32) -> Result<u64, ConsumeError> {
        let i = self.index(topic, partition)?;
        if let Some(position) = self.partitions[i].position {
            return Ok(position);
        }
        let offset = self.reset_offset(i).await?;
        self.partitions[i].reset_to(offset);
        Ok(offset)
    }

    /// Waits up to `timeout` for records of the assigned partitions and returns them
    /// (at most `max_poll_records`; empty if none came in time). Returns early as
    /// soon as any partition has records.
    ///
    /// With a subscription, `poll` also runs the group protocol: it joins (and
    /// re-joins when the coordinator rebalances, which can take up to the
    /// rebalance time), calls the [`RebalanceListener`], commits positions every
    /// `auto_commit_interval_ms` with `enable_auto_commit`, and starts newly
    /// assigned partitions at their committed offsets.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ConsumeError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.group.is_some() {
                self.group_duties().await?;
            }
            // Outcomes that already arrived first: they may carry records.
            while let Ok(outcome) = self.outcomes_rx.try_recv() {
                self.handle(outcome)?;
            }
            let records = self.take_buffered();
            if !records.is_empty() {
                self.start_fetches();
                return Ok(records);
            }
            let now = Instant::now();
            if now >= deadline && !timeout.is_zero() {
                return Ok(Vec::new());
            }
            self.resolve_positions(deadline).await?;
            self.start_fetches();
            if timeout.is_zero() {
                return Ok(Vec::new());
            }
            let now = Instant::now();
            let wake = self
                .partitions
                .iter()
                .filter_map(|p| p.retry_at)
                .min()
                .map_or(deadline, |retry| retry.min(deadline));
            let group_wake = self.group.as_ref().map(|g| g.wake_receiver());
            let outcome = async { self.outcomes_rx.recv().await.ok() };
            let group_event = async {
                match group_wake {
                    Some(rx) => {
                        let _ = rx.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
                None
            };
            let received = with_timeout(
                futures_lite::FutureExt::or(outcome, group_event),
                wake.saturating_duration_since(now),
            )
            .await;
            // The sender lives in `self`: the channel never closes while polling.
            if let Some(Some(outcome)) = received {
                self.handle(outcome)?;
            }
        }
    }

    fn find(&self, topic: &str, partition: u32) -> Option<usize> {
        self.partitions
            .iter()
            .position(|p| *p.topic == *topic && p.partition == partition)
    }

    fn index(&self, topic: &str, partition: u32) -> Result<usize, ConsumeError> {
        self.find(topic, partition)
            .ok_or_else(|| ConsumeError::NotAssigned {
                topic: topic.to_owned(),
                partition,
            })
    }

    async fn lookup(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<u64, ConsumeError> {
        self.index(topic, partition)?;
        let leader = self.client.for_partition(topic, partition).await?;
        let found = match leader.list_offsets(topic, partition, spec).await {
            Ok(found) => found,
            Err(e) => {
                self.client.forget_leader(topic, partition);
                return Err(e.into());
            }
        };
        found.offset.ok_or_else(|| {
            ConsumeError::Client(ClientError::Protocol {
                server: self.client.options().server.clone(),
                reason: format!("ListOffsets {spec:?} for {topic}-{partition} returned no offset"),
            })
        })
    }

    /// The offset `auto_offset_reset` picks for partition `i`.
    async fn reset_offset(&self, i: usize) -> Result<u64, ConsumeError> {
        let p = &self.partitions[i];
        let spec = match self.config.auto_offset_reset {
            AutoOffsetReset::Earliest => OffsetSpec::Earliest,
            AutoOffsetReset::Latest => OffsetSpec::Latest,
            AutoOffsetReset::None => {
                return Err(ConsumeError::NoOffset {
                    topic: p.topic.to_string(),
                    partition: p.partition,
                });
            }
        };
        self.lookup(&p.topic, p.partition, spec).await
    }

    /// Looks up positions of partitions that have none, until `deadline`.
    async fn resolve_positions(&mut self, deadline: Instant) -> Result<(), ConsumeError> {
        let now = Instant::now();
        for i in 0..self.partitions.len() {
            let p = &self.partitions[i];
            if p.position.is_some() || p.pending_committed || p.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(found) = with_timeout(self.reset_offset(i), left).await else {
                return Ok(());
            };
            match found {
                Ok(offset) => {
                    log::debug!(
                        "{}-{} starts at offset {offset}",
                        self.partitions[i].topic,
                        self.partitions[i].partition
                    );
                    self.partitions[i].reset_to(offset);
                }
                Err(e) if e.is_retriable() => self.back_off(i, &e),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn back_off(&mut self, i: usize, error: &ConsumeError) {
        let p = &mut self.partitions[i];
        log::debug!(
            "{}-{}: {error}; retrying in {} ms",
            p.topic,
            p.partition,
            self.config.retry_backoff_ms
        );
        p.retry_at =
            Some(Instant::now() + Duration::from_millis(u64::from(self.config.retry_backoff_ms)));
    }

    /// Starts a fetch for every partition with a position, an empty buffer, no fetch
    /// in flight and no backoff pending.
    fn start_fetches(&mut self) {
        let now = Instant::now();
        for p in &mut self.partitions {
            if p.inflight.is_some() || !p.buffer.is_empty() {
                continue;
            }
            if p.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            p.retry_at = None;
            let Some(position) = p.position else {
                continue;
            };
            let id = self.next_fetch_id;
            self.next_fetch_id += 1;
            let task = self.client.spawn(fetch(
                self.client.clone(),
                p.topic.clone(),
                p.partition,
                position,
                FetchLimits::from(&self.config),
                id,
                self.outcomes_tx.clone(),
            ));
            p.inflight = Some(Inflight { id, _task: task });
        }
    }

    fn handle(&mut self, outcome: FetchOutcome) -> Result<(), ConsumeError> {
        let Some(i) = self
            .partitions
            .iter()
            .position(|p| p.inflight.as_ref().is_some_and(|f| f.id == outcome.id))
        else {
            // A fetch for a position that was sought away from, or unassigned.
            return Ok(());
        };
        let p = &mut self.partitions[i];
        p.inflight = None;
        match outcome.result {
            Ok(fetched) => {
                p.fetch_offset = fetched.next_offset.max(p.fetch_offset);
                if fetched.records.is_empty() {
                    p.position = Some(p.fetch_offset);
                } else {
                    p.buffer.extend(fetched.records);
                }
                Ok(())
            }
            Err(ConsumeError::Client(ClientError::Server(body)))
                if body.code == ErrorCode::OffsetOutOfRange =>
            {
                let offset = p.fetch_offset;
                if self.config.auto_offset_reset == AutoOffsetReset::None {
                    return Err(ConsumeError::OffsetOutOfRange {
                        topic: p.topic.to_string(),
                        partition: p.partition,
                        offset,
                    });
                }
                log::info!(
                    "offset {offset} is out of range for {}-{}; resetting to {:?}",
                    p.topic,
                    p.partition,
                    self.config.auto_offset_reset
                );
                p.position = None;
                Ok(())
            }
            Err(e) if e.is_retriable() => {
                self.back_off(i, &e);
                Ok(())
            }
            Err(e) => {
                // Fetched again on the next poll; the caller decides whether to go on.
                self.back_off(i, &e);
                Err(e)
            }
        }
    }

    /// Up to `max_poll_records` buffered records, taking partitions in turn.
    fn take_buffered(&mut self) -> Vec<ConsumerRecord> {
        let max = self.config.max_poll_records as usize;
        let n = self.partitions.len();
        let mut out = Vec::new();
        for k in 0..n {
            if out.len() >= max {
                break;
            }
            let i = (self.next_partition + k) % n;
            let p = &mut self.partitions[i];
            let take = p.buffer.len().min(max - out.len());
            if take == 0 {
                continue;
            }
            out.extend(p.buffer.drain(..take));
            p.position = Some(p.buffer.front().map_or(p.fetch_offset, |next| next.offset));
            self.next_partition = (i + 1) % n;
        }
        out
    }
}

impl PartitionState {
    fn reset_to(&mut self, offset: u64) {
        self.position = Some(offset);
        self.fetch_offset = offset;
        self.buffer.clear();
        self.inflight = None;
        self.retry_at = None;
        self.pending_committed = false;
    }
}

#[derive(Debug, Clone, Copy)]
struct FetchLimits {
    max_bytes: u32,
    min_bytes: u32,
    max_wait_ms: u32,
    decompressed_bytes_max: usize,
}

impl From<&ConsumerConfig> for FetchLimits {
    fn from(config: &ConsumerConfig) -> Self {
        FetchLimits {
            max_bytes: config.max_partition_fetch_bytes,
            min_bytes: config.fetch_min_bytes,
            max_wait_ms: config.fetch_max_wait_ms,
            decompressed_bytes_max: config.decompressed_batch_bytes_max as usize,
        }
    }
}

/// One fetch: request, decode, report.
async fn fetch(
    client: Client,
    topic: Arc<str>,
    partition: u32,
    offset: u64,
    limits: FetchLimits,
    id: u64,
    outcomes: async_channel::Sender<FetchOutcome>,
) {
    let header = RequestHeader {
        version: PROTOCOL_VERSION,
        request: Request::Fetch {
            topic: topic.to_string(),
            partition,
            offset,
            max_bytes: limits.max_bytes,
            min_bytes: limits.min_bytes,
            max_wait_ms: limits.max_wait_ms,
        },
    };
    let routed = match client.for_partition(&topic, partition).await {
        Ok(leader) => {
            let request = leader.request(header, &[]);
            client
                .unless_leader_moves(&topic, partition, &leader, limits.max_wait_ms, request)
                .await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = &routed
        && (e.is_node_unavailable()
            || matches!(
                e.code(),
                Some(
                    ErrorCode::NotLeaderOrFollower
                        | ErrorCode::LeaderNotAvailable
                        | ErrorCode::FencedLeaderEpoch
                        | ErrorCode::UnknownLeaderEpoch
                )
            ))
    {
        client.forget_leader(&topic, partition);
    }
    let result = match routed {
        Ok((Response::Fetch { next_offset, .. }, payload)) => decode_fetch(
            &topic,
            partition,
            offset,
            &payload,
            limits.decompressed_bytes_max,
        )
        .map(|decoded| Fetched {
            next_offset: if decoded.stopped_early {
                decoded.next_offset
            } else {
                next_offset.max(decoded.next_offset)
            },
            records: decoded.records,
        }),
        Ok((other, _)) => Err(ConsumeError::Client(client.unexpected("Fetch", &other))),
        Err(e) => Err(ConsumeError::Client(e)),
    };
    // The consumer may be gone; then nobody wants the result.
    let _ = outcomes.send(FetchOutcome { id, result }).await;
}

/// The records a fetch response decoded into.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) records: Vec<ConsumerRecord>,
    /// Where the next fetch starts.
    pub(crate) next_offset: u64,
    /// Whether decoding stopped before the end of the response (at
    /// `next_offset`), which the node's own next offset must not skip.
    pub(crate) stopped_early: bool,
}

/// Decodes the batches of a fetch response: the records at or after `offset`, and
/// the offset after the last batch (at least `offset`).
///
/// A partial batch at the end is ignored (the next fetch starts before it); a
/// response that starts with one, or any bad batch, is corrupt.
///
/// The records taken hold at most `decompressed_bytes_max` bytes of records
/// sections, whatever the batches claim: once some are taken, decoding stops
/// before a batch that would go past it (or that fails to decode), and the
/// next fetch starts there. Only a first batch alone over it is an error.
pub(crate) fn decode_fetch(
    topic: &Arc<str>,
    partition: u32,
    offset: u64,
    payload: &[u8],
    decompressed_bytes_max: usize,
) -> Result<Decoded, ConsumeError> {
    let corrupt = |reason: BatchError| ConsumeError::Corrupt {
        topic: topic.to_string(),
        partition,
        offset,
        reason,
    };
    let mut records = Vec::new();
    let mut next = offset;
    let mut seen_batch = false;
    let mut decoded_bytes = 0usize;
    for batch in BatchIter::new(payload) {
        let batch = match batch {
            Ok(batch) => batch,
            Err(BatchError::Truncated { .. }) if seen_batch => break,
            Err(e) => return Err(corrupt(e)),
        };
        seen_batch = true;
        let header = &batch.header;
        if header.next_offset() <= offset || header.attributes.is_control() {
            next = next.max(header.next_offset());
            continue;
        }
        // What the records taken so far leave (all of it while none are).
        let room = if records.is_empty() {
            decompressed_bytes_max
        } else {
            decompressed_bytes_max.saturating_sub(decoded_bytes)
        };
        let decoded = batch.decompressed(room).and_then(|section| {
            if section.len() > room {
                // An uncompressed section is not bounded by decompressing.
                return Err(BatchError::Invalid(
                    "the batch's records go past the fetch's decoding bound",
                ));
            }
            let taken = RecordIter::new(&section, header)
                .map(|r| r.map(|r| r.to_record()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((section.len(), taken))
        });
        let (section_len, taken) = match decoded {
            Ok(decoded) => decoded,
            Err(_) if !records.is_empty() => {
                return Ok(Decoded {
                    records,
                    next_offset: next.max(header.base_offset),
                    stopped_early: true,
                });
            }
            Err(e) => return Err(corrupt(e)),
        };
        decoded_bytes = decoded_bytes.saturating_add(section_len);
        next = next.max(header.next_offset());
        let timestamp_type = header.attributes.timestamp_type();
        for record in taken {
            let record_offset = batch.record_offset(record.offset_delta);
            if record_offset < offset {
                continue;
            }
            records.push(ConsumerRecord {
                topic: topic.clone(),
                partition,
                offset: record_offset,
                timestamp: batch.record_timestamp(record.timestamp_delta),
                timestamp_type,
                key: record.key,
                value: record.value,
                headers: record.headers,
            });
        }
    }
    Ok(Decoded {
        records,
        next_offset: next,
        stopped_early: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_core::batch::{BatchBuilder, BatchOptions, Compression};

    fn batch(base: u64, n: u32, compression: Compression) -> Vec<u8> {
        let mut b = BatchBuilder::new(BatchOptions {
            base_offset: base,
            compression,
            ..BatchOptions::default()
        });
        for i in 0..n {
            let value = format!("v{}", base + u64::from(i));
            b.push(
                1000 + i64::from(i),
                Some(b"k"),
                Some(value.as_bytes()),
                &[RecordHeader::new("h", Some(b"x"))],
            )
            .expect("push");
        }
        b.build().expect("build")
    }

    #[test]
    fn records_below_the_fetch_offset_are_skipped() {
        let topic: Arc<str> = Arc::from("t");
        let mut payload = batch(10, 5, Compression::None);
        payload.extend(batch(15, 5, Compression::Lz4));
        let Decoded {
            records,
            next_offset: next,
            ..
        } = decode_fetch(&topic, 0, 13, &payload, 1 << 20).expect("decodes");
        let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![13, 14, 15, 16, 17, 18, 19]);
        assert_eq!(next, 20);
        assert_eq!(records[0].value.as_deref(), Some(&b"v13"[..]));
        assert_eq!(records[0].timestamp, 1003);
        assert_eq!(records[0].headers, vec![RecordHeader::new("h", Some(b"x"))]);
    }

    #[test]
    fn a_partial_batch_at_the_end_is_ignored() {
        let topic: Arc<str> = Arc::from("t");
        let mut payload = batch(0, 3, Compression::None);
        let second = batch(3, 3, Compression::None);
        payload.extend_from_slice(&second[..second.len() - 5]);
        let Decoded {
            records,
            next_offset: next,
            ..
        } = decode_fetch(&topic, 0, 0, &payload, 1 << 20).expect("decodes");
        assert_eq!(records.len(), 3);
        assert_eq!(next, 3);
    }

    #[test]
    fn bad_batches_are_corrupt_not_panics() {
        let topic: Arc<str> = Arc::from("t");
        let mut payload = batch(0, 3, Compression::None);
        let last = payload.len() - 1;
        payload[last] ^= 0xff;
        let error = decode_fetch(&topic, 0, 0, &payload, 1 << 20).expect_err("bad CRC");
        assert!(matches!(error, ConsumeError::Corrupt { .. }));
        assert!(!error.is_retriable());
        // A truncated first batch is corrupt too: nothing can be made of it.
        let payload = batch(0, 3, Compression::None);
        let error = decode_fetch(&topic, 0, 0, &payload[..20], 1 << 20).expect_err("short");
        assert!(matches!(error, ConsumeError::Corrupt { .. }));
    }

    #[test]
    fn a_fetch_decodes_into_a_bounded_number_of_bytes() {
        // Batches of 1000 records of 4 KiB of zeros: 4 MiB each once
        // decompressed, a few KiB as sent.
        let big = |base: u64| {
            let mut b = BatchBuilder::new(BatchOptions {
                base_offset: base,
                compression: Compression::Zstd,
                ..BatchOptions::default()
            });
            for _ in 0..1000 {
                b.push(1000, None, Some(&[0u8; 4096][..]), &[])
                    .expect("push");
            }
            b.build().expect("build")
        };
        let topic: Arc<str> = Arc::from("t");
        let mut payload = Vec::new();
        for base in [0, 1000, 2000, 3000] {
            payload.extend(big(base));
        }
        assert!(payload.len() < 1 << 20, "{} bytes", payload.len());
        // A bound of 10 MiB takes two batches, then the next fetch starts at
        // the third.
        let bound = 10 << 20;
        let decoded = decode_fetch(&topic, 0, 0, &payload, bound).expect("decodes");
        assert_eq!(decoded.records.len(), 2000);
        assert!(decoded.stopped_early);
        assert_eq!(decoded.next_offset, 2000);
        let held: usize = decoded
            .records
            .iter()
            .map(|r| r.value.as_ref().map_or(0, |v| v.len()))
            .sum();
        assert!(held <= bound, "{held} bytes held");
        // From there, the rest.
        let rest = decode_fetch(&topic, 0, 2000, &payload, bound).expect("decodes");
        assert_eq!(rest.records.len(), 2000);
        assert!(!rest.stopped_early);
        assert_eq!(rest.next_offset, 4000);
        // A first batch alone over the bound is an error, not a stall.
        let error = decode_fetch(&topic, 0, 0, &payload, 1 << 20).expect_err("over");
        assert!(matches!(error, ConsumeError::Corrupt { .. }), "{error}");
    }

    #[test]
    fn an_empty_fetch_keeps_the_offset() {
        let topic: Arc<str> = Arc::from("t");
        let Decoded {
            records,
            next_offset: next,
            ..
        } = decode_fetch(&topic, 0, 42, &[], 1 << 20).expect("empty");
        assert!(records.is_empty());
        assert_eq!(next, 42);
    }

    #[test]
    fn auto_offset_reset_names() {
        assert_eq!(
            AutoOffsetReset::from_name("earliest"),
            Some(AutoOffsetReset::Earliest)
        );
        assert_eq!(
            AutoOffsetReset::from_name("latest"),
            Some(AutoOffsetReset::Latest)
        );
        assert_eq!(
            AutoOffsetReset::from_name("none"),
            Some(AutoOffsetReset::None)
        );
        assert_eq!(AutoOffsetReset::from_name("smallest"), None);
    }
}
