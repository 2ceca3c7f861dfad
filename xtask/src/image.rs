//! `cargo xtask image BOARD`: a device image per board, as
//! `<target-dir>/images/eddy-<version>-<board>.tar.gz` and `.deb`.
//!
//! Both hold the `eddy` binary (cross-built, stripped), the board profile as
//! `/etc/eddy/eddy.toml`, the example plugins (WebAssembly components, in
//! `/usr/share/eddy/plugins`; the node compiles one for the board's engine
//! when it is added), and a hardened systemd unit running the node as
//! the `eddy` system user with its data in `/var/lib/eddy`. The `.deb` is
//! built by Debian's own `dpkg-deb`; its maintainer scripts create the user.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::board::Board;
use crate::cross::{self, target_dir};
use crate::{Failure, run_step};

/// Where the binary goes on the device.
pub const BIN_PATH: &str = "usr/bin/eddy";
/// Where the board profile goes.
pub const CONFIG_PATH: &str = "etc/eddy/eddy.toml";
/// Where the systemd unit goes.
pub const UNIT_PATH: &str = "lib/systemd/system/eddy.service";
/// Where the example plugins go.
pub const PLUGINS_PATH: &str = "usr/share/eddy/plugins";
/// The test-only plugin images leave out.
const TEST_PLUGINS: &[&str] = &["misbehave"];
/// The node's data directory on the device (the boards' `data-dir`).
pub const DATA_DIR: &str = "/var/lib/eddy";

/// What `image` made.
#[derive(Debug)]
pub struct Image {
    /// The `.tar.gz`.
    pub tarball: PathBuf,
    /// The `.deb`.
    pub deb: PathBuf,
    /// The stripped binary inside both.
    pub binary_bytes: u64,
    /// The plugins inside both: how many, and their bytes.
    pub plugins: (usize, u64),
}

/// Builds the image for `board` with cargo profile `profile`.
pub fn image(root: &Path, board_name: &str, profile: &str) -> Result<Image, Failure> {
    let board = Board::load(root, board_name)?;
    let version = cross::version(root)?;
    let steps = ProgressBar::new(6).with_style(
        ProgressStyle::with_template("{spinner} [{pos}/{len}] {wide_msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    steps.enable_steady_tick(Duration::from_millis(200));

    steps.set_message(format!("toolchain for {}", board.target()));
    steps.suspend(|| cross::ensure_toolchain(&board, false))?;
    steps.suspend(|| cross::ensure_packages(&[("dpkg-deb", "dpkg")]))?;
    steps.inc(1);

    steps.set_message(format!(
        "cargo build eddy --profile {profile} --target {}",
        board.target()
    ));
    let bin = cross::build_eddy(root, &board, profile, None, true)?;
    steps.inc(1);

    steps.set_message("building the example plugins (wasm32-wasip2)");
    let plugin_dir = steps.suspend(|| crate::plugins(root))?;
    steps.inc(1);

    steps.set_message("staging files");
    let images = target_dir(root).join("images");
    let base = format!("eddy-{version}-{board_name}");
    let stage = images.join(format!("{base}.stage"));
    if stage.exists() {
        fs::remove_dir_all(&stage).map_err(|e| io_failure("stage", &stage, e))?;
    }
    let plugins = stage_plugins(&stage, &plugin_dir)?;
    stage_files(&stage, &board, &bin, &version)?;
    let binary_bytes = fs::metadata(stage.join(BIN_PATH))
        .map_err(|e| io_failure("stage", &stage, e))?
        .len();
    steps.inc(1);

    steps.set_message("writing the .tar.gz");
    let tarball = images.join(format!("{base}.tar.gz"));
    write_tarball(&stage, &tarball, &base)?;
    steps.inc(1);

    steps.set_message("writing the .deb (dpkg-deb)");
    let deb = images.join(format!("{base}.deb"));
    let mut cmd = Command::new("dpkg-deb");
    cmd.args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb)
        .stdout(std::process::Stdio::null());
    run_step("dpkg-deb --build", cmd)?;
    steps.inc(1);
    steps.finish_with_message(format!("image for {board_name} done"));

    let image = Image {
        tarball,
        deb,
        binary_bytes,
        plugins,
    };
    print_summary(&board, profile, &image)?;
    Ok(image)
}

fn io_failure(step: &str, path: &Path, e: std::io::Error) -> Failure {
    Failure::new(step, format!("{}: {e}", path.display()))
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), Failure> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| io_failure("stage", dir, e))?;
    }
    fs::write(path, contents).map_err(|e| io_failure("stage", path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io_failure("stage", path, e))
}

/// Copies the example plugins (not the test-only ones) from `plugin_dir` to
/// [`PLUGINS_PATH`]; their count and bytes.
fn stage_plugins(stage: &Path, plugin_dir: &Path) -> Result<(usize, u64), Failure> {
    let (mut count, mut bytes) = (0, 0);
    for name in crate::PLUGINS.iter().filter(|p| !TEST_PLUGINS.contains(p)) {
        let file = format!("{name}.wasm");
        let from = plugin_dir.join(&file);
        let wasm = fs::read(&from).map_err(|e| io_failure("stage", &from, e))?;
        write_file(&stage.join(PLUGINS_PATH).join(&file), &wasm, 0o644)?;
        count += 1;
        bytes += wasm.len() as u64;
    }
    Ok((count, bytes))
}

/// The package tree: files at their device paths, plus `DEBIAN/`.
fn stage_files(stage: &Path, board: &Board, bin: &Path, version: &str) -> Result<(), Failure> {
    let binary = fs::read(bin).map_err(|e| io_failure("stage", bin, e))?;
    write_file(&stage.join(BIN_PATH), &binary, 0o755)?;
    let profile = fs::read(&board.file).map_err(|e| io_failure("stage", &board.file, e))?;
    write_file(&stage.join(CONFIG_PATH), &profile, 0o644)?;
    write_file(&stage.join(UNIT_PATH), unit(board).as_bytes(), 0o644)?;
    let doc = format!(
        "Eddy {version} for {} ({}).\n\n{}\n\nConfig: /{CONFIG_PATH} (the board profile; \
         `eddy serve --help` lists every key). Data: {DATA_DIR}. Clients trust \
         {DATA_DIR}/tls/ca.pem.\nStart: systemctl enable --now eddy\nPlugins: \
         /{PLUGINS_PATH}; for example `eddy plugin add enrich --wasm \
         /{PLUGINS_PATH}/enrich.wasm --config gateway-id=gw-1`, then `eddy topic create \
         readings --config interceptor.plugins=enrich`.\n",
        board.table.name,
        board.target(),
        board.table.description
    );
    write_file(
        &stage.join("usr/share/doc/eddy/README"),
        doc.as_bytes(),
        0o644,
    )?;

    let debian = stage.join("DEBIAN");
    let depends = if board.is_static() {
        "passwd".to_owned()
    } else {
        // Debian 12's cross libc: the binary needs GLIBC 2.34 symbols.
        "libc6 (>= 2.34), passwd".to_owned()
    };
    let installed_kib = dir_size(stage)? / 1024;
    let control = format!(
        "Package: eddy\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: Eddy developers <eddy@example.invalid>\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Section: net\n\
         Priority: optional\n\
         Homepage: https://example.invalid/eddy\n\
         Description: Kafka-style event log broker for edge devices ({board})\n \
         Eddy keeps records durably on a small disk and serves Kafka-style\n \
         produce and fetch over QUIC. Board profile: {board} ({target}).\n",
        arch = board.deb_arch()?,
        board = board.table.name,
        target = board.target(),
    );
    write_file(&debian.join("control"), control.as_bytes(), 0o644)?;
    write_file(
        &debian.join("conffiles"),
        format!("/{CONFIG_PATH}\n").as_bytes(),
        0o644,
    )?;
    write_file(&debian.join("postinst"), POSTINST.as_bytes(), 0o755)?;
    write_file(&debian.join("prerm"), PRERM.as_bytes(), 0o755)?;
    write_file(&debian.join("postrm"), POSTRM.as_bytes(), 0o755)?;
    Ok(())
}

fn dir_size(dir: &Path) -> Result<u64, Failure> {
    let mut total = 0;
    for entry in fs::read_dir(dir).map_err(|e| io_failure("stage", dir, e))? {
        let entry = entry.map_err(|e| io_failure("stage", dir, e))?;
        let meta = entry
            .metadata()
            .map_err(|e| io_failure("stage", &entry.path(), e))?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// The systemd unit: the node as the `eddy` user, everything else read-only.
pub fn unit(board: &Board) -> String {
    let budget = board.table.memory_budget_mb;
    format!(
        "[Unit]\n\
         Description=Eddy event log broker ({name})\n\
         Documentation=file:///usr/share/doc/eddy/README\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         User=eddy\n\
         Group=eddy\n\
         ExecStart=/usr/bin/eddy serve --config /{CONFIG_PATH}\n\
         WorkingDirectory={DATA_DIR}\n\
         StateDirectory=eddy\n\
         StateDirectoryMode=0750\n\
         Environment=RUST_LOG=info\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         # SIGTERM closes every log cleanly; the next start needs no recovery.\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec=30\n\
         LimitNOFILE=65536\n\
         # The board's memory-budget-mb is what the node plans for; the\n\
         # kernel reclaims above it and stops the node at twice it.\n\
         MemoryHigh={budget}M\n\
         MemoryMax={max}M\n\
         UMask=0027\n\
         NoNewPrivileges=yes\n\
         CapabilityBoundingSet=\n\
         AmbientCapabilities=\n\
         ProtectSystem=strict\n\
         ReadWritePaths={DATA_DIR}\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         PrivateDevices=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectKernelLogs=yes\n\
         ProtectControlGroups=yes\n\
         ProtectClock=yes\n\
         ProtectHostname=yes\n\
         ProtectProc=invisible\n\
         RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n\
         RestrictNamespaces=yes\n\
         RestrictRealtime=yes\n\
         RestrictSUIDSGID=yes\n\
         LockPersonality=yes\n\
         RemoveIPC=yes\n\
         SystemCallArchitectures=native\n\
         SystemCallFilter=@system-service\n\
         SystemCallFilter=~@privileged @resources\n\
         # No MemoryDenyWriteExecute: the plugin engine (Cranelift) writes\n\
         # machine code and then makes it executable.\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        name = board.table.name,
        max = budget * 2,
    )
}

const POSTINST: &str = r#"#!/bin/sh
# Creates the `eddy` system user and its data directory, then starts the
# node where systemd runs.
set -e
if [ "$1" = "configure" ]; then
    if ! getent passwd eddy >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/eddy --no-create-home \
            --shell /usr/sbin/nologin --comment "Eddy broker" eddy
    fi
    install -d -o eddy -g eddy -m 0750 /var/lib/eddy
    chown root:eddy /etc/eddy/eddy.toml
    chmod 0640 /etc/eddy/eddy.toml
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
        systemctl enable eddy.service >/dev/null || true
        systemctl restart eddy.service || true
    fi
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = "remove" ]; then
    systemctl stop eddy.service || true
    systemctl disable eddy.service >/dev/null || true
fi
exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
# The data in /var/lib/eddy and the eddy user are kept, even on purge: the
# records are the user's. Remove them by hand if they are no longer wanted.
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
exit 0
"#;

/// The stage tree minus `DEBIAN/`, under `<base>/`, as a `.tar.gz`.
fn write_tarball(stage: &Path, out: &Path, base: &str) -> Result<(), Failure> {
    let file = fs::File::create(out).map_err(|e| io_failure("tar.gz", out, e))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::best());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for top in ["usr", "etc", "lib"] {
        tar.append_dir_all(format!("{base}/{top}"), stage.join(top))
            .map_err(|e| io_failure("tar.gz", &stage.join(top), e))?;
    }
    let install = format!(
        "#!/bin/sh\n# Installs this image on a device without dpkg: run as root.\nset -e\n\
         cd \"$(dirname \"$0\")\"\n\
         install -D -m 0755 {BIN_PATH} /{BIN_PATH}\n\
         [ -e /{CONFIG_PATH} ] || install -D -m 0640 {CONFIG_PATH} /{CONFIG_PATH}\n\
         install -D -m 0644 {UNIT_PATH} /{UNIT_PATH}\n\
         {postinst}",
        postinst = POSTINST
            .lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .replace("if [ \"$1\" = \"configure\" ]; then", "if true; then"),
    );
    let mut header = tar::Header::new_gnu();
    header.set_size(install.len() as u64);
    header.set_mode(0o755);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(
        &mut header,
        format!("{base}/install.sh"),
        install.as_bytes(),
    )
    .map_err(|e| io_failure("tar.gz", out, e))?;
    let gz = tar.into_inner().map_err(|e| io_failure("tar.gz", out, e))?;
    let mut file = gz.finish().map_err(|e| io_failure("tar.gz", out, e))?;
    file.flush().map_err(|e| io_failure("tar.gz", out, e))
}

fn print_summary(board: &Board, profile: &str, image: &Image) -> Result<(), Failure> {
    let size = |path: &Path| {
        fs::metadata(path)
            .map(|m| m.len())
            .map_err(|e| io_failure("summary", path, e))
    };
    let rows = [
        (
            "eddy binary (stripped)",
            image.binary_bytes,
            "usr/bin/eddy".to_owned(),
        ),
        (
            ".tar.gz",
            size(&image.tarball)?,
            image.tarball.display().to_string(),
        ),
        (
            "plugins",
            image.plugins.1,
            format!("{PLUGINS_PATH}/ ({} components)", image.plugins.0),
        ),
        (".deb", size(&image.deb)?, image.deb.display().to_string()),
    ];
    println!(
        "\nimage for {} ({}, profile {profile}):",
        board.table.name,
        board.target()
    );
    println!("{:<24} {:>12} {:>9}  path", "artifact", "bytes", "MiB");
    for (what, bytes, path) in rows {
        println!(
            "{what:<24} {bytes:>12} {:>9.2}  {path}",
            bytes as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}
