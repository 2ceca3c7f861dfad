//! Helpers for Eddy's black-box tests, which start real `eddy` processes
//! (Unix only: they stop them with signals). The tests live in `tests/`.
//!
//! The `eddy` binary is built once per test process with
//! `cargo build -p eddy-node --bin eddy`, into the target directory and
//! profile of the running test executable. (`cargo test --workspace` does not
//! build it: cargo builds a package's binaries only for that package's own
//! integration tests.) When it is fresh this costs well under a second. Set
//! `EDDY_BIN` to use a given binary instead.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often [`wait_until`] and [`EddyProcess::wait_timeout`] look again.
const POLL_INTERVAL_MS: u64 = 10;

/// The path of the `eddy` binary, built (or found up to date) once per test
/// process.
///
/// # Panics
///
/// If the binary cannot be found or built: no test can run without it.
pub fn eddy_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(locate_or_build_eddy)
}

fn locate_or_build_eddy() -> PathBuf {
    if let Some(path) = std::env::var_os("EDDY_BIN") {
        return PathBuf::from(path);
    }
    // Test executables live in <target-dir>[/<triple>]/<profile>/deps/, and
    // binaries one level up. Cargo marks <target-dir> with CACHEDIR.TAG.
    let exe = std::env::current_exe().expect("path of the test executable");
    let mut profile_dir = exe.parent().expect("test executable has a directory");
    if profile_dir.ends_with("deps") {
        profile_dir = profile_dir.parent().expect("deps/ has a parent");
    }
    let bin = profile_dir.join(format!("eddy{}", std::env::consts::EXE_SUFFIX));

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", "eddy-node", "--bin", "eddy"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let target_dir = profile_dir
        .ancestors()
        .skip(1)
        .take(2)
        .find(|dir| dir.join("CACHEDIR.TAG").is_file());
    if let Some(target_dir) = target_dir {
        build.arg("--target-dir").arg(target_dir);
        let triple_dir = profile_dir.parent().filter(|dir| *dir != target_dir);
        if let Some(triple) = triple_dir.and_then(|dir| dir.file_name()) {
            build.arg("--target").arg(triple);
        }
    }
    match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => {}
        Some(profile) => {
            build.args(["--profile", profile]);
        }
    }
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("cannot run `{build:?}`: {e}"));
    assert!(status.success(), "`{build:?}` failed: {status}");
    assert!(
        bin.is_file(),
        "built eddy but it is not at {}; set EDDY_BIN",
        bin.display()
    );
    bin
}

/// The WebAssembly plugin `name` (`plugins/<name>`), built for
/// `wasm32-wasip2`: from `EDDY_PLUGINS_DIR` when set (`cargo xtask ci` sets
/// it), else built once per test process with `cargo xtask plugins` into
/// the test's own target directory.
///
/// # Panics
///
/// If the plugins cannot be built (e.g. the `wasm32-wasip2` target is
/// missing: run `cargo xtask setup`).
pub fn plugin_wasm(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("EDDY_PLUGINS_DIR") {
            return PathBuf::from(dir);
        }
        let exe = std::env::current_exe().expect("path of the test executable");
        let target_dir = exe
            .ancestors()
            .find(|dir| dir.join("CACHEDIR.TAG").is_file())
            .map(Path::to_path_buf);
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["run", "--quiet", "-p", "xtask", "--", "plugins"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if let Some(target_dir) = &target_dir {
            build.env("CARGO_TARGET_DIR", target_dir);
        }
        let status = build
            .status()
            .unwrap_or_else(|e| panic!("cannot run `{build:?}`: {e}"));
        assert!(
            status.success(),
            "`{build:?}` failed: {status} (is wasm32-wasip2 installed? run `cargo xtask setup`)"
        );
        target_dir
            .expect("the test runs inside a cargo target directory")
            .join("plugins")
    });
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.is_file(), "no plugin at {}", path.display());
    path
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it
/// held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
}

/// A running `eddy` process. Dropping it kills the process if it is still
/// running, so a failing test leaves nothing behind.
#[derive(Debug)]
pub struct EddyProcess {
    child: Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl EddyProcess {
    /// Starts `eddy` with `args`. Its stdout and stderr go to files in
    /// `output_dir`; its log level is `info`.
    pub fn start<I, S>(args: I, output_dir: &Path) -> io::Result<EddyProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        EddyProcess::start_with_env(args, output_dir, &[])
    }

    /// Like [`EddyProcess::start`], with extra environment variables.
    pub fn start_with_env<I, S>(
        args: I,
        output_dir: &Path,
        envs: &[(&str, &str)],
    ) -> io::Result<EddyProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let stdout_path = output_dir.join("eddy.stdout");
        let stderr_path = output_dir.join("eddy.stderr");
        let child = Command::new(eddy_bin())
            .args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path)?)
            .stderr(File::create(&stderr_path)?)
            .spawn()?;
        Ok(EddyProcess {
            child,
            stdout_path,
            stderr_path,
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        let pid = libc::pid_t::try_from(self.id())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        // The pid is our child, not yet reaped (we hold it), so it cannot
        // name another process.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still
    /// running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }

    /// What the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// What the process wrote to stderr so far (its log goes there).
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }
}

impl Drop for EddyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Best effort: there is nothing useful to do if killing fails.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_lossy(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// CPU time (user + system) process `pid` has used so far, from
/// `/proc/PID/stat` (clock ticks, usually 10 ms); `None` where that cannot be
/// read (the process is gone, or this is not Linux).
pub fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count
    // fields from after its closing parenthesis, where field 3 starts.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf(3) takes an integer and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
    Some(Duration::from_nanos(
        (utime + stime).saturating_mul(1_000_000_000) / ticks,
    ))
}

/// A node started for a test: the process, its data directory and its address.
#[derive(Debug)]
pub struct Node {
    /// The running process.
    pub process: EddyProcess,
    /// Its `--data-dir`.
    pub data_dir: PathBuf,
    /// The UDP address it listens on.
    pub addr: std::net::SocketAddr,
}

/// How long a node may take to start listening.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);

impl Node {
    /// Runs `eddy ARGS --server ADDR --ca CA` against this node; returns
    /// whether it exited 0, its stdout and its stderr.
    ///
    /// # Panics
    ///
    /// If `eddy` cannot be run or the data directory is not UTF-8.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let ca = self.data_dir.join("tls").join("ca.pem");
        let out = std::process::Command::new(eddy_bin())
            .args(args)
            .args([
                "--server",
                &self.addr.to_string(),
                "--ca",
                ca.to_str().expect("utf-8 path"),
            ])
            .output()
            .expect("run eddy");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts `eddy serve` on a free loopback port with `data_dir` and `extra` flags,
    /// and waits (bounded) for its `listening on ADDR` log line.
    ///
    /// # Panics
    ///
    /// If it does not start listening in time (its log is in the message).
    pub fn start(data_dir: &Path, output_dir: &Path, extra: &[&str]) -> Node {
        Node::start_with_env(data_dir, output_dir, extra, &[])
    }

    /// Like [`Node::start`], with extra environment variables for the node.
    pub fn start_with_env(
        data_dir: &Path,
        output_dir: &Path,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Node {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = EddyProcess::start_with_env(&args, output_dir, envs).expect("start eddy");
        let mut addr = None;
        let started = wait_until(NODE_START_TIMEOUT, || {
            addr = listening_addr(&process.stderr());
            addr.is_some()
        });
        let addr = match (started, addr) {
            (true, Some(addr)) => addr,
            _ => panic!("eddy did not start listening:\n{}", process.stderr()),
        };
        Node {
            process,
            data_dir: data_dir.to_path_buf(),
            addr,
        }
    }

    /// A client for this node, trusting its CA.
    pub fn client(&self) -> eddy_client::Client {
        eddy_client::Client::new(self.client_options()).expect("client")
    }

    /// Client options for this node, trusting its CA.
    pub fn client_options(&self) -> eddy_client::ClientOptions {
        eddy_client::ClientOptions::new(self.addr.to_string())
            .with_ca_file(self.data_dir.join("tls").join("ca.pem"))
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn stop(mut self) -> (ExitStatus, String) {
        self.process.signal(libc::SIGTERM).expect("SIGTERM");
        let status = self
            .process
            .wait_timeout(Duration::from_secs(30))
            .expect("wait")
            .unwrap_or_else(|| panic!("eddy did not stop on SIGTERM:\n{}", self.process.stderr()));
        let log = self.process.stderr();
        (status, log)
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(mut self) -> String {
        self.process.signal(libc::SIGKILL).expect("SIGKILL");
        let _ = self.process.wait_timeout(Duration::from_secs(30));
        self.process.stderr()
    }
}

/// The address in the last `listening on ADDR` line of a node's log.
pub fn listening_addr(log: &str) -> Option<std::net::SocketAddr> {
    log.lines()
        .rev()
        .find_map(|l| l.split("listening on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
}

/// Free UDP ports on 127.0.0.1 (bound and released; another process could
/// take one in between, which the start-up check would then report).
pub fn free_udp_ports(count: usize) -> Vec<u16> {
    let sockets: Vec<std::net::UdpSocket> = (0..count)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().expect("local address").port())
        .collect()
}

/// One `acks=1` produce request of one batch holding `records` (key,
/// value), sent as is to `client`'s own node: no partitioner of the
/// client's, no leader lookup, no retry. `partition` `None` lets the node's
/// partitioner choose.
pub async fn raw_produce(
    client: &eddy_client::Client,
    topic: &str,
    partition: Option<u32>,
    records: &[(Option<&str>, &str)],
    compression: eddy_core::batch::Compression,
) -> Result<eddy_client::protocol::Response, eddy_client::ClientError> {
    use eddy_client::protocol::{Acks, PROTOCOL_VERSION, Request, RequestHeader};
    let mut b = eddy_core::batch::BatchBuilder::new(eddy_core::batch::BatchOptions {
        compression,
        ..eddy_core::batch::BatchOptions::default()
    });
    for (key, value) in records {
        b.push(
            1_700_000_000_000,
            key.map(str::as_bytes),
            Some(value.as_bytes()),
            &[],
        )
        .expect("push a record");
    }
    let batch = b.build().expect("build the batch");
    let header = RequestHeader {
        version: PROTOCOL_VERSION,
        request: Request::Produce {
            topic: topic.to_owned(),
            partition,
            acks: Acks::Leader,
            timeout_ms: 0,
        },
    };
    client.request(header, &batch).await.map(|(r, _)| r)
}

/// How long a cluster may take to elect a controller and see every node.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A cluster of `eddy` nodes on 127.0.0.1 sharing one CA, for tests. Node
/// `i` has node id `i`. Nodes can be killed, paused and restarted; dropping
/// the cluster kills every node still running.
#[derive(Debug)]
pub struct TestCluster {
    dir: PathBuf,
    ports: Vec<u16>,
    extra: Vec<String>,
    /// The running nodes (`None`: killed or stopped).
    pub nodes: Vec<Option<Node>>,
    runs: Vec<u32>,
    paused: Vec<bool>,
}

impl TestCluster {
    /// Makes the shared CA and starts `count` nodes with `extra` flags.
    pub fn start(dir: &Path, count: usize, extra: &[&str]) -> TestCluster {
        let status = Command::new(eddy_bin())
            .args(["cluster", "init-ca", "--cert"])
            .arg(dir.join("ca.pem"))
            .arg("--key")
            .arg(dir.join("ca.key"))
            .status()
            .expect("run eddy cluster init-ca");
        assert!(status.success(), "init-ca failed");
        let mut cluster = TestCluster {
            dir: dir.to_path_buf(),
            ports: free_udp_ports(count),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            nodes: (0..count).map(|_| None).collect(),
            runs: vec![0; count],
            paused: vec![false; count],
        };
        for i in 0..count {
            cluster.start_node(i);
        }
        cluster
    }

    /// The CA file clients trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.ports[i]))
    }

    /// Node `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{i}"))
    }

    /// Starts (or restarts) node `i`.
    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        let voters: Vec<String> = self
            .ports
            .iter()
            .enumerate()
            .map(|(id, port)| format!("{id}@127.0.0.1:{port}"))
            .collect();
        self.runs[i] += 1;
        let out = self.dir.join(format!("node{i}-run{}", self.runs[i]));
        std::fs::create_dir_all(&out).expect("output dir");
        let data = self.data_dir(i);
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen".into(),
            self.addr(i).to_string(),
            "--node-id".into(),
            i.to_string(),
            "--controller-quorum-voters".into(),
            voters.join(","),
            "--tls-ca".into(),
            self.ca_file().display().to_string(),
            "--tls-ca-key".into(),
            self.dir.join("ca.key").display().to_string(),
        ];
        args.extend(self.extra.iter().cloned());
        let process = EddyProcess::start(&args, &out).expect("start eddy");
        let started = wait_until(NODE_START_TIMEOUT, || {
            listening_addr(&process.stderr()).is_some()
        });
        assert!(started, "node {i} did not start:\n{}", process.stderr());
        self.nodes[i] = Some(Node {
            process,
            data_dir: data,
            addr: self.addr(i),
        });
        self.paused[i] = false;
    }

    /// Kills node `i` with SIGKILL.
    pub fn kill9(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            if self.paused[i] {
                let _ = node.process.signal(libc::SIGCONT);
            }
            node.kill9();
        }
        self.paused[i] = false;
    }

    /// Stops node `i` with SIGTERM (bounded wait).
    pub fn stop(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            if self.paused[i] {
                let _ = node.process.signal(libc::SIGCONT);
            }
            node.stop();
        }
        self.paused[i] = false;
    }

    /// Pauses node `i` with SIGSTOP.
    pub fn pause(&mut self, i: usize) {
        if let Some(node) = &self.nodes[i] {
            node.process.signal(libc::SIGSTOP).expect("SIGSTOP");
            self.paused[i] = true;
        }
    }

    /// Resumes node `i` with SIGCONT.
    pub fn resume(&mut self, i: usize) {
        if let Some(node) = &self.nodes[i] {
            node.process.signal(libc::SIGCONT).expect("SIGCONT");
            self.paused[i] = false;
        }
    }

    /// Whether node `i` runs and is not paused.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].is_some() && !self.paused[i]
    }

    /// Client options for node `i`, trusting the shared CA.
    pub fn client_options(&self, i: usize) -> eddy_client::ClientOptions {
        eddy_client::ClientOptions {
            server_name: "127.0.0.1".to_owned(),
            request_timeout_ms: 5000,
            connect_timeout_ms: 2000,
            ..eddy_client::ClientOptions::new(self.addr(i).to_string()).with_ca_file(self.ca_file())
        }
    }

    /// A client bootstrapped at node `i`.
    pub fn client(&self, i: usize) -> eddy_client::Client {
        eddy_client::Client::new(self.client_options(i)).expect("client")
    }

    /// A client bootstrapped at the first node that is up.
    pub fn any_client(&self) -> eddy_client::Client {
        let i = (0..self.nodes.len())
            .find(|i| self.is_up(*i))
            .expect("a node is up");
        self.client(i)
    }

    /// Waits (bounded) until a controller is elected and `alive` nodes are
    /// alive in the metadata, as every running node sees it; panics with the
    /// nodes' logs otherwise. Asking one node is not enough: a node just
    /// restarted answers nothing until it has caught up with the controller,
    /// and one resumed from SIGSTOP answers from the metadata it had when it
    /// stopped (where it was itself alive) until it hears from the controller.
    pub fn wait_ready(&self, alive: usize) {
        let ok = wait_until(CLUSTER_READY_TIMEOUT, || {
            (0..self.nodes.len()).filter(|i| self.is_up(*i)).all(|i| {
                smol::block_on(async {
                    let client = self.client(i);
                    let ready = matches!(
                        client.cluster_status().await,
                        Ok((Some(_), nodes)) if nodes.iter().filter(|n| n.alive).count() >= alive
                    );
                    client.close().await;
                    ready
                })
            })
        });
        assert!(ok, "cluster not ready:\n{}", self.logs());
    }

    /// Every running node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(node) = node {
                let log = node.process.stderr();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                out.push_str(&format!("--- node {i} ---\n"));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if self.paused[i]
                && let Some(node) = &self.nodes[i]
            {
                let _ = node.process.signal(libc::SIGCONT);
            }
            // Each Node's EddyProcess kills its process on drop.
            self.nodes[i] = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_while_this_process_works() {
        let before = process_cpu_time(std::process::id()).expect("read /proc/self/stat");
        let started = Instant::now();
        let mut x = 0u64;
        // Work until the clock-tick counter moves (bounded at 5 s).
        while started.elapsed() < Duration::from_secs(5) {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            if process_cpu_time(std::process::id()).is_some_and(|now| now > before) {
                return;
            }
        }
        panic!("no CPU time counted after 5 s of work ({x})");
    }

    #[test]
    fn cpu_time_of_no_process_is_none() {
        // Above the kernel's pid limit (at most 2^22).
        assert_eq!(process_cpu_time(u32::MAX), None);
    }
}
