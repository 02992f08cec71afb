//! Compiles `proto/monitor.proto` into Rust with a pure-Rust protobuf compiler
//! (protox), so a fresh machine or a cross image needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/monitor.proto");
    let fds = protox::compile(["monitor.proto"], ["proto"])?;
    // The encoded FileDescriptorSet, for gRPC server reflection (the
    // server serves it so grpcurl needs no copy of the proto file).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("monitor_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Generated clients take any tonic transport; the agent and
        // monitorctl bring their own Channel, so no transport code here.
        .build_transport(false)
        // Small per-stream buffers: see src/codec.rs.
        .codec_path("crate::codec::SmallCodec")
        .compile_fds(fds)?;
    Ok(())
}
