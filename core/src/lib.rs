//! Eddy's storage core.
//!
//! The record-batch codec ([`batch`]) builds without `std` so a microcontroller can
//! produce Kafka-format batches. Everything else (compression, files, the partition
//! log, retention, compaction) needs the `std` feature, which is on by default.
//!
//! Nothing here does networking or knows about an async runtime: the owner of a
//! [`log::PartitionLog`] decides when to call it, and passes `now` in.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod batch;

#[cfg(feature = "std")]
pub mod checkpoint;
#[cfg(feature = "std")]
pub mod compaction;
#[cfg(feature = "std")]
pub mod config;
#[cfg(feature = "std")]
pub mod group_commit;
#[cfg(feature = "std")]
pub mod index;
#[cfg(feature = "std")]
pub mod layout;
#[cfg(feature = "std")]
pub mod log;
#[cfg(feature = "std")]
pub mod retention;
#[cfg(feature = "std")]
pub mod segment;
#[cfg(feature = "std")]
pub mod sim;
#[cfg(feature = "std")]
pub mod storage;
