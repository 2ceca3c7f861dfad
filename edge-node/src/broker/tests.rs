//! Broker unit tests: in-process, no QUIC.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_client::protocol::{Acks, ConfigChange, ErrorCode, OffsetSpec};
use eddy_core::batch::{Batch, BatchBuilder, BatchIter, BatchOptions};

use super::*;
use crate::config::{FsyncMode, NodeConfig};
use crate::runtime::Runtime;

/// Upper bound for anything a test waits on.
const WAIT_MS: u64 = 10_000;

fn node(dir: &Path) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("address"),
        ..NodeConfig::default()
    }
}

fn batch(records: &[(Option<&[u8]>, &[u8])]) -> Vec<u8> {
    let mut b = BatchBuilder::new(BatchOptions::default());
    for (key, value) in records {
        b.push(now_ms(), *key, Some(value), &[]).expect("push");
    }
    b.build().expect("build")
}

fn values(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for b in BatchIter::new(bytes) {
        let b: Batch<'_> = b.expect("valid batch");
        for r in b.records(1 << 20).expect("records") {
            out.push((
                b.header.base_offset + r.offset_delta as u64,
                r.value.expect("value"),
            ));
        }
    }
    out
}

fn open(rt: &Runtime, config: &NodeConfig) -> Arc<Broker> {
    Broker::open(config, rt.handle()).expect("open broker")
}

fn code<T: std::fmt::Debug>(r: Result<T, BrokerError>) -> (ErrorCode, String) {
    let e = r.expect_err("expected an error");
    (e.code, e.message)
}

#[test]
fn topics_are_created_described_altered_deleted_and_persist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::start(2).expect("runtime");
    let config = node(dir.path());
    let broker = open(&rt, &config);
    rt.block_on(async {
        broker
            .create_topic("t", 3, 1, vec![("retention.ms".into(), "60000".into())])
            .await
            .expect("create");
        let d = broker.describe_topic("t").expect("describe");
        assert_eq!(d.partitions.len(), 3);
        assert_eq!(
            d.configs,
            vec![("retention.ms".to_owned(), "60000".to_owned())]
        );
        assert!(
            d.effective_configs
                .contains(&("retention.ms".to_owned(), "60000".to_owned()))
        );
        let p = &d.partitions[2];
        assert_eq!((p.partition, p.leader, p.replicas.clone()), (2, 0, vec![0]));
        assert_eq!(
            (p.log_start_offset, p.high_watermark, p.log_end_offset),
            (0, 0, 0)
        );

        let (c, _) = code(broker.create_topic("t", 1, 1, vec![]).await);
        assert_eq!(c, ErrorCode::TopicAlreadyExists);
        let (c, m) = code(broker.create_topic("__mine", 1, 1, vec![]).await);
        assert_eq!(c, ErrorCode::InvalidTopic, "{m}");
        let (c, _) = code(broker.create_topic("bad/name", 1, 1, vec![]).await);
        assert_eq!(c, ErrorCode::InvalidTopic);
        let (c, _) = code(broker.create_topic("u", 0, 1, vec![]).await);
        assert_eq!(c, ErrorCode::InvalidPartitions);
        let (c, m) = code(broker.create_topic("u", 1, 3, vec![]).await);
        assert_eq!(c, ErrorCode::InvalidReplicationFactor);
        assert!(m.contains("1 node"), "{m}");
        let (c, m) = code(
            broker
                .create_topic("u", 1, 1, vec![("retention.msec".into(), "1".into())])
                .await,
        );
        assert_eq!(c, ErrorCode::InvalidConfig);
        assert!(m.contains("retention.msec"), "{m}");
        let too_big = (config.max_request_bytes + 1).to_string();
        let (c, m) = code(
            broker
                .create_topic("u", 1, 1, vec![("max.message.bytes".into(), too_big)])
                .await,
        );
        assert_eq!(c, ErrorCode::InvalidConfig);
        assert!(m.contains("max-request-bytes"), "{m}");
        let internal = || {
            vec![(
                "interceptor.dead.letter.topic".into(),
                "__consumer_offsets".into(),
            )]
        };
        let (c, m) = code(broker.create_topic("u", 1, 1, internal()).await);
        assert_eq!(c, ErrorCode::InvalidConfig);
        assert!(m.contains("internal topic"), "{m}");
        assert!(broker.topic("u").is_none(), "failed creates leave nothing");
        let (c, _) = code(
            broker
                .alter_configs(
                    "t",
                    vec![ConfigChange::Set(
                        "interceptor.dead.letter.topic".into(),
                        "__consumer_offsets".into(),
                    )],
                )
                .await,
        );
        assert_eq!(c, ErrorCode::InvalidConfig);

        broker
            .alter_configs(
                "t",
                vec![
                    ConfigChange::Set("segment.bytes".into(), "4096".into()),
                    ConfigChange::Delete("retention.ms".into()),
                ],
            )
            .await
            .expect("alter");
        let d = broker.describe_topic("t").expect("describe");
        assert_eq!(
            d.configs,
            vec![("segment.bytes".to_owned(), "4096".to_owned())]
        );
        let t = broker.topic("t").expect("topic");
        let applied = t.partitions[1]
            .with_log(|log| Ok(log.config().segment_bytes))
            .expect("log");
        assert_eq!(applied, 4096, "alter applies to open logs");
        let (c, _) = code(
            broker
                .alter_configs("t", vec![ConfigChange::Set("nope".into(), "1".into())])
                .await,
        );
        assert_eq!(c, ErrorCode::InvalidConfig);

        let (c, _) = code(broker.create_partitions("t", 2).await);
        assert_eq!(c, ErrorCode::InvalidPartitions);
        broker.create_partitions("t", 5).await.expect("grow");
        assert_eq!(broker.describe_topic("t").expect("d").partitions.len(), 5);

        broker
            .create_topic("gone", 2, 1, vec![])
            .await
            .expect("create");
        broker
            .produce("gone", Some(1), Acks::Leader, 0, batch(&[(None, b"old")]))
            .await
            .expect("produce");
        broker.delete_topic("gone").await.expect("delete");
        assert_eq!(broker.list_topics(), vec!["t".to_owned()]);
        assert!(!dir.path().join("gone-1").exists(), "partition dir removed");
        let (c, _) = code(broker.delete_topic("gone").await);
        assert_eq!(c, ErrorCode::UnknownTopicOrPartition);
        broker.shutdown().await.expect("shutdown");
    });
    drop(broker);

    let broker = open(&rt, &config);
    rt.block_on(async {
        assert_eq!(broker.list_topics(), vec!["t".to_owned()]);
        let d = broker.describe_topic("t").expect("describe");
        assert_eq!(d.partitions.len(), 5);
        assert_eq!(
            d.configs,
            vec![("segment.bytes".to_owned(), "4096".to_owned())]
        );
        broker
            .create_topic("gone", 2, 1, vec![])
            .await
            .expect("recreate");
        let d = broker.describe_topic("gone").expect("describe");
        assert_eq!(
            d.partitions[1].log_end_offset, 0,
            "no old records come back"
        );
        broker.shutdown().await.expect("shutdown");
    });
}

#[test]
fn a_crash_between_delete_steps_does_not_resurrect_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::start(1).expect("runtime");
    let config = node(dir.path());
    let broker = open(&rt, &config);
    rt.block_on(async {
        broker
            .create_topic("t", 1, 1, vec![])
            .await
            .expect("create");
        broker
            .produce("t", Some(0), Acks::Leader, 0, batch(&[(None, b"old")]))
            .await
            .expect("produce");
        broker.shutdown().await.expect("shutdown");
    });
    drop(broker);
    // As if a delete wrote its tombstone, then crashed before the rename, and
    // another left a renamed directory behind.
    {
        let storage: Arc<dyn eddy_core::storage::Storage> = Arc::new(eddy_core::storage::FsStorage);
        let (mut store, _) =
            metadata::MetadataStore::open(storage, dir.path(), now_ms()).expect("metadata");
        store.delete("t", now_ms()).expect("tombstone");
        store.close(now_ms()).expect("close");
    }
    let leftover = dir.path().join("x-0.abc1-delete");
    std::fs::create_dir_all(&leftover).expect("leftover");
    assert!(is_delete_dir("x-0.abc1-delete"));
    assert!(!is_delete_dir("x-0"));

    let broker = open(&rt, &config);
    assert!(!leftover.exists(), "start-up finishes interrupted deletes");
    assert!(
        dir.path().join("t-0").exists(),
        "orphans are left alone at start"
    );
    rt.block_on(async {
        assert!(broker.list_topics().is_empty());
        broker
            .create_topic("t", 1, 1, vec![])
            .await
            .expect("create");
        let d = broker.describe_topic("t").expect("describe");
        assert_eq!(d.partitions[0].log_end_offset, 0);
        broker.shutdown().await.expect("shutdown");
    });
}

#[test]
fn produce_and_fetch_round_trip_with_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::start(2).expect("runtime");
    let broker = open(&rt, &node(dir.path()));
    rt.block_on(async {
        broker
            .create_topic("t", 1, 1, vec![])
            .await
            .expect("create");
        let before = now_ms();
        let first = broker
            .produce(
                "t",
                Some(0),
                Acks::Leader,
                0,
                batch(&[(None, b"a"), (None, b"b")]),
            )
            .await
            .expect("produce");
        assert_eq!((first.partition, first.appended.base_offset), (0, 0));
        let second = broker
            .produce("t", Some(0), Acks::All, 5_000, batch(&[(None, b"c")]))
            .await
            .expect("produce");
        assert_eq!(second.appended.base_offset, 2);

        let f = broker.fetch("t", 0, 0, 1 << 20, 1, 0).await.expect("fetch");
        assert_eq!(
            (f.high_watermark, f.log_start_offset, f.next_offset),
            (3, 0, 3)
        );
        let got = values(&f.batches);
        assert_eq!(
            got,
            vec![(0, b"a".to_vec()), (1, b"b".to_vec()), (2, b"c".to_vec())]
        );
        // From the middle of a batch: the whole batch comes back.
        let f = broker.fetch("t", 0, 1, 1 << 20, 1, 0).await.expect("fetch");
        assert_eq!(values(&f.batches)[0].0, 0);
        // At the end: nothing, at once with max_wait 0.
        let f = broker.fetch("t", 0, 3, 1 << 20, 1, 0).await.expect("fetch");
        assert!(f.batches.is_empty());
        assert_eq!(f.next_offset, 3);
        let (c, m) = code(broker.fetch("t", 0, 9, 1 << 20, 1, 0).await);
        assert_eq!(c, ErrorCode::OffsetOutOfRange);
        assert!(m.contains("0 to 3"), "{m}");

        let earliest = broker.list_offsets("t", 0, OffsetSpec::Earliest).await;
        assert_eq!(earliest.expect("earliest"), (Some(0), -1));
        let latest = broker.list_offsets("t", 0, OffsetSpec::Latest).await;
        assert_eq!(latest.expect("latest"), (Some(3), -1));
        let (offset, ts) = broker
            .list_offsets("t", 0, OffsetSpec::Timestamp(before))
            .await
            .expect("by time");
        assert_eq!(offset, Some(0));
        assert!(ts >= before);
        let none = broker
            .list_offsets("t", 0, OffsetSpec::Timestamp(now_ms() + 3_600_000))
            .await
            .expect("by time");
        assert_eq!(none, (None, -1));
        broker.shutdown().await.expect("shutdown");
    });
}

#[test]
fn the_node_picks_partitions_by_key_then_round_robin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::start(1).expect("runtime");
    let broker = open(&rt, &node(dir.path()));
    rt.block_on(async {
        broker
            .create_topic("t", 50, 1, vec![])
            .await
            .expect("create");
        let r = broker
            .produce(
                "t",
                None,
                Acks::Leader,
                0,
                batch(&[(Some(b"foobar"), b"v")]),
            )
            .await
            .expect("produce");
        // Kafka's default partitioner puts "foobar" in partition 16 of 50.
        assert_eq!(r.partition, 16);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10 {
            let r = broker
                .produce("t", None, Acks::Leader, 0, batch(&[(None, b"v")]))
                .await
                .expect("produce");
            seen.insert(r.partition);
        }
        assert_eq!(seen.len(), 10, "null keys spread round-robin: {seen:?}");
        let (c, m) = code(
            broker
                .produce("t", Some(50), Acks::Leader, 0, batch(&[(None, b"v")]))
                .await,
        );
        assert_eq!(c, ErrorCode::UnknownTopicOrPartition);
        assert!(m.contains("has 50"), "{m}");
        broker.shutdown().await.expect("shutdown");
    });
}

#[test]
fn a_long_poll_wakes_on_produce_and_times_out_when_idle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::start(2).expect("runtime");
    let broker = open(&rt, &node(dir.path()));
    rt.block_on(async {
        broker
            .create_topic("t", 1, 1, vec![])
            .await
            .expect("create");
        let started = Instant::now();
        let idle = broker
            .fetch("t", 0, 0, 1 << 20, 1, 200)
            .await
            .expect("fetch");
        assert!(idle.batches.is_empty());
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "waited max_wait"
        );

        let waiter = broker.clone();
        let poll = rt
            .handle()
            .spawn(async move { waiter.fetch("t", 0, 0, 1 << 20, 1, WAIT_MS as u32).await });
        smol::Timer::after(Duration::from_millis(100)).await;
        let started = Instant::now();
        broker
            .produce("t", Some(0), Acks::Leader, 0, batch(&[(None, b"wake")]))
            .await
            .expect("produce");
        let woken = poll.await.expect("fetch");
        assert_eq!(values(&woken.batches), vec![(0, b"wake".to_vec())]);
        assert!(
            started.elapsed() < Duration::from_millis(WAIT_MS / 2),
            "woken by the produce, not by the timeout"
        );

        // min_bytes larger than what is there: waits, then returns what exists.
        let f = broker
            .fetch("t", 0, 0, 1 << 20, 1 << 20, 100)
            .await
            .expect("fetch");
        assert_eq!(values(&f.batches).len(), 1);

        // Shutdown ends a long poll at once.
        let waiter = broker.clone();
        let poll = rt
            .handle()
            .spawn(async move { waiter.fetch("t", 0, 1, 1 << 20, 1, WAIT_MS as u32).await });
        smol::Timer::after(Duration::from_millis(50)).await;
        let started = Instant::now();
        broker.begin_shutdown();
        let _ = poll.await;
        assert!(started.elapsed() < Duration::from_millis(WAIT_MS / 2));
        broker.shutdown().await.expect("shutdown");
    });
}

#[test]
fn fsync_always_acks_after_a_shared_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::start(2).expect("runtime");
    let config = NodeConfig {
        fsync: FsyncMode::Always,
        ..node(dir.path())
    };
    let broker = open(&rt, &config);
    const PRODUCERS: usize = 64;
    rt.block_on(async {
        broker
            .create_topic("t", 1, 1, vec![])
            .await
            .expect("create");
        let tasks: Vec<_> = (0..PRODUCERS)
            .map(|i| {
                let b = broker.clone();
                rt.handle().spawn(async move {
                    let v = format!("v{i}");
                    b.produce("t", Some(0), Acks::All, 0, batch(&[(None, v.as_bytes())]))
                        .await
                })
            })
            .collect();
        for t in tasks {
            let r = t.await.expect("produce");
            let durable = broker.topic("t").expect("topic").partitions[0]
                .with_log(|log| Ok(log.durable_offset()))
                .expect("log");
            assert!(durable > r.appended.base_offset, "acked before its fsync");
        }
        let syncs = broker.partition_syncs("t", 0).expect("partition");
        assert!(syncs >= 1);
        assert!(
            syncs < PRODUCERS as u64,
            "{syncs} fsyncs for {PRODUCERS} concurrent produces: no group commit"
        );
        let d = broker.describe_topic("t").expect("describe");
        assert_eq!(d.partitions[0].high_watermark, PRODUCERS as u64);
        broker.shutdown().await.expect("shutdown");
    });
}

#[test]
fn unknown_topics_say_how_to_create_them_unless_auto_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::start(1).expect("runtime");
    let broker = open(&rt, &node(dir.path()));
    rt.block_on(async {
        let (c, m) = code(
            broker
                .produce("nope", None, Acks::Leader, 0, batch(&[(None, b"v")]))
                .await,
        );
        assert_eq!(c, ErrorCode::UnknownTopicOrPartition);
        assert!(m.contains("eddy topic create nope"), "{m}");
        let (c, _) = code(broker.fetch("nope", 0, 0, 1024, 1, 0).await);
        assert_eq!(c, ErrorCode::UnknownTopicOrPartition);
        let (c, _) = code(broker.list_offsets("nope", 0, OffsetSpec::Latest).await);
        assert_eq!(c, ErrorCode::UnknownTopicOrPartition);
        let (c, _) = code(broker.metadata(Some(vec!["nope".into()])).await);
        assert_eq!(c, ErrorCode::UnknownTopicOrPartition);
        let (c, _) = code(broker.describe_topic("nope"));
        assert_eq!(c, ErrorCode::UnknownTopicOrPartition);
        broker.shutdown().await.expect("shutdown");
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let config = NodeConfig {
        auto_create_topics_enable: true,
        ..node(dir.path())
    };
    let broker = open(&rt, &config);
    rt.block_on(async {
        let r = broker
            .produce("auto", None, Acks::Leader, 0, batch(&[(None, b"v")]))
            .await
            .expect("auto-created");
        assert_eq!(r.partition, 0);
        let (nodes, topics) = broker.metadata(None).await.expect("metadata");
        assert_eq!(nodes.len(), 1);
        assert_eq!(topics.len(), 1);
        assert_eq!(topics[0].partitions, vec![(0, 0)]);
        let (c, _) = code(
            broker
                .produce("__internal", None, Acks::Leader, 0, batch(&[(None, b"v")]))
                .await,
        );
        assert_eq!(c, ErrorCode::UnknownTopicOrPartition);
        broker.shutdown().await.expect("shutdown");
    });
}

#[test]
fn bad_batches_are_rejected_and_nothing_is_appended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::start(1).expect("runtime");
    let broker = open(&rt, &node(dir.path()));
    rt.block_on(async {
        broker
            .create_topic("t", 1, 1, vec![("max.message.bytes".into(), "200".into())])
            .await
            .expect("create");
        let mut corrupt = batch(&[(None, b"value")]);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        let (c, m) = code(broker.produce("t", Some(0), Acks::Leader, 0, corrupt).await);
        assert_eq!(c, ErrorCode::CorruptMessage, "{m}");
        let big = batch(&[(None, &[7u8; 300])]);
        let (c, m) = code(broker.produce("t", Some(0), Acks::Leader, 0, big).await);
        assert_eq!(c, ErrorCode::MessageTooLarge);
        assert!(m.contains("max.message.bytes"), "{m}");
        let (c, _) = code(
            broker
                .produce("t", Some(0), Acks::Leader, 0, vec![1, 2, 3])
                .await,
        );
        assert_eq!(c, ErrorCode::CorruptMessage);
        let mut snappy = batch(&[(None, b"v")]);
        snappy[22] |= 2; // attributes low byte: codec id 2
        let (c, m) = code(broker.produce("t", Some(0), Acks::Leader, 0, snappy).await);
        assert_eq!(c, ErrorCode::CorruptMessage);
        assert!(m.contains("snappy"), "{m}");
        let d = broker.describe_topic("t").expect("describe");
        assert_eq!(d.partitions[0].log_end_offset, 0);
        broker
            .produce("t", Some(0), Acks::Leader, 0, batch(&[(None, b"fine")]))
            .await
            .expect("a good batch still goes in");
        broker.shutdown().await.expect("shutdown");
    });
}

#[test]
fn retention_runs_in_the_background() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::start(2).expect("runtime");
    let config = NodeConfig {
        log_retention_check_interval_ms: 50,
        ..node(dir.path())
    };
    let broker = open(&rt, &config);
    rt.block_on(async {
        broker
            .create_topic(
                "t",
                1,
                1,
                vec![
                    ("segment.bytes".into(), "100".into()),
                    ("retention.bytes".into(), "1".into()),
                    ("file.delete.delay.ms".into(), "0".into()),
                ],
            )
            .await
            .expect("create");
        for _ in 0..5 {
            broker
                .produce("t", Some(0), Acks::Leader, 0, batch(&[(None, &[1u8; 80])]))
                .await
                .expect("produce");
        }
        let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
        loop {
            let d = broker.describe_topic("t").expect("describe");
            if d.partitions[0].log_start_offset == 4 {
                break;
            }
            assert!(Instant::now() < deadline, "retention never ran: {d:?}");
            smol::Timer::after(Duration::from_millis(20)).await;
        }
        let (c, _) = code(broker.fetch("t", 0, 0, 1024, 1, 0).await);
        assert_eq!(c, ErrorCode::OffsetOutOfRange);
        broker.shutdown().await.expect("shutdown");
    });
}

#[test]
fn a_clean_shutdown_needs_no_recovery_and_keeps_every_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::start(2).expect("runtime");
    let config = node(dir.path());
    let broker = open(&rt, &config);
    rt.block_on(async {
        broker
            .create_topic("t", 2, 1, vec![])
            .await
            .expect("create");
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let b = broker.clone();
                rt.handle().spawn(async move {
                    b.produce("t", Some(i % 2), Acks::Leader, 0, batch(&[(None, b"r")]))
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("produce");
        }
        broker.shutdown().await.expect("shutdown");
        let (c, _) = code(
            broker
                .produce("t", Some(0), Acks::Leader, 0, batch(&[(None, b"late")]))
                .await,
        );
        assert_eq!(c, ErrorCode::ShuttingDown);
    });
    drop(broker);
    let broker = open(&rt, &config);
    let t = broker.topic("t").expect("topic");
    for p in &t.partitions {
        let (recovered, end) = p
            .with_log(|log| Ok((log.open_report().recovered_batches, log.log_end_offset())))
            .expect("log");
        assert_eq!(recovered, 0, "partition {} needed recovery", p.index());
        assert_eq!(end, 10);
    }
    rt.block_on(broker.shutdown()).expect("shutdown");
}

#[test]
fn a_topic_compression_type_recompresses_what_producers_send() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::start(2).expect("runtime");
    let broker = open(&rt, &node(dir.path()));
    rt.block_on(async {
        broker
            .create_topic("z", 1, 1, vec![("compression.type".into(), "zstd".into())])
            .await
            .expect("create");
        broker
            .create_topic("p", 1, 1, vec![])
            .await
            .expect("create");
        let value = b"a reading that repeats, a reading that repeats".to_vec();
        let lz4 = {
            let mut b = BatchBuilder::new(BatchOptions {
                compression: Compression::Lz4,
                ..BatchOptions::default()
            });
            for _ in 0..20 {
                b.push(now_ms(), None, Some(&value), &[]).expect("push");
            }
            b.build().expect("build")
        };
        let mut two = batch(&[(None, b"plain")]);
        two.extend_from_slice(&lz4);
        for topic in ["z", "p"] {
            broker
                .produce(topic, Some(0), Acks::Leader, 0, two.clone())
                .await
                .expect("produce");
        }
        let codecs = |bytes: &[u8]| -> Vec<Compression> {
            BatchIter::new(bytes)
                .map(|b| b.expect("batch").compression().expect("codec"))
                .collect()
        };
        let z = broker.fetch("z", 0, 0, 1 << 20, 1, 0).await.expect("fetch");
        let p = broker.fetch("p", 0, 0, 1 << 20, 1, 0).await.expect("fetch");
        // compression.type=zstd rewrote both batches; `producer` kept them.
        assert_eq!(codecs(&z.batches), vec![Compression::Zstd; 2]);
        assert_eq!(
            codecs(&p.batches),
            vec![Compression::None, Compression::Lz4]
        );
        assert_eq!(values(&z.batches), values(&p.batches));
        assert_eq!(values(&z.batches).len(), 21);
        broker.shutdown().await.expect("shutdown");
    });
}
