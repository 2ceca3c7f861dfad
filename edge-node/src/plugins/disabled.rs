//! The plugin host of a node built without the `plugins` feature: no
//! wasmtime, so every plugin is refused with a clear error.

use std::path::Path;
use std::sync::Arc;

use eddy_client::protocol::{ErrorCode, PluginInfo};

use super::{Intercepted, Partitioned, PluginKind, RetentionInput};
use crate::broker::BrokerError;
use crate::config::PluginsConfig;

const WHY: &str = "this eddy was built without WebAssembly plugin support (cargo feature \
                   `plugins`); use a build with plugins, or remove the plugin configs";

fn refused() -> BrokerError {
    BrokerError::new(ErrorCode::PluginNotFound, WHY)
}

/// A plugin host that has no engine.
#[derive(Debug)]
pub struct PluginHost;

impl PluginHost {
    /// Opens the host; a registry left by a build with plugins is ignored
    /// with a warning.
    pub fn open(_config: &PluginsConfig, data_dir: &Path) -> Result<Arc<PluginHost>, String> {
        if data_dir.join("plugins").join("registry.json").exists() {
            log::warn!("plugins are installed in {} but {WHY}", data_dir.display());
        }
        Ok(Arc::new(PluginHost))
    }

    /// Refused.
    pub async fn add(
        self: &Arc<Self>,
        _name: &str,
        _wasm: Vec<u8>,
        _config: Vec<(String, String)>,
        _required: Option<PluginKind>,
    ) -> Result<(PluginKind, bool, String), BrokerError> {
        Err(refused())
    }

    /// Refused.
    pub async fn enable(self: &Arc<Self>, _name: &str) -> Result<Option<String>, BrokerError> {
        Err(refused())
    }

    /// Refused.
    pub async fn remove(&self, _name: &str) -> Result<(), BrokerError> {
        Err(refused())
    }

    /// Nothing installed.
    pub fn list(&self, _topics_using: impl Fn(&str) -> Vec<String>) -> Vec<PluginInfo> {
        Vec::new()
    }

    /// Nothing installed.
    pub fn kind(&self, _name: &str) -> Option<PluginKind> {
        None
    }

    /// Every plugin name is refused.
    pub fn check(&self, _name: &str, _kind: PluginKind) -> Result<(), String> {
        Err(WHY.to_owned())
    }

    /// Refused: a topic with interceptors cannot take records here.
    pub async fn intercept(
        self: &Arc<Self>,
        _topic: &str,
        _chain: &[String],
        _batches: Vec<u8>,
        _dead_letter: bool,
        _codec: Option<eddy_core::batch::Compression>,
    ) -> Result<Intercepted, BrokerError> {
        Err(refused())
    }

    /// Always the built-in partitioner.
    pub async fn partition(
        self: &Arc<Self>,
        _name: &str,
        _topic: &str,
        _partitions: u32,
        batches: Vec<u8>,
        _codec: Option<eddy_core::batch::Compression>,
    ) -> Result<Partitioned, BrokerError> {
        Ok(Partitioned::Fallback(batches))
    }

    /// Always the built-in retention.
    pub fn retention(&self, _name: &str, _input: &RetentionInput) -> Option<u32> {
        None
    }
}
