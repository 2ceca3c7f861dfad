//! The replicated metadata state and the commands that change it.
//!
//! Every node applies the same committed commands in the same order, so every
//! decision that depends on the state (replica placement, leader election,
//! ISR changes) is made here, deterministically, at apply time. Commands that
//! no longer fit the state (an ISR change from a deposed leader, a topic that
//! exists) are rejected by every node alike.

use std::collections::BTreeMap;

use eddy_client::protocol::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::broker::metadata::TopicState;

/// One partition's replication state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Nodes holding a copy; the first is the preferred leader.
    pub replicas: Vec<u32>,
    /// The leader, or `None` while the partition is offline.
    pub leader: Option<u32>,
    /// Bumped on every leader change.
    pub leader_epoch: i32,
    /// In-sync replicas (never empty: when the last member fails it stays,
    /// so that it can be elected again without losing data).
    pub isr: Vec<u32>,
    /// Bumped on every change of this partition's state.
    pub partition_epoch: u32,
}

/// A topic in the cluster: its stored state and its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterTopic {
    /// Name, partition count, replication factor, configs.
    pub state: TopicState,
    /// Per-partition replication state.
    pub partitions: Vec<PartitionState>,
}

/// A node known to the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerState {
    /// Whether it is fenced (missed its heartbeats): it leads nothing and is
    /// in no ISR.
    pub fenced: bool,
}

/// The whole metadata state: what a snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Nodes that have registered (by heartbeating), by id.
    pub brokers: BTreeMap<u32, BrokerState>,
    /// Topics by name.
    pub topics: BTreeMap<String, ClusterTopic>,
    /// Where the next topic's replica placement starts (spreads leaders).
    pub next_placement: u32,
}

/// A change to the metadata state, proposed through the quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create a topic; replicas are placed at apply time.
    CreateTopic(TopicState),
    /// Delete a topic.
    DeleteTopic(String),
    /// Replace a topic's own configs.
    SetConfigs {
        /// Topic.
        name: String,
        /// The new configs (all of them).
        configs: Vec<(String, String)>,
    },
    /// Grow a topic.
    CreatePartitions {
        /// Topic.
        name: String,
        /// New total.
        total: u32,
    },
    /// A node stopped heartbeating: move its leaderships, drop it from ISRs.
    FenceBroker(u32),
    /// A node is heartbeating (again).
    UnfenceBroker(u32),
    /// A partition leader changes its ISR (valid only from the current
    /// leader in its current epoch).
    AlterIsr {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The proposing leader.
        leader: u32,
        /// Its leader epoch.
        leader_epoch: i32,
        /// The new ISR.
        isr: Vec<u32>,
    },
    /// Move leaders to their preferred replicas where possible.
    ElectPreferred(Option<String>),
}

/// What applying a command changed, for the proposer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Done.
    Done,
    /// Leaders elected.
    Elected(u32),
}

/// A command rejected at apply time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The wire error code.
    pub code: ErrorCode,
    /// What to do.
    pub message: String,
}

fn reject(code: ErrorCode, message: impl Into<String>) -> Rejected {
    Rejected {
        code,
        message: message.into(),
    }
}

/// Settings that election depends on; the same on every node.
#[derive(Debug, Clone, Copy)]
pub struct ApplyContext {
    /// The node-wide default of `unclean.leader.election.enable`.
    pub unclean_default: bool,
}

impl ClusterTopic {
    /// Whether the topic allows unclean leader election.
    pub fn unclean(&self, ctx: ApplyContext) -> bool {
        self.state
            .configs
            .iter()
            .find(|(k, _)| k == "unclean.leader.election.enable")
            .map_or(ctx.unclean_default, |(_, v)| v == "true")
    }
}

impl ClusterState {
    /// Nodes that are registered and not fenced, sorted.
    pub fn live_brokers(&self) -> Vec<u32> {
        self.brokers
            .iter()
            .filter(|(_, b)| !b.fenced)
            .map(|(id, _)| *id)
            .collect()
    }

    fn is_live(&self, id: u32) -> bool {
        self.brokers.get(&id).is_some_and(|b| !b.fenced)
    }

    /// Places `count` partitions of `rf` replicas from partition `first`,
    /// round-robin over the live nodes so replicas and preferred leaders
    /// spread evenly.
    fn place(&mut self, first: u32, count: u32, rf: u16) -> Result<Vec<PartitionState>, Rejected> {
        let live = self.live_brokers();
        if rf == 0 || usize::from(rf) > live.len() {
            let fenced: Vec<u32> = self
                .brokers
                .iter()
                .filter(|(_, b)| b.fenced)
                .map(|(id, _)| *id)
                .collect();
            let fix = match (live.len(), fenced.is_empty()) {
                (0, _) => "retry once the controller counts nodes in".to_owned(),
                (n, true) => format!("use 1 to {n}"),
                (n, false) => format!(
                    "use 1 to {n}, or retry once the fenced nodes are back (`eddy cluster \
                     status`; a node just started is fenced until it has caught up)"
                ),
            };
            return Err(reject(
                ErrorCode::InvalidReplicationFactor,
                format!(
                    "replication factor {rf} is not possible: {} node(s) are alive, fenced: \
                     {fenced:?}; {fix}",
                    live.len(),
                ),
            ));
        }
        let n = live.len();
        let mut out = Vec::with_capacity(count as usize);
        for i in 0..count {
            let start = (self.next_placement as usize + (first + i) as usize) % n;
            let replicas: Vec<u32> = (0..usize::from(rf))
                .map(|j| live[(start + j) % n])
                .collect();
            out.push(PartitionState {
                leader: Some(replicas[0]),
                isr: replicas.clone(),
                replicas,
                leader_epoch: 0,
                partition_epoch: 0,
            });
        }
        Ok(out)
    }

    /// Applies one committed command.
    pub fn apply(&mut self, command: &Command, ctx: ApplyContext) -> Result<Applied, Rejected> {
        match command {
            Command::CreateTopic(state) => {
                if self.topics.contains_key(&state.name) {
                    return Err(reject(
                        ErrorCode::TopicAlreadyExists,
                        format!(
                            "topic {} already exists; see it with `eddy topic describe {}`",
                            state.name, state.name
                        ),
                    ));
                }
                let partitions = self.place(0, state.partitions, state.replication_factor)?;
                self.next_placement = self.next_placement.wrapping_add(1);
                self.topics.insert(
                    state.name.clone(),
                    ClusterTopic {
                        state: state.clone(),
                        partitions,
                    },
                );
                Ok(Applied::Done)
            }
            Command::DeleteTopic(name) => match self.topics.remove(name) {
                Some(_) => Ok(Applied::Done),
                None => Err(unknown(name)),
            },
            Command::SetConfigs { name, configs } => {
                let live = self.live_brokers();
                let topic = self.topics.get_mut(name).ok_or_else(|| unknown(name))?;
                topic.state.configs.clone_from(configs);
                // Turning unclean election on brings offline partitions back
                // (as Kafka does).
                let unclean = topic.unclean(ctx);
                let mut elected = 0;
                for p in &mut topic.partitions {
                    if p.leader.is_none() {
                        elect(p, &live, unclean);
                        if p.leader.is_some() {
                            p.leader_epoch += 1;
                            p.partition_epoch += 1;
                            elected += 1;
                        }
                    }
                }
                Ok(Applied::Elected(elected))
            }
            Command::CreatePartitions { name, total } => {
                let (current, rf) = match self.topics.get(name) {
                    Some(t) => (t.state.partitions, t.state.replication_factor),
                    None => return Err(unknown(name)),
                };
                if *total <= current {
                    return Err(reject(
                        ErrorCode::InvalidPartitions,
                        format!(
                            "topic {name} has {current} partition(s); the count can only grow \
                             (asked for {total})"
                        ),
                    ));
                }
                let added = self.place(current, total - current, rf)?;
                let topic = self.topics.get_mut(name).ok_or_else(|| unknown(name))?;
                topic.state.partitions = *total;
                topic.partitions.extend(added);
                Ok(Applied::Done)
            }
            Command::FenceBroker(id) => {
                let Some(b) = self.brokers.get_mut(id) else {
                    return Ok(Applied::Done);
                };
                if b.fenced {
                    return Ok(Applied::Done);
                }
                b.fenced = true;
                let live: Vec<u32> = self.live_brokers();
                let mut elected = 0;
                for topic in self.topics.values_mut() {
                    let unclean = topic.unclean(ctx);
                    for p in &mut topic.partitions {
                        let mut changed = false;
                        if p.isr.len() > 1 && p.isr.contains(id) {
                            p.isr.retain(|r| r != id);
                            changed = true;
                        }
                        if p.leader == Some(*id) {
                            p.leader = None;
                            elect(p, &live, unclean);
                            p.leader_epoch += 1;
                            elected += u32::from(p.leader.is_some());
                            changed = true;
                        }
                        if changed {
                            p.partition_epoch += 1;
                        }
                    }
                }
                Ok(Applied::Elected(elected))
            }
            Command::UnfenceBroker(id) => {
                self.brokers.insert(*id, BrokerState { fenced: false });
                let live = self.live_brokers();
                let mut elected = 0;
                for topic in self.topics.values_mut() {
                    let unclean = topic.unclean(ctx);
                    for p in &mut topic.partitions {
                        if p.leader.is_none() && p.replicas.contains(id) {
                            elect(p, &live, unclean);
                            if p.leader.is_some() {
                                p.leader_epoch += 1;
                                p.partition_epoch += 1;
                                elected += 1;
                            }
                        }
                    }
                }
                Ok(Applied::Elected(elected))
            }
            Command::AlterIsr {
                topic,
                partition,
                leader,
                leader_epoch,
                isr,
            } => {
                let live = self.live_brokers();
                let p = self
                    .topics
                    .get_mut(topic)
                    .and_then(|t| t.partitions.get_mut(*partition as usize))
                    .ok_or_else(|| unknown(topic))?;
                if p.leader != Some(*leader) || p.leader_epoch != *leader_epoch {
                    return Err(reject(
                        ErrorCode::FencedLeaderEpoch,
                        format!(
                            "{topic}-{partition}: ISR change from node {leader} in epoch \
                             {leader_epoch}, but the leader is {:?} in epoch {}",
                            p.leader, p.leader_epoch
                        ),
                    ));
                }
                let valid = isr.contains(leader)
                    && isr.iter().all(|r| p.replicas.contains(r))
                    && isr
                        .iter()
                        .all(|r| p.isr.contains(r) || live.binary_search(r).is_ok());
                if !valid {
                    return Err(reject(
                        ErrorCode::InvalidRequest,
                        format!("{topic}-{partition}: ISR {isr:?} is not valid"),
                    ));
                }
                let mut sorted = isr.clone();
                sorted.sort_unstable();
                sorted.dedup();
                p.isr = sorted;
                p.partition_epoch += 1;
                Ok(Applied::Done)
            }
            Command::ElectPreferred(only) => {
                let live = self.live_brokers();
                let mut elected = 0;
                for (name, topic) in &mut self.topics {
                    if only.as_ref().is_some_and(|o| o != name) {
                        continue;
                    }
                    for p in &mut topic.partitions {
                        let Some(&preferred) = p.replicas.first() else {
                            continue;
                        };
                        if p.leader != Some(preferred)
                            && p.isr.contains(&preferred)
                            && live.binary_search(&preferred).is_ok()
                        {
                            p.leader = Some(preferred);
                            p.leader_epoch += 1;
                            p.partition_epoch += 1;
                            elected += 1;
                        }
                    }
                }
                if let Some(name) = only
                    && !self.topics.contains_key(name)
                {
                    return Err(unknown(name));
                }
                Ok(Applied::Elected(elected))
            }
        }
    }

    /// Per node: (partitions it prefers to lead, of those it does not lead).
    pub fn imbalance(&self) -> BTreeMap<u32, (u32, u32)> {
        let mut out: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
        for topic in self.topics.values() {
            for p in &topic.partitions {
                if let Some(&preferred) = p.replicas.first() {
                    let e = out.entry(preferred).or_default();
                    e.0 += 1;
                    if p.leader != Some(preferred) {
                        e.1 += 1;
                    }
                }
            }
        }
        out
    }

    /// Whether a node's state says it is fenced (unknown nodes count as fenced).
    pub fn is_fenced(&self, id: u32) -> bool {
        !self.is_live(id)
    }
}

/// Elects a leader for `p` (which has none): the first replica, in
/// preference order, that is in the ISR and alive; with `unclean`, else the
/// first live replica (which becomes the whole ISR: what it missed is lost).
fn elect(p: &mut PartitionState, live: &[u32], unclean: bool) {
    let alive = |r: &u32| live.binary_search(r).is_ok();
    if let Some(&r) = p.replicas.iter().find(|r| p.isr.contains(r) && alive(r)) {
        p.leader = Some(r);
        p.isr.retain(|m| alive(m) || *m == r);
        return;
    }
    if unclean && let Some(&r) = p.replicas.iter().find(|r| alive(r)) {
        p.leader = Some(r);
        p.isr = vec![r];
    }
}

fn unknown(name: &str) -> Rejected {
    reject(
        ErrorCode::UnknownTopicOrPartition,
        format!("topic {name:?} does not exist; create it with `eddy topic create {name}`"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: ApplyContext = ApplyContext {
        unclean_default: false,
    };

    fn cluster(nodes: u32) -> ClusterState {
        let mut s = ClusterState::default();
        for id in 0..nodes {
            s.apply(&Command::UnfenceBroker(id), CTX).expect("unfence");
        }
        s
    }

    fn topic(name: &str, partitions: u32, rf: u16, configs: &[(&str, &str)]) -> Command {
        Command::CreateTopic(TopicState {
            name: name.into(),
            partitions,
            replication_factor: rf,
            configs: configs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        })
    }

    #[test]
    fn placement_spreads_replicas_and_leaders_evenly() {
        let mut s = cluster(3);
        s.apply(&topic("t", 6, 3, &[]), CTX).expect("create");
        let t = &s.topics["t"];
        let mut leaders = [0; 3];
        for p in &t.partitions {
            assert_eq!(p.replicas.len(), 3);
            let mut r = p.replicas.clone();
            r.sort_unstable();
            assert_eq!(r, vec![0, 1, 2], "distinct replicas");
            assert_eq!(p.isr.len(), 3);
            leaders[p.leader.expect("leader") as usize] += 1;
        }
        assert_eq!(leaders, [2, 2, 2]);
        let error = s.apply(&topic("u", 1, 4, &[]), CTX).expect_err("rf 4 > 3");
        assert_eq!(error.code, ErrorCode::InvalidReplicationFactor);
    }

    #[test]
    fn fencing_the_leader_elects_from_the_isr_and_bumps_the_epoch() {
        let mut s = cluster(3);
        s.apply(&topic("t", 1, 3, &[]), CTX).expect("create");
        let before = s.topics["t"].partitions[0].clone();
        let old = before.leader.expect("leader");
        s.apply(&Command::FenceBroker(old), CTX).expect("fence");
        let p = &s.topics["t"].partitions[0];
        assert!(p.leader.is_some_and(|l| l != old));
        assert_eq!(p.leader_epoch, before.leader_epoch + 1);
        assert!(!p.isr.contains(&old));
    }

    #[test]
    fn without_unclean_election_the_partition_waits_for_its_last_isr_member() {
        for unclean in [false, true] {
            let cfg = if unclean { "true" } else { "false" };
            let mut s = cluster(2);
            s.apply(
                &topic("t", 1, 2, &[("unclean.leader.election.enable", cfg)]),
                CTX,
            )
            .expect("create");
            let leader = s.topics["t"].partitions[0].leader.expect("leader");
            let follower = 1 - leader;
            // The follower falls out of the ISR, then the leader dies too.
            s.apply(
                &Command::AlterIsr {
                    topic: "t".into(),
                    partition: 0,
                    leader,
                    leader_epoch: 0,
                    isr: vec![leader],
                },
                CTX,
            )
            .expect("shrink");
            s.apply(&Command::FenceBroker(follower), CTX)
                .expect("fence");
            s.apply(&Command::FenceBroker(leader), CTX).expect("fence");
            let p = &s.topics["t"].partitions[0];
            assert_eq!(p.leader, None, "nobody alive");
            assert_eq!(p.isr, vec![leader], "the last ISR member stays");
            s.apply(&Command::UnfenceBroker(follower), CTX)
                .expect("back");
            let p = &s.topics["t"].partitions[0];
            if unclean {
                assert_eq!(p.leader, Some(follower), "unclean: the stale replica leads");
                assert_eq!(p.isr, vec![follower]);
            } else {
                assert_eq!(p.leader, None, "clean: stays offline");
            }
            s.apply(&Command::UnfenceBroker(leader), CTX).expect("back");
            let p = &s.topics["t"].partitions[0];
            assert!(p.leader.is_some());
        }
    }

    #[test]
    fn isr_changes_only_from_the_current_leader_and_epoch() {
        let mut s = cluster(3);
        s.apply(&topic("t", 1, 3, &[]), CTX).expect("create");
        let p = s.topics["t"].partitions[0].clone();
        let leader = p.leader.expect("leader");
        let stale = Command::AlterIsr {
            topic: "t".into(),
            partition: 0,
            leader,
            leader_epoch: p.leader_epoch + 1,
            isr: vec![leader],
        };
        assert_eq!(
            s.apply(&stale, CTX).expect_err("stale").code,
            ErrorCode::FencedLeaderEpoch
        );
        let without_leader = Command::AlterIsr {
            topic: "t".into(),
            partition: 0,
            leader,
            leader_epoch: p.leader_epoch,
            isr: p
                .replicas
                .iter()
                .copied()
                .filter(|r| *r != leader)
                .collect(),
        };
        assert!(s.apply(&without_leader, CTX).is_err());
    }

    #[test]
    fn preferred_election_moves_leaders_back() {
        let mut s = cluster(3);
        s.apply(&topic("t", 3, 3, &[]), CTX).expect("create");
        s.apply(&Command::FenceBroker(0), CTX).expect("fence");
        s.apply(&Command::UnfenceBroker(0), CTX).expect("unfence");
        // 0 is back but out of the ISRs: nothing to elect for it yet.
        let moved = s.apply(&Command::ElectPreferred(None), CTX).expect("elect");
        assert_eq!(moved, Applied::Elected(0));
        for i in 0..3 {
            let p = s.topics["t"].partitions[i].clone();
            let mut isr = p.isr.clone();
            isr.push(0);
            s.apply(
                &Command::AlterIsr {
                    topic: "t".into(),
                    partition: i as u32,
                    leader: p.leader.expect("leader"),
                    leader_epoch: p.leader_epoch,
                    isr,
                },
                CTX,
            )
            .expect("expand");
        }
        assert!(s.imbalance()[&0].1 > 0);
        let moved = s.apply(&Command::ElectPreferred(None), CTX).expect("elect");
        assert_eq!(moved, Applied::Elected(1));
        assert!(s.imbalance().values().all(|(_, off)| *off == 0));
    }
}
