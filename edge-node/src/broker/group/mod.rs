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
    CommitOffset, CommittedOffset, ErrorCode, GroupListing, MemberDescription,
};
use event_listener::Event;
use futures_lite::FutureExt as _;
use log::warn;
use smol::Task;

use super::{Broker, BrokerError, now_ms, shutting_down, unknown_topic};
use offsets::{OFFSET_METADATA_BYTES_MAX, OFFSETS_PER_COMMIT_MAX, OffsetStore};
use state::{Coordinator, GroupView, JoinParams, JoinResult, check_group_id};

/// Longest a heartbeat is held waiting for a rebalance to start.
pub const HEARTBEAT_WAIT_MS_MAX: u32 = 10_000;
/// Extra time a join waits beyond the rebalance timeout before giving up.
const JOIN_SLACK_MS: u64 = 1_000;
/// Longest the ticker sleeps without a deadline.
const TICK_IDLE_MS: u64 = 1_000;

/// The group coordinator and offset store of a broker.
#[derive(Debug)]
pub struct Groups {
    coordinator: Mutex<Coordinator>,
    changed: Event,
    offsets: Mutex<Option<Arc<OffsetStore>>>,
    ticker: Mutex<Option<Task<()>>>,
    epoch: Instant,
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
    /// Groups over an opened offset store.
    pub fn new(offsets: OffsetStore) -> Groups {
        Groups {
            coordinator: Mutex::new(Coordinator::new()),
            changed: Event::new(),
            offsets: Mutex::new(Some(Arc::new(offsets))),
            ticker: Mutex::new(None),
            epoch: Instant::now(),
        }
    }

    /// Monotonic milliseconds for sessions and rebalance deadlines.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis().min(u128::from(u64::MAX)) as u64
    }

    fn store(&self) -> Result<Arc<OffsetStore>, BrokerError> {
        lock(&self.offsets).clone().ok_or_else(shutting_down)
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
        let store = lock(&self.offsets).take();
        let Some(store) = store else { return Ok(()) };
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
        // A maintenance pass for the offsets log, when compaction is due.
        if let Ok(store) = b.groups.store() {
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
        {
            let now = self.groups.now();
            lock(&self.groups.coordinator).heartbeat(group, member_id, generation, now)?;
        }
        let deadline =
            Instant::now() + Duration::from_millis(u64::from(wait_ms.min(HEARTBEAT_WAIT_MS_MAX)));
        loop {
            let listener = self.groups.changed.listen();
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
        let store = self.groups.store()?;
        let group = group.to_owned();
        let now = now_ms();
        smol::unblock(move || store.commit(&group, &offsets, now))
            .await
            .map_err(|e| {
                BrokerError::new(
                    ErrorCode::KafkaStorageError,
                    format!("{e}; nothing acknowledged was lost, retry the commit"),
                )
            })
    }

    /// A group's committed offsets.
    pub fn fetch_offsets(
        &self,
        group: &str,
        partitions: Option<Vec<(String, u32)>>,
    ) -> Result<Vec<CommittedOffset>, BrokerError> {
        self.check_running()?;
        check_group_id(group)?;
        Ok(self.groups.store()?.fetch(group, partitions.as_deref()))
    }

    /// Every group with members or committed offsets.
    pub fn list_groups(&self) -> Result<Vec<GroupListing>, BrokerError> {
        self.check_running()?;
        let mut ids = self.groups.store()?.groups();
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
        let offsets = self.groups.store()?.fetch(group, None);
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
        let store = self.groups.store()?;
        let known = {
            let mut c = lock(&self.groups.coordinator);
            let known = c.describe(group).is_some();
            c.delete(group)?;
            known
        };
        let owned = group.to_owned();
        let now = now_ms();
        let removed = smol::unblock(move || store.delete_group(&owned, now))
            .await
            .map_err(|e| {
                BrokerError::new(
                    ErrorCode::KafkaStorageError,
                    format!("{e}; retry the delete"),
                )
            })?;
        if !known && removed == 0 {
            return Err(group_not_found(group));
        }
        self.groups.notify();
        Ok(())
    }
}

fn group_not_found(group: &str) -> BrokerError {
    BrokerError::new(
        ErrorCode::GroupIdNotFound,
        format!("group {group:?} does not exist; list groups with `eddy group list`"),
    )
}
