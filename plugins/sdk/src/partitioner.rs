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

use bindings::eddy::plugin::types as wit;

pub use crate::records::{Header, Record, Records};

/// A partitioner: a partition per record, once per produce request.
pub trait Partitioner: Sized + 'static {
    /// Builds the plugin from its config (once per instance).
    fn new(config: crate::Config) -> Result<Self, String>;

    /// One partition in `0..partition_count` per record, in order.
    fn partition(
        &mut self,
        topic: &str,
        partition_count: u32,
        records: &Records,
    ) -> Result<Vec<u32>, String>;
}

#[doc(hidden)]
pub fn records_from_wit(batch: wit::Batch) -> Records {
    Records {
        data: batch.data,
        timestamps: batch.timestamps,
        fields: batch.fields,
        header_starts: batch.header_starts,
        headers: batch.headers,
    }
}
