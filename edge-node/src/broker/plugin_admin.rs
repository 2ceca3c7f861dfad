//! Plugin administration on the broker: install, list, enable, remove, and the
//! checks that tie plugins to topic configs (`partitioner.plugin`,
//! `interceptor.plugins`, `retention.plugin`).

use std::sync::Arc;

use eddy_client::protocol::{ErrorCode, PluginInfo};
use eddy_core::config::LogConfig;

use super::{Broker, BrokerError};
use crate::plugins::{PluginHost, PluginKind};

impl Broker {
    /// The node's plugin host.
    pub fn plugins(&self) -> &Arc<PluginHost> {
        &self.plugins
    }

    /// Topics whose configs name plugin `name`.
    pub fn topics_using_plugin(&self, name: &str) -> Vec<String> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|t| t.log_config.plugins().iter().any(|(_, p)| *p == name))
            .map(|t| t.state.name.clone())
            .collect()
    }

    /// Checks that every plugin a topic config names is installed and of the
    /// kind its key expects.
    pub(crate) fn check_topic_plugins(
        &self,
        topic: &str,
        config: &LogConfig,
    ) -> Result<(), BrokerError> {
        for (key, name) in config.plugins() {
            let Some(kind) = PluginKind::for_config_key(key) else {
                continue;
            };
            self.plugins.check(name, kind).map_err(|why| {
                BrokerError::new(
                    ErrorCode::InvalidConfig,
                    format!("topic {topic}: {key}={name}: {why}"),
                )
            })?;
        }
        Ok(())
    }

    /// Installs or replaces a plugin; a replaced plugin's topics use the new
    /// version for every call that starts after this returns.
    pub async fn plugin_add(
        self: &Arc<Self>,
        name: &str,
        wasm: Vec<u8>,
        config: Vec<(String, String)>,
    ) -> Result<(PluginKind, bool, String), BrokerError> {
        self.check_running()?;
        // A topic naming the plugin expects the same world from its new version.
        let required = if self.topics_using_plugin(name).is_empty() {
            None
        } else {
            self.plugins.kind(name)
        };
        self.plugins.add(name, wasm, config, required).await
    }

    /// Every plugin with its status, statistics and the topics using it.
    pub fn plugin_list(&self) -> Vec<PluginInfo> {
        self.plugins.list(|name| self.topics_using_plugin(name))
    }

    /// Enables a plugin that was disabled after repeated failures (or failed
    /// to load); returns why it had been disabled.
    pub async fn plugin_enable(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<Option<String>, BrokerError> {
        self.check_running()?;
        self.plugins.enable(name).await
    }

    /// Uninstalls a plugin no topic names.
    pub async fn plugin_remove(&self, name: &str) -> Result<(), BrokerError> {
        self.check_running()?;
        let users = self.topics_using_plugin(name);
        if !users.is_empty() {
            return Err(BrokerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "plugin {name} is used by topic(s) {}; remove it from their configs first \
                     (`eddy topic alter TOPIC --delete-config KEY`)",
                    users.join(", ")
                ),
            ));
        }
        self.plugins.remove(name).await
    }
}
