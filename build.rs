//! Compiles proto/onnx.proto with prost-build.
//!
//! protoc comes from `$PROTOC` when set, else `protoc` on PATH, else (feature
//! `vendored-protoc`) is built from source by protobuf-src. The vendored build needs
//! cmake and takes minutes on two cores, which is why it is opt-in.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    if std::env::var_os("PROTOC").is_none() {
        let protoc = find_on_path("protoc")
            .or_else(vendored_protoc)
            .unwrap_or_else(|| {
                panic!(
                    "protoc not found: set $PROTOC, install it (Debian: apt-get install \
                 protobuf-compiler), or build with --features vendored-protoc (needs cmake)"
                )
            });
        // Safe: build scripts are single-threaded here.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let mut config = prost_build::Config::new();
    // raw_data stays a slice of the (memory-mapped) model file: no copy on load.
    config.bytes([".onnx.TensorProto.raw_data"]);
    config
        .compile_protos(&["proto/onnx.proto"], &["proto/"])
        .expect("compiling proto/onnx.proto");
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(feature = "vendored-protoc")]
fn vendored_protoc() -> Option<PathBuf> {
    Some(protobuf_src::protoc())
}

#[cfg(not(feature = "vendored-protoc"))]
fn vendored_protoc() -> Option<PathBuf> {
    None
}
