//! Board profiles: `eddy serve --board NAME` runs with a profile compiled into
//! the binary and keeps its memory under the board's budget with the example
//! workload (the one `cargo xtask smoke` runs under emulation).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use eddy_client::protocol::Acks;
use eddy_client::{Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord};
use eddy_tests::{EddyProcess, Node, wait_until};

/// Most time any loop below waits for records.
const WAIT: Duration = Duration::from_secs(60);
/// The smallest board budget, `rpi-zero2w`'s `memory-budget-mb`.
const ZERO2W_BUDGET_MB: u64 = 64;
/// Producers (one connection each) in the workload.
const PRODUCERS: usize = 4;
/// Records per producer.
const RECORDS_PER_PRODUCER: usize = 5_000;
/// Value size in bytes.
const VALUE_BYTES: usize = 1_000;

/// A `VmHWM` / `VmRSS`-style line of /proc/<pid>/status, in KiB.
fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

fn value(producer: usize, i: usize) -> Vec<u8> {
    let mut v = format!("p{producer}-r{i}-").into_bytes();
    v.resize(VALUE_BYTES, b'x');
    v
}

#[test]
fn board_profile_keeps_peak_rss_under_the_board_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(
        &dir.path().join("data"),
        dir.path(),
        &["--board", "rpi-zero2w"],
    );
    let log = node.process.stderr();
    assert!(log.contains("name = \"rpi-zero2w\""), "{log}");
    assert!(log.contains("memory-budget-mb = 64"), "{log}");
    let pid = node.process.id();
    let idle_kib = status_kib(pid, "VmRSS");

    let topic = "sensors";
    let client = node.client();
    smol::block_on(client.create_topic(topic, 3, 1, vec![])).expect("create topic");
    // Producers on their own connections, with large batches and many
    // requests in flight: the payloads the node holds at once are what the
    // board budget bounds.
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let options = node.client_options();
            std::thread::spawn(move || {
                smol::block_on(async move {
                    let client = eddy_client::Client::new(options).expect("client");
                    let producer = Producer::new(
                        client,
                        ProducerConfig {
                            acks: Acks::Leader,
                            batch_size: 256 * 1024,
                            linger_ms: 5,
                            ..ProducerConfig::default()
                        },
                    )
                    .expect("producer");
                    let mut pending = Vec::with_capacity(RECORDS_PER_PRODUCER);
                    for i in 0..RECORDS_PER_PRODUCER {
                        let record = ProducerRecord::new(topic.to_owned(), value(p, i));
                        pending.push(producer.send(record).await.expect("send"));
                    }
                    for delivery in pending {
                        delivery.await.expect("acknowledged");
                    }
                })
            })
        })
        .collect();
    for producer in producers {
        producer.join().expect("producer thread");
    }

    let want = PRODUCERS * RECORDS_PER_PRODUCER;
    let seen = smol::block_on(async {
        let mut consumer =
            Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
        consumer.assign((0..3).map(|p| (topic.to_owned(), p)).collect());
        let deadline = Instant::now() + WAIT;
        let mut seen = BTreeSet::new();
        while seen.len() < want && Instant::now() < deadline {
            for record in consumer
                .poll(Duration::from_millis(500))
                .await
                .expect("poll")
            {
                let value = record.value.expect("value");
                assert_eq!(value.len(), VALUE_BYTES);
                seen.insert(value);
            }
        }
        seen
    });
    assert_eq!(seen.len(), want, "every record, once");
    for p in 0..PRODUCERS {
        for i in [0, RECORDS_PER_PRODUCER / 2, RECORDS_PER_PRODUCER - 1] {
            assert!(seen.contains(&value(p, i)), "record {i} of producer {p}");
        }
    }

    let peak_kib = status_kib(pid, "VmHWM");
    eprintln!(
        "rpi-zero2w profile on the build host: idle RSS {idle_kib} KiB, peak RSS {peak_kib} KiB \
         after {want} records of {VALUE_BYTES} bytes from {PRODUCERS} connections"
    );
    assert!(
        peak_kib < ZERO2W_BUDGET_MB * 1024,
        "peak RSS {peak_kib} KiB is over the board budget of {ZERO2W_BUDGET_MB} MiB"
    );
    let (status, log) = node.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn unknown_board_stops_the_node_with_the_known_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut process = EddyProcess::start(
        ["serve", "--board", "rpi9", "--listen", "127.0.0.1:0"],
        dir.path(),
    )
    .expect("start eddy");
    let status = process
        .wait_timeout(Duration::from_secs(30))
        .expect("wait")
        .expect("exits");
    assert!(!status.success());
    let log = process.stderr();
    assert!(log.contains("rpi9"), "{log}");
    assert!(log.contains("rpi-zero2w"), "{log}");
}

#[test]
fn a_board_file_works_as_config_file_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards/rpi4.toml");
    let node = Node::start(
        &dir.path().join("data"),
        dir.path(),
        &["--config", file.to_str().expect("utf-8 path")],
    );
    assert!(
        wait_until(Duration::from_secs(10), || node
            .process
            .stderr()
            .contains("name = \"rpi4\"")),
        "{}",
        node.process.stderr()
    );
    let (status, log) = node.stop();
    assert!(status.success(), "{log}");
}
