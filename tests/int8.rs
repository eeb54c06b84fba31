//! 8-bit quantization (dynamic, static QDQ/QOperator, SmoothQuant): graph
//! structure and numerics against the float model in tract.
mod common;

use common::int8::*;
use common::run::*;
use onnxq::ir::{DType, Dim, GraphIo, Model, NodeSpec, Tensor};
use onnxq::pass::recipe::Recipe;
use onnxq::pass::{run_pipeline, PassCx};
use onnxq::verify::{compare, VerifyOptions};

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
