//! Guest-side SDK for Eddy plugins.
//!
//! Plugins are WebAssembly components built for `wasm32-wasip2` against the
//! WIT package in the repository's `wit/` folder. They can choose partitions
//! (`partitioner`), inspect or rewrite records (`interceptor`) and choose what
//! to evict when the disk is full (`retention`). This crate will hold the
//! generated bindings and helpers that make those worlds pleasant to
//! implement in Rust; the WIT package and the bindings come with the plugin
//! work. Nothing else is here yet.

/// The WIT package, with version, that plugins built with this SDK target.
pub const WIT_PACKAGE: &str = "eddy:plugin@0.1.0";
