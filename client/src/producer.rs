//! The producer: batching per partition, linger, partitioning, compression, acks,
//! retries with backoff, bounded memory and bounded in-flight requests.
//!
//! [`Producer::send`] encodes the record straight into the open batch of its
//! partition (one [`BatchBuilder`] per topic-partition) and returns a
//! [`DeliveryFuture`] that resolves when the batch is acknowledged. No task is
//! spawned and nothing is allocated per record beyond what the batch builder needs:
//! the future shares its batch's result slot.
//!
//! A batch is sealed when the next record would take it over `batch_size` bytes
//! (Kafka's `batch.size`; a single larger record gets a batch of its own), or when
//! it has waited `linger_ms`. One background task per producer seals lingering
//! batches and hands sealed ones to a request task each, at most
//! `max_in_flight_requests_per_connection` at a time.
//!
//! # Delivery guarantees
//!
//! Retriable failures (a lost connection, a timeout, a retriable error code) are
//! retried with exponential backoff from `retry_backoff_ms` to
//! `retry_backoff_max_ms`, up to `retries` times and within `delivery_timeout_ms`
//! of the batch being sealed. Without idempotence (not implemented yet) a retry
//! after a lost *response* may write the batch twice, and with more than one
//! request in flight a retried batch may land after a later one of the same
//! partition: this is Kafka's behaviour with `enable.idempotence=false` (set
//! `max_in_flight_requests_per_connection` to 1 to keep the order). Without
//! retries, batches of one partition land in the order they were sealed, however
//! many are in flight (see `OpenOrder`). With `acks = 0`
//! offsets are unknown, and a batch counts as sent once the node's QUIC stack has
//! acknowledged its bytes; it is resent only if the connection failed before that.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eddy_core::batch::header::HEADER_LEN;
use eddy_core::batch::{BatchBuilder, BatchError, BatchOptions, Compression, RecordHeader};
use event_listener::Event;
use smol::lock::{Semaphore, SemaphoreGuardArc};

use crate::connection::{Client, ClientError, RequestStream, backoff_ms, with_timeout};
use crate::partition_for_key;
use crate::protocol::{Acks, ErrorCode, PROTOCOL_VERSION, Request, RequestHeader, Response};

/// Most bytes allocated for a new batch before its records arrive (a larger
/// `batch_size` grows the batch as records come).
const BATCH_PREALLOC_BYTES_MAX: u32 = 1024 * 1024;
/// Partitions the sender remembers the last batch of before it forgets those
/// whose stream is open.
const OPEN_ORDER_PARTITIONS_KEPT: usize = 256;

/// Producer settings, under Kafka's names (`batch.size` is `batch_size`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    /// Most bytes of records per batch before it is sealed (`batch.size`, 16 384).
    pub batch_size: u32,
    /// Longest a batch waits for more records (`linger.ms`, 5).
    pub linger_ms: u32,
    /// Codec of each batch (`compression.type`, none).
    pub compression: Compression,
    /// When the node answers (`acks`, all).
    pub acks: Acks,
    /// Most retries of a batch (`retries`, unbounded: `delivery_timeout_ms` bounds them).
    pub retries: u32,
    /// First wait before a retry (`retry.backoff.ms`, 100); doubles per retry.
    pub retry_backoff_ms: u32,
    /// Most wait before a retry (`retry.backoff.max.ms`, 1000).
    pub retry_backoff_max_ms: u32,
    /// Produce requests outstanding at once (`max.in.flight.requests.per.connection`, 5).
    pub max_in_flight_requests_per_connection: u32,
    /// How long the node may take to answer a produce (`request.timeout.ms`, 30 000).
    pub request_timeout_ms: u32,
    /// Longest from a batch being sealed to its final outcome, retries included
    /// (`delivery.timeout.ms`, 120 000).
    pub delivery_timeout_ms: u32,
    /// Most bytes of records buffered or in flight (`buffer.memory`, 32 MiB);
    /// [`Producer::send`] waits for room.
    pub buffer_memory: u64,
    /// Longest [`Producer::send`] waits for buffer room or metadata (`max.block.ms`, 60 000).
    pub max_block_ms: u32,
    /// Largest record, as encoded in a batch (`max.request.size`, 1 MiB).
    pub max_request_size: u32,
    /// Partition counts are looked up again after this long (`metadata.max.age.ms`, 300 000).
    pub metadata_max_age_ms: u32,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            batch_size: 16_384,
            linger_ms: 5,
            compression: Compression::None,
            acks: Acks::All,
            retries: u32::MAX,
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 1000,
            max_in_flight_requests_per_connection: 5,
            request_timeout_ms: 30_000,
            delivery_timeout_ms: 120_000,
            buffer_memory: 32 * 1024 * 1024,
            max_block_ms: 60_000,
            max_request_size: 1024 * 1024,
            metadata_max_age_ms: 300_000,
        }
    }
}

impl ProducerConfig {
    /// Checks the values and their relations (Kafka's rule: `delivery.timeout.ms`
    /// must be at least `linger.ms + request.timeout.ms`).
    pub fn validate(&self) -> Result<(), ProduceError> {
        let bad = |m: String| Err(ProduceError::Config(m));
        if self.batch_size == 0 {
            return bad("batch_size must be above 0".into());
        }
        if self.max_in_flight_requests_per_connection == 0 {
            return bad("max_in_flight_requests_per_connection must be above 0".into());
        }
        if self.request_timeout_ms == 0 {
            return bad("request_timeout_ms must be above 0".into());
        }
        if u64::from(self.delivery_timeout_ms)
            < u64::from(self.linger_ms) + u64::from(self.request_timeout_ms)
        {
            return bad(format!(
                "delivery_timeout_ms ({}) must be at least linger_ms + request_timeout_ms ({})",
                self.delivery_timeout_ms,
                u64::from(self.linger_ms) + u64::from(self.request_timeout_ms)
            ));
        }
        if self.retry_backoff_ms > self.retry_backoff_max_ms {
            return bad(format!(
                "retry_backoff_ms ({}) is above retry_backoff_max_ms ({})",
                self.retry_backoff_ms, self.retry_backoff_max_ms
            ));
        }
        if (self.max_request_size as usize) <= HEADER_LEN {
            return bad(format!(
                "max_request_size ({}) cannot hold a batch header",
                self.max_request_size
            ));
        }
        if self.buffer_memory < u64::from(self.max_request_size) {
            return bad(format!(
                "buffer_memory ({}) must hold at least one record of max_request_size ({})",
                self.buffer_memory, self.max_request_size
            ));
        }
        if matches!(self.compression, Compression::Snappy) {
            return bad("snappy compression is not supported; use lz4, zstd or gzip".into());
        }
        Ok(())
    }
}

/// Parses Kafka's `acks` values: `0`, `1`, `all` (or `-1`).
pub fn parse_acks(s: &str) -> Option<Acks> {
    match s {
        "0" => Some(Acks::None),
        "1" => Some(Acks::Leader),
        "all" | "-1" => Some(Acks::All),
        _ => None,
    }
}

/// A record to send, owning its parts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProducerRecord {
    /// Topic.
    pub topic: String,
    /// Partition; `None` lets the partitioner choose.
    pub partition: Option<u32>,
    /// Key; `None` is Kafka's null key.
    pub key: Option<Vec<u8>>,
    /// Value; `None` is a null value (a tombstone under compaction).
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<RecordHeader>,
    /// Create time in ms since the epoch; `None` is now.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    /// A record with a value and nothing else.
    pub fn new(topic: impl Into<String>, value: impl Into<Vec<u8>>) -> ProducerRecord {
        ProducerRecord {
            topic: topic.into(),
            value: Some(value.into()),
            ..ProducerRecord::default()
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> ProducerRecord {
        self.key = Some(key.into());
        self
    }

    /// Sets the partition.
    pub fn with_partition(mut self, partition: u32) -> ProducerRecord {
        self.partition = Some(partition);
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, key: &str, value: impl Into<Vec<u8>>) -> ProducerRecord {
        self.headers.push(RecordHeader {
            key: key.to_owned(),
            value: Some(value.into()),
        });
        self
    }

    /// Sets the timestamp (ms since the epoch).
    pub fn with_timestamp(mut self, timestamp: i64) -> ProducerRecord {
        self.timestamp = Some(timestamp);
        self
    }

    /// The same record, borrowed.
    pub fn borrowed(&self) -> ProducerRecordRef<'_> {
        ProducerRecordRef {
            topic: &self.topic,
            partition: self.partition,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: &self.headers,
            timestamp: self.timestamp,
        }
    }
}

/// A record to send, borrowing its parts: for callers that reuse buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProducerRecordRef<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition; `None` lets the partitioner choose.
    pub partition: Option<u32>,
    /// Key; `None` is Kafka's null key.
    pub key: Option<&'a [u8]>,
    /// Value; `None` is a null value.
    pub value: Option<&'a [u8]>,
    /// Headers, in order.
    pub headers: &'a [RecordHeader],
    /// Create time in ms since the epoch; `None` is now.
    pub timestamp: Option<i64>,
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: u32,
    /// Offset; `None` with `acks = 0` (Kafka reports -1).
    pub offset: Option<u64>,
    /// The record's timestamp: its create time, or the node's append time for
    /// topics with `message.timestamp.type=LogAppendTime`.
    pub timestamp: i64,
}

/// Why a record was not produced.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProduceError {
    /// The producer config is inconsistent.
    #[error("invalid producer config: {0}")]
    Config(String),
    /// The topic does not exist.
    #[error("topic `{0}` does not exist (create it with `eddy topic create {0}`)")]
    UnknownTopic(String),
    /// The record names a partition the topic does not have.
    #[error("partition {partition} of topic `{topic}` does not exist (the topic has {partitions})")]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// The topic's partition count.
        partitions: u32,
    },
    /// The record alone is over `max_request_size`.
    #[error("a record of up to {size} bytes is over max_request_size ({max} bytes)")]
    RecordTooLarge {
        /// Its encoded size (upper bound).
        size: u64,
        /// The limit.
        max: u64,
    },
    /// No buffer room (or no metadata) within `max_block_ms`.
    #[error(
        "send blocked for max_block_ms ({0} ms): the buffer is full or the node is unreachable"
    )]
    BlockTimeout(u32),
    /// The batch was not acknowledged within `delivery_timeout_ms`.
    #[error("not acknowledged within delivery_timeout_ms ({timeout_ms} ms){}", last.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default())]
    DeliveryTimeout {
        /// The timeout.
        timeout_ms: u32,
        /// The last error, if an attempt failed.
        last: Option<ClientError>,
    },
    /// The record could not be encoded.
    #[error("cannot build the record batch: {0}")]
    Batch(BatchError),
    /// The node or the connection failed (after retries, for retriable errors).
    #[error(transparent)]
    Client(ClientError),
    /// The producer was closed before the record was sent.
    #[error("the producer is closed")]
    Closed,
}

impl ProduceError {
    /// Whether sending the record again later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ProduceError::BlockTimeout(_) | ProduceError::DeliveryTimeout { .. } => true,
            ProduceError::Client(e) => e.is_retriable(),
            _ => false,
        }
    }
}

/// Resolves to the record's [`RecordMetadata`] once its batch is acknowledged, or to
/// the batch's error. Dropping it does not cancel the send.
#[derive(Debug)]
#[must_use = "the record is sent anyway; await this to learn whether it was acknowledged"]
pub struct DeliveryFuture {
    batch: Arc<BatchResult>,
    topic: Arc<str>,
    partition: u32,
    /// Offset delta of the record in its batch.
    index: u32,
    timestamp: i64,
    /// This future's entry in the batch's waker list, once registered.
    waker_slot: Option<usize>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ProduceError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut state = lock(&this.batch.state);
        if let Some(outcome) = &state.outcome {
            return Poll::Ready(match outcome {
                Ok(delivered) => Ok(RecordMetadata {
                    topic: this.topic.clone(),
                    partition: this.partition,
                    offset: delivered
                        .base_offset
                        .map(|base| base.saturating_add(u64::from(this.index))),
                    timestamp: if delivered.log_append_time >= 0 {
                        delivered.log_append_time
                    } else {
                        this.timestamp
                    },
                }),
                Err(e) => Err(e.clone()),
            });
        }
        match this.waker_slot.and_then(|i| state.wakers.get_mut(i)) {
            Some(waker) => {
                if !waker.will_wake(cx.waker()) {
                    waker.clone_from(cx.waker());
                }
            }
            None => {
                state.wakers.push(cx.waker().clone());
                this.waker_slot = Some(state.wakers.len() - 1);
            }
        }
        Poll::Pending
    }
}

/// The outcome of one batch, shared by the futures of its records.
#[derive(Debug, Default)]
struct BatchResult {
    state: Mutex<BatchResultState>,
}

#[derive(Debug, Default)]
struct BatchResultState {
    outcome: Option<Result<Delivered, ProduceError>>,
    wakers: Vec<Waker>,
}

impl BatchResult {
    fn complete(&self, outcome: Result<Delivered, ProduceError>) {
        let wakers = {
            let mut state = lock(&self.state);
            state.outcome = Some(outcome);
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delivered {
    base_offset: Option<u64>,
    log_append_time: i64,
}

/// Sends records to one node. Cheap to clone; clones share batches and buffers.
#[derive(Debug, Clone)]
pub struct Producer {
    handle: Arc<ProducerHandle>,
}

#[derive(Debug)]
struct ProducerHandle {
    shared: Arc<Shared>,
    sender: Mutex<Option<smol::Task<()>>>,
}

impl Drop for ProducerHandle {
    fn drop(&mut self) {
        // Dropped without `close`: pending batches are still sent by the detached
        // sender task, as long as the process lives.
        self.shared.begin_close();
        if let Some(task) = lock(&self.sender).take() {
            task.detach();
        }
    }
}

#[derive(Debug)]
struct Shared {
    client: Client,
    config: ProducerConfig,
    state: Mutex<State>,
    /// The sender task has something to do: a sealed batch, a new linger deadline,
    /// a flush, a close.
    wake_sender: Event,
    /// Buffer room was freed.
    room: Event,
    /// A batch completed.
    completed: Event,
    in_flight: Arc<Semaphore>,
}

#[derive(Debug)]
struct State {
    topics: HashMap<String, TopicState, BuildHasherDefault<FxHasher>>,
    /// Open batches in creation order, hence in linger-deadline order.
    lingering: VecDeque<LingerEntry>,
    ready: VecDeque<SealedBatch>,
    buffered_bytes: u64,
    next_batch_id: u64,
    /// Batches (open, sealed or in flight) not completed yet.
    incomplete: BTreeSet<u64>,
    closing: bool,
    rng: u64,
}

#[derive(Debug)]
struct TopicState {
    name: Arc<str>,
    partitions: u32,
    metadata_at: Instant,
    stale: bool,
    /// A background lookup is under way.
    refreshing: bool,
    /// The open batch of each partition.
    open: Vec<Option<OpenBatch>>,
    /// The sticky partition for records without key or partition.
    sticky: Option<u32>,
    /// The sticky partition before the current one: the next choice avoids it.
    last_sticky: Option<u32>,
}

#[derive(Debug)]
struct OpenBatch {
    id: u64,
    builder: BatchBuilder,
    result: Arc<BatchResult>,
    bytes: u64,
}

#[derive(Debug)]
struct LingerEntry {
    deadline: Instant,
    topic: Arc<str>,
    partition: u32,
    id: u64,
}

#[derive(Debug)]
struct SealedBatch {
    id: u64,
    topic: Arc<str>,
    partition: u32,
    builder: BatchBuilder,
    result: Arc<BatchResult>,
    bytes: u64,
    sealed: Instant,
}

/// FxHash (as in rustc): much cheaper than SipHash for the short topic names the
/// topic map is keyed by, which the application (not the network) chooses.
#[derive(Debug, Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn write_usize(&mut self, word: usize) {
        self.add(word as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The protected data stays consistent at every unlock point; a panic elsewhere
    // must not wedge every other sender.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A record added to a batch.
#[derive(Debug)]
struct Appended {
    future: DeliveryFuture,
    /// The sender task has new work (a sealed batch or a first linger deadline).
    wake: bool,
    /// Look this topic up again, in the background.
    refresh: Option<Arc<str>>,
}

/// What `send` must do before it can append.
#[derive(Debug)]
enum Blocked {
    /// Look up the topic's partitions.
    Metadata,
    /// Wait for buffer room.
    Room(event_listener::EventListener),
}

impl Producer {
    /// A producer sending through `client`. Spawns its sender task on smol's global
    /// executor.
    pub fn new(client: Client, config: ProducerConfig) -> Result<Producer, ProduceError> {
        config.validate()?;
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        let shared = Arc::new(Shared {
            client,
            in_flight: Arc::new(Semaphore::new(
                config.max_in_flight_requests_per_connection as usize,
            )),
            config,
            state: Mutex::new(State::new(seed)),
            wake_sender: Event::new(),
            room: Event::new(),
            completed: Event::new(),
        });
        let sender = shared.client.spawn(run_sender(shared.clone()));
        Ok(Producer {
            handle: Arc::new(ProducerHandle {
                shared,
                sender: Mutex::new(Some(sender)),
            }),
        })
    }

    /// The config this producer runs with.
    pub fn config(&self) -> &ProducerConfig {
        &self.handle.shared.config
    }

    /// The client this producer sends through.
    pub fn client(&self) -> &Client {
        &self.handle.shared.client
    }

    /// Adds a record to its partition's batch, waiting first (up to `max_block_ms`)
    /// for the topic's metadata or for buffer room. Records of one partition are
    /// sent in the order of their `send` calls. The returned future resolves when
    /// the record is acknowledged; errors here mean the record was not queued.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture, ProduceError> {
        self.send_ref(record.borrowed()).await
    }

    /// [`Producer::send`] for a borrowed record: its bytes are copied into the batch.
    pub async fn send_ref(
        &self,
        record: ProducerRecordRef<'_>,
    ) -> Result<DeliveryFuture, ProduceError> {
        let shared = &self.handle.shared;
        let config = &shared.config;
        let size = record_size_bound(&record);
        let max = u64::from(config.max_request_size);
        if size + HEADER_LEN as u64 > max {
            return Err(ProduceError::RecordTooLarge {
                size: size + HEADER_LEN as u64,
                max,
            });
        }
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let block_ms = config.max_block_ms;
        // Read the clock only if the call has to wait: most appends do not.
        let mut deadline = None;
        let mut deadline = || {
            *deadline
                .get_or_insert_with(|| Instant::now() + Duration::from_millis(u64::from(block_ms)))
        };
        let mut refreshed = false;
        loop {
            let blocked = {
                let mut state = lock(&shared.state);
                match state.try_append(config, &shared.room, &record, timestamp, refreshed)? {
                    Ok(Appended {
                        future,
                        wake,
                        refresh,
                    }) => {
                        drop(state);
                        if wake {
                            shared.wake_sender.notify(1);
                        }
                        if let Some(topic) = refresh {
                            spawn_refresh(shared, topic);
                        }
                        return Ok(future);
                    }
                    Err(blocked) => blocked,
                }
            };
            match blocked {
                Blocked::Metadata => {
                    shared.refresh_metadata(record.topic, deadline()).await?;
                    refreshed = true;
                }
                Blocked::Room(listener) => {
                    let left = deadline().saturating_duration_since(Instant::now());
                    if with_timeout(listener, left).await.is_none() {
                        return Err(ProduceError::BlockTimeout(block_ms));
                    }
                }
            }
        }
    }

    /// Sends one record and waits for its acknowledgement.
    pub async fn send_and_wait(
        &self,
        record: ProducerRecord,
    ) -> Result<RecordMetadata, ProduceError> {
        self.send(record).await?.await
    }

    /// Seals every open batch now and waits until every batch that existed when it
    /// was called has completed (acknowledged or failed).
    pub async fn flush(&self) {
        let shared = &self.handle.shared;
        let target = {
            let mut state = lock(&shared.state);
            state.seal_all();
            state.next_batch_id
        };
        shared.wake_sender.notify(usize::MAX);
        loop {
            let listener = shared.completed.listen();
            if lock(&shared.state)
                .incomplete
                .range(..target)
                .next()
                .is_none()
            {
                return;
            }
            listener.await;
        }
    }

    /// Sends everything pending, waits for the outcome of every batch, and stops
    /// the sender task. Later sends (through any clone) fail with
    /// [`ProduceError::Closed`].
    pub async fn close(&self) {
        let shared = &self.handle.shared;
        shared.begin_close();
        self.flush().await;
        let task = lock(&self.handle.sender).take();
        if let Some(task) = task {
            task.await;
        }
    }
}

impl State {
    fn new(seed: u64) -> State {
        State {
            topics: HashMap::default(),
            lingering: VecDeque::new(),
            ready: VecDeque::new(),
            buffered_bytes: 0,
            next_batch_id: 0,
            incomplete: BTreeSet::new(),
            closing: false,
            rng: seed | 1,
        }
    }

    /// Appends under the lock, or says what to wait for. Appends to the
    /// partition's open batch (sealing it first if the record would overflow it).
    fn try_append(
        &mut self,
        config: &ProducerConfig,
        room: &Event,
        record: &ProducerRecordRef<'_>,
        timestamp: i64,
        refreshed: bool,
    ) -> Result<Result<Appended, Blocked>, ProduceError> {
        let State {
            topics,
            lingering,
            ready,
            buffered_bytes,
            next_batch_id,
            incomplete,
            closing,
            rng,
        } = self;
        let size = record_size_bound(record);
        if *closing {
            return Err(ProduceError::Closed);
        }
        // The only topic-map lookup of the record.
        let Some(topic) = topics.get_mut(record.topic) else {
            return Ok(Err(Blocked::Metadata));
        };
        if let Some(partition) = record.partition
            && partition >= topic.partitions
        {
            // Partitions may have been added since the last lookup.
            if !refreshed {
                return Ok(Err(Blocked::Metadata));
            }
            return Err(ProduceError::UnknownPartition {
                topic: record.topic.to_owned(),
                partition,
                partitions: topic.partitions,
            });
        }
        if *buffered_bytes > 0 && *buffered_bytes + size > config.buffer_memory {
            let listener = room.listen();
            return Ok(Err(Blocked::Room(listener)));
        }
        let batch_size = u64::from(config.batch_size);
        let mut sealed_any = false;
        let partition = match (record.partition, record.key) {
            (Some(p), _) => p,
            (None, Some(key)) => partition_for_key(key, topic.partitions),
            (None, None) => {
                let mut p = sticky_partition(topic, rng);
                // Kafka's sticky partitioner: a record that would overflow the sticky
                // batch seals it and moves to a new sticky partition.
                if would_overflow(topic, p, size, batch_size) {
                    sealed_any |= seal(topic, p, ready);
                    p = sticky_partition(topic, rng);
                }
                p
            }
        };
        if would_overflow(topic, partition, size, batch_size) {
            sealed_any |= seal(topic, partition, ready);
        }
        let index = partition as usize;
        let Some(slot) = topic.open.get_mut(index) else {
            return Err(ProduceError::UnknownPartition {
                topic: record.topic.to_owned(),
                partition,
                partitions: topic.partitions,
            });
        };
        let mut wake = sealed_any;
        // When a batch was created by this call (the clock is read only then).
        let mut created: Option<Instant> = None;
        let opts = BatchOptions {
            compression: config.compression,
            ..BatchOptions::default()
        };
        let mut new_batch =
            |next_batch_id: &mut u64, lingering: &mut VecDeque<LingerEntry>, wake: &mut bool| {
                let id = *next_batch_id;
                *next_batch_id += 1;
                incomplete.insert(id);
                if lingering.is_empty() {
                    // The sender may be sleeping with no deadline at all.
                    *wake = true;
                }
                let now = Instant::now();
                created = Some(now);
                lingering.push_back(LingerEntry {
                    deadline: now + Duration::from_millis(u64::from(config.linger_ms)),
                    topic: topic.name.clone(),
                    partition,
                    id,
                });
                // Room for a full batch up front, as Kafka's buffer pool gives:
                // growing by doubling would copy the records again and again.
                let mut builder = BatchBuilder::new(opts);
                builder.reserve(config.batch_size.min(BATCH_PREALLOC_BYTES_MAX) as usize);
                OpenBatch {
                    id,
                    builder,
                    result: Arc::new(BatchResult::default()),
                    bytes: 0,
                }
            };
        let open = slot.get_or_insert_with(|| new_batch(next_batch_id, lingering, &mut wake));
        let before = open.builder.size_estimate();
        let pushed = open
            .builder
            .push(timestamp, record.key, record.value, record.headers);
        if let Err(e) = pushed {
            if open.builder.is_empty() {
                return Err(ProduceError::Batch(e));
            }
            // E.g. a timestamp too far from the batch's first one: start a new batch.
            if let Some(full) = slot.take() {
                ready.push_back(seal_open(full, &topic.name, partition));
                wake = true;
            }
            let open = slot.insert(new_batch(next_batch_id, lingering, &mut wake));
            open.builder
                .push(timestamp, record.key, record.value, record.headers)
                .map_err(ProduceError::Batch)?;
        }
        let Some(open) = slot.as_mut() else {
            return Err(ProduceError::Batch(BatchError::Invalid("batch vanished")));
        };
        let added = open.builder.size_estimate().saturating_sub(before) as u64;
        open.bytes += added;
        *buffered_bytes += added;
        let future = DeliveryFuture {
            batch: open.result.clone(),
            topic: topic.name.clone(),
            partition,
            index: (open.builder.len() - 1) as u32,
            timestamp,
            waker_slot: None,
        };
        if open.builder.size_estimate() as u64 >= batch_size {
            seal(topic, partition, ready);
            wake = true;
        }
        // Known topics are looked up again in the background: sends go on with
        // what is known meanwhile (a node that is down must not stall them). The
        // metadata's age is checked once per batch, when one is created.
        let mut refresh = None;
        if let Some(now) = created {
            let max_age = Duration::from_millis(u64::from(config.metadata_max_age_ms));
            let retry_after = Duration::from_millis(u64::from(config.retry_backoff_ms));
            let age = now.saturating_duration_since(topic.metadata_at);
            if !topic.refreshing && (age >= max_age || (topic.stale && age >= retry_after)) {
                topic.refreshing = true;
                refresh = Some(topic.name.clone());
            }
        }
        Ok(Ok(Appended {
            future,
            wake,
            refresh,
        }))
    }

    /// Seals the batches whose linger expired by `now`, or all with `everything`.
    fn seal_expired(&mut self, now: Instant, everything: bool) {
        let State {
            topics,
            lingering,
            ready,
            ..
        } = self;
        while let Some(entry) = lingering.front() {
            if entry.deadline > now && !everything {
                break;
            }
            if let Some(entry) = lingering.pop_front()
                && let Some(topic) = topics.get_mut(&*entry.topic)
            {
                seal_if(topic, entry.partition, entry.id, ready);
            }
        }
    }

    /// Seals every open batch.
    fn seal_all(&mut self) {
        self.seal_expired(Instant::now(), true);
    }

    /// Records the partition count of `topic`.
    fn set_partitions(&mut self, topic: &str, partitions: u32) {
        let State { topics, ready, .. } = self;
        let entry = topics
            .entry(topic.to_owned())
            .or_insert_with(|| TopicState {
                name: Arc::from(topic),
                partitions,
                metadata_at: Instant::now(),
                stale: false,
                refreshing: false,
                open: Vec::new(),
                sticky: None,
                last_sticky: None,
            });
        if partitions < entry.partitions {
            // The topic was re-created smaller: batches of vanished partitions fail
            // on the node with a clear error.
            for p in partitions..entry.partitions {
                seal(entry, p, ready);
            }
            entry.open.truncate(partitions as usize);
            if entry.sticky.is_some_and(|p| p >= partitions) {
                entry.sticky = None;
            }
            entry.last_sticky = None;
        }
        entry.partitions = partitions;
        entry.open.resize_with(partitions as usize, || None);
        entry.metadata_at = Instant::now();
        entry.stale = false;
    }
}

impl Shared {
    fn begin_close(&self) {
        lock(&self.state).closing = true;
        self.wake_sender.notify(usize::MAX);
    }

    /// Looks up the topic's partition count, retrying retriable errors until
    /// `deadline`, and records it.
    async fn refresh_metadata(&self, topic: &str, deadline: Instant) -> Result<(), ProduceError> {
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            let left = deadline.saturating_duration_since(Instant::now());
            let lookup = with_timeout(self.client.partition_count(topic), left).await;
            let error = match lookup {
                None => return Err(ProduceError::BlockTimeout(self.config.max_block_ms)),
                Some(Ok(partitions)) => {
                    self.record_partitions(topic, partitions);
                    return Ok(());
                }
                Some(Err(ClientError::Server(body)))
                    if body.code == ErrorCode::UnknownTopicOrPartition =>
                {
                    return Err(ProduceError::UnknownTopic(topic.to_owned()));
                }
                Some(Err(e)) if !e.is_retriable() => return Err(ProduceError::Client(e)),
                Some(Err(e)) => e,
            };
            // Metadata we already have beats waiting: use it until the node is back.
            {
                let mut state = lock(&self.state);
                if let Some(t) = state.topics.get_mut(topic) {
                    t.metadata_at = Instant::now();
                    log::debug!("metadata refresh for `{topic}` failed ({error}); keeping the old");
                    return Ok(());
                }
            }
            let backoff = Duration::from_millis(backoff_ms(
                self.config.retry_backoff_ms,
                self.config.retry_backoff_max_ms,
                attempt,
            ));
            if Instant::now() + backoff >= deadline {
                return Err(ProduceError::Client(error));
            }
            smol::Timer::after(backoff).await;
        }
    }

    fn record_partitions(&self, topic: &str, partitions: u32) {
        lock(&self.state).set_partitions(topic, partitions);
        self.wake_sender.notify(1);
    }

    fn mark_stale(&self, topic: &str) {
        if let Some(t) = lock(&self.state).topics.get_mut(topic) {
            t.stale = true;
        }
    }
}

/// Looks `topic` up again without blocking anyone; on failure the old partition
/// count stays, and the next lookup waits `retry_backoff_ms`.
fn spawn_refresh(shared: &Arc<Shared>, topic: Arc<str>) {
    let shared = shared.clone();
    shared
        .client
        .clone()
        .spawn(async move {
            let result = shared.client.partition_count(&topic).await;
            let mut state = lock(&shared.state);
            match result {
                Ok(partitions) => state.set_partitions(&topic, partitions),
                Err(e) => {
                    log::debug!("metadata refresh for `{topic}` failed ({e}); keeping the old");
                    if let Some(t) = state.topics.get_mut(&*topic) {
                        t.metadata_at = Instant::now();
                    }
                }
            }
            if let Some(t) = state.topics.get_mut(&*topic) {
                t.refreshing = false;
            }
        })
        .detach();
}

/// Whether adding `size` bytes to the open batch of `partition` takes it over
/// `batch_size`. An empty batch always takes the record.
fn would_overflow(topic: &TopicState, partition: u32, size: u64, batch_size: u64) -> bool {
    match topic.open.get(partition as usize) {
        Some(Some(open)) => {
            !open.builder.is_empty() && open.builder.size_estimate() as u64 + size > batch_size
        }
        _ => false,
    }
}

/// The topic's sticky partition, choosing one at random (other than the last
/// one, when there is a choice) if there is none.
fn sticky_partition(topic: &mut TopicState, rng: &mut u64) -> u32 {
    if let Some(p) = topic.sticky {
        return p;
    }
    let n = topic.partitions.max(1);
    let p = if n == 1 {
        0
    } else {
        let r = (next_random(rng) % u64::from(n)) as u32;
        match topic.last_sticky {
            // Any partition but the last one, uniformly.
            Some(last) if r == last => (r + 1 + (next_random(rng) % u64::from(n - 1)) as u32) % n,
            _ => r,
        }
    };
    topic.sticky = Some(p);
    p
}

fn next_random(state: &mut u64) -> u64 {
    // xorshift64*: enough to spread sticky partitions, no dependency.
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Seals the open batch of `partition`, if any; `true` if one was sealed. If it was
/// the sticky partition, the next keyless record picks another.
fn seal(topic: &mut TopicState, partition: u32, ready: &mut VecDeque<SealedBatch>) -> bool {
    let Some(slot) = topic.open.get_mut(partition as usize) else {
        return false;
    };
    let Some(open) = slot.take() else {
        return false;
    };
    ready.push_back(seal_open(open, &topic.name, partition));
    if topic.sticky == Some(partition) {
        topic.sticky = None;
        topic.last_sticky = Some(partition);
    }
    true
}

/// Seals the open batch of `partition` if it is still batch `id`.
fn seal_if(topic: &mut TopicState, partition: u32, id: u64, ready: &mut VecDeque<SealedBatch>) {
    let same = topic
        .open
        .get(partition as usize)
        .and_then(|slot| slot.as_ref())
        .is_some_and(|open| open.id == id);
    if same {
        seal(topic, partition, ready);
    }
}

fn seal_open(open: OpenBatch, topic: &Arc<str>, partition: u32) -> SealedBatch {
    SealedBatch {
        id: open.id,
        topic: topic.clone(),
        partition,
        builder: open.builder,
        result: open.result,
        bytes: open.bytes,
        sealed: Instant::now(),
    }
}

/// An upper bound of a record's encoded size in a batch: varints at their widest.
fn record_size_bound(record: &ProducerRecordRef<'_>) -> u64 {
    // length (5) + attributes (1) + timestamp delta (10) + offset delta (5)
    // + key length (5) + value length (5) + header count (5).
    const FIXED: u64 = 5 + 1 + 10 + 5 + 5 + 5 + 5;
    const PER_HEADER: u64 = 5 + 5;
    let key = record.key.map_or(0, |k| k.len() as u64);
    let value = record.value.map_or(0, |v| v.len() as u64);
    let headers: u64 = record
        .headers
        .iter()
        .map(|h| PER_HEADER + h.key.len() as u64 + h.value.as_ref().map_or(0, |v| v.len() as u64))
        .sum();
    FIXED + key + value + headers
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The producer's background task: seals batches whose linger expired and starts
/// a request task per sealed batch, within the in-flight bound.
async fn run_sender(shared: Arc<Shared>) {
    // The last batch handed out per partition, whose stream the next one of
    // that partition waits for.
    let mut last_of: HashMap<(Arc<str>, u32), Arc<StreamOpened>> = HashMap::new();
    loop {
        let listener = shared.wake_sender.listen();
        let (batches, next_deadline, done) = {
            let mut state = lock(&shared.state);
            let closing = state.closing;
            state.seal_expired(Instant::now(), closing);
            let batches: Vec<SealedBatch> = state.ready.drain(..).collect();
            let next_deadline = state.lingering.front().map(|e| e.deadline);
            let done = closing && state.lingering.is_empty() && batches.is_empty();
            (batches, next_deadline, done)
        };
        if done {
            return;
        }
        if !batches.is_empty() {
            for batch in batches {
                let permit = shared.in_flight.acquire_arc().await;
                let opened = Arc::new(StreamOpened::default());
                let after = last_of.insert((batch.topic.clone(), batch.partition), opened.clone());
                if last_of.len() > OPEN_ORDER_PARTITIONS_KEPT {
                    last_of.retain(|_, o| !o.is_set());
                }
                let order = OpenOrder { after, opened };
                shared
                    .client
                    .spawn(send_batch(shared.clone(), batch, permit, order))
                    .detach();
            }
            // More may have become ready while waiting for permits.
            continue;
        }
        match next_deadline {
            Some(deadline) => {
                futures_lite::future::or(listener, async {
                    smol::Timer::at(deadline).await;
                })
                .await;
            }
            None => listener.await,
        }
    }
}

/// Set once a batch's first request stream is open, or its delivery ended.
#[derive(Debug, Default)]
struct StreamOpened {
    set: AtomicBool,
    event: Event,
}

impl StreamOpened {
    fn set(&self) {
        if !self.set.swap(true, Ordering::AcqRel) {
            self.event.notify(usize::MAX);
        }
    }

    fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    async fn wait(&self) {
        loop {
            if self.is_set() {
                return;
            }
            // Listen first, then look again, so a notify in between is not lost.
            let listener = self.event.listen();
            if self.is_set() {
                return;
            }
            listener.await;
        }
    }
}

/// A batch's place among its partition's batches: the node queues a
/// connection's produce requests in the order their streams were opened, so
/// a batch opens its stream only after the batch before it (of the same
/// partition) opened its own, or gave up. Then, as with Kafka over one TCP
/// connection, batches land in the order they were sealed unless one is
/// retried.
#[derive(Debug)]
struct OpenOrder {
    after: Option<Arc<StreamOpened>>,
    opened: Arc<StreamOpened>,
}

impl OpenOrder {
    /// Opens a request stream to `leader` and lets the next batch of the
    /// partition open its own, whatever the outcome.
    async fn open(&self, leader: &Client) -> Result<RequestStream, ClientError> {
        let stream = leader.open_request_stream().await;
        self.opened.set();
        stream
    }
}

impl Drop for OpenOrder {
    fn drop(&mut self) {
        self.opened.set();
    }
}

async fn send_batch(
    shared: Arc<Shared>,
    batch: SealedBatch,
    permit: SemaphoreGuardArc,
    order: OpenOrder,
) {
    let SealedBatch {
        id,
        topic,
        partition,
        builder,
        result,
        bytes,
        sealed,
    } = batch;
    let outcome = match builder.build() {
        Ok(bytes) => deliver(&shared, &topic, partition, &bytes, sealed, order).await,
        Err(e) => Err(ProduceError::Batch(e)),
    };
    drop(permit);
    if let Err(e) = &outcome {
        log::debug!("batch for {topic}-{partition} failed: {e}");
    }
    result.complete(outcome);
    {
        let mut state = lock(&shared.state);
        state.buffered_bytes = state.buffered_bytes.saturating_sub(bytes);
        state.incomplete.remove(&id);
    }
    shared.room.notify(usize::MAX);
    shared.completed.notify(usize::MAX);
}

/// Sends one batch, retrying retriable failures with backoff.
async fn deliver(
    shared: &Shared,
    topic: &str,
    partition: u32,
    batch: &[u8],
    sealed: Instant,
    order: OpenOrder,
) -> Result<Delivered, ProduceError> {
    if let Some(before) = &order.after {
        before.wait().await;
    }
    let config = &shared.config;
    let delivery_timeout = Duration::from_millis(u64::from(config.delivery_timeout_ms));
    let deadline = sealed + delivery_timeout;
    let mut last: Option<ClientError> = None;
    let mut attempt = 0u32;
    loop {
        if Instant::now() >= deadline {
            return Err(ProduceError::DeliveryTimeout {
                timeout_ms: config.delivery_timeout_ms,
                last,
            });
        }
        let header = RequestHeader {
            version: PROTOCOL_VERSION,
            request: Request::Produce {
                topic: topic.to_owned(),
                partition: Some(partition),
                acks: config.acks,
                timeout_ms: config.request_timeout_ms,
            },
        };
        let result = match shared.client.for_partition(topic, partition).await {
            // No answer comes: done once the node's QUIC stack has the bytes.
            Ok(leader) if config.acks == Acks::None => {
                let send = async {
                    let stream = order.open(&leader).await?;
                    leader.send_only_on(stream, header, batch).await
                };
                send.await.map(|()| None)
            }
            Ok(leader) => {
                let request = async {
                    let stream = order.open(&leader).await?;
                    leader.request_on(stream, header, batch).await
                };
                shared
                    .client
                    .unless_leader_moves(topic, partition, &leader, 0, request)
                    .await
                    .map(Some)
            }
            Err(e) => Err(e),
        };
        let error = match result {
            Ok(None) => {
                return Ok(Delivered {
                    base_offset: None,
                    log_append_time: -1,
                });
            }
            Ok(Some((
                Response::Produce {
                    base_offset,
                    log_append_time,
                    ..
                },
                _,
            ))) => {
                return Ok(Delivered {
                    base_offset: Some(base_offset),
                    log_append_time,
                });
            }
            Ok(Some((other, _))) => {
                return Err(ProduceError::Client(
                    shared.client.unexpected("Produce", &other),
                ));
            }
            Err(e) => e,
        };
        if error.is_node_unavailable()
            || matches!(
                error.code(),
                Some(
                    ErrorCode::UnknownTopicOrPartition
                        | ErrorCode::NotLeaderOrFollower
                        | ErrorCode::LeaderNotAvailable
                        | ErrorCode::FencedLeaderEpoch
                        | ErrorCode::UnknownLeaderEpoch
                )
            )
        {
            shared.mark_stale(topic);
            shared.client.forget_leader(topic, partition);
        }
        if !error.is_retriable() || attempt >= config.retries {
            return Err(ProduceError::Client(error));
        }
        attempt += 1;
        let backoff = Duration::from_millis(backoff_ms(
            config.retry_backoff_ms,
            config.retry_backoff_max_ms,
            attempt,
        ));
        log::debug!(
            "produce to {topic}-{partition} failed ({error}); retry {attempt} in {} ms",
            backoff.as_millis()
        );
        if Instant::now() + backoff >= deadline {
            return Err(ProduceError::DeliveryTimeout {
                timeout_ms: config.delivery_timeout_ms,
                last: Some(error),
            });
        }
        last = Some(error);
        smol::Timer::after(backoff).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_core::batch::Batch;
    use futures_lite::future;

    fn config() -> ProducerConfig {
        ProducerConfig {
            batch_size: 1000,
            linger_ms: 5,
            ..ProducerConfig::default()
        }
    }

    fn state_with(topic: &str, partitions: u32) -> State {
        let mut state = State::new(42);
        state.set_partitions(topic, partitions);
        state
    }

    fn append(
        state: &mut State,
        config: &ProducerConfig,
        record: &ProducerRecord,
    ) -> Result<Appended, ProduceError> {
        let room = Event::new();
        match state.try_append(config, &room, &record.borrowed(), 1_000, false)? {
            Ok(appended) => Ok(appended),
            Err(Blocked::Metadata) => panic!("metadata wanted"),
            Err(Blocked::Room(_)) => panic!("buffer full"),
        }
    }

    fn open_count(state: &State, topic: &str, partition: u32) -> usize {
        state.topics[topic].open[partition as usize]
            .as_ref()
            .map_or(0, |b| b.builder.len())
    }

    #[test]
    fn config_relations_are_checked() {
        ProducerConfig::default()
            .validate()
            .expect("defaults are valid");
        let bad = ProducerConfig {
            delivery_timeout_ms: 1000,
            ..ProducerConfig::default()
        };
        assert!(matches!(bad.validate(), Err(ProduceError::Config(_))));
        let bad = ProducerConfig {
            buffer_memory: 10,
            ..ProducerConfig::default()
        };
        assert!(matches!(bad.validate(), Err(ProduceError::Config(_))));
        let bad = ProducerConfig {
            max_in_flight_requests_per_connection: 0,
            ..ProducerConfig::default()
        };
        assert!(matches!(bad.validate(), Err(ProduceError::Config(_))));
        let bad = ProducerConfig {
            compression: Compression::Snappy,
            ..ProducerConfig::default()
        };
        assert!(matches!(bad.validate(), Err(ProduceError::Config(_))));
    }

    #[test]
    fn acks_parse_like_kafka() {
        assert_eq!(parse_acks("0"), Some(Acks::None));
        assert_eq!(parse_acks("1"), Some(Acks::Leader));
        assert_eq!(parse_acks("all"), Some(Acks::All));
        assert_eq!(parse_acks("-1"), Some(Acks::All));
        assert_eq!(parse_acks("2"), None);
    }

    #[test]
    fn keyed_records_go_where_kafka_puts_them() {
        let config = config();
        let mut state = state_with("t", 50);
        for key in ["foobar", "21", "abc", "gateway-7"] {
            let record = ProducerRecord::new("t", "v").with_key(key);
            let appended = append(&mut state, &config, &record).expect("appends");
            assert_eq!(
                appended.future.partition,
                partition_for_key(key.as_bytes(), 50)
            );
        }
        // Kafka's vector: murmur2("foobar") lands on 16 of 50.
        let record = ProducerRecord::new("t", "v").with_key("foobar");
        assert_eq!(
            append(&mut state, &config, &record)
                .expect("appends")
                .future
                .partition,
            16
        );
    }

    #[test]
    fn an_explicit_partition_wins_over_the_key() {
        let config = config();
        let mut state = state_with("t", 4);
        let record = ProducerRecord::new("t", "v")
            .with_key("foobar")
            .with_partition(3);
        let appended = append(&mut state, &config, &record).expect("appends");
        assert_eq!(appended.future.partition, 3);
        assert_eq!(open_count(&state, "t", 3), 1);
    }

    #[test]
    fn a_partition_out_of_range_is_rechecked_then_rejected() {
        let config = config();
        let mut state = state_with("t", 2);
        let room = Event::new();
        let record = ProducerRecord::new("t", "v").with_partition(2);
        let first = state.try_append(&config, &room, &record.borrowed(), 0, false);
        assert!(
            matches!(first, Ok(Err(Blocked::Metadata))),
            "looks again first"
        );
        let second = state.try_append(&config, &room, &record.borrowed(), 0, true);
        assert!(matches!(
            second,
            Err(ProduceError::UnknownPartition {
                partition: 2,
                partitions: 2,
                ..
            })
        ));
    }

    #[test]
    fn stale_metadata_is_refreshed_in_the_background_once() {
        let config = config();
        let mut state = state_with("t", 2);
        let record = ProducerRecord::new("t", "v");
        let fresh = append(&mut state, &config, &record).expect("appends");
        assert!(fresh.refresh.is_none(), "fresh metadata is used as is");
        if let Some(t) = state.topics.get_mut("t") {
            t.stale = true;
            t.metadata_at = Instant::now() - Duration::from_secs(1);
        }
        let same_batch = append(&mut state, &config, &record).expect("appends");
        assert!(
            same_batch.refresh.is_none(),
            "the age is checked once per batch, when one is created"
        );
        state.seal_all();
        let first = append(&mut state, &config, &record).expect("appends without waiting");
        assert_eq!(first.refresh.as_deref(), Some("t"));
        state.seal_all();
        let second = append(&mut state, &config, &record).expect("appends");
        assert!(second.refresh.is_none(), "one lookup at a time");
        state.set_partitions("t", 3);
        assert!(!state.topics["t"].stale);
    }

    #[test]
    fn unknown_topics_need_metadata() {
        let config = config();
        let mut state = State::new(1);
        let room = Event::new();
        let record = ProducerRecord::new("nope", "v");
        let result = state.try_append(&config, &room, &record.borrowed(), 0, false);
        assert!(matches!(result, Ok(Err(Blocked::Metadata))));
    }

    #[test]
    fn batches_seal_at_batch_size() {
        let config = config();
        let mut state = state_with("t", 1);
        let value = [7u8; 90];
        let mut wakes = 0;
        for _ in 0..25 {
            let record = ProducerRecord::new("t", value);
            if append(&mut state, &config, &record).expect("appends").wake {
                wakes += 1;
            }
        }
        assert!(
            state.ready.len() >= 2,
            "25 records of ~100 bytes fill 2 batches of 1000"
        );
        let mut total = open_count(&state, "t", 0);
        for sealed in &state.ready {
            assert!(sealed.builder.size_estimate() <= 1000);
            assert!(!sealed.builder.is_empty());
            total += sealed.builder.len();
        }
        assert_eq!(total, 25, "every record is in exactly one batch");
        assert!(wakes >= state.ready.len(), "each seal wakes the sender");
        // Buffer accounting covers exactly the bytes in the builders.
        let in_builders: u64 = state
            .ready
            .iter()
            .map(|b| b.builder.size_estimate() as u64 - HEADER_LEN as u64)
            .sum::<u64>()
            + state.topics["t"].open[0]
                .as_ref()
                .map_or(0, |b| b.builder.size_estimate() as u64 - HEADER_LEN as u64);
        assert_eq!(state.buffered_bytes, in_builders);
    }

    #[test]
    fn a_record_over_batch_size_gets_a_batch_of_its_own() {
        let config = config();
        let mut state = state_with("t", 1);
        append(&mut state, &config, &ProducerRecord::new("t", "small")).expect("appends");
        append(
            &mut state,
            &config,
            &ProducerRecord::new("t", vec![1u8; 5000]),
        )
        .expect("appends");
        assert_eq!(state.ready.len(), 2, "the small batch, then the big one");
        assert_eq!(state.ready[0].builder.len(), 1);
        assert_eq!(state.ready[1].builder.len(), 1);
        assert_eq!(open_count(&state, "t", 0), 0);
    }

    #[test]
    fn sticky_partitioner_fills_one_batch_then_moves() {
        let config = config();
        let mut state = state_with("t", 8);
        let value = [1u8; 90];
        let mut partitions = Vec::new();
        for _ in 0..60 {
            let record = ProducerRecord::new("t", value);
            partitions.push(
                append(&mut state, &config, &record)
                    .expect("appends")
                    .future
                    .partition,
            );
        }
        // Runs of one partition, each run one batch; consecutive runs differ.
        let mut runs: Vec<(u32, usize)> = Vec::new();
        for p in partitions {
            match runs.last_mut() {
                Some((q, n)) if *q == p => *n += 1,
                _ => runs.push((p, 1)),
            }
        }
        assert!(
            runs.len() >= 5,
            "60 records of ~100 bytes span several batches: {runs:?}"
        );
        for window in runs.windows(2) {
            assert_ne!(window[0].0, window[1].0);
        }
        for (i, (_, n)) in runs.iter().enumerate().take(runs.len() - 1) {
            assert_eq!(
                *n,
                state.ready[i].builder.len(),
                "a run is exactly one batch"
            );
        }
        let distinct: std::collections::BTreeSet<u32> = runs.iter().map(|r| r.0).collect();
        assert!(distinct.len() > 1);
    }

    #[test]
    fn sticky_partition_moves_after_a_linger_seal() {
        let config = config();
        let mut state = state_with("t", 2);
        let first = append(&mut state, &config, &ProducerRecord::new("t", "a"))
            .expect("appends")
            .future
            .partition;
        let again = append(&mut state, &config, &ProducerRecord::new("t", "b"))
            .expect("appends")
            .future
            .partition;
        assert_eq!(first, again, "sticky while the batch is open");
        state.seal_expired(Instant::now() + Duration::from_secs(1), false);
        assert_eq!(state.ready.len(), 1);
        let next = append(&mut state, &config, &ProducerRecord::new("t", "c"))
            .expect("appends")
            .future
            .partition;
        assert_ne!(next, first, "a new batch goes to another partition");
    }

    #[test]
    fn linger_seals_only_expired_batches() {
        let config = config();
        let mut state = state_with("t", 2);
        let first = append(
            &mut state,
            &config,
            &ProducerRecord::new("t", "a").with_partition(0),
        )
        .expect("appends");
        assert!(
            first.wake,
            "the first open batch gives the sender a deadline"
        );
        let second = append(
            &mut state,
            &config,
            &ProducerRecord::new("t", "b").with_partition(0),
        )
        .expect("appends");
        assert!(!second.wake, "joining an open batch is silent");
        state.seal_expired(Instant::now(), false);
        assert!(state.ready.is_empty(), "5 ms have not passed");
        state.seal_expired(Instant::now() + Duration::from_millis(5), false);
        assert_eq!(state.ready.len(), 1);
        assert_eq!(state.ready[0].builder.len(), 2);
        assert!(state.lingering.is_empty());
    }

    #[test]
    fn flush_seals_everything() {
        let config = config();
        let mut state = state_with("t", 3);
        for p in 0..3 {
            append(
                &mut state,
                &config,
                &ProducerRecord::new("t", "x").with_partition(p),
            )
            .expect("appends");
        }
        state.seal_all();
        assert_eq!(state.ready.len(), 3);
        assert_eq!(state.incomplete.len(), 3, "sealed is not complete");
        for p in 0..3 {
            assert_eq!(open_count(&state, "t", p), 0);
        }
    }

    #[test]
    fn a_full_buffer_blocks() {
        let config = ProducerConfig {
            buffer_memory: 2048,
            max_request_size: 2048,
            ..config()
        };
        let mut state = state_with("t", 1);
        let room = Event::new();
        let mut blocked = false;
        for _ in 0..40 {
            let record = ProducerRecord::new("t", [0u8; 100]);
            match state.try_append(&config, &room, &record.borrowed(), 0, false) {
                Ok(Ok(_)) => {}
                Ok(Err(Blocked::Room(_))) => {
                    blocked = true;
                    break;
                }
                other => panic!("unexpected {other:?}", other = other.map(|r| r.map(|_| ()))),
            }
        }
        assert!(blocked, "2 KiB of buffer cannot take 4 KiB of records");
        assert!(state.buffered_bytes <= 2048);
    }

    #[test]
    fn sealed_batches_decode_to_the_records_sent() {
        let config = ProducerConfig {
            compression: Compression::Zstd,
            ..config()
        };
        let mut state = state_with("t", 1);
        let record = ProducerRecord::new("t", "value")
            .with_key("key")
            .with_header("trace", "abc")
            .with_timestamp(1_234);
        state
            .try_append(&config, &Event::new(), &record.borrowed(), 1_234, false)
            .expect("no error")
            .map_err(|_| ())
            .expect("appended");
        state.seal_all();
        let sealed = state.ready.pop_front().expect("one batch");
        let bytes = sealed.builder.build().expect("builds");
        let (batch, rest) = Batch::parse(&bytes).expect("parses");
        assert!(rest.is_empty());
        assert_eq!(batch.compression().expect("codec"), Compression::Zstd);
        let records = batch.records(1 << 20).expect("decodes");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].key.as_deref(), Some(&b"key"[..]));
        assert_eq!(records[0].value.as_deref(), Some(&b"value"[..]));
        assert_eq!(
            records[0].headers,
            vec![RecordHeader::new("trace", Some(b"abc"))]
        );
        assert_eq!(batch.record_timestamp(records[0].timestamp_delta), 1_234);
    }

    #[test]
    fn delivery_futures_share_their_batch_outcome() {
        let config = config();
        let mut state = state_with("t", 1);
        let futures: Vec<DeliveryFuture> = (0..3)
            .map(|i| {
                let record = ProducerRecord::new("t", "v").with_timestamp(100 + i);
                state
                    .try_append(&config, &Event::new(), &record.borrowed(), 100 + i, false)
                    .expect("no error")
                    .map_err(|_| ())
                    .expect("appended")
                    .future
            })
            .collect();
        state.seal_all();
        let sealed = state.ready.pop_front().expect("one batch");
        let mut pending = futures;
        // Not complete yet: polling registers and stays pending.
        for f in &mut pending {
            assert!(future::block_on(future::poll_once(&mut *f)).is_none());
        }
        sealed.result.complete(Ok(Delivered {
            base_offset: Some(40),
            log_append_time: -1,
        }));
        let metadata: Vec<RecordMetadata> = pending
            .into_iter()
            .map(|f| future::block_on(f).expect("acknowledged"))
            .collect();
        let offsets: Vec<Option<u64>> = metadata.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, vec![Some(40), Some(41), Some(42)]);
        assert_eq!(metadata[2].timestamp, 102);
        assert_eq!(&*metadata[0].topic, "t");
    }

    #[test]
    fn log_append_time_and_errors_reach_every_record() {
        let config = config();
        let mut state = state_with("t", 1);
        let make = |state: &mut State| {
            let record = ProducerRecord::new("t", "v");
            state
                .try_append(&config, &Event::new(), &record.borrowed(), 5, false)
                .expect("no error")
                .map_err(|_| ())
                .expect("appended")
                .future
        };
        let a = make(&mut state);
        state.seal_all();
        let first = state.ready.pop_front().expect("batch");
        first.result.complete(Ok(Delivered {
            base_offset: Some(0),
            log_append_time: 999,
        }));
        assert_eq!(future::block_on(a).expect("ok").timestamp, 999);

        let b = make(&mut state);
        let c = make(&mut state);
        state.seal_all();
        let second = state.ready.pop_front().expect("batch");
        second
            .result
            .complete(Err(ProduceError::UnknownTopic("t".into())));
        assert!(matches!(
            future::block_on(b),
            Err(ProduceError::UnknownTopic(_))
        ));
        assert!(matches!(
            future::block_on(c),
            Err(ProduceError::UnknownTopic(_))
        ));
    }

    #[test]
    fn record_size_bound_covers_the_encoding() {
        let record = ProducerRecord::new("t", vec![3u8; 300])
            .with_key("k")
            .with_header("h1", "v1")
            .with_header("h2", vec![0u8; 200]);
        let mut builder = BatchBuilder::new(BatchOptions::default());
        let before = builder.size_estimate();
        builder
            .push(1, Some(b"k"), record.value.as_deref(), &record.headers)
            .expect("push");
        let actual = (builder.size_estimate() - before) as u64;
        let bound = record_size_bound(&record.borrowed());
        assert!(bound >= actual, "bound {bound} < actual {actual}");
        assert!(
            bound <= actual + 64,
            "bound {bound} is loose against {actual}"
        );
    }

    #[test]
    fn shrinking_a_topic_seals_vanished_partitions() {
        let config = config();
        let mut state = state_with("t", 4);
        append(
            &mut state,
            &config,
            &ProducerRecord::new("t", "x").with_partition(3),
        )
        .expect("appends");
        state.set_partitions("t", 2);
        assert_eq!(state.ready.len(), 1);
        assert_eq!(state.topics["t"].open.len(), 2);
        state.set_partitions("t", 6);
        assert_eq!(state.topics["t"].open.len(), 6);
    }
}
