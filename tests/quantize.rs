//! Weight-only quantization end to end: the passes on tiny models built with the IR
//! builder, checked by tract (embedded), ONNX Runtime and onnxruntime's own
//! quantizers (tests/py/ort_check.py).
mod common;

use std::process::Command;

use common::run::*;

#[test]
fn every_weight_form_is_quantized_and_runs_in_tract() {
    let tmp = tempfile::tempdir().unwrap();
    let orig = save(&common::build::mlp(true), tmp.path(), "mlp.onnx");
    let out = tmp.path().join("q.onnx");
    let o = quantize_cli(&[
        orig.to_str().unwrap(),
        out.to_str().unwrap(),
        "--embeddings",
        "--report",
        tmp.path().join("r.json").to_str().unwrap(),
        // 4-bit on this MLP's 8x outlier channels: measured rel L2 0.25-0.30,
        // cosine >= 0.95 over the five outputs.
        "--max-rel-l2",
        "0.4",
        "--min-cosine",
        "0.9",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = onnxq::load(&out).unwrap();
    let ops: Vec<String> = m.graph.nodes().map(|(_, n)| n.op_type.clone()).collect();
    // fc0 (+bias Add fused), fc1, Gemm fc2, fc3 through Transpose, fc4 on a Constant.
    assert_eq!(
        ops.iter().filter(|o| *o == "MatMulNBits").count(),
        5,
        "{ops:?}"
    );
    assert_eq!(
        ops.iter().filter(|o| *o == "GatherBlockQuantized").count(),
        1,
        "{ops:?}"
    );
    for gone in ["MatMul", "Gemm", "Add", "Transpose", "Constant", "Gather"] {
        assert!(!ops.iter().any(|o| o == gone), "{gone} left in {ops:?}");
    }
    // Output names are the interface: all kept.
    let outs: Vec<&str> = m
        .graph
        .outputs
        .iter()
        .map(|o| m.graph.value_name(o.value))
        .collect();
    assert_eq!(outs, ["y", "y2", "y3", "y4", "e"]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("r.json")).unwrap()).unwrap();
    assert!(report["output_bytes"].as_u64().unwrap() * 4 < report["input_bytes"].as_u64().unwrap());
    assert_eq!(
        report["verify"]["report"]["outputs"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    // Passing means something: the limits were applied and every output is within them.
    assert_eq!(report["verify"]["thresholds"]["max_rel_l2"], 0.4);
    assert_eq!(report["verify"]["thresholds"]["min_cosine"], 0.9);
    assert_eq!(report["verify"]["passed"], true, "{}", report["verify"]);
}

#[test]
fn rtn_error_is_small_and_hqq_is_no_worse() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::build::mlp(false);
    let orig = save(&model, tmp.path(), "mlp.onnx");
    let rtn = save(
        &apply(
            &model,
            "[recipe]\nname='t'\n[[pass]]\nname='matmul-nbits'\nsymmetric=false\n",
        ),
        tmp.path(),
        "rtn.onnx",
    );
    let hqq = save(
        &apply(
            &model,
            "[recipe]\nname='t'\n[[pass]]\nname='matmul-nbits'\nalgorithm='hqq'\nsymmetric=false\n",
        ),
        tmp.path(),
        "hqq.onnx",
    );
    let (e_rtn, e_hqq) = (rel_l2(&orig, &rtn), rel_l2(&orig, &hqq));
    eprintln!("rel L2 (tract): rtn asym {e_rtn:.4e}, hqq {e_hqq:.4e}");
    // 4-bit on a layer with 8x outlier channels: measured 0.146 (asym RTN).
    assert!(e_rtn > 0.0 && e_rtn < 0.3, "{e_rtn}");
    assert!(e_hqq <= e_rtn * 1.01, "hqq {e_hqq} vs rtn {e_rtn}");
}

#[test]
fn output_is_byte_identical_whatever_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let orig = save(&common::build::mlp(true), tmp.path(), "mlp.onnx");
    let mut outputs = Vec::new();
    for threads in ["1", "2", "3"] {
        let out = tmp.path().join(format!("q{threads}.onnx"));
        let o = Command::new(common::onnxq_bin())
            .env("RAYON_NUM_THREADS", threads)
            .args([
                "quantize",
                orig.to_str().unwrap(),
                out.to_str().unwrap(),
                "--algorithm",
                "hqq",
                "--embeddings",
                "--no-verify",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        outputs.push(std::fs::read(&out).unwrap());
    }
    assert!(outputs.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn invalid_settings_are_rejected_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.onnx");
    // The input does not even exist: the settings must be refused first.
    for bad in [
        ["--bits", "3"],
        ["--block-size", "24"],
        ["--block-size", "8"],
    ] {
        let o = quantize_cli(&["/nonexistent.onnx", out.to_str().unwrap(), bad[0], bad[1]]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(!err.contains("nonexistent"), "{err}");
        assert!(err.contains("bits") || err.contains("block size"), "{err}");
    }
    let o = quantize_cli(&[
        "/nonexistent.onnx",
        out.to_str().unwrap(),
        "--format",
        "qdq",
        "--bits",
        "2",
    ]);
    assert!(!o.status.success());
    assert!(!out.exists());
}

#[test]
fn a_model_without_quantizable_matmuls_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::build::mlp(false);
    let q = apply(
        &model,
        "[recipe]\nname='t'\n[[pass]]\nname='matmul-nbits'\n",
    );
    let quantized = save(&q, tmp.path(), "q.onnx");
    let out = tmp.path().join("again.onnx");
    let o = quantize_cli(&[quantized.to_str().unwrap(), out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("already quantized"), "{err}");
    assert!(err.contains("nothing changed"), "{err}");
    // An unchanged copy: the same graph as the input.
    let copy = onnxq::load(&out).unwrap();
    assert_eq!(
        onnxq::ir::print::model_to_string(&copy),
        onnxq::ir::print::model_to_string(&onnxq::load(&quantized).unwrap())
    );
}

#[test]
fn matches_onnxruntime_rtn_quantizer() {
    let Some(py) = common::python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = common::build::mlp(false);
    let orig = save(&model, tmp.path(), "mlp.onnx");
    for (bits, block, sym) in [
        (4, 32, true),
        (4, 32, false),
        (4, 128, true),
        (8, 32, true),
        (8, 64, false),
    ] {
        let recipe = format!("[recipe]\nname='t'\n[[pass]]\nname='matmul-nbits'\nbits={bits}\nblock-size={block}\nsymmetric={sym}\nfuse-bias=false\n");
        let ours = save(
            &apply(&model, &recipe),
            tmp.path(),
            &format!("q{bits}{block}{sym}.onnx"),
        );
        let out = common::py(
            &py,
            "ort_check.py",
            &[
                "rtn",
                orig.to_str().unwrap(),
                ours.to_str().unwrap(),
                &bits.to_string(),
                &block.to_string(),
                if sym { "1" } else { "0" },
            ],
        );
        eprintln!("bits {bits} block {block} sym {sym}:\n{out}");
    }
}

#[test]
fn bnb4_matches_onnxruntime_bit_for_bit() {
    let Some(py) = common::python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = common::build::mlp(false);
    let orig = save(&model, tmp.path(), "mlp.onnx");
    for qt in ["nf4", "fp4"] {
        let recipe = format!(
            "[recipe]\nname='t'\n[[pass]]\nname='bnb4'\nquant-type='{qt}'\nblock-size=64\n"
        );
        let ours = save(&apply(&model, &recipe), tmp.path(), &format!("{qt}.onnx"));
        let out = common::py(
            &py,
            "ort_check.py",
            &[
                "bnb4",
                orig.to_str().unwrap(),
                ours.to_str().unwrap(),
                qt,
                "64",
            ],
        );
        eprintln!("{qt}: {out}");
    }
}

#[test]
fn every_format_passes_the_checker_and_runs_in_onnxruntime() {
    let Some(py) = common::python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let orig = save(&common::build::mlp(true), tmp.path(), "mlp.onnx");
    let variants: &[&[&str]] = &[
        &["--embeddings"],
        &["--embeddings", "--asymmetric", "--bits", "8"],
        &["--algorithm", "hqq"],
        &["--bits", "2", "--asymmetric"],
        &["--format", "qdq"],
        &["--format", "qdq", "--asymmetric"],
        &["--algorithm", "bnb4", "--quant-type", "fp4"],
        &["--accuracy-level", "4"],
    ];
    for (i, v) in variants.iter().enumerate() {
        let out = tmp.path().join(format!("v{i}.onnx"));
        let mut args = vec![orig.to_str().unwrap(), out.to_str().unwrap(), "--no-verify"];
        args.extend_from_slice(v);
        let o = quantize_cli(&args);
        assert!(
            o.status.success(),
            "{v:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        common::py(&py, "ort_check.py", &["run", out.to_str().unwrap()]);
        let e: f64 = common::py(
            &py,
            "ort_check.py",
            &["error", orig.to_str().unwrap(), out.to_str().unwrap()],
        )
        .trim()
        .parse()
        .unwrap();
        eprintln!("{v:?}: rel L2 in onnxruntime {e:.4e}");
        // Measured 0.007 (8-bit) to 0.19 (4-bit sym); 2-bit 0.31.
        let bound = if v.contains(&"2") { 0.5 } else { 0.3 };
        assert!(e < bound, "{v:?}: rel L2 {e}");
    }
}

#[test]
fn decoder_fixtures_match_onnxruntime_quantizer() {
    let Some(py) = common::python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // Same weights quantized by both tools: codes, scales and output error must agree.
    // The tied lm_head (MatMul on Transpose(embedding)) is one onnxruntime leaves in
    // float, so it is excluded here to compare like with like.
    for (name, extra) in [
        ("llama-decomposed.onnx", vec![]),
        ("llama-decomposed-kv.onnx", vec![]),
        (
            "llama-decomposed-tied.onnx",
            vec!["--exclude", "/lm_head/*"],
        ),
    ] {
        for (sym, flag) in [(true, None), (false, Some("--asymmetric"))] {
            let out = tmp.path().join(format!("{sym}-{name}"));
            let mut args = vec![
                fixture_arg(name),
                out.to_str().unwrap().to_string(),
                "--no-verify".into(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            args.extend(flag.map(String::from));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let o = quantize_cli(&args);
            assert!(
                o.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let report = common::py(
                &py,
                "ort_check.py",
                &[
                    "rtn",
                    &fixture_arg(name),
                    out.to_str().unwrap(),
                    "4",
                    "32",
                    if sym { "1" } else { "0" },
                ],
            );
            eprintln!(
                "{name} sym={sym}: {}",
                report
                    .lines()
                    .filter(|l| l.contains("rel L2"))
                    .collect::<String>()
            );
        }
    }
}

#[test]
fn every_fixture_quantizes_and_runs_in_onnxruntime() {
    let Some(py) = common::python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let models = common::models_under(&common::fixtures());
    assert!(
        models.len() >= 8,
        "fixtures missing: run fixtures/generate.py"
    );
    for m in models {
        let name = m.file_name().unwrap().to_str().unwrap().to_string();
        for (i, flags) in [
            &["--embeddings"][..],
            &["--format", "qdq"][..],
            &["--algorithm", "hqq", "--embeddings"][..],
        ]
        .iter()
        .enumerate()
        {
            let out = tmp.path().join(format!("{i}-{name}"));
            let mut args = vec![m.to_str().unwrap(), out.to_str().unwrap(), "--no-verify"];
            args.extend_from_slice(flags);
            let o = quantize_cli(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            // QDQ needs opset 21: a model whose ops changed meaning since its opset is
            // refused with the node named, and nothing is written.
            if !o.status.success() && err.contains("needs opset 21") {
                assert!(!out.exists());
                eprintln!(
                    "{name} {flags:?}: refused: {}",
                    err.lines().next().unwrap_or("")
                );
                continue;
            }
            assert!(o.status.success(), "{name} {flags:?}: {err}");
            if err.contains("nothing changed") {
                assert!(out.exists(), "an unchanged copy is written: {err}");
                continue;
            }
            common::py(
                &py,
                "ort_check.py",
                &["run", out.to_str().unwrap(), m.to_str().unwrap()],
            );
            let e = common::py(
                &py,
                "ort_check.py",
                &["error", m.to_str().unwrap(), out.to_str().unwrap()],
            );
            eprintln!("{name} {flags:?}: rel L2 in onnxruntime {}", e.trim());
        }
    }
}

// --- tied embeddings, float16/bfloat16 weights, spilling ----------------------------
