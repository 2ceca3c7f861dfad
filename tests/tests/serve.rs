//! `eddy serve` as a process: start-up, clean stop on SIGTERM, config errors.

use std::time::Duration;

use eddy_tests::{EddyProcess, wait_until};

/// Upper bound for a node to create its data directory.
const STARTUP_TIMEOUT_MS: u64 = 10_000;
/// Upper bound for a node to exit after SIGTERM, or after a bad config.
const EXIT_TIMEOUT_MS: u64 = 10_000;

#[test]
fn serve_creates_the_data_dir_and_exits_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("data");
    let mut node = EddyProcess::start(
        [
            "serve".as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ],
        tmp.path(),
    )
    .expect("start eddy");

    let started = wait_until(Duration::from_millis(STARTUP_TIMEOUT_MS), || {
        data_dir.is_dir() || matches!(node.try_wait(), Ok(Some(_)))
    });
    assert!(
        started && data_dir.is_dir(),
        "eddy created no data dir (waited up to {STARTUP_TIMEOUT_MS} ms; exit: {:?}); stderr:\n{}",
        node.try_wait(),
        node.stderr()
    );

    node.signal(libc::SIGTERM).expect("send SIGTERM");
    let status = node
        .wait_timeout(Duration::from_millis(EXIT_TIMEOUT_MS))
        .expect("wait for eddy");
    let stderr = node.stderr();
    let status = status.unwrap_or_else(|| {
        panic!("eddy still running {EXIT_TIMEOUT_MS} ms after SIGTERM; stderr:\n{stderr}")
    });
    assert!(
        status.success(),
        "eddy exited with {status}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("SIGTERM"),
        "stop not logged; stderr:\n{stderr}"
    );
}

#[test]
fn serve_rejects_a_config_with_a_misspelt_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("bad.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nfsnyc = \"always\"\n")
        .expect("write config");
    let data_dir = tmp.path().join("data");
    let mut node = EddyProcess::start(
        [
            "serve".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
        ],
        tmp.path(),
    )
    .expect("start eddy");

    let status = node
        .wait_timeout(Duration::from_millis(EXIT_TIMEOUT_MS))
        .expect("wait for eddy");
    let stderr = node.stderr();
    let status = status.unwrap_or_else(|| {
        panic!("eddy still running {EXIT_TIMEOUT_MS} ms after a bad config; stderr:\n{stderr}")
    });
    assert!(!status.success(), "bad config accepted; stderr:\n{stderr}");
    assert!(stderr.contains("fsnyc"), "key not named; stderr:\n{stderr}");
    assert!(
        stderr.contains(&config.display().to_string()),
        "file not named; stderr:\n{stderr}"
    );
    assert!(!data_dir.exists(), "node went on despite the bad config");
}
