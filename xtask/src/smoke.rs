//! `cargo xtask smoke BOARD`: the board's cross-built `eddy` under qemu-user,
//! driven by the host-built `eddy` CLI over QUIC on 127.0.0.1.
//!
//! Starts `eddy serve --board BOARD` under `qemu-aarch64` / `qemu-arm` (with
//! `-L` pointing at the target's libc), installs the `enrich` interceptor
//! plugin (compiled on the emulated node with the board's engine: Cranelift
//! on aarch64, Pulley on armv7), creates a topic that runs it, produces
//! 10,000 records, consumes them back and checks every one (its value, and
//! the header the plugin added), measures idle and peak
//! RSS of the emulated process and produce throughput (emulated numbers:
//! trends only), then stops the node by its PID with SIGTERM and checks that
//! it exited cleanly. The numbers go to `<target-dir>/smoke/<board>.json`.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::board::Board;
use crate::cross::{self, target_dir};
use crate::{Failure, cargo, run_step};

/// Records the smoke test produces and checks.
pub const RECORDS: usize = 10_000;
/// Partitions of the smoke topic.
pub const PARTITIONS: u32 = 3;
/// Longest the emulated node may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest it may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the node sits idle before its RSS is read.
const IDLE_SETTLE: Duration = Duration::from_secs(2);
/// Records in the throughput run (`eddy bench produce`).
const BENCH_RECORDS: u64 = 50_000;
/// Value size of the throughput run, bytes.
const BENCH_RECORD_BYTES: u32 = 100;
/// The interceptor plugin the smoke topic runs.
const PLUGIN: &str = "enrich";
/// The header it adds to every record, and the value it is configured with.
const PLUGIN_HEADER: &str = "gateway-id";

/// The emulated node: killed on drop if still running.
struct Emulated {
    child: Child,
    log: PathBuf,
}

impl Emulated {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Emulated {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A line of /proc/<pid>/status in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

fn listening_addr(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .find_map(|l| l.split("listening on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
}

/// The value of header `key` in a record printed by `eddy consume --format json`.
fn header_value<'a>(record: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    record
        .get("headers")?
        .as_array()?
        .iter()
        .find(|h| h.get("key").and_then(|k| k.as_str()) == Some(key))?
        .get("value")?
        .as_str()
}

fn value(i: usize) -> String {
    format!("smoke-{i:05}-{}", "x".repeat(64))
}

/// Runs the smoke test for `board_name` with a binary built with `profile`.
pub fn smoke(root: &Path, board_name: &str, profile: &str) -> Result<(), Failure> {
    let board = Board::load(root, board_name)?;
    cross::ensure_toolchain(&board, true)?;
    println!(
        "xtask smoke: building eddy for {} (profile {profile}) and for the host",
        board.target()
    );
    let bin = cross::build_eddy(root, &board, profile, None, false)?;
    let mut host_build = cargo();
    host_build
        .current_dir(root)
        .args(["build", "--locked", "-p", "eddy-node", "--bin", "eddy"]);
    run_step("cargo build host eddy", host_build)?;
    let host_eddy = target_dir(root).join("debug").join("eddy");
    println!("xtask smoke: building the example plugins");
    let plugin_wasm = crate::plugins(root)?.join(format!("{PLUGIN}.wasm"));

    let work = target_dir(root).join("smoke").join(board_name);
    if work.exists() {
        fs::remove_dir_all(&work).map_err(|e| io_failure(&work, e))?;
    }
    fs::create_dir_all(&work).map_err(|e| io_failure(&work, e))?;
    let data = work.join("data");
    let log = work.join("node.log");

    let mut cmd = match board.qemu() {
        Some((qemu, sysroot)) => {
            let mut cmd = Command::new(qemu);
            if let Some(sysroot) = sysroot {
                cmd.args(["-L", sysroot]);
            }
            cmd.arg(&bin);
            cmd
        }
        None => Command::new(&bin),
    };
    cmd.args(["serve", "--board", board_name, "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).map_err(|e| io_failure(&log, e))?);
    let emulator = board.qemu().map(|(q, _)| q).unwrap_or("native");
    println!("xtask smoke: starting {} under {emulator}", bin.display());
    let child = cmd
        .spawn()
        .map_err(|e| Failure::new("smoke", format!("cannot start {emulator}: {e}")))?;
    let mut node = Emulated { child, log };

    let started = Instant::now();
    let addr = loop {
        if let Some(addr) = listening_addr(&node.log()) {
            break addr;
        }
        if let Ok(Some(status)) = node.child.try_wait() {
            return Err(Failure::new(
                "smoke",
                format!(
                    "the node exited ({status}) before listening:\n{}",
                    node.log()
                ),
            ));
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(Failure::new(
                "smoke",
                format!(
                    "the node did not listen within {START_TIMEOUT:?}:\n{}",
                    node.log()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let start_ms = started.elapsed().as_millis();
    std::thread::sleep(IDLE_SETTLE);
    let idle_kib = status_kib(node.pid(), "VmRSS").unwrap_or(0);
    println!(
        "xtask smoke: listening on {addr} after {start_ms} ms; idle RSS {idle_kib} KiB (emulated)"
    );

    let ca = data.join("tls").join("ca.pem");
    let client = |args: &[&str]| {
        let mut cmd = Command::new(&host_eddy);
        cmd.args(args)
            .arg("--server")
            .arg(&addr)
            .arg("--ca")
            .arg(&ca)
            .env("RUST_LOG", "warn");
        cmd
    };

    // The interceptor: compiled by the emulated node, with the board's engine.
    let gateway = format!("smoke-{board_name}");
    let plugin_started = Instant::now();
    let wasm_arg = plugin_wasm.to_string_lossy().into_owned();
    let gateway_arg = format!("{PLUGIN_HEADER}={gateway}");
    run_step(
        "eddy plugin add",
        client(&[
            "plugin",
            "add",
            PLUGIN,
            "--wasm",
            &wasm_arg,
            "--config",
            &gateway_arg,
        ]),
    )?;
    let plugin_add_ms = plugin_started.elapsed().as_millis();
    println!("xtask smoke: interceptor {PLUGIN} installed in {plugin_add_ms} ms (emulated)");

    let partitions = PARTITIONS.to_string();
    let interceptors = format!("interceptor.plugins={PLUGIN}");
    run_step(
        "eddy topic create",
        client(&[
            "topic",
            "create",
            "smoke",
            "--partitions",
            &partitions,
            "--config",
            &interceptors,
        ]),
    )?;

    // Produce: one record per line through the host CLI.
    let produce_started = Instant::now();
    let mut produce = client(&["produce", "smoke"]);
    produce.stdin(Stdio::piped());
    let mut producer = produce
        .spawn()
        .map_err(|e| Failure::new("eddy produce", e.to_string()))?;
    {
        let mut stdin = producer
            .stdin
            .take()
            .ok_or_else(|| Failure::new("eddy produce", "no stdin"))?;
        let mut lines = String::new();
        for i in 0..RECORDS {
            lines.push_str(&value(i));
            lines.push('\n');
        }
        stdin
            .write_all(lines.as_bytes())
            .map_err(|e| Failure::new("eddy produce", e.to_string()))?;
    }
    let status = producer
        .wait()
        .map_err(|e| Failure::new("eddy produce", e.to_string()))?;
    if !status.success() {
        return Err(Failure::new(
            "eddy produce",
            format!("{status}; node log:\n{}", node.log()),
        ));
    }
    let produce_secs = produce_started.elapsed().as_secs_f64();

    // Consume and check every record.
    let records = RECORDS.to_string();
    let out = client(&[
        "consume",
        "smoke",
        "--from-beginning",
        "--max-messages",
        &records,
        "--timeout-ms",
        "60000",
        "--format",
        "json",
    ])
    .output()
    .map_err(|e| Failure::new("eddy consume", e.to_string()))?;
    if !out.status.success() {
        return Err(Failure::new(
            "eddy consume",
            format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)),
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut got = Vec::with_capacity(RECORDS);
    let mut unstamped = 0usize;
    for line in stdout.lines() {
        let record: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            Failure::new(
                "smoke check",
                format!("`eddy consume` printed {line:?}: {e}"),
            )
        })?;
        if header_value(&record, PLUGIN_HEADER) != Some(gateway.as_str()) {
            unstamped += 1;
        }
        got.push(
            record
                .get("value")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
        );
    }
    let unique: BTreeSet<&str> = got.iter().map(String::as_str).collect();
    let want: BTreeSet<String> = (0..RECORDS).map(value).collect();
    let missing = want.iter().filter(|v| !unique.contains(v.as_str())).count();
    if got.len() != RECORDS || unique.len() != RECORDS || missing != 0 || unstamped != 0 {
        return Err(Failure::new(
            "smoke check",
            format!(
                "consumed {} records ({} distinct), {missing} of {RECORDS} missing, {unstamped} \
                 without the `{PLUGIN_HEADER}: {gateway}` header the {PLUGIN} interceptor adds",
                got.len(),
                unique.len()
            ),
        ));
    }
    println!(
        "xtask smoke: {RECORDS} records produced through the {PLUGIN} interceptor, consumed and \
         checked"
    );

    // Throughput, with the producer the benchmarks use.
    let bench_records = BENCH_RECORDS.to_string();
    let record_size = BENCH_RECORD_BYTES.to_string();
    let bench = client(&[
        "bench",
        "produce",
        "--topic",
        "bench",
        "--partitions",
        &partitions,
        "--count",
        &bench_records,
        "--record-size",
        &record_size,
        "--json",
    ])
    .output()
    .map_err(|e| Failure::new("eddy bench produce", e.to_string()))?;
    if !bench.status.success() {
        return Err(Failure::new(
            "eddy bench produce",
            format!(
                "{}: {}",
                bench.status,
                String::from_utf8_lossy(&bench.stderr)
            ),
        ));
    }
    let bench_json: serde_json::Value = serde_json::from_slice(&bench.stdout)
        .map_err(|e| Failure::new("eddy bench produce", format!("output is not JSON: {e}")))?;
    let records_per_sec = find_number(&bench_json, "records_per_sec").unwrap_or(0.0);
    let peak_kib = status_kib(node.pid(), "VmHWM").unwrap_or(0);

    // Stop by PID: qemu-user passes SIGTERM on to the emulated program.
    let pid = i32::try_from(node.pid()).map_err(|_| Failure::new("smoke", "pid out of range"))?;
    let mut kill = Command::new("kill");
    kill.args(["-TERM", &pid.to_string()]);
    run_step("kill -TERM", kill)?;
    let stop_started = Instant::now();
    let status = loop {
        match node.child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if stop_started.elapsed() < STOP_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => {
                return Err(Failure::new(
                    "smoke",
                    format!("the node did not stop within {STOP_TIMEOUT:?} of SIGTERM"),
                ));
            }
        }
    };
    if !status.success() {
        return Err(Failure::new(
            "smoke",
            format!("the node exited with {status}:\n{}", node.log()),
        ));
    }

    let cli_rate = RECORDS as f64 / produce_secs;
    let report = serde_json::json!({
        "board": board_name,
        "target": board.target(),
        "profile": profile,
        "emulator": emulator,
        "emulated": board.qemu().is_some(),
        "records_checked": RECORDS,
        "interceptor": PLUGIN,
        "plugin_add_ms": plugin_add_ms,
        "start_ms": start_ms,
        "idle_rss_kib": idle_kib,
        "peak_rss_kib": peak_kib,
        "cli_produce_records_per_sec": cli_rate.round(),
        "bench_produce_records_per_sec": records_per_sec.round(),
        "bench_record_bytes": BENCH_RECORD_BYTES,
        "binary_bytes": fs::metadata(&bin).map(|m| m.len()).unwrap_or(0),
    });
    let json_path = target_dir(root)
        .join("smoke")
        .join(format!("{board_name}.json"));
    fs::write(&json_path, format!("{report:#}\n")).map_err(|e| io_failure(&json_path, e))?;

    let label = if board.qemu().is_some() {
        " (emulated, trend only)"
    } else {
        ""
    };
    println!("\nsmoke {board_name} ({}) passed{label}:", board.target());
    println!("{:<34} {:>12}", "measure", "value");
    println!("{:<34} {:>12}", "start to listening, ms", start_ms);
    println!("{:<34} {:>12}", "idle RSS, KiB", idle_kib);
    println!("{:<34} {:>12}", "peak RSS, KiB", peak_kib);
    println!(
        "{:<34} {:>12.0}",
        "produce (CLI, 1 in flight), rec/s", cli_rate
    );
    println!(
        "{:<34} {:>12.0}",
        "produce (bench, 100 B), rec/s", records_per_sec
    );
    println!("numbers written to {}", json_path.display());
    Ok(())
}

fn find_number(value: &serde_json::Value, key: &str) -> Option<f64> {
    match value {
        serde_json::Value::Object(map) => map
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .or_else(|| map.values().find_map(|v| find_number(v, key))),
        serde_json::Value::Array(items) => items.iter().find_map(|v| find_number(v, key)),
        _ => None,
    }
}

fn io_failure(path: &Path, e: std::io::Error) -> Failure {
    Failure::new("smoke", format!("{}: {e}", path.display()))
}
