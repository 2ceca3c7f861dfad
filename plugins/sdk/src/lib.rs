//! Guest-side SDK for Eddy plugins.
//!
//! A plugin is a WebAssembly component built for `wasm32-wasip2` against the
//! WIT package in the repository's `wit/` folder (`eddy:plugin@0.2.0`). With
//! this crate a plugin is a few lines: enable the feature of its world
//! (`interceptor`, `partitioner` or `retention`), implement the trait of the
//! same name and call [`export!`]:
//!
//! ```ignore
//! use eddy_plugin_sdk::{Config, interceptor::{Interceptor, Records, Verdicts}};
//!
//! struct Enrich { id: String }
//!
//! impl Interceptor for Enrich {
//!     fn new(config: Config) -> Result<Self, String> {
//!         Ok(Enrich { id: config.require("gateway-id")?.to_owned() })
//!     }
//!     fn intercept(&mut self, _topic: &str, records: &Records, out: &mut Verdicts) -> Result<(), String> {
//!         for _ in records.iter() {
//!             out.rewrite().header("gateway-id", Some(self.id.as_bytes()));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! eddy_plugin_sdk::export!(interceptor: Enrich);
//! ```
//!
//! Records come as one byte buffer with tables of spans ([`Records`]), and
//! verdicts go back the same way ([`interceptor::Verdicts`]): a record's key,
//! value and headers are borrowed slices, and a call allocates per batch,
//! not per record.
//!
//! The plugin value is created once per instance, on the first call, from the
//! `--config k=v` values it was added with, and kept between calls (the node
//! keeps instances alive). Natively (`cargo test`) the traits are plain Rust,
//! so a plugin's logic is unit-tested without Wasm; the host functions
//! ([`log`], [`now_ms`]) then fall back to stderr and the system clock.

/// The WIT package, with version, that plugins built with this SDK target.
pub const WIT_PACKAGE: &str = "eddy:plugin@0.2.0";

#[cfg(feature = "interceptor")]
pub mod interceptor;
#[cfg(feature = "partitioner")]
pub mod partitioner;
#[cfg(feature = "retention")]
pub mod retention;

#[cfg(any(feature = "interceptor", feature = "partitioner"))]
mod records;
#[cfg(any(feature = "interceptor", feature = "partitioner"))]
pub use records::{Header, Record, Records};

mod host;
pub use host::{Level, log, now_ms};

/// A plugin's own config: the `key=value` pairs given to `eddy plugin add
/// --config`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pairs: Vec<(String, String)>,
}

impl Config {
    /// A config from pairs (tests build their own; plugins get theirs from
    /// the node).
    pub fn new<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Config {
        Config {
            pairs: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The config the node holds for this plugin.
    pub fn from_host() -> Config {
        Config {
            pairs: host::config(),
        }
    }

    /// The value of `key`, if set (the last one wins).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or an error naming it.
    pub fn require(&self, key: &str) -> Result<&str, String> {
        self.get(key).ok_or_else(|| {
            format!("config `{key}` is required: add the plugin with --config {key}=VALUE")
        })
    }

    /// `key` parsed as `T`, or `default` when unset; an error names the key.
    pub fn parse_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| format!("config `{key}`: cannot parse {v:?}")),
        }
    }

    /// `key` as a comma-separated list (empty entries skipped).
    pub fn list(&self, key: &str) -> Vec<String> {
        self.get(key)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every pair, in the order given.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }
}

/// Sends panic messages to the node's log instead of stderr (which a
/// plugin does not have), once per instance. The panic then aborts, which
/// traps, and the node counts the failed call.
#[doc(hidden)]
pub fn __install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            log(Level::Error, &format!("panic: {info}"), &[]);
        }));
    });
}

/// Exports a plugin type as the component's implementation of a world:
/// `export!(interceptor: T)`, `export!(partitioner: T)` or
/// `export!(retention: T)`, where `T` implements the trait of that name. The
/// SDK feature of the same name must be enabled.
#[macro_export]
macro_rules! export {
    (interceptor: $plugin:ty) => {
        struct __EddyExport;
        ::std::thread_local! {
            static __EDDY_PLUGIN: ::std::cell::RefCell<::std::option::Option<::std::result::Result<$plugin, ::std::string::String>>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }
        impl $crate::interceptor::bindings::Guest for __EddyExport {
            fn intercept(
                topic: ::std::string::String,
                records: $crate::interceptor::bindings::eddy::plugin::types::Batch,
            ) -> ::std::result::Result<$crate::interceptor::bindings::eddy::plugin::verdict_types::Verdicts, ::std::string::String> {
                __EDDY_PLUGIN.with(|slot| {
                    let mut slot = slot.borrow_mut();
                    let plugin = slot.get_or_insert_with(|| {
                        $crate::__install_panic_hook();
                        <$plugin as $crate::interceptor::Interceptor>::new($crate::Config::from_host())
                    });
                    match plugin {
                        ::std::result::Result::Ok(p) => {
                            let records = $crate::interceptor::records_from_wit(records);
                            let mut verdicts = $crate::interceptor::Verdicts::with_capacity(records.len());
                            <$plugin as $crate::interceptor::Interceptor>::intercept(p, &topic, &records, &mut verdicts)?;
                            ::std::result::Result::Ok(verdicts.into_wit())
                        }
                        ::std::result::Result::Err(e) => ::std::result::Result::Err(e.clone()),
                    }
                })
            }
        }
        $crate::interceptor::bindings::__export_interceptor!(__EddyExport with_types_in $crate::interceptor::bindings);
    };
    (partitioner: $plugin:ty) => {
        struct __EddyExport;
        ::std::thread_local! {
            static __EDDY_PLUGIN: ::std::cell::RefCell<::std::option::Option<::std::result::Result<$plugin, ::std::string::String>>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }
        impl $crate::partitioner::bindings::Guest for __EddyExport {
            fn partition(
                topic: ::std::string::String,
                partition_count: u32,
                records: $crate::partitioner::bindings::eddy::plugin::types::Batch,
            ) -> ::std::result::Result<::std::vec::Vec<u32>, ::std::string::String> {
                __EDDY_PLUGIN.with(|slot| {
                    let mut slot = slot.borrow_mut();
                    let plugin = slot.get_or_insert_with(|| {
                        $crate::__install_panic_hook();
                        <$plugin as $crate::partitioner::Partitioner>::new($crate::Config::from_host())
                    });
                    match plugin {
                        ::std::result::Result::Ok(p) => {
                            let records = $crate::partitioner::records_from_wit(records);
                            <$plugin as $crate::partitioner::Partitioner>::partition(p, &topic, partition_count, &records)
                        }
                        ::std::result::Result::Err(e) => ::std::result::Result::Err(e.clone()),
                    }
                })
            }
        }
        $crate::partitioner::bindings::__export_partitioner!(__EddyExport with_types_in $crate::partitioner::bindings);
    };
    (retention: $plugin:ty) => {
        struct __EddyExport;
        ::std::thread_local! {
            static __EDDY_PLUGIN: ::std::cell::RefCell<::std::option::Option<::std::result::Result<$plugin, ::std::string::String>>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }
        impl $crate::retention::bindings::Guest for __EddyExport {
            fn segments_to_delete(
                state: $crate::retention::PartitionState,
            ) -> ::std::result::Result<u32, ::std::string::String> {
                __EDDY_PLUGIN.with(|slot| {
                    let mut slot = slot.borrow_mut();
                    let plugin = slot.get_or_insert_with(|| {
                        $crate::__install_panic_hook();
                        <$plugin as $crate::retention::Retention>::new($crate::Config::from_host())
                    });
                    match plugin {
                        ::std::result::Result::Ok(p) => {
                            <$plugin as $crate::retention::Retention>::segments_to_delete(p, &state)
                        }
                        ::std::result::Result::Err(e) => ::std::result::Result::Err(e.clone()),
                    }
                })
            }
        }
        $crate::retention::bindings::__export_retention!(__EddyExport with_types_in $crate::retention::bindings);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lookups() {
        let c = Config::new([
            ("field", "device_id"),
            ("n", "4"),
            ("list", "a, b,,c"),
            ("n", "5"),
        ]);
        assert_eq!(c.get("field"), Some("device_id"));
        assert_eq!(c.parse_or("n", 1u32), Ok(5));
        assert_eq!(c.parse_or("missing", 7u32), Ok(7));
        assert!(c.parse_or::<u32>("field", 1).is_err());
        assert_eq!(c.list("list"), vec!["a", "b", "c"]);
        assert!(
            c.require("nope")
                .unwrap_err()
                .contains("--config nope=VALUE")
        );
    }
}
