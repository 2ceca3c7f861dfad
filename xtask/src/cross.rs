//! What cross builds need: rustup targets, Debian packages, and the cargo
//! invocation with `cross/cargo-config.toml`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::board::Board;
use crate::{Failure, cargo, output_of, run_step};

/// The cargo config for cross builds, relative to the workspace root.
pub const CROSS_CONFIG: &str = "cross/cargo-config.toml";

/// Installs the rustup target if it is missing.
pub fn ensure_rustup_target(target: &str) -> Result<(), Failure> {
    let installed = output_of("rustup target list --installed", {
        let mut cmd = Command::new("rustup");
        cmd.args(["target", "list", "--installed"]);
        cmd
    })?;
    if installed.lines().any(|line| line.trim() == target) {
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", target]);
    run_step(&format!("rustup target add {target}"), cmd)
}

/// Whether `program` is on the PATH.
pub fn have_program(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The aarch64 glibc cross toolchain, as `(program or file, package)`: the C
/// compiler and linker, and the C library headers it builds against (ring's
/// C code needs them; with `--no-install-recommends` they do not come with
/// the compiler).
pub const AARCH64_GNU_PACKAGES: &[(&str, &str)] = &[
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    (
        "/usr/aarch64-linux-gnu/include/stdio.h",
        "libc6-dev-arm64-cross",
    ),
];

/// The armv7 hard-float glibc cross toolchain, as for [`AARCH64_GNU_PACKAGES`].
pub const ARMHF_PACKAGES: &[(&str, &str)] = &[
    ("arm-linux-gnueabihf-gcc", "gcc-arm-linux-gnueabihf"),
    (
        "/usr/arm-linux-gnueabihf/include/stdio.h",
        "libc6-dev-armhf-cross",
    ),
];

/// Whether `what` is there: a file, when it is an absolute path (a header a
/// package brings), else a program on the PATH.
fn have(what: &str) -> bool {
    if what.starts_with('/') {
        Path::new(what).is_file()
    } else {
        have_program(what)
    }
}

/// Installs the Debian packages whose programs (or files, given as absolute
/// paths) are missing, each given as `(program, package)`:
/// `apt-get update && apt-get install -y --no-install-recommends`.
pub fn ensure_packages(needed: &[(&str, &str)]) -> Result<(), Failure> {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(program, _)| !have(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !have_program("apt-get") {
        return Err(Failure::new(
            "install packages",
            format!(
                "missing {}: install them with your package manager (Debian: apt-get install {})",
                missing.join(", "),
                missing.join(" ")
            ),
        ));
    }
    println!("xtask: installing Debian packages {}", missing.join(" "));
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    run_step("apt-get update", update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run_step("apt-get install", install)
}

/// Everything a cross build and an emulated run of `board` need.
pub fn ensure_toolchain(board: &Board, emulate: bool) -> Result<(), Failure> {
    ensure_rustup_target(board.target())?;
    let mut needed = board.cross_packages().to_vec();
    if emulate && let Some((qemu, _)) = board.qemu() {
        needed.push((qemu, "qemu-user"));
    }
    ensure_packages(&needed)
}

/// The cargo target directory (as cargo would choose it).
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        })
        .unwrap_or_else(|| root.join("target"))
}

/// Builds `eddy` for the board's target with `profile` and `features`
/// (`None`: the default features); returns the binary's path.
pub fn build_eddy(
    root: &Path,
    board: &Board,
    profile: &str,
    features: Option<&str>,
    quiet: bool,
) -> Result<PathBuf, Failure> {
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args(["--config", CROSS_CONFIG, "build", "--locked"])
        .args(["-p", "eddy-node", "--bin", "eddy"])
        .args(["--profile", profile, "--target", board.target()]);
    if let Some(features) = features {
        cmd.args(["--no-default-features", "--features", features]);
    }
    if quiet {
        cmd.arg("--quiet");
    }
    run_step(&format!("cargo build eddy for {}", board.target()), cmd)?;
    let bin = target_dir(root)
        .join(board.target())
        .join(profile)
        .join("eddy");
    if !bin.is_file() {
        return Err(Failure::new(
            "cargo build",
            format!("built, but {} is missing", bin.display()),
        ));
    }
    Ok(bin)
}

/// The version of the workspace (of `eddy-node`).
pub fn version(root: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(root.join("Cargo.toml"))
        .map_err(|e| Failure::new("version", format!("cannot read Cargo.toml: {e}")))?;
    let manifest: toml::Table =
        toml::from_str(&text).map_err(|e| Failure::new("version", format!("Cargo.toml: {e}")))?;
    manifest
        .get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get("version"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| Failure::new("version", "no workspace.package.version in Cargo.toml"))
}
