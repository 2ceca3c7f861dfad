//! `cargo xtask <verb>`: Eddy's workflows, in Rust instead of shell scripts.
//!
//! - `setup`: install what the other verbs need (rustup targets). Idempotent.
//! - `ci`: everything CI checks, in order, stopping at the first failure.
//! - `plugins`: build the WebAssembly plugins under `plugins/` into
//!   `<target-dir>/plugins/<name>.wasm`.
//! - `bench`: the storage core's and the plugins' benchmarks.
//! - `image BOARD`: a device image (`.tar.gz` and `.deb`) for a board.
//! - `smoke BOARD`: the board's cross-built node under qemu-user, checked
//!   end to end with the host client.
//! - `deb-check BOARD`: installs the board's `.deb` into a Debian root.
//! - `sizes BOARD`: what each crate costs in the board's binary.

mod board;
mod cross;
mod debcheck;
mod image;
mod sizes;
mod smoke;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use clap::{Parser, Subcommand};

/// Targets `setup` installs: the bare-metal ARM target proves that the core's
/// record codec builds without `std`; the boards CI smoke-tests; plugins
/// are built for `wasm32-wasip2`.
const RUSTUP_TARGETS: &[&str] = &[
    NO_STD_TARGET,
    PLUGIN_TARGET,
    "aarch64-unknown-linux-gnu",
    "armv7-unknown-linux-gnueabihf",
];
/// Debian packages `setup` installs besides the cross toolchains
/// (`cross::AARCH64_GNU_PACKAGES`, `cross::ARMHF_PACKAGES`), as (program,
/// package): qemu-user for the smoke tests, dpkg-deb for images.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[("qemu-aarch64", "qemu-user"), ("dpkg-deb", "dpkg")];
/// Boards CI smoke-tests under emulation (aarch64 and armv7).
const CI_SMOKE_BOARDS: &[&str] = &["rpi4", "rpi-zero2w"];
/// Cargo profile of the smoke builds: no LTO, so CI stays fast.
const SMOKE_PROFILE: &str = "smoke";
/// The target WebAssembly plugins are built for.
const PLUGIN_TARGET: &str = "wasm32-wasip2";
/// The cargo profile plugins are built with.
const PLUGIN_PROFILE: &str = "plugin";
/// Every plugin crate under `plugins/` (package name = `.wasm` file name).
/// Each is built on its own: the SDK's world feature must not be unified
/// across plugins, or every world would end up in every component.
const PLUGINS: &[&str] = &[
    "enrich",
    "schema-guard",
    "redact",
    "downsample",
    "json-field-partitioner",
    "disk-pressure-retention",
    "misbehave",
];
/// The target the `no_std` build check uses.
const NO_STD_TARGET: &str = "thumbv7em-none-eabihf";

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Eddy's project workflows")]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Install the rustup targets the build needs (safe to run again).
    Setup,
    /// Run every CI check in order: fmt, clippy, no_std build, plugins, tests.
    Ci,
    /// Build the WebAssembly plugins into <target-dir>/plugins/<name>.wasm.
    Plugins,
    /// Run the storage core's and the plugins' benchmarks; extra arguments go
    /// to the bench binaries.
    Bench {
        /// Passed after `--` to the benchmarks (e.g. a filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build a device image for a board: `<target-dir>/images/eddy-<version>-<board>.tar.gz` and `.deb`.
    Image {
        /// Board name: a file `boards/<BOARD>.toml`.
        board: String,
        /// Cargo profile for the binary (`release`, `min-size`, or `smoke` for a quick check).
        #[arg(long, default_value = "min-size")]
        profile: String,
    },
    /// Run the board's cross-built node under qemu-user and check it end to end.
    Smoke {
        /// Board name: a file `boards/<BOARD>.toml`.
        board: String,
        /// Cargo profile for the cross-built binary.
        #[arg(long, default_value = SMOKE_PROFILE)]
        profile: String,
    },
    /// Show what each crate costs in the board's min-size binary.
    Sizes {
        /// Board name.
        board: String,
    },
    /// Install the board's `.deb` (built by `image`) into a Debian root made
    /// with debootstrap and check the files, the user and the unit.
    DebCheck {
        /// Board name.
        board: String,
        /// Only inspect the package with `dpkg-deb` (no chroot).
        #[arg(long)]
        inspect_only: bool,
    },
}

/// A step that failed: what ran, and how it ended.
#[derive(Debug)]
pub struct Failure {
    step: String,
    detail: String,
}

impl Failure {
    /// A failure of `step`.
    pub fn new(step: &str, detail: impl Into<String>) -> Failure {
        Failure {
            step: step.to_owned(),
            detail: detail.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let result = match cli.verb {
        Verb::Setup => setup(),
        Verb::Ci => setup().and_then(|()| ci(&root)),
        Verb::Plugins => plugins(&root).map(|_| ()),
        Verb::Bench { args } => bench(&root, args),
        Verb::Image { board, profile } => image::image(&root, &board, &profile).map(|_| ()),
        Verb::Smoke { board, profile } => smoke::smoke(&root, &board, &profile),
        Verb::Sizes { board } => sizes::sizes(&root, &board),
        Verb::DebCheck {
            board,
            inspect_only,
        } => debcheck::deb_check(&root, &board, inspect_only),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("xtask: step `{}` failed: {}", failure.step, failure.detail);
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: xtask's manifest sits one level below it.
fn workspace_root() -> PathBuf {
    // `cargo run` says where xtask is now; the path it was built at may be
    // another clone's that shared the target directory (and is gone).
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or(manifest_dir)
}

/// The cargo that runs us (so a `+toolchain` choice carries through).
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn setup() -> Result<(), Failure> {
    let installed = output_of("rustup target list --installed", {
        let mut cmd = Command::new("rustup");
        cmd.args(["target", "list", "--installed"]);
        cmd
    })?;
    for target in RUSTUP_TARGETS {
        if installed.lines().any(|line| line.trim() == *target) {
            println!("xtask setup: target {target} already installed");
            continue;
        }
        let mut cmd = Command::new("rustup");
        cmd.args(["target", "add", target]);
        run_step(&format!("rustup target add {target}"), cmd)?;
    }
    cross::ensure_packages(
        &[
            cross::AARCH64_GNU_PACKAGES,
            cross::ARMHF_PACKAGES,
            DEBIAN_PACKAGES,
        ]
        .concat(),
    )
}

fn ci(root: &Path) -> Result<(), Failure> {
    let steps: [(&str, &[&str]); 5] = [
        ("fmt", &["fmt", "--all", "--", "--check"]),
        (
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
        (
            "no_std build",
            &[
                "build",
                "-p",
                "eddy-core",
                "--no-default-features",
                "--target",
                NO_STD_TARGET,
            ],
        ),
        (
            "node without plugins",
            &["check", "-p", "eddy-node", "--no-default-features"],
        ),
        ("test", &["test", "--workspace"]),
    ];
    let started = Instant::now();
    let mut plugin_dir = None;
    for (name, args) in steps {
        let mut cmd = cargo();
        if name == "test" {
            let step_started = Instant::now();
            println!("xtask ci: [plugins] building {} plugin(s)", PLUGINS.len());
            plugin_dir = Some(plugins(root)?);
            println!(
                "xtask ci: [plugins] ok in {:.1} s",
                step_started.elapsed().as_secs_f64()
            );
        }
        if let Some(dir) = &plugin_dir {
            // The black-box tests load the plugins from here.
            cmd.env("EDDY_PLUGINS_DIR", dir);
        }
        cmd.args(args).current_dir(root);
        let step_started = Instant::now();
        println!("xtask ci: [{name}] cargo {}", args.join(" "));
        run_step(name, cmd)?;
        println!(
            "xtask ci: [{name}] ok in {:.1} s",
            step_started.elapsed().as_secs_f64()
        );
    }
    for board in CI_SMOKE_BOARDS {
        let step_started = Instant::now();
        println!("xtask ci: [smoke {board}] cargo xtask smoke {board}");
        smoke::smoke(root, board, SMOKE_PROFILE)?;
        println!(
            "xtask ci: [smoke {board}] ok in {:.1} s",
            step_started.elapsed().as_secs_f64()
        );
    }
    // The smoke binary packaged as an image, and the package inspected.
    let step_started = Instant::now();
    println!("xtask ci: [image rpi4] cargo xtask image rpi4 --profile {SMOKE_PROFILE}");
    image::image(root, "rpi4", SMOKE_PROFILE)?;
    debcheck::deb_check(root, "rpi4", true)?;
    println!(
        "xtask ci: [image rpi4] ok in {:.1} s",
        step_started.elapsed().as_secs_f64()
    );
    println!(
        "xtask ci: all steps passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The target directory cargo uses for this workspace (honours
/// `CARGO_TARGET_DIR` and config files).
fn target_dir(root: &Path) -> Result<PathBuf, Failure> {
    let mut cmd = cargo();
    cmd.args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root);
    let out = output_of("cargo metadata", cmd)?;
    let meta: serde_json::Value = serde_json::from_str(&out).map_err(|e| Failure {
        step: "cargo metadata".to_owned(),
        detail: format!("unreadable output: {e}"),
    })?;
    meta.get("target_directory")
        .and_then(|v| v.as_str())
        .map(PathBuf::from)
        .ok_or_else(|| Failure {
            step: "cargo metadata".to_owned(),
            detail: "no target_directory in its output".to_owned(),
        })
}

/// Builds every plugin for `wasm32-wasip2` and copies each component to
/// `<target-dir>/plugins/<name>.wasm`; returns that directory.
fn plugins(root: &Path) -> Result<PathBuf, Failure> {
    let target = target_dir(root)?;
    let out_dir = target.join("plugins");
    std::fs::create_dir_all(&out_dir).map_err(|e| Failure {
        step: "plugins".to_owned(),
        detail: format!("cannot create {}: {e}", out_dir.display()),
    })?;
    for name in PLUGINS {
        let mut cmd = cargo();
        cmd.args([
            "build",
            "--quiet",
            "-p",
            name,
            "--target",
            PLUGIN_TARGET,
            "--profile",
            PLUGIN_PROFILE,
        ])
        .current_dir(root);
        run_step(&format!("build plugin {name}"), cmd)?;
        let built = target
            .join(PLUGIN_TARGET)
            .join(PLUGIN_PROFILE)
            .join(format!("{}.wasm", name.replace('-', "_")));
        let dest = out_dir.join(format!("{name}.wasm"));
        std::fs::copy(&built, &dest).map_err(|e| Failure {
            step: format!("build plugin {name}"),
            detail: format!(
                "cannot copy {} to {}: {e} (is the {PLUGIN_TARGET} target installed? run `cargo xtask setup`)",
                built.display(),
                dest.display()
            ),
        })?;
        println!("xtask plugins: {}", dest.display());
    }
    Ok(out_dir)
}

fn bench(root: &Path, args: Vec<OsString>) -> Result<(), Failure> {
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "eddy-core"]).current_dir(root);
    if !args.is_empty() {
        cmd.arg("--").args(&args);
    }
    run_step("bench", cmd)?;
    let dir = plugins(root)?;
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "eddy-node", "--bench", "plugins"])
        .env("EDDY_PLUGINS_DIR", dir)
        .current_dir(root);
    if !args.is_empty() {
        cmd.arg("--").args(&args);
    }
    run_step("bench plugins", cmd)
}

/// Runs `cmd` with inherited stdio; a non-zero exit is a [`Failure`].
pub fn run_step(step: &str, mut cmd: Command) -> Result<(), Failure> {
    let status = cmd.status().map_err(|e| Failure {
        step: step.to_owned(),
        detail: format!("cannot start {:?}: {e}", cmd.get_program()),
    })?;
    if status.success() {
        return Ok(());
    }
    let detail = match status.code() {
        Some(code) => format!("exit code {code}"),
        None => format!("ended by {status}"),
    };
    Err(Failure {
        step: step.to_owned(),
        detail,
    })
}

/// Runs `cmd` and returns its stdout; a non-zero exit is a [`Failure`].
pub fn output_of(step: &str, mut cmd: Command) -> Result<String, Failure> {
    let output = cmd.output().map_err(|e| Failure {
        step: step.to_owned(),
        detail: format!("cannot start {:?}: {e}", cmd.get_program()),
    })?;
    if !output.status.success() {
        return Err(Failure {
            step: step.to_owned(),
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
