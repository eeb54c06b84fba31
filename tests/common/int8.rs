//! Helpers of the 8-bit tests (tests/int8.rs, tests/int8_calibration.rs).
use std::path::PathBuf;

use onnxq::ir::{DType, Dim, GraphIo, Model, NodeSpec, Tensor};
use onnxq::pass::recipe::Recipe;
use onnxq::pass::{run_pipeline, PassCx};

pub fn ops(m: &Model) -> Vec<String> {
    m.graph.nodes().map(|(_, n)| n.op_type.clone()).collect()
}

pub fn count(m: &Model, op: &str) -> usize {
    ops(m).iter().filter(|o| *o == op).count()
}

pub fn fixture(name: &str) -> PathBuf {
    crate::common::fixtures().join(name)
}

/// A .npy file (format 1.0) of little-endian values.
pub fn npy(descr: &str, shape: &[usize], payload: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A model with an empty graph named `name` (opset 17).
pub fn empty_model(name: &str) -> Model {
    let mut m = Model {
        ir_version: Some(8),
        opset_import: vec![onnxq::ir::OpsetImport {
            domain: Some(String::new()),
            version: Some(17),
        }],
        has_graph: true,
        ..Default::default()
    };
    m.graph.name = Some(name.into());
    m
}

/// x[batch, 8] → Log → MatMul(W) → y: a model whose activations turn NaN on
/// non-positive inputs; W is also read by a second MatMul on x directly.
pub fn log_model() -> Model {
    let mut m = empty_model("log");
    let g = &mut m.graph;
    let x = g
        .add_input(
            "x",
            crate::common::build::tensor_info(
                DType::F32,
                &[Dim::Param("batch".into()), Dim::Value(8)],
            ),
        )
        .unwrap();
    let w = g
        .add_initializer(Tensor::from_f32(
            "w",
            vec![8, 8],
            &crate::common::build::weights(64, 11, 0.5),
        ))
        .unwrap();
    let l = g
        .add_node(NodeSpec::new("", "Log").name("log").input(x).output("l"))
        .unwrap();
    let l = g.node(l).output(0).unwrap();
    g.add_node(
        NodeSpec::new("", "MatMul")
            .name("mm_log")
            .input(l)
            .input(w)
            .output("y"),
    )
    .unwrap();
    g.add_node(
        NodeSpec::new("", "MatMul")
            .name("mm_x")
            .input(x)
            .input(w)
            .output("z"),
    )
    .unwrap();
    for name in ["y", "z"] {
        let v = g.find(name).unwrap();
        g.outputs.push(GraphIo {
            value: v,
            info: crate::common::build::tensor_info(
                DType::F32,
                &[Dim::Param("batch".into()), Dim::Value(8)],
            ),
        });
    }
    m
}

pub fn run_recipe(model: &Model, recipe: &str) -> (Model, Vec<onnxq::pass::PassOutcome>) {
    let r = Recipe::parse("t", &format!("[recipe]\nname='t'\n{recipe}")).unwrap();
    let mut m = model.clone();
    let out = run_pipeline(&mut m, &r.build().unwrap(), &mut PassCx::default()).unwrap();
    (m, out)
}
