//! The installed plugins, on disk under `<data-dir>/plugins/`:
//!
//! - `registry.json`: name, kind, component hash and config of each plugin,
//!   and whether (and why) it was disabled after repeated failures;
//! - `wasm/<sha256>.wasm`: the components as installed;
//! - `cache/<sha256>-<engine>.cwasm`: compiled code (see the engine).
//!
//! Every change writes a temp file, fsyncs it, renames it into place and
//! fsyncs the directory, so a crash leaves the old or the new registry.
//! Components no entry names are removed after each change.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::PluginKind;

/// Most plugins one node holds.
pub const PLUGINS_MAX: usize = 256;

/// One installed plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub kind: PluginKind,
    pub sha256: String,
    pub wasm_bytes: u64,
    pub config: Vec<(String, String)>,
    pub added_ms: i64,
    /// Set when the plugin was disabled after repeated failures; cleared by
    /// `plugin enable` or a new `plugin add`. Absent in registries written
    /// before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<Disabled>,
}

impl Entry {
    /// Whether `other` is the same installed version (ignoring whether it
    /// is disabled).
    pub fn same_version(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.sha256 == other.sha256
            && self.config == other.config
            && self.added_ms == other.added_ms
    }
}

/// Why and since when a plugin is disabled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disabled {
    pub reason: String,
    pub since_ms: i64,
}

/// The registry file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    pub version: u32,
    pub plugins: BTreeMap<String, Entry>,
}

/// Paths of the plugin directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Layout {
        Layout {
            root: data_dir.join("plugins"),
        }
    }

    pub fn registry(&self) -> PathBuf {
        self.root.join("registry.json")
    }

    pub fn wasm_dir(&self) -> PathBuf {
        self.root.join("wasm")
    }

    pub fn wasm(&self, sha256: &str) -> PathBuf {
        self.wasm_dir().join(format!("{sha256}.wasm"))
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    pub fn create_dirs(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.wasm_dir())?;
        std::fs::create_dir_all(self.cache_dir())
    }

    /// Reads the registry (empty if there is none yet).
    pub fn load(&self) -> Result<RegistryFile, String> {
        let path = self.registry();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{} is damaged ({e}); move it aside to start without plugins",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RegistryFile {
                version: 1,
                plugins: BTreeMap::new(),
            }),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes the registry durably.
    pub fn save(&self, file: &RegistryFile) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?;
        write_durably(&self.registry(), &bytes)
    }

    /// Stores a component durably under its hash.
    pub fn store_wasm(&self, sha256: &str, wasm: &[u8]) -> std::io::Result<()> {
        let path = self.wasm(sha256);
        if path.is_file() {
            return Ok(());
        }
        write_durably(&path, wasm)
    }

    /// Removes components and cached code no entry names.
    pub fn remove_unused(&self, file: &RegistryFile) {
        let used: Vec<&str> = file.plugins.values().map(|e| e.sha256.as_str()).collect();
        for dir in [self.wasm_dir(), self.cache_dir()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let Some(sha) = name
                    .strip_suffix(".wasm")
                    .or_else(|| name.split_once('-').map(|(sha, _)| sha))
                else {
                    continue;
                };
                if sha.len() == 64
                    && !used.contains(&sha)
                    && let Err(e) = std::fs::remove_file(entry.path())
                {
                    log::warn!("cannot remove unused {}: {e}", entry.path().display());
                }
            }
        }
    }
}

/// Writes `bytes` to `path` through a temp file, fsync and rename, then
/// fsyncs the directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path has no directory"))?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_removes_unused_files() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.create_dirs().unwrap();
        assert!(layout.load().unwrap().plugins.is_empty());
        let a = sha256_hex(b"a");
        let b = sha256_hex(b"b");
        layout.store_wasm(&a, b"a").unwrap();
        layout.store_wasm(&b, b"b").unwrap();
        std::fs::write(layout.cache_dir().join(format!("{b}-123.cwasm")), b"x").unwrap();
        let mut file = RegistryFile {
            version: 1,
            ..RegistryFile::default()
        };
        file.plugins.insert(
            "p".into(),
            Entry {
                kind: PluginKind::Interceptor,
                sha256: a.clone(),
                wasm_bytes: 1,
                config: vec![("k".into(), "v".into())],
                added_ms: 5,
                disabled: None,
            },
        );
        layout.save(&file).unwrap();
        assert_eq!(layout.load().unwrap(), file);
        // Not disabled: the file has no `disabled` key, as before it existed.
        let text = std::fs::read_to_string(layout.registry()).unwrap();
        assert!(!text.contains("disabled"), "{text}");
        let mut disabled = file.clone();
        let entry = disabled.plugins.get_mut("p").unwrap();
        entry.disabled = Some(Disabled {
            reason: "3 failures in a row".into(),
            since_ms: 9,
        });
        assert!(entry.same_version(&file.plugins["p"]));
        layout.save(&disabled).unwrap();
        assert_eq!(layout.load().unwrap(), disabled);
        layout.save(&file).unwrap();
        layout.remove_unused(&file);
        assert!(layout.wasm(&a).is_file());
        assert!(!layout.wasm(&b).exists());
        assert!(!layout.cache_dir().join(format!("{b}-123.cwasm")).exists());
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
