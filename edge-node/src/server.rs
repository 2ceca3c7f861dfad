//! The QUIC server: accepts connections, reads one request per bidirectional
//! stream, hands it to the [`Broker`] and writes the answer.
//!
//! Per stream: a `u32` header length (checked against
//! [`protocol::REQUEST_HEADER_BYTES_MAX`] before anything is allocated, and
//! over [`protocol::SMALL_HEADER_BYTES_MAX`] counted against
//! `queued-max-request-bytes`), the postcard
//! header, then the payload to the end of the stream (at most
//! `max-request-bytes` for Produce, nothing for other requests). The answer is
//! one frame, then the stream is finished; a Produce with `acks = 0` gets no
//! frame, only the finish.
//!
//! Bad input gets a typed error (`InvalidRequest`, `UnsupportedVersion`) on
//! its stream. Each connection logs its first problem at `warn` and the rest
//! at `debug`; after [`PROBLEMS_PER_CONNECTION_MAX`] bad requests the
//! connection is closed with [`CLOSE_PROTOCOL_VIOLATION`]. Connections over
//! `max-connections` are refused; streams over `max-streams-per-connection`
//! wait (QUIC flow control). Nothing a peer does stops the node serving
//! others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use eddy_client::protocol::{
    self, Acks, ErrorBody, ErrorCode, FrameError, LENGTH_PREFIX_BYTES, PROTOCOL_VERSION, Request,
    RequestHeader, Response, ResponseHeader,
};
use event_listener::Event;
use futures_lite::FutureExt as _;
use log::{debug, info, warn};
use quinn::VarInt;
use smol::Task;

use crate::broker::order::{Sequencer, Turn};
use crate::broker::{Broker, BrokerError, now_ms};
use crate::config::NodeConfig;
use crate::memory::{BUDGET_WAIT_MS_MAX, BudgetExhausted, ByteBudget, Reservation};
use crate::runtime::RuntimeHandle;
use crate::tls::{self, TlsError};

/// Per-stream receive window (flow control credit), bytes.
pub const STREAM_RECEIVE_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
/// Per-connection receive window, bytes.
pub const RECEIVE_WINDOW_BYTES: u32 = 32 * 1024 * 1024;
/// Per-connection send window, bytes.
pub const SEND_WINDOW_BYTES: u64 = 32 * 1024 * 1024;
/// A connection silent this long is dropped.
pub const IDLE_TIMEOUT_MS: u64 = 30_000;
/// Bad requests one connection may send before it is closed.
pub const PROBLEMS_PER_CONNECTION_MAX: u32 = 64;
/// Longest a graceful shutdown waits for requests in flight.
pub const SHUTDOWN_DRAIN_MS: u64 = 10_000;
/// Longest a shutdown waits for connections to close cleanly.
pub const SHUTDOWN_CLOSE_MS: u64 = 1_000;
/// A fetch takes at least this much of `queued-max-response-bytes` (or its
/// whole `max_bytes` if smaller), waiting only while less is free.
pub const FETCH_RESERVATION_BYTES_MIN: u64 = 64 * 1024;
/// Largest piece of a produce payload taken from the stream at once, and
/// the step by which a request's hold on `queued-max-request-bytes` grows.
pub const PAYLOAD_CHUNK_BYTES_MAX: usize = 64 * 1024;
/// A request none of whose bytes arrive for this long is dropped (with
/// `RequestTimedOut`), and gives back what it held of
/// `queued-max-request-bytes`: a client that stops halfway through its
/// requests cannot keep them from other clients.
#[cfg(not(test))]
pub const REQUEST_STALL_MS: u64 = 30_000;
/// In tests: longer than [`crate::memory::BUDGET_WAIT_MS_MAX`], which a
/// test pauses a request for.
#[cfg(test)]
pub const REQUEST_STALL_MS: u64 = 8_000;
/// Least time between two "connection refused" log lines.
pub const REFUSAL_LOG_INTERVAL_MS: i64 = 10_000;

/// Application close code: the node is stopping.
pub const CLOSE_SHUTDOWN: u32 = 0;
/// Application close code: the peer sent too many bad requests.
pub const CLOSE_PROTOCOL_VIOLATION: u32 = 1;
/// Stream stop code: the request was refused before it was read to the end.
pub const STOP_REQUEST_REFUSED: u32 = 1;

const _: () = assert!(STREAM_RECEIVE_WINDOW_BYTES <= RECEIVE_WINDOW_BYTES);
const _: () =
    assert!(protocol::REQUEST_HEADER_BYTES_MAX as u64 <= STREAM_RECEIVE_WINDOW_BYTES as u64);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The TLS identity could not be loaded or created.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr} (UDP): {error}; pick another address with --listen")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// quinn rejected the configuration or the socket.
    #[error("cannot start the QUIC endpoint: {0}")]
    Endpoint(String),
}

struct State {
    broker: Arc<Broker>,
    rt: RuntimeHandle,
    max_connections: usize,
    max_request_bytes: u64,
    /// A node of a cluster: its listener checks client certificates, and
    /// only connections that presented one may send node-only requests.
    clustered: bool,
    /// `fetch-max-bytes`, capped at what a fetch request can ask for.
    fetch_max_bytes: u32,
    /// Produce payloads in memory (`queued-max-request-bytes`).
    request_budget: Arc<ByteBudget>,
    /// Fetch responses in memory (`queued-max-response-bytes`).
    response_budget: Arc<ByteBudget>,
    connections: AtomicUsize,
    /// Requests being handled; `idle` is notified when it drops to 0.
    in_flight: AtomicUsize,
    idle: Event,
    stopping: AtomicBool,
    stop: Event,
    last_refusal_log_ms: AtomicI64,
}

/// Decrements a counter when dropped, notifying `event` when it reaches 0.
struct CountGuard<'a> {
    counter: &'a AtomicUsize,
    event: Option<&'a Event>,
}

impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        if self.counter.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(event) = self.event
        {
            event.notify(usize::MAX);
        }
    }
}

/// The running QUIC listener.
pub struct Server {
    endpoint: quinn::Endpoint,
    state: Arc<State>,
    accept: Option<Task<()>>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// The QUIC transport settings for `config`.
pub fn transport_config(config: &NodeConfig) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(config.max_streams_per_connection));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    // On a board, quinn's own buffers count against the memory budget too:
    // what a connection may have in flight in each direction is its share.
    let (stream_window, window, send_window) = match config.connection_window_bytes() {
        Some(bytes) => {
            let bytes = u32::try_from(bytes).unwrap_or(RECEIVE_WINDOW_BYTES);
            (
                bytes.min(STREAM_RECEIVE_WINDOW_BYTES),
                bytes.min(RECEIVE_WINDOW_BYTES),
                u64::from(bytes).min(SEND_WINDOW_BYTES),
            )
        }
        None => (
            STREAM_RECEIVE_WINDOW_BYTES,
            RECEIVE_WINDOW_BYTES,
            SEND_WINDOW_BYTES,
        ),
    };
    t.stream_receive_window(VarInt::from_u32(stream_window));
    t.receive_window(VarInt::from_u32(window));
    t.send_window(send_window);
    t.datagram_receive_buffer_size(None);
    eddy_client::connection::discover_mtu_up_to_max(&mut t);
    // IDLE_TIMEOUT_MS is far below the limit of an idle timeout (2^62 ms).
    t.max_idle_timeout(quinn::IdleTimeout::try_from(Duration::from_millis(IDLE_TIMEOUT_MS)).ok());
    t
}

impl Server {
    /// Loads or creates the TLS identity, binds `listen` and starts accepting
    /// connections on `rt`.
    pub fn start(
        config: &NodeConfig,
        broker: Arc<Broker>,
        rt: RuntimeHandle,
    ) -> Result<Server, ServerError> {
        let crypto = tls::quic_server_config(config)?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server_config.transport_config(Arc::new(transport_config(config)));
        server_config.max_incoming(config.max_connections as usize);
        let socket =
            std::net::UdpSocket::bind(config.listen).map_err(|error| ServerError::Bind {
                addr: config.listen,
                error,
            })?;
        eddy_client::connection::widen_socket_buffers(&socket);
        let endpoint = quinn::Endpoint::new(
            eddy_client::connection::endpoint_config(),
            Some(server_config),
            socket,
            rt.quinn_runtime(),
        )
        .map_err(|e| ServerError::Endpoint(e.to_string()))?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|e| ServerError::Endpoint(e.to_string()))?;
        broker.set_advertised_address(local_addr.to_string());
        let state = Arc::new(State {
            broker,
            rt: rt.clone(),
            max_connections: config.max_connections as usize,
            max_request_bytes: config.max_request_bytes,
            clustered: config.is_clustered(),
            fetch_max_bytes: u32::try_from(config.fetch_max_bytes).unwrap_or(u32::MAX),
            request_budget: ByteBudget::new(config.queued_request_bytes()),
            response_budget: ByteBudget::new(config.queued_response_bytes()),
            connections: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            idle: Event::new(),
            stopping: AtomicBool::new(false),
            stop: Event::new(),
            last_refusal_log_ms: AtomicI64::new(0),
        });
        let accept = rt.spawn(accept_loop(endpoint.clone(), state.clone()));
        Ok(Server {
            endpoint,
            state,
            accept: Some(accept),
            local_addr,
        })
    }

    /// The bound address (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Bytes of produce payloads held now (of `queued-max-request-bytes`).
    pub fn queued_request_bytes(&self) -> u64 {
        self.state.request_budget.used_bytes()
    }

    /// Bytes of fetch responses held now (of `queued-max-response-bytes`).
    pub fn queued_response_bytes(&self) -> u64 {
        self.state.response_budget.used_bytes()
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Acquire)
    }

    /// Stops gracefully: refuses new connections, tells the broker to stop
    /// taking requests (waiting fetches return), waits up to
    /// [`SHUTDOWN_DRAIN_MS`] for requests in flight to be answered, then
    /// closes every connection with [`CLOSE_SHUTDOWN`].
    pub async fn shutdown(mut self) {
        let state = &self.state;
        state.stopping.store(true, Ordering::Release);
        state.stop.notify(usize::MAX);
        self.endpoint.set_server_config(None);
        if let Some(accept) = self.accept.take() {
            accept.await;
        }
        state.broker.begin_shutdown();
        let drained = async {
            loop {
                let listener = state.idle.listen();
                if state.in_flight.load(Ordering::Acquire) == 0 {
                    return true;
                }
                listener.await;
            }
        }
        .or(async {
            smol::Timer::after(Duration::from_millis(SHUTDOWN_DRAIN_MS)).await;
            false
        })
        .await;
        if !drained {
            warn!(
                "{} request(s) still running after {SHUTDOWN_DRAIN_MS} ms; closing connections",
                state.in_flight.load(Ordering::Acquire)
            );
        }
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"node shutting down");
        async {
            self.endpoint.wait_idle().await;
        }
        .or(async {
            smol::Timer::after(Duration::from_millis(SHUTDOWN_CLOSE_MS)).await;
        })
        .await;
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, state: Arc<State>) {
    loop {
        let listener = state.stop.listen();
        if state.stopping.load(Ordering::Acquire) {
            return;
        }
        let incoming = async { endpoint.accept().await }
            .or(async {
                listener.await;
                None
            })
            .await;
        let Some(incoming) = incoming else {
            return;
        };
        let open = state.connections.fetch_add(1, Ordering::AcqRel);
        if open >= state.max_connections {
            state.connections.fetch_sub(1, Ordering::AcqRel);
            let now = now_ms();
            let last = state.last_refusal_log_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= REFUSAL_LOG_INTERVAL_MS {
                state.last_refusal_log_ms.store(now, Ordering::Relaxed);
                warn!(
                    "refusing a connection from {}: max-connections ({}) reached \
                     (logged at most every {REFUSAL_LOG_INTERVAL_MS} ms)",
                    incoming.remote_address(),
                    state.max_connections
                );
            }
            incoming.refuse();
            continue;
        }
        let task_state = state.clone();
        state
            .rt
            .spawn(async move {
                let _open = CountGuard {
                    counter: &task_state.connections,
                    event: None,
                };
                serve_connection(incoming, &task_state).await;
            })
            .detach();
    }
}

/// Per-connection record of bad requests, so each is logged once.
struct Problems {
    remote: SocketAddr,
    count: AtomicU32,
}

impl Problems {
    /// Records a problem; returns whether the connection is over its limit.
    fn report(&self, code: ErrorCode, message: &str) -> bool {
        let n = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        if n == 1 {
            warn!(
                "bad request from {}: {code:?}: {message} (further problems on this \
                 connection are logged at debug level)",
                self.remote
            );
        } else {
            debug!("bad request from {}: {code:?}: {message}", self.remote);
        }
        n > PROBLEMS_PER_CONNECTION_MAX
    }
}

async fn serve_connection(incoming: quinn::Incoming, state: &Arc<State>) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            debug!("handshake with {remote} failed: {e}");
            return;
        }
    };
    let from_node = tls::peer_is_node(&conn);
    let refuse_node_only = state.clustered && !from_node;
    debug!(
        "connection from {remote}{}",
        if from_node {
            " (a node of the cluster)"
        } else {
            ""
        }
    );
    let problems = Arc::new(Problems {
        remote,
        count: AtomicU32::new(0),
    });
    let payload_hint = Arc::new(AtomicUsize::new(0));
    let order = Sequencer::new();
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                debug!("connection from {remote} ended: {e}");
                break;
            }
        };
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        let task_state = state.clone();
        let conn = conn.clone();
        let problems = problems.clone();
        let payload_hint = payload_hint.clone();
        // Taken here, in the order the client opened the streams.
        let turn = order.turn();
        state
            .rt
            .spawn(async move {
                let _in_flight = CountGuard {
                    counter: &task_state.in_flight,
                    event: Some(&task_state.idle),
                };
                serve_stream(
                    send,
                    recv,
                    &task_state,
                    &conn,
                    Peer {
                        problems: &problems,
                        refuse_node_only,
                    },
                    &payload_hint,
                    turn,
                )
                .await;
            })
            .detach();
    }
    let n = problems.count.load(Ordering::Acquire);
    if n > 1 {
        info!("connection from {remote} sent {n} bad requests");
    }
}

/// A request that could not be read.
enum ReadProblem {
    /// The stream or connection went away: nobody to answer.
    Gone(String),
    /// Bad input: answer with this error (and stop reading when `stop`).
    Bad {
        code: ErrorCode,
        message: String,
        stop: bool,
    },
    /// The payload budget stayed full: refused, retriable, not the peer's fault.
    Busy(String),
}

impl From<BudgetExhausted> for ReadProblem {
    fn from(e: BudgetExhausted) -> Self {
        ReadProblem::Busy(e.to_string())
    }
}

fn bad(code: ErrorCode, message: impl Into<String>, stop: bool) -> ReadProblem {
    ReadProblem::Bad {
        code,
        message: message.into(),
        stop,
    }
}

/// Reads one request: its header, then its payload.
///
/// `payload_hint` is the size of the connection's last produce payload: a producer
/// sends batches of much the same size, so the buffer starts at that size
/// instead of growing by doubling (which copies the payload again at each
/// step), and is told the size of this one. Only the bytes read are counted
/// against the budget (in [`PAYLOAD_CHUNK_BYTES_MAX`] steps): pages of the
/// buffer not written yet take no memory, and a stream that sends a few
/// bytes and stops holds no more than those.
///
/// Every read waits at most [`REQUEST_STALL_MS`] for the next bytes.
///
/// With `refuse_node_only` (a node of a cluster, and a connection that
/// presented no node certificate) a request only nodes may send is refused
/// with CLUSTER_AUTHORIZATION_FAILED as soon as its header is read, before
/// any of its payload is taken.
async fn read_request(
    recv: &mut quinn::RecvStream,
    max_request_bytes: u64,
    budget: &Arc<ByteBudget>,
    payload_hint: &AtomicUsize,
    refuse_node_only: bool,
) -> Result<(RequestHeader, Vec<u8>, Reservation), ReadProblem> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    until_stalled(read_exact(recv, &mut prefix, "length prefix")).await?;
    let len = protocol::decode_header_len::<RequestHeader>(prefix).map_err(|e| {
        bad(
            ErrorCode::InvalidRequest,
            format!("{e}; is this an eddy/1 client?"),
            true,
        )
    })?;
    // A large header (a group request naming many partitions) is held
    // against the budget until the answer is written, as a payload is.
    let wait = Duration::from_millis(BUDGET_WAIT_MS_MAX);
    let mut reservation = budget.reservation("queued-max-request-bytes");
    if len > protocol::SMALL_HEADER_BYTES_MAX as usize {
        if len as u64 > budget.capacity_bytes() {
            return Err(bad(
                ErrorCode::InvalidRequest,
                format!(
                    "the request header is {len} bytes, over this node's whole \
                     queued-max-request-bytes ({}); name fewer partitions in one request",
                    budget.capacity_bytes()
                ),
                true,
            ));
        }
        reservation.grow_to(len as u64, wait).await?;
    }
    let header_reserved = reservation.bytes();
    let mut body = vec![0u8; len];
    // In pieces, each waiting at most REQUEST_STALL_MS, as the payload.
    let mut filled = 0;
    while filled < len {
        let end = len.min(filled + PAYLOAD_CHUNK_BYTES_MAX);
        let piece = &mut body[filled..end];
        until_stalled(read_exact(recv, piece, "request header")).await?;
        filled = end;
    }
    // The version comes first, so a newer client gets UnsupportedVersion even
    // when the rest of its header means nothing to this node.
    let (version, _) = postcard::take_from_bytes::<u16>(&body).map_err(|e| {
        bad(
            ErrorCode::InvalidRequest,
            format!("malformed request header: {e}"),
            true,
        )
    })?;
    if version != PROTOCOL_VERSION {
        return Err(bad(
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {version} is not supported; this node speaks version \
                 {PROTOCOL_VERSION}: upgrade the node or use a matching client"
            ),
            true,
        ));
    }
    let header: RequestHeader = protocol::decode_header(&body).map_err(|e| {
        let message = match e {
            FrameError::Malformed(m) => format!(
                "malformed request header or unknown request type ({m}); \
                 check that client and node versions match"
            ),
            other => other.to_string(),
        };
        bad(ErrorCode::InvalidRequest, message, true)
    })?;
    if refuse_node_only && header.request.is_node_only() {
        return Err(bad(
            ErrorCode::ClusterAuthorizationFailed,
            format!(
                "{} is for the nodes of the cluster only: they connect with a certificate \
                 issued by the cluster's CA (tls-ca), and this connection presented none",
                header.request.name()
            ),
            true,
        ));
    }
    let produce = matches!(header.request, Request::Produce { .. });
    let limit = match header.request {
        Request::Produce { .. } => max_request_bytes,
        Request::Raft { .. } => eddy_client::protocol::RAFT_PAYLOAD_BYTES_MAX,
        Request::PluginAdd { .. } => u64::from(protocol::PLUGIN_WASM_BYTES_MAX),
        _ => 0,
    };
    let too_long = || {
        let message = if limit == 0 {
            format!("a {} request carries no payload", header.request.name())
        } else if matches!(header.request, Request::PluginAdd { .. }) {
            format!("the component is over {limit} bytes; build it with --release and strip it")
        } else {
            format!(
                "produce payload is over max-request-bytes ({limit} bytes); send smaller \
                 requests or raise max-request-bytes on the node"
            )
        };
        bad(ErrorCode::InvalidRequest, message, true)
    };
    // The payload is read in pieces, each first counted against the budget
    // (by the bytes read so far): while the budget is full the stream is
    // not read on, and QUIC flow control holds the client back.
    let mut payload = Vec::new();
    let limit_bytes = usize::try_from(limit).unwrap_or(usize::MAX);
    loop {
        let room = limit_bytes
            .saturating_sub(payload.len())
            .saturating_add(1)
            .min(PAYLOAD_CHUNK_BYTES_MAX);
        let read = async {
            match recv.read_chunk(room, true).await {
                Ok(chunk) => Ok(chunk.map(|c| c.bytes)),
                Err(e) => Err(ReadProblem::Gone(e.to_string())),
            }
        };
        let Some(chunk) = until_stalled(read).await? else {
            break;
        };
        let len = payload.len().saturating_add(chunk.len());
        if len as u64 > limit {
            return Err(too_long());
        }
        if header_reserved.saturating_add(len as u64) > reservation.bytes() {
            let held = len
                .checked_next_multiple_of(PAYLOAD_CHUNK_BYTES_MAX)
                .unwrap_or(len)
                .min(limit_bytes);
            reservation
                .grow_to(header_reserved.saturating_add(held as u64), wait)
                .await?;
        }
        if len > payload.capacity() {
            // The last payload's size at first, then at least double, as
            // Vec grows.
            let first = if payload.capacity() == 0 && produce {
                payload_hint.load(Ordering::Relaxed)
            } else {
                0
            };
            let capacity = len
                .max(payload.capacity().saturating_mul(2))
                .max(first)
                .min(limit_bytes);
            payload.reserve_exact(capacity - payload.len());
        }
        payload.extend_from_slice(&chunk);
    }
    if produce {
        payload_hint.store(payload.len(), Ordering::Relaxed);
    }
    Ok((header, payload, reservation))
}

/// Runs one read of a request, dropping the request when no bytes come for
/// [`REQUEST_STALL_MS`].
async fn until_stalled<T>(
    read: impl std::future::Future<Output = Result<T, ReadProblem>>,
) -> Result<T, ReadProblem> {
    read.or(async {
        smol::Timer::after(Duration::from_millis(REQUEST_STALL_MS)).await;
        Err(bad(
            ErrorCode::RequestTimedOut,
            format!(
                "no bytes of the request arrived for {} s, so the node dropped it; \
                 send it again",
                REQUEST_STALL_MS / 1000
            ),
            true,
        ))
    })
    .await
}

async fn read_exact(
    recv: &mut quinn::RecvStream,
    buf: &mut [u8],
    what: &str,
) -> Result<(), ReadProblem> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(quinn::ReadExactError::FinishedEarly(n)) => Err(bad(
            ErrorCode::InvalidRequest,
            format!(
                "request truncated: the stream ended after {n} of the {} bytes of the {what}",
                buf.len()
            ),
            false,
        )),
        Err(quinn::ReadExactError::ReadError(e)) => Err(ReadProblem::Gone(e.to_string())),
    }
}

/// Who is on the other end of a connection.
struct Peer<'a> {
    /// Its bad requests so far.
    problems: &'a Problems,
    /// This node is clustered and the peer presented no node certificate:
    /// node-only requests are refused.
    refuse_node_only: bool,
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    state: &State,
    conn: &quinn::Connection,
    peer: Peer<'_>,
    payload_hint: &AtomicUsize,
    turn: Turn,
) {
    let problems = peer.problems;
    let read = read_request(
        &mut recv,
        state.max_request_bytes,
        &state.request_budget,
        payload_hint,
        peer.refuse_node_only,
    )
    .await;
    let (mut header, payload, _request_memory) = match read {
        Ok(request) => request,
        Err(ReadProblem::Gone(why)) => {
            debug!("request stream from {} lost: {why}", problems.remote);
            return;
        }
        Err(ReadProblem::Busy(message)) => {
            let _ = recv.stop(VarInt::from_u32(STOP_REQUEST_REFUSED));
            debug!("request from {} refused: {message}", problems.remote);
            let header = ResponseHeader::Error(ErrorBody {
                code: ErrorCode::ThrottlingQuotaExceeded,
                message,
            });
            write_response(&mut send, "the request", &header, Vec::new()).await;
            return;
        }
        Err(ReadProblem::Bad {
            code,
            message,
            stop,
        }) => {
            if stop {
                let _ = recv.stop(VarInt::from_u32(STOP_REQUEST_REFUSED));
            }
            let over = problems.report(code, &message);
            let header = ResponseHeader::Error(ErrorBody { code, message });
            write_response(&mut send, "the request", &header, Vec::new()).await;
            if over {
                warn!(
                    "closing the connection from {}: over {PROBLEMS_PER_CONNECTION_MAX} bad requests",
                    problems.remote
                );
                conn.close(
                    VarInt::from_u32(CLOSE_PROTOCOL_VIOLATION),
                    b"too many bad requests",
                );
            }
            return;
        }
    };
    let no_answer = matches!(
        header.request,
        Request::Produce {
            acks: Acks::None,
            ..
        }
    );
    let name = header.request.name();
    // Only a produce keeps its place in the connection's order.
    let turn = matches!(header.request, Request::Produce { .. }).then_some(turn);
    // A fetch answers with at most what it could reserve of the response
    // budget (and at most `fetch-max-bytes`), plus at most one batch when
    // the first batch is larger (Kafka's rule, so a consumer never stalls).
    let mut _response_memory = None;
    if let Request::Fetch {
        topic,
        partition,
        offset,
        max_bytes,
        min_bytes,
        max_wait_ms,
    } = &mut header.request
    {
        let want = u64::from((*max_bytes).min(state.fetch_max_bytes));
        // The long poll holds no memory: a consumer waiting on an idle
        // partition must not keep other fetches out of the budget. Memory is
        // reserved once there is something to read, which is then read at
        // once.
        if *max_wait_ms > 0 {
            state
                .broker
                .fetch_ready(
                    topic,
                    *partition,
                    *offset,
                    u32::try_from(want).unwrap_or(u32::MAX),
                    *min_bytes,
                    *max_wait_ms,
                )
                .await;
            *max_wait_ms = 0;
        }
        let reserved = state
            .response_budget
            .reserve_up_to(
                "queued-max-response-bytes",
                want,
                FETCH_RESERVATION_BYTES_MIN,
                Duration::from_millis(BUDGET_WAIT_MS_MAX),
            )
            .await;
        match reserved {
            Ok(reservation) => {
                *max_bytes = u32::try_from(reservation.bytes().max(1)).unwrap_or(u32::MAX);
                _response_memory = Some(reservation);
            }
            Err(e) => {
                let header = ResponseHeader::Error(ErrorBody {
                    code: ErrorCode::ThrottlingQuotaExceeded,
                    message: e.to_string(),
                });
                write_response(&mut send, name, &header, Vec::new()).await;
                return;
            }
        }
    }
    let (response, payload) = dispatch(&state.broker, header.request, payload, turn).await;
    if no_answer {
        if let ResponseHeader::Error(e) = &response {
            debug!(
                "acks=0 produce from {} failed: {}",
                problems.remote, e.message
            );
        }
        let _ = send.finish();
        return;
    }
    if let ResponseHeader::Error(e) = &response {
        debug!(
            "{name} from {} failed: {:?}: {}",
            problems.remote, e.code, e.message
        );
    }
    write_response(&mut send, name, &response, payload).await;
}

/// Writes `header` and `payload` to `send` and finishes it. Both are handed
/// to quinn as they are (no copy into its send buffer; it skips an empty
/// payload).
async fn write_response(
    send: &mut quinn::SendStream,
    name: &str,
    header: &ResponseHeader,
    payload: Vec<u8>,
) {
    let (frame, payload) = match protocol::encode_header(header) {
        Ok(frame) => (frame, payload),
        Err(e) => {
            // Only a huge answer (the metadata of very many partitions, a
            // group of very many members and partitions) can fail here.
            let fallback = ResponseHeader::Error(ErrorBody {
                code: ErrorCode::UnknownServerError,
                message: format!(
                    "the node's answer to {name} is too large to send ({e}); ask about fewer \
                     topics or partitions at once"
                ),
            });
            match protocol::encode_header(&fallback) {
                Ok(frame) => (frame, Vec::new()),
                Err(_) => {
                    let _ = send.reset(VarInt::from_u32(STOP_REQUEST_REFUSED));
                    return;
                }
            }
        }
    };
    let mut chunks = [Bytes::from(frame), Bytes::from(payload)];
    match send.write_all_chunks(&mut chunks).await {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => debug!("response not delivered: {e}"),
    }
}

/// Runs one request on the broker: the response header and its payload.
///
/// A produce with a `turn` is queued for its partition in that turn (see
/// [`crate::broker::order`]).
pub async fn dispatch(
    broker: &Arc<Broker>,
    request: Request,
    payload: Vec<u8>,
    turn: Option<Turn>,
) -> (ResponseHeader, Vec<u8>) {
    let none = Vec::new;
    // A node of a cluster serves clients once it has caught up with it.
    if !request.is_node_only()
        && let Err(e) = broker.check_serving_clients()
    {
        return (ResponseHeader::Error(e.into_body()), none());
    }
    let result: Result<(Response, Vec<u8>), BrokerError> =
        match request {
            Request::Produce { topic, .. } if crate::broker::is_internal_topic(&topic) => {
                Err(crate::broker::internal_topic_refused(&topic, "produce to"))
            }
            Request::Produce {
                topic,
                partition,
                acks,
                timeout_ms,
            } => broker
                .produce_in_turn(&topic, partition, acks, timeout_ms, payload, turn)
                .await
                .map(|r| {
                    (
                        Response::Produce {
                            partition: r.partition,
                            base_offset: r.appended.base_offset,
                            log_append_time: r.appended.log_append_time,
                            log_start_offset: r.appended.log_start_offset,
                        },
                        none(),
                    )
                }),
            Request::Fetch {
                topic,
                partition,
                offset,
                max_bytes,
                min_bytes,
                max_wait_ms,
            } => broker
                .fetch(&topic, partition, offset, max_bytes, min_bytes, max_wait_ms)
                .await
                .map(|f| {
                    (
                        Response::Fetch {
                            high_watermark: f.high_watermark,
                            log_start_offset: f.log_start_offset,
                            next_offset: f.next_offset,
                        },
                        f.batches,
                    )
                }),
            Request::ListOffsets {
                topic,
                partition,
                spec,
            } => broker
                .list_offsets(&topic, partition, spec)
                .await
                .map(|(offset, timestamp)| (Response::ListOffsets { offset, timestamp }, none())),
            Request::Metadata { topics } => broker
                .metadata(topics)
                .await
                .map(|(nodes, topics)| (Response::Metadata { nodes, topics }, none())),
            Request::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
            } => broker
                .create_topic(&name, partitions, replication_factor, configs)
                .await
                .map(|()| (Response::CreateTopic, none())),
            Request::DeleteTopic { name } => broker
                .delete_topic(&name)
                .await
                .map(|()| (Response::DeleteTopic, none())),
            Request::DescribeTopic { name } => broker.describe_topic(&name).map(|d| {
                (
                    Response::DescribeTopic {
                        name: d.name,
                        configs: d.configs,
                        effective_configs: d.effective_configs,
                        partitions: d.partitions,
                    },
                    none(),
                )
            }),
            Request::AlterConfigs { name, changes } => broker
                .alter_configs(&name, changes)
                .await
                .map(|()| (Response::AlterConfigs, none())),
            Request::CreatePartitions { name, total } => broker
                .create_partitions(&name, total)
                .await
                .map(|()| (Response::CreatePartitions, none())),
            Request::JoinGroup {
                group,
                member_id,
                client_id,
                topics,
                strategies,
                session_timeout_ms,
                rebalance_timeout_ms,
                owned,
            } => {
                let params = crate::broker::group::state::JoinParams {
                    client_id,
                    topics,
                    strategies,
                    session_timeout_ms,
                    rebalance_timeout_ms,
                    owned,
                };
                broker
                    .join_group(&group, &member_id, params)
                    .await
                    .map(|r| {
                        (
                            Response::JoinGroup {
                                generation: r.generation,
                                member_id: r.member_id,
                                strategy: r.strategy.name().to_owned(),
                                assignment: r.assignment,
                            },
                            none(),
                        )
                    })
            }
            Request::Heartbeat {
                group,
                member_id,
                generation,
                wait_ms,
            } => broker
                .heartbeat(&group, &member_id, generation, wait_ms)
                .await
                .map(|()| (Response::Heartbeat, none())),
            Request::LeaveGroup { group, member_id } => broker
                .leave_group(&group, &member_id)
                .map(|()| (Response::LeaveGroup, none())),
            Request::OffsetCommit {
                group,
                member_id,
                generation,
                offsets,
            } => broker
                .commit_offsets(&group, &member_id, generation, offsets)
                .await
                .map(|()| (Response::OffsetCommit, none())),
            Request::OffsetFetch { group, partitions } => broker
                .fetch_offsets(&group, partitions)
                .map(|offsets| (Response::OffsetFetch { offsets }, none())),
            Request::ListGroups => broker
                .list_groups()
                .map(|groups| (Response::ListGroups { groups }, none())),
            Request::DescribeGroup { group } => broker.describe_group(&group).map(|d| {
                (
                    Response::DescribeGroup {
                        group,
                        state: d.state,
                        generation: d.generation,
                        strategy: d.strategy,
                        members: d.members,
                        offsets: d.offsets,
                    },
                    none(),
                )
            }),
            Request::DeleteGroup { group } => broker
                .delete_group(&group)
                .await
                .map(|()| (Response::DeleteGroup, none())),
            Request::PluginAdd { name, config } => broker
                .plugin_add(&name, payload, config)
                .await
                .map(|(kind, replaced, sha256)| {
                    (
                        Response::PluginAdd {
                            kind: kind.name().to_owned(),
                            replaced,
                            sha256,
                        },
                        none(),
                    )
                }),
            Request::PluginList => Ok((
                Response::PluginList {
                    plugins: broker.plugin_list(),
                },
                none(),
            )),
            Request::PluginRemove { name } => broker
                .plugin_remove(&name)
                .await
                .map(|()| (Response::PluginRemove, none())),
            Request::PluginEnable { name } => broker
                .plugin_enable(&name)
                .await
                .map(|was_disabled| (Response::PluginEnable { was_disabled }, none())),
            Request::FindCoordinator { group } => broker
                .find_coordinator(&group)
                .await
                .map(|(node_id, address)| (Response::FindCoordinator { node_id, address }, none())),
            other => crate::cluster::dispatch(broker, other, payload).await,
        };
    match result {
        Ok((response, payload)) => (ResponseHeader::Ok(response), payload),
        Err(e) => (ResponseHeader::Error(e.into_body()), Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use eddy_client::protocol::{OffsetSpec, encode_header, split_frame};
    use eddy_core::batch::{BatchBuilder, BatchOptions};
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;

    use super::*;
    use crate::runtime::Runtime;

    /// Upper bound for a response the tests read.
    const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

    struct Node {
        rt: Runtime,
        broker: Arc<Broker>,
        server: Option<Server>,
        ca: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Node {
        fn start(tune: impl FnOnce(&mut NodeConfig)) -> Node {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut config = NodeConfig {
                data_dir: dir.path().to_path_buf(),
                listen: "127.0.0.1:0".parse().expect("address"),
                ..NodeConfig::default()
            };
            tune(&mut config);
            config.validate().expect("valid config");
            let rt = Runtime::start(2).expect("runtime");
            let broker = Broker::open(&config, rt.handle()).expect("broker");
            let server = Server::start(&config, broker.clone(), rt.handle()).expect("server");
            Node {
                ca: dir.path().join(tls::TLS_DIR).join(tls::CA_CERT_FILE),
                rt,
                broker,
                server: Some(server),
                _dir: dir,
            }
        }

        fn addr(&self) -> SocketAddr {
            self.server.as_ref().expect("running").local_addr()
        }

        fn client(&self) -> quinn::Endpoint {
            client_endpoint(&self.rt.handle(), &self.ca)
        }

        fn stop(mut self) {
            if let Some(server) = self.server.take() {
                self.rt.block_on(server.shutdown());
            }
            self.rt
                .block_on(self.broker.shutdown())
                .expect("clean shutdown");
        }
    }

    fn client_endpoint(rt: &RuntimeHandle, ca: &Path) -> quinn::Endpoint {
        let pem = std::fs::read(ca).expect("ca.pem");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.expect("cert")).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![protocol::ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            rt.quinn_runtime(),
        )
        .expect("client endpoint");
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        endpoint
    }

    async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr) -> quinn::Connection {
        endpoint
            .connect(addr, "localhost")
            .expect("connect")
            .await
            .expect("handshake")
    }

    /// Sends raw bytes as one request; returns the raw response stream.
    async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> Vec<u8> {
        let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
        // The node may stop reading early (a refused request): that is fine.
        let _ = send.write_all(bytes).await;
        let _ = send.finish();
        recv.read_to_end(RESPONSE_BYTES_MAX)
            .await
            .expect("response stream")
    }

    fn frame(version: u16, request: Request, payload: &[u8]) -> Vec<u8> {
        let mut bytes = encode_header(&RequestHeader { version, request }).expect("encode");
        bytes.extend_from_slice(payload);
        bytes
    }

    async fn create_topic(conn: &quinn::Connection, name: &str, partitions: u32) {
        let request = Request::CreateTopic {
            name: name.into(),
            partitions,
            replication_factor: 1,
            configs: vec![],
        };
        let (h, _) = call(conn, request, &[]).await;
        assert_eq!(h, ResponseHeader::Ok(Response::CreateTopic));
    }

    /// A node whose requests (and records) may take at most `budget` bytes.
    fn node_with_request_budget(budget: u64) -> Node {
        Node::start(|c| {
            c.queued_max_request_bytes = budget;
            c.max_request_bytes = budget;
            c.topic_defaults
                .insert("max.message.bytes".into(), budget.to_string());
        })
    }

    fn split_owned(raw: &[u8]) -> (ResponseHeader, Vec<u8>) {
        let (header, payload): (ResponseHeader, &[u8]) = split_frame(raw).expect("frame");
        (header, payload.to_vec())
    }

    async fn call(
        conn: &quinn::Connection,
        request: Request,
        payload: &[u8],
    ) -> (ResponseHeader, Vec<u8>) {
        split_owned(&exchange(conn, &frame(PROTOCOL_VERSION, request, payload)).await)
    }

    /// Polls `condition` every 10 ms until it holds or `timeout` passes.
    async fn wait_until_async(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while !condition() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            smol::Timer::after(Duration::from_millis(10)).await;
        }
        true
    }

    fn error_code(header: &ResponseHeader) -> Option<ErrorCode> {
        match header {
            ResponseHeader::Error(e) => Some(e.code),
            ResponseHeader::Ok(_) => None,
        }
    }

    fn batch(value: &[u8]) -> Vec<u8> {
        let mut b = BatchBuilder::new(BatchOptions::default());
        b.push(now_ms(), None, Some(value), &[]).expect("push");
        b.build().expect("build")
    }

    fn produce(topic: &str, acks: Acks) -> Request {
        Request::Produce {
            topic: topic.into(),
            partition: Some(0),
            acks,
            timeout_ms: 0,
        }
    }

    #[test]
    fn a_full_request_budget_holds_requests_back_then_refuses_them() {
        const BUDGET: u64 = 1024 * 1024;
        let node = node_with_request_budget(BUDGET);
        let client = node.client();
        let server = node.server.as_ref().expect("running");
        node.rt.block_on(async {
            let conn = connect(&client, node.addr()).await;
            create_topic(&conn, "t", 1).await;

            // A big produce, sent but for its last bytes: the node holds
            // what it has read, which takes the whole budget.
            let big = frame(
                PROTOCOL_VERSION,
                produce("t", Acks::Leader),
                &batch(&vec![7u8; 1000 * 1024]),
            );
            let (head, tail) = big.split_at(big.len() - 16);
            let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
            send.write_all(head).await.expect("write");
            let full = wait_until_async(Duration::from_secs(30), || {
                server.queued_request_bytes() == BUDGET
            })
            .await;
            assert!(full, "held {} bytes", server.queued_request_bytes());

            // Meanwhile a small produce waits for budget, then is refused
            // with a retriable, typed error.
            let (h, _) = call(&conn, produce("t", Acks::Leader), &batch(b"small")).await;
            assert_eq!(
                error_code(&h),
                Some(ErrorCode::ThrottlingQuotaExceeded),
                "{h:?}"
            );
            assert!(ErrorCode::ThrottlingQuotaExceeded.is_retriable());
            if let ResponseHeader::Error(e) = &h {
                assert!(
                    e.message.contains("queued-max-request-bytes"),
                    "{}",
                    e.message
                );
            }

            // The big one completes, gives the budget back, and the next
            // small produce goes through.
            send.write_all(tail).await.expect("write");
            send.finish().expect("finish");
            let raw = recv
                .read_to_end(RESPONSE_BYTES_MAX)
                .await
                .expect("response");
            let (h, _): (ResponseHeader, &[u8]) = split_frame(&raw).expect("frame");
            assert!(
                matches!(
                    h,
                    ResponseHeader::Ok(Response::Produce { base_offset: 0, .. })
                ),
                "{h:?}"
            );
            let (h, _) = call(&conn, produce("t", Acks::Leader), &batch(b"small")).await;
            assert!(
                matches!(
                    h,
                    ResponseHeader::Ok(Response::Produce { base_offset: 1, .. })
                ),
                "{h:?}"
            );
            assert_eq!(server.queued_request_bytes(), 0);
        });
        node.stop();
    }

    #[test]
    fn requests_that_stall_halfway_hold_only_what_they_sent_and_are_dropped() {
        const BUDGET: u64 = 1024 * 1024;
        let node = node_with_request_budget(BUDGET);
        let client = node.client();
        let server = node.server.as_ref().expect("running");
        node.rt.block_on(async {
            let conn = connect(&client, node.addr()).await;
            create_topic(&conn, "t", 1).await;
            // A big produce first, so the connection's next payloads are
            // expected to be as big.
            let (h, _) = call(
                &conn,
                produce("t", Acks::Leader),
                &batch(&vec![7u8; 900 * 1024]),
            )
            .await;
            assert!(matches!(h, ResponseHeader::Ok(_)), "{h:?}");

            // Four produces that send their header and a few bytes, then stop.
            let head = frame(PROTOCOL_VERSION, produce("t", Acks::Leader), &[0u8; 8]);
            let mut stalled = Vec::new();
            for _ in 0..4 {
                let (mut send, recv) = conn.open_bi().await.expect("open stream");
                send.write_all(&head).await.expect("write");
                stalled.push((send, recv));
            }
            let started = std::time::Instant::now();
            let holding = wait_until_async(Duration::from_secs(30), || {
                server.queued_request_bytes() == 4 * PAYLOAD_CHUNK_BYTES_MAX as u64
            })
            .await;
            assert!(
                holding,
                "the stalled produces hold {} bytes, not one chunk each",
                server.queued_request_bytes()
            );

            // Other produces still go through at once.
            let (h, _) = call(
                &conn,
                produce("t", Acks::Leader),
                &batch(&[1u8; 600 * 1024]),
            )
            .await;
            assert!(matches!(h, ResponseHeader::Ok(_)), "{h:?}");

            // The stalled ones are dropped after REQUEST_STALL_MS, with a
            // typed answer, and give their bytes back.
            for (_send, mut recv) in stalled {
                let raw = recv
                    .read_to_end(RESPONSE_BYTES_MAX)
                    .await
                    .expect("response");
                let (h, _): (ResponseHeader, &[u8]) = split_frame(&raw).expect("frame");
                assert_eq!(error_code(&h), Some(ErrorCode::RequestTimedOut), "{h:?}");
            }
            assert!(started.elapsed() >= Duration::from_millis(REQUEST_STALL_MS));
            let freed = wait_until_async(Duration::from_secs(5), || {
                server.queued_request_bytes() == 0
            })
            .await;
            assert!(freed, "still held: {}", server.queued_request_bytes());
        });
        node.stop();
    }

    #[test]
    fn group_requests_and_answers_larger_than_64_kib_go_through() {
        let node = Node::start(|_| {});
        let client = node.client();
        node.rt.block_on(async {
            let conn = connect(&client, node.addr()).await;
            create_topic(&conn, "t", 32).await;
            // A commit of 32 offsets with 4000 bytes of metadata each: a
            // request header of about 128 KiB.
            let metadata = "m".repeat(4000);
            let offsets: Vec<eddy_client::protocol::CommitOffset> = (0..32)
                .map(|partition| eddy_client::protocol::CommitOffset {
                    topic: "t".into(),
                    partition,
                    offset: u64::from(partition) + 1,
                    metadata: metadata.clone(),
                })
                .collect();
            let commit = Request::OffsetCommit {
                group: "g".into(),
                member_id: String::new(),
                generation: -1,
                offsets,
            };
            let request = frame(PROTOCOL_VERSION, commit, &[]);
            assert!(request.len() > protocol::SMALL_HEADER_BYTES_MAX as usize);
            let (h, _) = split_owned(&exchange(&conn, &request).await);
            assert_eq!(h, ResponseHeader::Ok(Response::OffsetCommit));
            // A node whose whole request budget is smaller refuses it for
            // good, not as a retriable throttle.
            let small = node_with_request_budget(100 * 1024);
            let small_client = small.client();
            let small_conn = connect(&small_client, small.addr()).await;
            create_topic(&small_conn, "t", 32).await;
            let (h, _) = split_owned(&exchange(&small_conn, &request).await);
            let ResponseHeader::Error(e) = &h else {
                panic!("{h:?}");
            };
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{}", e.message);
            assert!(
                e.message.contains("queued-max-request-bytes"),
                "{}",
                e.message
            );
            small.stop();
            // The answer naming them all is as large.
            let (h, _) = call(
                &conn,
                Request::OffsetFetch {
                    group: "g".into(),
                    partitions: None,
                },
                &[],
            )
            .await;
            let ResponseHeader::Ok(Response::OffsetFetch { offsets }) = h else {
                panic!("{h:?}");
            };
            assert_eq!(offsets.len(), 32);
            assert!(offsets.iter().all(|o| o.metadata == metadata));
        });
        node.stop();
    }

    #[test]
    fn waiting_fetches_hold_no_response_memory() {
        const BUDGET: u64 = 256 * 1024;
        let node = Node::start(|c| {
            c.queued_max_response_bytes = BUDGET;
            c.fetch_max_bytes = BUDGET;
        });
        let client = node.client();
        let server = node.server.as_ref().expect("running");
        node.rt.block_on(async {
            let conn = connect(&client, node.addr()).await;
            for name in ["idle", "busy"] {
                create_topic(&conn, name, 1).await;
            }
            let (h, _) = call(&conn, produce("busy", Acks::Leader), &batch(b"ready")).await;
            assert!(matches!(h, ResponseHeader::Ok(_)), "{h:?}");
            let fetch = |topic: &str, max_wait_ms| Request::Fetch {
                topic: topic.into(),
                partition: 0,
                offset: 0,
                max_bytes: u32::MAX,
                min_bytes: u32::MAX,
                max_wait_ms,
            };
            // Eight long polls on an empty partition, each asking for more
            // than the whole budget.
            let mut waiting = Vec::new();
            for _ in 0..8 {
                let (mut send, recv) = conn.open_bi().await.expect("open stream");
                let request = frame(PROTOCOL_VERSION, fetch("idle", 3_000), &[]);
                send.write_all(&request).await.expect("write");
                send.finish().expect("finish");
                waiting.push(recv);
            }
            smol::Timer::after(Duration::from_millis(300)).await;
            assert_eq!(server.queued_response_bytes(), 0);
            // Another consumer's fetch is answered at once.
            let started = std::time::Instant::now();
            let (h, payload) = call(&conn, fetch("busy", 0), &[]).await;
            assert!(matches!(h, ResponseHeader::Ok(_)), "{h:?}");
            assert_eq!(eddy_core::batch::BatchIter::new(&payload).count(), 1);
            assert!(started.elapsed() < Duration::from_secs(2));
            // The long polls end empty when their wait is over.
            for mut recv in waiting {
                let raw = recv
                    .read_to_end(RESPONSE_BYTES_MAX)
                    .await
                    .expect("response");
                let (h, payload): (ResponseHeader, &[u8]) = split_frame(&raw).expect("frame");
                assert!(matches!(h, ResponseHeader::Ok(_)), "{h:?}");
                assert!(payload.is_empty());
            }
            assert_eq!(server.queued_response_bytes(), 0);
        });
        node.stop();
    }

    #[test]
    fn fetch_answers_are_capped_by_fetch_max_bytes() {
        let node = Node::start(|c| c.fetch_max_bytes = 1024);
        let client = node.client();
        node.rt.block_on(async {
            let conn = connect(&client, node.addr()).await;
            create_topic(&conn, "t", 1).await;
            for _ in 0..3 {
                let (h, _) = call(&conn, produce("t", Acks::Leader), &batch(&[1u8; 600])).await;
                assert!(matches!(h, ResponseHeader::Ok(_)), "{h:?}");
            }
            let fetch = |max_bytes| Request::Fetch {
                topic: "t".into(),
                partition: 0,
                offset: 0,
                max_bytes,
                min_bytes: 1,
                max_wait_ms: 1_000,
            };
            let (h, payload) = call(&conn, fetch(1 << 20), &[]).await;
            assert!(matches!(h, ResponseHeader::Ok(_)), "{h:?}");
            let batches = eddy_core::batch::BatchIter::new(&payload).count();
            assert_eq!(batches, 1, "two 600-byte batches are over fetch-max-bytes");
        });
        node.stop();
    }

    #[test]
    fn requests_round_trip_over_quic() {
        let node = Node::start(|_| {});
        let client = node.client();
        node.rt.block_on(async {
            let conn = connect(&client, node.addr()).await;
            create_topic(&conn, "t", 1).await;
            let (h, _) = call(&conn, produce("t", Acks::Leader), &batch(b"one")).await;
            assert!(
                matches!(
                    h,
                    ResponseHeader::Ok(Response::Produce { base_offset: 0, .. })
                ),
                "{h:?}"
            );
            // acks=0: the stream finishes without a frame.
            let raw = exchange(
                &conn,
                &frame(PROTOCOL_VERSION, produce("t", Acks::None), &batch(b"two")),
            )
            .await;
            assert!(raw.is_empty(), "acks=0 got an answer");
            let (h, payload) = call(
                &conn,
                Request::Fetch {
                    topic: "t".into(),
                    partition: 0,
                    offset: 1,
                    max_bytes: 1 << 20,
                    min_bytes: 1,
                    max_wait_ms: 5_000,
                },
                &[],
            )
            .await;
            assert!(
                matches!(
                    h,
                    ResponseHeader::Ok(Response::Fetch {
                        high_watermark: 2,
                        next_offset: 2,
                        ..
                    })
                ),
                "{h:?}"
            );
            let batches: Vec<_> = eddy_core::batch::BatchIter::new(&payload)
                .map(|b| b.expect("valid batch"))
                .collect();
            assert_eq!(batches.len(), 1);
            assert_eq!(batches[0].header.base_offset, 1);
            let records = batches[0].records(1 << 20).expect("records");
            assert_eq!(records[0].value.as_deref(), Some(&b"two"[..]));
            let (h, _) = call(
                &conn,
                Request::ListOffsets {
                    topic: "t".into(),
                    partition: 0,
                    spec: OffsetSpec::Latest,
                },
                &[],
            )
            .await;
            assert_eq!(
                h,
                ResponseHeader::Ok(Response::ListOffsets {
                    offset: Some(2),
                    timestamp: -1
                })
            );
            let (h, _) = call(&conn, Request::Metadata { topics: None }, &[]).await;
            match h {
                ResponseHeader::Ok(Response::Metadata { nodes, topics }) => {
                    assert_eq!(nodes[0].address, node.addr().to_string());
                    assert_eq!(topics[0].name, "t");
                }
                other => panic!("{other:?}"),
            }
            let (h, _) = call(&conn, Request::DescribeTopic { name: "t".into() }, &[]).await;
            assert!(
                matches!(h, ResponseHeader::Ok(Response::DescribeTopic { .. })),
                "{h:?}"
            );
            let (h, _) = call(&conn, produce("nope", Acks::Leader), &batch(b"x")).await;
            assert_eq!(error_code(&h), Some(ErrorCode::UnknownTopicOrPartition));
        });
        node.stop();
    }

    #[test]
    fn bad_input_gets_typed_errors_and_the_node_keeps_serving() {
        let node = Node::start(|c| {
            c.max_request_bytes = 64 * 1024;
            c.topic_defaults
                .insert("max.message.bytes".into(), "1024".into());
        });
        let client = node.client();
        node.rt.block_on(async {
            let conn = connect(&client, node.addr()).await;
            let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
                (
                    "garbage header",
                    vec![0, 0, 0, 3, 0xff, 0xff, 0xff],
                    ErrorCode::InvalidRequest,
                ),
                ("truncated", vec![0, 0, 0, 10, 1], ErrorCode::InvalidRequest),
                ("no prefix", vec![0, 0], ErrorCode::InvalidRequest),
                (
                    "header over the limit",
                    (protocol::REQUEST_HEADER_BYTES_MAX + 1)
                        .to_be_bytes()
                        .to_vec(),
                    ErrorCode::InvalidRequest,
                ),
                // version 1, then request variant 200 (a postcard varint).
                (
                    "unknown request",
                    vec![0, 0, 0, 3, 1, 0xc8, 0x01],
                    ErrorCode::InvalidRequest,
                ),
                (
                    "newer version",
                    frame(2, Request::Metadata { topics: None }, &[]),
                    ErrorCode::UnsupportedVersion,
                ),
                (
                    "payload on metadata",
                    frame(PROTOCOL_VERSION, Request::Metadata { topics: None }, b"x"),
                    ErrorCode::InvalidRequest,
                ),
                (
                    "produce over max-request-bytes",
                    frame(
                        PROTOCOL_VERSION,
                        produce("t", Acks::Leader),
                        &vec![0u8; 128 * 1024],
                    ),
                    ErrorCode::InvalidRequest,
                ),
            ];
            for (what, bytes, expected) in cases {
                let raw = exchange(&conn, &bytes).await;
                let (h, _): (ResponseHeader, &[u8]) =
                    split_frame(&raw).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(error_code(&h), Some(expected), "{what}: {h:?}");
            }
            // The same connection still works.
            let (h, _) = call(&conn, Request::Metadata { topics: None }, &[]).await;
            assert!(matches!(h, ResponseHeader::Ok(_)), "{h:?}");
        });
        node.stop();
    }

    #[test]
    fn a_connection_sending_only_garbage_is_closed() {
        let node = Node::start(|_| {});
        let client = node.client();
        node.rt.block_on(async {
            let conn = connect(&client, node.addr()).await;
            let mut sent = 0u32;
            loop {
                let Ok((mut send, mut recv)) = conn.open_bi().await else {
                    break;
                };
                let _ = send.write_all(&[0, 0, 0, 2, 0xff, 0xff]).await;
                let _ = send.finish();
                if recv.read_to_end(RESPONSE_BYTES_MAX).await.is_err() {
                    break;
                }
                sent += 1;
                assert!(sent <= PROBLEMS_PER_CONNECTION_MAX + 2, "never closed");
            }
            let reason = conn.closed().await;
            assert!(
                matches!(
                    &reason,
                    quinn::ConnectionError::ApplicationClosed(c)
                        if c.error_code == VarInt::from_u32(CLOSE_PROTOCOL_VIOLATION)
                ),
                "{reason:?}"
            );
            // Others are served.
            let other = connect(&client, node.addr()).await;
            let (h, _) = call(&other, Request::Metadata { topics: None }, &[]).await;
            assert!(matches!(h, ResponseHeader::Ok(_)), "{h:?}");
        });
        node.stop();
    }

    #[test]
    fn connections_over_the_limit_are_refused() {
        let node = Node::start(|c| c.max_connections = 1);
        let client = node.client();
        node.rt.block_on(async {
            let first = connect(&client, node.addr()).await;
            let second = client
                .connect(node.addr(), "localhost")
                .expect("connect")
                .await;
            assert!(second.is_err(), "second connection accepted");
            let (h, _) = call(&first, Request::Metadata { topics: None }, &[]).await;
            assert!(matches!(h, ResponseHeader::Ok(_)), "{h:?}");
            first.close(VarInt::from_u32(0), b"done");
            // Once the node saw the close, a new connection fits again.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let attempt = client
                    .connect(node.addr(), "localhost")
                    .expect("connect")
                    .await;
                if let Ok(conn) = attempt {
                    let (h, _) = call(&conn, Request::Metadata { topics: None }, &[]).await;
                    assert!(matches!(h, ResponseHeader::Ok(_)), "{h:?}");
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "slot never freed");
                smol::Timer::after(Duration::from_millis(50)).await;
            }
        });
        node.stop();
    }
}
