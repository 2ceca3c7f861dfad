//! One partition: its log, its writer task and the event that wakes fetchers.
//!
//! Every append goes through the partition's single writer task, fed by a
//! bounded queue. Batches arrive already checked (length, CRC, record count:
//! `validate_produce`, run by the request's own task without any lock). The
//! writer takes every request waiting in the queue, appends each under the
//! log's lock (the lock is never held across an `.await` or an
//! fsync), and then:
//! - for topics with `flush.messages=1` (`fsync = always`), answers only once
//!   an fsync covered the append. The fsync runs on a blocking thread while the
//!   writer goes on appending; every append made before an fsync started is
//!   covered by it (group commit), and the high watermark moves only over
//!   synced offsets;
//! - otherwise answers at once, moves the high watermark to the log end, and
//!   starts a background fsync when `flush.messages` / `flush.ms` make one due
//!   (a timer, armed from `flush_deadline_ms`, covers an idle partition).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use eddy_core::config::LogConfig;
use eddy_core::log::{AppendInfo, LogError, PartitionLog, SyncJob, Validated};
use event_listener::Event;
use futures_lite::FutureExt as _;
use smol::{Task, Timer};

use super::{BrokerError, now_ms};
use crate::runtime::RuntimeHandle;
use eddy_client::protocol::ErrorCode;

/// Produce requests a partition queues before producers wait.
pub const APPEND_QUEUE_REQUESTS_MAX: usize = 256;
/// Most queued requests one writer round appends before it answers.
pub const APPEND_GROUP_REQUESTS_MAX: usize = 256;
/// Leader epoch stamped on appended batches by a single node (it never
/// changes leader).
pub const LEADER_EPOCH: i32 = 0;

/// What this node is for a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A single node without a cluster: always the leader, epoch
    /// [`LEADER_EPOCH`], the high watermark is the log end.
    Single,
    /// The leader in a cluster.
    Leader(LeaderState),
    /// A follower fetching from `leader`.
    Follower {
        /// The leader's node id.
        leader: u32,
        /// The leader epoch followed.
        epoch: i32,
    },
    /// Not serving: no leader, or not a replica here.
    Offline {
        /// The latest leader epoch known.
        epoch: i32,
    },
}

/// A follower's progress as its leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerProgress {
    /// Its log end offset (the offset of its last fetch).
    pub leo: u64,
    /// When it was last caught up (ms): see [`FollowerProgress::fetched`].
    pub caught_up_ms: i64,
    /// The leader's log end offset at its previous fetch (`u64::MAX` before
    /// the first).
    pub last_fetch_leader_end: u64,
    /// When it fetched last (ms).
    pub last_fetch_ms: i64,
}

impl FollowerProgress {
    /// A follower of a leader elected at `now_ms`: counted as caught up then,
    /// so it has `replica.lag.time.max.ms` to fetch.
    pub fn new(now_ms: i64) -> FollowerProgress {
        FollowerProgress {
            leo: 0,
            caught_up_ms: now_ms,
            last_fetch_leader_end: u64::MAX,
            last_fetch_ms: now_ms,
        }
    }

    /// A fetch at `offset` when the leader's log ends at `leader_end`.
    /// Kafka's rule: the follower is caught up now if it fetches at the log
    /// end, and was caught up at its previous fetch if it now has everything
    /// the leader had then. Under steady production a follower that keeps
    /// pace is never exactly at the end, but always reaches where the end
    /// was one fetch ago.
    pub fn fetched(&mut self, offset: u64, leader_end: u64, now_ms: i64) {
        self.leo = offset;
        if offset >= leader_end {
            self.caught_up_ms = now_ms;
        } else if offset >= self.last_fetch_leader_end {
            self.caught_up_ms = self.caught_up_ms.max(self.last_fetch_ms);
        }
        self.last_fetch_leader_end = leader_end;
        self.last_fetch_ms = now_ms;
    }
}

/// A leader's replication state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderState {
    /// This node.
    pub me: u32,
    /// The leader epoch.
    pub epoch: i32,
    /// Where the epoch started in the log.
    pub epoch_start: u64,
    /// Every replica.
    pub replicas: Vec<u32>,
    /// The in-sync replicas, as committed in the metadata.
    pub isr: Vec<u32>,
    /// Followers' progress, by node id.
    pub followers: std::collections::BTreeMap<u32, FollowerProgress>,
    /// When this leader last proposed an ISR change (ms), to pace them.
    pub isr_proposed_ms: i64,
}

impl LeaderState {
    /// The high watermark: the smallest log end offset in the ISR (this
    /// leader's is `leader_end`).
    pub fn high_watermark(&self, leader_end: u64) -> u64 {
        self.isr
            .iter()
            .filter(|r| **r != self.me)
            .map(|r| self.followers.get(r).map_or(0, |f| f.leo))
            .fold(leader_end, u64::min)
    }

    /// The ISR this leader should propose at `now_ms`, if it differs from
    /// the committed one (sorted). Kafka's rules: a member stays while it
    /// has reached the log end `leader_end` within `lag_ms`
    /// (`replica.lag.time.max.ms`); a replica outside the ISR joins once it
    /// has reached the high watermark `hw` and the start of this epoch. A
    /// member that stopped fetching holds the high watermark at its own log
    /// end, so only replicas outside the ISR may be added back, or a
    /// stalled member would be dropped and re-added in the same breath.
    pub fn isr_proposal(
        &self,
        leader_end: u64,
        hw: u64,
        now_ms: i64,
        lag_ms: i64,
    ) -> Option<Vec<u32>> {
        let caught_up =
            |f: &FollowerProgress| f.leo >= leader_end || now_ms - f.caught_up_ms <= lag_ms;
        let mut isr: Vec<u32> = self
            .isr
            .iter()
            .copied()
            .filter(|r| *r == self.me || self.followers.get(r).is_some_and(caught_up))
            .collect();
        let kept = isr.len();
        // Only a replica that is fetching joins (Kafka expands the ISR on a
        // follower's fetch): one that died at the high watermark of a
        // partition that has had no records since would otherwise be
        // proposed again and again, and refused by the controller as long as
        // its node is down.
        let joins = |f: &FollowerProgress| {
            f.leo >= hw && f.leo >= self.epoch_start && now_ms - f.last_fetch_ms <= lag_ms
        };
        isr.extend(
            self.followers
                .iter()
                .filter_map(|(id, f)| (!self.isr.contains(id) && joins(f)).then_some(*id)),
        );
        // Members only leave and non-members only join: a change is one or
        // the other.
        (kept < self.isr.len() || isr.len() > kept).then(|| {
            isr.sort_unstable();
            isr
        })
    }
}

/// What a successful append tells the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record.
    pub base_offset: u64,
    /// The broker's time for `LogAppendTime` topics, else -1.
    pub log_append_time: i64,
    /// The partition's log start offset.
    pub log_start_offset: u64,
    /// Offset after the last record.
    pub next_offset: u64,
}

type Reply = async_channel::Sender<Result<Appended, BrokerError>>;

struct AppendRequest {
    batches: Vec<u8>,
    checked: Validated,
    reply: Reply,
}

/// An append in the writer's queue, waiting for its answer.
#[derive(Debug)]
pub struct QueuedAppend {
    answer: async_channel::Receiver<Result<Appended, BrokerError>>,
}

/// One open partition.
pub struct Partition {
    topic: String,
    index: u32,
    log: Mutex<Option<PartitionLog>>,
    /// Notified whenever the high watermark moves, and when the partition closes.
    hw_moved: Event,
    /// The high watermark, readable without the lock.
    hw: AtomicU64,
    queue: async_channel::Sender<AppendRequest>,
    writer: Mutex<Option<Task<()>>>,
    /// Group-commit fsyncs finished by the writer.
    syncs: AtomicU64,
    /// This node's role for the partition.
    role: Mutex<Role>,
    /// Notified after every append (replica fetches wait on it) and on
    /// role changes.
    appended: Event,
    /// The follower's fetcher task, while following.
    fetcher: Mutex<Option<Task<()>>>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("topic", &self.topic)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every log mutation either completes or returns an error before changing
    // state, so a panic elsewhere under the lock leaves the log usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Partition {
    /// Wraps an open log and starts its writer task.
    pub fn start(topic: &str, index: u32, log: PartitionLog, rt: &RuntimeHandle) -> Arc<Partition> {
        Self::start_with_role(topic, index, log, rt, Role::Single)
    }

    /// Wraps an open log with a starting role and starts its writer task.
    pub fn start_with_role(
        topic: &str,
        index: u32,
        mut log: PartitionLog,
        rt: &RuntimeHandle,
        role: Role,
    ) -> Arc<Partition> {
        // One replica: everything the log holds after recovery is committed. (The
        // checkpointed high watermark lags after a crash; in a cluster it is
        // restored from the leader instead.)
        if role == Role::Single {
            let end = log.log_end_offset();
            log.set_high_watermark(end);
        }
        let hw = log.high_watermark();
        let (queue, requests) = async_channel::bounded(APPEND_QUEUE_REQUESTS_MAX);
        let partition = Arc::new(Partition {
            topic: topic.to_owned(),
            index,
            log: Mutex::new(Some(log)),
            hw_moved: Event::new(),
            hw: AtomicU64::new(hw),
            queue,
            writer: Mutex::new(None),
            syncs: AtomicU64::new(0),
            role: Mutex::new(role),
            appended: Event::new(),
            fetcher: Mutex::new(None),
        });
        let task = rt.spawn_spread(Writer::new(partition.clone(), requests).run());
        *lock(&partition.writer) = Some(task);
        partition
    }

    /// The partition number.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The topic name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        lock(&self.role).clone()
    }

    /// Runs `f` on the role under its lock (never across an await).
    pub fn with_role<R>(&self, f: impl FnOnce(&mut Role) -> R) -> R {
        f(&mut lock(&self.role))
    }

    /// Notified after appends and role changes.
    pub fn appended_event(&self) -> &Event {
        &self.appended
    }

    /// Replaces the fetcher task (dropping the old one cancels it).
    pub fn set_fetcher(&self, task: Option<Task<()>>) {
        let old = std::mem::replace(&mut *lock(&self.fetcher), task);
        drop(old);
    }

    /// Whether a fetcher task is set (a follower with a connection to its
    /// leader).
    pub fn has_fetcher(&self) -> bool {
        lock(&self.fetcher).is_some()
    }

    /// A leader recomputes its high watermark from the ISR's log end
    /// offsets; a single node uses its log end.
    pub fn advance_hw(&self, log: &mut PartitionLog) {
        let end = log.log_end_offset();
        let hw = match &*lock(&self.role) {
            Role::Single => end,
            Role::Leader(l) => l.high_watermark(end),
            _ => return,
        };
        self.publish_hw(log, hw);
    }

    /// A follower takes the leader's high watermark (bounded by its own
    /// log end).
    pub fn follower_hw(&self, log: &mut PartitionLog, leader_hw: u64) {
        let hw = leader_hw.min(log.log_end_offset());
        if hw != log.high_watermark() {
            log.set_high_watermark(hw);
            self.hw.store(log.high_watermark(), Ordering::Release);
            self.hw_moved.notify(usize::MAX);
        }
    }

    /// Publishes a high watermark read from the log after a truncation.
    pub fn sync_hw(&self, log: &PartitionLog) {
        self.hw.store(log.high_watermark(), Ordering::Release);
        self.hw_moved.notify(usize::MAX);
    }

    /// Wakes everything waiting on this partition (role change).
    pub fn wake_all(&self) {
        self.hw_moved.notify(usize::MAX);
        self.appended.notify(usize::MAX);
    }

    /// The high watermark as last published by the writer.
    pub fn high_watermark(&self) -> u64 {
        self.hw.load(Ordering::Acquire)
    }

    /// Background fsyncs the writer has finished (each covers every append made
    /// before it started).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// The event notified when the high watermark moves or the partition closes.
    pub fn hw_event(&self) -> &Event {
        &self.hw_moved
    }

    fn closed_error(&self) -> BrokerError {
        BrokerError::new(
            ErrorCode::UnknownTopicOrPartition,
            format!(
                "partition {} of topic {} was closed (topic deleted or node stopping); \
                 refresh metadata and retry",
                self.index, self.topic
            ),
        )
    }

    /// Runs `f` on the open log under its lock (never across an await).
    pub fn with_log<R>(
        &self,
        f: impl FnOnce(&mut PartitionLog) -> Result<R, BrokerError>,
    ) -> Result<R, BrokerError> {
        let mut guard = lock(&self.log);
        match guard.as_mut() {
            Some(log) => f(log),
            None => Err(self.closed_error()),
        }
    }

    /// Queues `batches`, already checked by
    /// [`eddy_core::log::validate_produce`] (outside any lock), for the
    /// writer: appends are written in the order they are queued. Returns what
    /// [`Partition::appended`] waits on.
    pub async fn queue_append(
        &self,
        batches: Vec<u8>,
        checked: Validated,
    ) -> Result<QueuedAppend, BrokerError> {
        let (reply, answer) = async_channel::bounded(1);
        self.queue
            .send(AppendRequest {
                batches,
                checked,
                reply,
            })
            .await
            .map_err(|_| self.closed_error())?;
        Ok(QueuedAppend { answer })
    }

    /// The writer's answer to a queued append.
    pub async fn appended(&self, queued: QueuedAppend) -> Result<Appended, BrokerError> {
        match queued.answer.recv().await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::new(
                ErrorCode::UnknownServerError,
                format!(
                    "the writer of {}-{} stopped without answering; retry",
                    self.topic, self.index
                ),
            )),
        }
    }

    /// Replaces the log config (alter configs).
    pub fn set_config(&self, config: LogConfig) {
        if let Some(log) = lock(&self.log).as_mut() {
            log.set_config(config);
        }
    }

    /// Stops the writer after it has answered every queued append, then closes
    /// the log (flush and checkpoints, so the next open needs no recovery).
    pub async fn close(&self) -> Result<(), LogError> {
        let fetcher = lock(&self.fetcher).take();
        if let Some(fetcher) = fetcher {
            fetcher.cancel().await;
        }
        self.queue.close();
        let writer = lock(&self.writer).take();
        if let Some(writer) = writer {
            writer.await;
        }
        let log = lock(&self.log).take();
        self.hw_moved.notify(usize::MAX);
        match log {
            Some(log) => smol::unblock(move || log.close(now_ms())).await,
            None => Ok(()),
        }
    }

    fn publish_hw(&self, log: &mut PartitionLog, hw: u64) {
        if hw > log.high_watermark() {
            log.set_high_watermark(hw);
            self.hw.store(log.high_watermark(), Ordering::Release);
            self.hw_moved.notify(usize::MAX);
        }
    }
}

/// The error for a partition this node does not lead.
pub fn not_leader(topic: &str, partition: u32) -> BrokerError {
    BrokerError::new(
        ErrorCode::NotLeaderOrFollower,
        format!(
            "this node does not lead {topic}-{partition}; refresh metadata and send to the leader"
        ),
    )
}

/// Maps a log error on the produce path to the wire error.
pub fn append_error(topic: &str, partition: u32, e: LogError) -> BrokerError {
    let code = match &e {
        LogError::RecordTooLarge { .. } => ErrorCode::MessageTooLarge,
        LogError::InvalidBatch(_) => ErrorCode::CorruptMessage,
        LogError::Io { .. } | LogError::Poisoned { .. } | LogError::Corrupt(_) => {
            ErrorCode::KafkaStorageError
        }
        LogError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        // A leader change cut the records before they were synced: retry with the new leader.
        LogError::TruncatedBeforeSync { .. } => ErrorCode::NotLeaderOrFollower,
        _ => ErrorCode::UnknownServerError,
    };
    let hint = match &e {
        LogError::RecordTooLarge { .. } => format!(
            "; send smaller batches, or raise the limit with \
             `eddy topic alter {topic} --config max.message.bytes=N`"
        ),
        _ if e.is_disk_full() => "; the disk is full: free space or lower retention, then retry \
                                  (nothing acknowledged was lost)"
            .to_owned(),
        LogError::Io { .. } => "; retry later".to_owned(),
        LogError::InvalidBatch(_) => "; the batch was rejected, nothing was appended".to_owned(),
        _ => String::new(),
    };
    BrokerError::new(code, format!("{topic}-{partition}: {e}{hint}"))
}

enum Wake {
    Synced((SyncJob, io::Result<()>)),
    Request(AppendRequest),
    Closed,
    FlushDue,
}

/// An fsync running on a blocking thread, with its outcome.
pub(crate) type SyncTask = Task<(SyncJob, io::Result<()>)>;

/// Runs `job` (taken under the log's lock) on a blocking thread, off the lock.
pub(crate) fn sync_in_background(job: SyncJob) -> SyncTask {
    smol::unblock(move || {
        let result = job.run();
        (job, result)
    })
}

/// The writer task's state.
/// An append answered once it is durable.
struct Waiting {
    /// The offset after its records.
    end: u64,
    /// The log's truncation count when it was appended.
    truncations: u64,
    reply: Reply,
    answer: Appended,
}

struct Writer {
    partition: Arc<Partition>,
    requests: async_channel::Receiver<AppendRequest>,
    /// The fsync running on a blocking thread.
    in_flight: Option<SyncTask>,
    /// Appends answered only once durable, in log order.
    waiting: VecDeque<Waiting>,
    /// Whether `flush.ms` may make a flush due (cleared when nothing can be synced,
    /// so an unsyncable state never spins the timer).
    flush_armed: bool,
    /// The `flush.ms` timer and the deadline (ms) it is set for. It is kept
    /// across turns of the loop and set again only when the deadline moves:
    /// every new async-io timer wakes whichever thread waits on the reactor
    /// (the I/O worker), and this task runs on a compute worker.
    flush_timer: Timer,
    flush_timer_at: Option<i64>,
    closed: bool,
}

impl Writer {
    fn new(partition: Arc<Partition>, requests: async_channel::Receiver<AppendRequest>) -> Writer {
        Writer {
            partition,
            requests,
            in_flight: None,
            waiting: VecDeque::new(),
            flush_armed: false,
            flush_timer: Timer::never(),
            flush_timer_at: None,
            closed: false,
        }
    }

    async fn run(mut self) {
        loop {
            if self.closed && self.in_flight.is_none() && self.waiting.is_empty() {
                return;
            }
            let flush_at = self.flush_deadline();
            if flush_at != self.flush_timer_at {
                self.flush_timer_at = flush_at;
                match flush_at {
                    Some(at) => {
                        let ms = at.saturating_sub(now_ms()).max(0) as u64;
                        self.flush_timer.set_after(Duration::from_millis(ms));
                    }
                    None => self.flush_timer = Timer::never(),
                }
            }
            let wake = {
                let in_flight = &mut self.in_flight;
                let requests = &self.requests;
                let closed = self.closed;
                let synced = async move {
                    match in_flight.as_mut() {
                        Some(task) => Wake::Synced(task.await),
                        None => futures_lite::future::pending().await,
                    }
                };
                let request = async move {
                    if closed {
                        return futures_lite::future::pending().await;
                    }
                    match requests.recv().await {
                        Ok(r) => Wake::Request(r),
                        Err(_) => Wake::Closed,
                    }
                };
                let flush_timer = &mut self.flush_timer;
                let timer = async move {
                    flush_timer.await;
                    Wake::FlushDue
                };
                // A finished fsync goes first, so a busy queue cannot starve acks.
                synced.or(request).or(timer).await
            };
            match wake {
                Wake::Synced((job, result)) => {
                    self.in_flight = None;
                    self.finish_sync(&job, result);
                }
                Wake::Request(first) => self.append_group(first),
                Wake::Closed => self.closed = true,
                // The timer has fired: set it again if still needed.
                Wake::FlushDue => self.flush_timer_at = None,
            }
            self.maybe_start_sync();
        }
    }

    /// When (ms since the epoch) `flush.ms` calls for an fsync, when no
    /// fsync runs.
    fn flush_deadline(&self) -> Option<i64> {
        if self.in_flight.is_some() || !self.flush_armed {
            return None;
        }
        self.partition
            .with_log(|log| Ok(log.flush_deadline_ms()))
            .ok()
            .flatten()
    }

    fn append_group(&mut self, first: AppendRequest) {
        let mut group = Vec::with_capacity(8);
        group.push(first);
        while group.len() < APPEND_GROUP_REQUESTS_MAX {
            match self.requests.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let now = now_ms();
        let p = &*self.partition;
        let mut answers = Vec::with_capacity(group.len());
        {
            let mut guard = lock(&p.log);
            let Some(log) = guard.as_mut() else {
                drop(guard);
                for r in group {
                    let _ = r.reply.try_send(Err(p.closed_error()));
                }
                return;
            };
            let durable_acks = log.config().flush_messages == Some(1);
            let mut appended_now = false;
            let epoch = match &*lock(&p.role) {
                Role::Single => Some(LEADER_EPOCH),
                Role::Leader(l) => Some(l.epoch),
                _ => None,
            };
            let Some(epoch) = epoch else {
                drop(guard);
                for r in group {
                    let _ = r.reply.try_send(Err(not_leader(&p.topic, p.index)));
                }
                return;
            };
            for mut request in group {
                match log.append_validated(&mut request.batches, request.checked, epoch, now) {
                    Ok(info) => {
                        self.flush_armed = true;
                        let answer = appended(&info, log.log_start_offset());
                        if durable_acks {
                            self.waiting.push_back(Waiting {
                                end: info.last_offset + 1,
                                truncations: log.truncations().0,
                                reply: request.reply,
                                answer,
                            });
                        } else {
                            appended_now = true;
                            answers.push((request.reply, Ok(answer)));
                        }
                    }
                    Err(e) => {
                        answers.push((request.reply, Err(append_error(&p.topic, p.index, e))));
                    }
                }
            }
            if appended_now {
                p.advance_hw(log);
            }
            p.appended.notify(usize::MAX);
        }
        for (reply, answer) in answers {
            // The requester may have gone (connection closed); nothing to do then.
            let _ = reply.try_send(answer);
        }
    }

    fn maybe_start_sync(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        let now = now_ms();
        let wanted = !self.waiting.is_empty();
        let p = &*self.partition;
        let job = p.with_log(|log| {
            if wanted || (self.flush_armed && log.flush_due(now)) {
                log.begin_sync()
                    .map_err(|e| append_error(&p.topic, p.index, e))
            } else {
                Ok(None)
            }
        });
        match job {
            Ok(Some(job)) => {
                self.in_flight = Some(sync_in_background(job));
            }
            Ok(None) => {
                // Everything appended is already durable (or nothing is due).
                if wanted
                    && let Ok(now) = p.with_log(|log| Ok((log.durable_offset(), log.truncations())))
                {
                    self.complete_waiting(now);
                }
                if self.waiting.is_empty() && wanted {
                    self.flush_armed = false;
                }
            }
            Err(e) => {
                self.flush_armed = false;
                self.fail_waiting(&e);
            }
        }
    }

    fn finish_sync(&mut self, job: &SyncJob, result: io::Result<()>) {
        let p = &*self.partition;
        p.syncs.fetch_add(1, Ordering::Relaxed);
        let outcome = p.with_log(|log| {
            let durable = log
                .finish_sync(job, result)
                .map_err(|e| append_error(&p.topic, p.index, e))?;
            if log.config().flush_messages == Some(1) || !self.waiting.is_empty() {
                match p.role() {
                    Role::Single => p.publish_hw(log, durable),
                    _ => p.advance_hw(log),
                }
            }
            Ok((durable, log.truncations()))
        });
        match outcome {
            Ok(now) => self.complete_waiting(now),
            Err(e) => {
                self.flush_armed = false;
                self.fail_waiting(&e);
            }
        }
    }

    /// Answers the appends now durable. `now` is the log's durable offset
    /// and its [`PartitionLog::truncations`]: an append a truncation may have
    /// cut since it was made (its records gone, their offsets perhaps
    /// refilled by the new leader's) fails with NotLeaderOrFollower instead.
    fn complete_waiting(&mut self, now: (u64, (u64, u64))) {
        let (durable, (truncations, truncated_to)) = now;
        while let Some(w) = self.waiting.front() {
            let cut = w.truncations != truncations
                && (truncations - w.truncations > 1 || truncated_to < w.end);
            if !cut && w.end > durable {
                break;
            }
            if let Some(w) = self.waiting.pop_front() {
                let answer = if cut {
                    Err(not_leader(&self.partition.topic, self.partition.index))
                } else {
                    Ok(w.answer)
                };
                let _ = w.reply.try_send(answer);
            }
        }
    }

    fn fail_waiting(&mut self, e: &BrokerError) {
        for w in self.waiting.drain(..) {
            let _ = w.reply.try_send(Err(e.clone()));
        }
    }
}

fn appended(info: &AppendInfo, log_start_offset: u64) -> Appended {
    Appended {
        base_offset: info.base_offset,
        log_append_time: info.log_append_time,
        log_start_offset,
        next_offset: info.last_offset + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG: i64 = 2000;

    /// Leader 0 in an epoch starting at 10, followers 1 and 2 at `leos`
    /// (caught up at the given times), ISR `isr`.
    fn leader(isr: &[u32], followers: &[(u32, u64, i64)]) -> LeaderState {
        LeaderState {
            me: 0,
            epoch: 3,
            epoch_start: 10,
            replicas: vec![0, 1, 2],
            isr: isr.to_vec(),
            followers: followers
                .iter()
                .map(|&(id, leo, caught_up_ms)| {
                    let mut f = FollowerProgress::new(caught_up_ms);
                    f.leo = leo;
                    (id, f)
                })
                .collect(),
            isr_proposed_ms: 0,
        }
    }

    #[test]
    fn a_member_that_stopped_fetching_leaves_although_it_holds_the_high_watermark() {
        // Follower 2 stopped at 40 and last reached the log end at t=1000;
        // it holds the high watermark at 40.
        let l = leader(&[0, 1, 2], &[(1, 100, 9_000), (2, 40, 1_000)]);
        let hw = l.high_watermark(100);
        assert_eq!(hw, 40);
        assert_eq!(l.isr_proposal(100, hw, 9_000, LAG), Some(vec![0, 1]));
        // Within replica.lag.time.max.ms it stays.
        assert_eq!(l.isr_proposal(100, hw, 1_000 + LAG, LAG), None);
    }

    #[test]
    fn a_replica_outside_the_isr_joins_at_the_high_watermark_and_the_epoch_start() {
        // Follower 2 is out; the high watermark (leader and follower 1) is 100.
        let behind = leader(&[0, 1], &[(1, 100, 9_000), (2, 99, 1_000)]);
        assert_eq!(behind.isr_proposal(100, 100, 9_000, LAG), None);
        let caught_up = leader(&[0, 1], &[(1, 100, 9_000), (2, 100, 9_000)]);
        assert_eq!(
            caught_up.isr_proposal(100, 100, 9_000, LAG),
            Some(vec![0, 1, 2])
        );
        // At the high watermark but before this epoch's start (a new leader
        // whose high watermark is still behind): not yet.
        let before_epoch = leader(&[0, 1], &[(1, 5, 9_000), (2, 5, 9_000)]);
        assert_eq!(before_epoch.isr_proposal(20, 5, 9_000, LAG), None);
    }

    #[test]
    fn a_replica_that_stopped_fetching_at_the_high_watermark_does_not_join() {
        // Follower 2 left the ISR and was at the high watermark when it last
        // fetched (t=1000); nothing was produced since, so it still "has"
        // everything, but it is not fetching: it must not be proposed.
        let idle = leader(&[0, 1], &[(1, 100, 9_000), (2, 100, 1_000)]);
        assert_eq!(
            idle.isr_proposal(100, 100, 1_000 + LAG, LAG),
            Some(vec![0, 1, 2])
        );
        assert_eq!(idle.isr_proposal(100, 100, 1_001 + LAG, LAG), None);
    }

    #[test]
    fn a_follower_keeping_pace_under_steady_production_counts_as_caught_up() {
        let mut f = FollowerProgress::new(0);
        // The leader's end moves on between fetches: the follower is never
        // at the end, but always reaches where the end was one fetch ago.
        f.fetched(0, 10, 100);
        assert_eq!(f.caught_up_ms, 0, "behind, and no fetch before");
        f.fetched(10, 20, 200);
        assert_eq!(f.caught_up_ms, 100, "had what the leader had at t=100");
        f.fetched(20, 30, 300);
        assert_eq!(f.caught_up_ms, 200);
        f.fetched(30, 30, 400);
        assert_eq!(f.caught_up_ms, 400, "at the end");
        // A follower falling behind keeps its last caught-up time.
        f.fetched(31, 90, 500);
        f.fetched(35, 150, 600);
        f.fetched(40, 210, 5_000);
        assert_eq!((f.leo, f.caught_up_ms), (40, 400));
    }

    #[test]
    fn an_unchanged_isr_proposes_nothing() {
        let l = leader(&[2, 0, 1], &[(1, 100, 9_000), (2, 100, 9_000)]);
        assert_eq!(l.isr_proposal(100, 100, 9_000, LAG), None);
    }
}
