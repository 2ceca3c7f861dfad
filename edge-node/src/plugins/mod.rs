//! WebAssembly plugins: partitioners, interceptors and retention policies.
//!
//! A plugin is a component built against the WIT package in `wit/`
//! (`eddy:plugin@0.1.0`) and installed with `eddy plugin add`. The host
//! ([`PluginHost`]) runs every plugin on one wasmtime engine per node:
//! components are compiled once (Cranelift, or Pulley on 32-bit ARM) and the
//! machine code is cached under `<data-dir>/plugins/cache`; instances are
//! kept between calls; every call is bounded (epoch deadline and optional
//! fuel for CPU, a memory limit). Plugins are linked against WASI 0.2, but
//! reach no file, variable or socket of the host unless their config grants
//! it (`wasi.env`, `wasi.dirs`, `wasi.dirs.rw`, `wasi.network`: see
//! `wasi`). A call that fails counts against the plugin; after
//! `failures-before-disable` failures in a row it is disabled (recorded in
//! the registry, so it stays disabled across restarts until `eddy plugin
//! enable` or a new `plugin add`) and its topics fall back to the built-in
//! behaviour.
//!
//! Built without the `plugins` feature (no wasmtime), the same API refuses
//! every plugin with a clear error.

#[cfg(feature = "plugins")]
mod engine;
#[cfg(feature = "plugins")]
mod records;
#[cfg(feature = "plugins")]
mod registry;
#[cfg(feature = "plugins")]
mod stats;
#[cfg(feature = "plugins")]
pub mod wasi;

#[cfg(feature = "plugins")]
pub use engine::PluginHost;

#[cfg(not(feature = "plugins"))]
mod disabled;
#[cfg(not(feature = "plugins"))]
pub use disabled::PluginHost;

/// Period of the epoch ticker that bounds plugin calls, in milliseconds:
/// a call is stopped between `call-timeout-ms` and `call-timeout-ms` plus one
/// tick after it started.
pub const EPOCH_TICK_MS: u64 = 5;

/// The world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// Chooses partitions (`partitioner.plugin`).
    Partitioner,
    /// Sees records before they are stored (`interceptor.plugins`).
    Interceptor,
    /// Chooses old segments to delete (`retention.plugin`).
    Retention,
}

impl PluginKind {
    /// The world's name.
    pub fn name(self) -> &'static str {
        match self {
            PluginKind::Partitioner => "partitioner",
            PluginKind::Interceptor => "interceptor",
            PluginKind::Retention => "retention",
        }
    }

    /// The kind a topic config key expects.
    pub fn for_config_key(key: &str) -> Option<PluginKind> {
        match key {
            "partitioner.plugin" => Some(PluginKind::Partitioner),
            "interceptor.plugins" => Some(PluginKind::Interceptor),
            "retention.plugin" => Some(PluginKind::Retention),
            _ => None,
        }
    }
}

/// A record an interceptor rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Its position in the produce request (0-based, across batches).
    pub index: usize,
    /// The plugin that rejected it.
    pub plugin: String,
    /// The plugin's reason.
    pub reason: String,
}

/// What the interceptor chain made of a produce request.
#[derive(Debug, Default)]
pub struct Intercepted {
    /// The batches to append (rewritten where a plugin changed or dropped
    /// records, the producer's bytes where none did); `None` when no record
    /// is left.
    pub batches: Option<Vec<u8>>,
    /// Records rejected, in order.
    pub rejected: Vec<Rejection>,
    /// The rejected records as one batch for the dead-letter topic (when
    /// asked for), each with headers naming the source and the reason.
    pub dead_letter: Option<Vec<u8>>,
}

/// What the partitioner plugin made of a produce request.
#[derive(Debug)]
pub enum Partitioned {
    /// Batches per partition, in the order of their first record.
    Split(Vec<(u32, Vec<u8>)>),
    /// The plugin is disabled or failed: use the built-in partitioner on the
    /// original batches.
    Fallback(Vec<u8>),
}

/// What a retention plugin is told about one partition.
#[derive(Debug, Clone)]
pub struct RetentionInput {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Segments, oldest first; the last is active.
    pub segments: Vec<eddy_core::retention::SegmentSummary>,
    /// Log start offset.
    pub log_start_offset: u64,
    /// High watermark.
    pub high_watermark: u64,
    /// Free bytes on the data directory's file system.
    pub disk_free_bytes: u64,
    /// Size of that file system.
    pub disk_total_bytes: u64,
    /// Now, ms since 1970.
    pub now_ms: i64,
    /// The topic's effective config.
    pub topic_config: Vec<(String, String)>,
}

/// Free and total bytes of the file system holding `path` (0, 0 if unknown).
pub fn disk_space(path: &std::path::Path) -> (u64, u64) {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt as _;
        let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
            return (0, 0);
        };
        let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
        // SAFETY: `c_path` is a NUL-terminated string and `stat` is writable
        // memory of the right type; statvfs only writes into it.
        let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
        if rc != 0 {
            return (0, 0);
        }
        // SAFETY: statvfs succeeded, so it filled the struct.
        let stat = unsafe { stat.assume_init() };
        // The field types are u32 on some 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let (frsize, bavail, blocks) = (
            u64::from(stat.f_frsize),
            u64::from(stat.f_bavail),
            u64::from(stat.f_blocks),
        );
        (bavail.saturating_mul(frsize), blocks.saturating_mul(frsize))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        (0, 0)
    }
}
