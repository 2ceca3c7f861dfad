//! Partition assignment strategies, computed by the coordinator: `range`
//! (Kafka's default), `roundrobin` and `cooperative-sticky`. Pure functions of
//! the members' subscriptions, what they own and the partition counts.

use std::collections::{BTreeMap, BTreeSet};

/// A topic partition.
pub type TopicPartition = (String, u32);

/// An assignment strategy (Kafka's `partition.assignment.strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Strategy {
    /// Per topic, consecutive ranges of partitions to members in id order.
    Range,
    /// Every partition of every topic dealt to members in turn.
    RoundRobin,
    /// Balanced, keeping what members own; only moved partitions are revoked,
    /// in two rebalances (Kafka's incremental cooperative protocol).
    CooperativeSticky,
}

impl Strategy {
    /// Kafka's short name.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Range => "range",
            Strategy::RoundRobin => "roundrobin",
            Strategy::CooperativeSticky => "cooperative-sticky",
        }
    }

    /// Parses Kafka's short names and Java class names.
    pub fn from_name(name: &str) -> Option<Strategy> {
        let short = name.rsplit('.').next().unwrap_or(name);
        match short {
            "range" | "RangeAssignor" => Some(Strategy::Range),
            "roundrobin" | "round-robin" | "RoundRobinAssignor" => Some(Strategy::RoundRobin),
            "cooperative-sticky" | "CooperativeStickyAssignor" => Some(Strategy::CooperativeSticky),
            _ => None,
        }
    }

    /// Whether members keep consuming what they keep during a rebalance.
    pub fn is_cooperative(self) -> bool {
        self == Strategy::CooperativeSticky
    }
}

/// What the assignor knows about one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Topics subscribed to.
    pub topics: BTreeSet<String>,
    /// Partitions it owns now (sticky and cooperative only).
    pub owned: Vec<TopicPartition>,
}

/// Assigns every partition of every subscribed topic (with a known count) to
/// exactly one member subscribed to it. Members are keyed by id; the result has
/// an entry for every member.
pub fn assign(
    strategy: Strategy,
    members: &BTreeMap<String, Subscription>,
    partitions: &BTreeMap<String, u32>,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut out: BTreeMap<String, Vec<TopicPartition>> =
        members.keys().map(|m| (m.clone(), Vec::new())).collect();
    match strategy {
        Strategy::Range => range(members, partitions, &mut out),
        Strategy::RoundRobin => round_robin(members, partitions, &mut out),
        Strategy::CooperativeSticky => sticky(members, partitions, &mut out),
    }
    for list in out.values_mut() {
        list.sort();
    }
    out
}

fn subscribed_topics<'a>(
    members: &'a BTreeMap<String, Subscription>,
    partitions: &'a BTreeMap<String, u32>,
) -> BTreeSet<&'a str> {
    members
        .values()
        .flat_map(|s| s.topics.iter())
        .filter(|t| partitions.contains_key(t.as_str()))
        .map(String::as_str)
        .collect()
}

fn range(
    members: &BTreeMap<String, Subscription>,
    partitions: &BTreeMap<String, u32>,
    out: &mut BTreeMap<String, Vec<TopicPartition>>,
) {
    for topic in subscribed_topics(members, partitions) {
        let count = partitions[topic];
        let subscribers: Vec<&String> = members
            .iter()
            .filter(|(_, s)| s.topics.contains(topic))
            .map(|(m, _)| m)
            .collect();
        let n = subscribers.len() as u32;
        let (per, extra) = (count / n, count % n);
        let mut next = 0u32;
        for (i, member) in subscribers.into_iter().enumerate() {
            let take = per + u32::from((i as u32) < extra);
            if let Some(list) = out.get_mut(member) {
                list.extend((next..next + take).map(|p| (topic.to_owned(), p)));
            }
            next += take;
        }
    }
}

fn round_robin(
    members: &BTreeMap<String, Subscription>,
    partitions: &BTreeMap<String, u32>,
    out: &mut BTreeMap<String, Vec<TopicPartition>>,
) {
    let ids: Vec<&String> = members.keys().collect();
    let mut turn = 0usize;
    for topic in subscribed_topics(members, partitions) {
        for p in 0..partitions[topic] {
            // The next member in turn that subscribes to the topic; one exists.
            for k in 0..ids.len() {
                let member = ids[(turn + k) % ids.len()];
                if members[member].topics.contains(topic) {
                    if let Some(list) = out.get_mut(member) {
                        list.push((topic.to_owned(), p));
                    }
                    turn = (turn + k + 1) % ids.len();
                    break;
                }
            }
        }
    }
}

fn sticky(
    members: &BTreeMap<String, Subscription>,
    partitions: &BTreeMap<String, u32>,
    out: &mut BTreeMap<String, Vec<TopicPartition>>,
) {
    let all: BTreeSet<TopicPartition> = subscribed_topics(members, partitions)
        .into_iter()
        .flat_map(|t| (0..partitions[t]).map(move |p| (t.to_owned(), p)))
        .collect();
    let total = all.len();
    let m = members.len().max(1);
    let (base, mut extra) = (total / m, total % m);
    // Members owning the most keep first, so that the ones allowed one more
    // than `base` are the ones that have it already.
    let mut order: Vec<&String> = members.keys().collect();
    order.sort_by_key(|id| std::cmp::Reverse(members[*id].owned.len()));
    let mut taken: BTreeSet<TopicPartition> = BTreeSet::new();
    for id in order {
        let sub = &members[id];
        let valid: Vec<&TopicPartition> = sub
            .owned
            .iter()
            .filter(|tp| sub.topics.contains(&tp.0) && all.contains(*tp) && !taken.contains(*tp))
            .collect();
        let mut quota = base;
        if valid.len() > base && extra > 0 {
            quota += 1;
            extra -= 1;
        }
        let list = out.entry(id.clone()).or_default();
        for tp in valid.into_iter().take(quota) {
            taken.insert(tp.clone());
            list.push(tp.clone());
        }
    }
    // The rest go, one at a time, to the subscribed member holding the fewest.
    for tp in all.into_iter().filter(|tp| !taken.contains(tp)) {
        let target = out
            .iter()
            .filter(|(id, _)| members[*id].topics.contains(&tp.0))
            .min_by_key(|(id, list)| (list.len(), (*id).clone()))
            .map(|(id, _)| id.clone());
        if let Some(id) = target
            && let Some(list) = out.get_mut(&id)
        {
            list.push(tp);
        }
    }
}

/// For the cooperative protocol: what each member gets in this generation.
/// A partition the target moves away from a member that still owns it goes to
/// nobody now; its owner revokes it and re-joins, and the next rebalance hands
/// it over. Returns the assignment and whether anything was held back.
pub fn withhold_owned_elsewhere(
    target: &BTreeMap<String, Vec<TopicPartition>>,
    members: &BTreeMap<String, Subscription>,
) -> (BTreeMap<String, Vec<TopicPartition>>, bool) {
    let mut owner: BTreeMap<&TopicPartition, &String> = BTreeMap::new();
    for (id, sub) in members {
        for tp in &sub.owned {
            owner.entry(tp).or_insert(id);
        }
    }
    let mut held = false;
    let given = target
        .iter()
        .map(|(id, list)| {
            let kept: Vec<TopicPartition> = list
                .iter()
                .filter(|tp| {
                    let free = owner.get(tp).is_none_or(|o| *o == id);
                    held |= !free;
                    free
                })
                .cloned()
                .collect();
            (id.clone(), kept)
        })
        .collect();
    (given, held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{ProptestConfig, any, prop_assert, prop_assert_eq, proptest};

    /// (member id, topics, owned partitions)
    type MemberSpec<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, u32)]);

    fn members(spec: &[MemberSpec<'_>]) -> BTreeMap<String, Subscription> {
        spec.iter()
            .map(|(id, topics, owned)| {
                (
                    id.to_string(),
                    Subscription {
                        topics: topics.iter().map(|t| t.to_string()).collect(),
                        owned: owned.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
                    },
                )
            })
            .collect()
    }

    fn tps(list: &[(&str, u32)]) -> Vec<TopicPartition> {
        list.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    #[test]
    fn range_gives_consecutive_partitions_per_topic() {
        let m = members(&[("a", &["t"], &[]), ("b", &["t"], &[]), ("c", &["t"], &[])]);
        let counts = BTreeMap::from([("t".to_string(), 7)]);
        let out = assign(Strategy::Range, &m, &counts);
        assert_eq!(out["a"], tps(&[("t", 0), ("t", 1), ("t", 2)]));
        assert_eq!(out["b"], tps(&[("t", 3), ("t", 4)]));
        assert_eq!(out["c"], tps(&[("t", 5), ("t", 6)]));
    }

    #[test]
    fn round_robin_deals_in_turn_and_skips_unsubscribed() {
        let m = members(&[("a", &["t", "u"], &[]), ("b", &["t"], &[])]);
        let counts = BTreeMap::from([("t".to_string(), 3), ("u".to_string(), 2)]);
        let out = assign(Strategy::RoundRobin, &m, &counts);
        assert_eq!(out["a"], tps(&[("t", 0), ("t", 2), ("u", 0), ("u", 1)]));
        assert_eq!(out["b"], tps(&[("t", 1)]));
    }

    #[test]
    fn sticky_moves_only_what_the_new_member_needs() {
        let m = members(&[
            ("a", &["t"], &[("t", 0), ("t", 1), ("t", 2)]),
            ("b", &["t"], &[("t", 3), ("t", 4), ("t", 5)]),
            ("c", &["t"], &[]),
        ]);
        let counts = BTreeMap::from([("t".to_string(), 6)]);
        let target = assign(Strategy::CooperativeSticky, &m, &counts);
        assert_eq!(target["a"].len(), 2);
        assert_eq!(target["b"].len(), 2);
        assert_eq!(target["c"].len(), 2);
        // a and b keep two of their own each.
        assert!(target["a"].iter().all(|tp| tp.1 < 3));
        assert!(target["b"].iter().all(|tp| tp.1 >= 3));
        let (given, held) = withhold_owned_elsewhere(&target, &m);
        assert!(held);
        assert!(given["c"].is_empty(), "c waits until a and b revoke");
        assert_eq!(given["a"], target["a"]);
    }

    #[test]
    fn strategy_names() {
        for s in [
            Strategy::Range,
            Strategy::RoundRobin,
            Strategy::CooperativeSticky,
        ] {
            assert_eq!(Strategy::from_name(s.name()), Some(s));
        }
        assert_eq!(
            Strategy::from_name("org.apache.kafka.clients.consumer.CooperativeStickyAssignor"),
            Some(Strategy::CooperativeSticky)
        );
        assert_eq!(Strategy::from_name("sticky-ish"), None);
    }

    fn scenario() -> impl proptest::strategy::Strategy<Value = (usize, Vec<u32>, u64)> {
        (
            1usize..6,
            proptest::collection::vec(0u32..20, 1..4),
            any::<u64>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Every partition of a subscribed topic goes to exactly one member that
        /// subscribes to it, whatever the strategy; with one shared subscription
        /// the counts differ by at most one.
        #[test]
        fn each_partition_to_exactly_one_member((n, counts, seed) in scenario()) {
            let topics: Vec<String> = (0..counts.len()).map(|i| format!("t{i}")).collect();
            let partitions: BTreeMap<String, u32> =
                topics.iter().cloned().zip(counts.iter().copied()).collect();
            let mut rng = seed;
            let mut next = move || { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; rng };
            let all: Vec<TopicPartition> = partitions.iter()
                .flat_map(|(t, c)| (0..*c).map(move |p| (t.clone(), p))).collect();
            let same = next() % 2 == 0;
            let m: BTreeMap<String, Subscription> = (0..n).map(|i| {
                let subs: BTreeSet<String> = if same { topics.iter().cloned().collect() } else {
                    topics.iter().filter(|_| next() % 3 != 0).cloned().collect()
                };
                let owned: Vec<TopicPartition> =
                    all.iter().filter(|_| next() % (n as u64 + 1) == 0).cloned().collect();
                (format!("m{i}"), Subscription { topics: subs, owned })
            }).collect();
            for strategy in [Strategy::Range, Strategy::RoundRobin, Strategy::CooperativeSticky] {
                let out = assign(strategy, &m, &partitions);
                let mut seen = BTreeSet::new();
                for (id, list) in &out {
                    for tp in list {
                        prop_assert!(m[id].topics.contains(&tp.0), "{strategy:?}: {id} got {tp:?}");
                        prop_assert!(seen.insert(tp.clone()), "{strategy:?}: {tp:?} twice");
                    }
                }
                let wanted: BTreeSet<TopicPartition> = all.iter()
                    .filter(|tp| m.values().any(|s| s.topics.contains(&tp.0))).cloned().collect();
                prop_assert_eq!(&seen, &wanted, "{:?}", strategy);
                // Range balances each topic on its own (Kafka's too), not the total.
                if same && strategy != Strategy::Range {
                    let sizes: Vec<usize> = out.values().map(Vec::len).collect();
                    let (lo, hi) = (sizes.iter().min().copied().unwrap_or(0), sizes.iter().max().copied().unwrap_or(0));
                    prop_assert!(hi - lo <= 1, "{strategy:?} unbalanced: {sizes:?}");
                }
                // Cooperative: a member only loses (revokes) a partition it
                // owned when the target gives it to another member.
                if strategy.is_cooperative() {
                    let (given, _) = withhold_owned_elsewhere(&out, &m);
                    let mut given_seen = BTreeSet::new();
                    for (id, list) in &given {
                        for tp in list {
                            prop_assert!(given_seen.insert(tp.clone()));
                            let owner = m.iter().find(|(_, s)| s.owned.contains(tp)).map(|(o, _)| o);
                            prop_assert!(owner.is_none_or(|o| o == id), "{tp:?} given to {id} while owned");
                        }
                    }
                    // Sticky: with one subscription and no partition owned
                    // twice, every member keeps at least `base` of what it owns.
                    let unique = all.iter().all(|tp| m.values().filter(|s| s.owned.contains(tp)).count() <= 1);
                    if same && unique {
                        let base = wanted.len() / m.len();
                        for (id, sub) in &m {
                            let kept = sub.owned.iter().filter(|tp| out[id].contains(tp)).count();
                            prop_assert!(kept >= sub.owned.len().min(base), "{id} kept {kept} of {:?}", sub.owned);
                        }
                    }
                }
            }
        }
    }
}
