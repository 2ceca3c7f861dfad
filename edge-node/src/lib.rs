//! The Eddy broker node: configuration, the `eddy` command line, the storage
//! service ([`broker`]), the QUIC server ([`server`], [`tls`]) and the serve
//! loop ([`serve`]), and the WebAssembly plugin host ([`plugins`]).

pub mod boards;
pub mod broker;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod failures;
pub mod memory;
pub mod plugins;
pub mod runtime;
pub mod serve;
pub mod server;
pub mod tls;
