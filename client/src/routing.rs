//! Finding partition leaders in a cluster.
//!
//! A [`Client`] is made for one node (the bootstrap node). Produce, Fetch
//! and ListOffsets must go to the partition's leader: [`Client::for_partition`]
//! looks the leader up in Metadata (cached), and returns a client for that
//! node (made once per node, sharing the options). [`Client::forget_leader`]
//! drops the cached leader after `NotLeaderOrFollower`, a lost connection or
//! a fenced epoch, so the next attempt asks Metadata again. Metadata is asked
//! of the bootstrap node first, then of every other node it listed (when one
//! is unreachable, or just started and answers `BrokerNotAvailable`), so the
//! client survives the loss of its bootstrap node.
//!
//! A single node (Metadata lists one node) is always its own leader.
//!
//! Consumer-group requests go to the group's coordinator:
//! [`Client::coordinator`] asks FindCoordinator (of this client's node, else
//! of the others it knows) and caches the answer per group;
//! [`Client::group_call`] retries on `NotCoordinator`,
//! `CoordinatorNotAvailable` and, in a cluster, a lost connection, for at
//! most [`COORDINATOR_RETRY_MS`], asking again each time.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_lite::FutureExt as _;

use crate::connection::{Client, ClientError, ClientOptions, Metadata, backoff_ms};
use crate::protocol::{
    ErrorBody, ErrorCode, NO_LEADER, PROTOCOL_VERSION, Request, RequestHeader, Response,
};

/// Leaders and node addresses learnt from Metadata, and group coordinators
/// learnt from FindCoordinator, shared by a client's clones.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    leaders: HashMap<(String, u32), u32>,
    nodes: HashMap<u32, String>,
    clients: HashMap<String, Client>,
    coordinators: HashMap<String, String>,
}

/// How long a group request keeps looking for its coordinator: long enough
/// for the cluster to move it after its node died (the failover plus a QUIC
/// idle timeout of the connection to the dead node).
pub const COORDINATOR_RETRY_MS: u64 = 15_000;
/// First pause before a group request asks for its coordinator again
/// (doubling up to [`COORDINATOR_BACKOFF_MAX_MS`]).
const COORDINATOR_BACKOFF_MS: u32 = 50;
/// Longest pause between those attempts.
const COORDINATOR_BACKOFF_MAX_MS: u32 = 1000;

/// How long a request waits on a partition leader before the other nodes are
/// asked whether it still leads ([`Client::unless_leader_moves`]).
pub const LEADER_CHECK_AFTER_MS: u64 = 500;
/// How often they are asked after that.
pub const LEADER_CHECK_PERIOD_MS: u64 = 250;
/// How long one node may take to answer that question before the next is asked.
pub const LEADER_CHECK_ASK_MS: u64 = 1000;

/// Most partitions whose leader is cached before the cache starts over.
const ROUTES_MAX: usize = 100_000;

pub(crate) type SharedRoutes = Arc<Mutex<Routes>>;

fn lock(routes: &SharedRoutes) -> MutexGuard<'_, Routes> {
    routes.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// The client to send requests about `topic`-`partition` to: its
    /// leader's. Errors with `LeaderNotAvailable` (retriable) while the
    /// partition has no leader.
    pub async fn for_partition(&self, topic: &str, partition: u32) -> Result<Client, ClientError> {
        let key = (topic.to_owned(), partition);
        let known = {
            let routes = lock(self.routes());
            routes
                .leaders
                .get(&key)
                .and_then(|id| routes.nodes.get(id).cloned())
        };
        let address = match known {
            Some(address) => address,
            None => {
                self.refresh_routes(topic).await?;
                let routes = lock(self.routes());
                let leader = routes.leaders.get(&key).copied();
                match leader {
                    Some(NO_LEADER) | None => {
                        return Err(ClientError::Server(ErrorBody {
                            code: ErrorCode::LeaderNotAvailable,
                            message: format!(
                                "{topic}-{partition} has no leader right now; retry later"
                            ),
                        }));
                    }
                    Some(id) => match routes.nodes.get(&id) {
                        Some(a) => a.clone(),
                        None => {
                            return Err(ClientError::Server(ErrorBody {
                                code: ErrorCode::LeaderNotAvailable,
                                message: format!(
                                    "{topic}-{partition}: leader {id} is not in the node list"
                                ),
                            }));
                        }
                    },
                }
            }
        };
        self.client_for(&address)
    }

    /// Drops the cached leader of `topic`-`partition` (after
    /// `NotLeaderOrFollower`, a lost connection, ...).
    pub fn forget_leader(&self, topic: &str, partition: u32) {
        lock(self.routes())
            .leaders
            .remove(&(topic.to_owned(), partition));
    }

    fn client_for(&self, address: &str) -> Result<Client, ClientError> {
        if address == self.options().server {
            return Ok(self.clone());
        }
        let mut routes = lock(self.routes());
        if let Some(c) = routes.clients.get(address) {
            return Ok(c.clone());
        }
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
        let server_name = if host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok()
        {
            host.trim_matches(['[', ']']).to_owned()
        } else {
            self.options().server_name.clone()
        };
        let options = ClientOptions {
            server: address.to_owned(),
            server_name,
            ..self.options().clone()
        };
        let client =
            Client::new_with_routes(options, self.routes().clone(), self.runtime().clone())?;
        routes.clients.insert(address.to_owned(), client.clone());
        Ok(client)
    }

    /// Caches the nodes and leaders `metadata` (answered by `c`) lists.
    fn learn(&self, c: &Client, metadata: &Metadata) {
        let mut routes = lock(self.routes());
        if routes.leaders.len() > ROUTES_MAX {
            routes.leaders.clear();
        }
        if routes.coordinators.len() > ROUTES_MAX {
            routes.coordinators.clear();
        }
        let single = metadata.nodes.len() <= 1;
        for n in &metadata.nodes {
            // A single node answers at the address this client
            // already uses (its own may say 0.0.0.0).
            let address = if single {
                c.options().server.clone()
            } else {
                n.address.clone()
            };
            routes.nodes.insert(n.id, address);
        }
        for t in &metadata.topics {
            for &(p, leader) in &t.partitions {
                routes.leaders.insert((t.name.clone(), p), leader);
                if single && leader != NO_LEADER {
                    // A single node leads everything it reports.
                    routes.nodes.insert(leader, c.options().server.clone());
                }
            }
        }
    }

    /// Runs `request`, sent to `leader` (what [`Client::for_partition`]
    /// returned for `topic`-`partition`), unless the partition's leadership
    /// moves first.
    ///
    /// A leader killed without closing its connections goes unnoticed until
    /// the QUIC idle timeout. So once a request has waited `expected_ms` (how
    /// long it may take by design, such as a fetch's `max_wait_ms`) plus
    /// [`LEADER_CHECK_AFTER_MS`], the other nodes are asked every
    /// [`LEADER_CHECK_PERIOD_MS`] who leads the partition; when the cluster
    /// has moved it (or it has no leader), the request is abandoned with a
    /// retriable `NotLeaderOrFollower`, as if the old leader had said so. The
    /// outcome at the old leader is unknown then, as after a timeout. A single
    /// node has nobody to ask and just waits.
    pub(crate) async fn unless_leader_moves<T>(
        &self,
        topic: &str,
        partition: u32,
        leader: &Client,
        expected_ms: u32,
        request: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let moved = async {
            let first = u64::from(expected_ms) + LEADER_CHECK_AFTER_MS;
            smol::Timer::after(Duration::from_millis(first)).await;
            loop {
                if self.led_elsewhere(topic, partition, leader).await {
                    return Err(ClientError::Server(ErrorBody {
                        code: ErrorCode::NotLeaderOrFollower,
                        message: format!(
                            "{topic}-{partition}: the cluster moved the leadership away from \
                             {} while a request was waiting on it; retry on the new leader",
                            leader.options().server
                        ),
                    }));
                }
                smol::Timer::after(Duration::from_millis(LEADER_CHECK_PERIOD_MS)).await;
            }
        };
        request.or(moved).await
    }

    /// Whether a node other than `leader` says that another node (or none)
    /// leads `topic`-`partition`. Learns the answer's routes.
    async fn led_elsewhere(&self, topic: &str, partition: u32, leader: &Client) -> bool {
        let silent = &leader.options().server;
        let others: Vec<String> = {
            let routes = lock(self.routes());
            if routes.nodes.len() <= 1 {
                return false;
            }
            routes
                .nodes
                .values()
                .filter(|address| *address != silent)
                .cloned()
                .collect()
        };
        for address in others {
            let Ok(c) = self.client_for(&address) else {
                continue;
            };
            // A node that is down too must not hold the check up.
            let ask = async { c.metadata(Some(vec![topic.to_owned()])).await.ok() };
            let give_up = async {
                smol::Timer::after(Duration::from_millis(LEADER_CHECK_ASK_MS)).await;
                None
            };
            let Some(metadata) = ask.or(give_up).await else {
                continue;
            };
            self.learn(&c, &metadata);
            // Judged from this answer alone: a node that does not know the
            // partition yet has no opinion.
            let Some(leader) = metadata
                .topics
                .iter()
                .filter(|t| t.name == topic)
                .flat_map(|t| t.partitions.iter())
                .find_map(|&(p, leader)| (p == partition).then_some(leader))
            else {
                continue;
            };
            if leader == NO_LEADER {
                return true;
            }
            let address = metadata
                .nodes
                .iter()
                .find(|n| n.id == leader)
                .map(|n| n.address.as_str());
            return address.is_some_and(|a| a != silent);
        }
        false
    }

    /// Sends a consumer-group request about `group` to its coordinator,
    /// finding it first. `NotCoordinator` and `CoordinatorNotAvailable` (the
    /// group's coordinator moved, or is starting) and, when this client knows
    /// several nodes, a lost connection make it find the coordinator again
    /// and resend, for at most [`COORDINATOR_RETRY_MS`]; then the last error
    /// is returned. Group requests are safe to resend: a join or commit that
    /// a dead coordinator took is redone on the new one.
    pub(crate) async fn group_call(
        &self,
        group: &str,
        request: Request,
    ) -> Result<Response, ClientError> {
        let header = RequestHeader {
            version: PROTOCOL_VERSION,
            request,
        };
        self.while_coordinator_moves(group, |c| {
            let header = header.clone();
            async move { c.request(header, &[]).await.map(|(r, _)| r) }
        })
        .await
    }

    /// The client of `group`'s coordinator, waiting (at most
    /// [`COORDINATOR_RETRY_MS`]) while the cluster has none available.
    pub async fn coordinator(&self, group: &str) -> Result<Client, ClientError> {
        self.while_coordinator_moves(group, |c| async move { Ok(c) })
            .await
    }

    /// Runs `attempt` on `group`'s coordinator; while the outcome says the
    /// coordinator moved or is not available ([`Client::coordinator_may_move`]),
    /// forgets it, pauses (doubling from [`COORDINATOR_BACKOFF_MS`] up to
    /// [`COORDINATOR_BACKOFF_MAX_MS`]) and tries again, for at most
    /// [`COORDINATOR_RETRY_MS`]; then returns the last outcome.
    async fn while_coordinator_moves<T, F, Fut>(
        &self,
        group: &str,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let deadline = Instant::now() + Duration::from_millis(COORDINATOR_RETRY_MS);
        let mut tries = 0u32;
        loop {
            let result = match self.find_coordinator(group).await {
                Ok(c) => attempt(c).await,
                Err(e) => Err(e),
            };
            if !self.coordinator_may_move(&result) || Instant::now() >= deadline {
                return result;
            }
            lock(self.routes()).coordinators.remove(group);
            tries += 1;
            let pause = backoff_ms(COORDINATOR_BACKOFF_MS, COORDINATOR_BACKOFF_MAX_MS, tries);
            smol::Timer::after(Duration::from_millis(pause)).await;
        }
    }

    /// Whether `result` of a group request says to find the coordinator again.
    fn coordinator_may_move<T>(&self, result: &Result<T, ClientError>) -> bool {
        let several_nodes = || lock(self.routes()).nodes.len() > 1;
        match result {
            Err(ClientError::Server(body)) => match body.code {
                ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable => true,
                // A coordinator stopping (a rolling restart) hands over; a
                // node just started is not one yet.
                ErrorCode::ShuttingDown | ErrorCode::BrokerNotAvailable => several_nodes(),
                _ => false,
            },
            Err(e) => e.is_connection_error() && several_nodes(),
            Ok(_) => false,
        }
    }

    /// The client of `group`'s coordinator: cached, else asked of this
    /// client's node (FindCoordinator), else of every other node known.
    async fn find_coordinator(&self, group: &str) -> Result<Client, ClientError> {
        let known = lock(self.routes()).coordinators.get(group).cloned();
        if let Some(address) = known {
            return self.client_for(&address);
        }
        let header = RequestHeader {
            version: PROTOCOL_VERSION,
            request: Request::FindCoordinator {
                group: group.to_owned(),
            },
        };
        let mut last = None;
        for c in self.candidates() {
            match c.request(header.clone(), &[]).await {
                Ok((Response::FindCoordinator { node_id, address }, _)) => {
                    let address = address.unwrap_or_else(|| c.options().server.clone());
                    let nodes = {
                        let mut routes = lock(self.routes());
                        routes
                            .nodes
                            .entry(node_id)
                            .or_insert_with(|| address.clone());
                        routes
                            .coordinators
                            .insert(group.to_owned(), address.clone());
                        routes.nodes.len()
                    };
                    if nodes <= 1 {
                        // Learn the other nodes too (Metadata without topics),
                        // so that a lost coordinator can be looked up elsewhere.
                        if let Ok(metadata) = c.metadata(Some(Vec::new())).await {
                            self.learn(&c, &metadata);
                        }
                    }
                    return self.client_for(&address);
                }
                Ok((other, _)) => return Err(c.unexpected("FindCoordinator", &other)),
                // A node from before FindCoordinator coordinates its own groups.
                Err(ClientError::Server(body))
                    if matches!(
                        body.code,
                        ErrorCode::InvalidRequest | ErrorCode::UnsupportedVersion
                    ) =>
                {
                    return Ok(c);
                }
                Err(e) if e.is_node_unavailable() || e.code() == Some(ErrorCode::ShuttingDown) => {
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            ClientError::Server(ErrorBody {
                code: ErrorCode::CoordinatorNotAvailable,
                message: format!("no node answered which one coordinates group {group:?}"),
            })
        }))
    }

    /// This client's node, then every other node known: whom to ask
    /// Metadata or FindCoordinator.
    fn candidates(&self) -> Vec<Client> {
        let mut candidates = vec![self.clone()];
        {
            let routes = lock(self.routes());
            candidates.extend(routes.clients.values().cloned());
            for address in routes.nodes.values() {
                if address != &self.options().server
                    && !routes.clients.contains_key(address)
                    && let Ok(c) = Client::new_with_routes(
                        ClientOptions {
                            server: address.clone(),
                            ..self.options().clone()
                        },
                        self.routes().clone(),
                        self.runtime().clone(),
                    )
                {
                    candidates.push(c);
                }
            }
        }
        candidates
    }

    /// Asks Metadata about `topic`: of this client's node, else of every other
    /// node known.
    async fn refresh_routes(&self, topic: &str) -> Result<(), ClientError> {
        let mut last = None;
        for c in self.candidates() {
            match c.metadata(Some(vec![topic.to_owned()])).await {
                Ok(metadata) => {
                    self.learn(&c, &metadata);
                    return Ok(());
                }
                Err(e) if e.is_node_unavailable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            ClientError::Server(ErrorBody {
                code: ErrorCode::LeaderNotAvailable,
                message: "no node answered Metadata".to_owned(),
            })
        }))
    }
}
