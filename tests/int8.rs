//! 8-bit quantization (dynamic, static QDQ/QOperator, SmoothQuant): graph
//! structure, numerics against the float model in tract, calibration data
//! checks, and calibration ranges against onnxruntime's calibrators.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use onnxq::ir::{DType, Dim, GraphIo, Model, NodeSpec, Tensor};
use onnxq::pass::recipe::Recipe;
use onnxq::pass::{run_pipeline, PassCx};
use onnxq::verify::{compare, VerifyOptions};

fn save(m: &Model, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    onnxq::save(m, &p, &Default::default()).unwrap();
    p
}

fn apply(model: &Model, recipe_toml: &str) -> Model {
    let r = Recipe::parse("test", recipe_toml).unwrap();
    let mut m = model.clone();
    run_pipeline(&mut m, &r.build().unwrap(), &mut PassCx::default()).unwrap();
    m
}

fn try_apply(model: &Model, recipe_toml: &str) -> onnxq::Result<Model> {
    let r = Recipe::parse("test", recipe_toml)?;
    let mut m = model.clone();
    run_pipeline(&mut m, &r.build()?, &mut PassCx::default())?;
    Ok(m)
}

fn rel_l2(a: &Path, b: &Path) -> f64 {
    let r = compare(
        a,
        b,
        &VerifyOptions {
            samples: 2,
            ..Default::default()
        },
    )
    .unwrap();
    r.outputs.iter().map(|o| o.rel_l2).fold(0.0, f64::max)
}

fn ops(m: &Model) -> Vec<String> {
    m.graph.nodes().map(|(_, n)| n.op_type.clone()).collect()
}

fn count(m: &Model, op: &str) -> usize {
    ops(m).iter().filter(|o| *o == op).count()
}

fn fixture(name: &str) -> PathBuf {
    common::fixtures().join(name)
}

fn quantize_cli(args: &[&str]) -> std::process::Output {
    Command::new(common::onnxq_bin())
        .arg("quantize")
        .args(args)
        .output()
        .unwrap()
}

/// A .npy file (format 1.0) of little-endian values.
fn npy(descr: &str, shape: &[usize], payload: &[u8]) -> Vec<u8> {
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

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A model with an empty graph named `name` (opset 17).
fn empty_model(name: &str) -> Model {
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
fn log_model() -> Model {
    let mut m = empty_model("log");
    let g = &mut m.graph;
    let x = g
        .add_input(
            "x",
            common::build::tensor_info(DType::F32, &[Dim::Param("batch".into()), Dim::Value(8)]),
        )
        .unwrap();
    let w = g
        .add_initializer(Tensor::from_f32(
            "w",
            vec![8, 8],
            &common::build::weights(64, 11, 0.5),
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
            info: common::build::tensor_info(
                DType::F32,
                &[Dim::Param("batch".into()), Dim::Value(8)],
            ),
        });
    }
    m
}

#[test]
fn dynamic_rewrites_every_weight_form_and_stays_close() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::build::mlp(true);
    let orig = save(&model, tmp.path(), "mlp.onnx");
    let q = apply(
        &model,
        "[recipe]\nname='t'\n[[pass]]\nname='int8-dynamic'\nper-channel=true\nactivations='per-tensor'\n",
    );
    // fc0, fc1, Gemm fc2, fc3 through Transpose, fc4 on a Constant node.
    assert_eq!(count(&q, "MatMulInteger"), 5, "{:?}", ops(&q));
    // One DynamicQuantizeLinear per activation: x feeds fc0, h2 feeds four.
    assert_eq!(count(&q, "DynamicQuantizeLinear"), 2, "{:?}", ops(&q));
    assert_eq!(count(&q, "Gather"), 1);
    assert_eq!(
        count(&q, "DequantizeLinear"),
        1,
        "the quantized table is dequantized"
    );
    for gone in ["Transpose", "Constant", "Gemm"] {
        assert_eq!(count(&q, gone), 0, "{gone} left in {:?}", ops(&q));
    }
    let g = &q.graph;
    let outs: Vec<&str> = g.outputs.iter().map(|o| g.value_name(o.value)).collect();
    assert_eq!(outs, ["y", "y2", "y3", "y4", "e"]);
    // Weights stored [K, N] int8 with per-column scales; fc3 was [N, K] behind a Transpose.
    let w3 = g.find("fc3.weight_Transposed_quantized").unwrap();
    let t = g.initializer(w3).unwrap();
    assert_eq!((t.dtype(), t.dims.clone()), (DType::I8, vec![96, 48]));
    let s3 = g
        .initializer(g.find("fc3.weight_Transposed_scale").unwrap())
        .unwrap();
    assert_eq!(s3.dims, [48]);
    assert!(g.find("fc3.weight").is_none(), "the float weight is gone");
    let table = g
        .initializer(g.find("embed.weight_quantized").unwrap())
        .unwrap();
    assert_eq!(table.dtype(), DType::U8);
    let out = save(&q, tmp.path(), "q.onnx");
    let e = rel_l2(&orig, &out);
    eprintln!("dynamic per-channel, tract: rel L2 {e:.3e}");
    assert!(e > 0.0 && e < 0.05, "{e}");
}

/// Output rows of `a` and `b` (row-major, `width` columns): the largest relative
/// L2 error of one row, over the rows `rows`.
fn worst_row_error(a: &[f32], b: &[f32], width: usize, rows: std::ops::Range<usize>) -> f64 {
    rows.map(|r| {
        let (x, y) = (&a[r * width..][..width], &b[r * width..][..width]);
        let d: f64 = x.iter().zip(y).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
        let n: f64 = x.iter().map(|p| (*p as f64).powi(2)).sum();
        (d / n).sqrt()
    })
    .fold(0.0, f64::max)
}

#[test]
fn dynamic_per_token_scales_each_row_and_holds_an_outlier_token() {
    use onnxq::runtime::{self, HostTensor};
    let model = common::build::mlp(true);
    let q = apply(
        &model,
        "[recipe]\nname='t'\n[[pass]]\nname='int8-dynamic'\n",
    );
    // The same five MatMul forms; one row-scale computation per activation.
    assert_eq!(count(&q, "MatMulInteger"), 5, "{:?}", ops(&q));
    assert_eq!(count(&q, "ReduceMax"), 2, "{:?}", ops(&q));
    assert_eq!(count(&q, "Round"), 2, "{:?}", ops(&q));
    for gone in [
        "DynamicQuantizeLinear",
        "DequantizeLinear",
        "Gemm",
        "Transpose",
    ] {
        assert_eq!(count(&q, gone), 0, "{gone} left in {:?}", ops(&q));
    }
    let g = &q.graph;
    // Weights per output channel even without per-channel (free in this form).
    let s0 = g.initializer(g.find("fc0.weight_scale").unwrap()).unwrap();
    assert_eq!(s0.dims, [96]);
    // The table: int8, one scale per row stored [V, 1], read by a second Gather.
    let table = g
        .initializer(g.find("embed.weight_quantized").unwrap())
        .unwrap();
    assert_eq!(table.dtype(), DType::I8);
    let rows = g
        .initializer(g.find("embed.weight_scale").unwrap())
        .unwrap();
    assert_eq!(rows.dims, [table.dims[0], 1]);
    assert_eq!(count(&q, "Gather"), 2);

    // A "massive activation" token: row 0 is 1000x the others. One scale per
    // tensor leaves the ordinary rows a handful of levels; one per row does not.
    let plain = common::build::mlp(false);
    let tensor = apply(
        &plain,
        "[recipe]\nname='t'\n[[pass]]\nname='int8-dynamic'\nactivations='per-tensor'\n",
    );
    let token = apply(
        &plain,
        "[recipe]\nname='t'\n[[pass]]\nname='int8-dynamic'\n",
    );
    let mut x: Vec<f32> = (0..4 * 64)
        .map(|i| ((i * 37) % 19) as f32 / 9.0 - 1.0)
        .collect();
    x[..64].iter_mut().for_each(|v| *v *= 1000.0);
    let feeds = vec![(
        "x".to_string(),
        HostTensor::from_f32(vec![4, 64], &x).unwrap(),
    )];
    let mut runtimes: Vec<Box<dyn runtime::Runtime>> = vec![Box::new(runtime::tract::TractRuntime)];
    match runtime::ort::OrtRuntime::new(Some(2)) {
        Ok(r) => runtimes.push(Box::new(r)),
        Err(e) => {
            assert!(!common::required(), "ONNXQ_REQUIRE_ORT=1 but: {e}");
            eprintln!("SKIPPED ORT half: {e}");
        }
    }
    // The whole per-token model (Gemm bias, a model's own bias Add, the table).
    let mut all = feeds.clone();
    let ids: Vec<i64> = (0..16).map(|i| (i * 5) % 16).collect();
    all.push((
        "ids".into(),
        HostTensor::from_i64(vec![4, 4], &ids).unwrap(),
    ));
    let mut whole = Vec::new();
    for rt in &runtimes {
        let mut s = runtime::open_model(&**rt, &q, &[]).unwrap();
        let outs = s.run(&all).unwrap();
        whole.push(
            outs.into_iter()
                .map(|(n, t)| (n, t.to_f32_vec().unwrap()))
                .collect::<Vec<_>>(),
        );
        let run = |m: &Model| {
            let mut s = runtime::open_model(&**rt, m, &[]).unwrap();
            s.run(&feeds).unwrap()[0].1.to_f32_vec().unwrap()
        };
        let want = run(&plain);
        let (e_tensor, e_token) = (
            worst_row_error(&want, &run(&tensor), 64, 1..4),
            worst_row_error(&want, &run(&token), 64, 1..4),
        );
        let e_outlier = worst_row_error(&want, &run(&token), 64, 0..1);
        eprintln!(
            "{}: ordinary rows per tensor {e_tensor:.3e}, per token {e_token:.3e}; outlier row per token {e_outlier:.3e}",
            rt.name()
        );
        assert!(e_token < 0.05 && e_outlier < 0.05, "{e_token} {e_outlier}");
        assert!(e_tensor > 10.0 * e_token, "{e_tensor} vs {e_token}");
    }
    // Both runtimes compute the same integer arithmetic: they agree to float
    // rounding. (ONNX Runtime's MatMulIntegerToFloat fusion would scale a fused
    // bias by each row's scale; the rewrite keeps biases out of it.)
    if let [a, b] = &whole[..] {
        for ((name, x), (_, y)) in a.iter().zip(b) {
            let rows = x.len() / 64;
            let e = worst_row_error(x, y, 64, 0..rows);
            assert!(e < 1e-5, "{name}: tract and onnxruntime differ by {e}");
        }
    }
}

#[test]
fn dynamic_quantizes_a_shared_weight_once() {
    let tmp = tempfile::tempdir().unwrap();
    let model = log_model();
    let q = apply(
        &model,
        "[recipe]\nname='t'\n[[pass]]\nname='int8-dynamic'\n",
    );
    let g = &q.graph;
    assert_eq!(count(&q, "MatMulInteger"), 2);
    let quantized: Vec<&str> = g
        .initializers()
        .filter(|(_, t)| t.dtype() == DType::I8 && t.dims.len() == 2)
        .map(|(_, t)| t.name())
        .collect();
    assert_eq!(quantized, ["w_quantized"]);
    assert_eq!(g.value(g.find("w_quantized").unwrap()).uses().len(), 2);
    assert!(g.find("w").is_none());
    // Positive inputs: Log is finite; tract agrees closely.
    let a = save(&model, tmp.path(), "a.onnx");
    let b = save(&q, tmp.path(), "b.onnx");
    let r = compare(&a, &b, &VerifyOptions::default()).unwrap();
    let z = r.outputs.iter().find(|o| o.name == "z").unwrap();
    assert!(z.rel_l2 < 0.03, "{z:?}");
}

/// x[batch, 64 tokens, 32] → MatMul(wa) → a, and x·gain → xs → MatMul(wb) → b,
/// where gain lifts channel 5 of the first token 500-fold: `xs` carries one massive
/// activation per sample, as the inputs of LLM down projections do.
fn outlier_model() -> Model {
    let mut m = empty_model("outlier");
    let g = &mut m.graph;
    let batch = || Dim::Param("batch".into());
    let x = g
        .add_input(
            "x",
            common::build::tensor_info(DType::F32, &[batch(), Dim::Value(64), Dim::Value(32)]),
        )
        .unwrap();
    let mut gain = vec![1.0f32; 64 * 32];
    gain[5] = 500.0;
    let gain = g
        .add_initializer(Tensor::from_f32("gain", vec![64, 32], &gain))
        .unwrap();
    let xs = g
        .add_node(
            NodeSpec::new("", "Mul")
                .name("lift")
                .input(x)
                .input(gain)
                .output("xs"),
        )
        .unwrap();
    let xs = g.node(xs).output(0).unwrap();
    for (name, input, seed) in [("a", x, 21), ("b", xs, 22)] {
        let w = g
            .add_initializer(Tensor::from_f32(
                format!("w{name}"),
                vec![32, 16],
                &common::build::weights(32 * 16, seed, 0.3),
            ))
            .unwrap();
        g.add_node(
            NodeSpec::new("", "MatMul")
                .name(format!("mm_{name}"))
                .input(input)
                .input(w)
                .output(name),
        )
        .unwrap();
        let v = g.find(name).unwrap();
        g.outputs.push(GraphIo {
            value: v,
            info: common::build::tensor_info(
                DType::F32,
                &[batch(), Dim::Value(64), Dim::Value(16)],
            ),
        });
    }
    m
}

#[test]
fn exclude_worst_leaves_outlier_inputs_float_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let model = outlier_model();
    let orig = save(&model, tmp.path(), "o.onnx");
    let base = "[[pass]]\nname='int8-static-qdq'\nper-channel=true\n";
    let (all, _) = run_recipe(&model, &format!("{base}exclude-worst=0\n"));
    let (auto, outcomes) = run_recipe(&model, &format!("{base}exclude-worst='auto'\n"));
    let (one, _) = run_recipe(&model, &format!("{base}exclude-worst=1\n"));
    let float_weight = |m: &Model, w: &str| {
        let g = &m.graph;
        g.find(w)
            .and_then(|v| g.initializer(v))
            .is_some_and(|t| t.dtype() == DType::F32)
    };
    assert!(!float_weight(&all, "wb") && !float_weight(&all, "wa"));
    for m in [&auto, &one] {
        assert!(
            float_weight(m, "wb"),
            "mm_b reads the outlier channel: left float"
        );
        assert!(!float_weight(m, "wa"), "mm_a is quantized");
    }
    let notes = outcomes
        .iter()
        .flat_map(|o| o.notes.iter())
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        notes.contains("left float mm_b") && notes.contains("'xs'"),
        "{notes}"
    );
    assert!(
        notes.contains("noisiest input kept quantized: 'x'"),
        "{notes}"
    );
    // Output b: quantized, the ordinary values of its input fall below one step.
    let b_error = |m: &Model, name: &str| {
        let r = compare(&orig, &save(m, tmp.path(), name), &VerifyOptions::default()).unwrap();
        r.outputs.iter().find(|o| o.name == "b").unwrap().rel_l2
    };
    let (e_all, e_auto) = (b_error(&all, "all.onnx"), b_error(&auto, "auto.onnx"));
    eprintln!("outlier model, tract: output b rel L2 all quantized {e_all:.3e}, exclude-worst auto {e_auto:.3e}");
    assert!(e_all > 1e-2 && e_auto < 1e-6, "{e_all} vs {e_auto}");
    let bad = try_apply(
        &model,
        &format!("[recipe]\nname='t'\n{base}exclude-worst='most'\n"),
    )
    .err()
    .unwrap();
    assert!(bad.to_string().contains("a count or \"auto\""), "{bad}");
}

#[test]
fn static_qdq_folds_relu_and_quantizes_conv_weights_and_biases() {
    let tmp = tempfile::tempdir().unwrap();
    let orig_path = fixture("cnn.onnx");
    let model = onnxq::load(&orig_path).unwrap();
    let q = apply(
        &model,
        "[recipe]\nname='t'\n[[pass]]\nname='int8-static-qdq'\nper-channel=true\n",
    );
    // relu1 and relu3 follow quantized Convs: folded. relu2 follows BatchNormalization
    // (stays float) and relu4 an Add (not quantized by default): kept.
    assert_eq!(
        count(&model, "Relu") - count(&q, "Relu"),
        2,
        "{:?}",
        ops(&q)
    );
    assert_eq!(count(&q, "BatchNormalization"), 1);
    let g = &q.graph;
    let bn = g
        .nodes()
        .find(|(_, n)| n.op_type == "BatchNormalization")
        .unwrap()
        .1;
    for v in bn.inputs().iter().skip(1).flatten() {
        assert!(g.initializer(*v).is_some_and(|t| t.dtype() == DType::F32));
    }
    // Conv weights: int8, symmetric, per output channel; biases int32.
    let w = g
        .initializer(g.find("conv1.weight_quantized").unwrap())
        .unwrap();
    assert_eq!(w.dtype(), DType::I8);
    let s = g
        .initializer(g.find("conv1.weight_scale").unwrap())
        .unwrap();
    assert_eq!(s.dims, [8]);
    let z = g
        .initializer(g.find("conv1.weight_zero_point").unwrap())
        .unwrap();
    assert!(z.to_i64().unwrap().iter().all(|&v| v == 0));
    let b = g
        .initializer(g.find("conv1.bias_quantized").unwrap())
        .unwrap();
    assert_eq!(b.dtype(), DType::I32);
    // Constant-node weights are weights too.
    assert_eq!(count(&q, "Constant"), 0);
    // The graph output stays exact float: produced by the Gemm itself.
    let logits = g.outputs[0].value;
    assert_eq!(g.node(g.producer(logits).unwrap()).op_type, "Gemm");
    let out = save(&q, tmp.path(), "q.onnx");
    let e = rel_l2(&orig_path, &out);
    eprintln!("cnn static QDQ per-channel (random calibration), tract: rel L2 {e:.3e}");
    assert!(e > 0.0 && e < 0.05, "{e}");
}

#[test]
fn softmax_norms_and_activation_products_stay_float() {
    let model = onnxq::load(&fixture("llama-decomposed.onnx")).unwrap();
    let q = apply(
        &model,
        "[recipe]\nname='t'\n[[pass]]\nname='int8-static-qdq'\ncalib-samples=2\n",
    );
    let g = &q.graph;
    let from = |v: onnxq::ir::ValueId| g.producer(v).map(|p| g.node(p).op_type.clone());
    for (_, n) in g.nodes() {
        let reads_dq = n
            .inputs()
            .iter()
            .flatten()
            .any(|&v| from(v).as_deref() == Some("DequantizeLinear"));
        let output_quantized = n.outputs().iter().flatten().any(|&v| {
            g.value(v).uses().iter().any(|u| {
                matches!(u, onnxq::ir::Use::Input(c, _) if g.node(*c).op_type == "QuantizeLinear")
            })
        });
        match n.op_type.as_str() {
            // Softmax and the normalization arithmetic: float in, float out.
            "Softmax" | "ReduceMean" | "Pow" | "Sqrt" | "Div" | "Cos" | "Sin" => {
                assert!(
                    !reads_dq && !output_quantized,
                    "{} '{}' was quantized",
                    n.op_type,
                    n.name()
                )
            }
            // The residual stream is never quantized.
            "Add" => assert!(!output_quantized, "'{}' output quantized", n.name()),
            // Attention scores and weighted values: activation × activation.
            "MatMul" if !n.name().contains("proj") && !n.name().contains("lm_head") => {
                assert!(!reads_dq, "'{}' was quantized", n.name())
            }
            _ => {}
        }
    }
    // 2 layers × 7 projections + lm_head; the embedding table stays float.
    assert_eq!(
        g.initializers()
            .filter(|(_, t)| t.dtype() == DType::I8 && t.dims.len() == 2)
            .count(),
        15
    );
}

#[test]
fn existing_quantization_is_left_alone() {
    let model = common::build::mlp(false);
    let int4 = apply(
        &model,
        "[recipe]\nname='t'\n[[pass]]\nname='matmul-nbits'\nformat='qdq'\n",
    );
    let dq_before = count(&int4, "DequantizeLinear");
    assert_eq!(dq_before, 2);
    // Every MatMul now reads a DequantizeLinear weight: nothing left to quantize.
    let r = Recipe::parse(
        "t",
        "[recipe]\nname='t'\n[[pass]]\nname='int8-static-qdq'\ncalib-samples=1\n",
    )
    .unwrap();
    let mut again = int4.clone();
    let outcomes = run_pipeline(&mut again, &r.build().unwrap(), &mut PassCx::default()).unwrap();
    assert!(!outcomes[0].changed, "{:?}", outcomes[0]);
    assert_eq!(count(&again, "DequantizeLinear"), dq_before);
    let d = apply(&int4, "[recipe]\nname='t'\n[[pass]]\nname='int8-dynamic'\n");
    assert_eq!(count(&d, "MatMulInteger"), 0);
    assert_eq!(count(&d, "DequantizeLinear"), dq_before);
}

#[test]
fn exclude_patterns_and_op_types_are_honoured() {
    let model = common::build::mlp(true);
    let q = apply(
        &model,
        "[recipe]\nname='t'\n[[pass]]\nname='int8-dynamic'\nexclude=['fc1/*', 'fc2/*']\nop-types=['MatMul', 'Gemm']\n",
    );
    assert_eq!(count(&q, "MatMulInteger"), 3, "{:?}", ops(&q));
    assert_eq!(count(&q, "Gemm"), 1);
    assert!(q
        .graph
        .nodes()
        .any(|(_, n)| n.name() == "fc1/MatMul" && n.op_type == "MatMul"));
    assert_eq!(count(&q, "Gather"), 1);
    assert!(
        q.graph.find("embed.weight").is_some(),
        "Gather not in op-types"
    );
    let s = apply(
        &model,
        "[recipe]\nname='t'\n[[pass]]\nname='int8-static-qdq'\ncalib-samples=1\nexclude=['fc0/*']\n",
    );
    let mm0 = s
        .graph
        .nodes()
        .find(|(_, n)| n.name() == "fc0/MatMul")
        .unwrap()
        .1;
    assert!(s
        .graph
        .initializer(mm0.input(1).unwrap())
        .is_some_and(|t| t.dtype() == DType::F32));
}

#[test]
fn qoperator_folds_units_into_integer_ops_that_tract_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let orig_path = fixture("cnn.onnx");
    let model = onnxq::load(&orig_path).unwrap();
    let q = apply(
        &model,
        "[recipe]\nname='t'\n[[pass]]\nname='int8-static-qdq'\n[[pass]]\nname='int8-qoperator'\ncontrib-ops=false\n",
    );
    assert_eq!(count(&q, "QLinearConv"), 3, "{:?}", ops(&q));
    assert_eq!(count(&q, "QLinearMatMul"), 1, "{:?}", ops(&q));
    assert_eq!(count(&q, "Conv"), 0);
    // MaxPool and Flatten run on the int8 tensor.
    let g = &q.graph;
    let pool = g.nodes().find(|(_, n)| n.op_type == "MaxPool").unwrap().1;
    let src = g.producer(pool.input(0).unwrap()).unwrap();
    assert_eq!(g.node(src).op_type, "QLinearConv");
    let out = save(&q, tmp.path(), "qop.onnx");
    let e = rel_l2(&orig_path, &out);
    eprintln!("cnn QOperator (standard ops), tract: rel L2 {e:.3e}");
    assert!(e > 0.0 && e < 0.06, "{e}");
}

#[test]
fn smooth_quant_keeps_the_float_function_and_moves_the_outliers() {
    let tmp = tempfile::tempdir().unwrap();
    let orig_path = fixture("llama-decomposed.onnx");
    let model = onnxq::load(&orig_path).unwrap();
    let r = Recipe::parse(
        "t",
        "[recipe]\nname='t'\n[[pass]]\nname='smooth-quant'\nalpha=0.5\ncalib-samples=2\n",
    )
    .unwrap();
    let mut m = model.clone();
    let outcome = run_pipeline(&mut m, &r.build().unwrap(), &mut PassCx::default()).unwrap();
    // 2 layers × (qkv after input norm, gate/up after post-attention norm, down after the
    // gated Mul) + lm_head after the final norm.
    assert_eq!(
        outcome[0].counters["activations smoothed"], 7,
        "{:?}",
        outcome[0]
    );
    let gamma = |m: &Model| {
        let g = &m.graph;
        let v = g.find("model.layers.1.input_layernorm.weight").unwrap();
        g.initializer(v).unwrap().to_f32().unwrap()
    };
    let (before, after) = (gamma(&model), gamma(&m));
    // The planted outlier channels (5, 37) shrink relative to the rest.
    let ratio = |g: &[f32]| g[5].abs() / (g.iter().map(|x| x.abs()).sum::<f32>() / g.len() as f32);
    assert!(
        ratio(&after) < ratio(&before) * 0.7,
        "{} {}",
        ratio(&before),
        ratio(&after)
    );
    let out = save(&m, tmp.path(), "sq.onnx");
    let e = rel_l2(&orig_path, &out);
    assert!(e < 1e-5, "smoothing changed the function: {e}");
    // Auto α: every group gets its own α (reported), the function stays the same.
    let r = Recipe::parse(
        "t",
        "[recipe]\nname='t'\n[[pass]]\nname='smooth-quant'\nalpha='auto'\ncalib-samples=2\n",
    )
    .unwrap();
    let mut m = model.clone();
    let outcome = run_pipeline(&mut m, &r.build().unwrap(), &mut PassCx::default()).unwrap();
    let o = &outcome[0];
    let chosen: Vec<&String> = o.notes.iter().filter(|n| n.contains("α=")).collect();
    assert_eq!(chosen.len(), 7, "{:?}", o.notes);
    let smoothed = o.counters.get("activations smoothed").copied().unwrap_or(0);
    assert!(smoothed >= 5, "{o:?}");
    let out = save(&m, tmp.path(), "sq-auto.onnx");
    let e = rel_l2(&orig_path, &out);
    assert!(e < 1e-5, "auto smoothing changed the function: {e}");
}

#[test]
fn nodes_config_sets_activation_types_per_node_and_skips() {
    let tmp = tempfile::tempdir().unwrap();
    let model = onnxq::load(&fixture("llama-decomposed.onnx")).unwrap();
    let write = |name: &str, json: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, json).unwrap();
        p.display().to_string()
    };
    let cfg = write(
        "nodes.json",
        r#"{"*/down_proj/*": {"activation-type": "int16"}, "*/o_proj/*": "skip"}"#,
    );
    let q = apply(
        &model,
        &format!("[recipe]\nname='t'\n[[pass]]\nname='int8-static-qdq'\nnodes-config='{cfg}'\n"),
    );
    let g = &q.graph;
    let zp_of = |node: &str| {
        let n = g.nodes().find(|(_, n)| n.name() == node).unwrap().1;
        let x = n.input(0).unwrap();
        let dq = g.node(g.producer(x).unwrap());
        assert_eq!(dq.op_type, "DequantizeLinear", "{node}");
        (
            g.initializer(dq.input(2).unwrap()).unwrap().dtype(),
            dq.domain().to_string(),
        )
    };
    // int16 between int8 activations: com.microsoft Q/DQ, the default opset kept.
    assert_eq!(
        zp_of("/model/layers.0/mlp/down_proj/MatMul"),
        (DType::I16, "com.microsoft".to_string())
    );
    assert_eq!(
        zp_of("/model/layers.0/mlp/gate_proj/MatMul"),
        (DType::I8, String::new())
    );
    assert!(q.opset("").unwrap() < 21);
    assert!(
        g.find("model.layers.0.self_attn.o_proj.weight")
            .and_then(|v| g.initializer(v))
            .is_some_and(|t| t.dtype() == DType::F32),
        "o_proj skipped"
    );
    // Settings a pass does not take are refused, naming the pattern.
    let bits = write("bits.json", r#"{"*/q_proj/*": {"bits": 4}}"#);
    let e = try_apply(
        &model,
        &format!("[recipe]\nname='t'\n[[pass]]\nname='int8-static-qdq'\nnodes-config='{bits}'\n"),
    )
    .err()
    .unwrap();
    assert!(
        e.to_string()
            .contains("node '*/q_proj/*': int8-static-qdq does not take 'bits'"),
        "{e}"
    );
    let act = write("act.json", r#"{"*": {"activation-type": "int16"}}"#);
    let e = try_apply(
        &model,
        &format!("[recipe]\nname='t'\n[[pass]]\nname='matmul-nbits'\nnodes-config='{act}'\n"),
    )
    .err()
    .unwrap();
    assert!(
        e.to_string().contains("does not take 'activation-type'"),
        "{e}"
    );
    let f8 = write("f8.json", r#"{"*": {"activation-type": "float8e4m3fn"}}"#);
    let e = try_apply(
        &model,
        &format!("[recipe]\nname='t'\n[[pass]]\nname='int8-static-qdq'\nnodes-config='{f8}'\n"),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("whole pass"), "{e}");
}

#[test]
fn int16_activations_raise_the_opset() {
    let model = onnxq::load(&fixture("cnn.onnx")).unwrap();
    let q = apply(
        &model,
        "[recipe]\nname='t'\n[[pass]]\nname='int8-static-qdq'\nactivation-type='int16'\ncalib-samples=2\n",
    );
    assert_eq!(q.opset(""), Some(21));
    let g = &q.graph;
    let zp = g.initializer(g.find("input_zero_point").unwrap()).unwrap();
    assert_eq!(zp.dtype(), DType::I16);
    // QLinear ops take 8-bit activations: int16 units stay in QDQ form.
    let (qop, outcomes) = run_recipe(
        &model,
        "[[pass]]\nname='int8-static-qdq'\nactivation-type='int16'\ncalib-samples=2\n[[pass]]\nname='int8-qoperator'\n",
    );
    assert!(
        outcomes[1]
            .notes
            .iter()
            .any(|n| n.contains("stay in QDQ form")),
        "{:?}",
        outcomes[1].notes
    );
    assert_eq!(count(&qop, "QLinearConv"), 0, "{:?}", ops(&qop));
    assert_eq!(count(&qop, "QuantizeLinear"), count(&q, "QuantizeLinear"));
}

#[test]
fn bad_settings_are_refused_before_the_model_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let tokenizer = fixture("tokenizer.json").display().to_string();
    let out = tmp.path().join("q.onnx");
    let o = out.to_str().unwrap();
    for (args, want) in [
        (
            vec!["--algorithm", "rtn", "--calib", "d"],
            "--calib applies to --algorithm dynamic|static",
        ),
        (
            vec!["--algorithm", "dynamic", "--calib", "d"],
            "--calib applies to --algorithm static",
        ),
        (
            vec!["--algorithm", "static", "--format", "matmulnbits"],
            "weight-only",
        ),
        (
            vec!["--algorithm", "static", "--bits", "4"],
            "--bits applies to the weight-only",
        ),
        (
            vec!["--algorithm", "rtn", "--format", "qoperator"],
            "qoperator applies to --algorithm static",
        ),
        (
            vec!["--algorithm", "static", "--calib", "/nonexistent-calib"],
            "nonexistent-calib",
        ),
        (
            vec!["--algorithm", "static", "--weight-type", "uint8"],
            "uint8 weights",
        ),
        (
            vec!["--algorithm", "static", "--smooth-quant", "1.5"],
            "alpha",
        ),
        (
            vec!["--algorithm", "static", "--smooth-quant", "strong"],
            "--smooth-quant takes an alpha in [0, 1] or auto",
        ),
        (
            vec!["--algorithm", "dynamic", "--calib-text", "t.txt"],
            "--calib-text applies to --algorithm gptq|awq|static",
        ),
        (
            vec![
                "--algorithm",
                "static",
                "--activation-type",
                "float8e4m3fn",
                "--format",
                "qoperator",
            ],
            "float8 activations have no QOperator kernels",
        ),
        (
            vec![
                "--algorithm",
                "static",
                "--activation-type",
                "float8e4m3fn",
                "--smooth-quant",
            ],
            "float8 activations keep outliers",
        ),
        (
            vec!["--algorithm", "static", "--weight-type", "float8e4m3fn"],
            "--weight-type takes int8 or uint8",
        ),
        (
            vec!["--algorithm", "static", "--activations", "per-token"],
            "--activations applies to --algorithm dynamic",
        ),
        (
            vec!["--algorithm", "rtn", "--activations", "per-tensor"],
            "--activations applies to --algorithm dynamic|static",
        ),
        (
            vec!["--algorithm", "dynamic", "--weight-type", "uint8"],
            "uint8 weights need activations = \"per-tensor\"",
        ),
        (
            vec!["--algorithm", "static", "--calib-text", "t.txt"],
            "needs a tokenizer",
        ),
        (
            vec![
                "--algorithm",
                "static",
                "--calib-text",
                "/nonexistent-text.txt",
                "--tokenizer",
                tokenizer.as_str(),
            ],
            "nonexistent-text.txt",
        ),
    ] {
        let mut a = vec!["/nonexistent.onnx", o];
        a.extend(args.iter().copied());
        let r = quantize_cli(&a);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            !err.contains("nonexistent.onnx"),
            "{args:?} read the model: {err}"
        );
    }
    assert!(!out.exists());
}

#[test]
fn mismatched_calibration_data_is_named_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let cnn = fixture("cnn.onnx");
    let out = tmp.path().join("q.onnx");
    let input: Vec<f32> = (0..3 * 16 * 16).map(|i| (i % 7) as f32 / 7.0).collect();
    // (case, files of the calibration directory, expected message)
    type Case<'a> = (&'a str, Vec<(&'a str, Vec<u8>)>, &'a str);
    let cases: Vec<Case> = vec![
        ("empty", vec![], "calibration set is empty"),
        (
            "name",
            vec![(
                "s0/image.npy",
                npy("<f4", &[1, 3, 16, 16], &f32_bytes(&input)),
            )],
            "array 'image' is not an input of the model (inputs: input)",
        ),
        (
            "shape",
            vec![(
                "s0/input.npy",
                npy("<f4", &[1, 3, 8, 8], &f32_bytes(&input[..192])),
            )],
            "input 'input' dim 2 is 16 in the model but 8",
        ),
        (
            "rank",
            vec![("s0/input.npy", npy("<f4", &[3, 16, 16], &f32_bytes(&input)))],
            "input 'input' has rank 4",
        ),
        (
            "dtype",
            vec![(
                "s0/input.npy",
                npy("<i8", &[1, 3, 16, 16], &vec![0; 8 * 768]),
            )],
            "input 'input' is float in the model but int64",
        ),
        (
            "f64",
            vec![("x.npy", npy("<f8", &[1, 3, 16, 16], &vec![0; 8 * 768]))],
            "input 'input' is float in the model but double in the sample",
        ),
    ];
    for (name, files, want) in cases {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (f, bytes) in files {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        let r = quantize_cli(&[
            cnn.to_str().unwrap(),
            out.to_str().unwrap(),
            "--algorithm",
            "static",
            "--calib",
            dir.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
        assert!(!out.exists(), "{name}: output written");
    }
    // The same data, well formed, as a bare .npy per sample of a one-input model.
    let good = tmp.path().join("good");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::write(
        good.join("a.npy"),
        npy("<f4", &[1, 3, 16, 16], &f32_bytes(&input)),
    )
    .unwrap();
    let r = quantize_cli(&[
        cnn.to_str().unwrap(),
        out.to_str().unwrap(),
        "--algorithm",
        "static",
        "--calib",
        good.to_str().unwrap(),
        "--report",
        tmp.path().join("r.json").to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("r.json")).unwrap()).unwrap();
    assert_eq!(report["passes"][0]["counters"]["calibration samples"], 1);
}

#[test]
fn non_finite_activations_warn_or_fail_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let model = log_model();
    let path = save(&model, tmp.path(), "log.onnx");
    let out = tmp.path().join("q.onnx");
    // Some inputs ≤ 0: Log gives NaN/-inf there; ranges use the finite values.
    let mixed = tmp.path().join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    let v: Vec<f32> = (0..16).map(|i| i as f32 - 3.0).collect();
    std::fs::write(mixed.join("s.npy"), npy("<f4", &[2, 8], &f32_bytes(&v))).unwrap();
    let r = quantize_cli(&[
        path.to_str().unwrap(),
        out.to_str().unwrap(),
        "--algorithm",
        "static",
        "--calib",
        mixed.to_str().unwrap(),
        "--no-verify",
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("tensor 'l': 4 NaN/infinite values"), "{err}");
    // Only negative inputs: nothing finite to calibrate 'l' on.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("s.npy"),
        npy("<f4", &[1, 8], &f32_bytes(&[-1.0; 8])),
    )
    .unwrap();
    std::fs::remove_file(&out).unwrap();
    let r = quantize_cli(&[
        path.to_str().unwrap(),
        out.to_str().unwrap(),
        "--algorithm",
        "static",
        "--calib",
        bad.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains("tensor 'l': all 8 values seen in calibration are NaN"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn minmax_ranges_over_many_samples_are_the_extremes_of_their_union() {
    // Statistics are reduced sample by sample: 40 samples give one min/max per
    // tensor equal to the extremes over all of them. (How much memory calibration
    // holds is not measured here.)
    let tmp = tempfile::tempdir().unwrap();
    let model = log_model();
    let dir = tmp.path().join("many");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..40 {
        let v: Vec<f32> = (0..8).map(|j| 1.0 + ((i * 8 + j) % 13) as f32).collect();
        std::fs::write(
            dir.join(format!("s{i:02}.npy")),
            npy("<f4", &[1, 8], &f32_bytes(&v)),
        )
        .unwrap();
    }
    let source = onnxq::calib::Source::open(&dir).unwrap();
    assert_eq!(source.len(), 40);
    let tensors: BTreeSet<String> = ["x", "l", "y"].iter().map(|s| s.to_string()).collect();
    let cal = onnxq::calib::calibrate(
        &model,
        &tensors,
        &source,
        onnxq::calib::Method::MinMax,
        &onnxq::runtime::tract::TractRuntime,
        &indicatif::ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!(cal.ranges["x"], (1.0, 13.0));
    let (lo, hi) = cal.ranges["l"];
    assert!(
        (lo - 0.0).abs() < 1e-6 && (hi - 13f32.ln()).abs() < 1e-5,
        "{lo} {hi}"
    );
    assert_eq!(cal.samples, 40);
}

#[test]
fn calibration_ranges_match_onnxruntimes_calibrators() {
    let Some(py) = common::python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cnn = fixture("cnn.onnx");
    let calib = tmp.path().join("calib");
    common::py(
        &py,
        "int8_compare.py",
        &[
            "calib-data",
            cnn.to_str().unwrap(),
            calib.to_str().unwrap(),
            "6",
        ],
    );
    let model = onnxq::load(&cnn).unwrap();
    let source = onnxq::calib::Source::open(&calib).unwrap();
    use onnxq::calib::Method;
    for (ort_method, extra, method) in [
        ("MinMax", vec![], Method::MinMax),
        (
            "Percentile",
            vec!["--percentile", "99.9"],
            Method::Percentile {
                bins: 2048,
                percentile: 99.9,
                symmetric: true,
            },
        ),
        (
            "Entropy",
            vec!["--num-bins", "512", "--num-quantized-bins", "128"],
            Method::Entropy {
                bins: 512,
                quantized_bins: 128,
            },
        ),
        ("Distribution", vec![], Method::Distribution),
    ] {
        let mut args = vec![
            "ranges",
            cnn.to_str().unwrap(),
            calib.to_str().unwrap(),
            ort_method,
        ];
        args.extend(extra.iter().copied());
        let text = common::py(&py, "int8_compare.py", &args);
        let json = text.lines().rev().find(|l| l.starts_with('{')).unwrap();
        let want: BTreeMap<String, (f32, f32)> = serde_json::from_str(json).unwrap();
        let tensors: BTreeSet<String> = want.keys().cloned().collect();
        let got = onnxq::calib::calibrate(
            &model,
            &tensors,
            &source,
            method,
            &onnxq::runtime::tract::TractRuntime,
            &indicatif::ProgressBar::hidden(),
        )
        .unwrap();
        let bins = match method {
            Method::Percentile { bins, .. } | Method::Entropy { bins, .. } => bins as f32,
            _ => f32::INFINITY,
        };
        for (name, (lo, hi)) in &want {
            let (a, b) = got.ranges[name];
            let absmax = lo.abs().max(hi.abs());
            // Ranges are histogram edges: tract's and onnxruntime's activations differ
            // in the last bits, which can move a value across one edge.
            let tol = 1e-5 * absmax + 2.0 * 2.0 * absmax / bins;
            assert!(
                (a - lo).abs() <= tol && (b - hi).abs() <= tol,
                "{ort_method} {name}: onnxq [{a}, {b}] vs onnxruntime [{lo}, {hi}]"
            );
        }
        eprintln!("{ort_method}: {} ranges agree", want.len());
        assert!(want.len() >= 10);
    }
}

#[test]
fn shipped_int8_recipes_run() {
    let model = common::build::mlp(false);
    for name in ["int8-dynamic", "int8-static-qdq", "int8-static-qoperator"] {
        let r = Recipe::load(name).unwrap();
        let mut m = model.clone();
        let out = run_pipeline(&mut m, &r.build().unwrap(), &mut PassCx::default()).unwrap();
        assert!(out[0].changed, "{name}");
    }
    assert!(try_apply(
        &model,
        "[recipe]\nname='t'\n[[pass]]\nname='int8-dynamic'\nop-types=['Softmax']\n"
    )
    .is_err());
}

/// The fixture text split at a line boundary: (calibration part, held-out part).
fn split_sample() -> (String, String) {
    let text = std::fs::read_to_string(fixture("sample.txt")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines.len() * 2 / 3;
    (lines[..cut].join("\n"), lines[cut..].join("\n"))
}

/// Held-out text windows for evaluation, and the calibration part written to `dir`.
fn text_calibration(dir: &Path) -> (PathBuf, Vec<Vec<i64>>) {
    let (calib, held_out) = split_sample();
    let path = dir.join("calib.txt");
    std::fs::write(&path, calib).unwrap();
    let tok = onnxq::calib::tokenizer::Tokenizer::from_file(&fixture("tokenizer.json")).unwrap();
    let ids = tok.encode(&held_out).unwrap();
    let windows = onnxq::calib::text::TextSamples::windows(&ids, 8, 48, 99).windows;
    (path, windows)
}

/// Relative L2 over 8 seeded random input sets (as `onnxq verify`), in tract.
fn random_error(reference: &Path, cand: &Path) -> f64 {
    let r = compare(
        reference,
        cand,
        &VerifyOptions {
            samples: 8,
            runtime: onnxq::runtime::RuntimeKind::Auto,
            ..Default::default()
        },
    )
    .unwrap();
    r.outputs[0].rel_l2
}

/// Recipe keys for text calibration on the fixture text's calibration part.
fn text_keys(calib: &Path, samples: usize, seqlen: usize) -> String {
    format!(
        "calib-text='{}'\ntokenizer='{}'\ncalib-samples={samples}\ncalib-seqlen={seqlen}\n",
        calib.display(),
        fixture("tokenizer.json").display()
    )
}

fn run_recipe(model: &Model, recipe: &str) -> (Model, Vec<onnxq::pass::PassOutcome>) {
    let r = Recipe::parse("t", &format!("[recipe]\nname='t'\n{recipe}")).unwrap();
    let mut m = model.clone();
    let out = run_pipeline(&mut m, &r.build().unwrap(), &mut PassCx::default()).unwrap();
    (m, out)
}

#[test]
fn static_calibrates_on_text_windows_and_fits_text_better_than_random_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let (calib, eval) = text_calibration(tmp.path());
    let tract = onnxq::runtime::RuntimeKind::Tract;
    for name in ["llama-decomposed.onnx", "llama-decomposed-kv.onnx"] {
        let orig = fixture(name);
        let model = onnxq::load(&orig).unwrap();
        let (q, outcome) = run_recipe(
            &model,
            &format!(
                "[[pass]]\nname='int8-static-qdq'\n{}",
                text_keys(&calib, 16, 64)
            ),
        );
        let o = &outcome[0];
        assert_eq!(o.counters["calibration samples"], 16, "{o:?}");
        assert!(
            o.notes
                .iter()
                .any(|n| n.contains("16 windows of 64 tokens")),
            "{:?}",
            o.notes
        );
        assert!(count(&q, "QuantizeLinear") > 20, "{:?}", ops(&q));
        let text = save(&q, tmp.path(), "text.onnx");
        let e_text = common::text_logits_error(&orig, &text, &eval, tract);
        let (r, _) = run_recipe(
            &model,
            "[[pass]]\nname='int8-static-qdq'\ncalib-samples=16\n",
        );
        let random = save(&r, tmp.path(), "random.onnx");
        let e_random = common::text_logits_error(&orig, &random, &eval, tract);
        eprintln!(
            "{name}: static int8 logits rel-L2 on held-out text: calibrated on text {e_text:.4e}, \
             on random inputs {e_random:.4e}"
        );
        assert!(e_text > 0.0 && e_text <= e_random, "{e_text} {e_random}");
    }
}

#[test]
fn text_calibration_refuses_token_ids_beyond_the_embedding_table() {
    let tmp = tempfile::tempdir().unwrap();
    let (calib, _) = text_calibration(tmp.path());
    let mut model = onnxq::load(&fixture("llama-decomposed.onnx")).unwrap();
    // Keep 100 of the 320 rows: the tokenizer's ids go beyond.
    let g = &mut model.graph;
    let v = g.find("model.embed_tokens.weight").unwrap();
    let t = g.initializer(v).unwrap().clone();
    let rows = t.to_f32().unwrap()[..100 * 64].to_vec();
    g.set_initializer(v, Tensor::from_f32(t.name(), vec![100, 64], &rows));
    for pass in ["int8-static-qdq", "smooth-quant"] {
        let err = try_apply(
            &model,
            &format!(
                "[recipe]\nname='t'\n[[pass]]\nname='{pass}'\n{}",
                text_keys(&calib, 2, 16)
            ),
        )
        .err()
        .unwrap_or_else(|| panic!("{pass}: ids beyond the table were accepted"))
        .to_string();
        assert!(
            err.contains("model.embed_tokens.weight") && err.contains("100 rows"),
            "{pass}: {err}"
        );
    }
}

#[test]
fn smooth_quant_auto_alpha_is_no_worse_than_no_smoothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (calib, eval) = text_calibration(tmp.path());
    let tract = onnxq::runtime::RuntimeKind::Tract;
    let orig = fixture("llama-decomposed.onnx");
    let model = onnxq::load(&orig).unwrap();
    let text = text_keys(&calib, 16, 64);
    // (calibration, how the result is measured)
    for (data, on_text) in [(text.as_str(), true), ("calib-samples=8\n", false)] {
        let mut errors = Vec::new();
        for sq in ["", "alpha=0.5", "alpha='auto'"] {
            let mut r = String::new();
            if !sq.is_empty() {
                r += &format!("[[pass]]\nname='smooth-quant'\n{sq}\n{data}");
            }
            r += &format!("[[pass]]\nname='int8-static-qdq'\n{data}");
            let (q, outcome) = run_recipe(&model, &r);
            if sq.contains("auto") {
                let chosen = outcome[0].notes.iter().filter(|n| n.contains("α=")).count();
                assert_eq!(chosen, 7, "one α per group: {:?}", outcome[0].notes);
            }
            let out = save(&q, tmp.path(), "q.onnx");
            errors.push(if on_text {
                common::text_logits_error(&orig, &out, &eval, tract)
            } else {
                random_error(&orig, &out)
            });
        }
        let [none, half, auto] = errors[..] else {
            unreachable!()
        };
        eprintln!(
            "static int8 ({}), logits rel-L2 on {}: no SmoothQuant {none:.4e}, α=0.5 {half:.4e}, \
             auto α {auto:.4e}",
            if on_text {
                "text calibration"
            } else {
                "random calibration"
            },
            if on_text {
                "held-out text"
            } else {
                "random inputs"
            },
        );
        assert!(auto <= none, "auto α {auto} worse than none {none}");
    }
}

#[test]
fn quantize_cli_calibrates_static_and_smooth_quant_on_text() {
    let tmp = tempfile::tempdir().unwrap();
    let (calib, _) = text_calibration(tmp.path());
    let out = tmp.path().join("q.onnx");
    let tok = fixture("tokenizer.json");
    let r = quantize_cli(&[
        fixture("llama-decomposed-kv.onnx").to_str().unwrap(),
        out.to_str().unwrap(),
        "--algorithm",
        "static",
        "--smooth-quant",
        "--calib-text",
        calib.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--calib-samples",
        "4",
        "--calib-seqlen",
        "32",
        "--runtime",
        "tract",
        "--max-rel-l2",
        "0.2",
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    // Both passes calibrate on the same windows; SmoothQuant reports each group's α.
    assert_eq!(err.matches("4 windows of 32 tokens").count(), 2, "{err}");
    assert!(err.contains("α="), "{err}");
    assert!(out.exists());
}
