//! The client against a small in-process node that speaks `eddy/1` over real QUIC:
//! batching and offsets, retries, acks=0, consumer positions and resets,
//! reconnecting after the node restarts, and TLS failures. The real node is tested
//! black-box in `tests/`; this fake keeps the client's own tests independent of it
//! and lets them inject failures the real node would not produce on demand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eddy_client::protocol::{
    ALPN, Acks, ErrorBody, ErrorCode, OffsetSpec, REQUEST_HEADER_BYTES_MAX, Request, RequestHeader,
    Response, ResponseHeader, TopicMetadata, decode_header_len, encode_header,
};
use eddy_client::{
    AutoOffsetReset, Client, ClientError, ClientOptions, Compression, ConsumeError, Consumer,
    ConsumerConfig, ProduceError, Producer, ProducerConfig, ProducerRecord,
};
use eddy_core::batch::header::set_base_offset;
use eddy_core::batch::{Batch, BatchIter};

/// One partition: its batches, back to back, with offsets assigned.
#[derive(Debug, Default)]
struct Log {
    bytes: Vec<u8>,
    next_offset: u64,
}

/// The node's data; it survives a restart of the fake node.
#[derive(Debug, Default)]
struct NodeState {
    topics: HashMap<String, Vec<Log>>,
}

/// Knobs and counters.
#[derive(Debug, Default)]
struct Counters {
    /// Answer this many Produce requests with NotLeaderOrFollower first.
    fail_produces: AtomicU32,
    produce_requests: AtomicU32,
}

struct FakeNode {
    endpoint: quinn::Endpoint,
    state: Arc<Mutex<NodeState>>,
    shared: Arc<Counters>,
}

struct Tls {
    _dir: tempfile::TempDir,
    ca_file: PathBuf,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: Vec<u8>,
}

fn tls() -> Tls {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, certified.cert.pem()).expect("write CA");
    Tls {
        _dir: dir,
        ca_file,
        cert: certified.cert.der().clone(),
        key: certified.signing_key.serialize_der(),
    }
}

impl FakeNode {
    fn start(
        tls: &Tls,
        addr: SocketAddr,
        shared: Arc<Counters>,
        state: Arc<Mutex<NodeState>>,
    ) -> FakeNode {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(tls.key.clone().into());
        let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(vec![tls.cert.clone()], key)
            .expect("server cert");
        crypto.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(crypto))
            .expect("QUIC TLS config");
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let socket = std::net::UdpSocket::bind(addr).expect("bind");
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(config),
            socket,
            Arc::new(quinn::SmolRuntime),
        )
        .expect("endpoint");
        let accept = endpoint.clone();
        let (task_state, task_shared) = (state.clone(), shared.clone());
        smol::spawn(async move {
            while let Some(incoming) = accept.accept().await {
                let (state, shared) = (task_state.clone(), task_shared.clone());
                smol::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    // As the real node does, produce requests are applied in the
                    // order their streams were opened: each stream waits for the
                    // one before it (closed channel = done) before appending.
                    let (_, mut before) = smol::channel::bounded::<()>(1);
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        let (state, shared) = (state.clone(), shared.clone());
                        let (done, next) = smol::channel::bounded::<()>(1);
                        let order = (std::mem::replace(&mut before, next), done);
                        smol::spawn(serve_stream(state, shared, send, recv, order)).detach();
                    }
                })
                .detach();
            }
        })
        .detach();
        FakeNode {
            endpoint,
            state,
            shared,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("local addr")
    }

    fn create_topic(&self, name: &str, partitions: u32) {
        let mut state = self.state.lock().expect("lock");
        state.topics.insert(
            name.to_owned(),
            (0..partitions).map(|_| Log::default()).collect(),
        );
    }

    /// Closes every connection, as a node stopping would.
    fn stop(self) {
        self.endpoint.close(0u32.into(), b"stopping");
    }
}

async fn serve_stream(
    state: Arc<Mutex<NodeState>>,
    shared: Arc<Counters>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    (before, done): (smol::channel::Receiver<()>, smol::channel::Sender<()>),
) {
    let Ok(frame) = recv.read_to_end(64 << 20).await else {
        return;
    };
    let Some(prefix) = frame.first_chunk::<4>() else {
        return;
    };
    let Ok(len) = decode_header_len::<RequestHeader>(*prefix) else {
        return;
    };
    assert!(len <= REQUEST_HEADER_BYTES_MAX as usize);
    let Some(body) = frame.get(4..4 + len) else {
        return;
    };
    let Ok(header) = postcard::from_bytes::<RequestHeader>(body) else {
        return;
    };
    let payload = &frame[4 + len..];
    let answer = if matches!(header.request, Request::Produce { .. }) {
        let _ = before.recv().await;
        let answer = handle(&state, &shared, header.request.clone(), payload).await;
        drop(done);
        answer
    } else {
        smol::spawn(async move {
            let _ = before.recv().await;
            drop(done);
        })
        .detach();
        handle(&state, &shared, header.request.clone(), payload).await
    };
    let (answer, out_payload) = answer;
    if let Request::Produce {
        acks: Acks::None, ..
    } = header.request
    {
        return;
    }
    let frame = encode_header(&answer).expect("encode");
    let _ = send.write_all(&frame).await;
    let _ = send.write_all(&out_payload).await;
    let _ = send.finish();
    let _ = send.stopped().await;
}

fn error(code: ErrorCode, message: &str) -> (ResponseHeader, Vec<u8>) {
    (
        ResponseHeader::Error(ErrorBody {
            code,
            message: message.to_owned(),
        }),
        Vec::new(),
    )
}

async fn handle(
    state: &Mutex<NodeState>,
    shared: &Counters,
    request: Request,
    payload: &[u8],
) -> (ResponseHeader, Vec<u8>) {
    match request {
        Request::Metadata { topics } => {
            let state = state.lock().expect("lock");
            let list = state
                .topics
                .iter()
                .filter(|(name, _)| topics.as_ref().is_none_or(|t| t.contains(name)))
                .map(|(name, logs)| TopicMetadata {
                    name: name.clone(),
                    partitions: (0..logs.len() as u32).map(|p| (p, 1)).collect(),
                })
                .collect();
            (
                ResponseHeader::Ok(Response::Metadata {
                    nodes: Vec::new(),
                    topics: list,
                }),
                Vec::new(),
            )
        }
        Request::Produce {
            topic, partition, ..
        } => {
            shared.produce_requests.fetch_add(1, Ordering::SeqCst);
            let failures = shared.fail_produces.load(Ordering::SeqCst);
            if failures > 0 {
                shared.fail_produces.store(failures - 1, Ordering::SeqCst);
                return error(ErrorCode::NotLeaderOrFollower, "not now");
            }
            let mut state = state.lock().expect("lock");
            let Some(log) = state
                .topics
                .get_mut(&topic)
                .and_then(|logs| logs.get_mut(partition.unwrap_or(0) as usize))
            else {
                return error(ErrorCode::UnknownTopicOrPartition, "no such partition");
            };
            let base = log.next_offset;
            let mut rest = payload;
            while !rest.is_empty() {
                let Ok((batch, tail)) = Batch::parse(rest) else {
                    return error(ErrorCode::CorruptMessage, "bad batch");
                };
                let mut bytes = batch.bytes.to_vec();
                set_base_offset(&mut bytes, log.next_offset);
                log.next_offset += u64::from(batch.header.last_offset_delta) + 1;
                log.bytes.extend_from_slice(&bytes);
                rest = tail;
            }
            (
                ResponseHeader::Ok(Response::Produce {
                    partition: partition.unwrap_or(0),
                    base_offset: base,
                    log_append_time: -1,
                    log_start_offset: 0,
                }),
                Vec::new(),
            )
        }
        Request::Fetch {
            topic,
            partition,
            offset,
            max_wait_ms,
            ..
        } => {
            let deadline =
                std::time::Instant::now() + Duration::from_millis(u64::from(max_wait_ms));
            loop {
                {
                    let state = state.lock().expect("lock");
                    let Some(log) = state
                        .topics
                        .get(&topic)
                        .and_then(|logs| logs.get(partition as usize))
                    else {
                        return error(ErrorCode::UnknownTopicOrPartition, "no such partition");
                    };
                    if offset > log.next_offset {
                        return error(ErrorCode::OffsetOutOfRange, "past the end");
                    }
                    if offset < log.next_offset || std::time::Instant::now() >= deadline {
                        let mut out = Vec::new();
                        let mut next = offset;
                        for batch in BatchIter::new(&log.bytes) {
                            let batch = batch.expect("stored batches are valid");
                            if batch.header.next_offset() > offset {
                                out.extend_from_slice(batch.bytes);
                                next = batch.header.next_offset();
                            }
                        }
                        return (
                            ResponseHeader::Ok(Response::Fetch {
                                high_watermark: log.next_offset,
                                log_start_offset: 0,
                                next_offset: next,
                            }),
                            out,
                        );
                    }
                }
                smol::Timer::after(Duration::from_millis(5)).await;
            }
        }
        Request::ListOffsets {
            topic,
            partition,
            spec,
        } => {
            let state = state.lock().expect("lock");
            let Some(log) = state
                .topics
                .get(&topic)
                .and_then(|logs| logs.get(partition as usize))
            else {
                return error(ErrorCode::UnknownTopicOrPartition, "no such partition");
            };
            let offset = match spec {
                OffsetSpec::Earliest => Some(0),
                OffsetSpec::Latest => Some(log.next_offset),
                OffsetSpec::Timestamp(_) => None,
            };
            (
                ResponseHeader::Ok(Response::ListOffsets {
                    offset,
                    timestamp: -1,
                }),
                Vec::new(),
            )
        }
        _ => error(ErrorCode::InvalidRequest, "not in the fake node"),
    }
}

fn node(tls: &Tls) -> FakeNode {
    FakeNode::start(
        tls,
        "127.0.0.1:0".parse().expect("addr"),
        Arc::new(Counters::default()),
        Arc::new(Mutex::new(NodeState::default())),
    )
}

fn client(tls: &Tls, node: &FakeNode) -> Client {
    let options = ClientOptions {
        request_timeout_ms: 5000,
        ..ClientOptions::new(node.addr().to_string()).with_ca_file(&tls.ca_file)
    };
    Client::new(options).expect("client")
}

fn quick_producer(client: &Client) -> Producer {
    Producer::new(
        client.clone(),
        ProducerConfig {
            retry_backoff_ms: 10,
            retry_backoff_max_ms: 50,
            delivery_timeout_ms: 20_000,
            request_timeout_ms: 5000,
            ..ProducerConfig::default()
        },
    )
    .expect("producer")
}

#[test]
fn produced_records_come_back_in_order_with_their_offsets() {
    let tls = tls();
    let node = node(&tls);
    node.create_topic("sensors", 3);
    let client = client(&tls, &node);
    smol::block_on(async {
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                compression: Compression::Lz4,
                batch_size: 2048,
                ..ProducerConfig::default()
            },
        )
        .expect("producer");
        let mut deliveries = Vec::new();
        for i in 0..600u32 {
            let record = ProducerRecord::new("sensors", format!("value-{i}"))
                .with_key(format!("key-{}", i % 7))
                .with_header("i", i.to_string());
            deliveries.push((i, producer.send(record).await.expect("queued")));
        }
        producer.flush().await;
        let mut by_key_partition: HashMap<String, u32> = HashMap::new();
        let mut last_offset: HashMap<u32, u64> = HashMap::new();
        for (i, delivery) in deliveries {
            let metadata = delivery.await.expect("acknowledged");
            let key = format!("key-{}", i % 7);
            let partition = *by_key_partition
                .entry(key.clone())
                .or_insert(metadata.partition);
            assert_eq!(partition, metadata.partition, "a key keeps its partition");
            assert_eq!(
                metadata.partition,
                eddy_client::partition_for_key(key.as_bytes(), 3)
            );
            let offset = metadata.offset.expect("acks=all has offsets");
            if let Some(previous) = last_offset.insert(metadata.partition, offset) {
                assert_eq!(offset, previous + 1, "offsets are dense per partition");
            }
        }
        producer.close().await;

        let mut consumer =
            Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
        consumer.assign((0..3).map(|p| ("sensors".to_owned(), p)).collect());
        let mut seen = Vec::new();
        while seen.len() < 600 {
            let records = consumer.poll(Duration::from_secs(5)).await.expect("poll");
            assert!(!records.is_empty(), "records arrive before the timeout");
            seen.extend(records);
        }
        assert_eq!(seen.len(), 600, "nothing twice");
        let mut per_partition: HashMap<u32, Vec<u32>> = HashMap::new();
        for r in &seen {
            let value = String::from_utf8(r.value.clone().expect("value")).expect("utf-8");
            let i: u32 = value.trim_start_matches("value-").parse().expect("number");
            assert_eq!(r.key.as_deref(), Some(format!("key-{}", i % 7).as_bytes()));
            assert_eq!(
                r.headers[0].value.as_deref(),
                Some(i.to_string().as_bytes())
            );
            per_partition.entry(r.partition).or_default().push(i);
        }
        for values in per_partition.values() {
            assert!(
                values.windows(2).all(|w| w[0] < w[1]),
                "send order kept per partition"
            );
        }
        for p in 0..3 {
            let position = consumer.position("sensors", p).await.expect("position");
            assert_eq!(Some(&position), last_offset.get(&p).map(|o| o + 1).as_ref());
        }
    });
}

#[test]
fn retriable_errors_are_retried_and_others_are_not() {
    let tls = tls();
    let node = node(&tls);
    node.create_topic("t", 1);
    let client = client(&tls, &node);
    smol::block_on(async {
        let producer = quick_producer(&client);
        node.shared.fail_produces.store(2, Ordering::SeqCst);
        let metadata = producer
            .send_and_wait(ProducerRecord::new("t", "after two failures"))
            .await
            .expect("retried until accepted");
        assert_eq!(metadata.offset, Some(0));
        assert_eq!(node.shared.produce_requests.load(Ordering::SeqCst), 3);

        let error = producer
            .send(ProducerRecord::new("nope", "x"))
            .await
            .expect_err("unknown topic");
        assert!(matches!(error, ProduceError::UnknownTopic(_)), "{error}");
        let error = producer
            .send(ProducerRecord::new("t", "x").with_partition(5))
            .await
            .expect_err("no such partition");
        assert!(
            matches!(error, ProduceError::UnknownPartition { .. }),
            "{error}"
        );

        let strict = Producer::new(
            client.clone(),
            ProducerConfig {
                retries: 0,
                ..ProducerConfig::default()
            },
        )
        .expect("producer");
        node.shared.fail_produces.store(1, Ordering::SeqCst);
        let error = strict
            .send_and_wait(ProducerRecord::new("t", "no retries"))
            .await
            .expect_err("retries exhausted");
        assert!(
            matches!(error, ProduceError::Client(ClientError::Server(ref b)) if b.code == ErrorCode::NotLeaderOrFollower),
            "{error}"
        );
        assert!(error.is_retriable());
    });
}

#[test]
fn acks_zero_reports_no_offsets_but_delivers() {
    let tls = tls();
    let node = node(&tls);
    node.create_topic("t", 1);
    let client = client(&tls, &node);
    smol::block_on(async {
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                acks: Acks::None,
                ..ProducerConfig::default()
            },
        )
        .expect("producer");
        let mut deliveries = Vec::new();
        for i in 0..50 {
            deliveries.push(
                producer
                    .send(ProducerRecord::new("t", format!("{i}")))
                    .await
                    .expect("queued"),
            );
        }
        producer.close().await;
        for d in deliveries {
            assert_eq!(d.await.expect("sent").offset, None);
        }
        // The node has them all once the QUIC stack acknowledged the streams.
        let mut consumer =
            Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
        consumer.assign(vec![("t".to_owned(), 0)]);
        let mut count = 0;
        while count < 50 {
            let records = consumer.poll(Duration::from_secs(5)).await.expect("poll");
            assert!(!records.is_empty());
            count += records.len();
        }
        assert_eq!(count, 50);
    });
}

#[test]
fn consumer_positions_follow_seek_and_reset_policies() {
    let tls = tls();
    let node = node(&tls);
    node.create_topic("t", 1);
    let client = client(&tls, &node);
    smol::block_on(async {
        let producer = quick_producer(&client);
        for i in 0..10 {
            // Outcomes are awaited by `close`.
            drop(
                producer
                    .send(ProducerRecord::new("t", format!("{i}")))
                    .await
                    .expect("queued"),
            );
        }
        producer.close().await;

        let latest = ConsumerConfig {
            auto_offset_reset: AutoOffsetReset::Latest,
            fetch_max_wait_ms: 50,
            ..ConsumerConfig::default()
        };
        let mut consumer = Consumer::new(client.clone(), latest).expect("consumer");
        consumer.assign(vec![("t".to_owned(), 0)]);
        assert!(
            consumer
                .poll(Duration::from_millis(200))
                .await
                .expect("poll")
                .is_empty()
        );
        assert_eq!(consumer.position("t", 0).await.expect("position"), 10);

        consumer.seek("t", 0, 7).expect("assigned");
        let records = consumer.poll(Duration::from_secs(5)).await.expect("poll");
        let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(
            offsets,
            vec![7, 8, 9],
            "a whole batch came, the records below 7 were skipped"
        );
        assert_eq!(consumer.position("t", 0).await.expect("position"), 10);

        consumer.seek_to_beginning("t", 0).await.expect("seek");
        assert_eq!(consumer.position("t", 0).await.expect("position"), 0);

        // Past the end: the Latest policy puts the position back at the end.
        consumer.seek("t", 0, 500).expect("assigned");
        assert!(
            consumer
                .poll(Duration::from_millis(300))
                .await
                .expect("poll")
                .is_empty()
        );
        assert_eq!(consumer.position("t", 0).await.expect("position"), 10);

        let strict = ConsumerConfig {
            auto_offset_reset: AutoOffsetReset::None,
            ..ConsumerConfig::default()
        };
        let mut consumer = Consumer::new(client.clone(), strict).expect("consumer");
        consumer.assign(vec![("t".to_owned(), 0)]);
        let error = consumer
            .poll(Duration::from_millis(100))
            .await
            .expect_err("no offset");
        assert!(matches!(error, ConsumeError::NoOffset { .. }), "{error}");
        consumer.seek("t", 0, 500).expect("assigned");
        let error = consumer
            .poll(Duration::from_secs(2))
            .await
            .expect_err("out of range");
        assert!(
            matches!(error, ConsumeError::OffsetOutOfRange { offset: 500, .. }),
            "{error}"
        );
        assert!(matches!(
            consumer.seek("other", 0, 1),
            Err(ConsumeError::NotAssigned { .. })
        ));
    });
}

#[test]
fn the_client_reconnects_after_the_node_restarts() {
    let tls = tls();
    let state = Arc::new(Mutex::new(NodeState::default()));
    let shared = Arc::new(Counters::default());
    let first = FakeNode::start(
        &tls,
        "127.0.0.1:0".parse().expect("addr"),
        shared.clone(),
        state.clone(),
    );
    first.create_topic("t", 1);
    let addr = first.addr();
    let client = client(&tls, &first);
    smol::block_on(async {
        let producer = quick_producer(&client);
        let before = producer
            .send_and_wait(ProducerRecord::new("t", "before"))
            .await
            .expect("acknowledged");
        assert_eq!(before.offset, Some(0));
        first.stop();
        smol::Timer::after(Duration::from_millis(100)).await;
        // Queued while the node is down; delivered once it is back.
        let pending = producer
            .send(ProducerRecord::new("t", "during"))
            .await
            .expect("queued");
        smol::Timer::after(Duration::from_millis(300)).await;
        let second = FakeNode::start(&tls, addr, shared, state);
        let during = pending.await.expect("delivered after the restart");
        assert_eq!(during.offset, Some(1));
        let mut consumer =
            Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
        consumer.assign(vec![("t".to_owned(), 0)]);
        let mut values = Vec::new();
        while values.len() < 2 {
            for r in consumer.poll(Duration::from_secs(5)).await.expect("poll") {
                values.push(r.value.expect("value"));
            }
        }
        assert_eq!(values, vec![b"before".to_vec(), b"during".to_vec()]);
        producer.close().await;
        second.stop();
    });
}

#[test]
fn a_foreign_ca_fails_the_handshake_without_retrying() {
    let node_tls = tls();
    let other_tls = tls();
    let node = node(&node_tls);
    let client =
        Client::new(ClientOptions::new(node.addr().to_string()).with_ca_file(&other_tls.ca_file))
            .expect("client");
    let error = smol::block_on(client.connect()).expect_err("untrusted certificate");
    assert!(
        matches!(
            error,
            ClientError::Connect {
                retriable: false,
                ..
            }
        ),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("--ca FILE"), "{message}");
}
