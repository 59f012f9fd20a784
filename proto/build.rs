//! Compiles `pushcast/v1/*.proto` and writes the descriptor set that gRPC reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "pushcast/v1/push.proto",
        "pushcast/v1/app.proto",
        "pushcast/v1/worker.proto",
        "pushcast/v1/stream_key.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("pushcast_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
