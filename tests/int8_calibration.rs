//! 8-bit calibration: settings and calibration data refused before any work,
//! non-finite activations, ranges against onnxruntime's calibrators, text
//! calibration and SmoothQuant's searched alpha.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::int8::*;
use common::run::*;
use onnxq::ir::Tensor;
use onnxq::pass::recipe::Recipe;
use onnxq::pass::{run_pipeline, PassCx};
use onnxq::verify::{compare, VerifyOptions};

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
    let ids = tok.input_ids(&held_out).unwrap();
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
