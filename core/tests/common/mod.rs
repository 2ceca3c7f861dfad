//! Helpers shared by the integration tests (`mod common;`).
//!
//! Each test crate compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod kafka_decoder;
