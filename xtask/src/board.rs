//! Board profiles as the image and smoke verbs see them: the `[board]` table
//! of `boards/<name>.toml` (the node validates the whole file; here only the
//! target and budget matter) and what follows from the target.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Failure;

/// The `[board]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BoardTable {
    /// Short name.
    pub name: String,
    /// Rust target triple.
    pub target: String,
    /// Memory budget in MiB.
    pub memory_budget_mb: u64,
    /// What the board is.
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
struct BoardFile {
    board: BoardTable,
}

/// One board: its profile file and what the target implies.
#[derive(Debug, Clone)]
pub struct Board {
    /// The `[board]` table.
    pub table: BoardTable,
    /// `boards/<name>.toml`.
    pub file: PathBuf,
}

impl Board {
    /// Reads `boards/<name>.toml` under `root`.
    pub fn load(root: &Path, name: &str) -> Result<Board, Failure> {
        let file = root.join("boards").join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&file).map_err(|e| {
            let known = known_boards(root).join(", ");
            Failure::new(
                "board",
                format!("cannot read {}: {e}; known boards: {known}", file.display()),
            )
        })?;
        let parsed: BoardFile = toml::from_str(&text).map_err(|e| {
            Failure::new(
                "board",
                format!("{}: no valid [board] table: {e}", file.display()),
            )
        })?;
        if parsed.board.name != name {
            return Err(Failure::new(
                "board",
                format!(
                    "{} names itself `{}`; the file name and [board] name must match",
                    file.display(),
                    parsed.board.name
                ),
            ));
        }
        Ok(Board {
            table: parsed.board,
            file,
        })
    }

    /// The target triple.
    pub fn target(&self) -> &str {
        &self.table.target
    }

    /// Whether the target is the build machine's own.
    pub fn is_host(&self) -> bool {
        self.target() == host_target()
    }

    /// Debian's architecture name for the target.
    pub fn deb_arch(&self) -> Result<&'static str, Failure> {
        let arch = match self.target().split('-').next() {
            Some("aarch64") => "arm64",
            Some("armv7") => "armhf",
            Some("x86_64") => "amd64",
            _ => {
                return Err(Failure::new(
                    "board",
                    format!("no Debian architecture known for {}", self.target()),
                ));
            }
        };
        Ok(arch)
    }

    /// Whether the binary is static (musl): no libc dependency.
    pub fn is_static(&self) -> bool {
        self.target().contains("-musl")
    }

    /// The Debian packages of the C cross toolchain the target needs (see
    /// [`crate::cross::AARCH64_GNU_PACKAGES`]), none for the host's own.
    pub fn cross_packages(&self) -> &'static [(&'static str, &'static str)] {
        if self.is_host() {
            return &[];
        }
        match self.target().split('-').next() {
            Some("aarch64") => crate::cross::AARCH64_GNU_PACKAGES,
            Some("armv7") => crate::cross::ARMHF_PACKAGES,
            _ => &[],
        }
    }

    /// The qemu-user program and the `-L` sysroot to run the target's
    /// binaries on the build machine (`None` for the host's own target).
    pub fn qemu(&self) -> Option<(&'static str, Option<&'static str>)> {
        if self.is_host() {
            return None;
        }
        let sysroot = |path| if self.is_static() { None } else { Some(path) };
        match self.target().split('-').next() {
            Some("aarch64") => Some(("qemu-aarch64", sysroot("/usr/aarch64-linux-gnu"))),
            Some("armv7") => Some(("qemu-arm", sysroot("/usr/arm-linux-gnueabihf"))),
            _ => None,
        }
    }
}

/// The build machine's target triple (xtask runs on it).
pub fn host_target() -> &'static str {
    env!("XTASK_HOST_TARGET")
}

/// Names of the profiles in `boards/`.
pub fn known_boards(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("boards"))
        .map(|dir| {
            dir.filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".toml").map(str::to_owned)
            })
            .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_path_buf()
    }

    #[test]
    fn every_board_loads_with_a_debian_architecture() {
        let names = known_boards(&root());
        assert!(names.len() >= 4, "{names:?}");
        for name in names {
            let board = Board::load(&root(), &name).expect("loads");
            board.deb_arch().expect("architecture");
        }
        let zero = Board::load(&root(), "rpi-zero2w").expect("loads");
        assert_eq!(zero.deb_arch().expect("arch"), "armhf");
        assert_eq!(
            zero.qemu(),
            Some(("qemu-arm", Some("/usr/arm-linux-gnueabihf")))
        );
        let musl = Board::load(&root(), "generic-arm64-musl").expect("loads");
        assert!(musl.is_static());
        assert_eq!(musl.qemu(), Some(("qemu-aarch64", None)));
    }

    #[test]
    fn unknown_board_lists_the_known_ones() {
        let error = Board::load(&root(), "rpi9").expect_err("unknown");
        assert!(error.detail.contains("rpi4"), "{}", error.detail);
    }
}
