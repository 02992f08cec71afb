//! monitor-agent: reads the kernel's counters and health attributes, turns
//! them into metrics (see `metrics.rs`),
//! streams them to monitor-server over gRPC and runs the commands the server
//! pushes, under a strict policy, on one single-threaded tokio runtime.
//!
//! See ARCHITECTURE.md at the repository root for the code map.

pub mod backoff;
pub mod buffer;
pub mod collector;
pub mod commands;
pub mod config;
pub mod enrol;
pub mod filesystems;
pub mod flush;
pub mod hw;
pub mod identity;
pub mod metrics;
pub mod operators;
pub mod outbox;
pub mod proc;
pub mod rates;
pub mod replay;
pub mod run;
pub mod sampler;
pub mod session;
pub mod source;
pub mod spool;
pub mod startup_pages;
pub mod state;
pub mod sysfs;
#[cfg(test)]
mod test_log;
#[doc(hidden)]
pub mod testing;
pub mod thermal;
pub mod throttling;
pub mod ticker;
