//! Finding partition leaders in a cluster.
//!
//! A [`Client`] is made for one node (the bootstrap node). Produce, Fetch
//! and ListOffsets must go to the partition's leader: [`Client::for_partition`]
//! looks the leader up in Metadata (cached), and returns a client for that
//! node (made once per node, sharing the options). [`Client::forget_leader`]
//! drops the cached leader after `NotLeaderOrFollower`, a lost connection or
//! a fenced epoch, so the next attempt asks Metadata again. Metadata is asked
//! of the bootstrap node first, then of every other node it listed, so the
//! client survives the loss of its bootstrap node.
//!
//! A single node (Metadata lists one node) is always its own leader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::connection::{Client, ClientError, ClientOptions};
use crate::protocol::{ErrorBody, ErrorCode, NO_LEADER};

/// Leaders and node addresses learnt from Metadata, shared by a client's clones.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    leaders: HashMap<(String, u32), u32>,
    nodes: HashMap<u32, String>,
    clients: HashMap<String, Client>,
}

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
        let client = Client::new_with_routes(options, self.routes().clone())?;
        routes.clients.insert(address.to_owned(), client.clone());
        Ok(client)
    }

    /// Asks Metadata about `topic`: of this client's node, else of every other
    /// node known.
    async fn refresh_routes(&self, topic: &str) -> Result<(), ClientError> {
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
                    )
                {
                    candidates.push(c);
                }
            }
        }
        let mut last = None;
        for c in candidates {
            match c.metadata(Some(vec![topic.to_owned()])).await {
                Ok(metadata) => {
                    let mut routes = lock(self.routes());
                    if routes.leaders.len() > ROUTES_MAX {
                        routes.leaders.clear();
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
                    return Ok(());
                }
                Err(e) if e.is_connection_error() => last = Some(e),
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
