//! The wire contract of monitor (`proto/monitor.proto`, package `monitor.v1`)
//! and the project's own types on either side of it.
//!
//! Everything protobuf stops here: the agent's collectors, the server's
//! store and the command policy see [`metric::Metric`] and friends, never a
//! prost struct. Conversions live in one place so a wire change is one edit.

pub mod base64;
pub mod batch;
pub mod cli;
pub mod codec;
pub mod command;
pub mod config;
pub mod credential;
pub mod csr;
pub mod digest;
pub mod files;
pub mod health;
pub mod join;
pub mod keepalive;
pub mod metric;
pub mod pem;
pub mod random;
pub mod sd_notify;
pub mod signing;
pub mod text;
pub mod time;
pub mod wire;

/// Code generated from `proto/monitor.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("monitor.v1");
}

/// `proto/monitor.proto` as an encoded `FileDescriptorSet` (what protox
/// compiled at build time), for gRPC server reflection: `grpcurl list`
/// works without a copy of the proto file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/monitor_descriptor.bin"));
