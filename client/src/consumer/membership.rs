//! Group management for [`Consumer`]: subscribe, the join / re-join protocol,
//! the background heartbeat, commits and the rebalance listener.
//!
//! The coordinator computes assignments. `poll` joins when the consumer has no
//! generation yet or the heartbeat task learnt that the group is rebalancing
//! (`RebalanceInProgress`) or that this member was fenced (`UnknownMemberId`,
//! `IllegalGeneration`). With an eager strategy (`range`, `roundrobin`) every
//! partition is revoked (after a commit, with auto-commit) before re-joining;
//! with `cooperative-sticky` the member keeps consuming what it keeps, revokes
//! only what moved, and re-joins once more so the coordinator can hand those
//! partitions over.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_listener::Event;
use futures_lite::FutureExt as _;

use super::{ConsumeError, Consumer};
use crate::connection::{Client, ClientError};
use crate::group::JoinRequest;
use crate::protocol::{CommitOffset, CommittedOffset, ErrorCode};

/// Called by `poll` around rebalances (Kafka's `ConsumerRebalanceListener`).
/// Positions of revoked partitions were already committed when
/// `enable_auto_commit` is on; a consumer that commits by hand should commit
/// after processing each `poll` (then nothing is left to commit here).
pub trait RebalanceListener: Send {
    /// Partitions this member no longer owns (it will stop reading them).
    fn on_partitions_revoked(&mut self, _partitions: &[(String, u32)]) {}
    /// Partitions newly assigned to this member.
    fn on_partitions_assigned(&mut self, _partitions: &[(String, u32)]) {}
    /// Partitions lost without a clean hand-over (the member was fenced:
    /// another member may own them already, so committing is pointless).
    /// Defaults to [`RebalanceListener::on_partitions_revoked`].
    fn on_partitions_lost(&mut self, partitions: &[(String, u32)]) {
        self.on_partitions_revoked(partitions);
    }
}

/// What the heartbeat task and `poll` share.
#[derive(Debug, Default)]
struct HeartbeatState {
    member_id: String,
    generation: i32,
    /// Joined at least once and not fenced since.
    active: bool,
    /// `poll` must re-join.
    rejoin: bool,
    /// The member was fenced: its partitions are lost, not revoked.
    lost: bool,
    /// The consumer is closing: the heartbeat task stops.
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<HeartbeatState>,
    /// Wakes the heartbeat task after a join.
    joined: Event,
    /// Wakes `poll` when it must re-join.
    wake_tx: async_channel::Sender<()>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, HeartbeatState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn request_rejoin(&self, fenced: bool) {
        {
            let mut s = self.state();
            s.rejoin = true;
            if fenced {
                s.lost = true;
                s.active = false;
            }
        }
        let _ = self.wake_tx.try_send(());
    }
}

/// A subscription and the member's place in its group.
pub(super) struct Membership {
    group: String,
    topics: Vec<String>,
    listener: Option<Box<dyn RebalanceListener>>,
    shared: Arc<Shared>,
    wake_rx: async_channel::Receiver<()>,
    heartbeat: Option<smol::Task<()>>,
    strategy: String,
    last_auto_commit: Instant,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("group", &self.group)
            .field("topics", &self.topics)
            .field("strategy", &self.strategy)
            .field("state", &*self.shared.state())
            .finish_non_exhaustive()
    }
}

impl Membership {
    pub(super) fn wake_receiver(&self) -> async_channel::Receiver<()> {
        self.wake_rx.clone()
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.shared.state().closed = true;
        self.shared.joined.notify(usize::MAX);
    }
}

fn is_fenced(code: Option<ErrorCode>) -> bool {
    matches!(
        code,
        Some(ErrorCode::UnknownMemberId | ErrorCode::IllegalGeneration)
    )
}

/// Most join attempts in one re-join (each long-polls up to the rebalance
/// timeout; retriable failures back off).
const JOIN_ATTEMPTS_MAX: u32 = 10;

impl Consumer {
    /// Subscribes to `topics` as a member of `group_id` (required): the
    /// coordinator assigns partitions, and `poll` follows its rebalances.
    /// Replaces a manual assignment or an earlier subscription.
    pub fn subscribe(&mut self, topics: Vec<String>) -> Result<(), ConsumeError> {
        self.subscribe_inner(topics, None)
    }

    /// [`Consumer::subscribe`] with a listener called around rebalances.
    pub fn subscribe_with_listener(
        &mut self,
        topics: Vec<String>,
        listener: impl RebalanceListener + 'static,
    ) -> Result<(), ConsumeError> {
        self.subscribe_inner(topics, Some(Box::new(listener)))
    }

    fn subscribe_inner(
        &mut self,
        topics: Vec<String>,
        listener: Option<Box<dyn RebalanceListener>>,
    ) -> Result<(), ConsumeError> {
        let Some(group) = self.config.group_id.clone() else {
            return Err(ConsumeError::Config(
                "subscribe needs a group.id (ConsumerConfig::group_id)".into(),
            ));
        };
        let topics: Vec<String> = topics
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if topics.is_empty() || topics.iter().any(String::is_empty) {
            return Err(ConsumeError::Config(
                "subscribe to at least one topic, with non-empty names".into(),
            ));
        }
        // Keep the membership (and its member id) when only the topics change.
        if let Some(g) = self.group.as_mut()
            && g.group == group
        {
            g.topics = topics;
            if listener.is_some() {
                g.listener = listener;
            }
            g.shared.request_rejoin(false);
            return Ok(());
        }
        self.group = None;
        self.set_assignment(Vec::new());
        let (wake_tx, wake_rx) = async_channel::bounded(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(HeartbeatState {
                rejoin: true,
                ..HeartbeatState::default()
            }),
            joined: Event::new(),
            wake_tx,
        });
        let heartbeat = self.client.spawn(heartbeat_loop(
            self.client.clone(),
            group.clone(),
            shared.clone(),
            self.config.heartbeat_interval_ms,
            self.config.retry_backoff_ms,
        ));
        self.group = Some(Membership {
            group,
            topics,
            listener,
            shared,
            wake_rx,
            heartbeat: Some(heartbeat),
            strategy: String::new(),
            last_auto_commit: Instant::now(),
        });
        Ok(())
    }

    /// The subscribed topics (empty without a subscription).
    pub fn subscription(&self) -> Vec<String> {
        self.group
            .as_ref()
            .map(|g| g.topics.clone())
            .unwrap_or_default()
    }

    /// This member's id and generation, once it has joined.
    pub fn group_generation(&self) -> Option<(String, i32)> {
        let g = self.group.as_ref()?;
        let s = g.shared.state();
        s.active.then(|| (s.member_id.clone(), s.generation))
    }

    /// Leaves the group: commits (with auto-commit), revokes every partition,
    /// and tells the coordinator, so the others take over at once.
    pub async fn unsubscribe(&mut self) -> Result<(), ConsumeError> {
        let Some(mut g) = self.group.take() else {
            return Ok(());
        };
        let owned = self.assignment();
        let (member_id, active) = {
            let s = g.shared.state();
            (s.member_id.clone(), s.active)
        };
        let mut first_error = None;
        if active && self.config.enable_auto_commit && !owned.is_empty() {
            let offsets = self.positions_to_commit(None);
            let generation = g.shared.state().generation;
            if let Err(e) = self
                .commit_as(&g.group, &member_id, generation, offsets)
                .await
            {
                log::warn!("commit before leaving group {} failed: {e}", g.group);
                first_error = Some(e);
            }
        }
        if let Some(listener) = g.listener.as_mut()
            && !owned.is_empty()
        {
            listener.on_partitions_revoked(&owned);
        }
        self.set_assignment(Vec::new());
        if active
            && let Err(e) = self.client.leave_group(&g.group, &member_id).await
            && !is_fenced(e.code())
        {
            first_error.get_or_insert(ConsumeError::Client(e));
        }
        g.heartbeat.take();
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Leaves the group (see [`Consumer::unsubscribe`]) and drops the consumer.
    pub async fn close(mut self) -> Result<(), ConsumeError> {
        self.unsubscribe().await
    }

    /// Commits the current positions of every assigned partition (the offset of
    /// the next record `poll` returns) and waits until the node has synced them.
    /// Fails with `IllegalGeneration` / `UnknownMemberId` when the member was
    /// fenced by a rebalance; the next `poll` re-joins.
    pub async fn commit_sync(&mut self) -> Result<(), ConsumeError> {
        let offsets = self.positions_to_commit(None);
        self.commit_offsets(offsets).await
    }

    /// Commits the given offsets (each the next offset to read) and waits.
    pub async fn commit_offsets(&mut self, offsets: Vec<CommitOffset>) -> Result<(), ConsumeError> {
        let (group, member_id, generation) = self.commit_identity()?;
        let result = self
            .commit_as(&group, &member_id, generation, offsets)
            .await;
        if let Err(e) = &result
            && let Some(g) = &self.group
        {
            match e.code() {
                Some(code) if is_fenced(Some(code)) => g.shared.request_rejoin(true),
                Some(ErrorCode::RebalanceInProgress) => g.shared.request_rejoin(false),
                _ => {}
            }
        }
        result
    }

    /// Starts committing the current positions and returns at once; await the
    /// task for the outcome, or detach it.
    pub fn commit_async(&self) -> smol::Task<Result<(), ConsumeError>> {
        let offsets = self.positions_to_commit(None);
        let identity = self.commit_identity();
        let client = self.client.clone();
        let shared = self.group.as_ref().map(|g| g.shared.clone());
        smol::spawn(async move {
            let (group, member_id, generation) = identity?;
            if offsets.is_empty() {
                return Ok(());
            }
            let result = client
                .commit_offsets(&group, &member_id, generation, offsets)
                .await
                .map_err(ConsumeError::Client);
            if let (Err(e), Some(shared)) = (&result, shared)
                && is_fenced(e.code())
            {
                shared.request_rejoin(true);
            }
            result
        })
    }

    /// The group's committed offsets of `partitions` (partitions without one
    /// are left out).
    pub async fn committed(
        &self,
        partitions: &[(String, u32)],
    ) -> Result<BTreeMap<(String, u32), CommittedOffset>, ConsumeError> {
        let Some(group) = self.config.group_id.as_deref() else {
            return Err(ConsumeError::Config(
                "committed offsets need a group.id".into(),
            ));
        };
        let found = self
            .client
            .fetch_offsets(group, Some(partitions.to_vec()))
            .await?;
        Ok(found
            .into_iter()
            .map(|c| ((c.topic.clone(), c.partition), c))
            .collect())
    }

    fn commit_identity(&self) -> Result<(String, String, i32), ConsumeError> {
        if let Some(g) = &self.group {
            let s = g.shared.state();
            if s.active {
                return Ok((g.group.clone(), s.member_id.clone(), s.generation));
            }
            return Err(ConsumeError::Client(ClientError::Server(
                crate::protocol::ErrorBody {
                    code: ErrorCode::RebalanceInProgress,
                    message: format!(
                        "not a member of group {} yet (or fenced); poll to join first",
                        g.group
                    ),
                },
            )));
        }
        match &self.config.group_id {
            Some(group) => Ok((group.clone(), String::new(), -1)),
            None => Err(ConsumeError::Config(
                "committing offsets needs a group.id".into(),
            )),
        }
    }

    async fn commit_as(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
        offsets: Vec<CommitOffset>,
    ) -> Result<(), ConsumeError> {
        if offsets.is_empty() {
            return Ok(());
        }
        self.client
            .commit_offsets(group, member_id, generation, offsets)
            .await
            .map_err(ConsumeError::Client)
    }

    /// Positions of assigned partitions (of `only`, if given) that have one.
    fn positions_to_commit(&self, only: Option<&BTreeSet<(String, u32)>>) -> Vec<CommitOffset> {
        self.partitions
            .iter()
            .filter(|p| only.is_none_or(|set| set.contains(&(p.topic.to_string(), p.partition))))
            .filter_map(|p| {
                p.position.map(|offset| CommitOffset {
                    topic: p.topic.to_string(),
                    partition: p.partition,
                    offset,
                    metadata: String::new(),
                })
            })
            .collect()
    }

    /// Auto-commit when due, re-join when needed, and committed offsets for
    /// newly assigned partitions. Called at the top of every `poll` round.
    pub(super) async fn group_duties(&mut self) -> Result<(), ConsumeError> {
        let Some(g) = self.group.as_ref() else {
            return Ok(());
        };
        let (rejoin, active) = {
            let s = g.shared.state();
            (s.rejoin, s.active)
        };
        let due = g.last_auto_commit.elapsed()
            >= Duration::from_millis(u64::from(self.config.auto_commit_interval_ms));
        if self.config.enable_auto_commit && active && due {
            if let Some(g) = self.group.as_mut() {
                g.last_auto_commit = Instant::now();
            }
            if let Err(e) = self.commit_sync().await {
                log::warn!("auto-commit failed: {e}");
            }
        }
        if rejoin {
            self.rejoin().await?;
        }
        self.resolve_committed().await
    }

    async fn rejoin(&mut self) -> Result<(), ConsumeError> {
        let Some(g) = self.group.as_mut() else {
            return Ok(());
        };
        let (lost, mut member_id, active, generation) = {
            let mut s = g.shared.state();
            s.rejoin = false;
            let lost = std::mem::take(&mut s.lost);
            (lost, s.member_id.clone(), s.active, s.generation)
        };
        let group = g.group.clone();
        let topics = g.topics.clone();
        let cooperative = g.strategy == "cooperative-sticky";
        let owned = self.assignment();
        if !owned.is_empty() && (lost || !cooperative) {
            if lost {
                log::info!("group {group}: fenced; partitions {owned:?} are lost");
                if let Some(l) = self.group.as_mut().and_then(|g| g.listener.as_mut()) {
                    l.on_partitions_lost(&owned);
                }
            } else {
                if self.config.enable_auto_commit && active {
                    let offsets = self.positions_to_commit(None);
                    if let Err(e) = self
                        .commit_as(&group, &member_id, generation, offsets)
                        .await
                    {
                        log::warn!("group {group}: commit before revoking failed: {e}");
                    }
                }
                if let Some(l) = self.group.as_mut().and_then(|g| g.listener.as_mut()) {
                    l.on_partitions_revoked(&owned);
                }
            }
            self.set_assignment(Vec::new());
        }
        let mut attempts = 0;
        let joined = loop {
            attempts += 1;
            let request = JoinRequest {
                group: group.clone(),
                member_id: member_id.clone(),
                client_id: self.config.client_id.clone(),
                topics: topics.clone(),
                strategies: self.config.partition_assignment_strategy.clone(),
                session_timeout_ms: self.config.session_timeout_ms,
                rebalance_timeout_ms: self.config.rebalance_timeout_ms,
                owned: self.assignment(),
            };
            match self.client.join_group(request).await {
                Ok(joined) => break joined,
                Err(e) if attempts < JOIN_ATTEMPTS_MAX && is_fenced(e.code()) => {
                    log::info!("group {group}: {e}; joining as a new member");
                    member_id.clear();
                }
                Err(e)
                    if attempts < JOIN_ATTEMPTS_MAX
                        && (e.is_retriable()
                            || e.code() == Some(ErrorCode::RebalanceInProgress)) =>
                {
                    log::debug!("group {group}: join failed ({e}); retrying");
                    smol::Timer::after(Duration::from_millis(u64::from(
                        self.config.retry_backoff_ms,
                    )))
                    .await;
                }
                Err(e) => {
                    // Try again on the next poll.
                    if let Some(g) = &self.group {
                        g.shared.state().rejoin = true;
                    }
                    return Err(ConsumeError::Client(e));
                }
            }
        };
        log::info!(
            "group {group}: generation {} as {} ({}), assigned {:?}",
            joined.generation,
            joined.member_id,
            joined.strategy,
            joined.assignment
        );
        let new: BTreeSet<(String, u32)> = joined.assignment.iter().cloned().collect();
        let current: BTreeSet<(String, u32)> = self.assignment().into_iter().collect();
        let revoked: Vec<(String, u32)> = current.difference(&new).cloned().collect();
        let added: Vec<(String, u32)> = new.difference(&current).cloned().collect();
        let cooperative = joined.strategy == "cooperative-sticky";
        let mut again = false;
        if !revoked.is_empty() {
            // Cooperative: hand over what moved, then re-join so it can be assigned.
            if self.config.enable_auto_commit {
                let set: BTreeSet<(String, u32)> = revoked.iter().cloned().collect();
                let offsets = self.positions_to_commit(Some(&set));
                if let Err(e) = self
                    .commit_as(&group, &joined.member_id, joined.generation, offsets)
                    .await
                {
                    log::warn!("group {group}: commit before revoking failed: {e}");
                }
            }
            if let Some(l) = self.group.as_mut().and_then(|g| g.listener.as_mut()) {
                l.on_partitions_revoked(&revoked);
            }
            again = cooperative;
        }
        self.set_assignment(joined.assignment.clone());
        for p in &mut self.partitions {
            if added.contains(&(p.topic.to_string(), p.partition)) {
                p.pending_committed = true;
                p.position = None;
            }
        }
        let Some(g) = self.group.as_mut() else {
            return Ok(());
        };
        g.strategy = joined.strategy.clone();
        g.last_auto_commit = Instant::now();
        {
            let mut s = g.shared.state();
            s.member_id = joined.member_id;
            s.generation = joined.generation;
            s.active = true;
            s.lost = false;
            s.rejoin |= again;
        }
        g.shared.joined.notify(usize::MAX);
        if again {
            let _ = g.shared.wake_tx.try_send(());
        }
        if let Some(l) = g.listener.as_mut()
            && !added.is_empty()
        {
            l.on_partitions_assigned(&added);
        }
        Ok(())
    }

    /// Seeks newly assigned partitions to their committed offsets; those
    /// without one start per `auto_offset_reset`.
    async fn resolve_committed(&mut self) -> Result<(), ConsumeError> {
        let now = Instant::now();
        let wanted: Vec<(String, u32)> = self
            .partitions
            .iter()
            .filter(|p| p.pending_committed && p.retry_at.is_none_or(|t| t <= now))
            .map(|p| (p.topic.to_string(), p.partition))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let found = match self.committed(&wanted).await {
            Ok(found) => found,
            Err(e) if e.is_retriable() => {
                for i in 0..self.partitions.len() {
                    if self.partitions[i].pending_committed {
                        self.back_off(i, &e);
                    }
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for p in &mut self.partitions {
            if !p.pending_committed {
                continue;
            }
            match found.get(&(p.topic.to_string(), p.partition)) {
                Some(c) => {
                    log::debug!(
                        "{}-{} starts at committed offset {}",
                        p.topic,
                        p.partition,
                        c.offset
                    );
                    p.reset_to(c.offset);
                }
                None => p.pending_committed = false,
            }
        }
        Ok(())
    }
}

/// Heartbeats while the member is active; tells `poll` to re-join when the
/// coordinator says so. Each heartbeat long-polls up to the interval on the
/// node, which answers early when a rebalance starts.
async fn heartbeat_loop(
    client: Client,
    group: String,
    shared: Arc<Shared>,
    interval_ms: u32,
    retry_backoff_ms: u32,
) {
    let interval = Duration::from_millis(u64::from(interval_ms));
    loop {
        let listener = shared.joined.listen();
        let (member_id, generation, active, closed) = {
            let s = shared.state();
            (s.member_id.clone(), s.generation, s.active, s.closed)
        };
        if closed {
            return;
        }
        if !active {
            // Bounded: look again at least once per interval.
            async {
                listener.await;
            }
            .or(async {
                smol::Timer::after(interval).await;
            })
            .await;
            continue;
        }
        let started = Instant::now();
        let result = client
            .heartbeat(&group, &member_id, generation, interval_ms)
            .await;
        let current = {
            let s = shared.state();
            s.member_id == member_id && s.generation == generation
        };
        let pause = match result {
            Ok(()) => interval.saturating_sub(started.elapsed()) / 2,
            Err(_) if !current => Duration::ZERO,
            Err(e) => match e.code() {
                Some(ErrorCode::RebalanceInProgress) => {
                    shared.request_rejoin(false);
                    interval
                }
                code if is_fenced(code) => {
                    log::info!("group {group}: {e}");
                    shared.request_rejoin(true);
                    Duration::ZERO
                }
                _ => {
                    log::debug!("group {group}: heartbeat failed: {e}");
                    Duration::from_millis(u64::from(retry_backoff_ms.max(100)))
                }
            },
        };
        if !pause.is_zero() {
            smol::Timer::after(pause).await;
        }
    }
}
