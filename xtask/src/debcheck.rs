//! `cargo xtask deb-check BOARD`: proves the board's `.deb` installs where it
//! should. It makes a minimal Debian 12 root with `debootstrap` (cached under
//! `<target-dir>/debroot/`), runs `dpkg -i` in it with `chroot`, and checks
//! the files, the `eddy` user, the data directory and the unit. A package
//! for another architecture is installed with `--force-architecture` (its
//! maintainer scripts are shell, so the user and directories are still made
//! for real). `--inspect-only` (and any machine where a chroot is
//! impossible) checks the package with `dpkg-deb --info/--contents` instead.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::board::Board;
use crate::cross::{self, target_dir};
use crate::image::{BIN_PATH, CONFIG_PATH, DATA_DIR, PLUGINS_PATH, UNIT_PATH};
use crate::{Failure, output_of, run_step};

/// The Debian release of the check root.
const SUITE: &str = "bookworm";
/// Where debootstrap downloads from.
const MIRROR: &str = "http://deb.debian.org/debian";

/// Checks the `.deb` of `board_name` (run `cargo xtask image` first).
pub fn deb_check(root: &Path, board_name: &str, inspect_only: bool) -> Result<(), Failure> {
    let board = Board::load(root, board_name)?;
    let version = cross::version(root)?;
    let deb = target_dir(root)
        .join("images")
        .join(format!("eddy-{version}-{board_name}.deb"));
    if !deb.is_file() {
        return Err(Failure::new(
            "deb-check",
            format!(
                "{} is missing: run `cargo xtask image {board_name}` first",
                deb.display()
            ),
        ));
    }
    inspect(&deb, &board)?;
    if inspect_only {
        return Ok(());
    }
    match install_in_chroot(root, &deb, &board) {
        Ok(()) => Ok(()),
        Err(failure) if failure.step == "chroot unavailable" => {
            println!(
                "xtask deb-check: no Debian root here ({}); the dpkg-deb inspection above is \
                 the check",
                failure.detail
            );
            Ok(())
        }
        Err(failure) => Err(failure),
    }
}

fn dpkg_deb(args: &[&str], deb: &Path) -> Result<String, Failure> {
    let mut cmd = Command::new("dpkg-deb");
    cmd.args(args).arg(deb);
    output_of(&format!("dpkg-deb {}", args.join(" ")), cmd)
}

/// `dpkg-deb --info` and `--contents`: the files, the scripts, the arch.
fn inspect(deb: &Path, board: &Board) -> Result<(), Failure> {
    let info = dpkg_deb(&["--info"], deb)?;
    let contents = dpkg_deb(&["--contents"], deb)?;
    let arch = board.deb_arch()?;
    let mut problems = Vec::new();
    if !info.contains(&format!("Architecture: {arch}")) {
        problems.push(format!("architecture is not {arch}"));
    }
    for script in ["postinst", "prerm", "postrm", "conffiles"] {
        if !info.contains(script) {
            problems.push(format!("no {script}"));
        }
    }
    let enrich = format!("{PLUGINS_PATH}/enrich.wasm");
    for (path, owner) in [
        (BIN_PATH, "root/root"),
        (CONFIG_PATH, "root/root"),
        (UNIT_PATH, "root/root"),
        (enrich.as_str(), "root/root"),
    ] {
        let listed = contents
            .lines()
            .any(|line| line.ends_with(&format!("./{path}")) && line.contains(owner));
        if !listed {
            problems.push(format!("/{path} ({owner}) not in the package"));
        }
    }
    let mut show = Command::new("dpkg-deb");
    show.args(["--info"]).arg(deb).arg("postinst");
    let script = output_of("dpkg-deb --info postinst", show)?;
    if !script.contains("useradd --system") {
        problems.push("postinst does not create the eddy user".to_owned());
    }
    if !problems.is_empty() {
        return Err(Failure::new("deb-check inspect", problems.join("; ")));
    }
    println!("xtask deb-check: {} ({arch}):", deb.display());
    for line in contents.lines().filter(|l| !l.ends_with('/')) {
        println!("  {line}");
    }
    println!(
        "xtask deb-check: control, postinst (creates user eddy), prerm, postrm, conffiles present"
    );
    Ok(())
}

fn unavailable(detail: impl Into<String>) -> Failure {
    Failure::new("chroot unavailable", detail)
}

/// Runs `program args` inside the root.
fn in_root(debroot: &Path, step: &str, args: &[&str]) -> Result<String, Failure> {
    let mut cmd = Command::new("chroot");
    cmd.arg(debroot)
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    output_of(step, cmd)
}

fn install_in_chroot(root: &Path, deb: &Path, board: &Board) -> Result<(), Failure> {
    cross::ensure_packages(&[("debootstrap", "debootstrap")]).map_err(|f| unavailable(f.detail))?;
    let debroot = target_dir(root).join("debroot").join(SUITE);
    if !debroot.join("usr/bin/dpkg").is_file() {
        let _ = fs::remove_dir_all(&debroot);
        fs::create_dir_all(&debroot).map_err(|e| unavailable(e.to_string()))?;
        println!("xtask deb-check: debootstrap --variant=minbase {SUITE} (a few minutes, once)");
        let mut cmd = Command::new("debootstrap");
        cmd.args(["--variant=minbase", SUITE])
            .arg(&debroot)
            .arg(MIRROR)
            .stdout(std::process::Stdio::null());
        run_step("debootstrap", cmd).map_err(|f| unavailable(f.detail))?;
    }
    in_root(&debroot, "chroot test", &["/bin/true"]).map_err(|f| unavailable(f.detail))?;

    // A fresh state for the package each run.
    let _ = in_root(&debroot, "dpkg --purge", &["dpkg", "--purge", "eddy"]);
    fs::copy(deb, debroot.join("tmp/eddy.deb"))
        .map_err(|e| Failure::new("deb-check", format!("copy into the root: {e}")))?;
    let native = board.deb_arch()? == host_deb_arch(&debroot)?;
    let mut args = vec!["dpkg", "-i"];
    if !native {
        args.extend(["--force-architecture", "--force-depends"]);
    }
    args.push("/tmp/eddy.deb");
    let out = in_root(&debroot, "dpkg -i", &args)?;
    println!(
        "xtask deb-check: dpkg -i in a {SUITE} root:\n{}",
        out.trim_end()
    );

    let mut problems = Vec::new();
    let enrich = format!("{PLUGINS_PATH}/enrich.wasm");
    for path in [BIN_PATH, CONFIG_PATH, UNIT_PATH, enrich.as_str()] {
        if !debroot.join(path).is_file() {
            problems.push(format!("/{path} missing"));
        }
    }
    let user = in_root(
        &debroot,
        "getent passwd eddy",
        &["getent", "passwd", "eddy"],
    )
    .unwrap_or_default();
    if !user.contains(&format!(":{DATA_DIR}:")) || !user.contains("nologin") {
        problems.push(format!("user eddy is `{}`", user.trim()));
    }
    let data = in_root(
        &debroot,
        "stat data dir",
        &["stat", "-c", "%U:%G %a", DATA_DIR],
    )
    .unwrap_or_default();
    if data.trim() != "eddy:eddy 750" {
        problems.push(format!("{DATA_DIR} is `{}`", data.trim()));
    }
    let config = in_root(
        &debroot,
        "stat config",
        &["stat", "-c", "%U:%G %a", &format!("/{CONFIG_PATH}")],
    )
    .unwrap_or_default();
    if config.trim() != "root:eddy 640" {
        problems.push(format!("/{CONFIG_PATH} is `{}`", config.trim()));
    }
    let unit = fs::read_to_string(debroot.join(UNIT_PATH)).unwrap_or_default();
    for line in ["User=eddy", "ProtectSystem=strict", "NoNewPrivileges=yes"] {
        if !unit.contains(line) {
            problems.push(format!("unit lacks {line}"));
        }
    }
    let version = if native {
        in_root(
            &debroot,
            "eddy version",
            &[&format!("/{BIN_PATH}"), "version"],
        )?
    } else {
        format!(
            "(not run: {} binary in an {} root)",
            board.deb_arch()?,
            host_deb_arch(&debroot)?
        )
    };
    if !problems.is_empty() {
        return Err(Failure::new("deb-check install", problems.join("; ")));
    }
    println!("xtask deb-check: installed into {}:", debroot.display());
    println!("  user      {}", user.trim());
    println!("  {DATA_DIR} {}", data.trim());
    println!("  /{CONFIG_PATH} {}", config.trim());
    println!("  /{UNIT_PATH} User=eddy, ProtectSystem=strict, NoNewPrivileges=yes");
    println!("  /{BIN_PATH} {}", version.trim());
    Ok(())
}

fn host_deb_arch(debroot: &Path) -> Result<String, Failure> {
    in_root(
        debroot,
        "dpkg --print-architecture",
        &["dpkg", "--print-architecture"],
    )
    .map(|s| s.trim().to_owned())
}
