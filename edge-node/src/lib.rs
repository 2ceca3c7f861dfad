//! The Eddy broker node: configuration, the `eddy` command line and the
//! serve loop.
//!
//! For now a node loads and checks its config, creates its data directory
//! and waits for SIGINT/SIGTERM. The storage core, the QUIC listener and the
//! plugin host are wired in by later work.

pub mod cli;
pub mod config;
pub mod serve;
