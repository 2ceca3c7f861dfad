//! Black-box tests of WASI grants (`wasi.env`, `wasi.dirs`, `wasi.dirs.rw`,
//! `wasi.network` in a plugin's config): real `eddy` nodes on 127.0.0.1, the
//! `misbehave` test plugin, the real client and CLI.

use std::io::Read as _;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use eddy_client::protocol::{ErrorCode, Response};
use eddy_client::{Client, ClientError, Consumer, ConsumerConfig, ConsumerRecord};
use eddy_core::batch::Compression;
use eddy_tests::{Node, plugin_wasm};

/// Generous call timeout and no disabling: every case below may fail its
/// calls as often as it likes.
const FLAGS: &[&str] = &[
    "--plugin-allow-wasi-grants",
    "true",
    "--plugin-call-timeout-ms",
    "10000",
    "--plugin-failures-before-disable",
    "1000",
];

/// A plugin's config.
type Config<'a> = Vec<(&'static str, &'a str)>;

/// Most time any loop below waits.
const WAIT: Duration = Duration::from_secs(60);

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Installs `misbehave` as `name` with `config` and a topic of the same
/// name that runs it.
async fn install(client: &Client, name: &str, config: &[(&str, &str)]) {
    let bytes = std::fs::read(plugin_wasm("misbehave")).expect("read plugin");
    client
        .plugin_add(name, &bytes, kv(config))
        .await
        .unwrap_or_else(|e| panic!("add plugin {name}: {e}"));
    client
        .create_topic(name, 1, 1, kv(&[("interceptor.plugins", name)]))
        .await
        .expect("create topic");
}

/// One produce request with one record, sent as is.
async fn produce_one(client: &Client, topic: &str, value: &str) -> Result<Response, ClientError> {
    eddy_tests::raw_produce(client, topic, Some(0), &[(None, value)], Compression::None).await
}

/// The records of partition 0 of `topic`, at least `want` (or until quiet).
async fn consume(client: &Client, topic: &str, want: usize) -> Vec<ConsumerRecord> {
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
    consumer.assign(vec![(topic.to_string(), 0)]);
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
    out
}

fn header(r: &ConsumerRecord, key: &str) -> Option<String> {
    r.headers
        .iter()
        .find(|h| h.key == key)
        .map(|h| String::from_utf8_lossy(h.value.as_deref().unwrap_or_default()).into_owned())
}

/// Asserts that the plugin of `topic` failed the produce call, and returns
/// the error text.
async fn expect_plugin_failure(client: &Client, topic: &str) -> String {
    let err = produce_one(client, topic, "r")
        .await
        .expect_err("the plugin's call fails");
    assert_eq!(err.code(), Some(ErrorCode::PluginFailed), "{topic}: {err}");
    err.to_string()
}

#[test]
fn a_node_gives_no_grants_unless_its_operator_allows_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let granted = dir.path().join("granted");
    std::fs::create_dir(&granted).expect("mkdir");
    let node = Node::start(&dir.path().join("data"), dir.path(), &FLAGS[2..]);
    let client = node.client();
    smol::block_on(async {
        let bytes = std::fs::read(plugin_wasm("misbehave")).expect("read plugin");
        let grants = [
            ("wasi.dirs", path_str(&granted)),
            ("wasi.dirs.rw", path_str(&granted)),
            ("wasi.env", "PATH"),
            ("wasi.network", "127.0.0.1:1"),
        ];
        for (key, value) in grants {
            let err = client
                .plugin_add("granted", &bytes, kv(&[("mode", "env"), (key, value)]))
                .await
                .expect_err("no grants without allow-wasi-grants");
            assert_eq!(err.code(), Some(ErrorCode::InvalidConfig), "{key}: {err}");
            assert!(err.to_string().contains("allow-wasi-grants"), "{err}");
        }
        let listed = client.plugin_list().await.expect("plugin list");
        assert!(listed.is_empty(), "nothing installed: {listed:?}");
        // Without grants a plugin is installed as before.
        install(&client, "plain", &[("mode", "env")]).await;
        assert_eq!(client.plugin_list().await.expect("plugin list").len(), 1);
    });
    smol::block_on(client.close());
    let (status, log) = node.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn a_plugin_reaches_only_the_directories_its_config_grants() {
    let dir = tempfile::tempdir().expect("tempdir");
    let granted = dir.path().join("granted");
    let writable = dir.path().join("writable");
    std::fs::create_dir(&granted).expect("mkdir");
    std::fs::create_dir(&writable).expect("mkdir");
    let allowed = granted.join("allowed.txt");
    std::fs::write(&allowed, "REFERENCE-DATA-7").expect("write");
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET-42").expect("write");
    let escape = format!("{}/../secret.txt", path_str(&granted));
    let node = Node::start(&dir.path().join("data"), dir.path(), FLAGS);
    let client = node.client();
    smol::block_on(async {
        let g = path_str(&granted);
        let w = path_str(&writable);
        fn read(path: &str) -> Config<'_> {
            vec![("mode", "read-file"), ("path", path)]
        }
        // (name, config, what the plugin then reads: Ok(contents) or a failure)
        let mut cases: Vec<(&str, Config, Option<&str>)> = vec![
            ("no-grant", read(path_str(&allowed)), None),
            ("inside", read(path_str(&allowed)), Some("REFERENCE-DATA-7")),
            ("outside", read(path_str(&secret)), None),
            ("dot-dot", read(&escape), None),
            ("mapped", read("/ref/allowed.txt"), Some("REFERENCE-DATA-7")),
        ];
        let mapped_grant = format!("{g}:/ref");
        cases[1].1.push(("wasi.dirs", g));
        cases[2].1.push(("wasi.dirs", g));
        cases[3].1.push(("wasi.dirs", g));
        cases[4].1.push(("wasi.dirs", &mapped_grant));
        for (name, config, _) in &cases {
            install(&client, name, config).await;
        }
        for (name, _, contents) in &cases {
            match contents {
                Some(contents) => {
                    // The plugin read the file: it rejects the record with
                    // the contents as its reason.
                    let err = produce_one(&client, name, "r")
                        .await
                        .expect_err("rejected by the plugin");
                    assert_eq!(err.code(), Some(ErrorCode::InvalidRecord), "{name}: {err}");
                    assert!(err.to_string().contains(contents), "{name}: {err}");
                }
                None => {
                    let msg = expect_plugin_failure(&client, name).await;
                    assert!(msg.contains("cannot read"), "{name}: {msg}");
                    assert!(!msg.contains("TOP-SECRET"), "{name}: {msg}");
                    assert!(!msg.contains("REFERENCE-DATA"), "{name}: {msg}");
                }
            }
        }

        // Writing: refused in a read-only grant, allowed in a read-write one.
        let ro_target = granted.join("new.txt");
        let rw_target = writable.join("new.txt");
        install(
            &client,
            "ro-writer",
            &[
                ("mode", "write-file"),
                ("path", path_str(&ro_target)),
                ("wasi.dirs", g),
            ],
        )
        .await;
        install(
            &client,
            "rw-writer",
            &[
                ("mode", "write-file"),
                ("path", path_str(&rw_target)),
                ("wasi.dirs.rw", w),
            ],
        )
        .await;
        let msg = expect_plugin_failure(&client, "ro-writer").await;
        assert!(msg.contains("cannot write"), "{msg}");
        assert!(!ro_target.exists(), "nothing written in a read-only grant");
        produce_one(&client, "rw-writer", "kept")
            .await
            .expect("the plugin may write in its read-write grant");
        assert_eq!(
            std::fs::read_to_string(&rw_target).expect("written by the plugin"),
            "misbehave was here"
        );
        assert_eq!(consume(&client, "rw-writer", 1).await.len(), 1);
    });
    smol::block_on(client.close());
    let (status, log) = node.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn an_env_grant_passes_only_the_named_variables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start_with_env(
        &dir.path().join("data"),
        dir.path(),
        FLAGS,
        &[
            ("EDDY_TEST_GRANTED", "visible-1"),
            ("EDDY_TEST_HIDDEN", "hidden-2"),
        ],
    );
    let client = node.client();
    smol::block_on(async {
        install(
            &client,
            "granted",
            &[
                ("mode", "env"),
                ("wasi.env", "EDDY_TEST_GRANTED,EDDY_TEST_NOT_SET"),
            ],
        )
        .await;
        install(&client, "ungranted", &[("mode", "env")]).await;
        for (topic, want) in [
            ("granted", "EDDY_TEST_GRANTED=visible-1"),
            ("ungranted", ""),
        ] {
            produce_one(&client, topic, "r").await.expect("produce");
            let got = consume(&client, topic, 1).await;
            assert_eq!(got.len(), 1, "{topic}");
            assert_eq!(
                header(&got[0], "misbehave-env").as_deref(),
                Some(want),
                "{topic}: every variable the plugin sees"
            );
        }
    });
    smol::block_on(client.close());
    node.stop();
}

/// A TCP listener on 127.0.0.1 that accepts (bounded in time) on a thread
/// and keeps what each connection sent.
struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Listener {
    fn start() -> Listener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + WAIT * 2;
            let mut received = Vec::new();
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).expect("blocking");
                        stream
                            .set_read_timeout(Some(Duration::from_secs(10)))
                            .expect("timeout");
                        let mut text = String::new();
                        let _ = stream.read_to_string(&mut text);
                        received.push(text);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            received
        });
        Listener { addr, stop, thread }
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("listener thread")
    }
}

#[test]
fn a_network_grant_allows_only_its_socket_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = Listener::start();
    let target = listener.addr.to_string();
    // Another port on the same address: granted, but not the one dialled.
    let other = TcpListener::bind("127.0.0.1:0").expect("bind");
    let other_addr = other.local_addr().expect("addr").to_string();
    let node = Node::start(&dir.path().join("data"), dir.path(), FLAGS);
    let client = node.client();
    smol::block_on(async {
        let connect = [("mode", "connect"), ("addr", target.as_str())];
        install(
            &client,
            "allowed",
            &[connect[0], connect[1], ("wasi.network", &target)],
        )
        .await;
        install(
            &client,
            "other-port",
            &[connect[0], connect[1], ("wasi.network", &other_addr)],
        )
        .await;
        install(&client, "no-grant", &connect).await;
        for name in ["other-port", "no-grant"] {
            let msg = expect_plugin_failure(&client, name).await;
            assert!(msg.contains("cannot connect"), "{name}: {msg}");
        }
        produce_one(&client, "allowed", "r")
            .await
            .expect("the granted address is reachable");
        let got = consume(&client, "allowed", 1).await;
        assert_eq!(got.len(), 1);
        assert_eq!(
            header(&got[0], "misbehave-net").as_deref(),
            Some("connected")
        );
    });
    smol::block_on(client.close());
    node.stop();
    drop(other);
    let received = listener.finish();
    assert_eq!(
        received,
        vec!["misbehave connected\n".to_owned()],
        "exactly one connection, from the granted plugin"
    );
}

#[test]
fn plugin_add_refuses_a_bad_grant_and_installs_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(&dir.path().join("data"), dir.path(), FLAGS);
    let wasm = plugin_wasm("misbehave");
    let missing = dir.path().join("no-such-dir");
    let missing_grant = format!("wasi.dirs={}", path_str(&missing));
    for (grant, want) in [
        (missing_grant.as_str(), "does not exist on the node"),
        ("wasi.dirs=relative/dir", "not an absolute path"),
        ("wasi.network=localhost:1883", "no name lookup"),
        ("wasi.network=127.0.0.1", "is not IP:PORT"),
        ("wasi.dir=/tmp", "unknown grant"),
    ] {
        let (ok, out, err) = node.cli(&[
            "plugin",
            "add",
            "bad",
            "--wasm",
            path_str(&wasm),
            "--config",
            grant,
        ]);
        assert!(!ok, "{grant}: {out}");
        assert!(err.contains(want), "{grant}: {err}");
        assert!(err.contains("nothing was installed"), "{grant}: {err}");
    }
    let (ok, out, err) = node.cli(&["plugin", "list"]);
    assert!(ok, "{err}");
    assert!(out.contains("no plugins installed"), "{out}");
    node.stop();
}
