//! Black-box tests of consumer groups: real `eddy` nodes, members as separate
//! `eddy consume --group` processes (so one can be killed with SIGKILL) or as
//! in-process consumers on the real client.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eddy_client::protocol::{CommitOffset, ErrorCode};
use eddy_client::{
    Acks, AutoOffsetReset, Client, ConsumeError, Consumer, ConsumerConfig, JoinRequest, Producer,
    ProducerConfig, ProducerRecord, RebalanceListener,
};
use eddy_tests::{EddyProcess, Node, wait_until};

/// Most time any wait below takes.
const WAIT: Duration = Duration::from_secs(60);
/// Session timeout of the test members: short, so a killed member is noticed soon.
const SESSION_MS: u32 = 2000;
const HEARTBEAT_MS: u32 = 300;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Produces `count` records into `partition` of `topic` (values `p<P>-<i>`).
async fn produce(client: &Client, topic: &str, partition: u32, count: u32) {
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            linger_ms: 1,
            ..ProducerConfig::default()
        },
    )
    .expect("producer");
    let mut pending = Vec::new();
    for i in 0..count {
        let record =
            ProducerRecord::new(topic.to_owned(), format!("p{partition}-{i}").into_bytes())
                .with_partition(partition);
        pending.push(producer.send(record).await.expect("send"));
    }
    for f in pending {
        f.await.expect("acknowledged");
    }
    producer.close().await;
}

async fn produce_all(client: &Client, topic: &str, partitions: u32, per_partition: u32) {
    for p in 0..partitions {
        produce(client, topic, p, per_partition).await;
    }
}

/// A group member running as `eddy consume TOPIC --group G --format json`.
struct Member {
    process: EddyProcess,
    dir: PathBuf,
}

impl Member {
    fn start(
        node: &Node,
        root: &Path,
        name: &str,
        topic: &str,
        group: &str,
        extra: &[&str],
    ) -> Member {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("member dir");
        let mut args: Vec<String> = [
            "consume",
            topic,
            "--group",
            group,
            "--from-beginning",
            "--format",
            "json",
            "--server",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(node.addr.to_string());
        args.push("--ca".into());
        args.push(node.data_dir.join("tls/ca.pem").display().to_string());
        for (k, v) in [
            ("session.timeout.ms", SESSION_MS.to_string()),
            ("heartbeat.interval.ms", HEARTBEAT_MS.to_string()),
            ("max.poll.interval.ms", "20000".to_string()),
            ("client.id", name.to_string()),
        ] {
            args.push("--consumer-property".into());
            args.push(format!("{k}={v}"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = EddyProcess::start(&args, &dir).expect("start member");
        Member { process, dir }
    }

    /// (partition, offset) of every complete JSON line written so far.
    fn records(&self) -> Vec<(u32, u64)> {
        let out = std::fs::read_to_string(self.dir.join("eddy.stdout")).unwrap_or_default();
        out.lines().filter_map(parse_line).collect()
    }

    fn stop(mut self) -> String {
        self.process.signal(libc::SIGTERM).expect("SIGTERM");
        let status = self
            .process
            .wait_timeout(Duration::from_secs(30))
            .expect("wait");
        assert!(
            status.is_some_and(|s| s.success()),
            "member did not stop cleanly: {status:?}\n{}",
            self.process.stderr()
        );
        self.process.stderr()
    }
}

fn parse_line(line: &str) -> Option<(u32, u64)> {
    if !line.ends_with('}') {
        return None;
    }
    let number = |key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        let end = rest.find(|c: char| !c.is_ascii_digit())?;
        rest[..end].parse().ok()
    };
    Some((number("\"partition\":")? as u32, number("\"offset\":")?))
}

/// Waits until the group is Stable with `members` members that together own
/// all `partitions` partitions of `topic`; returns member id → partitions.
async fn wait_stable(
    client: &Client,
    group: &str,
    members: usize,
    partitions: u32,
) -> BTreeMap<String, Vec<u32>> {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(d) = client.describe_group(group).await {
            let owned: Vec<u32> = d
                .members
                .iter()
                .flat_map(|m| m.assignment.iter().map(|(_, p)| *p))
                .collect();
            let distinct: BTreeSet<u32> = owned.iter().copied().collect();
            if d.state == "Stable"
                && d.members.len() == members
                && owned.len() == partitions as usize
                && distinct.len() == partitions as usize
            {
                return d
                    .members
                    .into_iter()
                    .map(|m| {
                        (
                            m.member_id,
                            m.assignment.into_iter().map(|(_, p)| p).collect(),
                        )
                    })
                    .collect();
            }
            last = Some(d);
        }
        smol::Timer::after(Duration::from_millis(50)).await;
    }
    panic!("group {group} did not become stable with {members} members: {last:?}");
}

fn all_offsets(partitions: u32, per_partition: u64) -> BTreeSet<(u32, u64)> {
    (0..partitions)
        .flat_map(|p| (0..per_partition).map(move |o| (p, o)))
        .collect()
}

#[test]
fn three_members_split_six_partitions_and_a_killed_members_partitions_move() {
    let dir = tmp();
    let node = Node::start(&dir.path().join("data"), dir.path(), &[]);
    let client = node.client();
    smol::block_on(client.create_topic("t", 6, 1, vec![])).expect("create");
    let auto = [
        "--consumer-property",
        "enable.auto.commit=true",
        "--consumer-property",
        "auto.commit.interval.ms=200",
    ];
    let members: Vec<Member> = (0..3)
        .map(|i| Member::start(&node, dir.path(), &format!("m{i}"), "t", "g", &auto))
        .collect();
    let owners = smol::block_on(wait_stable(&client, "g", 3, 6));
    for (member, parts) in &owners {
        assert_eq!(
            parts.len(),
            2,
            "{member} owns {parts:?}: six split three ways"
        );
    }

    // First round: every record read by exactly the member owning its partition.
    smol::block_on(produce_all(&client, "t", 6, 100));
    let want = all_offsets(6, 100);
    let read_all = |members: &[Member], want: &BTreeSet<(u32, u64)>| {
        wait_until(WAIT, || {
            let seen: BTreeSet<(u32, u64)> = members.iter().flat_map(|m| m.records()).collect();
            want.is_subset(&seen)
        })
    };
    assert!(read_all(&members, &want), "not every record was read");
    let mut readers: BTreeMap<u32, BTreeSet<usize>> = BTreeMap::new();
    let mut total = 0;
    for (i, m) in members.iter().enumerate() {
        for (p, _) in m.records() {
            readers.entry(p).or_default().insert(i);
            total += 1;
        }
    }
    assert_eq!(
        total, 600,
        "no record read twice while the group was stable"
    );
    assert!(
        readers.values().all(|r| r.len() == 1),
        "each partition read by one member: {readers:?}"
    );

    // Kill one member without a goodbye: its partitions move to the others
    // after session.timeout.ms plus the rebalance.
    let mut members = members;
    let victim = members.remove(0);
    let victim_records = victim.records();
    let mut victim_process = victim.process;
    victim_process.signal(libc::SIGKILL).expect("SIGKILL");
    let killed_at = Instant::now();
    let _ = victim_process.wait_timeout(Duration::from_secs(10));
    smol::block_on(produce_all(&client, "t", 6, 100));
    let owners = smol::block_on(wait_stable(&client, "g", 2, 6));
    let moved_after = killed_at.elapsed();
    eprintln!(
        "partitions moved {} ms after the kill (session.timeout.ms = {SESSION_MS})",
        moved_after.as_millis()
    );
    assert!(owners.values().all(|p| p.len() == 3), "{owners:?}");

    // The group as a whole reads everything at least once: no gaps.
    let want = all_offsets(6, 200);
    let covered = wait_until(WAIT, || {
        let mut seen: BTreeSet<(u32, u64)> = victim_records.iter().copied().collect();
        seen.extend(members.iter().flat_map(|m| m.records()));
        want.is_subset(&seen)
    });
    let mut seen: BTreeSet<(u32, u64)> = victim_records.iter().copied().collect();
    seen.extend(members.iter().flat_map(|m| m.records()));
    let missing: Vec<_> = want.difference(&seen).take(10).collect();
    assert!(covered, "gaps after the kill, e.g. {missing:?}");
    for m in members {
        m.stop();
    }
    let (status, _) = node.stop();
    assert!(status.success());
}

#[test]
fn commit_after_processing_reads_every_record_exactly_once() {
    let dir = tmp();
    let node = Node::start(&dir.path().join("data"), dir.path(), &[]);
    let client = node.client();
    smol::block_on(client.create_topic("t", 6, 1, vec![])).expect("create");
    // The command's default: commit after each written batch.
    let mut members: Vec<Member> = (0..3)
        .map(|i| Member::start(&node, dir.path(), &format!("m{i}"), "t", "g", &[]))
        .collect();
    smol::block_on(wait_stable(&client, "g", 3, 6));
    smol::block_on(produce_all(&client, "t", 6, 50));
    let mut finished: Vec<Vec<(u32, u64)>> = Vec::new();
    let seen_count = |members: &[Member], finished: &[Vec<(u32, u64)>]| {
        members.iter().map(|m| m.records().len()).sum::<usize>()
            + finished.iter().map(Vec::len).sum::<usize>()
    };
    assert!(wait_until(WAIT, || seen_count(&members, &finished) >= 300));

    // One member stops cleanly (commits, leaves); the others take over.
    let leaving = members.remove(1);
    let records = leaving.records();
    leaving.stop();
    finished.push(records);
    smol::block_on(produce_all(&client, "t", 6, 50));
    // A new member joins while records flow.
    members.push(Member::start(&node, dir.path(), "m3", "t", "g", &[]));
    smol::block_on(produce_all(&client, "t", 6, 50));
    smol::block_on(wait_stable(&client, "g", 3, 6));
    smol::block_on(produce_all(&client, "t", 6, 50));
    assert!(
        wait_until(WAIT, || seen_count(&members, &finished) >= 1200),
        "read {} of 1200",
        seen_count(&members, &finished)
    );
    for m in members {
        let records = m.records();
        m.stop();
        finished.push(records);
    }
    let mut counts: BTreeMap<(u32, u64), u32> = BTreeMap::new();
    for r in finished.iter().flatten() {
        *counts.entry(*r).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(twice.is_empty(), "records read more than once: {twice:?}");
    let keys: BTreeSet<(u32, u64)> = counts.keys().copied().collect();
    assert_eq!(keys, all_offsets(6, 200), "every record exactly once");

    // Everything is committed: lag 0 on every partition.
    let d = smol::block_on(client.describe_group("g")).expect("describe");
    assert_eq!(d.state, "Empty");
    assert_eq!(d.offsets.len(), 6);
    assert!(d.offsets.iter().all(|o| o.offset == 200), "{:?}", d.offsets);
    let (status, _) = node.stop();
    assert!(status.success());
}

fn group_config(group: &str) -> ConsumerConfig {
    ConsumerConfig {
        group_id: Some(group.to_owned()),
        session_timeout_ms: SESSION_MS,
        heartbeat_interval_ms: HEARTBEAT_MS,
        rebalance_timeout_ms: 20_000,
        fetch_max_wait_ms: 200,
        ..ConsumerConfig::default()
    }
}

/// Polls until `want` records came or the time is up.
async fn poll_n(consumer: &mut Consumer, want: usize) -> Vec<(u32, u64)> {
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        for r in consumer
            .poll(Duration::from_millis(200))
            .await
            .expect("poll")
        {
            out.push((r.partition, r.offset));
        }
    }
    out
}

#[test]
fn a_second_group_reads_everything_independently() {
    let dir = tmp();
    let node = Node::start(&dir.path().join("data"), dir.path(), &[]);
    let client = node.client();
    smol::block_on(async {
        client
            .create_topic("t", 4, 1, vec![])
            .await
            .expect("create");
        produce_all(&client, "t", 4, 25).await;
        let mut a = Consumer::new(client.clone(), group_config("a")).expect("consumer");
        a.subscribe(vec!["t".into()]).expect("subscribe");
        let read_a = poll_n(&mut a, 100).await;
        a.commit_sync().await.expect("commit");
        let mut b = Consumer::new(client.clone(), group_config("b")).expect("consumer");
        b.subscribe(vec!["t".into()]).expect("subscribe");
        let read_b = poll_n(&mut b, 100).await;
        let want = all_offsets(4, 25);
        assert_eq!(read_a.iter().copied().collect::<BTreeSet<_>>(), want);
        assert_eq!(read_b.iter().copied().collect::<BTreeSet<_>>(), want);
        assert_eq!(read_a.len(), 100);
        assert_eq!(read_b.len(), 100);
        // Each group has its own member and its own offsets.
        let ga = client.describe_group("a").await.expect("a");
        let gb = client.describe_group("b").await.expect("b");
        assert_eq!(ga.members.len(), 1);
        assert_eq!(gb.members.len(), 1);
        assert!(ga.offsets.iter().all(|o| o.offset == 25));
        assert!(gb.offsets.is_empty(), "b has not committed");
        a.close().await.expect("close a");
        b.close().await.expect("close b");
    });
    let (status, _) = node.stop();
    assert!(status.success());
}

#[test]
fn committed_offsets_survive_node_kill9_and_restart() {
    let dir = tmp();
    let data = dir.path().join("data");
    let node = Node::start(&data, dir.path(), &[]);
    let client = node.client();
    smol::block_on(async {
        client
            .create_topic("t", 3, 1, vec![])
            .await
            .expect("create");
        produce_all(&client, "t", 3, 40).await;
        let mut c = Consumer::new(
            client.clone(),
            ConsumerConfig {
                enable_auto_commit: false,
                ..group_config("g")
            },
        )
        .expect("consumer");
        c.subscribe(vec!["t".into()]).expect("subscribe");
        poll_n(&mut c, 120).await;
        // Commit a distinct offset per partition, with metadata.
        let offsets: Vec<CommitOffset> = (0..3)
            .map(|p| CommitOffset {
                topic: "t".into(),
                partition: p,
                offset: 10 + u64::from(p),
                metadata: format!("batch-{p}"),
            })
            .collect();
        c.commit_offsets(offsets)
            .await
            .expect("commit acknowledged");
    });
    drop(client);
    node.kill9();
    let node = Node::start(&data, dir.path(), &[]);
    let client = node.client();
    smol::block_on(async {
        let offsets = client.fetch_offsets("g", None).await.expect("fetch");
        let got: Vec<(u32, u64, String)> = offsets
            .into_iter()
            .map(|o| (o.partition, o.offset, o.metadata))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 10, "batch-0".to_string()),
                (1, 11, "batch-1".to_string()),
                (2, 12, "batch-2".to_string())
            ]
        );
        // A new member resumes at the committed offsets.
        let mut c = Consumer::new(client.clone(), group_config("g")).expect("consumer");
        c.subscribe(vec!["t".into()]).expect("subscribe");
        let read = poll_n(&mut c, 120 - 33).await;
        let want: BTreeSet<(u32, u64)> = (0..3u32)
            .flat_map(|p| (10 + u64::from(p)..40).map(move |o| (p, o)))
            .collect();
        assert_eq!(read.iter().copied().collect::<BTreeSet<_>>(), want);
        assert_eq!(
            read.len(),
            want.len(),
            "nothing before the committed offsets"
        );
        c.close().await.expect("close");
    });
    let (status, _) = node.stop();
    assert!(status.success());
}

fn join(group: &str, member_id: &str, session_timeout_ms: u32) -> JoinRequest {
    JoinRequest {
        group: group.into(),
        member_id: member_id.into(),
        client_id: "test".into(),
        topics: vec!["t".into()],
        strategies: vec!["range".into()],
        session_timeout_ms,
        rebalance_timeout_ms: 10_000,
        owned: Vec::new(),
    }
}

fn one(partition: u32, offset: u64) -> Vec<CommitOffset> {
    vec![CommitOffset {
        topic: "t".into(),
        partition,
        offset,
        metadata: String::new(),
    }]
}

#[test]
fn a_fenced_members_commit_is_rejected() {
    let dir = tmp();
    let node = Node::start(&dir.path().join("data"), dir.path(), &[]);
    let client = node.client();
    smol::block_on(async {
        client
            .create_topic("t", 2, 1, vec![])
            .await
            .expect("create");
        let a = client
            .join_group(join("g", "", 30_000))
            .await
            .expect("a joins");
        assert_eq!(a.generation, 1);
        assert_eq!(a.assignment.len(), 2);
        client
            .commit_offsets("g", &a.member_id, a.generation, one(0, 1))
            .await
            .expect("current generation commits");
        // b joins: a learns of the rebalance from its heartbeat and re-joins.
        let b_client = client.clone();
        let b = smol::spawn(async move { b_client.join_group(join("g", "", 30_000)).await });
        let hb = client
            .heartbeat("g", &a.member_id, a.generation, 5000)
            .await;
        assert!(
            matches!(&hb, Err(e) if e.code() == Some(ErrorCode::RebalanceInProgress)),
            "{hb:?}"
        );
        let a2 = client
            .join_group(join("g", &a.member_id, 30_000))
            .await
            .expect("a re-joins");
        let b = b.await.expect("b joins");
        assert_eq!(a2.generation, 2);
        assert_eq!(b.generation, 2);
        assert_eq!(a2.assignment.len() + b.assignment.len(), 2);
        // a's old generation is fenced.
        let stale = client
            .commit_offsets("g", &a.member_id, a.generation, one(0, 2))
            .await;
        assert!(
            matches!(&stale, Err(e) if e.code() == Some(ErrorCode::IllegalGeneration)),
            "{stale:?}"
        );
        // A member that never heartbeats is dropped after its session timeout;
        // its commits are then rejected as from an unknown member.
        let c_client = client.clone();
        let c = smol::spawn(async move { c_client.join_group(join("g", "", 1000)).await });
        // a and b re-join together (each join waits for the other).
        let rejoins: Vec<_> = [&a2, &b]
            .into_iter()
            .map(|m| {
                let client = client.clone();
                let id = m.member_id.clone();
                smol::spawn(async move { client.join_group(join("g", &id, 30_000)).await })
            })
            .collect();
        for r in rejoins {
            r.await.expect("re-join");
        }
        let c = c.await.expect("c joins");
        let expired = wait_until_async(|| {
            let client = client.clone();
            let id = c.member_id.clone();
            async move {
                client
                    .describe_group("g")
                    .await
                    .is_ok_and(|d| d.members.iter().all(|m| m.member_id != id))
            }
        })
        .await;
        assert!(expired, "c was not dropped after its session timeout");
        let dead = client
            .commit_offsets("g", &c.member_id, c.generation, one(1, 5))
            .await;
        assert!(
            matches!(&dead, Err(e) if e.code() == Some(ErrorCode::UnknownMemberId)),
            "{dead:?}"
        );
        // A commit without a member is refused while the group has members...
        let manual = client.commit_offsets("g", "", -1, one(1, 5)).await;
        assert!(
            matches!(&manual, Err(e) if e.code() == Some(ErrorCode::UnknownMemberId)),
            "{manual:?}"
        );
        // ...and none of the rejected commits changed anything.
        let offsets = client.fetch_offsets("g", None).await.expect("fetch");
        assert_eq!(
            offsets
                .iter()
                .map(|o| (o.partition, o.offset))
                .collect::<Vec<_>>(),
            vec![(0, 1)]
        );
    });
    let (status, _) = node.stop();
    assert!(status.success());
}

async fn wait_until_async<F, Fut>(mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        smol::Timer::after(Duration::from_millis(50)).await;
    }
    false
}

/// Runs `eddy ARGS…` against `node` and returns (success, stdout, stderr).
fn eddy(node: &Node, dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(eddy_tests::eddy_bin())
        .args(args)
        .arg("--server")
        .arg(node.addr.to_string())
        .arg("--ca")
        .arg(node.data_dir.join("tls/ca.pem"))
        .current_dir(dir)
        .output()
        .expect("run eddy");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The rows of `eddy group describe` as partition → (current, log end, lag).
fn describe_rows(text: &str) -> BTreeMap<u32, (String, String, String)> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with("TOPIC"));
    let header = lines.next().expect("table header");
    let lag_col = header.find("LAG ").expect("LAG column");
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            assert!(l.len() > lag_col, "aligned columns: {l:?}");
            let cells: Vec<&str> = l.split_whitespace().collect();
            (
                cells[1].parse().expect("partition"),
                (
                    cells[2].to_string(),
                    cells[3].to_string(),
                    cells[4].to_string(),
                ),
            )
        })
        .collect()
}

#[test]
fn group_describe_lag_matches_produced_minus_committed() {
    let dir = tmp();
    let node = Node::start(&dir.path().join("data"), dir.path(), &[]);
    let client = node.client();
    smol::block_on(async {
        client
            .create_topic("t", 3, 1, vec![])
            .await
            .expect("create");
        produce(&client, "t", 0, 10).await;
        produce(&client, "t", 1, 7).await;
        produce(&client, "t", 2, 5).await;
        // A manually assigned consumer commits for an empty group.
        let mut c = Consumer::new(
            client.clone(),
            ConsumerConfig {
                group_id: Some("g".into()),
                ..ConsumerConfig::default()
            },
        )
        .expect("consumer");
        c.assign(vec![("t".into(), 0), ("t".into(), 1)]);
        c.seek("t", 0, 4).expect("seek");
        c.seek("t", 1, 7).expect("seek");
        c.commit_sync().await.expect("commit from assign");
    });
    let (ok, out, err) = eddy(&node, dir.path(), &["group", "describe", "g"]);
    assert!(ok, "{err}");
    let rows = describe_rows(&out);
    assert_eq!(rows[&0], ("4".into(), "10".into(), "6".into()), "{out}");
    assert_eq!(rows[&1], ("7".into(), "7".into(), "0".into()), "{out}");
    assert_eq!(rows[&2], ("-".into(), "5".into(), "-".into()), "{out}");

    let (ok, out, err) = eddy(&node, dir.path(), &["group", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("g ") && l.contains("Empty")),
        "{out}"
    );

    // reset-offsets, each way.
    for (flag, value, want) in [
        ("--to-earliest", None, ["0", "0", "0"]),
        ("--to-latest", None, ["10", "7", "5"]),
        ("--to-offset", Some("6"), ["6", "6", "5"]),
    ] {
        let mut args = vec!["group", "reset-offsets", "g", "--topic", "t", flag];
        args.extend(value);
        let (ok, _, err) = eddy(&node, dir.path(), &args);
        assert!(ok, "{flag}: {err}");
        let offsets = smol::block_on(client.fetch_offsets("g", None)).expect("fetch");
        let got: Vec<String> = offsets.iter().map(|o| o.offset.to_string()).collect();
        assert_eq!(got, want, "{flag}");
    }
    let (ok, _, err) = eddy(
        &node,
        dir.path(),
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-timestamp",
            "0",
            "--partition",
            "2",
        ],
    );
    assert!(ok, "{err}");
    let offsets = smol::block_on(client.fetch_offsets("g", None)).expect("fetch");
    assert_eq!(offsets[2].offset, 0, "first record at or after time 0");

    // With a member, reset and delete are refused with what to do.
    let mut member = Consumer::new(client.clone(), group_config("g")).expect("consumer");
    smol::block_on(async {
        member.subscribe(vec!["t".into()]).expect("subscribe");
        member.poll(Duration::from_millis(500)).await.expect("poll");
    });
    assert!(smol::block_on(wait_until_async(|| {
        let client = client.clone();
        async move {
            client
                .describe_group("g")
                .await
                .is_ok_and(|d| d.members.len() == 1)
        }
    })));
    let (ok, _, err) = eddy(
        &node,
        dir.path(),
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-earliest",
        ],
    );
    assert!(!ok);
    assert!(err.contains("stop its consumers first"), "{err}");
    let (ok, _, err) = eddy(&node, dir.path(), &["group", "delete", "g"]);
    assert!(!ok);
    assert!(err.contains("NonEmptyGroup"), "{err}");
    smol::block_on(member.close()).expect("leave");

    let (ok, out, err) = eddy(&node, dir.path(), &["group", "delete", "g"]);
    assert!(ok, "{err}");
    assert!(out.contains("deleted group g"));
    let (ok, _, err) = eddy(&node, dir.path(), &["group", "describe", "g"]);
    assert!(!ok);
    assert!(
        err.contains("GroupIdNotFound") && err.contains("eddy group list"),
        "{err}"
    );
    let (status, _) = node.stop();
    assert!(status.success());
}

/// Records what the listener saw.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Event>>>);

/// ("assigned" or "revoked", partitions)
type Event = (String, Vec<u32>);

impl RebalanceListener for Recorder {
    fn on_partitions_revoked(&mut self, partitions: &[(String, u32)]) {
        let list = partitions.iter().map(|(_, p)| *p).collect();
        self.0.lock().expect("lock").push(("revoked".into(), list));
    }
    fn on_partitions_assigned(&mut self, partitions: &[(String, u32)]) {
        let list = partitions.iter().map(|(_, p)| *p).collect();
        self.0.lock().expect("lock").push(("assigned".into(), list));
    }
}

/// Polls `consumer` on its own thread until `stop` is set.
fn poll_in_background(
    mut consumer: Consumer,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Consumer> {
    std::thread::spawn(move || {
        smol::block_on(async {
            let deadline = Instant::now() + WAIT;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let _ = consumer.poll(Duration::from_millis(100)).await;
            }
            consumer
        })
    })
}

#[test]
fn cooperative_sticky_revokes_only_moved_partitions_and_offset_reset_applies() {
    let dir = tmp();
    let node = Node::start(&dir.path().join("data"), dir.path(), &[]);
    let client = node.client();
    smol::block_on(async {
        client
            .create_topic("t", 6, 1, vec![])
            .await
            .expect("create");
        produce_all(&client, "t", 6, 5).await;
    });
    let coop = |group: &str| ConsumerConfig {
        partition_assignment_strategy: vec!["cooperative-sticky".into()],
        ..group_config(group)
    };
    let a_events = Recorder::default();
    let mut a = Consumer::new(client.clone(), coop("g")).expect("consumer");
    a.subscribe_with_listener(vec!["t".into()], a_events.clone())
        .expect("subscribe");
    smol::block_on(poll_n(&mut a, 30));
    assert_eq!(a.assignment().len(), 6);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let a_thread = poll_in_background(a, stop.clone());
    let b_events = Recorder::default();
    let mut b = Consumer::new(client.clone(), coop("g")).expect("consumer");
    b.subscribe_with_listener(vec!["t".into()], b_events.clone())
        .expect("subscribe");
    let b_thread = poll_in_background(b, stop.clone());
    let owners = smol::block_on(wait_stable(&client, "g", 2, 6));
    assert!(owners.values().all(|p| p.len() == 3), "{owners:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let a = a_thread.join().expect("a");
    let b = b_thread.join().expect("b");
    let a_seen = a_events.0.lock().expect("lock").clone();
    let b_seen = b_events.0.lock().expect("lock").clone();
    assert_eq!(a_seen[0], ("assigned".to_string(), vec![0, 1, 2, 3, 4, 5]));
    let revoked: Vec<u32> = a_seen
        .iter()
        .filter(|(what, _)| what == "revoked")
        .flat_map(|(_, p)| p.clone())
        .collect();
    assert_eq!(revoked.len(), 3, "a revoked only what moved: {a_seen:?}");
    let b_assigned: Vec<u32> = b_seen
        .iter()
        .filter(|(what, _)| what == "assigned")
        .flat_map(|(_, p)| p.clone())
        .collect();
    let mut moved = revoked.clone();
    moved.sort();
    let mut got = b_assigned.clone();
    got.sort();
    assert_eq!(moved, got, "b got exactly what a revoked");
    assert!(b_seen.iter().all(|(what, _)| what == "assigned"));
    smol::block_on(async {
        // a auto-committed its positions before revoking: b started there,
        // so each moved partition's committed offset is 5.
        let committed = b
            .committed(
                &moved
                    .iter()
                    .map(|p| ("t".to_string(), *p))
                    .collect::<Vec<_>>(),
            )
            .await
            .expect("committed");
        assert!(committed.values().all(|c| c.offset == 5), "{committed:?}");

        a.close().await.expect("close a");
        b.close().await.expect("close b");

        // auto.offset.reset applies only without a committed offset.
        let mut none = Consumer::new(
            client.clone(),
            ConsumerConfig {
                auto_offset_reset: AutoOffsetReset::None,
                ..group_config("fresh")
            },
        )
        .expect("consumer");
        none.subscribe(vec!["t".into()]).expect("subscribe");
        let error = loop {
            match none.poll(Duration::from_millis(200)).await {
                Err(e) => break e,
                Ok(records) => assert!(records.is_empty()),
            }
        };
        assert!(matches!(error, ConsumeError::NoOffset { .. }), "{error:?}");
        none.close().await.expect("close");
        let mut latest = Consumer::new(
            client.clone(),
            ConsumerConfig {
                auto_offset_reset: AutoOffsetReset::Latest,
                ..group_config("fresh")
            },
        )
        .expect("consumer");
        latest.subscribe(vec!["t".into()]).expect("subscribe");
        let quiet = latest
            .poll(Duration::from_millis(1500))
            .await
            .expect("poll");
        assert!(quiet.is_empty(), "latest skips what is there");
        produce(&client, "t", 4, 2).await;
        let read = poll_n(&mut latest, 2).await;
        assert_eq!(read, vec![(4, 5), (4, 6)]);
        // commit_async stores the positions without blocking the caller.
        latest.commit_async().await.expect("async commit");
        let c = latest
            .committed(&[("t".into(), 4)])
            .await
            .expect("committed");
        assert_eq!(c[&("t".to_string(), 4)].offset, 7);
        latest.close().await.expect("close");
    });
    let (status, _) = node.stop();
    assert!(status.success());
}
