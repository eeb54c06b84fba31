//! Writes a tiny float model with onnxq's IR builder, quantizes it to 4 bits with the
//! library API and leaves it in OUT_DIR for `include_bytes!`. `run_cached` makes a
//! rebuild with the same model and recipe cost one hash, not a quantization.
use std::path::PathBuf;

use onnxq::ir::*;

fn main() -> onnxq::Result<()> {
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let float = out.join("tiny.onnx");
    onnxq::save(&tiny_model()?, &float, &Default::default())?;
    let done = onnxq::Pipeline::from_recipe("int4-rtn")?
        .option("block-size", 16)?
        .run_cached(
            &float,
            &out.join("tiny.int4.onnx"),
            &out.join("onnxq-cache"),
        )?;
    if !done.changed {
        panic!("the tiny model has a MatMul with a constant weight; int4-rtn must change it");
    }
    Ok(())
}

/// x[1, 64] → MatMul(w[64, 32]) → y[1, 32], with deterministic weights.
fn tiny_model() -> onnxq::Result<Model> {
    let mut m = Model {
        ir_version: Some(8),
        opset_import: vec![OpsetImport {
            domain: Some(String::new()),
            version: Some(17),
        }],
        producer_name: Some("build-time example".into()),
        has_graph: true,
        ..Default::default()
    };
    let g = &mut m.graph;
    g.name = Some("tiny".into());
    let x = g.add_input("x", float_info(&[1, 64]))?;
    let weights: Vec<f32> = (0..64 * 32)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 200.0)
        .collect();
    let w = g.add_initializer(Tensor::from_f32("w", vec![64, 32], &weights))?;
    let mm = g.add_node(
        NodeSpec::new("", "MatMul")
            .name("mm")
            .input(x)
            .input(w)
            .output("y"),
    )?;
    let y = g.node(mm).output(0).expect("MatMul has an output");
    g.outputs.push(GraphIo {
        value: y,
        info: float_info(&[1, 32]),
    });
    Ok(m)
}

fn float_info(dims: &[i64]) -> ValueInfo {
    ValueInfo {
        ty: Some(TypeInfo {
            kind: TypeKind::Tensor {
                elem_type: Some(DType::F32.code()),
                shape: Some(
                    dims.iter()
                        .map(|d| ShapeDim {
                            dim: Dim::Value(*d),
                            denotation: None,
                        })
                        .collect(),
                ),
            },
            denotation: None,
        }),
        ..Default::default()
    }
}
