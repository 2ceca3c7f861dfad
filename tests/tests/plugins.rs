//! Black-box tests of WebAssembly plugins: real `eddy` nodes on 127.0.0.1,
//! the real example plugins from `plugins/` (built for wasm32-wasip2), the
//! real client.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use eddy_client::protocol::{Acks, ConfigChange, ErrorCode, PluginInfo, Response};
use eddy_client::{
    Client, ClientError, Compression, Consumer, ConsumerConfig, ConsumerRecord, ProduceError,
    Producer, ProducerConfig, ProducerRecord, partition_for_key,
};
use eddy_tests::{Node, plugin_wasm};

/// Flags for nodes whose plugins behave: a generous call timeout, so a
/// loaded test machine never stops a well-behaved call.
const CALM: &[&str] = &["--plugin-call-timeout-ms", "10000"];

/// Most time any loop below waits.
const WAIT: Duration = Duration::from_secs(60);

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn add(client: &Client, name: &str, wasm: &str, config: &[(&str, &str)]) -> (String, bool) {
    let bytes = std::fs::read(plugin_wasm(wasm)).expect("read plugin");
    let (kind, replaced, sha) = client
        .plugin_add(name, &bytes, kv(config))
        .await
        .unwrap_or_else(|e| panic!("add plugin {name}: {e}"));
    assert_eq!(sha.len(), 64);
    (kind, replaced)
}

/// Reads at least `want` records (or until quiet) from every partition.
async fn consume(
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
                .poll(Duration::from_millis(300))
                .await
                .expect("poll"),
        );
    }
    // Anything beyond `want` that is already there shows up too.
    out.extend(
        consumer
            .poll(Duration::from_millis(300))
            .await
            .expect("poll"),
    );
    out
}

fn producer(client: &Client, compression: Compression) -> Producer {
    Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            compression,
            linger_ms: 5,
            ..ProducerConfig::default()
        },
    )
    .expect("producer")
}

fn header<'a>(r: &'a ConsumerRecord, key: &str) -> Option<&'a [u8]> {
    r.headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value.as_deref())
}

fn text(v: &Option<Vec<u8>>) -> String {
    String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned()
}

/// One produce request with the given (key, value) records in an LZ4
/// batch, sent as is.
async fn raw_produce(
    client: &Client,
    topic: &str,
    partition: Option<u32>,
    records: &[(Option<&str>, &str)],
) -> Result<Response, ClientError> {
    eddy_tests::raw_produce(
        client,
        topic,
        partition,
        records,
        eddy_core::batch::Compression::Lz4,
    )
    .await
}

async fn plugin(client: &Client, name: &str) -> PluginInfo {
    client
        .plugin_list()
        .await
        .expect("plugin list")
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("plugin {name} not listed"))
}

#[test]
fn interceptors_rewrite_drop_and_reject_and_consumers_see_it() {
    let dir = tmp();
    let node = Node::start(&dir.path().join("data"), dir.path(), CALM);
    let client = node.client();
    smol::block_on(async {
        assert_eq!(
            add(
                &client,
                "guard",
                "schema-guard",
                &[("required", "device_id,temp")]
            )
            .await,
            ("interceptor".to_owned(), false)
        );
        add(&client, "redact", "redact", &[("fields", "password")]).await;
        add(&client, "enrich", "enrich", &[("gateway-id", "gw-7")]).await;
        add(&client, "thin", "downsample", &[("n", "3")]).await;

        // A chain: guard, then redact, then enrich.
        client
            .create_topic(
                "readings",
                1,
                1,
                kv(&[("interceptor.plugins", "guard,redact,enrich")]),
            )
            .await
            .expect("create");
        let p = producer(&client, Compression::Zstd);
        let mut acks = Vec::new();
        for i in 0..50 {
            let value = format!(
                r#"{{"device_id":"d{}","temp":{i},"password":"hunter{i}"}}"#,
                i % 5
            );
            acks.push(
                p.send(ProducerRecord::new("readings", value))
                    .await
                    .expect("send"),
            );
        }
        for a in acks {
            a.await.expect("acknowledged");
        }
        let got = consume(&client, "readings", 1, 50).await;
        assert_eq!(got.len(), 50, "every valid record is stored once");
        for r in &got {
            let v = text(&r.value);
            assert!(v.contains(r#""password":"***""#), "redacted: {v}");
            assert!(!v.contains("hunter"), "no secret left: {v}");
            assert_eq!(header(r, "gateway-id"), Some(&b"gw-7"[..]));
        }

        // A record without the required fields: the producer gets a typed
        // error with the plugin's reason, and nothing of it is stored.
        let bad = p
            .send(ProducerRecord::new("readings", r#"{"device_id":"d1"}"#))
            .await
            .expect("send")
            .await;
        match bad {
            Err(ProduceError::Client(ClientError::RecordRejected { reason })) => {
                assert!(reason.contains("guard"), "{reason}");
                assert!(
                    reason.contains("missing required field(s): temp"),
                    "{reason}"
                );
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        let not_json = raw_produce(&client, "readings", Some(0), &[(None, "not json")]).await;
        assert!(
            matches!(&not_json, Err(e) if e.code() == Some(ErrorCode::InvalidRecord)),
            "{not_json:?}"
        );
        let offsets = client.describe_topic("readings").await.expect("describe");
        assert_eq!(
            offsets.partitions[0].high_watermark, 50,
            "rejected records are not stored"
        );

        // Downsample: one in three per key.
        client
            .create_topic("fast", 1, 1, kv(&[("interceptor.plugins", "thin")]))
            .await
            .expect("create");
        let mut records = Vec::new();
        for i in 0..30 {
            records.push((Some(if i % 2 == 0 { "a" } else { "b" }), format!("{i}")));
        }
        let refs: Vec<(Option<&str>, &str)> =
            records.iter().map(|(k, v)| (*k, v.as_str())).collect();
        raw_produce(&client, "fast", Some(0), &refs)
            .await
            .expect("produce");
        let got = consume(&client, "fast", 1, 10).await;
        let values: Vec<String> = got.iter().map(|r| text(&r.value)).collect();
        // a: 0,2,...,28 keeps 0,6,12,18,24; b: 1,3,...,29 keeps 1,7,13,19,25.
        assert_eq!(
            values,
            ["0", "1", "6", "7", "12", "13", "18", "19", "24", "25"],
            "one in three per key, in order"
        );

        // A dead-letter topic: rejected records go there with the reason;
        // the others are stored.
        client
            .create_topic("dlq", 1, 1, vec![])
            .await
            .expect("create");
        client
            .create_topic(
                "guarded",
                1,
                1,
                kv(&[
                    ("interceptor.plugins", "guard"),
                    ("interceptor.dead.letter.topic", "dlq"),
                ]),
            )
            .await
            .expect("create");
        raw_produce(
            &client,
            "guarded",
            Some(0),
            &[
                (None, r#"{"device_id":"x","temp":1}"#),
                (None, "garbage"),
                (None, r#"{"device_id":"y","temp":2}"#),
            ],
        )
        .await
        .expect("produce with a dead-letter topic succeeds");
        let kept = consume(&client, "guarded", 1, 2).await;
        assert_eq!(kept.len(), 2);
        let dead = consume(&client, "dlq", 1, 1).await;
        assert_eq!(dead.len(), 1);
        assert_eq!(text(&dead[0].value), "garbage");
        assert_eq!(header(&dead[0], "eddy.dlq.topic"), Some(&b"guarded"[..]));
        assert_eq!(header(&dead[0], "eddy.dlq.plugin"), Some(&b"guard"[..]));
        let reason =
            String::from_utf8_lossy(header(&dead[0], "eddy.dlq.reason").unwrap_or_default())
                .into_owned();
        assert!(reason.contains("not JSON"), "{reason}");

        // Statistics: calls and records are counted.
        let info = plugin(&client, "guard").await;
        assert_eq!(info.status, "enabled");
        assert!(info.calls >= 3 && info.records >= 53, "{info:?}");
        assert!(
            info.mean_ns > 0 && info.p99_ns >= info.mean_ns / 2,
            "{info:?}"
        );
        assert_eq!(
            info.topics,
            vec!["guarded".to_owned(), "readings".to_owned()]
        );

        // Topic configs must name installed plugins of the right kind.
        let err = client
            .create_topic("bad", 1, 1, kv(&[("interceptor.plugins", "nope")]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidConfig), "{err}");
        let err = client
            .create_topic("bad", 1, 1, kv(&[("partitioner.plugin", "enrich")]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a partitioner"), "{err}");
    });
    client_close(client);
    node.stop();
}

fn client_close(client: Client) {
    smol::block_on(client.close());
}

#[test]
fn json_field_partitioner_routes_each_device_to_one_partition() {
    let dir = tmp();
    let node = Node::start(&dir.path().join("data"), dir.path(), CALM);
    let client = node.client();
    smol::block_on(async {
        assert_eq!(
            add(
                &client,
                "by-device",
                "json-field-partitioner",
                &[("field", "device_id")]
            )
            .await,
            ("partitioner".to_owned(), false)
        );
        client
            .create_topic(
                "telemetry",
                4,
                1,
                kv(&[("partitioner.plugin", "by-device")]),
            )
            .await
            .expect("create");
        let devices = ["pump-1", "pump-2", "valve-9", "fan-3", "door-4", "meter-5"];
        let values: Vec<String> = (0..60)
            .map(|i| {
                format!(
                    r#"{{"device_id":"{}","seq":{i}}}"#,
                    devices[i % devices.len()]
                )
            })
            .collect();
        let records: Vec<(Option<&str>, &str)> =
            values.iter().map(|v| (None, v.as_str())).collect();
        // The request names no partition: the plugin splits it.
        raw_produce(&client, "telemetry", None, &records[..30])
            .await
            .expect("produce");
        raw_produce(&client, "telemetry", None, &records[30..])
            .await
            .expect("produce");
        let got = consume(&client, "telemetry", 4, 60).await;
        assert_eq!(got.len(), 60);
        let mut seen: BTreeMap<String, (u32, Vec<u64>)> = BTreeMap::new();
        for r in &got {
            let v: serde_like::Reading = serde_like::parse(&text(&r.value));
            let want = partition_for_key(v.device.as_bytes(), 4);
            assert_eq!(
                r.partition, want,
                "{} hashed like Kafka hashes keys",
                v.device
            );
            let entry = seen
                .entry(v.device.clone())
                .or_insert((r.partition, Vec::new()));
            assert_eq!(entry.0, r.partition, "one partition per device");
            entry.1.push(v.seq);
        }
        for (device, (_, seqs)) in &seen {
            let mut sorted = seqs.clone();
            sorted.sort_unstable();
            assert_eq!(seqs, &sorted, "{device}: in order within its partition");
        }
        let used: BTreeSet<u32> = seen.values().map(|(p, _)| *p).collect();
        assert!(used.len() >= 2, "devices spread over partitions: {used:?}");
    });
    client_close(client);
    node.stop();
}

/// A tiny reader for `{"device_id":"…","seq":N}` (the tests avoid a JSON crate).
mod serde_like {
    pub struct Reading {
        pub device: String,
        pub seq: u64,
    }

    pub fn parse(s: &str) -> Reading {
        let device = s
            .split(r#""device_id":""#)
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("device_id")
            .to_owned();
        let seq = s
            .split(r#""seq":"#)
            .nth(1)
            .and_then(|r| r.trim_end_matches('}').parse().ok())
            .expect("seq");
        Reading { device, seq }
    }
}

#[test]
fn disk_pressure_retention_evicts_low_priority_topics_first() {
    let dir = tmp();
    let node = Node::start(
        &dir.path().join("data"),
        dir.path(),
        &[
            "--log-retention-check-interval-ms",
            "200",
            "--plugin-call-timeout-ms",
            "10000",
        ],
    );
    let client = node.client();
    smol::block_on(async {
        // Any real disk is "above" 0 %, and never above 100 %: low-priority
        // topics are evicted, the others never.
        assert_eq!(
            add(
                &client,
                "pressure",
                "disk-pressure-retention",
                &[
                    ("threshold-percent", "0"),
                    ("critical-percent", "100"),
                    ("low-priority-topics", "debug-*"),
                    ("segments-per-check", "2"),
                ],
            )
            .await,
            ("retention".to_owned(), false)
        );
        let configs = kv(&[
            ("retention.plugin", "pressure"),
            ("segment.bytes", "2048"),
            ("retention.ms", "-1"),
            ("file.delete.delay.ms", "0"),
        ]);
        client
            .create_topic("debug-logs", 1, 1, configs.clone())
            .await
            .expect("create");
        client
            .create_topic("orders", 1, 1, configs)
            .await
            .expect("create");
        let value = "x".repeat(200);
        for topic in ["debug-logs", "orders"] {
            for _ in 0..40 {
                raw_produce(&client, topic, Some(0), &[(None, value.as_str())])
                    .await
                    .expect("produce");
            }
        }
        let deadline = Instant::now() + WAIT;
        let mut start = 0;
        while Instant::now() < deadline {
            let d = client.describe_topic("debug-logs").await.expect("describe");
            start = d.partitions[0].log_start_offset;
            if start > 0 {
                break;
            }
            smol::Timer::after(Duration::from_millis(100)).await;
        }
        assert!(start > 0, "the low-priority topic lost old segments");
        // Never the active segment: the newest record is still there.
        let d = client.describe_topic("debug-logs").await.expect("describe");
        assert!(
            d.partitions[0].log_start_offset < 40,
            "{:?}",
            d.partitions[0]
        );
        let orders = client.describe_topic("orders").await.expect("describe");
        assert_eq!(
            orders.partitions[0].log_start_offset, 0,
            "normal topics are kept"
        );
        let info = plugin(&client, "pressure").await;
        assert!(info.calls > 0 && info.failures == 0, "{info:?}");
    });
    client_close(client);
    node.stop();
}

#[test]
fn misbehaving_plugins_fail_only_their_calls_then_are_disabled() {
    let dir = tmp();
    let node = Node::start(
        &dir.path().join("data"),
        dir.path(),
        &[
            "--plugin-failures-before-disable",
            "3",
            "--plugin-call-timeout-ms",
            "500",
            "--plugin-memory-limit-mb",
            "16",
        ],
    );
    let client = node.client();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET-42").expect("write secret");
    smol::block_on(async {
        let cases = [
            ("looper", vec![("mode", "loop")], "call-timeout-ms"),
            ("trapper", vec![("mode", "trap")], "trapped"),
            ("hog", vec![("mode", "oom")], "memory-limit-mb"),
            (
                "snoop",
                // No `wasi.dirs` grant: the file is out of its reach.
                vec![
                    ("mode", "read-file"),
                    ("path", secret.to_str().expect("utf-8")),
                ],
                "cannot read",
            ),
        ];
        client
            .create_topic("plain", 1, 1, vec![])
            .await
            .expect("create");
        for (name, config, _) in &cases {
            add(&client, name, "misbehave", config).await;
            client
                .create_topic(name, 1, 1, kv(&[("interceptor.plugins", name)]))
                .await
                .expect("create");
        }
        for (name, _, why) in &cases {
            for attempt in 0..3 {
                let r = raw_produce(&client, name, Some(0), &[(None, "r")]).await;
                let err = r.expect_err("a misbehaving plugin fails the call");
                assert_eq!(err.code(), Some(ErrorCode::PluginFailed), "{name}: {err}");
                let msg = err.to_string();
                assert!(msg.contains(why), "{name} attempt {attempt}: {msg}");
                assert!(!msg.contains("TOP-SECRET"), "{name}: {msg}");
                // Other topics keep working meanwhile.
                raw_produce(&client, "plain", Some(0), &[(None, "ok")])
                    .await
                    .expect("the node keeps serving");
            }
            let info = plugin(&client, name).await;
            assert!(
                info.status.starts_with("disabled: 3 failures in a row"),
                "{info:?}"
            );
            assert_eq!((info.calls, info.failures), (3, 3), "{info:?}");
            // Disabled: the topic falls back to no interception.
            raw_produce(&client, name, Some(0), &[(None, "after")])
                .await
                .expect("built-in behaviour after disabling");
            let got = consume(&client, name, 1, 1).await;
            assert_eq!(
                got.len(),
                1,
                "{name}: only the record after disabling is stored"
            );
            assert_eq!(text(&got[0].value), "after");
            assert!(got[0].headers.is_empty());
        }
        let plain = client.describe_topic("plain").await.expect("describe");
        assert_eq!(plain.partitions[0].high_watermark, 12);
        // Re-adding enables it again.
        add(
            &client,
            "looper",
            "misbehave",
            &[("mode", "ok"), ("tag", "fixed")],
        )
        .await;
        raw_produce(&client, "looper", Some(0), &[(None, "fixed")])
            .await
            .expect("re-enabled");
        assert_eq!(plugin(&client, "looper").await.status, "enabled");
    });
    client_close(client);
    let (status, log) = node.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("plugin looper: DISABLED after 3 failures in a row"),
        "{log}"
    );
}

#[test]
fn a_plugin_swapped_under_load_loses_no_record() {
    let dir = tmp();
    let node = Node::start(&dir.path().join("data"), dir.path(), CALM);
    let client = node.client();
    smol::block_on(async {
        add(&client, "stamp", "enrich", &[("gateway-id", "v1")]).await;
        client
            .create_topic("busy", 2, 1, kv(&[("interceptor.plugins", "stamp")]))
            .await
            .expect("create");
        let total = 3000usize;
        let p = producer(&client, Compression::Lz4);
        let sender = {
            let p = p.clone();
            smol::spawn(async move {
                let mut acks = Vec::new();
                for i in 0..total {
                    acks.push(
                        p.send(
                            ProducerRecord::new("busy", format!("{i}"))
                                .with_key(format!("k{}", i % 7)),
                        )
                        .await
                        .expect("send"),
                    );
                    if i % 100 == 0 {
                        smol::Timer::after(Duration::from_millis(5)).await;
                    }
                }
                let mut failed = Vec::new();
                for a in acks {
                    if let Err(e) = a.await {
                        failed.push(e.to_string());
                    }
                }
                failed
            })
        };
        // Swap while records flow.
        let swapped = wait_until_async(|| async {
            client
                .describe_topic("busy")
                .await
                .map(|d| d.partitions.iter().map(|p| p.high_watermark).sum::<u64>() > 300)
                .unwrap_or(false)
        })
        .await;
        assert!(swapped, "records started flowing");
        let (_, replaced) = add(&client, "stamp", "enrich", &[("gateway-id", "v2")]).await;
        assert!(replaced);
        let failed = sender.await;
        assert!(
            failed.is_empty(),
            "no send failed during the swap: {failed:?}"
        );
        let got = consume(&client, "busy", 2, total).await;
        assert_eq!(got.len(), total, "every record stored once");
        let values: BTreeSet<String> = got.iter().map(|r| text(&r.value)).collect();
        assert_eq!(values.len(), total);
        let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
        for r in &got {
            let v = String::from_utf8_lossy(header(r, "gateway-id").expect("stamped")).into_owned();
            *by_version.entry(v).or_default() += 1;
        }
        assert!(
            by_version.get("v1").copied().unwrap_or(0) > 0,
            "{by_version:?}"
        );
        assert!(
            by_version.get("v2").copied().unwrap_or(0) > 0,
            "{by_version:?}"
        );
        assert_eq!(by_version.len(), 2, "{by_version:?}");
    });
    client_close(client);
    node.stop();
}

async fn wait_until_async<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        smol::Timer::after(Duration::from_millis(20)).await;
    }
    false
}

#[test]
fn cli_installs_lists_and_removes_plugins_and_they_survive_a_restart() {
    let dir = tmp();
    let data = dir.path().join("data");
    let node = Node::start(&data, dir.path(), CALM);
    let wasm = plugin_wasm("enrich");
    let (ok, out, err) = node.cli(&[
        "plugin",
        "add",
        "enrich",
        "--wasm",
        wasm.to_str().expect("utf-8"),
        "--config",
        "gateway-id=gw-1",
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("installed interceptor plugin enrich"), "{out}");
    let (ok, out, err) = node.cli(&[
        "topic",
        "create",
        "t",
        "--config",
        "interceptor.plugins=enrich",
    ]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = node.cli(&["plugin", "remove", "enrich"]);
    assert!(!ok);
    assert!(err.contains("used by topic(s) t"), "{err}");
    let (_, log) = node.stop();

    // After a restart (from the compiled cache) the plugin is still there
    // and still works.
    assert!(
        std::fs::read_dir(data.join("plugins").join("cache"))
            .expect("cache")
            .count()
            > 0
    );
    let node = Node::start(&data, dir.path(), CALM);
    let client = node.client();
    smol::block_on(async {
        raw_produce(&client, "t", Some(0), &[(None, "hello")])
            .await
            .expect("produce");
        let got = consume(&client, "t", 1, 1).await;
        assert_eq!(header(&got[0], "gateway-id"), Some(&b"gw-1"[..]), "{log}");
    });
    let (ok, out, err) = node.cli(&["plugin", "list"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("P99"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("enrich") && lines[1].contains("enabled"),
        "{out}"
    );
    let status_col = lines[0].find("STATUS").expect("status column");
    assert_eq!(lines[1].find("enabled"), Some(status_col), "aligned: {out}");
    smol::block_on(async {
        client
            .alter_configs(
                "t",
                vec![ConfigChange::Delete("interceptor.plugins".into())],
            )
            .await
            .expect("alter");
    });
    let (ok, out, err) = node.cli(&["plugin", "remove", "enrich"]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = node.cli(&["plugin", "list"]);
    assert!(ok && out.contains("no plugins installed"), "{out}");
    assert_eq!(
        std::fs::read_dir(data.join("plugins").join("wasm"))
            .expect("wasm dir")
            .count(),
        0,
        "the component is removed with the plugin"
    );
    client_close(client);
    node.stop();
}

#[test]
fn a_disabled_plugin_stays_disabled_across_a_restart_until_enabled() {
    let dir = tmp();
    let data = dir.path().join("data");
    let flags = [
        "--plugin-failures-before-disable",
        "3",
        "--plugin-call-timeout-ms",
        "10000",
    ];
    let node = Node::start(&data, dir.path(), &flags);
    let client = node.client();
    smol::block_on(async {
        add(&client, "trapper", "misbehave", &[("mode", "trap")]).await;
        client
            .create_topic("guarded", 1, 1, kv(&[("interceptor.plugins", "trapper")]))
            .await
            .expect("create");
        for _ in 0..3 {
            let err = raw_produce(&client, "guarded", Some(0), &[(None, "r")])
                .await
                .expect_err("the plugin traps");
            assert_eq!(err.code(), Some(ErrorCode::PluginFailed), "{err}");
        }
        let info = plugin(&client, "trapper").await;
        assert!(
            info.status.starts_with("disabled: 3 failures in a row"),
            "{info:?}"
        );
    });
    client_close(client);
    let (status, log) = node.stop();
    assert!(status.success(), "{log}");

    // After a restart: still disabled, with its reason, and the topic
    // still uses the built-in behaviour (no interception).
    let node = Node::start(&data, dir.path(), &flags);
    let (ok, out, err) = node.cli(&["plugin", "list"]);
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("trapper"))
        .unwrap_or_else(|| panic!("trapper listed: {out}"));
    assert!(row.contains("disabled: 3 failures in a row"), "{out}");
    assert!(row.contains("trapped"), "the reason is kept: {out}");
    let client = node.client();
    smol::block_on(async {
        raw_produce(&client, "guarded", Some(0), &[(None, "while-disabled")])
            .await
            .expect("built-in behaviour while disabled");
        let got = consume(&client, "guarded", 1, 1).await;
        assert_eq!(got.len(), 1);
        assert_eq!(text(&got[0].value), "while-disabled");
        assert_eq!(plugin(&client, "trapper").await.calls, 0, "never called");
    });
    assert!(
        node.process
            .stderr()
            .contains("plugin trapper: interceptor loaded but DISABLED"),
        "{}",
        node.process.stderr()
    );

    // `plugin enable` puts it back to work: the (still trapping) plugin is
    // called again.
    let (ok, out, err) = node.cli(&["plugin", "enable", "trapper"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("enabled plugin trapper (it was disabled: 3 failures in a row"),
        "{out}"
    );
    let (ok, out, _) = node.cli(&["plugin", "enable", "trapper"]);
    assert!(ok && out.contains("already enabled"), "{out}");
    smol::block_on(async {
        assert_eq!(plugin(&client, "trapper").await.status, "enabled");
        let err = raw_produce(&client, "guarded", Some(0), &[(None, "r")])
            .await
            .expect_err("enabled again: the plugin runs and traps");
        assert_eq!(err.code(), Some(ErrorCode::PluginFailed), "{err}");
        let err = client.plugin_enable("nope").await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::PluginNotFound), "{err}");
    });
    client_close(client);
    node.stop();

    // Enabled is what a restart keeps too.
    let node = Node::start(&data, dir.path(), &flags);
    let client = node.client();
    smol::block_on(async {
        assert_eq!(plugin(&client, "trapper").await.status, "enabled");
    });
    client_close(client);
    node.stop();
}
