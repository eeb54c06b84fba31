//! Verification as users run it: every decoder form checked on a prefill and one
//! decode step with feeds from the decoder map; a CNN whose dims are unnamed
//! symbols verified without --dim; static quantization calibrated on files of a
//! model with symbolic dims; the self-check of `quantize` (per-layer errors on the
//! original's activations, worst layers named); --verify required.
mod common;

use std::path::{Path, PathBuf};

use common::forms;
use onnxq::llm::DecoderIoNames;
use onnxq::runtime::{self, NamedTensors, Runtime, RuntimeKind};
use onnxq::verify::{compare, feeds::decoder_step, selfcheck::self_check, VerifyOptions};

fn on_ort() -> VerifyOptions {
    VerifyOptions {
        runtime: RuntimeKind::Ort,
        ..Default::default()
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn last_row(out: &NamedTensors, name: &str) -> Vec<f32> {
    let t = &out.iter().find(|(n, _)| n == name).unwrap().1;
    let v = t.to_f32_vec().unwrap();
    let w = *t.shape.last().unwrap();
    v[v.len() - w..].to_vec()
}

/// The feeds the verifier builds are a decoder's real use: a prefill on an empty
/// cache, then one step on the returned cache, gives the logits a single run over
/// all the tokens gives for the last one.
#[test]
fn decoder_steps_continue_the_cache_like_one_long_run() {
    let Some(ort) = common::ort() else { return };
    for (form, path) in forms::decoder_forms() {
        let m = onnxq::load(&path).unwrap();
        let names = DecoderIoNames::of(&m.graph).unwrap();
        let mut sess = ort.open(&path).unwrap();
        let specs = sess.inputs().to_vec();
        let ids: Vec<i64> = (0..17)
            .map(|i| (i * 37 + 11) % forms::VOCAB as i64)
            .collect();
        let prefill = decoder_step(&specs, &names, &ids[..16], 0, None).unwrap();
        let a = sess.run(&prefill).unwrap();
        let step = decoder_step(&specs, &names, &ids[16..], 16, Some(&a)).unwrap();
        let b = sess.run(&step).unwrap();
        let whole = decoder_step(&specs, &names, &ids, 0, None).unwrap();
        let c = sess.run(&whole).unwrap();
        let (x, y) = (last_row(&b, "logits"), last_row(&c, "logits"));
        let d = x
            .iter()
            .zip(&y)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(d < 1e-4, "{form}: decode step vs one run differ by {d}");
    }
}

/// Every form verifies against itself (zero error on both steps) and against its
/// int4 quantization (the error of RTN int4, measured 0.24 / 0.13 in
/// tests/decoder_forms.rs), with the decode step compared too.
#[test]
fn every_decoder_form_verifies_prefill_and_one_decode_step() {
    if common::ort().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (form, path) in forms::decoder_forms() {
        let r = compare(&path, &path, &on_ort()).unwrap_or_else(|e| panic!("{form}: {e}"));
        let names: Vec<&str> = r.outputs.iter().map(|o| o.name.as_str()).collect();
        assert!(names.contains(&"logits"), "{form}: {names:?}");
        assert!(names.contains(&"logits [decode step]"), "{form}: {names:?}");
        assert!(
            names.contains(&"present.1.value [decode step]"),
            "{form}: {names:?}"
        );
        assert!(r.outputs.iter().all(|o| o.max_abs == 0.0), "{form}: {r:?}");
        assert!(
            r.notes.iter().any(|n| n.contains("prefill of 16 tokens")),
            "{form}: {:?}",
            r.notes
        );

        let out = tmp.path().join(format!("{form}-q.onnx"));
        let (ok, log) = common::onnxq(&["quantize", s(&path), s(&out), "--tied-head", "separate"]);
        assert!(ok, "{form}: {log}");
        assert!(!log.contains("verification skipped"), "{form}: {log}");
        let r = compare(&path, &out, &on_ort()).unwrap();
        for name in ["logits", "logits [decode step]"] {
            let o = r.outputs.iter().find(|o| o.name == name).unwrap();
            assert!(o.rel_l2 > 1e-4 && o.rel_l2 < 0.35, "{form} {name}: {o:?}");
        }
    }
}

/// The self-check of `quantize` compares each rewritten MatMul on the original's
/// activations: one entry per weight MatMul, errors of int4 size (not zero, not
/// broken), the worst five named with a hint; the end-to-end error matches a full
/// comparison of the prefill.
#[test]
fn the_self_check_reports_every_rewritten_layer() {
    if common::ort().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (form, path) = forms::decoder_forms().remove(0);
    let out = tmp.path().join("q.onnx");
    let report = tmp.path().join("report.json");
    let (ok, log) = common::onnxq(&[
        "quantize",
        s(&path),
        s(&out),
        "--tied-head",
        "separate",
        "--report",
        s(&report),
    ]);
    assert!(ok, "{log}");
    assert!(log.contains("layer check: 15 rewritten layers"), "{log}");
    assert!(log.contains("hint: the largest error is in"), "{log}");
    let c = self_check(&path, &out, &on_ort()).unwrap();
    assert_eq!(c.layers.len(), forms::weight_matmuls(form), "{c:?}");
    assert!(c.unchecked.is_empty(), "{:?}", c.unchecked);
    for l in &c.layers {
        assert_eq!(l.op, "MatMulNBits");
        // RTN int4 b32 on Gaussian-like weights: ~0.1 relative per layer.
        assert!(l.rel_l2 > 1e-3 && l.rel_l2 < 0.3, "{l:?}");
        assert!(l.rows == 16, "{l:?}");
    }
    assert_eq!(c.worst.len(), 5);
    let worst = c.layers.iter().find(|l| l.node == c.worst[0]).unwrap();
    assert!(c.layers.iter().all(|l| l.rel_l2 <= worst.rel_l2));
    let full = compare(&path, &out, &on_ort()).unwrap();
    let e2e = c
        .end_to_end
        .outputs
        .iter()
        .find(|o| o.name == "logits")
        .unwrap();
    let cmp = full.outputs.iter().find(|o| o.name == "logits").unwrap();
    assert!(
        (e2e.rel_l2 - cmp.rel_l2).abs() < 1e-3,
        "{} vs {}",
        e2e.rel_l2,
        cmp.rel_l2
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let layers = &json["verify"]["layers"];
    assert_eq!(layers["checked"].as_array().unwrap().len(), 15, "{layers}");
    assert_eq!(layers["worst"].as_array().unwrap().len(), 5, "{layers}");
    assert!(layers["hint"].as_str().unwrap().contains("--exclude"));
}

/// (cnn.onnx with dims unk__12 × 3 × image_height × image_width, its calibration
/// directory, the same model with no declared input shape).
fn symbolic_cnn(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let py = common::python()?;
    common::py(&py, "symbolic_cnn.py", &[s(dir)]);
    Some((
        dir.join("cnn.onnx"),
        dir.join("calib"),
        dir.join("cnn_noshape.onnx"),
    ))
}

#[test]
fn unnamed_symbolic_dims_verify_without_dim() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((cnn, _, _)) = symbolic_cnn(tmp.path()) else {
        return;
    };
    let out = tmp.path().join("q.onnx");
    let (ok, log) = common::onnxq(&["quantize", s(&cnn), s(&out)]);
    assert!(ok, "{log}");
    assert!(!log.contains("verification skipped"), "{log}");
    // Two 7x7 stride-2 convolutions need 19 pixels: 16 fails, 32 is the smallest
    // size tried that runs. The batch axis gets 1.
    assert!(log.contains("dim unk__12 = 1"), "{log}");
    assert!(log.contains("dim image_width = 32"), "{log}");
    assert!(log.contains("layer check: 2 rewritten layers"), "{log}");
    let (ok, log) = common::onnxq(&["verify", s(&cnn), s(&out)]);
    assert!(ok, "{log}");
    assert!(log.contains("image_height = 32"), "{log}");
}

#[test]
fn static_quantization_calibrated_on_files_of_a_symbolic_model_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((cnn, calib, _)) = symbolic_cnn(tmp.path()) else {
        return;
    };
    let out = tmp.path().join("q8.onnx");
    let (ok, log) = common::onnxq(&[
        "quantize",
        s(&cnn),
        s(&out),
        "--algorithm",
        "static",
        "--calib",
        s(&calib),
    ]);
    assert!(ok, "{log}");
    assert!(!log.contains("verification skipped"), "{log}");
    // The check runs on the calibration sample, whose 40x40 image fixes the dims.
    assert!(log.contains("image_width = 40"), "{log}");
}

#[test]
fn a_check_that_cannot_run_is_skipped_unless_required() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((_, _, noshape)) = symbolic_cnn(tmp.path()) else {
        return;
    };
    let out = tmp.path().join("q.onnx");
    let (ok, log) = common::onnxq(&["quantize", s(&noshape), s(&out)]);
    assert!(ok, "{log}");
    assert_eq!(log.matches("verification skipped").count(), 1, "{log}");
    assert!(log.contains("no declared shape"), "{log}");
    let (ok, log) = common::onnxq(&["quantize", s(&noshape), s(&out), "--verify", "required"]);
    assert!(!ok, "{log}");
    assert!(log.contains("no declared shape"), "{log}");
    for off in [&["--verify", "off"][..], &["--no-verify"][..]] {
        let mut args = vec!["quantize", s(&noshape), s(&out)];
        args.extend_from_slice(off);
        let (ok, log) = common::onnxq(&args);
        assert!(ok && !log.contains("verification"), "{off:?}: {log}");
    }
}

/// tract panics inside tract-core on a negative Pad (valid ONNX, a crop): the
/// panic is caught, reported as tract's error with its message, and ONNX Runtime
/// runs the check instead, for `verify` and for the self-check of `quantize`.
#[test]
fn a_tract_panic_is_a_clean_error_and_ort_runs_the_check() {
    if common::ort().is_none() {
        return;
    }
    let Some(py) = common::python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("pad.onnx");
    common::py(&py, "tract_panic.py", &[s(&model)]);
    let tract = runtime::tract::TractRuntime;
    let mut sess = tract.open(&model).unwrap();
    let x = onnxq::runtime::HostTensor::from_f32(vec![1, 66], &[0.5; 66]).unwrap();
    let e = sess.run(&[("x".to_string(), x)]).unwrap_err().to_string();
    assert!(
        e.contains("tract panicked: attempt to add with overflow"),
        "{e}"
    );

    let opts = VerifyOptions {
        runtime: RuntimeKind::Tract,
        ..Default::default()
    };
    let r = compare(&model, &model, &opts).unwrap();
    assert_eq!(r.runtime, "onnxruntime");
    let note = r.runtime_note.clone().unwrap_or_default();
    assert!(
        note.contains("tract failed") && note.contains("panicked"),
        "{note}"
    );
    assert!(r.outputs.iter().all(|o| o.max_abs == 0.0));

    let out = tmp.path().join("q.onnx");
    let (ok, log) = common::onnxq(&["quantize", s(&model), s(&out), "--runtime", "tract"]);
    assert!(ok, "{log}");
    assert!(log.contains("tract panicked"), "{log}");
    assert!(log.contains("layer check: 1 rewritten layers"), "{log}");
    // The panic's own report (thread 'main' panicked at ...) is not printed.
    assert!(!log.contains("panicked at"), "{log}");
}

/// A quantized embedding (the tied table stored once in 8 bits by default) is
/// checked on table rows: GatherBlockQuantized's rows against the float table's.
#[test]
fn a_quantized_embedding_is_checked_on_table_rows() {
    if common::ort().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, path) = forms::decoder_forms().remove(0);
    let out = tmp.path().join("q.onnx");
    let (ok, log) = common::onnxq(&["quantize", s(&path), s(&out)]);
    assert!(ok, "{log}");
    let c = self_check(&path, &out, &on_ort()).unwrap();
    let g = c
        .layers
        .iter()
        .find(|l| l.op == "GatherBlockQuantized")
        .unwrap_or_else(|| panic!("{c:?}"));
    assert_eq!(g.rows, 32, "{g:?}");
    // 8-bit blocks of 32: ~1 % relative error, never zero.
    assert!(g.rel_l2 > 1e-4 && g.rel_l2 < 0.03, "{g:?}");
}

/// A wrong rewrite is caught where it happened: one MatMulNBits whose packed codes
/// have their nibbles swapped (a packing bug) stands out as the worst layer, named
/// in the hint, with an error far above int4's while every other layer stays at
/// int4 size; the end-to-end error grows.
#[test]
fn a_corrupted_layer_is_named_as_the_worst() {
    if common::ort().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, path) = forms::decoder_forms().remove(0);
    let out = tmp.path().join("q.onnx");
    let (ok, log) = common::onnxq(&[
        "quantize",
        s(&path),
        s(&out),
        "--tied-head",
        "separate",
        "--no-verify",
    ]);
    assert!(ok, "{log}");
    let clean = self_check(&path, &out, &on_ort()).unwrap();

    let mut m = onnxq::io::load(&out).unwrap();
    let original = onnxq::io::load(&path).unwrap();
    let g = &mut m.graph;
    let (id, _) = g
        .nodes()
        .filter(|(_, n)| n.op_type == "MatMulNBits")
        .nth(3)
        .unwrap();
    let node = g.node(id);
    let y = g.value_name(node.output(0).unwrap()).to_string();
    let b = node.input(1).unwrap();
    let t = g.initializer(b).unwrap().clone();
    let swapped: Vec<u8> = t
        .raw_bytes()
        .unwrap()
        .iter()
        .map(|v| v.rotate_left(4))
        .collect();
    let bad = onnxq::ir::Tensor::from_raw("", t.dtype(), t.dims.clone(), swapped.into());
    g.set_initializer(b, bad);
    let corrupted = tmp.path().join("bad.onnx");
    onnxq::io::save(&m, &corrupted, &Default::default()).unwrap();
    let target = original
        .graph
        .nodes()
        .find(|(_, n)| n.output(0).map(|o| original.graph.value_name(o)) == Some(y.as_str()))
        .map(|(_, n)| n.name().to_string())
        .unwrap();

    let c = self_check(&path, &corrupted, &on_ort()).unwrap();
    assert_eq!(c.worst[0], target, "{c:?}");
    assert!(c.hint.as_deref().unwrap().contains(&target));
    for l in &c.layers {
        if l.node == target {
            assert!(l.rel_l2 > 0.5, "{l:?}");
        } else {
            assert!(l.rel_l2 < 0.3, "{l:?}");
        }
    }
    let logits = |c: &onnxq::verify::selfcheck::SelfCheck| {
        c.end_to_end
            .outputs
            .iter()
            .find(|o| o.name == "logits")
            .unwrap()
            .rel_l2
    };
    assert!(
        logits(&c) > 1.5 * logits(&clean),
        "{} vs {}",
        logits(&c),
        logits(&clean)
    );
}
