//! The group coordinator's state machine, without I/O: requests and the time
//! (`now_ms`) go in, answers and state changes come out. The async service in
//! [`super`] owns one [`Coordinator`] behind a lock, long-polls on its changes
//! and calls [`Coordinator::tick`] at [`Coordinator::next_deadline`].
//!
//! A group moves `Empty → PreparingRebalance → CompletingRebalance → Stable`
//! and back to `PreparingRebalance` when a member joins, leaves, misses
//! `session.timeout.ms`, changes its subscription, or a subscribed topic gains
//! partitions. In `PreparingRebalance` the coordinator waits until every
//! member has re-joined or the rebalance timeout passes (members that did not
//! re-join are dropped), then computes the assignment (server side) and bumps
//! the generation; the group is `CompletingRebalance` until every member has
//! collected its assignment. A deleted group is `Dead`.

use std::collections::{BTreeMap, BTreeSet};

use eddy_client::protocol::ErrorCode;

use super::assignor::{self, Strategy, Subscription, TopicPartition};
use crate::broker::BrokerError;

/// Longest group id accepted, in bytes.
pub const GROUP_ID_BYTES_MAX: usize = 255;
/// Most members in one group.
pub const MEMBERS_PER_GROUP_MAX: usize = 1_000;
/// Most topics one member may subscribe to.
pub const TOPICS_PER_MEMBER_MAX: usize = 1_000;
/// Smallest `session.timeout.ms` accepted (Kafka: `group.min.session.timeout.ms`
/// is 6 s; an edge node allows shorter ones for fast fail-over on a LAN).
pub const SESSION_TIMEOUT_MS_MIN: u32 = 500;
/// Largest `session.timeout.ms` accepted (Kafka's `group.max.session.timeout.ms`).
pub const SESSION_TIMEOUT_MS_MAX: u32 = 1_800_000;
/// Largest rebalance timeout accepted.
pub const REBALANCE_TIMEOUT_MS_MAX: u32 = 3_600_000;

const _: () = assert!(SESSION_TIMEOUT_MS_MIN < SESSION_TIMEOUT_MS_MAX);

/// A group's state, Kafka's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members (offsets may exist).
    Empty,
    /// Waiting for members to (re-)join.
    PreparingRebalance,
    /// Assignment computed, members collecting it.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
    /// Deleted.
    Dead,
}

impl GroupState {
    /// Kafka's name.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// What a member sends when it joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinParams {
    /// `client.id`.
    pub client_id: String,
    /// Topics subscribed to.
    pub topics: Vec<String>,
    /// Strategy names in order of preference.
    pub strategies: Vec<String>,
    /// `session.timeout.ms`.
    pub session_timeout_ms: u32,
    /// Rebalance timeout.
    pub rebalance_timeout_ms: u32,
    /// Partitions owned now.
    pub owned: Vec<TopicPartition>,
}

/// A completed join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResult {
    /// The group's generation.
    pub generation: i32,
    /// The member's id.
    pub member_id: String,
    /// The group's strategy.
    pub strategy: Strategy,
    /// The member's partitions.
    pub assignment: Vec<TopicPartition>,
}

#[derive(Debug, Clone)]
struct Member {
    client_id: String,
    topics: BTreeSet<String>,
    strategies: Vec<Strategy>,
    session_timeout_ms: u32,
    rebalance_timeout_ms: u32,
    owned: Vec<TopicPartition>,
    last_seen_ms: u64,
    /// Joined the rebalance under way.
    joined: bool,
    /// Has not yet collected the assignment of the current generation.
    awaiting: bool,
    assignment: Vec<TopicPartition>,
}

/// One group.
#[derive(Debug, Clone)]
pub struct Group {
    state: GroupState,
    generation: i32,
    strategy: Option<Strategy>,
    members: BTreeMap<String, Member>,
    rebalance_deadline_ms: u64,
    /// Partition counts the current assignment was computed with.
    counts: BTreeMap<String, u32>,
    /// The last assignment held partitions back for owners to revoke.
    pending_revocation: bool,
}

impl Group {
    fn new() -> Group {
        Group {
            state: GroupState::Empty,
            generation: 0,
            strategy: None,
            members: BTreeMap::new(),
            rebalance_deadline_ms: 0,
            counts: BTreeMap::new(),
            pending_revocation: false,
        }
    }
}

/// A member as [`Coordinator::describe`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Id.
    pub member_id: String,
    /// `client.id`.
    pub client_id: String,
    /// Topics.
    pub topics: Vec<String>,
    /// Current assignment.
    pub assignment: Vec<TopicPartition>,
}

/// A group as [`Coordinator::describe`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// State.
    pub state: GroupState,
    /// Generation.
    pub generation: i32,
    /// Strategy in use, if any.
    pub strategy: Option<Strategy>,
    /// Members, by id.
    pub members: Vec<MemberView>,
}

/// Every group of the node.
#[derive(Debug, Default)]
pub struct Coordinator {
    groups: BTreeMap<String, Group>,
    next_member: u64,
}

fn error(code: ErrorCode, message: impl Into<String>) -> BrokerError {
    BrokerError::new(code, message)
}

fn unknown_member(group: &str, member: &str) -> BrokerError {
    error(
        ErrorCode::UnknownMemberId,
        format!(
            "member {member:?} is not in group {group:?} (it left, missed session.timeout.ms, \
             or the group was rebalanced without it); re-join the group"
        ),
    )
}

/// Checks a group id.
pub fn check_group_id(group: &str) -> Result<(), BrokerError> {
    if group.is_empty() || group.len() > GROUP_ID_BYTES_MAX || group.chars().any(char::is_control) {
        return Err(error(
            ErrorCode::InvalidGroupId,
            format!(
                "group id {group:?} is not valid: use 1 to {GROUP_ID_BYTES_MAX} bytes without control characters"
            ),
        ));
    }
    Ok(())
}

impl Coordinator {
    /// A coordinator without groups.
    pub fn new() -> Coordinator {
        Coordinator::default()
    }

    /// Handles a JoinGroup. Returns the member id; the answer comes from
    /// [`Coordinator::join_result`] once the rebalance completes (at once, for a
    /// known member of a stable group whose subscription did not change).
    /// `counts` gives a topic's partition count (`None`: no such topic).
    pub fn join(
        &mut self,
        group_id: &str,
        member_id: &str,
        params: JoinParams,
        now_ms: u64,
        counts: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<String, BrokerError> {
        check_group_id(group_id)?;
        if !(SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&params.session_timeout_ms) {
            return Err(error(
                ErrorCode::InvalidSessionTimeout,
                format!(
                    "session.timeout.ms={} is outside {SESSION_TIMEOUT_MS_MIN}..={SESSION_TIMEOUT_MS_MAX}",
                    params.session_timeout_ms
                ),
            ));
        }
        if params.rebalance_timeout_ms == 0
            || params.rebalance_timeout_ms > REBALANCE_TIMEOUT_MS_MAX
        {
            return Err(error(
                ErrorCode::InvalidRequest,
                format!(
                    "rebalance.timeout.ms={} is outside 1..={REBALANCE_TIMEOUT_MS_MAX}",
                    params.rebalance_timeout_ms
                ),
            ));
        }
        if params.topics.is_empty() || params.topics.len() > TOPICS_PER_MEMBER_MAX {
            return Err(error(
                ErrorCode::InvalidRequest,
                format!(
                    "subscribe to 1 to {TOPICS_PER_MEMBER_MAX} topics (got {})",
                    params.topics.len()
                ),
            ));
        }
        let strategies: Vec<Strategy> = params
            .strategies
            .iter()
            .filter_map(|s| Strategy::from_name(s))
            .collect();
        if strategies.is_empty() {
            return Err(error(
                ErrorCode::InconsistentGroupProtocol,
                format!(
                    "none of the assignment strategies {:?} is known; use range, roundrobin or cooperative-sticky",
                    params.strategies
                ),
            ));
        }
        let group = self
            .groups
            .entry(group_id.to_owned())
            .or_insert_with(Group::new);
        if group.state == GroupState::Dead {
            *group = Group::new();
        }
        let others_share = group
            .members
            .iter()
            .filter(|(id, _)| id.as_str() != member_id)
            .all(|(_, m)| strategies.iter().any(|s| m.strategies.contains(s)));
        if !others_share {
            return Err(error(
                ErrorCode::InconsistentGroupProtocol,
                format!(
                    "group {group_id:?} uses other assignment strategies than {:?}; \
                     use the same partition.assignment.strategy in every member",
                    params.strategies
                ),
            ));
        }
        let topics: BTreeSet<String> = params.topics.into_iter().collect();
        let id = if member_id.is_empty() {
            if group.members.len() >= MEMBERS_PER_GROUP_MAX {
                return Err(error(
                    ErrorCode::InvalidRequest,
                    format!(
                        "group {group_id:?} has {MEMBERS_PER_GROUP_MAX} members, the most allowed"
                    ),
                ));
            }
            self.next_member += 1;
            let prefix: String = params.client_id.chars().take(64).collect();
            let id = format!("{prefix}-{}-{:x}", self.next_member, now_ms);
            group.members.insert(
                id.clone(),
                Member {
                    client_id: params.client_id,
                    topics,
                    strategies,
                    session_timeout_ms: params.session_timeout_ms,
                    rebalance_timeout_ms: params.rebalance_timeout_ms,
                    owned: params.owned,
                    last_seen_ms: now_ms,
                    joined: true,
                    awaiting: false,
                    assignment: Vec::new(),
                },
            );
            if group.state != GroupState::PreparingRebalance {
                start_rebalance(group, now_ms);
            }
            if let Some(m) = group.members.get_mut(&id) {
                m.joined = true;
            }
            id
        } else {
            let Some(member) = group.members.get_mut(member_id) else {
                return Err(unknown_member(group_id, member_id));
            };
            let changed = member.topics != topics || member.strategies != strategies;
            member.topics = topics;
            member.strategies = strategies;
            member.session_timeout_ms = params.session_timeout_ms;
            member.rebalance_timeout_ms = params.rebalance_timeout_ms;
            member.owned = params.owned;
            member.last_seen_ms = now_ms;
            match group.state {
                GroupState::PreparingRebalance => member.joined = true,
                GroupState::Stable | GroupState::CompletingRebalance => {
                    if changed || group.pending_revocation {
                        start_rebalance(group, now_ms);
                        if let Some(m) = group.members.get_mut(member_id) {
                            m.joined = true;
                        }
                    } else {
                        // Same subscription: the current assignment stands.
                        member.awaiting = true;
                    }
                }
                GroupState::Empty | GroupState::Dead => {
                    start_rebalance(group, now_ms);
                    if let Some(m) = group.members.get_mut(member_id) {
                        m.joined = true;
                    }
                }
            }
            member_id.to_owned()
        };
        maybe_complete(group, now_ms, counts);
        Ok(id)
    }

    /// The answer to a member's pending join: `None` while the rebalance is
    /// under way, else its assignment (once collected, the member is no longer
    /// awaiting) or why it has none.
    pub fn join_result(
        &mut self,
        group_id: &str,
        member_id: &str,
    ) -> Option<Result<JoinResult, BrokerError>> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return Some(Err(unknown_member(group_id, member_id)));
        };
        let generation = group.generation;
        let strategy = group.strategy;
        let state = group.state;
        let Some(member) = group.members.get_mut(member_id) else {
            return Some(Err(unknown_member(group_id, member_id)));
        };
        if state == GroupState::PreparingRebalance {
            return None;
        }
        member.awaiting = false;
        let result = JoinResult {
            generation,
            member_id: member_id.to_owned(),
            strategy: strategy.unwrap_or(Strategy::Range),
            assignment: member.assignment.clone(),
        };
        if state == GroupState::CompletingRebalance && group.members.values().all(|m| !m.awaiting) {
            group.state = GroupState::Stable;
        }
        Some(Ok(result))
    }

    /// Handles a Heartbeat: refreshes the member's session, then says whether
    /// it is in the current generation ([`Coordinator::check_member`]).
    pub fn heartbeat(
        &mut self,
        group_id: &str,
        member_id: &str,
        generation: i32,
        now_ms: u64,
    ) -> Result<(), BrokerError> {
        if let Some(m) = self
            .groups
            .get_mut(group_id)
            .and_then(|g| g.members.get_mut(member_id))
        {
            m.last_seen_ms = now_ms;
        }
        self.check_member(group_id, member_id, generation)
    }

    /// Whether `member_id` of `generation` is current: `UnknownMemberId`,
    /// `RebalanceInProgress` (re-join) or `IllegalGeneration` if not.
    pub fn check_member(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), BrokerError> {
        let Some(group) = self.groups.get(group_id) else {
            return Err(unknown_member(group_id, member_id));
        };
        if !group.members.contains_key(member_id) {
            return Err(unknown_member(group_id, member_id));
        }
        if group.state == GroupState::PreparingRebalance {
            return Err(error(
                ErrorCode::RebalanceInProgress,
                format!("group {group_id:?} is rebalancing; re-join it"),
            ));
        }
        if generation != group.generation {
            return Err(illegal_generation(group_id, generation, group.generation));
        }
        Ok(())
    }

    /// Whether a commit with this member and generation is allowed. A commit
    /// without a member (`generation < 0`, empty id, as from a consumer using
    /// `assign`) is allowed only while the group has no members. A member of
    /// the current generation may commit while a rebalance is under way (it
    /// commits before it re-joins).
    pub fn check_commit(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), BrokerError> {
        check_group_id(group_id)?;
        let group = self.groups.get(group_id);
        let members = group.map_or(0, |g| g.members.len());
        if generation < 0 && member_id.is_empty() {
            if members == 0 {
                return Ok(());
            }
            return Err(error(
                ErrorCode::UnknownMemberId,
                format!(
                    "group {group_id:?} has {members} active member(s): only they may commit; \
                     stop them first, or use another group id for manually assigned consumers"
                ),
            ));
        }
        let Some(group) = group else {
            return Err(unknown_member(group_id, member_id));
        };
        if !group.members.contains_key(member_id) {
            return Err(unknown_member(group_id, member_id));
        }
        if generation != group.generation {
            return Err(illegal_generation(group_id, generation, group.generation));
        }
        Ok(())
    }

    /// Handles a LeaveGroup.
    pub fn leave(
        &mut self,
        group_id: &str,
        member_id: &str,
        now_ms: u64,
        counts: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<(), BrokerError> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return Err(unknown_member(group_id, member_id));
        };
        if group.members.remove(member_id).is_none() {
            return Err(unknown_member(group_id, member_id));
        }
        members_changed(group, now_ms, counts);
        Ok(())
    }

    /// Expires members past their session timeout, completes rebalances whose
    /// time is up, and starts one where a subscribed topic's partition count
    /// changed. Returns whether any group changed.
    pub fn tick(&mut self, now_ms: u64, counts: &dyn Fn(&str) -> Option<u32>) -> bool {
        let mut changed = false;
        for (id, group) in &mut self.groups {
            let before = (group.state, group.generation, group.members.len());
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| {
                    // A member waiting in a join is alive until the rebalance ends.
                    let waiting = group.state == GroupState::PreparingRebalance && m.joined;
                    !waiting
                        && now_ms
                            >= m.last_seen_ms
                                .saturating_add(u64::from(m.session_timeout_ms))
                })
                .map(|(m, _)| m.clone())
                .collect();
            for m in &expired {
                log::info!("group {id}: member {m} missed session.timeout.ms; removing it");
                group.members.remove(m);
            }
            if !expired.is_empty() {
                members_changed(group, now_ms, counts);
            }
            if matches!(
                group.state,
                GroupState::Stable | GroupState::CompletingRebalance
            ) {
                let subscribed: BTreeSet<&String> = group
                    .members
                    .values()
                    .flat_map(|m| m.topics.iter())
                    .collect();
                let grew = subscribed
                    .iter()
                    .any(|t| counts(t.as_str()) != group.counts.get(t.as_str()).copied());
                if grew {
                    log::info!("group {id}: partitions of a subscribed topic changed; rebalancing");
                    start_rebalance(group, now_ms);
                }
            }
            maybe_complete(group, now_ms, counts);
            changed |= before != (group.state, group.generation, group.members.len());
        }
        changed
    }

    /// The earliest time [`Coordinator::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.groups
            .values()
            .flat_map(|g| {
                let rebalance =
                    (g.state == GroupState::PreparingRebalance).then_some(g.rebalance_deadline_ms);
                g.members
                    .values()
                    .map(|m| {
                        m.last_seen_ms
                            .saturating_add(u64::from(m.session_timeout_ms))
                    })
                    .chain(rebalance)
            })
            .min()
    }

    /// A group's state, or `None` if the coordinator has never seen it.
    pub fn describe(&self, group_id: &str) -> Option<GroupView> {
        let g = self.groups.get(group_id)?;
        Some(GroupView {
            state: g.state,
            generation: g.generation,
            strategy: g.strategy,
            members: g
                .members
                .iter()
                .map(|(id, m)| MemberView {
                    member_id: id.clone(),
                    client_id: m.client_id.clone(),
                    topics: m.topics.iter().cloned().collect(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Every group id the coordinator knows.
    pub fn group_ids(&self) -> Vec<String> {
        self.groups.keys().cloned().collect()
    }

    /// Marks a group without members `Dead` and forgets it. `NonEmptyGroup` if
    /// it has members.
    pub fn delete(&mut self, group_id: &str) -> Result<(), BrokerError> {
        if let Some(g) = self.groups.get_mut(group_id) {
            if !g.members.is_empty() {
                return Err(error(
                    ErrorCode::NonEmptyGroup,
                    format!(
                        "group {group_id:?} has {} active member(s); stop its consumers first",
                        g.members.len()
                    ),
                ));
            }
            g.state = GroupState::Dead;
        }
        self.groups.remove(group_id);
        Ok(())
    }

    /// Whether the group has members.
    pub fn has_members(&self, group_id: &str) -> bool {
        self.groups
            .get(group_id)
            .is_some_and(|g| !g.members.is_empty())
    }
}

fn illegal_generation(group_id: &str, got: i32, current: i32) -> BrokerError {
    error(
        ErrorCode::IllegalGeneration,
        format!(
            "generation {got} of group {group_id:?} is over (the group is at generation {current}); \
             this member was fenced: re-join the group"
        ),
    )
}

fn start_rebalance(group: &mut Group, now_ms: u64) {
    let timeout = group
        .members
        .values()
        .map(|m| m.rebalance_timeout_ms)
        .max()
        .unwrap_or(0);
    group.state = GroupState::PreparingRebalance;
    group.rebalance_deadline_ms = now_ms.saturating_add(u64::from(timeout));
    for m in group.members.values_mut() {
        // A member that has not collected its assignment yet is still inside
        // its join request: it takes part in this rebalance.
        m.joined = m.awaiting;
        m.awaiting = false;
    }
}

fn members_changed(group: &mut Group, now_ms: u64, counts: &dyn Fn(&str) -> Option<u32>) {
    match group.state {
        GroupState::Stable | GroupState::CompletingRebalance => start_rebalance(group, now_ms),
        GroupState::PreparingRebalance => {}
        GroupState::Empty | GroupState::Dead => return,
    }
    if group.members.is_empty() {
        group.state = GroupState::PreparingRebalance;
    }
    maybe_complete(group, now_ms, counts);
}

/// Completes the rebalance once every member joined or the time is up.
fn maybe_complete(group: &mut Group, now_ms: u64, counts: &dyn Fn(&str) -> Option<u32>) {
    if group.state != GroupState::PreparingRebalance {
        return;
    }
    let all_joined = group.members.values().all(|m| m.joined);
    if !all_joined && now_ms < group.rebalance_deadline_ms {
        return;
    }
    group.members.retain(|_, m| m.joined);
    group.generation = group.generation.saturating_add(1);
    if group.members.is_empty() {
        group.state = GroupState::Empty;
        group.strategy = None;
        group.counts.clear();
        group.pending_revocation = false;
        return;
    }
    // The first strategy (in the first member's order) every member supports.
    let first = group.members.values().next().map(|m| m.strategies.clone());
    let strategy = first
        .unwrap_or_default()
        .into_iter()
        .find(|s| group.members.values().all(|m| m.strategies.contains(s)))
        .unwrap_or(Strategy::Range);
    let topics: BTreeSet<String> = group
        .members
        .values()
        .flat_map(|m| m.topics.iter().cloned())
        .collect();
    let partition_counts: BTreeMap<String, u32> = topics
        .into_iter()
        .filter_map(|t| counts(&t).map(|c| (t, c)))
        .collect();
    let subs: BTreeMap<String, Subscription> = group
        .members
        .iter()
        .map(|(id, m)| {
            (
                id.clone(),
                Subscription {
                    topics: m.topics.clone(),
                    owned: m.owned.clone(),
                },
            )
        })
        .collect();
    let target = assignor::assign(strategy, &subs, &partition_counts);
    let (given, held) = if strategy.is_cooperative() {
        assignor::withhold_owned_elsewhere(&target, &subs)
    } else {
        (target, false)
    };
    for (id, m) in &mut group.members {
        m.assignment = given.get(id).cloned().unwrap_or_default();
        m.joined = false;
        m.awaiting = true;
        m.last_seen_ms = now_ms;
    }
    group.strategy = Some(strategy);
    group.counts = partition_counts;
    group.pending_revocation = held;
    group.state = GroupState::CompletingRebalance;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(topics: &[&str], strategy: &str, owned: &[(&str, u32)]) -> JoinParams {
        JoinParams {
            client_id: "c".into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            strategies: vec![strategy.into()],
            session_timeout_ms: 1000,
            rebalance_timeout_ms: 5000,
            owned: owned.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
        }
    }

    fn six(topic: &str) -> Option<u32> {
        (topic == "t").then_some(6)
    }

    fn join_all(c: &mut Coordinator, members: &[String]) -> BTreeMap<String, JoinResult> {
        members
            .iter()
            .map(|m| (m.clone(), c.join_result("g", m).expect("done").expect("ok")))
            .collect()
    }

    #[test]
    fn first_member_gets_everything_then_a_second_triggers_a_rebalance() {
        let mut c = Coordinator::new();
        let a = c
            .join("g", "", params(&["t"], "range", &[]), 0, &six)
            .expect("join");
        let r = c.join_result("g", &a).expect("done").expect("ok");
        assert_eq!(r.generation, 1);
        assert_eq!(r.assignment.len(), 6);
        assert_eq!(c.describe("g").expect("group").state, GroupState::Stable);
        let b = c
            .join("g", "", params(&["t"], "range", &[]), 10, &six)
            .expect("join");
        assert!(c.join_result("g", &b).is_none(), "waits for a");
        assert!(matches!(
            c.heartbeat("g", &a, 1, 20),
            Err(e) if e.code == ErrorCode::RebalanceInProgress
        ));
        // a may still commit for generation 1 before it re-joins.
        c.check_commit("g", &a, 1).expect("commit during rebalance");
        c.join("g", &a, params(&["t"], "range", &[]), 30, &six)
            .expect("rejoin");
        let results = join_all(&mut c, &[a.clone(), b.clone()]);
        assert_eq!(results[&a].generation, 2);
        assert_eq!(
            results[&a].assignment.len() + results[&b].assignment.len(),
            6
        );
        assert_eq!(results[&a].assignment.len(), 3);
        // Generation 1 is fenced now.
        assert!(matches!(
            c.check_commit("g", &a, 1),
            Err(e) if e.code == ErrorCode::IllegalGeneration
        ));
        assert!(matches!(
            c.check_commit("g", "", -1),
            Err(e) if e.code == ErrorCode::UnknownMemberId
        ));
    }

    #[test]
    fn a_member_that_misses_its_session_is_dropped() {
        let mut c = Coordinator::new();
        let a = c
            .join("g", "", params(&["t"], "range", &[]), 0, &six)
            .expect("join");
        let b = c
            .join("g", "", params(&["t"], "range", &[]), 0, &six)
            .expect("join");
        c.join("g", &a, params(&["t"], "range", &[]), 0, &six)
            .expect("rejoin");
        join_all(&mut c, &[a.clone(), b.clone()]);
        // b keeps heartbeating, a goes silent.
        c.heartbeat("g", &b, 2, 900).expect("hb");
        assert!(!c.tick(999, &six));
        assert!(c.tick(1000, &six), "a expired");
        assert!(matches!(
            c.heartbeat("g", &a, 2, 1000),
            Err(e) if e.code == ErrorCode::UnknownMemberId
        ));
        assert!(matches!(
            c.heartbeat("g", &b, 2, 1000),
            Err(e) if e.code == ErrorCode::RebalanceInProgress
        ));
        c.join("g", &b, params(&["t"], "range", &[]), 1001, &six)
            .expect("rejoin");
        let r = c.join_result("g", &b).expect("done").expect("ok");
        assert_eq!(r.assignment.len(), 6);
        assert_eq!(r.generation, 3);
    }

    #[test]
    fn a_member_that_does_not_rejoin_in_time_is_dropped() {
        let mut c = Coordinator::new();
        let a = c
            .join("g", "", params(&["t"], "range", &[]), 0, &six)
            .expect("join");
        c.join_result("g", &a).expect("done").expect("ok");
        let b = c
            .join("g", "", params(&["t"], "range", &[]), 100, &six)
            .expect("join");
        // a keeps heartbeating but never re-joins.
        for t in (200..5100).step_by(200) {
            let _ = c.heartbeat("g", &a, 1, t);
            c.tick(t, &six);
        }
        assert!(c.join_result("g", &b).is_none());
        c.heartbeat("g", &a, 1, 5099).expect_err("rebalancing");
        c.tick(5100, &six);
        let r = c.join_result("g", &b).expect("done").expect("ok");
        assert_eq!(r.assignment.len(), 6);
        assert!(matches!(
            c.check_commit("g", &a, 1),
            Err(e) if e.code == ErrorCode::UnknownMemberId
        ));
    }

    #[test]
    fn leaving_and_added_partitions_rebalance() {
        let mut c = Coordinator::new();
        let a = c
            .join("g", "", params(&["t"], "range", &[]), 0, &six)
            .expect("join");
        let b = c
            .join("g", "", params(&["t"], "range", &[]), 0, &six)
            .expect("join");
        c.join("g", &a, params(&["t"], "range", &[]), 0, &six)
            .expect("rejoin");
        join_all(&mut c, &[a.clone(), b.clone()]);
        let eight = |t: &str| (t == "t").then_some(8);
        assert!(c.tick(10, &eight));
        assert_eq!(
            c.describe("g").expect("g").state,
            GroupState::PreparingRebalance
        );
        c.join("g", &a, params(&["t"], "range", &[]), 11, &eight)
            .expect("rejoin");
        c.join("g", &b, params(&["t"], "range", &[]), 11, &eight)
            .expect("rejoin");
        let r = join_all(&mut c, &[a.clone(), b.clone()]);
        assert_eq!(r[&a].assignment.len(), 4);
        c.leave("g", &b, 12, &eight).expect("leave");
        c.join("g", &a, params(&["t"], "range", &[]), 13, &eight)
            .expect("rejoin");
        let r = c.join_result("g", &a).expect("done").expect("ok");
        assert_eq!(r.assignment.len(), 8);
        c.leave("g", &a, 14, &eight).expect("leave");
        assert_eq!(c.describe("g").expect("g").state, GroupState::Empty);
        c.check_commit("g", "", -1)
            .expect("empty group takes manual commits");
        c.delete("g").expect("delete");
        assert!(c.describe("g").is_none());
    }

    #[test]
    fn cooperative_rebalance_hands_over_in_two_rounds() {
        let mut c = Coordinator::new();
        let coop = "cooperative-sticky";
        let a = c
            .join("g", "", params(&["t"], coop, &[]), 0, &six)
            .expect("join");
        let first = c.join_result("g", &a).expect("done").expect("ok");
        let owned: Vec<(&str, u32)> = first.assignment.iter().map(|(_, p)| ("t", *p)).collect();
        let b = c
            .join("g", "", params(&["t"], coop, &[]), 1, &six)
            .expect("join");
        c.join("g", &a, params(&["t"], coop, &owned), 2, &six)
            .expect("rejoin");
        let r = join_all(&mut c, &[a.clone(), b.clone()]);
        assert_eq!(r[&a].assignment.len(), 3, "a keeps three");
        assert!(r[&b].assignment.is_empty(), "b waits for a to revoke");
        // a revoked three and re-joins owning the rest: the second round.
        let kept: Vec<(&str, u32)> = r[&a].assignment.iter().map(|(_, p)| ("t", *p)).collect();
        c.join("g", &a, params(&["t"], coop, &kept), 3, &six)
            .expect("rejoin");
        c.join("g", &b, params(&["t"], coop, &[]), 3, &six)
            .expect("rejoin");
        let r2 = join_all(&mut c, &[a.clone(), b.clone()]);
        assert_eq!(r2[&a].assignment, r[&a].assignment, "a keeps what it kept");
        assert_eq!(r2[&b].assignment.len(), 3);
        // A third join without changes does not rebalance again.
        c.join("g", &a, params(&["t"], coop, &kept), 4, &six)
            .expect("rejoin");
        let r3 = c.join_result("g", &a).expect("done").expect("ok");
        assert_eq!(r3.generation, r2[&a].generation);
    }

    #[test]
    fn bad_joins_are_typed_errors() {
        let mut c = Coordinator::new();
        let mut p = params(&["t"], "range", &[]);
        p.session_timeout_ms = 1;
        assert!(
            matches!(c.join("g", "", p, 0, &six), Err(e) if e.code == ErrorCode::InvalidSessionTimeout)
        );
        assert!(matches!(
            c.join("", "", params(&["t"], "range", &[]), 0, &six),
            Err(e) if e.code == ErrorCode::InvalidGroupId
        ));
        assert!(matches!(
            c.join("g", "", params(&["t"], "magic", &[]), 0, &six),
            Err(e) if e.code == ErrorCode::InconsistentGroupProtocol
        ));
        c.join("g", "", params(&["t"], "range", &[]), 0, &six)
            .expect("join");
        assert!(matches!(
            c.join("g", "", params(&["t"], "roundrobin", &[]), 0, &six),
            Err(e) if e.code == ErrorCode::InconsistentGroupProtocol
        ));
        assert!(matches!(
            c.join("g", "nobody", params(&["t"], "range", &[]), 0, &six),
            Err(e) if e.code == ErrorCode::UnknownMemberId
        ));
        assert!(matches!(c.delete("g"), Err(e) if e.code == ErrorCode::NonEmptyGroup));
    }
}
