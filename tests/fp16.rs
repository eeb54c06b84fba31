//! float16 conversion (`float16` pass, recipes fp16/bf16): the converted model runs in
//! ONNX Runtime and matches the float32 model, keeps its IO types, is half the size,
//! passes the onnx checker; blocked ops stay float32 between boundary Casts only.
mod common;

use std::path::Path;

use onnxq::ir::{DType, Model};

const FP16: &str = "[recipe]\nname='t'\n[[pass]]\nname='float16'\n";

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn check(path: &Path) {
    if let Some(py) = common::python() {
        common::py(&py, "check_model.py", &[path.to_str().unwrap()]);
    }
}

fn io_types(m: &Model) -> Vec<(String, Option<DType>)> {
    let g = &m.graph;
    g.input_specs()
        .into_iter()
        .chain(g.output_specs())
        .map(|s| (s.name, s.dtype))
        .collect()
}

fn casts(m: &Model) -> Vec<(String, String, i64)> {
    let g = &m.graph;
    g.nodes()
        .filter(|(_, n)| n.is("", "Cast"))
        .map(|(_, n)| {
            (
                g.value_name(n.input(0).unwrap()).to_string(),
                g.value_name(n.output(0).unwrap()).to_string(),
                n.attr_int("to").unwrap(),
            )
        })
        .collect()
}

/// No Cast reads the output of a Cast (a pair that cancels or a chain).
fn assert_no_cast_chains(m: &Model) {
    let g = &m.graph;
    for (_, n) in g.nodes().filter(|(_, n)| n.is("", "Cast")) {
        let src = n.input(0).unwrap();
        if let Some(p) = g.producer(src) {
            let p = g.node(p);
            assert!(
                !(p.is("", "Cast") && p.metadata_props.iter().any(|(k, _)| k == "onnxq.pass")),
                "Cast '{}' reads inserted Cast '{}'",
                n.name(),
                p.name()
            );
        }
    }
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

#[test]
fn fixtures_run_in_ort_and_match_float32() {
    if !common::required() {
        eprintln!("SKIPPED: needs ONNX Runtime (ONNXQ_REQUIRE_ORT=1)");
        return;
    }
    let dir = tmp();
    for rel in [
        "cnn.onnx",
        "llama-decomposed.onnx",
        "llama-attention23-kv.onnx",
        "llama-genai-kv.onnx",
        "decoders/decomposed.onnx",
        "decoders/genai.onnx",
        "decoders/opset24.onnx",
        "decoders/dynamo.onnx",
    ] {
        let model = common::forms::load(rel);
        let m = common::run::apply(&model, FP16);
        assert_eq!(io_types(&model), io_types(&m), "{rel}: IO types kept");
        let stem = rel.replace('/', "_");
        let a = common::run::save(&model, dir.path(), &format!("{stem}.f32.onnx"));
        let b = common::run::save(&m, dir.path(), &format!("{stem}.f16.onnx"));
        check(&b);
        assert_no_cast_chains(&m);
        let err = common::run::rel_l2(&a, &b);
        let ratio = file_size(&b) as f64 / file_size(&a) as f64;
        eprintln!("{rel}: rel-L2 {err:.3e}, size {ratio:.3}");
        assert!(err < 1e-2, "{rel}: rel-L2 {err}");
        assert!((0.45..0.66).contains(&ratio), "{rel}: size ratio {ratio}");
        // Every float initializer is float16 now (none is read by a blocked node).
        let f32_inits: Vec<String> = m
            .graph
            .initializers()
            .filter(|(_, t)| t.dtype() == DType::F32)
            .map(|(v, _)| m.graph.value_name(v).to_string())
            .collect();
        assert!(f32_inits.is_empty(), "{rel}: float32 left: {f32_inits:?}");
    }
}

#[test]
fn a_blocked_op_stays_float32_between_casts() {
    let model = common::build::mlp(false);
    let m = common::run::apply(&model, &format!("{FP16}op-block-list = ['Relu']\n"));
    let g = &m.graph;
    let (_, relu) = g.nodes().find(|(_, n)| n.op_type == "Relu").unwrap();
    let input = g.node(g.producer(relu.input(0).unwrap()).unwrap());
    assert!(input.is("", "Cast") && input.attr_int("to") == Some(1));
    let out = relu.output(0).unwrap();
    let readers: Vec<_> = g.value(out).uses().to_vec();
    assert_eq!(readers.len(), 1);
    let onnxq::ir::Use::Input(r, _) = readers[0] else {
        panic!()
    };
    assert!(g.node(r).is("", "Cast") && g.node(r).attr_int("to") == Some(10));
    // Casts: x → fp16, h1 → fp32 (Relu), h2 → fp16 (after Relu), y → fp32 output.
    let mut c = casts(&m);
    c.sort();
    assert_eq!(
        c,
        vec![
            ("h1".to_string(), "h1_fp32".to_string(), 1),
            ("h2".to_string(), "h2_fp16".to_string(), 10),
            ("x".to_string(), "x_fp16".to_string(), 10),
            ("y_float16".to_string(), "y".to_string(), 1),
        ]
    );
    assert_no_cast_chains(&m);
    // A node blocked by name: the same.
    let m2 = common::run::apply(&model, &format!("{FP16}node-block-list = ['rel*']\n"));
    assert_eq!(casts(&m2).len(), 4);
    if common::required() {
        let dir = tmp();
        let a = common::run::save(&model, dir.path(), "a.onnx");
        let b = common::run::save(&m, dir.path(), "b.onnx");
        check(&b);
        let err = common::run::rel_l2(&a, &b);
        eprintln!("mlp with Relu blocked: rel-L2 {err:.3e}");
        assert!(err < 1e-2);
    }
}

#[test]
fn keep_io_types_false_makes_float_io_float16() {
    let model = common::forms::load("cnn.onnx");
    let m = common::run::apply(&model, &format!("{FP16}keep-io-types = false\n"));
    for (name, t) in io_types(&m) {
        assert_eq!(t, Some(DType::F16), "{name}");
    }
    assert!(casts(&m).is_empty(), "{:?}", casts(&m));
    let dir = tmp();
    let b = common::run::save(&m, dir.path(), "b.onnx");
    check(&b);
}

#[test]
fn out_of_range_values_are_clamped_and_counted() {
    let mut model = common::build::mlp(false);
    let g = &mut model.graph;
    let b = g.find("fc0.bias").unwrap();
    let mut v = g.initializer(b).unwrap().to_f32().unwrap();
    v[0] = 1e6;
    v[1] = -f32::INFINITY;
    v[2] = 1e-9;
    g.set_initializer(b, onnxq::ir::Tensor::from_f32("fc0.bias", vec![96], &v));
    let r = onnxq::pass::recipe::Recipe::parse("t", FP16).unwrap();
    let mut m = model.clone();
    let outcomes =
        onnxq::pass::run_pipeline(&mut m, &r.build().unwrap(), &mut Default::default()).unwrap();
    let o = outcomes.iter().find(|o| o.pass == "float16").unwrap();
    assert_eq!(o.counters["values clamped to max-finite"], 2);
    assert_eq!(o.counters["values raised to min-positive"], 1);
    let t = m
        .graph
        .initializer(m.graph.find("fc0.bias").unwrap())
        .unwrap();
    assert_eq!(t.dtype(), DType::F16);
    let w = t.to_f32().unwrap();
    assert_eq!((w[0], w[1]), (65504.0, -65504.0));
    assert!(w[2] > 0.0);
}

#[test]
fn quantized_models_keep_their_ops_with_float16_scales() {
    let dir = tmp();
    for (recipe, op) in [
        ("int4-rtn", "MatMulNBits"),
        ("int4-rtn-qdq", "DequantizeLinear"),
    ] {
        let model = common::forms::load("llama-decomposed.onnx");
        let r = onnxq::pass::recipe::Recipe::load(recipe).unwrap();
        let mut q = model.clone();
        onnxq::pass::run_pipeline(&mut q, &r.build().unwrap(), &mut Default::default()).unwrap();
        let m = common::run::apply(&q, FP16);
        let g = &m.graph;
        let mut n_ops = 0;
        for (_, n) in g.nodes().filter(|(_, n)| n.op_type == op) {
            n_ops += 1;
            let scales = n.input(if op == "MatMulNBits" { 2 } else { 1 }).unwrap();
            let t = g.initializer(scales).expect("scales stay initializers");
            assert_eq!(t.dtype(), DType::F16, "{recipe}: {}", n.name());
        }
        assert!(n_ops > 0);
        if common::required() {
            let a = common::run::save(&q, dir.path(), &format!("{recipe}.onnx"));
            let b = common::run::save(&m, dir.path(), &format!("{recipe}.f16.onnx"));
            check(&b);
            let err = common::run::rel_l2(&a, &b);
            eprintln!("{recipe} then fp16: rel-L2 vs {recipe} {err:.3e}");
            assert!(err < 1e-2, "{recipe}: {err}");
        }
    }
}

#[test]
fn bf16_converts_types() {
    let model = common::forms::load("cnn.onnx");
    let m = common::run::apply(
        &model,
        "[recipe]\nname='t'\n[[pass]]\nname='float16'\nto='bfloat16'\n",
    );
    assert!(m.graph.initializers().all(|(_, t)| t.dtype() != DType::F32));
    assert!(m
        .graph
        .initializers()
        .any(|(_, t)| t.dtype() == DType::BF16));
    assert_eq!(io_types(&model), io_types(&m));
}

#[test]
fn unknown_keys_are_refused() {
    let e = common::run::try_apply(
        &common::build::mlp(false),
        &format!("{FP16}keep-io-type = true\n"),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("keep-io-type"), "{e}");
}

#[test]
fn cli_fp16_runs_the_self_check() {
    if !common::required() {
        return;
    }
    let dir = tmp();
    let out = dir.path().join("cnn16.onnx");
    let o = common::run::quantize_cli(&[
        &common::run::fixture_arg("cnn.onnx"),
        out.to_str().unwrap(),
        "--algorithm",
        "fp16",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    assert!(text.contains("rel") || text.contains("cosine"), "{text}");
    let o = common::run::quantize_cli(&[
        &common::run::fixture_arg("cnn.onnx"),
        out.to_str().unwrap(),
        "--precision",
        "fp16",
        "--max-rel-l2",
        "1e-9",
    ]);
    assert!(
        !o.status.success(),
        "an impossible bound fails the self-check"
    );
}

#[test]
fn float_subgraphs_are_refused_by_node_name() {
    let model = common::forms::load("mlp.onnx");
    let e = common::run::try_apply(&model, FP16)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("subgraph") && e.contains("'/branch/If'"), "{e}");
}
