//! Cost of WebAssembly plugins on the produce path.
//!
//! - `plugin_call/*`: one call of each plugin kind with a batch of 1000
//!   records of 100 bytes, through the host API the broker uses (decode the
//!   batch, cross into Wasm once, then copy records as encoded into the new
//!   or split batches, encoding only rewritten fields); criterion reports
//!   time per batch and records/s, so ns/record = time / 1000.
//! - `produce/*`: the broker's whole produce path (in process, no network)
//!   for the same batch, to a topic without and with an interceptor. Each
//!   iteration appends 100 kB, so these grow the log by gigabytes and their
//!   times include the page cache's write-back: compare them with care.
//! - At the end, an interleaved A/B/C run of the produce paths (no
//!   interceptor, one that keeps every record, `enrich`) appends the same
//!   number of batches to each, alternating, and prints the throughput
//!   ratios measured in that one run: the numbers to quote.
//!
//! Needs the plugins built (`cargo xtask bench` does it; or set
//! `EDDY_PLUGINS_DIR`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use eddy_client::protocol::Acks;
use eddy_core::batch::{BatchBuilder, BatchOptions, Compression, RecordHeader};
use eddy_core::retention::SegmentSummary;
use eddy_node::broker::Broker;
use eddy_node::config::{FsyncMode, NodeConfig, PluginsConfig};
use eddy_node::plugins::{PluginHost, RetentionInput};
use eddy_node::runtime::Runtime;

const RECORDS: usize = 1000;
const VALUE_BYTES: usize = 100;

fn plugins_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EDDY_PLUGINS_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("bench path");
    exe.ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(|d| d.join("plugins"))
        .expect("run inside a cargo target dir, or set EDDY_PLUGINS_DIR")
}

fn wasm(name: &str) -> Vec<u8> {
    let path = plugins_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the plugins with `cargo xtask plugins`",
            path.display()
        )
    })
}

/// 1000 JSON records of 100 bytes with a device_id field, one batch.
fn batch() -> Vec<u8> {
    let mut b = BatchBuilder::new(BatchOptions {
        compression: Compression::None,
        ..BatchOptions::default()
    });
    for i in 0..RECORDS {
        let mut value = format!(
            r#"{{"device_id":"dev-{:03}","seq":{i},"temp":21.5,"pad":""#,
            i % 50
        );
        while value.len() < VALUE_BYTES - 2 {
            value.push('x');
        }
        value.push_str("\"}");
        assert_eq!(value.len(), VALUE_BYTES);
        b.push(
            1_700_000_000_000 + i as i64,
            Some(format!("k{}", i % 50).as_bytes()),
            Some(value.as_bytes()),
            &[] as &[RecordHeader],
        )
        .expect("push");
    }
    b.build().expect("build")
}

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn bench_calls(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = PluginHost::open(&PluginsConfig::default(), dir.path()).expect("host");
    smol::block_on(async {
        host.add(
            "part",
            wasm("json-field-partitioner"),
            kv(&[("field", "device_id")]),
            None,
        )
        .await
        .expect("add");
        host.add(
            "enrich",
            wasm("enrich"),
            kv(&[("gateway-id", "gw-1")]),
            None,
        )
        .await
        .expect("add");
        host.add("keep", wasm("misbehave"), kv(&[("mode", "ok")]), None)
            .await
            .expect("add");
        host.add(
            "guard",
            wasm("schema-guard"),
            kv(&[("required", "device_id,temp")]),
            None,
        )
        .await
        .expect("add");
        host.add("pressure", wasm("disk-pressure-retention"), vec![], None)
            .await
            .expect("add");
    });
    let bytes = batch();
    let mut g = c.benchmark_group("plugin_call");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function("partitioner_json_field_1000x100B", |b| {
        b.iter(|| {
            smol::block_on(host.partition("part", "t", 8, bytes.clone(), None)).expect("partition")
        })
    });
    for (name, label) in [
        ("keep", "interceptor_keep_all_1000x100B"),
        ("enrich", "interceptor_enrich_header_1000x100B"),
        ("guard", "interceptor_schema_guard_json_1000x100B"),
    ] {
        let chain = vec![name.to_owned()];
        g.bench_function(label, |b| {
            b.iter(|| {
                smol::block_on(host.intercept("t", &chain, bytes.clone(), false, None))
                    .expect("intercept")
            })
        });
    }
    g.throughput(Throughput::Elements(1));
    let input = RetentionInput {
        topic: "t".into(),
        partition: 0,
        segments: (0..100)
            .map(|i| SegmentSummary {
                base_offset: i * 1000,
                next_offset: (i + 1) * 1000,
                size: 1 << 20,
                max_timestamp: 1_700_000_000_000,
            })
            .collect(),
        log_start_offset: 0,
        high_watermark: 100_000,
        disk_free_bytes: 1 << 30,
        disk_total_bytes: 4 << 30,
        now_ms: 1_700_000_000_000,
        topic_config: eddy_core::config::LogConfig::default()
            .to_props()
            .into_iter()
            .collect(),
    };
    g.bench_function("retention_disk_pressure_100_segments", |b| {
        b.iter(|| host.retention("pressure", &input))
    });
    g.finish();
    for p in host.list(|_| Vec::new()) {
        println!(
            "host stats {}: {} calls, mean {} ns, p99 {} ns",
            p.name, p.calls, p.mean_ns, p.p99_ns
        );
    }
}

struct ProduceRig {
    _dir: tempfile::TempDir,
    _rt: Runtime,
    broker: Arc<Broker>,
}

fn produce_rig() -> ProduceRig {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = NodeConfig {
        data_dir: dir.path().join("data"),
        fsync: FsyncMode::Never,
        ..NodeConfig::default()
    };
    let rt = Runtime::start(2).expect("runtime");
    let broker = Broker::open(&config, rt.handle()).expect("broker");
    smol::block_on(async {
        broker
            .plugin_add("enrich", wasm("enrich"), kv(&[("gateway-id", "gw-1")]))
            .await
            .expect("add");
        broker
            .plugin_add("keep", wasm("misbehave"), kv(&[("mode", "ok")]))
            .await
            .expect("add");
        broker
            .create_topic("plain", 1, 1, vec![])
            .await
            .expect("create");
        broker
            .create_topic("kept", 1, 1, kv(&[("interceptor.plugins", "keep")]))
            .await
            .expect("create");
        broker
            .create_topic("enriched", 1, 1, kv(&[("interceptor.plugins", "enrich")]))
            .await
            .expect("create");
    });
    ProduceRig {
        _dir: dir,
        _rt: rt,
        broker,
    }
}

fn produce(broker: &Arc<Broker>, topic: &str, bytes: &[u8]) {
    smol::block_on(broker.produce(topic, Some(0), Acks::Leader, 0, bytes.to_vec()))
        .expect("produce");
}

fn bench_produce(c: &mut Criterion) {
    let rig = produce_rig();
    let bytes = batch();
    let mut g = c.benchmark_group("produce");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function("no_interceptor_1000x100B", |b| {
        b.iter(|| produce(&rig.broker, "plain", &bytes))
    });
    g.bench_function("enrich_interceptor_1000x100B", |b| {
        b.iter(|| produce(&rig.broker, "enriched", &bytes))
    });
    g.finish();
}

/// Interleaved A/B/C: the same number of batches to each topic, in turn,
/// so machine noise hits every side alike.
fn ratio() {
    let rig = produce_rig();
    let bytes = batch();
    let rounds = 300;
    let topics = ["plain", "kept", "enriched"];
    let mut took = [Duration::ZERO; 3];
    for _ in 0..10 {
        for topic in topics {
            produce(&rig.broker, topic, &bytes);
        }
    }
    for _ in 0..rounds {
        for (topic, took) in topics.iter().zip(&mut took) {
            let t = Instant::now();
            produce(&rig.broker, topic, &bytes);
            *took += t.elapsed();
        }
    }
    let records = (rounds * RECORDS) as f64;
    let rate = |d: Duration| records / d.as_secs_f64();
    let [plain, kept, enriched] = took;
    println!(
        "produce A/B/C ({rounds} x {RECORDS} records of {VALUE_BYTES} B, interleaved): \
         no interceptor {:.0} records/s, keep-all interceptor {:.0} records/s (ratio {:.3}, \
         +{:.0} ns/record), enrich interceptor {:.0} records/s (ratio {:.3}, +{:.0} ns/record)",
        rate(plain),
        rate(kept),
        rate(kept) / rate(plain),
        (kept.as_secs_f64() - plain.as_secs_f64()) * 1e9 / records,
        rate(enriched),
        rate(enriched) / rate(plain),
        (enriched.as_secs_f64() - plain.as_secs_f64()) * 1e9 / records,
    );
}

criterion_group!(benches, bench_calls, bench_produce);

fn main() {
    benches();
    ratio();
    Criterion::default().configure_from_args().final_summary();
}
