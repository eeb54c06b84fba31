//! Raising the default opset: it checks every node first and changes nothing on a
//! refusal; static int16 quantization then falls back to com.microsoft Q/DQ and
//! writes a valid model.
mod common;

use std::process::Command;

use common::build::{tensor_info, weights};
use onnxq::ir::*;
use onnxq::runtime::{self, RuntimeKind, RuntimeOptions};
use onnxq::transforms::common::opset::raise_default_opset;

/// x[2, 8] → ReduceMean(axes=[1]) → Sub → (Softmax) → MatMul(W) → y, opset 12:
/// ReduceMean takes `axes` as an attribute until opset 18, and Softmax changed its
/// meaning in opset 13.
fn model(softmax: bool) -> Model {
    let mut m = Model {
        ir_version: Some(7),
        opset_import: vec![OpsetImport {
            domain: Some(String::new()),
            version: Some(12),
        }],
        has_graph: true,
        ..Default::default()
    };
    let g = &mut m.graph;
    g.name = Some("opset12".into());
    let x = g
        .add_input(
            "x",
            tensor_info(DType::F32, &[Dim::Value(2), Dim::Value(8)]),
        )
        .unwrap();
    let w = g
        .add_initializer(Tensor::from_f32("w", vec![8, 8], &weights(64, 7, 0.5)))
        .unwrap();
    let mean = g
        .add_node(
            NodeSpec::new("", "ReduceMean")
                .name("mean")
                .input(x)
                .output("m")
                .attr(Attribute::ints("axes", vec![1])),
        )
        .unwrap();
    let m_out = g.node(mean).output(0).unwrap();
    let sub = g
        .add_node(
            NodeSpec::new("", "Sub")
                .name("center")
                .inputs([Some(x), Some(m_out)])
                .output("c"),
        )
        .unwrap();
    let mut last = g.node(sub).output(0).unwrap();
    if softmax {
        let s = g
            .add_node(
                NodeSpec::new("", "Softmax")
                    .name("softmax")
                    .input(last)
                    .output("s")
                    .attr(Attribute::int("axis", 1)),
            )
            .unwrap();
        last = g.node(s).output(0).unwrap();
    }
    g.add_node(
        NodeSpec::new("", "MatMul")
            .name("proj")
            .inputs([Some(last), Some(w)])
            .output("y"),
    )
    .unwrap();
    let y = g.find("y").unwrap();
    g.outputs.push(GraphIo {
        value: y,
        info: tensor_info(DType::F32, &[Dim::Value(2), Dim::Value(8)]),
    });
    m
}

fn mean_node(m: &Model) -> Node {
    let (_, n) = m
        .graph
        .nodes()
        .find(|(_, n)| n.op_type == "ReduceMean")
        .unwrap();
    n.clone()
}

#[test]
fn a_refused_raise_changes_nothing() {
    let mut m = model(true);
    let before = print::model_to_string(&m);
    let err = raise_default_opset(&mut m, 21).unwrap_err().to_string();
    assert!(err.contains("softmax") && err.contains("opset 13"), "{err}");
    assert_eq!(print::model_to_string(&m), before);
    assert_eq!(m.opset(""), Some(12));
    assert!(mean_node(&m).attr("axes").is_some());
}

#[test]
fn an_accepted_raise_moves_axes_into_an_input_and_keeps_the_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = model(false);
    let old = dir.path().join("old.onnx");
    onnxq::save(&m, &old, &Default::default()).unwrap();
    raise_default_opset(&mut m, 21).unwrap();
    assert_eq!(m.opset(""), Some(21));
    let mean = mean_node(&m);
    assert!(mean.attr("axes").is_none());
    let axes = mean.input(1).expect("axes input");
    assert_eq!(
        m.graph.initializer(axes).unwrap().to_i64().unwrap(),
        vec![1]
    );
    m.ir_version = Some(10);
    let new = dir.path().join("new.onnx");
    onnxq::save(&m, &new, &Default::default()).unwrap();

    let kinds: &[RuntimeKind] = if runtime::ort::available() {
        &[RuntimeKind::Tract, RuntimeKind::Ort]
    } else {
        assert!(
            !common::required(),
            "ONNXQ_REQUIRE_ORT=1 but ONNX Runtime is missing"
        );
        &[RuntimeKind::Tract]
    };
    let x = weights(16, 3, 2.0);
    let feeds = vec![(
        "x".to_string(),
        runtime::HostTensor::from_f32(vec![2, 8], &x).unwrap(),
    )];
    for &kind in kinds {
        let rt = runtime::select(&RuntimeOptions {
            kind,
            ..Default::default()
        })
        .unwrap()
        .runtime;
        let a = rt.open(&old).unwrap().run(&feeds).unwrap();
        let b = rt.open(&new).unwrap().run(&feeds).unwrap();
        assert_eq!(
            a[0].1.to_f32_vec().unwrap(),
            b[0].1.to_f32_vec().unwrap(),
            "{kind:?}"
        );
    }
}

#[test]
fn static_int16_falls_back_to_contrib_qdq_when_the_raise_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.onnx");
    let output = dir.path().join("out.onnx");
    onnxq::save(&model(true), &input, &Default::default()).unwrap();
    let run = Command::new(common::onnxq_bin())
        .arg("quantize")
        .arg(&input)
        .arg(&output)
        .args(["--algorithm", "static", "--activation-type", "int16"])
        .args(["--exclude-worst", "0", "--runtime", "tract", "--no-verify"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("int16 Q/DQ written as com.microsoft"),
        "{stderr}"
    );
    let out = onnxq::load(&output).unwrap();
    assert_eq!(out.opset(""), Some(12), "the refused raise left the opset");
    assert_eq!(out.opset("com.microsoft"), Some(1));
    assert!(
        mean_node(&out).attr("axes").is_some(),
        "axes stayed an attribute"
    );
    let count =
        |domain: &str, op: &str| out.graph.nodes().filter(|(_, n)| n.is(domain, op)).count();
    assert_eq!(
        count("com.microsoft", "QuantizeLinear"),
        1,
        "the MatMul's input"
    );
    assert!(count("com.microsoft", "DequantizeLinear") >= 1);
    assert_eq!(
        count("", "QuantizeLinear") + count("", "DequantizeLinear"),
        0
    );
    if let Some(py) = common::python() {
        let out_path = output.to_str().unwrap();
        common::py(&py, "check_model.py", &[out_path]);
        common::py(&py, "ort_check.py", &["run", out_path]);
    }
}
