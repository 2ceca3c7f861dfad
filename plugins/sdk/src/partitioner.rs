//! The `partitioner` world: chooses a partition for each record of a produce
//! request that did not name one.

#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "partitioner",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_partitioner",
    });
}

pub use bindings::eddy::plugin::types::{Header, Record};

/// A partitioner: a partition per record, once per produce request.
pub trait Partitioner: Sized + 'static {
    /// Builds the plugin from its config (once per instance).
    fn new(config: crate::Config) -> Result<Self, String>;

    /// One partition in `0..partition_count` per record, in order.
    fn partition(
        &mut self,
        topic: &str,
        partition_count: u32,
        records: &[Record],
    ) -> Result<Vec<u32>, String>;
}

impl Record {
    /// A record with a key and a value (for tests).
    pub fn new(key: Option<&[u8]>, value: impl Into<Vec<u8>>) -> Record {
        Record {
            key: key.map(<[u8]>::to_vec),
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp: 0,
        }
    }
}
