//! QuaRot (`quarot` pass, `onnxq rotate`, `--algorithm quarot,rtn`) on the four
//! decoder forms, run in ONNX Runtime: the rotated float model computes the same
//! logits and caches (max relative error ≤ 1e-4), norms end up with unit scales, an
//! online Hadamard MatMul sits before every down_proj and stays float when the model
//! is quantized; int4 RTN with and without the rotation is measured against float.
mod common;

use std::path::Path;
use std::process::Command;

use common::forms::{self, decoder_feeds, Rng};
use onnxq::calib::text::TextSamples;
use onnxq::calib::tokenizer::Tokenizer;
use onnxq::llm::DecoderMap;
use onnxq::pass::recipe::Recipe;
use onnxq::pass::{run_pipeline, PassCx, PassOutcome};
use onnxq::rewrite::matchers::{constant, ONLINE_ROTATION_KEY};
use onnxq::runtime::{self, NamedTensors, Runtime, RuntimeKind};

fn ort() -> runtime::ort::OrtRuntime {
    match runtime::ort::OrtRuntime::new(Some(2)) {
        Ok(r) => r,
        Err(e) => panic!("QuaRot's exactness is measured in ONNX Runtime: {e}"),
    }
}

fn run(rt: &dyn Runtime, path: &Path, feeds: &NamedTensors) -> NamedTensors {
    let mut s = rt
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let wanted: Vec<_> = feeds
        .iter()
        .filter(|(n, _)| s.inputs().iter().any(|i| &i.name == n))
        .cloned()
        .collect();
    s.run(&wanted)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn apply(model: &onnxq::Model, recipe: &str) -> (onnxq::Model, Vec<PassOutcome>) {
    let r = Recipe::parse("t", recipe).unwrap();
    let mut m = model.clone();
    let o = run_pipeline(&mut m, &r.build().unwrap(), &mut PassCx::default()).unwrap();
    (m, o)
}

const ROTATE: &str = "[recipe]\nname='r'\n[[pass]]\nname='quarot'\nseed=5\n";

/// Per output: max |a − b| / max |a|; names and shapes must agree.
fn rel_errors(a: &NamedTensors, b: &NamedTensors) -> Vec<(String, f64)> {
    a.iter()
        .zip(b)
        .map(|((name, ta), (nb, tb))| {
            assert_eq!(name, nb);
            assert_eq!(ta.shape, tb.shape, "{name}");
            let (x, y) = (ta.to_f32_vec().unwrap(), tb.to_f32_vec().unwrap());
            let peak = x.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            let diff = x
                .iter()
                .zip(&y)
                .fold(0f64, |m, (p, q)| m.max((*p as f64 - *q as f64).abs()));
            (name.clone(), diff / peak.max(1e-30))
        })
        .collect()
}

/// Online MatMuls of the kind `want` ("Hadamard" before down_proj, "final norm
/// scale" before a tied lm_head).
fn online_of(m: &onnxq::Model, want: &str) -> usize {
    m.graph
        .nodes()
        .filter(|(_, n)| {
            n.op_type == "MatMul"
                && n.metadata_props
                    .iter()
                    .any(|(k, v)| k == ONLINE_ROTATION_KEY && v.contains(want))
        })
        .count()
}

/// Online Hadamard rotations: each is one MatMul, or a Kronecker pair of MatMuls of
/// which only the second's output leaves the rotation.
fn online_rotations(m: &onnxq::Model) -> usize {
    let g = &m.graph;
    let hadamard = |n: &onnxq::ir::Node| {
        n.op_type == "MatMul"
            && n.metadata_props
                .iter()
                .any(|(k, v)| k == ONLINE_ROTATION_KEY && v.contains("Hadamard"))
    };
    g.nodes()
        .filter(|(_, n)| hadamard(n))
        .filter(|(_, n)| {
            !n.output(0).is_some_and(|y| {
                g.value(y).uses().iter().any(|u| match *u {
                    onnxq::ir::Use::Input(c, _) => hadamard(g.node(c)),
                    _ => false,
                })
            })
        })
        .count()
}

fn values(m: &onnxq::Model, name: &str) -> Vec<f32> {
    let g = &m.graph;
    let v = g.find(name).unwrap_or_else(|| panic!("no '{name}'"));
    constant(g, v).unwrap().1.to_f32().unwrap()
}

#[test]
fn rotated_forms_compute_the_same_outputs_within_1e_4() {
    let ort = ort();
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(3);
    for (form, path) in forms::decoder_forms() {
        let model = onnxq::load(&path).unwrap();
        let before = DecoderMap::build(&model.graph).unwrap();
        let (rotated, outcomes) = apply(&model, ROTATE);
        let o = &outcomes[0];
        let notes = o.notes.join("\n");
        eprintln!("{form}: {:?}\n{notes}", o.counters);
        assert!(
            notes.contains(
                "residual rotation (96): randomized Hadamard: Paley I (q = 11) ⊗ Sylvester 8"
            ),
            "{notes}"
        );
        assert!(
            notes.contains(
                "online rotation before down_proj (160): Hadamard: Paley I (q = 19) ⊗ Sylvester 8, \
                 applied as [20, 20] ⊗ [8, 8] MatMuls"
            ),
            "{notes}"
        );
        assert_eq!(o.counters["norms fused"], 2 * forms::LAYERS as u64 + 1);
        assert_eq!(online_rotations(&rotated), forms::LAYERS, "{form}");
        // The fixtures tie the head to the embedding except genai; the final norm has
        // a scale, applied online as a [d, d] MatMul so the tie survives, and the
        // cost is said.
        if before.tied_lm_head {
            assert!(
                notes.contains("tied lm_head kept") && notes.contains("(+36864 bytes)"),
                "{form}: {notes}"
            );
        }
        // The map still reads the rotated model: the online rotation is walked
        // through, and every norm's scale is now 1.
        let after = DecoderMap::build(&rotated.graph).unwrap();
        assert_eq!(after.tied_lm_head, before.tied_lm_head, "{form}");
        assert_eq!(
            online_of(&rotated, "final norm scale"),
            before.tied_lm_head as usize,
            "{form}"
        );
        for l in &after.layers {
            assert_eq!(
                l.mlp.down_proj.node,
                before.layers[l.index].mlp.down_proj.node
            );
            for n in [&l.input_norm, &l.post_attention_norm] {
                if let Some(w) = &n.weight {
                    assert!(values(&rotated, w).iter().all(|&x| x == 1.0), "{form} {w}");
                }
            }
        }
        let table = &before.embedding.table;
        let (e0, e1) = (values(&model, table), values(&rotated, table));
        let moved = e0
            .iter()
            .zip(&e1)
            .filter(|(a, b)| (*a - *b).abs() > 1e-3)
            .count();
        assert!(
            moved > e0.len() / 2,
            "{form}: embedding barely changed ({moved})"
        );
        let out = tmp.path().join(format!("{form}.onnx"));
        onnxq::save(&rotated, &out, &Default::default()).unwrap();
        for (batch, seq, past) in [(2, 5, 0), (1, 5, 3), (1, 1, 4)] {
            let ids: Vec<i64> = (0..batch * seq).map(|_| rng.token()).collect();
            let feeds = decoder_feeds(&ids, batch, past, None, &mut rng);
            let (a, b) = (run(&ort, &path, &feeds), run(&ort, &out, &feeds));
            for (name, e) in rel_errors(&a, &b) {
                if name == "logits" {
                    eprintln!("{form} (b={batch} s={seq} past={past}) logits: {e:.2e}");
                }
                assert!(
                    e <= 1e-4,
                    "{form} (b={batch} s={seq} past={past}) {name}: {e}"
                );
            }
        }
    }
}

#[test]
fn layer_norm_is_refused_by_name() {
    let mut model = common::forms::load("decoders/opset24.onnx");
    let g = &mut model.graph;
    let id = g
        .nodes()
        .find(|(_, n)| n.op_type == "RMSNormalization")
        .map(|(id, _)| id)
        .unwrap();
    let name = g.node(id).name().to_string();
    g.node_mut(id).op_type = "LayerNormalization".into();
    let r = Recipe::parse("t", ROTATE).unwrap();
    let err = run_pipeline(&mut model, &r.build().unwrap(), &mut PassCx::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("norm '{name}'")) && err.contains("subtracts the mean"),
        "{err}"
    );
}

#[test]
fn non_decoders_are_refused() {
    let r = Recipe::parse("t", ROTATE).unwrap();
    let mut m = common::build::mlp(false);
    let err = run_pipeline(&mut m, &r.build().unwrap(), &mut PassCx::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("quarot: not a decoder"), "{err}");
}

/// Relative L2 of the logits vs float on held-out text windows, int4 RTN with and
/// without the rotation first (lm_head included in both).
#[test]
fn quarot_rtn_against_plain_rtn() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = Tokenizer::from_file(&common::fixtures().join("tokenizer.json")).unwrap();
    let text = std::fs::read_to_string(common::fixtures().join("sample.txt")).unwrap();
    let windows = TextSamples::windows(&tok.input_ids(&text).unwrap(), 6, 48, 17).windows;
    let rtn =
        "[[pass]]\nname='matmul-nbits'\nalgorithm='rtn'\nbits=4\nblock-size=32\nsymmetric=true\n";
    for (form, path) in forms::decoder_forms() {
        let model = onnxq::load(&path).unwrap();
        let (plain, _) = apply(&model, &format!("[recipe]\nname='p'\n{rtn}"));
        let (rot, o) = apply(
            &model,
            &format!("[recipe]\nname='q'\n[[pass]]\nname='quarot'\nseed=5\n{rtn}"),
        );
        // The online rotations stay float MatMuls, skipped with their reason.
        assert_eq!(online_rotations(&rot), forms::LAYERS);
        assert!(o[1]
            .skipped
            .iter()
            .any(|s| s.reason.contains("online rotation")));
        let quantized = |m: &onnxq::Model| {
            m.graph
                .nodes()
                .filter(|(_, n)| n.op_type == "MatMulNBits")
                .count()
        };
        assert_eq!(quantized(&plain), forms::weight_matmuls(form), "{form}");
        assert_eq!(quantized(&rot), forms::weight_matmuls(form), "{form}");
        let p_plain = common::run::save(&plain, tmp.path(), &format!("{form}-rtn.onnx"));
        let p_rot = common::run::save(&rot, tmp.path(), &format!("{form}-quarot-rtn.onnx"));
        let e_plain = common::text_logits_error(&path, &p_plain, &windows, RuntimeKind::Ort);
        let e_rot = common::text_logits_error(&path, &p_rot, &windows, RuntimeKind::Ort);
        eprintln!("{form}: logits rel L2 vs float: rtn {e_plain:.4}, quarot+rtn {e_rot:.4}");
        assert!(e_plain.is_finite() && e_rot.is_finite());
        // Both are int4 models of the same function: far from float would mean the
        // rotation (or its online half) was lost in quantization.
        assert!(e_rot < 0.5 && e_plain < 0.5, "{form}: {e_plain} {e_rot}");
    }
}

#[test]
fn cli_rotate_and_quantize_quarot_rtn() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::fixtures().join("decoders/decomposed.onnx");
    let rotated = tmp.path().join("rot.onnx");
    let out = Command::new(common::onnxq_bin())
        .args(["rotate"])
        .arg(&input)
        .arg(&rotated)
        .args(["--seed", "9"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("tied lm_head kept"), "{err}");
    assert_eq!(
        online_rotations(&onnxq::load(&rotated).unwrap()),
        forms::LAYERS
    );
    for algo in ["quarot,rtn", "quarot,gptq", "quarot,awq", "quarot,dynamic"] {
        let q = tmp.path().join(format!("{}.onnx", algo.replace(',', "-")));
        let mut args = vec![
            input.to_str().unwrap(),
            q.to_str().unwrap(),
            "--algorithm",
            algo,
        ];
        if algo == "quarot,gptq" || algo == "quarot,awq" {
            args.extend(["--calib-samples", "2"]);
        }
        let out = common::run::quantize_cli(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{algo}: {err}");
        assert!(err.contains("quarot: "), "{algo}: {err}");
        let m = onnxq::load(&q).unwrap();
        assert_eq!(online_rotations(&m), forms::LAYERS, "{algo}");
        // int8 for dynamic (MatMulInteger), N-bit otherwise; the online rotations stay
        // float either way.
        let quantized = if algo == "quarot,dynamic" {
            "MatMulInteger"
        } else {
            "MatMulNBits"
        };
        assert!(
            m.graph.nodes().any(|(_, n)| n.op_type == quantized),
            "{algo}"
        );
    }
    let bad = common::run::quantize_cli(&[
        input.to_str().unwrap(),
        tmp.path().join("x.onnx").to_str().unwrap(),
        "--algorithm",
        "quarot,static",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("quarot combines"));
}

/// GPTQ and AWQ (text calibration) with and without the rotation first, on the
/// decomposed form: logits relative L2 vs float on held-out windows.
#[test]
fn quarot_gptq_and_awq_against_plain() {
    let tmp = tempfile::tempdir().unwrap();
    let tokenizer = common::fixtures().join("tokenizer.json");
    let tok = Tokenizer::from_file(&tokenizer).unwrap();
    let text = std::fs::read_to_string(common::fixtures().join("sample.txt")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines.len() * 2 / 3;
    let calib = tmp.path().join("calib.txt");
    std::fs::write(&calib, lines[..cut].join("\n")).unwrap();
    let held_out = lines[cut..].join("\n");
    let windows = TextSamples::windows(&tok.input_ids(&held_out).unwrap(), 4, 48, 99).windows;
    let path = common::fixtures().join("decoders/decomposed.onnx");
    let model = onnxq::load(&path).unwrap();
    for algo in ["gptq", "awq"] {
        let table = format!(
            "[[pass]]\nname='{algo}'\nbits=4\nblock-size=32\nsymmetric=true\ncalib-text='{}'\n\
             tokenizer='{}'\ncalib-samples=8\ncalib-seqlen=64\n",
            calib.display(),
            tokenizer.display()
        );
        let finish = if algo == "awq" {
            "[[pass]]\nname='matmul-nbits'\nbits=4\nblock-size=32\nsymmetric=true\n"
        } else {
            ""
        };
        let (plain, _) = apply(&model, &format!("[recipe]\nname='p'\n{table}{finish}"));
        let (rot, _) = apply(
            &model,
            &format!("[recipe]\nname='q'\n[[pass]]\nname='quarot'\nseed=5\n{table}{finish}"),
        );
        assert_eq!(online_rotations(&rot), forms::LAYERS);
        let p_plain = common::run::save(&plain, tmp.path(), &format!("{algo}.onnx"));
        let p_rot = common::run::save(&rot, tmp.path(), &format!("quarot-{algo}.onnx"));
        let e_plain = common::text_logits_error(&path, &p_plain, &windows, RuntimeKind::Ort);
        let e_rot = common::text_logits_error(&path, &p_rot, &windows, RuntimeKind::Ort);
        eprintln!(
            "decomposed: logits rel L2 vs float: {algo} {e_plain:.4}, quarot+{algo} {e_rot:.4}"
        );
        assert!(e_rot < 0.5 && e_plain < 0.5, "{algo}: {e_plain} {e_rot}");
    }
}

/// A final norm without a scale keeps the head tied: it reads the rotated table
/// (Qᵀ·Eᵀ = (E·Q)ᵀ), nothing is added, and the outputs are unchanged.
#[test]
fn unit_final_norm_keeps_the_tie() {
    let ort = ort();
    let tmp = tempfile::tempdir().unwrap();
    let mut model = common::forms::load("decoders/decomposed.onnx");
    let map = DecoderMap::build(&model.graph).unwrap();
    assert!(map.tied_lm_head);
    let w = map.final_norm.weight.clone().unwrap();
    let g = &mut model.graph;
    let v = g.find(&w).unwrap();
    let dims = g.initializer(v).unwrap().dims.clone();
    let n = dims.iter().product::<i64>() as usize;
    g.set_initializer(v, onnxq::ir::Tensor::from_f32(&w, dims, &vec![1.0; n]));
    let (rotated, o) = apply(&model, ROTATE);
    let notes = o[0].notes.join("\n");
    assert!(notes.contains("tied lm_head kept"), "{notes}");
    assert!(!o[0].counters.contains_key("tied embeddings untied"));
    assert!(DecoderMap::build(&rotated.graph).unwrap().tied_lm_head);
    let reference = common::run::save(&model, tmp.path(), "unit.onnx");
    let out = common::run::save(&rotated, tmp.path(), "unit-rot.onnx");
    let mut rng = Rng::new(9);
    let ids: Vec<i64> = (0..6).map(|_| rng.token()).collect();
    let feeds = decoder_feeds(&ids, 1, 2, None, &mut rng);
    for (name, e) in rel_errors(&run(&ort, &reference, &feeds), &run(&ort, &out, &feeds)) {
        assert!(e <= 1e-4, "{name}: {e}");
    }
}

#[test]
fn quantized_models_are_refused() {
    let model = common::forms::load("decoders/genai.onnx");
    let (q, _) = apply(
        &model,
        "[recipe]\nname='q'\n[[pass]]\nname='matmul-nbits'\nbits=4\nblock-size=32\n",
    );
    let r = Recipe::parse("t", ROTATE).unwrap();
    let err = run_pipeline(&mut q.clone(), &r.build().unwrap(), &mut PassCx::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("qkv_proj '")
            && err.contains("is already quantized (com.microsoft::MatMulNBits)"),
        "{err}"
    );
}

/// `select = "measured"`: each q/k/v/gate/up reads the rotated stream or, where the
/// rotation raised its calibrated rounding error, the stream de-rotated online with
/// its own weight. Either way the float function is unchanged, and the map still
/// finds every projection.
#[test]
fn measured_choice_keeps_the_function_and_the_map() {
    let ort = ort();
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(8);
    let recipe = format!(
        "[recipe]\nname='m'\n[[pass]]\nname='quarot'\nseed=5\nselect='measured'\n\
         calib-text='{}'\ntokenizer='{}'\ncalib-samples=4\ncalib-seqlen=32\nruntime='ort'\n",
        common::fixtures().join("sample.txt").display(),
        common::fixtures().join("tokenizer.json").display()
    );
    let (mut rotated_total, mut derotated_total) = (0, 0);
    for (form, path) in forms::decoder_forms() {
        let model = onnxq::load(&path).unwrap();
        let before = DecoderMap::build(&model.graph).unwrap();
        let (rotated, outcomes) = apply(&model, &recipe);
        let o = &outcomes[0];
        let notes = o.notes.join("\n");
        eprintln!("{form}: {:?}\n{notes}", o.counters);
        assert!(
            notes.contains("measured choice (RTN 4 bits, block 32"),
            "{notes}"
        );
        let readers: usize = before
            .layers
            .iter()
            .map(|l| {
                let a = &l.attention;
                [&a.q_proj, &a.k_proj, &a.v_proj, &a.qkv_proj]
                    .iter()
                    .chain([&l.mlp.gate_proj, &l.mlp.up_proj, &l.mlp.gate_up_proj].iter())
                    .filter(|w| w.is_some())
                    .count()
            })
            .sum();
        // Every reader is either rotated or de-rotated.
        let derotated_readers = rotated
            .graph
            .nodes()
            .filter(|(_, n)| {
                !n.metadata_props
                    .iter()
                    .any(|(k, _)| k == ONLINE_ROTATION_KEY)
                    && n.input(0).is_some_and(|x| {
                        rotated.graph.producer(x).is_some_and(|p| {
                            rotated.graph.node(p).metadata_props.iter().any(|(k, v)| {
                                k == ONLINE_ROTATION_KEY && v.starts_with("de-rotation")
                            })
                        })
                    })
            })
            .count();
        let rotated_linears = o.counters["linears rotated"] as usize;
        // o_proj, down_proj per layer and the head are always rotated.
        let rotated_readers = rotated_linears - 2 * forms::LAYERS - 1;
        assert_eq!(rotated_readers + derotated_readers, readers, "{form}");
        rotated_total += rotated_readers;
        derotated_total += derotated_readers;
        let after = DecoderMap::build(&rotated.graph).unwrap();
        for (l, b) in after.layers.iter().zip(&before.layers) {
            assert_eq!(
                l.attention.v_proj.as_ref().map(|w| &w.node),
                b.attention.v_proj.as_ref().map(|w| &w.node),
                "{form}"
            );
            assert_eq!(
                l.mlp.up_proj.as_ref().map(|w| &w.node),
                b.mlp.up_proj.as_ref().map(|w| &w.node),
                "{form}"
            );
        }
        let out = tmp.path().join(format!("{form}.onnx"));
        onnxq::save(&rotated, &out, &Default::default()).unwrap();
        for (batch, seq, past) in [(2, 5, 0), (1, 1, 4)] {
            let ids: Vec<i64> = (0..batch * seq).map(|_| rng.token()).collect();
            let feeds = decoder_feeds(&ids, batch, past, None, &mut rng);
            let (a, b) = (run(&ort, &path, &feeds), run(&ort, &out, &feeds));
            for (name, e) in rel_errors(&a, &b) {
                assert!(
                    e <= 1e-4,
                    "{form} (b={batch} s={seq} past={past}) {name}: {e}"
                );
            }
        }
    }
    eprintln!("readers rotated {rotated_total}, de-rotated {derotated_total}");
    // Both kinds occur on these weights, so both paths were checked above.
    assert!(rotated_total > 0 && derotated_total > 0);
}

/// `quarot,rtn` with a calibration text measures its choice by default; `--quarot-select
/// all` rotates everything; the flag without a rotation is a usage error.
#[test]
fn cli_quarot_select_defaults_and_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::fixtures().join("decoders/decomposed.onnx");
    let text = common::fixtures().join("sample.txt");
    let tok = common::fixtures().join("tokenizer.json");
    let run = |name: &str, extra: &[&str]| {
        let q = tmp.path().join(name);
        let mut args = vec![input.to_str().unwrap(), q.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = common::run::quantize_cli(&args);
        (o.status.code(), common::log_of(&o))
    };
    let calib = [
        "--calib-text",
        text.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--calib-samples",
        "2",
        "--calib-seqlen",
        "32",
    ];
    let mut measured = vec!["--algorithm", "quarot,rtn"];
    measured.extend(calib);
    let (code, log) = run("m.onnx", &measured);
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("measured choice (RTN 4 bits, block 32"),
        "{log}"
    );
    let mut all = measured.clone();
    all.extend(["--quarot-select", "all"]);
    let (code, log) = run("a.onnx", &all);
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("measured choice"), "{log}");
    let mut gptq = vec!["--algorithm", "quarot,gptq"];
    gptq.extend(calib);
    let (code, log) = run("g.onnx", &gptq);
    assert_eq!(code, Some(0), "{log}");
    assert!(
        !log.contains("measured choice"),
        "gptq rotates all by default: {log}"
    );
    let (code, log) = run("x.onnx", &["--algorithm", "rtn", "--quarot-select", "all"]);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("--quarot-select applies to"), "{log}");
}

/// Channels a norm damps stay out of the rotation, and their scale stays in the
/// norm (Q never mixes them, so it commutes): the projections never see the
/// massive activations those channels carry. Exact with and without the measured
/// choice.
#[test]
fn kept_channels_keep_their_norm_scale_and_the_function() {
    let ort = ort();
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(12);
    // As in trained decoders (SmolLM2-135M: channels 247 and 507), every norm
    // damps two channels to almost nothing.
    let mut model = onnxq::load(&common::fixtures().join("decoders/decomposed.onnx")).unwrap();
    let map = DecoderMap::build(&model.graph).unwrap();
    let norms: Vec<String> = map
        .layers
        .iter()
        .flat_map(|l| [&l.input_norm, &l.post_attention_norm])
        .chain([&map.final_norm])
        .filter_map(|n| n.weight.clone())
        .collect();
    for name in &norms {
        let mut gamma = values(&model, name);
        gamma[7] = 1e-3;
        gamma[50] = -2e-3;
        let v = model.graph.find(name).unwrap();
        let t = onnxq::ir::float_tensor(name, onnxq::ir::DType::F32, vec![96], &gamma);
        model.graph.set_initializer(v, t);
    }
    let path = common::run::save(&model, tmp.path(), "damped.onnx");
    let norm = norms[1].clone();
    let gamma = values(&model, &norm);
    for select in ["all", "measured"] {
        let recipe = format!(
            "[recipe]\nname='k'\n[[pass]]\nname='quarot'\nseed=5\n\
             select='{select}'\ncalib-samples=2\ncalib-seqlen=16\n"
        );
        let (rotated, outcomes) = apply(&model, &recipe);
        let notes = outcomes[0].notes.join("\n");
        assert!(
            notes.contains("residual channels kept out of the rotation"),
            "{notes}"
        );
        // The two damped channels, and as many of the least scaled others as fill the
        // rotation's Hadamard order (88 of 96).
        let line = notes.lines().find(|l| l.contains("kept out")).unwrap();
        let list = &line[line.rfind('[').unwrap() + 1..line.rfind(']').unwrap()];
        let kept: Vec<usize> = list.split(", ").map(|x| x.parse().unwrap()).collect();
        assert!(
            kept.contains(&7) && kept.contains(&50) && kept.len() == 8,
            "{line}"
        );
        let left = values(&rotated, &norm);
        for (i, (&l, &g)) in left.iter().zip(&gamma).enumerate() {
            let want = if kept.contains(&i) { g } else { 1.0 };
            assert_eq!(l, want, "{select}: channel {i}");
        }
        let out = tmp.path().join(format!("{select}.onnx"));
        onnxq::save(&rotated, &out, &Default::default()).unwrap();
        let ids: Vec<i64> = (0..10).map(|_| rng.token()).collect();
        let feeds = decoder_feeds(&ids, 2, 0, None, &mut rng);
        for (name, e) in rel_errors(&run(&ort, &path, &feeds), &run(&ort, &out, &feeds)) {
            assert!(e <= 1e-4, "{select} {name}: {e}");
        }
    }
}
