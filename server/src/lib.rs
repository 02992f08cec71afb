//! monitor-server: accepts agents, stores every sample in an embedded SQLite
//! store, and serves the operator API that monitorctl uses.
//!
//! See ARCHITECTURE.md at the repository root for the code map.

pub mod ack_hold;
pub mod admin;
pub mod commands;
pub mod config;
pub mod enrolment;
pub mod exported;
pub mod health;
pub mod http;
pub mod ingest;
pub mod listener;
pub mod pages;
pub mod registry;
pub mod remote_write;
pub mod replicas;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod tls;
