//! Black-box replication tests: three real `eddy` nodes on 127.0.0.1 with a
//! Raft metadata quorum, killed (`kill -9`), paused (SIGSTOP/SIGCONT) and
//! restarted, checked with the real client.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_client::protocol::CommitOffset;
use eddy_client::protocol::{Acks, ConfigChange, ErrorCode, NO_LEADER, Response};
use eddy_client::{
    Client, ClientOptions, Consumer, ConsumerConfig, JoinRequest, Producer, ProducerConfig,
    ProducerRecord,
};
use eddy_core::batch::{BatchIter, Compression};
use eddy_core::config::LogConfig;
use eddy_core::log::PartitionLog;
use eddy_core::storage::FsStorage;
use eddy_tests::{TestCluster, eddy_bin, process_cpu_time, wait_until};

/// Most time any wait below takes.
const WAIT: Duration = Duration::from_secs(60);
/// Timeouts that keep failover quick in tests.
const FAST: &[&str] = &[
    "--broker-session-timeout-ms",
    "1500",
    "--broker-heartbeat-interval-ms",
    "200",
    "--replica-lag-time-max-ms",
    "2000",
    "--leader-imbalance-check-interval-seconds",
    "3600",
];

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn producer(client: &Client) -> Producer {
    Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            // No retries: an acknowledged record was sent exactly once, so it
            // must be read back exactly once.
            retries: 0,
            linger_ms: 0,
            max_in_flight_requests_per_connection: 1,
            request_timeout_ms: 5000,
            delivery_timeout_ms: 10_000,
            ..ProducerConfig::default()
        },
    )
    .expect("producer")
}

async fn leader(client: &Client, topic: &str, partition: u32) -> Option<u32> {
    let metadata = client.metadata(Some(vec![topic.to_owned()])).await.ok()?;
    let t = metadata.topics.into_iter().find(|t| t.name == topic)?;
    t.partitions
        .into_iter()
        .find(|(p, _)| *p == partition)
        .map(|(_, l)| l)
        .filter(|l| *l != NO_LEADER)
}

async fn isr(client: &Client, topic: &str, partition: u32) -> Option<Vec<u32>> {
    let d = client.describe_topic(topic).await.ok()?;
    d.partitions
        .into_iter()
        .find(|p| p.partition == partition)
        .map(|p| p.isr)
}

/// Reads every record of `topic`-0 up to its high watermark (through any
/// live node), as (offset, value).
async fn read_all(client: &Client, topic: &str) -> Vec<(u64, Vec<u8>)> {
    let deadline = Instant::now() + WAIT;
    let hw = loop {
        if let Ok(c) = client.for_partition(topic, 0).await {
            match c
                .list_offsets(topic, 0, eddy_client::protocol::OffsetSpec::Latest)
                .await
            {
                Ok(o) => break o.offset.unwrap_or(0),
                Err(_) => client.forget_leader(topic, 0),
            }
        }
        assert!(Instant::now() < deadline, "no leader to read {topic} from");
        smol::Timer::after(Duration::from_millis(100)).await;
    };
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
    consumer.assign(vec![(topic.to_owned(), 0)]);
    let mut out = Vec::new();
    while (out.len() as u64) < hw && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)).await {
            Ok(records) => out.extend(
                records
                    .into_iter()
                    .map(|r| (r.offset, r.value.unwrap_or_default())),
            ),
            Err(e) if e.is_retriable() => {
                smol::Timer::after(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("consume {topic}: {e}"),
        }
    }
    assert_eq!(
        out.len() as u64,
        hw,
        "read {topic} up to its high watermark"
    );
    out
}

/// The record batches of a stopped node's copy of `topic`-0 below `upto`.
fn replica_bytes(data_dir: &Path, topic: &str, upto: u64) -> Vec<u8> {
    let dir = data_dir.join(format!("{topic}-0"));
    let log = PartitionLog::open(Arc::new(FsStorage), &dir, LogConfig::default(), 0)
        .expect("open a replica");
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < upto {
        let Some(slice) = log.read(offset, 1 << 20, upto).expect("read") else {
            break;
        };
        let bytes = slice.read_to_vec().expect("read bytes");
        for batch in BatchIter::new(&bytes) {
            let batch = batch.expect("valid batch");
            if batch.header.base_offset < upto {
                out.extend_from_slice(batch.bytes);
            }
        }
        offset = slice.next_offset;
    }
    out
}

fn values(records: &[(u64, Vec<u8>)]) -> Vec<String> {
    records
        .iter()
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Asserts every acknowledged value appears exactly once, in the order it
/// was acknowledged.
fn assert_acked_once_in_order(acked: &[String], read: &[String], context: &str) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for v in read {
        *seen.entry(v.as_str()).or_default() += 1;
    }
    for v in acked {
        assert_eq!(
            seen.get(v.as_str()).copied().unwrap_or(0),
            1,
            "{context}: acknowledged record {v} must be read back exactly once"
        );
    }
    let acked_set: BTreeSet<&str> = acked.iter().map(String::as_str).collect();
    let order: Vec<&str> = read
        .iter()
        .map(String::as_str)
        .filter(|v| acked_set.contains(v))
        .collect();
    let expected: Vec<&str> = acked.iter().map(String::as_str).collect();
    assert_eq!(
        order, expected,
        "{context}: acknowledged records out of order"
    );
}

fn create(client: &Client, topic: &str, rf: u16, configs: &[(&str, &str)]) {
    smol::block_on(async {
        let configs = configs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        client
            .create_topic(topic, 1, rf, configs)
            .await
            .expect("create topic");
    });
}

fn wait_leader(cluster: &TestCluster, topic: &str, not: Option<u32>) -> u32 {
    let mut found = None;
    let ok = wait_until(WAIT, || {
        found = smol::block_on(async {
            let c = cluster.any_client();
            let l = leader(&c, topic, 0).await;
            c.close().await;
            l
        })
        .filter(|l| Some(*l) != not && cluster.is_up(*l as usize));
        found.is_some()
    });
    assert!(ok, "no leader for {topic}:\n{}", cluster.logs());
    found.unwrap_or(NO_LEADER)
}

fn wait_isr(cluster: &TestCluster, topic: &str, want: impl Fn(&[u32]) -> bool, what: &str) {
    // Every running node must see it: a node just resumed from SIGSTOP
    // answers from its stale metadata until it has caught up.
    let ok = wait_until(WAIT, || {
        smol::block_on(async {
            let mut all = true;
            for i in (0..cluster.nodes.len()).filter(|i| cluster.is_up(*i)) {
                let c = cluster.client(i);
                let found = isr(&c, topic, 0).await;
                c.close().await;
                all &= found.is_some_and(|isr| want(&isr));
            }
            all
        })
    });
    assert!(ok, "{what}:\n{}", cluster.logs());
}

/// Creates `topic` with one partition on all three nodes (with `configs`)
/// and waits until it has a leader and a full ISR; returns the leader.
fn create_on_three(
    cluster: &TestCluster,
    client: &Client,
    topic: &str,
    configs: &[(&str, &str)],
) -> u32 {
    create(client, topic, 3, configs);
    let leader = wait_leader(cluster, topic, None);
    wait_isr(cluster, topic, |isr| isr.len() == 3, "full ISR");
    leader
}

#[test]
fn leader_kill9_during_acks_all_loses_no_acknowledged_record() {
    let dir = tmp();
    let mut cluster = TestCluster::start(dir.path(), 3, FAST);
    cluster.wait_ready(3);
    let client = cluster.any_client();
    let old = create_on_three(&cluster, &client, "orders", &[("min.insync.replicas", "2")]);

    // Produce through a client bootstrapped at a node that survives.
    let survivor = (0..3).find(|i| *i != old as usize).unwrap_or(0);
    let client = cluster.client(survivor);
    let p = producer(&client);
    let mut acked = Vec::new();
    let mut failed = 0u32;
    let mut killed_at = None;
    let mut failover = None;
    smol::block_on(async {
        let deadline = Instant::now() + WAIT;
        let mut i = 0u32;
        while acked.len() < 600 && Instant::now() < deadline {
            let value = format!("r{i:06}");
            i += 1;
            let result = match p.send(ProducerRecord::new("orders", value.clone())).await {
                Ok(f) => f.await,
                Err(e) => Err(e),
            };
            match result {
                Ok(_) => {
                    if let Some(at) = killed_at
                        && failover.is_none()
                    {
                        failover = Some(Instant::now().duration_since(at));
                    }
                    acked.push(value);
                }
                Err(_) => {
                    failed += 1;
                    smol::Timer::after(Duration::from_millis(20)).await;
                }
            }
            if acked.len() == 200 && killed_at.is_none() {
                cluster.kill9(old as usize);
                killed_at = Some(Instant::now());
            }
        }
    });
    assert_eq!(acked.len(), 600, "production stalled:\n{}", cluster.logs());
    let new = wait_leader(&cluster, "orders", Some(old));
    println!(
        "leader {old} killed: node {new} leads; first acknowledged write after {:?}; {failed} \
         send(s) failed meanwhile",
        failover
    );
    let read = smol::block_on(read_all(&client, "orders"));
    assert_acked_once_in_order(&acked, &values(&read), "after leader kill -9");
    smol::block_on(p.close());
}

#[test]
fn a_stopped_follower_leaves_the_isr_truncates_by_epoch_and_rejoins() {
    let dir = tmp();
    let mut cluster = TestCluster::start(dir.path(), 3, FAST);
    cluster.wait_ready(3);
    let client = cluster.any_client();
    let leader0 = create_on_three(&cluster, &client, "t", &[("min.insync.replicas", "1")]) as usize;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader0).collect();
    let (a, b) = (others[0], others[1]);

    // 1. A paused follower leaves the ISR, and rejoins after SIGCONT.
    let p = producer(&cluster.client(a));
    cluster.pause(b);
    smol::block_on(async {
        for i in 0..50 {
            p.send_and_wait(ProducerRecord::new("t", format!("before-{i}")))
                .await
                .expect("acks=all with min.insync.replicas=1");
        }
    });
    wait_isr(
        &cluster,
        "t",
        |isr| !isr.contains(&(b as u32)),
        "paused follower leaves the ISR",
    );
    cluster.resume(b);
    wait_isr(
        &cluster,
        "t",
        |isr| isr.contains(&(b as u32)),
        "resumed follower rejoins",
    );

    // 2. Divergence: the leader appends records (acks=1) that no follower
    // gets, then pauses; the others elect a new leader that takes other
    // records at the same offsets. The old leader must truncate its own by
    // leader epoch when it returns.
    let to_old = Producer::new(
        cluster.client(leader0),
        ProducerConfig {
            acks: Acks::Leader,
            retries: 0,
            linger_ms: 0,
            ..ProducerConfig::default()
        },
    )
    .expect("producer");
    smol::block_on(async {
        // Route to the current leader first, then cut its followers off.
        to_old
            .send_and_wait(ProducerRecord::new("t", "replicated"))
            .await
            .expect("acks=1");
    });
    cluster.pause(a);
    cluster.pause(b);
    // Fetches the followers had waiting at the leader expire (answered into
    // paused processes) before the divergent appends: six times their
    // 500 ms wait, as a loaded machine may run the leader's timer late (a
    // fetch still waiting would carry the divergent records to a follower).
    std::thread::sleep(Duration::from_millis(3000));
    smol::block_on(async {
        for i in 0..20 {
            to_old
                .send_and_wait(ProducerRecord::new("t", format!("divergent-{i}")))
                .await
                .expect("acks=1 on the isolated leader");
        }
    });
    cluster.pause(leader0);
    cluster.resume(a);
    cluster.resume(b);
    let new = wait_leader(&cluster, "t", Some(leader0 as u32));
    let p = producer(&cluster.client(a));
    let mut acked = Vec::new();
    smol::block_on(async {
        let deadline = Instant::now() + WAIT;
        while acked.len() < 30 && Instant::now() < deadline {
            let v = format!("after-{}", acked.len());
            match p.send_and_wait(ProducerRecord::new("t", v.clone())).await {
                Ok(_) => acked.push(v),
                Err(_) => {
                    smol::Timer::after(Duration::from_millis(50)).await;
                }
            }
        }
    });
    assert_eq!(
        acked.len(),
        30,
        "new leader {new} takes writes:\n{}",
        cluster.logs()
    );
    cluster.resume(leader0);
    // Ask the new leader, not the old one: right after SIGCONT the old
    // leader still answers from its stale metadata.
    let old_log = || {
        cluster.nodes[leader0]
            .as_ref()
            .map(|n| n.process.stderr())
            .unwrap_or_default()
    };
    let truncated = wait_until(WAIT, || old_log().contains("truncating from"));
    assert!(
        truncated,
        "the old leader (node {leader0}) truncated by leader epoch:\n{}",
        cluster.logs()
    );
    let rejoined = wait_until(WAIT, || {
        smol::block_on(async {
            let c = cluster.client(new as usize);
            let found = isr(&c, "t", 0).await;
            c.close().await;
            found.is_some_and(|isr| isr.len() == 3)
        })
    });
    assert!(
        rejoined,
        "the old leader catches up and rejoins the ISR:\n{}",
        cluster.logs()
    );
    let read = values(&smol::block_on(read_all(&cluster.client(a), "t")));
    assert!(
        !read.iter().any(|v| v.starts_with("divergent-")),
        "divergent records are gone"
    );
    assert_acked_once_in_order(&acked, &read, "after the new leader");

    // 3. Every replica holds the same bytes up to the high watermark.
    let hw = smol::block_on(async {
        let c = cluster
            .client(a)
            .for_partition("t", 0)
            .await
            .expect("leader");
        c.list_offsets("t", 0, eddy_client::protocol::OffsetSpec::Latest)
            .await
            .expect("hw")
            .offset
            .unwrap_or(0)
    });
    wait_until(WAIT, || {
        smol::block_on(async {
            let mut all = true;
            for i in 0..3 {
                let d = cluster.client(i).describe_topic("t").await;
                all &= d.is_ok_and(|d| d.partitions[0].log_end_offset >= hw);
            }
            all
        })
    });
    for i in 0..3 {
        cluster.stop(i);
    }
    let first = replica_bytes(&cluster.data_dir(0), "t", hw);
    assert!(!first.is_empty());
    for i in 1..3 {
        assert!(
            replica_bytes(&cluster.data_dir(i), "t", hw) == first,
            "replica {i} differs below the high watermark {hw}"
        );
    }
}

#[test]
fn unclean_election_off_keeps_the_partition_offline_on_turns_it_back() {
    let dir = tmp();
    let mut cluster = TestCluster::start(dir.path(), 3, FAST);
    cluster.wait_ready(3);
    let client = cluster.any_client();
    // Two replicas on a three-node cluster, so the third keeps the quorum.
    create(
        &client,
        "u",
        2,
        &[
            ("min.insync.replicas", "1"),
            ("unclean.leader.election.enable", "false"),
        ],
    );
    let x = wait_leader(&cluster, "u", None) as usize;
    wait_isr(&cluster, "u", |isr| isr.len() == 2, "full ISR");
    let replicas = smol::block_on(client.describe_topic("u"))
        .expect("describe")
        .partitions[0]
        .replicas
        .clone();
    let y = replicas
        .iter()
        .map(|r| *r as usize)
        .find(|r| *r != x)
        .unwrap_or(0);
    let z = (0..3).find(|i| *i != x && *i != y).unwrap_or(0);

    // The follower dies; the leader alone is the ISR and takes writes.
    cluster.kill9(y);
    wait_isr(
        &cluster,
        "u",
        |isr| isr == [x as u32],
        "ISR shrinks to the leader",
    );
    let p = producer(&cluster.client(z));
    smol::block_on(async {
        for i in 0..10 {
            p.send_and_wait(ProducerRecord::new("u", format!("only-on-leader-{i}")))
                .await
                .expect("produce");
        }
    });
    // The whole ISR dies; the stale replica comes back.
    cluster.kill9(x);
    cluster.start_node(y);
    cluster.wait_ready(2);
    let client = cluster.client(z);
    // Offline: once the dead leader is fenced there is no leader, and it
    // stays so (several seconds), with reads and writes refused.
    let fenced = wait_until(WAIT, || smol::block_on(leader(&client, "u", 0)).is_none());
    assert!(fenced, "the dead leader is fenced:\n{}", cluster.logs());
    let offline_since = Instant::now();
    while offline_since.elapsed() < Duration::from_secs(5) {
        assert_eq!(
            smol::block_on(leader(&client, "u", 0)),
            None,
            "stays offline"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let refused = smol::block_on(async {
        let c = cluster.client(y);
        let result = c
            .list_offsets("u", 0, eddy_client::protocol::OffsetSpec::Latest)
            .await;
        result.err().and_then(|e| e.code())
    });
    assert!(
        matches!(
            refused,
            Some(ErrorCode::LeaderNotAvailable | ErrorCode::NotLeaderOrFollower)
        ),
        "{refused:?}"
    );
    // Unclean election on: the stale replica leads, the partition is back.
    smol::block_on(client.alter_configs(
        "u",
        vec![ConfigChange::Set(
            "unclean.leader.election.enable".into(),
            "true".into(),
        )],
    ))
    .expect("alter");
    let back = wait_leader(&cluster, "u", None);
    assert_eq!(back as usize, y);
    // The producer still knows the dead leader: the first attempts fail
    // and make it look the leader up again.
    let sent = smol::block_on(async {
        for _ in 0..50 {
            if p.send_and_wait(ProducerRecord::new("u", "after-unclean"))
                .await
                .is_ok()
            {
                return true;
            }
            smol::Timer::after(Duration::from_millis(200)).await;
        }
        false
    });
    assert!(sent, "produce after unclean election:\n{}", cluster.logs());
    let read = values(&smol::block_on(read_all(&client, "u")));
    assert!(read.contains(&"after-unclean".to_owned()));
    assert!(
        !read.iter().any(|v| v.starts_with("only-on-leader-")),
        "records only the dead ISR had are lost (the price of unclean election)"
    );
}

/// One `acks=1` record sent straight to `client`'s node (no routing):
/// whether that node acknowledged it, and the error code if not.
async fn produce_here(client: &Client, topic: &str, value: &str) -> Result<(), Option<ErrorCode>> {
    match eddy_tests::raw_produce(client, topic, Some(0), &[(None, value)], Compression::None).await
    {
        Ok(Response::Produce { .. }) => Ok(()),
        Ok(_) => Err(None),
        Err(e) => Err(e.code()),
    }
}

#[test]
fn a_restarted_node_takes_no_writes_before_it_has_caught_up_with_the_metadata() {
    let dir = tmp();
    let mut cluster = TestCluster::start(dir.path(), 3, FAST);
    cluster.wait_ready(3);
    let client = cluster.any_client();
    let old = create_on_three(&cluster, &client, "t", &[("min.insync.replicas", "1")]) as usize;
    smol::block_on(client.close());

    // The leader dies; the cluster fences it and elects another. Its own
    // metadata still says it leads.
    cluster.kill9(old);
    let new = wait_leader(&cluster, "t", Some(old as u32)) as usize;
    wait_isr(
        &cluster,
        "t",
        |isr| !isr.contains(&(old as u32)),
        "the dead leader out of the ISR",
    );
    let survivor = cluster.client(new);
    let mut acked = Vec::new();
    smol::block_on(async {
        for i in 0..20 {
            let value = format!("before{i:03}");
            if produce_here(&survivor, "t", &value).await.is_ok() {
                acked.push(value);
            }
        }
    });
    assert_eq!(
        acked.len(),
        20,
        "the new leader takes writes:\n{}",
        cluster.logs()
    );

    // Back, the old leader is asked at once, many times, to take writes
    // for the partition it led: until it has caught up with the metadata
    // it must refuse them (it no longer leads), or take them only once
    // the cluster has made it leader again.
    cluster.start_node(old);
    // Meanwhile an `eddy` command asks it too: it waits until the node
    // serves clients, then answers.
    let cli = std::process::Command::new(eddy_bin())
        .args(["cluster", "status", "--server"])
        .arg(cluster.addr(old).to_string())
        .arg("--ca")
        .arg(cluster.ca_file())
        .args(["--server-name", "127.0.0.1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run eddy cluster status");
    let stale = cluster.client(old);
    let mut refused: BTreeMap<String, u32> = BTreeMap::new();
    smol::block_on(async {
        let until = Instant::now() + Duration::from_secs(3);
        let mut i = 0u32;
        while Instant::now() < until {
            let value = format!("restart{i:04}");
            i += 1;
            match produce_here(&stale, "t", &value).await {
                Ok(()) => acked.push(value),
                Err(code) => *refused.entry(format!("{code:?}")).or_default() += 1,
            }
            smol::Timer::after(Duration::from_millis(5)).await;
        }
    });
    println!(
        "restarted node {old}: {} write(s) acknowledged, refused: {refused:?}",
        acked.len() - 20
    );
    // The command exits by itself: it waits at most 30 s, then reports the
    // refusal.
    let status = cli.wait_with_output().expect("eddy cluster status");
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && stdout.contains("yes"),
        "`eddy cluster status` at the restarted node names the controller once it has \
         caught up:\n{stdout}\n{}",
        String::from_utf8_lossy(&status.stderr)
    );
    wait_isr(
        &cluster,
        "t",
        |isr| isr.len() == 3,
        "the restarted node back in the ISR",
    );
    let read = smol::block_on(read_all(&survivor, "t"));
    assert_acked_once_in_order(&acked, &values(&read), "after the old leader restarted");
    smol::block_on(async {
        stale.close().await;
        survivor.close().await;
    });
}

/// The index of the node `client` talks to.
fn node_of(cluster: &TestCluster, client: &Client) -> usize {
    let server = &client.options().server;
    (0..cluster.nodes.len())
        .find(|i| cluster.addr(*i).to_string() == *server)
        .expect("a node of the cluster")
}

#[test]
fn consumer_groups_have_one_coordinator_and_keep_their_offsets_when_it_dies() {
    let dir = tmp();
    let mut cluster = TestCluster::start(dir.path(), 3, FAST);
    cluster.wait_ready(3);
    let client = cluster.any_client();
    create(&client, "events", 3, &[("min.insync.replicas", "2")]);
    let join = |member_id: &str| JoinRequest {
        group: "g".into(),
        member_id: member_id.into(),
        client_id: "test".into(),
        topics: vec!["events".into()],
        strategies: vec!["range".into()],
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        owned: Vec::new(),
    };
    let commit = |offset: u64| {
        vec![CommitOffset {
            topic: "events".into(),
            partition: 0,
            offset,
            metadata: String::new(),
        }]
    };
    let committed = |c: &Client| {
        smol::block_on(c.fetch_offsets("g", None))
            .ok()
            .and_then(|o| o.first().map(|o| o.offset))
    };

    // A member that joins through node 0 is in the one group every node
    // routes to: node 1 and node 2 describe it, and a commit through node 1
    // is what node 2 reads.
    let (c0, c1, c2) = (cluster.client(0), cluster.client(1), cluster.client(2));
    let joined = smol::block_on(c0.join_group(join(""))).expect("join through node 0");
    assert_eq!(joined.assignment, vec![("events".to_owned(), 0)]);
    for c in [&c1, &c2] {
        let d = smol::block_on(c.describe_group("g")).expect("describe");
        assert_eq!(d.members.len(), 1, "{d:?}");
        assert_eq!(d.members[0].member_id, joined.member_id);
    }
    smol::block_on(c1.commit_offsets("g", &joined.member_id, joined.generation, commit(42)))
        .expect("commit through node 1");
    assert_eq!(committed(&c2), Some(42));
    let listed = smol::block_on(c2.list_groups()).expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");

    // Clients may read the offsets topic but not write or delete it.
    let refused = smol::block_on(c0.delete_topic("__consumer_offsets"));
    assert!(
        matches!(&refused, Err(eddy_client::ClientError::Server(b)) if b.code == ErrorCode::InvalidTopic),
        "{refused:?}"
    );

    // kill -9 of the coordinator: another replica of __consumer_offsets-0
    // takes over with the committed offset; the member re-joins there.
    let coordinator = smol::block_on(c0.coordinator("g")).expect("coordinator");
    let dead = node_of(&cluster, &coordinator);
    let killed = Instant::now();
    cluster.kill9(dead);
    let survivor = (0..3).find(|i| *i != dead).expect("a survivor");
    let c = cluster.client(survivor);
    let mut found = None;
    let ok = wait_until(WAIT, || {
        found = committed(&c);
        found.is_some()
    });
    assert!(
        ok,
        "no offsets after the coordinator died:\n{}",
        cluster.logs()
    );
    assert_eq!(found, Some(42), "the committed offset survived");
    println!(
        "committed offsets readable {:.2} s after kill -9 of the coordinator",
        killed.elapsed().as_secs_f64()
    );
    let after = smol::block_on(c.heartbeat("g", &joined.member_id, joined.generation, 0));
    assert!(
        matches!(&after, Err(eddy_client::ClientError::Server(b)) if b.code == ErrorCode::UnknownMemberId),
        "the new coordinator starts without members: {after:?}"
    );
    let rejoined = smol::block_on(c.join_group(join(""))).expect("re-join");
    smol::block_on(c.commit_offsets("g", &rejoined.member_id, rejoined.generation, commit(50)))
        .expect("commit on the new coordinator");
    // The old client (whose node died) finds the new coordinator too.
    let other = (0..3)
        .find(|i| *i != dead && *i != survivor)
        .expect("third node");
    let via_other = cluster.client(other);
    assert_eq!(committed(&via_other), Some(50));

    // The dead node comes back as a follower; the offsets stay where they are.
    cluster.start_node(dead);
    cluster.wait_ready(3);
    // (It may answer from what it knew before it died until it has caught
    // up with the controller.)
    let back = cluster.client(dead);
    let ok = wait_until(WAIT, || committed(&back) == Some(50));
    assert!(
        ok,
        "the restarted node routes to the coordinator:\n{}",
        cluster.logs()
    );
}

#[test]
fn a_subscribed_consumer_carries_on_from_its_commits_when_the_coordinator_dies() {
    let dir = tmp();
    let mut cluster = TestCluster::start(dir.path(), 3, FAST);
    cluster.wait_ready(3);
    let client = cluster.any_client();
    create(&client, "feed", 3, &[("min.insync.replicas", "2")]);
    let p = producer(&client);
    smol::block_on(async {
        for i in 0..60 {
            p.send_and_wait(ProducerRecord::new("feed", format!("r{i}")))
                .await
                .expect("produce");
        }
    });
    let coordinator = smol::block_on(client.coordinator("s")).expect("coordinator");
    let dead = node_of(&cluster, &coordinator);
    // The consumer talks to another node first; its group requests go to
    // the coordinator wherever it is.
    let home = (0..3).find(|i| *i != dead).expect("another node");
    let config = ConsumerConfig {
        group_id: Some("s".into()),
        session_timeout_ms: 10_000,
        heartbeat_interval_ms: 500,
        rebalance_timeout_ms: 10_000,
        fetch_max_wait_ms: 200,
        max_poll_records: 10,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(cluster.client(home), config).expect("consumer");
    consumer.subscribe(vec!["feed".into()]).expect("subscribe");
    let mut seen = Vec::new();
    let poll_until = |consumer: &mut Consumer, want: u64, seen: &mut Vec<u64>| {
        let deadline = Instant::now() + WAIT;
        while seen.iter().max().is_none_or(|m| *m + 1 < want) && Instant::now() < deadline {
            let records = smol::block_on(consumer.poll(Duration::from_millis(200)));
            if let Ok(records) = records {
                seen.extend(records.iter().map(|r| r.offset));
            }
        }
    };
    poll_until(&mut consumer, 30, &mut seen);
    smol::block_on(consumer.commit_sync()).expect("commit");
    let committed_before = seen.iter().max().map_or(0, |m| m + 1);
    assert!(committed_before >= 30, "read {seen:?}");

    cluster.kill9(dead);
    let mut after = Vec::new();
    poll_until(&mut consumer, 60, &mut after);
    // The new coordinator does not know the member: polling re-joins it
    // there (resuming at the last commit), and then everything is committed.
    let c = cluster.client(home);
    let ok = wait_until(WAIT, || {
        if let Ok(records) = smol::block_on(consumer.poll(Duration::from_millis(200))) {
            after.extend(records.iter().map(|r| r.offset));
        }
        smol::block_on(consumer.commit_sync()).is_ok()
            && smol::block_on(c.fetch_offsets("s", None))
                .is_ok_and(|o| o.first().is_some_and(|o| o.offset == 60))
    });
    assert!(ok, "no commit after the failover:\n{}", cluster.logs());
    // Every record once before the failover; afterwards at least the rest,
    // starting no earlier than the last commit (a re-join may re-read from it).
    let all: BTreeSet<u64> = seen.iter().chain(&after).copied().collect();
    assert_eq!(
        all,
        (0..60).collect::<BTreeSet<u64>>(),
        "{seen:?} then {after:?}"
    );
    assert!(
        after.iter().all(|o| *o >= committed_before),
        "re-read before the last commit ({committed_before}): {after:?}"
    );
}

/// A tiny deterministic generator (SplitMix64), so a seed replays the schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn randomized_faults_lose_no_acknowledged_record() {
    let seed = std::env::var("EDDY_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("fault schedule seed {seed} (replay with EDDY_FAULT_SEED={seed})");
    let result = std::panic::catch_unwind(|| fault_schedule(seed));
    if let Err(e) = result {
        eprintln!("FAILED with seed {seed}; replay with EDDY_FAULT_SEED={seed}");
        std::panic::resume_unwind(e);
    }
}

fn fault_schedule(seed: u64) {
    let mut rng = Rng(seed);
    let dir = tmp();
    let mut cluster = TestCluster::start(dir.path(), 3, FAST);
    cluster.wait_ready(3);
    let client = cluster.any_client();
    create_on_three(&cluster, &client, "chaos", &[("min.insync.replicas", "2")]);

    // Producers and a consumer run on their own threads, on clients
    // bootstrapped at different nodes, while the schedule runs.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let options: Vec<ClientOptions> = (0..3).map(|i| cluster.client_options(i)).collect();
    let producers: Vec<_> = (0..2)
        .map(|w| {
            let stop = stop.clone();
            let options = options[w].clone();
            std::thread::spawn(move || {
                smol::block_on(async {
                    let client = Client::new(options).expect("client");
                    let p = producer(&client);
                    let mut acked = Vec::new();
                    let mut i = 0u32;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let v = format!("w{w}-{i:06}");
                        i += 1;
                        let sent = match p.send(ProducerRecord::new("chaos", v.clone())).await {
                            Ok(f) => f.await,
                            Err(e) => Err(e),
                        };
                        match sent {
                            Ok(_) => acked.push(v),
                            Err(_) => {
                                smol::Timer::after(Duration::from_millis(50)).await;
                            }
                        }
                    }
                    p.close().await;
                    acked
                })
            })
        })
        .collect();
    let consumer = {
        let stop = stop.clone();
        let options = options[2].clone();
        std::thread::spawn(move || {
            smol::block_on(async {
                let client = Client::new(options).expect("client");
                let mut c = Consumer::new(client, ConsumerConfig::default()).expect("consumer");
                c.assign(vec![("chaos".to_owned(), 0)]);
                let mut seen = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(records) = c.poll(Duration::from_millis(200)).await {
                        seen += records.len();
                    }
                }
                seen
            })
        })
    };

    // The schedule: at most one node down or paused at a time (so the
    // quorum and min.insync.replicas=2 can hold), ~40 s.
    let schedule_end = Instant::now() + Duration::from_secs(40);
    while Instant::now() < schedule_end {
        let victim = rng.below(3) as usize;
        let action = rng.below(3);
        let hold = Duration::from_millis(500 + rng.below(2500));
        match action {
            0 => {
                println!("kill -9 node {victim}, restart after {hold:?}");
                cluster.kill9(victim);
                std::thread::sleep(hold);
                cluster.start_node(victim);
            }
            1 => {
                println!("SIGSTOP node {victim} for {hold:?}");
                cluster.pause(victim);
                std::thread::sleep(hold);
                cluster.resume(victim);
            }
            _ => {
                println!("SIGTERM node {victim}, restart after {hold:?}");
                cluster.stop(victim);
                std::thread::sleep(hold);
                cluster.start_node(victim);
            }
        }
        // Let the cluster settle a little between faults.
        std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
    }
    cluster.wait_ready(3);
    wait_isr(&cluster, "chaos", |isr| isr.len() == 3, "ISR heals");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked: Vec<Vec<String>> = producers
        .into_iter()
        .map(|h| h.join().expect("producer thread"))
        .collect();
    let consumed = consumer.join().expect("consumer thread");
    let read = values(&smol::block_on(read_all(&cluster.any_client(), "chaos")));
    for (w, acked) in acked.iter().enumerate() {
        assert!(!acked.is_empty(), "producer {w} got acknowledgements");
        assert_acked_once_in_order(acked, &read, &format!("seed {seed}, producer {w}"));
    }
    println!(
        "seed {seed}: {} + {} acknowledged, {} read, consumer saw {consumed}",
        acked[0].len(),
        acked[1].len(),
        read.len()
    );
    // Identical replicas up to the high watermark.
    let hw = read.len() as u64;
    wait_until(WAIT, || {
        smol::block_on(async {
            let mut all = true;
            for i in 0..3 {
                let d = cluster.client(i).describe_topic("chaos").await;
                all &= d.is_ok_and(|d| d.partitions[0].log_end_offset >= hw);
            }
            all
        })
    });
    for i in 0..3 {
        cluster.stop(i);
    }
    let first = replica_bytes(&cluster.data_dir(0), "chaos", hw);
    for i in 1..3 {
        assert!(
            replica_bytes(&cluster.data_dir(i), "chaos", hw) == first,
            "seed {seed}: replica {i} differs below the high watermark {hw}"
        );
    }
}

/// Produces `count` records of `size` bytes with `acks` to `topic`, as fast
/// as the producer batches them; returns records per second.
///
/// It waits with `futures_lite`'s `block_on` (as `eddy bench` does), not
/// `smol::block_on`: a test thread holding async-io's reactor would make the
/// client's thread hand packets over to it, which slows the faster (RF=1)
/// side more and flatters the ratio.
fn throughput(client: &Client, topic: &str, acks: Acks, count: u32, size: usize) -> f64 {
    smol::future::block_on(async {
        let p = Producer::new(
            client.clone(),
            ProducerConfig {
                acks,
                linger_ms: 5,
                ..ProducerConfig::default()
            },
        )
        .expect("producer");
        let value = vec![b'x'; size];
        let started = Instant::now();
        let mut pending = Vec::with_capacity(count as usize);
        for _ in 0..count {
            pending.push(
                p.send(ProducerRecord::new(topic, value.clone()))
                    .await
                    .expect("send"),
            );
        }
        for f in pending {
            f.await.expect("acknowledged");
        }
        let secs = started.elapsed().as_secs_f64();
        p.close().await;
        f64::from(count) / secs
    })
}

/// CPU time used by each node and by this process (the client) during
/// measured runs, from `/proc`.
#[derive(Default)]
struct CpuUse {
    nodes: [Duration; 3],
    client: Duration,
    /// A reading failed (no `/proc`, or a node was not running).
    missing: bool,
}

impl CpuUse {
    /// Runs `f`, adding the CPU each process used meanwhile.
    fn during<T>(&mut self, cluster: &TestCluster, f: impl FnOnce() -> T) -> T {
        let read = || {
            let nodes: Option<Vec<Duration>> = (0..3)
                .map(|i| {
                    let node = cluster.nodes[i].as_ref()?;
                    process_cpu_time(node.process.id())
                })
                .collect();
            Some((nodes?, process_cpu_time(std::process::id())?))
        };
        let before = read();
        let out = f();
        let after = read();
        self.missing |= before.is_none() || after.is_none();
        if let (Some((b, bc)), Some((a, ac))) = (before, after) {
            for i in 0..3 {
                self.nodes[i] += a[i].saturating_sub(b[i]);
            }
            self.client += ac.saturating_sub(bc);
        }
        out
    }

    /// Microseconds of CPU per record, the partition's leader apart.
    fn per_record(&self, records: u32, leader: Option<u32>) -> Option<CpuPerRecord> {
        let leader = usize::try_from(leader?).ok().filter(|l| *l < 3)?;
        if self.missing || records == 0 {
            return None;
        }
        let us = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(records);
        Some(CpuPerRecord {
            leader_id: leader,
            leader: us(self.nodes[leader]),
            others: (0..3)
                .filter(|i| *i != leader)
                .map(|i| us(self.nodes[i]))
                .collect(),
            client: us(self.client),
        })
    }
}

/// CPU per record in microseconds.
struct CpuPerRecord {
    leader_id: usize,
    leader: f64,
    others: Vec<f64>,
    client: f64,
}

impl CpuPerRecord {
    fn total(&self) -> f64 {
        self.leader + self.others.iter().sum::<f64>() + self.client
    }
}

impl std::fmt::Display for CpuPerRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let others: Vec<String> = self.others.iter().map(|o| format!("{o:.2}")).collect();
        write!(
            f,
            "leader (node {}) {:.2} µs, other nodes {} µs, client {:.2} µs, total {:.2} µs",
            self.leader_id,
            self.leader,
            others.join(" + "),
            self.client,
            self.total()
        )
    }
}

/// Benchmark (run with `--ignored`): produce throughput with RF=3
/// `acks=all` against RF=1 `acks=1` in the same run, and the failover time
/// after `kill -9` of a leader, with the node's and the client's default
/// timeouts: when the new leader is in the metadata, and when a producer that
/// was talking to the old leader has its next `acks=all` record acknowledged.
/// On a shared machine compare the ratio, not the absolute numbers. The CPU
/// each node and the client used per record in the same runs (from `/proc`)
/// is printed too: with every node on one machine, RF=3's followers take their
/// CPU from the same cores as the leader and the client.
#[test]
#[ignore = "benchmark: cargo test -p eddy-tests --test replication -- --ignored bench"]
fn bench_replication_throughput_and_failover() {
    let dir = tmp();
    let mut cluster = TestCluster::start(dir.path(), 3, &[]);
    cluster.wait_ready(3);
    let client = cluster.any_client();
    create(&client, "rf1", 1, &[]);
    create_on_three(&cluster, &client, "rf3", &[("min.insync.replicas", "2")]);
    let (count, size) = (50_000, 256);
    // Warm up both paths once, then measure alternately.
    throughput(&client, "rf1", Acks::Leader, 2000, size);
    throughput(&client, "rf3", Acks::All, 2000, size);
    let (mut rf1, mut rf3) = (0.0, 0.0);
    let (mut cpu1, mut cpu3) = (CpuUse::default(), CpuUse::default());
    for _ in 0..3 {
        rf1 += cpu1.during(&cluster, || {
            throughput(&client, "rf1", Acks::Leader, count, size)
        }) / 3.0;
        rf3 += cpu3.during(&cluster, || {
            throughput(&client, "rf3", Acks::All, count, size)
        }) / 3.0;
    }
    println!(
        "produce {count} x {size} B (mean of 3 alternating runs): RF=1 acks=1 {rf1:.0} rec/s, \
         RF=3 acks=all {rf3:.0} rec/s, ratio {:.2}",
        rf3 / rf1
    );
    let leader1 = smol::block_on(leader(&client, "rf1", 0));
    let leader3 = smol::block_on(leader(&client, "rf3", 0));
    match (
        cpu1.per_record(3 * count, leader1),
        cpu3.per_record(3 * count, leader3),
    ) {
        (Some(one), Some(three)) => {
            println!("CPU per record, same runs: RF=1 acks=1: {one}; RF=3 acks=all: {three}");
            println!(
                "records per CPU second, RF=3 acks=all against RF=1 acks=1: {:.2} for the \
                 nodes and the client together, {:.2} for the leader alone",
                one.total() / three.total(),
                one.leader / three.leader
            );
        }
        _ => println!("CPU per record: not available (needs /proc)"),
    }

    // Failover twice: a leader that is not the controller, then one that
    // is (a metadata quorum election first). Killed nodes come back between.
    for (topic, kill_controller) in [("fo1", false), ("fo2", true)] {
        failover(&mut cluster, topic, kill_controller);
    }
}

/// Kills (`kill -9`) the leader of a fresh RF=3 topic, chosen so it is (or
/// is not) also the controller, and prints when the new leader is in the
/// metadata and when a producer that was talking to the old leader has its
/// next `acks=all` record acknowledged. Restarts the killed node afterwards.
fn failover(cluster: &mut TestCluster, topic: &str, kill_controller: bool) {
    let client = cluster.any_client();
    let status = || {
        smol::block_on(client.cluster_status())
            .ok()
            .and_then(|(controller, _)| controller)
    };
    let mut controller = None;
    assert!(
        wait_until(WAIT, || {
            controller = status();
            controller.is_some()
        }),
        "no controller:\n{}",
        cluster.logs()
    );
    let controller = controller.unwrap_or_default();
    // Three partitions: their leaders are spread over the nodes, so one of
    // them is led by the controller and another is not.
    smol::block_on(client.create_topic(
        topic,
        3,
        3,
        vec![("min.insync.replicas".to_owned(), "2".to_owned())],
    ))
    .expect("create topic");
    let mut chosen = None;
    let ok = wait_until(WAIT, || {
        chosen = (0..3u32).find_map(|p| {
            let l = smol::block_on(leader(&client, topic, p))?;
            let full = smol::block_on(isr(&client, topic, p)).is_some_and(|i| i.len() == 3);
            (full && (l == controller) == kill_controller).then_some((p, l))
        });
        chosen.is_some()
    });
    assert!(ok, "no partition of {topic} fits:\n{}", cluster.logs());
    let (partition, old) = chosen.unwrap_or_default();
    let survivor = (0..3).find(|i| *i != old as usize).unwrap_or(0);
    let observer = cluster.client(survivor);
    // A producer whose connection to the old leader is open when it dies.
    let producer = Producer::new(
        cluster.client(survivor),
        ProducerConfig {
            acks: Acks::All,
            linger_ms: 0,
            ..ProducerConfig::default()
        },
    )
    .expect("producer");
    let owned = topic.to_owned();
    let record =
        move || ProducerRecord::new(owned.clone(), b"failover".to_vec()).with_partition(partition);
    let first = record.clone();
    smol::block_on(async { producer.send(first()).await.expect("send").await })
        .expect("acknowledged before the kill");
    cluster.kill9(old as usize);
    let killed = Instant::now();
    let produced = std::thread::spawn(move || {
        let acked = smol::block_on(async { producer.send(record()).await?.await });
        (acked.map(|_| killed.elapsed()), producer)
    });
    let mut elected = None;
    let ok = wait_until(WAIT, || {
        let l = smol::block_on(leader(&observer, topic, partition));
        if l.is_some_and(|l| l != old) {
            elected = Some(killed.elapsed());
            true
        } else {
            false
        }
    });
    assert!(ok, "no new leader:\n{}", cluster.logs());
    let (acked, producer) = produced.join().expect("producer thread");
    let acked = acked.unwrap_or_else(|e| panic!("not acknowledged after failover: {e}"));
    smol::block_on(producer.close());
    println!(
        "failover after kill -9 of leader {old} ({}; default timeouts): new leader in the \
         metadata after {:?}, next acks=all record acknowledged after {acked:?}",
        if kill_controller {
            "also the controller"
        } else {
            "not the controller"
        },
        elected.unwrap_or_default()
    );
    cluster.start_node(old as usize);
    cluster.wait_ready(3);
}

/// The requests reserved to nodes (Raft, broker heartbeats, replica fetches,
/// leader-epoch lookups) need a node certificate of the cluster's CA: the
/// nodes present theirs to each other (the ISR fills, so replica fetches
/// pass), a client without one is refused with CLUSTER_AUTHORIZATION_FAILED
/// and changes nothing, and one with a node's certificate is served.
#[test]
fn node_only_requests_need_a_node_certificate() {
    use eddy_client::ClientCert;
    use eddy_client::protocol::{PROTOCOL_VERSION, Request, RequestHeader, Response};

    let dir = tmp();
    let cluster = TestCluster::start(dir.path(), 3, FAST);
    cluster.wait_ready(3);
    let client = cluster.any_client();
    create_on_three(&cluster, &client, "guarded", &[]);
    let acked = smol::block_on(async {
        let p = producer(&client);
        let f = p
            .send(ProducerRecord::new("guarded", b"v".to_vec()))
            .await
            .expect("send");
        let r = f.await.expect("acks=all with the full ISR");
        p.close().await;
        r
    });
    let leader = smol::block_on(leader(&client, "guarded", 0)).expect("a leader") as usize;

    let requests = || {
        [
            Request::Raft { from: 2 },
            Request::BrokerHeartbeat { node_id: 2 },
            Request::ReplicaFetch {
                topic: "guarded".to_owned(),
                partition: 0,
                replica_id: 2,
                leader_epoch: 0,
                offset: 0,
                max_bytes: 1024,
                max_wait_ms: 0,
            },
            Request::OffsetForLeaderEpoch {
                topic: "guarded".to_owned(),
                partition: 0,
                current_leader_epoch: 0,
                epoch: 0,
            },
        ]
    };
    let send = |c: &Client, request: Request| {
        smol::block_on(c.request(
            RequestHeader {
                version: PROTOCOL_VERSION,
                request,
            },
            &[],
        ))
    };
    let plain = cluster.client(leader);
    for request in requests() {
        let name = request.name();
        let err = send(&plain, request).expect_err("refused without a node certificate");
        assert_eq!(
            err.code(),
            Some(ErrorCode::ClusterAuthorizationFailed),
            "{name}: {err}"
        );
    }
    // Nothing changed: the ISR is whole and the record is there once.
    wait_isr(&cluster, "guarded", |isr| isr.len() == 3, "full ISR after");
    assert_eq!(smol::block_on(read_all(&plain, "guarded")).len(), 1);
    assert_eq!(acked.offset, Some(0));
    smol::block_on(plain.close());

    // With a node's certificate a node-only request is served.
    let tls = cluster.data_dir((leader + 1) % 3).join("tls");
    let node = Client::new(ClientOptions {
        client_cert: Some(ClientCert {
            cert_file: tls.join("server.pem"),
            key_file: tls.join("server.key"),
        }),
        ..cluster.client_options(leader)
    })
    .expect("client with a node certificate");
    // The leader's current epoch: the last entry of its leader-epoch-checkpoint.
    let checkpoint = std::fs::read_to_string(
        cluster
            .data_dir(leader)
            .join("guarded-0")
            .join("leader-epoch-checkpoint"),
    )
    .expect("the leader's leader-epoch-checkpoint");
    let epoch: i32 = checkpoint
        .lines()
        .skip(2)
        .last()
        .and_then(|line| line.split_whitespace().next())
        .and_then(|e| e.parse().ok())
        .expect("an epoch entry");
    match send(
        &node,
        Request::OffsetForLeaderEpoch {
            topic: "guarded".to_owned(),
            partition: 0,
            current_leader_epoch: epoch,
            epoch,
        },
    ) {
        Ok((Response::OffsetForLeaderEpoch { found, .. }, _)) => {
            assert_eq!(
                found,
                Some((epoch, 1)),
                "the current epoch ends at the log end"
            )
        }
        other => panic!("OffsetForLeaderEpoch with a node certificate: {other:?}"),
    }
    smol::block_on(node.close());
}
