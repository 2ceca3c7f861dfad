//! The host interface, whichever world is compiled in. Natively (unit tests)
//! there is no host: logs go to stderr, the clock is the system's, and the
//! config is empty.

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something failed.
    Error,
    /// Something looks wrong.
    Warn,
    /// Normal operation.
    Info,
    /// Details.
    Debug,
    /// Everything.
    Trace,
}

#[cfg(all(target_arch = "wasm32", feature = "interceptor"))]
use crate::interceptor::bindings::eddy::plugin::host as api;
#[cfg(all(
    target_arch = "wasm32",
    not(feature = "interceptor"),
    feature = "partitioner"
))]
use crate::partitioner::bindings::eddy::plugin::host as api;
#[cfg(all(
    target_arch = "wasm32",
    not(feature = "interceptor"),
    not(feature = "partitioner"),
    feature = "retention"
))]
use crate::retention::bindings::eddy::plugin::host as api;

#[cfg(all(
    target_arch = "wasm32",
    any(
        feature = "interceptor",
        feature = "partitioner",
        feature = "retention"
    )
))]
mod imp {
    use super::{Level, api};

    pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
        let level = match level {
            Level::Error => api::Level::Error,
            Level::Warn => api::Level::Warn,
            Level::Info => api::Level::Info,
            Level::Debug => api::Level::Debug,
            Level::Trace => api::Level::Trace,
        };
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        api::log(level, message, &fields);
    }

    pub fn now_ms() -> i64 {
        api::now_ms()
    }

    pub fn config() -> Vec<(String, String)> {
        api::config()
    }
}

#[cfg(not(all(
    target_arch = "wasm32",
    any(
        feature = "interceptor",
        feature = "partitioner",
        feature = "retention"
    )
)))]
mod imp {
    use super::Level;

    pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
        eprintln!("[{level:?}] {message} {fields:?}");
    }

    pub fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }

    pub fn config() -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Writes a structured line to the node's log, tagged with the plugin name.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    imp::log(level, message, fields);
}

/// The node's wall clock in ms since 1970.
pub fn now_ms() -> i64 {
    imp::now_ms()
}

pub(crate) fn config() -> Vec<(String, String)> {
    imp::config()
}
