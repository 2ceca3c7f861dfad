//! The QUIC connection to a node: one [`Client`] per node, shared by producers,
//! consumers and admin calls.
//!
//! A [`Client`] owns a quinn endpoint on its [runtime](crate::runtime) and at most one live
//! connection. Every request opens its own bidirectional stream (see
//! [`crate::protocol`]), so concurrent requests never wait behind each other on the
//! client side; the node bounds how many streams may be open at once and quinn makes
//! `open_bi` wait for room.
//!
//! The connection is dialled on first use and again after it is lost (the node
//! restarted, the link dropped, the idle timeout fired): the next request re-dials,
//! after a backoff that doubles per consecutive failure up to
//! [`ClientOptions::reconnect_backoff_max_ms`] (Kafka's `reconnect.backoff.ms` and
//! `reconnect.backoff.max.ms`). A request that times out closes the connection, as
//! Kafka's network client does, because a node that does not answer within the
//! timeout is more likely gone than slow; keep-alives and the idle timeout notice a
//! silently dead node even without traffic.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::protocol::{
    ALPN, ConfigChange, ErrorBody, ErrorCode, LENGTH_PREFIX_BYTES, NodeInfo, OffsetSpec,
    PROTOCOL_VERSION, PartitionInfo, RESPONSE_HEADER_BYTES_MAX, Request, RequestHeader, Response,
    ResponseHeader, SMALL_HEADER_BYTES_MAX, TopicMetadata, decode_header, decode_header_len,
    encode_header,
};

/// Default `host:port` of a node on this machine.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7878";
/// Where a node started in the current directory keeps its CA certificate.
pub const DEFAULT_CA_FILE: &str = "./eddy-data/tls/ca.pem";
/// The name in the certificate a node creates for itself.
pub const DEFAULT_SERVER_NAME: &str = "localhost";
/// Default for [`ClientOptions::response_bytes_max`]: 64 MiB.
pub const RESPONSE_BYTES_MAX_DEFAULT: u32 = 64 * 1024 * 1024;
/// Largest CA file read (a bundle of many certificates is still far below this).
const CA_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Flow-control windows: wide enough that one stream can carry a fetch of several
/// MiB at loopback speed without waiting for window updates.
const STREAM_RECEIVE_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
const RECEIVE_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
const SEND_WINDOW_BYTES: u64 = 16 * 1024 * 1024;
/// Largest UDP payload this side sends or accepts. MTU discovery grows
/// packets from 1200 bytes up to this where the path carries them (loopback,
/// LANs with jumbo frames) and settles near 1452 on plain Ethernet, so a
/// larger bound costs a slow link nothing but a few lost probes. Fewer,
/// larger packets cut the per-packet work (encryption calls, acks, syscalls)
/// on both sides. quinn hands the kernel up to 10 packets per GSO send, and
/// the kernel refuses sends over 64 KiB, so 10 × this must stay below that.
pub const MAX_UDP_PAYLOAD_BYTES: u16 = 6500;
const _: () = assert!(10 * MAX_UDP_PAYLOAD_BYTES as u32 + 48 <= 65_535);

/// quinn's endpoint settings for both sides: accept packets up to
/// [`MAX_UDP_PAYLOAD_BYTES`] (quinn's own default stops at 1472).
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    // Within quinn's bounds (1200..=65527), so this cannot fail.
    let _ = config.max_udp_payload_size(MAX_UDP_PAYLOAD_BYTES);
    config
}

/// Lets MTU discovery search up to [`MAX_UDP_PAYLOAD_BYTES`].
pub fn discover_mtu_up_to_max(transport: &mut quinn::TransportConfig) {
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD_BYTES);
    transport.mtu_discovery_config(Some(mtu));
}

/// Socket buffer asked for in each direction (the kernel caps it at
/// `net.core.rmem_max` / `wmem_max`). Linux's default of 208 KiB holds about
/// 30 full packets: a burst over that is dropped, and QUIC then waits for a
/// probe timeout (tens of ms) before it resends, which is what the tail
/// latency of a fast link is made of.
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Asks for [`SOCKET_BUFFER_BYTES`] of receive and send buffer on `socket`.
/// A kernel that gives less (or refuses) leaves the socket as it was: the
/// link still works, only bursts may be dropped and resent.
pub fn widen_socket_buffers(socket: &UdpSocket) {
    let sock = socket2::SockRef::from(socket);
    if let Err(e) = sock.set_recv_buffer_size(SOCKET_BUFFER_BYTES) {
        log::debug!("cannot widen the UDP receive buffer: {e}");
    }
    if let Err(e) = sock.set_send_buffer_size(SOCKET_BUFFER_BYTES) {
        log::debug!("cannot widen the UDP send buffer: {e}");
    }
    if let (Ok(recv), Ok(send)) = (sock.recv_buffer_size(), sock.send_buffer_size()) {
        log::debug!("UDP socket buffers: {recv} bytes in, {send} out");
    }
}

/// QUIC application error code sent when the client closes a connection on purpose.
const CLOSE_CODE_NORMAL: u32 = 0;
/// QUIC application error code sent when a request timed out on the connection.
const CLOSE_CODE_TIMEOUT: u32 = 1;

const _: () = assert!(STREAM_RECEIVE_WINDOW_BYTES <= RECEIVE_WINDOW_BYTES);
const _: () = assert!(RESPONSE_HEADER_BYTES_MAX as usize <= RESPONSE_BYTES_MAX_DEFAULT as usize);

/// How to reach a node. Build with [`ClientOptions::new`] or struct update syntax
/// over [`Default`], then check with [`ClientOptions::validate`] (done by
/// [`Client::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// `host:port` of the node (UDP). Default [`DEFAULT_SERVER`].
    pub server: String,
    /// PEM file with the CA certificate(s) that signed the node's certificate.
    /// Default [`DEFAULT_CA_FILE`], where a node started in the current directory
    /// writes its own CA.
    pub ca_file: PathBuf,
    /// Name the node's certificate must be valid for. Default `localhost`.
    pub server_name: String,
    /// Longest wait for an answer once a request is sent (Kafka's
    /// `request.timeout.ms`, 30 000). Fetch adds its `max_wait_ms`, Produce its
    /// `timeout_ms`.
    pub request_timeout_ms: u32,
    /// Longest wait for a QUIC handshake (Kafka's
    /// `socket.connection.setup.timeout.ms`, 10 000).
    pub connect_timeout_ms: u32,
    /// Wait before re-dialling after a failed dial (Kafka's `reconnect.backoff.ms`, 50).
    pub reconnect_backoff_ms: u32,
    /// Most wait between dials; the backoff doubles up to this (Kafka's
    /// `reconnect.backoff.max.ms`, 1000).
    pub reconnect_backoff_max_ms: u32,
    /// QUIC keep-alive interval while idle (1000 ms).
    pub keep_alive_interval_ms: u32,
    /// A connection that hears nothing for this long is lost (5000 ms). With
    /// keep-alives this is how long a node killed without closing its connections
    /// goes unnoticed.
    pub idle_timeout_ms: u32,
    /// Largest response payload accepted (a fetch's batches), in bytes. Default 64 MiB.
    pub response_bytes_max: u32,
    /// A certificate to present to the node (mutual TLS), or none (the default).
    /// The nodes of a cluster present theirs to each other: requests only
    /// nodes may send need one issued by the cluster's CA.
    pub client_cert: Option<ClientCert>,
}

/// A client certificate for mutual TLS: PEM files of the chain and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key of the leaf.
    pub key_file: PathBuf,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            server: DEFAULT_SERVER.to_owned(),
            ca_file: PathBuf::from(DEFAULT_CA_FILE),
            server_name: DEFAULT_SERVER_NAME.to_owned(),
            request_timeout_ms: 30_000,
            connect_timeout_ms: 10_000,
            reconnect_backoff_ms: 50,
            reconnect_backoff_max_ms: 1000,
            keep_alive_interval_ms: 1000,
            idle_timeout_ms: 5000,
            response_bytes_max: RESPONSE_BYTES_MAX_DEFAULT,
            client_cert: None,
        }
    }
}

impl ClientOptions {
    /// Defaults, with the node at `server` (`host:port`).
    pub fn new(server: impl Into<String>) -> ClientOptions {
        ClientOptions {
            server: server.into(),
            ..ClientOptions::default()
        }
    }

    /// The same options with another CA file.
    pub fn with_ca_file(mut self, ca_file: impl Into<PathBuf>) -> ClientOptions {
        self.ca_file = ca_file.into();
        self
    }

    /// Checks the relations between the values.
    pub fn validate(&self) -> Result<(), ClientError> {
        let positive = [
            ("request_timeout_ms", self.request_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("reconnect_backoff_max_ms", self.reconnect_backoff_max_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ClientError::Config(format!("{name} must be above 0")));
            }
        }
        if self.reconnect_backoff_ms > self.reconnect_backoff_max_ms {
            return Err(ClientError::Config(format!(
                "reconnect_backoff_ms ({}) is above reconnect_backoff_max_ms ({})",
                self.reconnect_backoff_ms, self.reconnect_backoff_max_ms
            )));
        }
        if self.keep_alive_interval_ms >= self.idle_timeout_ms {
            return Err(ClientError::Config(format!(
                "keep_alive_interval_ms ({}) must be below idle_timeout_ms ({}), or idle \
                 connections time out between keep-alives",
                self.keep_alive_interval_ms, self.idle_timeout_ms
            )));
        }
        if self.response_bytes_max < SMALL_HEADER_BYTES_MAX {
            return Err(ClientError::Config(format!(
                "response_bytes_max ({}) is below {SMALL_HEADER_BYTES_MAX}",
                self.response_bytes_max
            )));
        }
        if self.server_name.is_empty() {
            return Err(ClientError::Config("server_name is empty".to_owned()));
        }
        Ok(())
    }
}

/// Why a request failed. [`ClientError::is_retriable`] says whether the same request
/// may succeed later.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The CA file could not be read or holds no certificate.
    #[error("cannot read CA file {}: {reason} (start the node first, or pass --ca FILE)", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The options are inconsistent.
    #[error("invalid client options: {0}")]
    Config(String),
    /// The server address does not resolve.
    #[error("cannot resolve node address `{server}`: {reason} (expected HOST:PORT)")]
    Resolve {
        /// The address as given.
        server: String,
        /// Why.
        reason: String,
    },
    /// A local socket operation failed.
    #[error("I/O error: {0}")]
    Io(Arc<io::Error>),
    /// The QUIC or TLS handshake did not complete.
    #[error("cannot connect to {server}: {reason}")]
    Connect {
        /// The node.
        server: String,
        /// Why, with a hint.
        reason: String,
        /// Whether dialling again may help (timeouts, resets) or not (TLS).
        retriable: bool,
    },
    /// The connection dropped while the request was under way; its outcome is unknown.
    #[error("connection to {server} lost: {reason}")]
    ConnectionLost {
        /// The node.
        server: String,
        /// Why.
        reason: String,
    },
    /// No answer within the timeout; its outcome is unknown.
    #[error("{request} request to {server} timed out after {timeout_ms} ms")]
    Timeout {
        /// The request's name.
        request: &'static str,
        /// The node.
        server: String,
        /// The timeout.
        timeout_ms: u64,
    },
    /// The node closed or reset the stream without an answer; its outcome is unknown.
    #[error(
        "{request} request to {server}: the node closed the stream without answering ({reason})"
    )]
    StreamClosed {
        /// The request's name.
        request: &'static str,
        /// The node.
        server: String,
        /// How.
        reason: String,
    },
    /// The node answered with something this client cannot read, or a response that
    /// does not match the request.
    #[error("protocol error from {server}: {reason}")]
    Protocol {
        /// The node.
        server: String,
        /// What was wrong.
        reason: String,
    },
    /// The node answered with a typed error.
    #[error("{} (error {}): {}", code_name(.0.code), .0.code.code(), .0.message)]
    Server(ErrorBody),
    /// An interceptor plugin on the node rejected a record
    /// ([`ErrorCode::InvalidRecord`]); nothing of the request was stored.
    /// Sending the same records again fails the same way.
    #[error("record rejected: {reason}")]
    RecordRejected {
        /// The node's message: which record, which plugin, and its reason.
        reason: String,
    },
    /// [`Client::close`] was called.
    #[error("the client is closed")]
    Closed,
}

impl ClientError {
    /// Whether sending the same request again later may succeed: lost connections,
    /// timeouts, failed dials other than TLS failures, and the node's retriable codes.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Io(_)
            | ClientError::ConnectionLost { .. }
            | ClientError::Timeout { .. }
            | ClientError::StreamClosed { .. } => true,
            ClientError::Connect { retriable, .. } => *retriable,
            ClientError::Server(body) => body.code.is_retriable(),
            ClientError::RecordRejected { .. }
            | ClientError::CaFile { .. }
            | ClientError::Config(_)
            | ClientError::Resolve { .. }
            | ClientError::Protocol { .. }
            | ClientError::Closed => false,
        }
    }

    /// The typed error for a node's error answer.
    pub fn from_body(body: ErrorBody) -> ClientError {
        match body.code {
            ErrorCode::InvalidRecord => ClientError::RecordRejected {
                reason: body.message,
            },
            _ => ClientError::Server(body),
        }
    }

    /// The node's error code, for [`ClientError::Server`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(body) => Some(body.code),
            ClientError::RecordRejected { .. } => Some(ErrorCode::InvalidRecord),
            _ => None,
        }
    }

    /// Whether the connection (not just one request) failed; metadata may be stale.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            ClientError::ConnectionLost { .. }
                | ClientError::Connect { .. }
                | ClientError::Timeout { .. }
        )
    }

    /// Whether the node could not serve the request at all: unreachable, or
    /// just started and not yet caught up with its cluster
    /// (`BrokerNotAvailable`). Another node may answer.
    pub fn is_node_unavailable(&self) -> bool {
        self.is_connection_error() || self.code() == Some(ErrorCode::BrokerNotAvailable)
    }
}

/// A short name for an error code, for messages.
pub fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::UnknownServerError => "UnknownServerError",
        ErrorCode::OffsetOutOfRange => "OffsetOutOfRange",
        ErrorCode::CorruptMessage => "CorruptMessage",
        ErrorCode::UnknownTopicOrPartition => "UnknownTopicOrPartition",
        ErrorCode::NotLeaderOrFollower => "NotLeaderOrFollower",
        ErrorCode::RequestTimedOut => "RequestTimedOut",
        ErrorCode::MessageTooLarge => "MessageTooLarge",
        ErrorCode::InvalidTopic => "InvalidTopic",
        ErrorCode::NotEnoughReplicas => "NotEnoughReplicas",
        ErrorCode::UnsupportedVersion => "UnsupportedVersion",
        ErrorCode::TopicAlreadyExists => "TopicAlreadyExists",
        ErrorCode::InvalidPartitions => "InvalidPartitions",
        ErrorCode::InvalidReplicationFactor => "InvalidReplicationFactor",
        ErrorCode::InvalidConfig => "InvalidConfig",
        ErrorCode::InvalidRequest => "InvalidRequest",
        ErrorCode::KafkaStorageError => "KafkaStorageError",
        ErrorCode::ShuttingDown => "ShuttingDown",
        ErrorCode::ThrottlingQuotaExceeded => "ThrottlingQuotaExceeded",
        ErrorCode::IllegalGeneration => "IllegalGeneration",
        ErrorCode::InconsistentGroupProtocol => "InconsistentGroupProtocol",
        ErrorCode::InvalidGroupId => "InvalidGroupId",
        ErrorCode::UnknownMemberId => "UnknownMemberId",
        ErrorCode::InvalidSessionTimeout => "InvalidSessionTimeout",
        ErrorCode::RebalanceInProgress => "RebalanceInProgress",
        ErrorCode::NonEmptyGroup => "NonEmptyGroup",
        ErrorCode::GroupIdNotFound => "GroupIdNotFound",
        ErrorCode::OffsetMetadataTooLarge => "OffsetMetadataTooLarge",
        ErrorCode::LeaderNotAvailable => "LeaderNotAvailable",
        ErrorCode::NotEnoughReplicasAfterAppend => "NotEnoughReplicasAfterAppend",
        ErrorCode::NotController => "NotController",
        ErrorCode::FencedLeaderEpoch => "FencedLeaderEpoch",
        ErrorCode::UnknownLeaderEpoch => "UnknownLeaderEpoch",
        ErrorCode::InvalidRecord => "InvalidRecord",
        ErrorCode::PluginFailed => "PluginFailed",
        ErrorCode::PluginNotFound => "PluginNotFound",
        ErrorCode::ClusterAuthorizationFailed => "ClusterAuthorizationFailed",
        ErrorCode::CoordinatorNotAvailable => "CoordinatorNotAvailable",
        ErrorCode::NotCoordinator => "NotCoordinator",
        ErrorCode::BrokerNotAvailable => "BrokerNotAvailable",
        // `ErrorCode` is non-exhaustive: codes added later still print their number.
        #[allow(unreachable_patterns)]
        _ => "Error",
    }
}

/// The answer to a Metadata request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The nodes of the cluster.
    pub nodes: Vec<NodeInfo>,
    /// The topics asked for (or all), each with (partition, leader) pairs.
    pub topics: Vec<TopicMetadata>,
}

/// The answer to a DescribeTopic request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// The topic.
    pub name: String,
    /// Configs set on the topic.
    pub configs: Vec<(String, String)>,
    /// Every config in force, defaults included.
    pub effective_configs: Vec<(String, String)>,
    /// Per-partition state.
    pub partitions: Vec<PartitionInfo>,
}

/// An offset found by ListOffsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedOffset {
    /// The offset; `None` when no record is at or after the asked timestamp.
    pub offset: Option<u64>,
    /// The record's timestamp for timestamp lookups, else -1.
    pub timestamp: i64,
}

/// A request stream opened ahead of its request
/// ([`Client::open_request_stream`]).
pub struct RequestStream {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl std::fmt::Debug for RequestStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStream")
            .field("stream", &self.send.id())
            .finish_non_exhaustive()
    }
}

/// A connection to one node, shared: clones are cheap and use the same connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
    routes: crate::routing::SharedRoutes,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.inner.options.server)
            .field("address", &self.inner.address)
            .finish_non_exhaustive()
    }
}

struct ClientInner {
    options: ClientOptions,
    address: SocketAddr,
    endpoint: quinn::Endpoint,
    quic_config: quinn::ClientConfig,
    slot: Mutex<ConnSlot>,
    /// One dialler at a time; others wait and then use its connection.
    dial_lock: smol::lock::Mutex<()>,
    /// Where the background tasks run.
    runtime: Arc<dyn crate::runtime::Runtime>,
}

#[derive(Default)]
struct ConnSlot {
    conn: Option<quinn::Connection>,
    /// Dials that failed in a row.
    failures: u32,
    last_failure: Option<Instant>,
    closed: bool,
}

impl ClientInner {
    fn slot(&self) -> MutexGuard<'_, ConnSlot> {
        // A panic while holding this lock leaves only plain data behind.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn server(&self) -> String {
        self.options.server.clone()
    }
}

impl Client {
    /// Reads the CA file, resolves the node's address and binds a UDP socket. Does not
    /// dial: the first request does (or [`Client::connect`]).
    pub fn new(options: ClientOptions) -> Result<Client, ClientError> {
        Self::new_with_routes(
            options,
            Default::default(),
            crate::runtime::default_runtime(),
        )
    }

    /// As [`Client::new`], with the client's background tasks (QUIC, the
    /// producer's sender, fetches) on `runtime` instead of the shared
    /// client thread (see [`crate::runtime`]).
    pub fn with_runtime(
        options: ClientOptions,
        runtime: Arc<dyn crate::runtime::Runtime>,
    ) -> Result<Client, ClientError> {
        Self::new_with_routes(options, Default::default(), runtime)
    }

    /// A client sharing another's leader cache.
    pub(crate) fn new_with_routes(
        options: ClientOptions,
        routes: crate::routing::SharedRoutes,
        runtime: Arc<dyn crate::runtime::Runtime>,
    ) -> Result<Client, ClientError> {
        options.validate()?;
        let address = resolve(&options.server)?;
        let roots = load_ca(&options.ca_file)?;
        let quic_config = quic_client_config(&options, roots)?;
        let bind: SocketAddr = if address.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(bind).map_err(|e| ClientError::Io(Arc::new(e)))?;
        widen_socket_buffers(&socket);
        let endpoint = quinn::Endpoint::new(
            endpoint_config(),
            None,
            socket,
            crate::runtime::quinn_runtime(runtime.clone()),
        )
        .map_err(|e| ClientError::Io(Arc::new(e)))?;
        Ok(Client {
            inner: Arc::new(ClientInner {
                options,
                address,
                endpoint,
                quic_config,
                slot: Mutex::new(ConnSlot::default()),
                dial_lock: smol::lock::Mutex::new(()),
                runtime,
            }),
            routes,
        })
    }

    /// The runtime this client's background tasks run on.
    pub fn runtime(&self) -> &Arc<dyn crate::runtime::Runtime> {
        &self.inner.runtime
    }

    /// Starts `future` on this client's runtime. Dropping the returned task
    /// cancels it; `detach()` lets it run on its own.
    pub fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) -> smol::Task<()> {
        self.inner.runtime.spawn_boxed(Box::pin(future))
    }

    pub(crate) fn routes(&self) -> &crate::routing::SharedRoutes {
        &self.routes
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The resolved address of the node.
    pub fn server_address(&self) -> SocketAddr {
        self.inner.address
    }

    /// Dials now if there is no live connection, so that a wrong address or CA
    /// shows up before any work is queued.
    pub async fn connect(&self) -> Result<(), ClientError> {
        self.connection().await.map(|_| ())
    }

    /// Closes the connection and the endpoint, waiting (briefly) for the node to
    /// hear about it. Later requests fail with [`ClientError::Closed`].
    pub async fn close(&self) {
        let conn = {
            let mut slot = self.inner.slot();
            slot.closed = true;
            slot.conn.take()
        };
        if let Some(conn) = conn {
            conn.close(CLOSE_CODE_NORMAL.into(), b"client closed");
        }
        self.inner
            .endpoint
            .close(CLOSE_CODE_NORMAL.into(), b"client closed");
        // Bounded: a node that is gone never acknowledges the close.
        let idle = self.inner.endpoint.wait_idle();
        let _ = with_timeout(idle, Duration::from_millis(200)).await;
    }

    /// Sends one request and waits for its answer: the response and its payload
    /// (record batches for Fetch, else empty). A typed error from the node is
    /// [`ClientError::Server`].
    ///
    /// Requests other than Produce are sent again once, on a fresh connection, when
    /// a connection that was already open turns out to be lost (e.g. the node
    /// restarted): they change nothing or are idempotent. A Produce is never resent
    /// here (the producer decides), nor is a request that timed out.
    pub async fn request(
        &self,
        header: RequestHeader,
        payload: &[u8],
    ) -> Result<(Response, Vec<u8>), ClientError> {
        let (frame, name, timeout) = self.prepare(&header)?;
        let resend_on_stale = !matches!(header.request, Request::Produce { .. });
        let (conn, fresh) = self.connection().await?;
        match self
            .exchange_on(&conn, name, &frame, payload, timeout, None)
            .await
        {
            Err(e @ ClientError::ConnectionLost { .. }) if resend_on_stale && !fresh => {
                log::debug!("{name} on a stale connection failed ({e}); re-dialling once");
                let (conn, _) = self.connection().await?;
                self.exchange_on(&conn, name, &frame, payload, timeout, None)
                    .await
            }
            other => other,
        }
    }

    /// A request's frame, name and timeout.
    fn prepare(
        &self,
        header: &RequestHeader,
    ) -> Result<(Vec<u8>, &'static str, Duration), ClientError> {
        let frame = encode_header(header).map_err(|e| ClientError::Protocol {
            server: self.inner.server(),
            reason: format!("cannot encode the request: {e}"),
        })?;
        Ok((
            frame,
            header.request.name(),
            self.timeout_for(&header.request),
        ))
    }

    /// Opens the stream of a request that is written later, with
    /// [`Client::request_on`] or [`Client::send_only_on`]. The order in which
    /// streams are opened is the order in which the node queues produce
    /// requests for their partitions, so a producer opens the streams of one
    /// partition's batches in the batches' order, even when other work
    /// delays writing them.
    pub async fn open_request_stream(&self) -> Result<RequestStream, ClientError> {
        let (conn, _) = self.connection().await?;
        let timeout_ms = u64::from(self.inner.options.request_timeout_ms);
        // Waits only while the node's limit of concurrent streams is reached.
        match with_timeout(conn.open_bi(), Duration::from_millis(timeout_ms)).await {
            Some(Ok((send, recv))) => Ok(RequestStream { conn, send, recv }),
            Some(Err(e)) => {
                self.forget(&conn, None);
                Err(lost(&self.inner.options.server, &e))
            }
            None => Err(ClientError::Timeout {
                request: "open stream",
                server: self.inner.server(),
                timeout_ms,
            }),
        }
    }

    /// [`Client::request`] on a stream opened by
    /// [`Client::open_request_stream`]. Never sent again here: a failure is
    /// the caller's to retry.
    pub async fn request_on(
        &self,
        stream: RequestStream,
        header: RequestHeader,
        payload: &[u8],
    ) -> Result<(Response, Vec<u8>), ClientError> {
        let (frame, name, timeout) = self.prepare(&header)?;
        let RequestStream { conn, send, recv } = stream;
        self.exchange_on(&conn, name, &frame, payload, timeout, Some((send, recv)))
            .await
    }

    /// Sends one request for which the node sends no answer (a Produce with
    /// `acks = 0`). Returns once the node's QUIC stack has acknowledged every byte
    /// of the stream, which says nothing about whether the node appended it.
    pub async fn send_only(
        &self,
        header: RequestHeader,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        let stream = self.open_request_stream().await?;
        self.send_only_on(stream, header, payload).await
    }

    /// [`Client::send_only`] on a stream opened by
    /// [`Client::open_request_stream`].
    pub async fn send_only_on(
        &self,
        stream: RequestStream,
        header: RequestHeader,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        let (frame, name, timeout) = self.prepare(&header)?;
        let RequestStream {
            conn,
            mut send,
            recv: _recv,
        } = stream;
        let server = &self.inner.options.server;
        let send = async {
            write_request(&mut send, &frame, payload, server).await?;
            match send.stopped().await {
                Ok(_) => Ok(()),
                Err(quinn::StoppedError::ConnectionLost(e)) => Err(lost(server, &e)),
                Err(e) => Err(ClientError::StreamClosed {
                    request: name,
                    server: server.clone(),
                    reason: e.to_string(),
                }),
            }
        };
        self.finish_exchange(&conn, name, timeout, with_timeout(send, timeout).await)
    }

    /// Sends `bytes` on a new stream exactly as given (a frame or anything else),
    /// finishes the stream, and returns every byte the node sends back (up to the
    /// response limit). For protocol conformance tests and debugging tools: nothing
    /// is checked or decoded.
    pub async fn raw_exchange(&self, bytes: &[u8]) -> Result<Vec<u8>, ClientError> {
        let (conn, _) = self.connection().await?;
        let server = &self.inner.options.server;
        let max = self.inner.options.response_bytes_max as usize;
        let timeout = Duration::from_millis(u64::from(self.inner.options.request_timeout_ms));
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(server, &e))?;
            write_request(&mut send, bytes, &[], server).await?;
            recv.read_to_end(max)
                .await
                .map_err(|e| ClientError::StreamClosed {
                    request: "raw",
                    server: server.clone(),
                    reason: e.to_string(),
                })
        };
        self.finish_exchange(&conn, "raw", timeout, with_timeout(exchange, timeout).await)
    }

    /// One request on `conn`: on `opened` streams if given, else on a new pair.
    async fn exchange_on(
        &self,
        conn: &quinn::Connection,
        name: &'static str,
        frame: &[u8],
        payload: &[u8],
        timeout: Duration,
        opened: Option<(quinn::SendStream, quinn::RecvStream)>,
    ) -> Result<(Response, Vec<u8>), ClientError> {
        let server = &self.inner.options.server;
        let max = self.inner.options.response_bytes_max as usize;
        let exchange = async {
            let (mut send, mut recv) = match opened {
                Some(streams) => streams,
                None => conn.open_bi().await.map_err(|e| lost(server, &e))?,
            };
            write_request(&mut send, frame, payload, server).await?;
            read_response(&mut recv, name, server, max).await
        };
        let result = with_timeout(exchange, timeout).await;
        self.finish_exchange(conn, name, timeout, result)
    }

    /// Maps a timeout to an error and forgets a connection that failed.
    fn finish_exchange<T>(
        &self,
        conn: &quinn::Connection,
        name: &'static str,
        timeout: Duration,
        result: Option<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        match result {
            Some(Ok(value)) => Ok(value),
            Some(Err(e)) => {
                if matches!(e, ClientError::ConnectionLost { .. }) {
                    self.forget(conn, None);
                }
                Err(e)
            }
            None => {
                self.forget(conn, Some(CLOSE_CODE_TIMEOUT));
                Err(ClientError::Timeout {
                    request: name,
                    server: self.inner.server(),
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Drops `conn` from the slot if it is still the current one, closing it with
    /// `close_code` if given.
    fn forget(&self, conn: &quinn::Connection, close_code: Option<u32>) {
        let mut slot = self.inner.slot();
        if slot
            .conn
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            slot.conn = None;
        }
        drop(slot);
        if let Some(code) = close_code {
            conn.close(code.into(), b"request timed out");
        }
    }

    fn timeout_for(&self, request: &Request) -> Duration {
        let base = u64::from(self.inner.options.request_timeout_ms);
        let extra = match request {
            Request::Fetch { max_wait_ms, .. } => u64::from(*max_wait_ms),
            Request::Produce { timeout_ms, .. } => u64::from(*timeout_ms),
            Request::JoinGroup {
                rebalance_timeout_ms,
                ..
            } => u64::from(*rebalance_timeout_ms),
            Request::Heartbeat { wait_ms, .. } => u64::from(*wait_ms),
            // The node compiles the component before it answers.
            Request::PluginAdd { .. } => PLUGIN_ADD_EXTRA_TIMEOUT_MS,
            _ => 0,
        };
        Duration::from_millis(base + extra)
    }

    /// The live connection, dialling if needed; `true` when freshly dialled.
    async fn connection(&self) -> Result<(quinn::Connection, bool), ClientError> {
        if let Some(conn) = self.live()? {
            return Ok((conn, false));
        }
        let _dialling = self.inner.dial_lock.lock().await;
        // Another task may have dialled while this one waited for the lock.
        if let Some(conn) = self.live()? {
            return Ok((conn, false));
        }
        let wait = {
            let slot = self.inner.slot();
            backoff_remaining(&self.inner.options, slot.failures, slot.last_failure)
        };
        if !wait.is_zero() {
            smol::Timer::after(wait).await;
        }
        match self.dial().await {
            Ok(conn) => {
                let mut slot = self.inner.slot();
                if slot.closed {
                    conn.close(CLOSE_CODE_NORMAL.into(), b"client closed");
                    return Err(ClientError::Closed);
                }
                slot.failures = 0;
                slot.last_failure = None;
                slot.conn = Some(conn.clone());
                Ok((conn, true))
            }
            Err(e) => {
                let mut slot = self.inner.slot();
                slot.failures = slot.failures.saturating_add(1);
                slot.last_failure = Some(Instant::now());
                Err(e)
            }
        }
    }

    fn live(&self) -> Result<Option<quinn::Connection>, ClientError> {
        let mut slot = self.inner.slot();
        if slot.closed {
            return Err(ClientError::Closed);
        }
        if let Some(conn) = &slot.conn {
            if conn.close_reason().is_none() {
                return Ok(Some(conn.clone()));
            }
            slot.conn = None;
        }
        Ok(None)
    }

    async fn dial(&self) -> Result<quinn::Connection, ClientError> {
        let inner = &self.inner;
        let server = inner.server();
        log::debug!("dialling {} ({})", inner.options.server, inner.address);
        let connecting = inner
            .endpoint
            .connect_with(
                inner.quic_config.clone(),
                inner.address,
                &inner.options.server_name,
            )
            .map_err(|e| ClientError::Connect {
                server: server.clone(),
                reason: e.to_string(),
                retriable: false,
            })?;
        let timeout = Duration::from_millis(u64::from(inner.options.connect_timeout_ms));
        match with_timeout(connecting, timeout).await {
            None => Err(ClientError::Connect {
                server,
                reason: format!(
                    "no answer within {} ms (is `eddy serve` running and listening on this \
                     address?)",
                    inner.options.connect_timeout_ms
                ),
                retriable: true,
            }),
            Some(Ok(conn)) => {
                log::debug!("connected to {}", inner.options.server);
                Ok(conn)
            }
            Some(Err(e)) => Err(handshake_error(&server, &inner.options.ca_file, &e)),
        }
    }

    /// Cluster metadata for `topics`, or for every topic.
    pub async fn metadata(&self, topics: Option<Vec<String>>) -> Result<Metadata, ClientError> {
        match self.call(Request::Metadata { topics }).await? {
            Response::Metadata { nodes, topics } => Ok(Metadata { nodes, topics }),
            other => Err(self.unexpected("Metadata", &other)),
        }
    }

    /// The number of partitions of `topic`; [`ErrorCode::UnknownTopicOrPartition`]
    /// when it does not exist.
    pub async fn partition_count(&self, topic: &str) -> Result<u32, ClientError> {
        let metadata = self.metadata(Some(vec![topic.to_owned()])).await?;
        let found = metadata.topics.iter().find(|t| t.name == topic);
        match found {
            Some(t) if !t.partitions.is_empty() => {
                u32::try_from(t.partitions.len()).map_err(|_| ClientError::Protocol {
                    server: self.inner.server(),
                    reason: "more partitions than u32 can count".to_owned(),
                })
            }
            _ => Err(ClientError::Server(ErrorBody {
                code: ErrorCode::UnknownTopicOrPartition,
                message: format!("topic `{topic}` does not exist"),
            })),
        }
    }

    /// Creates a topic.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        configs: Vec<(String, String)>,
    ) -> Result<(), ClientError> {
        let request = Request::CreateTopic {
            name: name.to_owned(),
            partitions,
            replication_factor,
            configs,
        };
        match self.call(request).await? {
            Response::CreateTopic => Ok(()),
            other => Err(self.unexpected("CreateTopic", &other)),
        }
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let request = Request::DeleteTopic {
            name: name.to_owned(),
        };
        match self.call(request).await? {
            Response::DeleteTopic => Ok(()),
            other => Err(self.unexpected("DeleteTopic", &other)),
        }
    }

    /// A topic's configs and per-partition state.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, ClientError> {
        let request = Request::DescribeTopic {
            name: name.to_owned(),
        };
        match self.call(request).await? {
            Response::DescribeTopic {
                name,
                configs,
                effective_configs,
                partitions,
            } => Ok(TopicDescription {
                name,
                configs,
                effective_configs,
                partitions,
            }),
            other => Err(self.unexpected("DescribeTopic", &other)),
        }
    }

    /// Changes topic configs, in order.
    pub async fn alter_configs(
        &self,
        name: &str,
        changes: Vec<ConfigChange>,
    ) -> Result<(), ClientError> {
        let request = Request::AlterConfigs {
            name: name.to_owned(),
            changes,
        };
        match self.call(request).await? {
            Response::AlterConfigs => Ok(()),
            other => Err(self.unexpected("AlterConfigs", &other)),
        }
    }

    /// Grows a topic to `total` partitions.
    pub async fn create_partitions(&self, name: &str, total: u32) -> Result<(), ClientError> {
        let request = Request::CreatePartitions {
            name: name.to_owned(),
            total,
        };
        match self.call(request).await? {
            Response::CreatePartitions => Ok(()),
            other => Err(self.unexpected("CreatePartitions", &other)),
        }
    }

    /// The cluster's nodes, their liveness and the controller.
    pub async fn cluster_status(
        &self,
    ) -> Result<(Option<u32>, Vec<crate::protocol::ClusterNodeInfo>), ClientError> {
        match self.call(Request::ClusterStatus).await? {
            Response::ClusterStatus { controller, nodes } => Ok((controller, nodes)),
            other => Err(self.unexpected("ClusterStatus", &other)),
        }
    }

    /// Preferred leader election for `topic`, or every topic: how many
    /// partitions changed leader.
    pub async fn elect_leaders(&self, topic: Option<String>) -> Result<u32, ClientError> {
        match self.call(Request::ElectLeaders { topic }).await? {
            Response::ElectLeaders { elected } => Ok(elected),
            other => Err(self.unexpected("ElectLeaders", &other)),
        }
    }

    /// Installs the WebAssembly component `wasm` as plugin `name` with its
    /// own `config`, replacing a plugin of that name (calls in flight finish
    /// on the old one). Returns (kind, replaced, sha256).
    pub async fn plugin_add(
        &self,
        name: &str,
        wasm: &[u8],
        config: Vec<(String, String)>,
    ) -> Result<(String, bool, String), ClientError> {
        if wasm.len() as u64 > u64::from(crate::protocol::PLUGIN_WASM_BYTES_MAX) {
            return Err(ClientError::Config(format!(
                "the component is {} bytes; the node takes at most {}",
                wasm.len(),
                crate::protocol::PLUGIN_WASM_BYTES_MAX
            )));
        }
        let header = RequestHeader {
            version: PROTOCOL_VERSION,
            request: Request::PluginAdd {
                name: name.to_owned(),
                config,
            },
        };
        match self.request(header, wasm).await?.0 {
            Response::PluginAdd {
                kind,
                replaced,
                sha256,
            } => Ok((kind, replaced, sha256)),
            other => Err(self.unexpected("PluginAdd", &other)),
        }
    }

    /// Every installed plugin with its status and call statistics.
    pub async fn plugin_list(&self) -> Result<Vec<crate::protocol::PluginInfo>, ClientError> {
        match self.call(Request::PluginList).await? {
            Response::PluginList { plugins } => Ok(plugins),
            other => Err(self.unexpected("PluginList", &other)),
        }
    }

    /// Enables a plugin that was disabled after repeated failures; returns
    /// why it had been disabled (`None` if it was enabled already).
    pub async fn plugin_enable(&self, name: &str) -> Result<Option<String>, ClientError> {
        let request = Request::PluginEnable {
            name: name.to_owned(),
        };
        match self.call(request).await? {
            Response::PluginEnable { was_disabled } => Ok(was_disabled),
            other => Err(self.unexpected("PluginEnable", &other)),
        }
    }

    /// Uninstalls a plugin (no topic may name it).
    pub async fn plugin_remove(&self, name: &str) -> Result<(), ClientError> {
        let request = Request::PluginRemove {
            name: name.to_owned(),
        };
        match self.call(request).await? {
            Response::PluginRemove => Ok(()),
            other => Err(self.unexpected("PluginRemove", &other)),
        }
    }

    /// Looks up an offset of a partition.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<ListedOffset, ClientError> {
        let request = Request::ListOffsets {
            topic: topic.to_owned(),
            partition,
            spec,
        };
        match self.call(request).await? {
            Response::ListOffsets { offset, timestamp } => Ok(ListedOffset { offset, timestamp }),
            other => Err(self.unexpected("ListOffsets", &other)),
        }
    }

    async fn call(&self, request: Request) -> Result<Response, ClientError> {
        let header = RequestHeader {
            version: PROTOCOL_VERSION,
            request,
        };
        self.request(header, &[])
            .await
            .map(|(response, _)| response)
    }

    pub(crate) fn unexpected(&self, wanted: &str, got: &Response) -> ClientError {
        ClientError::Protocol {
            server: self.inner.server(),
            reason: format!("expected a {wanted} response, got {got:?}"),
        }
    }
}

/// Extra time a PluginAdd may take: the node compiles the component first.
const PLUGIN_ADD_EXTRA_TIMEOUT_MS: u64 = 120_000;

/// How long to wait before the next dial after `failures` failed ones.
fn backoff_remaining(
    options: &ClientOptions,
    failures: u32,
    last_failure: Option<Instant>,
) -> Duration {
    let Some(last) = last_failure else {
        return Duration::ZERO;
    };
    if failures == 0 {
        return Duration::ZERO;
    }
    let backoff = backoff_ms(
        options.reconnect_backoff_ms,
        options.reconnect_backoff_max_ms,
        failures,
    );
    Duration::from_millis(backoff).saturating_sub(last.elapsed())
}

/// `base * 2^(attempt-1)`, capped at `max`. `attempt` counts from 1.
pub(crate) fn backoff_ms(base_ms: u32, max_ms: u32, attempt: u32) -> u64 {
    let shift = attempt.saturating_sub(1).min(20);
    (u64::from(base_ms) << shift).min(u64::from(max_ms))
}

fn resolve(server: &str) -> Result<SocketAddr, ClientError> {
    let error = |reason: String| ClientError::Resolve {
        server: server.to_owned(),
        reason,
    };
    let mut addresses = server.to_socket_addrs().map_err(|e| error(e.to_string()))?;
    addresses
        .next()
        .ok_or_else(|| error("no address found".to_owned()))
}

/// Reads a PEM file of at most [`CA_FILE_BYTES_MAX`] bytes.
fn read_pem_file(
    path: &Path,
    error: impl Fn(String) -> ClientError,
) -> Result<Vec<u8>, ClientError> {
    let len = std::fs::metadata(path)
        .map_err(|e| error(e.to_string()))?
        .len();
    if len > CA_FILE_BYTES_MAX {
        return Err(error(format!(
            "{len} bytes is over the limit of {CA_FILE_BYTES_MAX}"
        )));
    }
    std::fs::read(path).map_err(|e| error(e.to_string()))
}

/// The chain and key of a client certificate.
fn load_client_cert(
    cert: &ClientCert,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    ClientError,
> {
    let error = |path: &Path, reason: String| {
        ClientError::Config(format!("client certificate {}: {reason}", path.display()))
    };
    let pem = read_pem_file(&cert.cert_file, |r| error(&cert.cert_file, r))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(&cert.cert_file, format!("not a PEM certificate file: {e}")))?;
    if chain.is_empty() {
        return Err(error(
            &cert.cert_file,
            "no certificate in the file".to_owned(),
        ));
    }
    let pem = read_pem_file(&cert.key_file, |r| error(&cert.key_file, r))?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| error(&cert.key_file, format!("not a PEM private key: {e}")))?;
    Ok((chain, key))
}

fn load_ca(path: &Path) -> Result<rustls::RootCertStore, ClientError> {
    let error = |reason: String| ClientError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let pem = read_pem_file(path, error)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| error(format!("not a PEM certificate file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| error(format!("invalid certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(error("no certificate in the file".to_owned()));
    }
    Ok(roots)
}

fn quic_client_config(
    options: &ClientOptions,
    roots: rustls::RootCertStore,
) -> Result<quinn::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Config(format!("TLS setup: {e}")))?
        .with_root_certificates(roots);
    let mut tls = match &options.client_cert {
        None => builder.with_no_client_auth(),
        Some(cert) => {
            let (chain, key) = load_client_cert(cert)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                ClientError::Config(format!(
                    "client certificate {}: {e}",
                    cert.cert_file.display()
                ))
            })?
        }
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| ClientError::Config(format!("TLS setup for QUIC: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let idle =
        quinn::IdleTimeout::try_from(Duration::from_millis(u64::from(options.idle_timeout_ms)))
            .map_err(|e| ClientError::Config(format!("idle_timeout_ms: {e}")))?;
    transport
        .max_idle_timeout(Some(idle))
        .stream_receive_window(STREAM_RECEIVE_WINDOW_BYTES.into())
        .receive_window(RECEIVE_WINDOW_BYTES.into())
        .send_window(SEND_WINDOW_BYTES)
        // The client never accepts streams from the node.
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into());
    discover_mtu_up_to_max(&mut transport);
    if options.keep_alive_interval_ms > 0 {
        transport.keep_alive_interval(Some(Duration::from_millis(u64::from(
            options.keep_alive_interval_ms,
        ))));
    }
    config.transport_config(Arc::new(transport));
    Ok(config)
}

fn handshake_error(server: &str, ca_file: &Path, e: &quinn::ConnectionError) -> ClientError {
    let (reason, retriable) = match e {
        quinn::ConnectionError::TransportError(t) if is_crypto_error(t.code) => (
            format!(
                "TLS handshake failed: {} (is {} the CA of this node, and does its \
                 certificate name the server? pass --ca FILE)",
                t.reason,
                ca_file.display()
            ),
            false,
        ),
        quinn::ConnectionError::ConnectionClosed(c) if is_crypto_error(c.error_code) => {
            (format!("the node refused the TLS handshake: {c}"), false)
        }
        quinn::ConnectionError::VersionMismatch => (
            "the node speaks no QUIC version this client knows".to_owned(),
            false,
        ),
        quinn::ConnectionError::LocallyClosed => ("the client is closing".to_owned(), false),
        quinn::ConnectionError::TimedOut => (
            "handshake timed out (is `eddy serve` running and listening on this address?)"
                .to_owned(),
            true,
        ),
        other => (other.to_string(), true),
    };
    ClientError::Connect {
        server: server.to_owned(),
        reason,
        retriable,
    }
}

/// QUIC carries TLS alerts as transport errors 0x100–0x1ff.
fn is_crypto_error(code: quinn::TransportErrorCode) -> bool {
    (0x100..=0x1ff).contains(&u64::from(code))
}

fn lost(server: &str, e: &quinn::ConnectionError) -> ClientError {
    ClientError::ConnectionLost {
        server: server.to_owned(),
        reason: e.to_string(),
    }
}

async fn write_request(
    send: &mut quinn::SendStream,
    frame: &[u8],
    payload: &[u8],
    server: &str,
) -> Result<(), ClientError> {
    let write = async {
        send.write_all(frame).await?;
        if !payload.is_empty() {
            send.write_all(payload).await?;
        }
        Ok::<(), quinn::WriteError>(())
    };
    match write.await {
        Ok(()) => {
            // Fails only if the stream was already finished or reset: not possible here.
            let _ = send.finish();
            Ok(())
        }
        // The node stopped reading early, which it does when it answers an error
        // before the end of the request: read its answer.
        Err(quinn::WriteError::Stopped(_)) => Ok(()),
        Err(quinn::WriteError::ConnectionLost(e)) => Err(lost(server, &e)),
        Err(e) => Err(ClientError::ConnectionLost {
            server: server.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Reads the rest of a stream into one buffer, like quinn's
/// `RecvStream::read_to_end`, but in order and without first zero-filling a
/// buffer and copying every chunk into it: each chunk is appended once.
///
/// `size_limit` bounds the bytes kept; a longer stream fails with
/// [`quinn::ReadToEndError::TooLong`] as soon as the limit is passed, before
/// more is buffered.
pub async fn read_to_end(
    recv: &mut quinn::RecvStream,
    size_limit: usize,
) -> Result<Vec<u8>, quinn::ReadToEndError> {
    const FIRST_CAPACITY: usize = 64 * 1024;
    let mut out: Vec<u8> = Vec::new();
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
        let len = out.len().saturating_add(chunk.bytes.len());
        if len > size_limit {
            return Err(quinn::ReadToEndError::TooLong);
        }
        if out.capacity() < len {
            let wanted = len
                .max(FIRST_CAPACITY.min(size_limit))
                .max(out.capacity() * 2);
            out.reserve_exact(wanted.min(size_limit) - out.len());
        }
        out.extend_from_slice(&chunk.bytes);
    }
    Ok(out)
}

async fn read_response(
    recv: &mut quinn::RecvStream,
    request: &'static str,
    server: &str,
    payload_bytes_max: usize,
) -> Result<(Response, Vec<u8>), ClientError> {
    let read_error = |e: quinn::ReadExactError| match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e)) => lost(server, &e),
        quinn::ReadExactError::FinishedEarly(n) => ClientError::StreamClosed {
            request,
            server: server.to_owned(),
            reason: format!("finished after {n} bytes of the response header"),
        },
        other => ClientError::StreamClosed {
            request,
            server: server.to_owned(),
            reason: other.to_string(),
        },
    };
    let protocol = |reason: String| ClientError::Protocol {
        server: server.to_owned(),
        reason,
    };
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    recv.read_exact(&mut prefix).await.map_err(read_error)?;
    let len = decode_header_len::<ResponseHeader>(prefix).map_err(|e| protocol(e.to_string()))?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(read_error)?;
    let header: ResponseHeader = decode_header(&body).map_err(|e| protocol(e.to_string()))?;
    let payload = match read_to_end(recv, payload_bytes_max).await {
        Ok(payload) => payload,
        Err(quinn::ReadToEndError::TooLong) => {
            return Err(protocol(format!(
                "{request} response payload is over the limit of {payload_bytes_max} bytes"
            )));
        }
        Err(quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(e))) => {
            return Err(lost(server, &e));
        }
        Err(quinn::ReadToEndError::Read(e)) => {
            return Err(ClientError::StreamClosed {
                request,
                server: server.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    match header {
        ResponseHeader::Ok(response) => Ok((response, payload)),
        ResponseHeader::Error(body) => Err(ClientError::from_body(body)),
    }
}

/// Runs `fut` for at most `timeout`; `None` if it did not finish.
pub(crate) async fn with_timeout<F: Future>(fut: F, timeout: Duration) -> Option<F::Output> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        smol::Timer::after(timeout).await;
        None
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_are_valid() {
        ClientOptions::default()
            .validate()
            .expect("defaults are valid");
        assert_eq!(ClientOptions::default().server, "127.0.0.1:7878");
    }

    #[test]
    fn inconsistent_options_are_rejected() {
        let options = ClientOptions {
            keep_alive_interval_ms: 5000,
            idle_timeout_ms: 5000,
            ..ClientOptions::default()
        };
        assert!(matches!(options.validate(), Err(ClientError::Config(_))));
        let options = ClientOptions {
            reconnect_backoff_ms: 2000,
            ..ClientOptions::default()
        };
        assert!(matches!(options.validate(), Err(ClientError::Config(_))));
        let options = ClientOptions {
            request_timeout_ms: 0,
            ..ClientOptions::default()
        };
        assert!(matches!(options.validate(), Err(ClientError::Config(_))));
    }

    #[test]
    fn missing_ca_file_says_what_to_do() {
        let options = ClientOptions::default().with_ca_file("/nonexistent/eddy/ca.pem");
        let error = Client::new(options).expect_err("no CA file");
        assert!(matches!(error, ClientError::CaFile { .. }));
        let message = error.to_string();
        assert!(message.contains("/nonexistent/eddy/ca.pem"), "{message}");
        assert!(message.contains("--ca FILE"), "{message}");
        assert!(!error.is_retriable());
    }

    #[test]
    fn a_file_without_certificates_is_rejected() {
        let dir = std::env::temp_dir().join(format!("eddy-client-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let error = load_ca(&path).expect_err("no certificate");
        assert!(error.to_string().contains("no certificate"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_addresses_are_reported() {
        let error = resolve("no-port-here").expect_err("no port");
        assert!(matches!(error, ClientError::Resolve { .. }));
        assert_eq!(
            resolve("127.0.0.1:7878").expect("resolves"),
            "127.0.0.1:7878".parse().expect("valid")
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff_ms(50, 1000, 1), 50);
        assert_eq!(backoff_ms(50, 1000, 2), 100);
        assert_eq!(backoff_ms(50, 1000, 5), 800);
        assert_eq!(backoff_ms(50, 1000, 6), 1000);
        assert_eq!(backoff_ms(50, 1000, u32::MAX), 1000);
        let options = ClientOptions::default();
        assert_eq!(backoff_remaining(&options, 3, None), Duration::ZERO);
        assert!(backoff_remaining(&options, 3, Some(Instant::now())) > Duration::ZERO);
    }

    #[test]
    fn retriability_follows_the_error() {
        let server = |code| {
            ClientError::Server(ErrorBody {
                code,
                message: "m".into(),
            })
        };
        assert!(server(ErrorCode::NotLeaderOrFollower).is_retriable());
        assert!(!server(ErrorCode::UnknownTopicOrPartition).is_retriable());
        let lost = ClientError::ConnectionLost {
            server: "s".into(),
            reason: "r".into(),
        };
        assert!(lost.is_retriable());
        assert!(lost.is_connection_error());
        assert!(lost.is_node_unavailable());
        // A node catching up after its start: retriable, and another node
        // may answer; a node's refusal is not a lost connection.
        let starting = server(ErrorCode::BrokerNotAvailable);
        assert!(starting.is_retriable());
        assert!(starting.is_node_unavailable());
        assert!(!starting.is_connection_error());
        assert!(!server(ErrorCode::NotLeaderOrFollower).is_node_unavailable());
        assert_eq!(
            starting.to_string(),
            "BrokerNotAvailable (error 8): m",
            "Kafka's number for BROKER_NOT_AVAILABLE"
        );
        let tls = ClientError::Connect {
            server: "s".into(),
            reason: "r".into(),
            retriable: false,
        };
        assert!(!tls.is_retriable());
        let message = server(ErrorCode::UnknownTopicOrPartition).to_string();
        assert_eq!(message, "UnknownTopicOrPartition (error 3): m");
    }
}
