//! A program that ships a quantized model inside its binary: build.rs wrote it to
//! OUT_DIR with onnxq's library API.

/// The int4 model, quantized at build time.
static MODEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tiny.int4.onnx"));

fn main() -> onnxq::Result<()> {
    let model = onnxq::io::from_bytes_in(MODEL.to_vec().into(), std::path::Path::new("."))?;
    let ops: Vec<String> = model
        .graph
        .nodes()
        .map(|(_, n)| format!("{}::{}", n.domain(), n.op_type))
        .collect();
    println!(
        "embedded model: {} bytes, ops {}",
        MODEL.len(),
        ops.join(", ")
    );
    Ok(())
}
