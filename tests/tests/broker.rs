//! Black-box tests of the broker: real `eddy` processes on 127.0.0.1, the real
//! client over QUIC.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use eddy_client::protocol::{
    self, Acks, ErrorCode, PROTOCOL_VERSION, Request, RequestHeader, Response, ResponseHeader,
};
use eddy_client::{
    Client, ClientError, Compression, Consumer, ConsumerConfig, ConsumerRecord, Producer,
    ProducerConfig, ProducerRecord, partition_for_key,
};
use eddy_core::batch::{BatchBuilder, BatchOptions, RecordHeader};
use eddy_tests::Node;

/// Most time any loop below waits for records.
const WAIT: Duration = Duration::from_secs(30);

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Reads `want` records from every partition of `topic` from the beginning.
async fn consume_all(
    client: &Client,
    topic: &str,
    partitions: u32,
    want: usize,
) -> Vec<ConsumerRecord> {
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
    consumer.assign((0..partitions).map(|p| (topic.to_string(), p)).collect());
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        out.extend(
            consumer
                .poll(Duration::from_millis(500))
                .await
                .expect("poll"),
        );
    }
    out
}

fn producer(client: &Client, acks: Acks, compression: Compression) -> Producer {
    Producer::new(
        client.clone(),
        ProducerConfig {
            acks,
            compression,
            linger_ms: 2,
            ..ProducerConfig::default()
        },
    )
    .expect("producer")
}

#[test]
fn produce_and_consume_with_keys_headers_and_compression() {
    let dir = tmp();
    let node = Node::start(&dir.path().join("data"), dir.path(), &[]);
    let client = node.client();
    smol::block_on(async {
        let partitions = 3;
        for codec in [
            Compression::None,
            Compression::Lz4,
            Compression::Zstd,
            Compression::Gzip,
        ] {
            let topic = format!("rt-{}", codec.name());
            client
                .create_topic(&topic, partitions, 1, vec![])
                .await
                .expect("create");
            let p = producer(&client, Acks::All, codec);
            let mut pending = Vec::new();
            for i in 0..300u32 {
                let rec = ProducerRecord::new(topic.clone(), format!("value-{i}").into_bytes())
                    .with_key(format!("device-{}", i % 7).into_bytes())
                    .with_header("seq", i.to_string().into_bytes());
                pending.push(p.send(rec).await.expect("send"));
            }
            let mut acked = BTreeMap::new();
            for (i, f) in pending.into_iter().enumerate() {
                let md = f.await.expect("acknowledged");
                acked.insert((md.partition, md.offset.expect("offset with acks=all")), i);
            }
            p.close().await;
            let records = consume_all(&client, &topic, partitions, 300).await;
            assert_eq!(records.len(), 300, "{topic}");
            let mut per_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
            for r in &records {
                let i = acked[&(r.partition, r.offset)];
                assert_eq!(r.value.as_deref(), Some(format!("value-{i}").as_bytes()));
                let key = format!("device-{}", i % 7);
                assert_eq!(r.key.as_deref(), Some(key.as_bytes()));
                assert_eq!(
                    r.partition,
                    partition_for_key(key.as_bytes(), partitions),
                    "Kafka's murmur2 placement"
                );
                assert_eq!(
                    r.headers,
                    vec![RecordHeader::new("seq", Some(i.to_string().as_bytes()))]
                );
                per_partition.entry(r.partition).or_default().push(r.offset);
            }
            for (p, offsets) in per_partition {
                assert_eq!(
                    offsets,
                    (0..offsets.len() as u64).collect::<Vec<_>>(),
                    "{topic}-{p}"
                );
            }
        }
    });
    let (status, _) = node.stop();
    assert!(status.success());
}

/// With several produce requests in flight on one connection (Kafka's default
/// of 5), each partition's records land in the order they were sent, as over
/// Kafka's single TCP connection: the client opens the streams of one
/// partition's batches in order, and the node queues them in that order
/// however long each takes to arrive and be checked.
#[test]
fn records_land_in_send_order_with_requests_in_flight() {
    let dir = tmp();
    let node = Node::start(&dir.path().join("data"), dir.path(), &[]);
    let client = node.client();
    smol::block_on(async {
        let (topic, partitions, n) = ("ordered", 2u32, 6000u32);
        client
            .create_topic(topic, partitions, 1, vec![])
            .await
            .expect("create");
        let p = Producer::new(
            client.clone(),
            ProducerConfig {
                acks: Acks::Leader,
                linger_ms: 0,
                // Small batches of different sizes, many requests in flight.
                batch_size: 4096,
                max_in_flight_requests_per_connection: 5,
                ..ProducerConfig::default()
            },
        )
        .expect("producer");
        let mut pending = Vec::new();
        for i in 0..n {
            let key = if i % 3 == 0 { "even" } else { "odd" };
            let mut value = format!("{i:08}-").into_bytes();
            value.resize(value.len() + (i as usize * 37) % 900, b'x');
            let record = ProducerRecord::new(topic, value).with_key(key);
            pending.push(p.send(record).await.expect("send"));
        }
        for f in pending {
            f.await.expect("acknowledged");
        }
        p.close().await;
        let records = consume_all(&client, topic, partitions, n as usize).await;
        assert_eq!(records.len(), n as usize);
        let mut last: BTreeMap<u32, u32> = BTreeMap::new();
        for r in &records {
            let value = r.value.as_deref().expect("value");
            let i: u32 = std::str::from_utf8(&value[..8])
                .expect("utf-8")
                .parse()
                .expect("sequence");
            if let Some(before) = last.insert(r.partition, i) {
                assert!(
                    i > before,
                    "partition {}: record {i} landed after record {before}",
                    r.partition
                );
            }
        }
    });
    let (status, _) = node.stop();
    assert!(status.success());
}

#[test]
fn a_consumer_long_polls_until_records_arrive() {
    let dir = tmp();
    let node = Node::start(&dir.path().join("data"), dir.path(), &[]);
    let client = node.client();
    smol::block_on(client.create_topic("lp", 1, 1, vec![])).expect("create");
    let consumer_client = node.client();
    let reader = std::thread::spawn(move || {
        smol::block_on(async {
            let mut c = Consumer::new(
                consumer_client,
                ConsumerConfig {
                    fetch_max_wait_ms: 10_000,
                    ..ConsumerConfig::default()
                },
            )
            .expect("consumer");
            c.assign(vec![("lp".into(), 0)]);
            // One poll, bounded: it must return the record produced while it waits.
            c.poll(Duration::from_secs(20)).await.expect("poll")
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    smol::block_on(async {
        let p = producer(&client, Acks::Leader, Compression::None);
        p.send_and_wait(ProducerRecord::new("lp", b"wake up".to_vec()))
            .await
            .expect("produce");
        p.close().await;
    });
    let got = reader.join().expect("reader");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value.as_deref(), Some(&b"wake up"[..]));

    // A fetch past the end waits max_wait and answers empty, with the high watermark.
    let (resp, payload) = smol::block_on(client.request(
        RequestHeader {
            version: PROTOCOL_VERSION,
            request: Request::Fetch {
                topic: "lp".into(),
                partition: 0,
                offset: 1,
                max_bytes: 1 << 20,
                min_bytes: 1,
                max_wait_ms: 200,
            },
        },
        &[],
    ))
    .expect("fetch");
    assert!(payload.is_empty());
    assert!(
        matches!(
            resp,
            Response::Fetch {
                high_watermark: 1,
                next_offset: 1,
                ..
            }
        ),
        "{resp:?}"
    );
    node.stop();
}

#[test]
fn kill_9_with_fsync_always_loses_no_acknowledged_record() {
    let dir = tmp();
    let data = dir.path().join("data");
    let node = Node::start(&data, dir.path(), &["--fsync", "always"]);
    let client = node.client();
    smol::block_on(client.create_topic("durable", 2, 1, vec![])).expect("create");
    // A producer process-equivalent in a thread: sends until the node dies.
    let options = node.client_options();
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_writer = stop.clone();
    let writer = std::thread::spawn(move || {
        smol::block_on(async {
            let client = Client::new(options).expect("client");
            let p = Producer::new(
                client,
                ProducerConfig {
                    acks: Acks::Leader,
                    linger_ms: 1,
                    retries: 0,
                    delivery_timeout_ms: 10_000,
                    request_timeout_ms: 5_000,
                    ..ProducerConfig::default()
                },
            )
            .expect("producer");
            for i in 0..200_000u32 {
                if stop_writer.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let rec = ProducerRecord::new("durable", format!("r{i}").into_bytes())
                    .with_key(format!("k{}", i % 5).into_bytes());
                let Ok(f) = p.send(rec).await else { break };
                let tx = tx.clone();
                smol::spawn(async move {
                    if let Ok(md) = f.await {
                        let _ = tx.send((md.partition, md.offset, i));
                    }
                })
                .detach();
                if i % 64 == 0 {
                    smol::Timer::after(Duration::from_micros(200)).await;
                }
            }
        })
    });
    // Let a few thousand acknowledgements through, then kill -9 mid-stream.
    let mut acked = Vec::new();
    let deadline = Instant::now() + WAIT;
    while acked.len() < 1000 && Instant::now() < deadline {
        if let Ok(a) = rx.recv_timeout(Duration::from_millis(100)) {
            acked.push(a);
        }
    }
    assert!(acked.len() >= 1000, "only {} acknowledged", acked.len());
    node.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // Acknowledgements that raced the kill were still acknowledged: take them too.
    while let Ok(a) = rx.recv_timeout(Duration::from_millis(200)) {
        acked.push(a);
    }
    drop(rx);
    let node = Node::start(&data, dir.path(), &["--fsync", "always"]);
    let client = node.client();
    let records = smol::block_on(async {
        let mut total = 0;
        for p in 0..2 {
            let end = client
                .list_offsets("durable", p, protocol::OffsetSpec::Latest)
                .await
                .expect("offsets")
                .offset
                .unwrap_or(0);
            total += end as usize;
        }
        consume_all(&client, "durable", 2, total).await
    });
    eprintln!(
        "{} acknowledged before the kill, {} records after restart",
        acked.len(),
        records.len()
    );
    let stored: BTreeMap<(u32, u64), Vec<u8>> = records
        .iter()
        .map(|r| ((r.partition, r.offset), r.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(stored.len(), records.len(), "no offset is served twice");
    for (partition, offset, i) in &acked {
        let offset = offset.expect("acks=1 gives offsets");
        assert_eq!(
            stored.get(&(*partition, offset)).map(Vec::as_slice),
            Some(format!("r{i}").as_bytes()),
            "acknowledged record {i} at {partition}/{offset} after kill -9"
        );
    }
    node.stop();
    writer.join().expect("writer thread");
}

#[test]
fn sigterm_shutdown_leaves_nothing_to_recover() {
    let dir = tmp();
    let data = dir.path().join("data");
    let node = Node::start(&data, dir.path(), &[]);
    let client = node.client();
    smol::block_on(async {
        client
            .create_topic("clean", 2, 1, vec![])
            .await
            .expect("create");
        let p = producer(&client, Acks::Leader, Compression::Lz4);
        let mut pending = Vec::new();
        for i in 0..1000u32 {
            pending.push(
                p.send(ProducerRecord::new("clean", i.to_string().into_bytes()))
                    .await
                    .expect("send"),
            );
        }
        for f in pending {
            f.await.expect("acknowledged");
        }
        p.close().await;
    });
    let (status, log) = node.stop();
    assert!(status.success(), "{log}");
    let node = Node::start(&data, dir.path(), &[]);
    let log = node.process.stderr();
    assert!(
        !log.contains("recovered"),
        "a clean restart re-read batches:\n{log}"
    );
    let records = smol::block_on(consume_all(&node.client(), "clean", 2, 1000));
    assert_eq!(records.len(), 1000);
    node.stop();
}

fn raw_frame(request: &Request, payload: &[u8]) -> Vec<u8> {
    let mut f = protocol::encode_header(&RequestHeader {
        version: PROTOCOL_VERSION,
        request: request.clone(),
    })
    .expect("encode");
    f.extend_from_slice(payload);
    f
}

/// The error code of a raw answer; panics if it is not an error frame.
fn error_code(answer: &[u8]) -> ErrorCode {
    match protocol::split_frame::<ResponseHeader>(answer) {
        Ok((ResponseHeader::Error(body), _)) => body.code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

fn one_batch(values: &[&[u8]]) -> Vec<u8> {
    let mut b = BatchBuilder::new(BatchOptions::default());
    for v in values {
        b.push(0, None, Some(v), &[]).expect("push");
    }
    b.build().expect("build")
}

async fn still_serves(node: &Node, topic: &str) {
    let client = node.client();
    let p = producer(&client, Acks::All, Compression::None);
    let md = p
        .send_and_wait(ProducerRecord::new(topic, b"still here".to_vec()))
        .await
        .expect("produce after bad input");
    p.close().await;
    let mut c = Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
    c.assign(vec![(topic.to_string(), md.partition)]);
    c.seek(topic, md.partition, md.offset.expect("offset"))
        .expect("seek");
    let got = c.poll(Duration::from_secs(10)).await.expect("poll");
    assert_eq!(
        got.first().and_then(|r| r.value.clone()),
        Some(b"still here".to_vec())
    );
}

#[test]
fn bad_input_gets_typed_errors_and_the_node_keeps_serving() {
    let dir = tmp();
    let node = Node::start(
        &dir.path().join("data"),
        dir.path(),
        &["--max-connections", "8"],
    );
    let client = node.client();
    smol::block_on(async {
        client
            .create_topic(
                "guarded",
                1,
                1,
                vec![("max.message.bytes".into(), "2000".into())],
            )
            .await
            .expect("create");
        let produce = |topic: &str, partition: Option<u32>| Request::Produce {
            topic: topic.into(),
            partition,
            acks: Acks::Leader,
            timeout_ms: 1000,
        };
        // A length prefix far over the limit: refused before anything is allocated.
        let answer = client.raw_exchange(&u32::MAX.to_be_bytes()).await;
        if let Ok(a) = answer {
            assert_eq!(error_code(&a), ErrorCode::InvalidRequest);
        }
        // A frame cut short.
        let mut cut = raw_frame(&produce("guarded", Some(0)), &[]);
        cut.truncate(cut.len() - 2);
        assert_eq!(
            error_code(&client.raw_exchange(&cut).await.expect("answer")),
            ErrorCode::InvalidRequest
        );
        // Bytes that are not a header, and an unknown request type.
        let junk = [0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            error_code(&client.raw_exchange(&junk).await.expect("answer")),
            ErrorCode::InvalidRequest
        );
        let unknown = [0, 0, 0, 2, 1, 99];
        assert_eq!(
            error_code(&client.raw_exchange(&unknown).await.expect("answer")),
            ErrorCode::InvalidRequest
        );
        // A version from the future.
        let mut future = protocol::encode_header(&RequestHeader {
            version: 999,
            request: Request::Metadata { topics: None },
        })
        .expect("encode");
        future.truncate(future.len());
        assert_eq!(
            error_code(&client.raw_exchange(&future).await.expect("answer")),
            ErrorCode::UnsupportedVersion
        );
        // A batch with a bad CRC.
        let mut bad = one_batch(&[b"x"]);
        let n = bad.len();
        bad[n - 1] ^= 0x55;
        let a = client
            .raw_exchange(&raw_frame(&produce("guarded", Some(0)), &bad))
            .await
            .expect("answer");
        assert_eq!(error_code(&a), ErrorCode::CorruptMessage);
        // Garbage where batches should be.
        let a = client
            .raw_exchange(&raw_frame(
                &produce("guarded", Some(0)),
                b"not a batch at all",
            ))
            .await
            .expect("answer");
        assert_eq!(error_code(&a), ErrorCode::CorruptMessage);
        // Over max.message.bytes.
        let big = vec![b'z'; 3000];
        let a = client
            .raw_exchange(&raw_frame(
                &produce("guarded", Some(0)),
                &one_batch(&[&big]),
            ))
            .await
            .expect("answer");
        assert_eq!(error_code(&a), ErrorCode::MessageTooLarge);
        // Unknown topic and partition.
        let a = client
            .raw_exchange(&raw_frame(&produce("nope", Some(0)), &one_batch(&[b"x"])))
            .await
            .expect("answer");
        assert_eq!(error_code(&a), ErrorCode::UnknownTopicOrPartition);
        let a = client
            .raw_exchange(&raw_frame(
                &produce("guarded", Some(7)),
                &one_batch(&[b"x"]),
            ))
            .await
            .expect("answer");
        assert_eq!(error_code(&a), ErrorCode::UnknownTopicOrPartition);
        let e = client
            .describe_topic("nope")
            .await
            .expect_err("unknown topic");
        assert_eq!(e.code(), Some(ErrorCode::UnknownTopicOrPartition));
        // Nothing above was appended.
        let end = client
            .list_offsets("guarded", 0, protocol::OffsetSpec::Latest)
            .await
            .expect("offsets");
        assert_eq!(end.offset, Some(0));

        // Thousands of streams at once on one connection: all answered.
        let tasks: Vec<_> = (0..2000)
            .map(|_| {
                let c = client.clone();
                smol::spawn(async move { c.metadata(None).await })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            if t.await.is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 2000, "every stream answered");

        // More connections than allowed: the extra ones are refused, the node lives.
        let mut clients = Vec::new();
        let mut refused = 0;
        for _ in 0..20 {
            let c = node.client();
            match c.metadata(None).await {
                Ok(_) => clients.push(c),
                Err(ClientError::Connect { .. }) | Err(ClientError::ConnectionLost { .. }) => {
                    refused += 1
                }
                Err(e) => refused += usize::from(e.is_connection_error()),
            }
        }
        assert!(refused > 0, "max-connections 8 let 20 clients in");
        for c in clients {
            c.close().await;
        }
        drop(client);
        // Give the node a moment to see the closed connections, then serve normally.
        let mut served = false;
        for _ in 0..50 {
            if node.client().metadata(None).await.is_ok() {
                served = true;
                break;
            }
            smol::Timer::after(Duration::from_millis(200)).await;
        }
        assert!(served, "a well-behaved client is served after the flood");
        still_serves(&node, "guarded").await;
    });
    let (status, log) = node.stop();
    assert!(status.success(), "{log}");
}
