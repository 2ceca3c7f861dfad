//! `cargo xtask sizes BOARD`: what each crate costs in the board's `eddy`.
//!
//! Builds `eddy` for the board with the `min-size` profile but keeping its
//! symbol table (`strip = false`, no debug info), then adds up the sizes of
//! the code and data symbols (`nm --print-size`, demangled) by the crate
//! that each symbol's path starts with — the method of `cargo bloat`. Generic
//! code is counted under the crate that defines the item, not the one that
//! instantiated it. Also reports the stripped size of the same binary.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::board::Board;
use crate::cross::{self, target_dir};
use crate::{Failure, cargo, output_of, run_step};

/// Crates listed before the rest is summed up.
const TOP_CRATES: usize = 20;

/// Builds and prints the per-crate table.
pub fn sizes(root: &Path, board_name: &str) -> Result<(), Failure> {
    let board = Board::load(root, board_name)?;
    cross::ensure_toolchain(&board, false)?;
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args(["--config", cross::CROSS_CONFIG])
        .args(["--config", "profile.min-size.strip=false"])
        .args(["--config", "profile.min-size.debug=0"])
        .args(["build", "--locked", "-p", "eddy-node", "--bin", "eddy"])
        .args(["--profile", "min-size", "--target", board.target()])
        .env("CARGO_TARGET_DIR", target_dir(root).join("sizes"));
    run_step("cargo build (min-size, symbols kept)", cmd)?;
    let bin = target_dir(root)
        .join("sizes")
        .join(board.target())
        .join("min-size")
        .join("eddy");
    let nm = match board.target().split('-').next() {
        Some("aarch64") if !board.is_host() => "aarch64-linux-gnu-nm",
        Some("armv7") => "arm-linux-gnueabihf-nm",
        _ => "nm",
    };
    let mut list = Command::new(nm);
    list.args(["--print-size", "--size-sort", "--demangle", "--radix=d"])
        .arg(&bin);
    let symbols = output_of("nm", list)?;
    let mut by_crate: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 0u64;
    for line in symbols.lines() {
        let mut fields = line.splitn(4, ' ');
        let (Some(_addr), Some(size), Some(kind), Some(name)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !matches!(
            kind,
            "t" | "T" | "r" | "R" | "d" | "D" | "b" | "B" | "W" | "w"
        ) {
            continue;
        }
        let Ok(size) = size.parse::<u64>() else {
            continue;
        };
        total += size;
        *by_crate.entry(crate_of(name)).or_default() += size;
    }
    let stripped = strip_size(&bin, &board)?;
    let mut rows: Vec<(String, u64)> = by_crate.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    println!(
        "\neddy for {} ({}), profile min-size: stripped {} bytes ({:.2} MiB); symbols sum to {} bytes",
        board.table.name,
        board.target(),
        stripped,
        stripped as f64 / 1048576.0,
        total
    );
    println!("{:<28} {:>10} {:>7}", "crate", "bytes", "share");
    let mut rest = 0;
    for (i, (name, bytes)) in rows.iter().enumerate() {
        if i < TOP_CRATES {
            println!(
                "{name:<28} {bytes:>10} {:>6.1}%",
                *bytes as f64 * 100.0 / total.max(1) as f64
            );
        } else {
            rest += bytes;
        }
    }
    println!(
        "{:<28} {rest:>10} {:>6.1}%",
        format!("({} more)", rows.len().saturating_sub(TOP_CRATES)),
        rest as f64 * 100.0 / total.max(1) as f64
    );
    Ok(())
}

/// The crate a demangled symbol belongs to: the first path segment, looking
/// through `<T as Trait>` and `<impl ...>` wrappers; C symbols are `[C]`.
fn crate_of(name: &str) -> String {
    let name = name.trim_start_matches(['<', '&', '*', ' ']);
    let name = name.strip_prefix("mut ").unwrap_or(name);
    let name = name.strip_prefix("dyn ").unwrap_or(name);
    match name.split_once("::") {
        Some((first, _))
            if !first.is_empty()
                && first.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            first.to_owned()
        }
        _ => "[C and others]".to_owned(),
    }
}

fn strip_size(bin: &Path, board: &Board) -> Result<u64, Failure> {
    let strip = match board.target().split('-').next() {
        Some("aarch64") if !board.is_host() => "aarch64-linux-gnu-strip",
        Some("armv7") => "arm-linux-gnueabihf-strip",
        _ => "strip",
    };
    let out = bin.with_extension("stripped");
    let mut cmd = Command::new(strip);
    cmd.arg("-o").arg(&out).arg(bin);
    run_step("strip", cmd)?;
    std::fs::metadata(&out)
        .map(|m| m.len())
        .map_err(|e| Failure::new("strip", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_counted_under_their_crate() {
        assert_eq!(
            crate_of("quinn_proto::connection::Connection::poll"),
            "quinn_proto"
        );
        assert_eq!(
            crate_of("<rustls::client::ClientConfig as core::fmt::Debug>::fmt"),
            "rustls"
        );
        assert_eq!(crate_of("ZSTD_compressBlock"), "[C and others]");
        assert_eq!(
            crate_of("<&mut T as core::fmt::Write>::write_str"),
            "[C and others]"
        );
    }
}
