//! The `retention` world: decides how many old segments of a partition to
//! delete.

#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "retention",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_retention",
    });
}

pub use bindings::eddy::plugin::retention_types::{PartitionState, Segment};

/// A retention policy, asked once per partition at every retention check.
pub trait Retention: Sized + 'static {
    /// Builds the plugin from its config (once per instance).
    fn new(config: crate::Config) -> Result<Self, String>;

    /// How many of the oldest segments to delete. The node never deletes the
    /// active segment or uncommitted data, and still applies the topic's own
    /// limits.
    fn segments_to_delete(&mut self, state: &PartitionState) -> Result<u32, String>;
}

impl PartitionState {
    /// A config value of the topic, by its Kafka name.
    pub fn topic_config(&self, key: &str) -> Option<&str> {
        self.topic_config
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Share of the disk in use, 0.0 to 1.0 (0 when the size is unknown).
    pub fn disk_used_ratio(&self) -> f64 {
        if self.disk_total_bytes == 0 {
            return 0.0;
        }
        1.0 - self.disk_free_bytes as f64 / self.disk_total_bytes as f64
    }
}
