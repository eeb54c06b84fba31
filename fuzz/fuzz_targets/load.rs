//! Any bytes through the loader, and a loaded model through the printer and the
//! serializer: each must end in a value or a typed error. Seed the corpus with the
//! fixtures: `cargo +nightly fuzz run load ../fixtures`. External data locations
//! resolve under an empty folder, so no file outside it is read.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join("onnxq-fuzz-empty");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(m) = onnxq::io::from_bytes_in(bytes::Bytes::copy_from_slice(data), &dir) {
        let _ = onnxq::io::to_bytes(&m);
        let _ = onnxq::ir::print::model_to_string(&m);
    }
});
