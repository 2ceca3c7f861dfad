//! The `interceptor` world: sees every produced record before it is stored.

#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "interceptor",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_interceptor",
    });
}

pub use bindings::eddy::plugin::types::{Header, Record, Verdict};

/// An interceptor: one verdict per record, once per produce request.
pub trait Interceptor: Sized + 'static {
    /// Builds the plugin from its config (once per instance). An error fails
    /// every call with that message.
    fn new(config: crate::Config) -> Result<Self, String>;

    /// One [`Verdict`] per record, in order. An error fails the produce
    /// request (the producer retries; after repeated failures the node
    /// disables the plugin).
    fn intercept(&mut self, topic: &str, records: Vec<Record>) -> Result<Vec<Verdict>, String>;
}

impl Record {
    /// A record with a value and no key or headers (for tests).
    pub fn with_value(value: impl Into<Vec<u8>>) -> Record {
        Record {
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp: 0,
        }
    }

    /// The value of the first header named `key`.
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value.as_deref())
    }
}
