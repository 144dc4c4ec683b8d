//! Generates the gRPC code with a vendored protoc, so a fresh machine needs none.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    tonic_build::configure()
        .bytes(["."])
        .compile_protos(&["proto/cairn.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/cairn.proto");
    Ok(())
}
