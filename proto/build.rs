fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc comes from a crate, so a fresh machine needs nothing installed.
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        // Payloads and result chunks stay `Bytes`: no copies between socket and store.
        .bytes(".daskrs.v1.TaskSpec.payload")
        .bytes(".daskrs.v1.ComputeTask.payload")
        .bytes(".daskrs.v1.DataChunk.data")
        .compile_with_config(config, &["proto/daskrs.proto"], &["proto"])?;
    Ok(())
}
