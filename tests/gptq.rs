//! GPTQ: the kernel against RTN on matrices (identity Hessian gives RTN exactly;
//! correlated activations give a lower output error), and the pass end to end on the
//! tiny Llama fixture calibrated on fixtures/sample.txt, checked in tract/ONNX Runtime.
mod common;

use std::path::{Path, PathBuf};

use onnxq::calib::text::TextSamples;
use onnxq::calib::tokenizer::Tokenizer;
use onnxq::pass::recipe::Recipe;
use onnxq::pass::{run_pipeline, PassCx};
use onnxq::quant::gptq::{quantize_kn, relative_output_error, GptqOptions};
use onnxq::quant::nbits::{quantize_kn_as, QuantParams};
use onnxq::quant::FloatType;
use onnxq::runtime::RuntimeKind;

/// Seeded standard normal values (Box–Muller over an LCG).
fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut u = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (a, b) = (u(), u());
            ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
        })
        .collect()
}

/// Rows of X = Z·A (correlated channels) with a few outlier channels, and XᵀX / rows.
fn correlated(rows: usize, k: usize, seed: u64) -> (Vec<f32>, Vec<f64>) {
    let z = normal(rows * k, seed);
    let a = normal(k * k, seed + 1);
    let mut x = vec![0f32; rows * k];
    for r in 0..rows {
        for j in 0..k {
            let mut v = 0f32;
            for i in 0..k {
                v += z[r * k + i] * a[i * k + j];
            }
            x[r * k + j] = v * if j % 13 == 0 { 6.0 } else { 1.0 };
        }
    }
    let mut h = vec![0f64; k * k];
    for r in 0..rows {
        let xr = &x[r * k..(r + 1) * k];
        for i in 0..k {
            for j in 0..k {
                h[i * k + j] += xr[i] as f64 * xr[j] as f64;
            }
        }
    }
    for v in &mut h {
        *v /= rows as f64;
    }
    (x, h)
}

#[test]
fn identity_hessian_gives_rtn_exactly() {
    let (k, n) = (80, 24); // K not a multiple of the block: a partial last group
    let w = normal(k * n, 7);
    let mut h = vec![0f64; k * k];
    for i in 0..k {
        h[i * k + i] = 1.0;
    }
    for (bits, sym, ft) in [
        (4, true, FloatType::F32),
        (4, false, FloatType::F32),
        (2, false, FloatType::F32),
        (8, true, FloatType::F32),
        (4, true, FloatType::F16),
    ] {
        let p = QuantParams::new(bits, 32, sym).unwrap();
        let rtn = quantize_kn_as(&w, k, n, &p, ft).unwrap();
        for act_order in [false, true] {
            let opts = GptqOptions {
                damp: 0.01,
                act_order,
            };
            let g = quantize_kn(&w, k, n, &h, &p, ft, &opts).unwrap();
            assert_eq!(
                g.packed, rtn.packed,
                "{bits} bits sym={sym} {ft:?} {act_order}"
            );
            assert_eq!(g.scales, rtn.scales, "{bits} bits sym={sym} {ft:?}");
            assert_eq!(g.zero_points, rtn.zero_points, "{bits} bits sym={sym}");
            assert_eq!(g.scale_type, rtn.scale_type);
        }
    }
}

#[test]
fn correlated_activations_give_lower_output_error_than_rtn() {
    let (k, n, rows) = (256, 48, 1024);
    let (_, h) = correlated(rows, k, 3);
    let w: Vec<f32> = normal(k * n, 11).iter().map(|v| v * 0.02).collect();
    for (sym, bs) in [(true, 32), (false, 32), (true, 128)] {
        let p = QuantParams::new(4, bs, sym).unwrap();
        let rtn = quantize_kn_as(&w, k, n, &p, FloatType::F32).unwrap();
        let e_rtn = relative_output_error(&w, &rtn.dequantize_kn(), k, n, &h);
        for act_order in [false, true] {
            let opts = GptqOptions {
                damp: 0.01,
                act_order,
            };
            let g = quantize_kn(&w, k, n, &h, &p, FloatType::F32, &opts).unwrap();
            let e_g = relative_output_error(&w, &g.dequantize_kn(), k, n, &h);
            eprintln!("sym={sym} block={bs} act_order={act_order}: rel ‖XΔW‖² RTN {e_rtn:.5} GPTQ {e_g:.5}");
            assert!(
                e_g < 0.7 * e_rtn,
                "sym={sym} block={bs} act_order={act_order}: GPTQ {e_g} vs RTN {e_rtn}"
            );
        }
    }
}

/// The fixture text split at a line boundary: (calibration part, held-out part).
fn split_sample() -> (String, String) {
    let text = std::fs::read_to_string(common::fixtures().join("sample.txt")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines.len() * 2 / 3;
    (lines[..cut].join("\n"), lines[cut..].join("\n"))
}

fn quantize(model: &onnxq::Model, recipe: &str, dir: &Path, name: &str) -> PathBuf {
    let r = Recipe::parse(name, recipe).unwrap();
    let mut m = model.clone();
    run_pipeline(&mut m, &r.build().unwrap(), &mut PassCx::default()).unwrap();
    let p = dir.join(name);
    onnxq::save(&m, &p, &Default::default()).unwrap();
    p
}

#[test]
fn gptq_on_the_llama_fixture_is_no_worse_than_rtn_on_held_out_text() {
    let tmp = tempfile::tempdir().unwrap();
    let (calib, held_out) = split_sample();
    let calib_path = tmp.path().join("calib.txt");
    std::fs::write(&calib_path, &calib).unwrap();
    let tok_path = common::fixtures().join("tokenizer.json");
    let tok = Tokenizer::from_file(&tok_path).unwrap();
    let eval = TextSamples::windows(&tok.input_ids(&held_out).unwrap(), 4, 48, 99).windows;
    let orig = common::fixtures().join("llama-decomposed.onnx");
    let model = onnxq::load(&orig).unwrap();
    for (sym, act_order) in [(true, false), (false, false), (true, true)] {
        let rtn = quantize(
            &model,
            &format!(
                "[recipe]\nname='r'\n[[pass]]\nname='matmul-nbits'\nbits=4\nblock-size=32\nsymmetric={sym}\n"
            ),
            tmp.path(),
            "rtn.onnx",
        );
        let gptq = quantize(
            &model,
            &format!(
                "[recipe]\nname='g'\n[[pass]]\nname='gptq'\nbits=4\nblock-size=32\nsymmetric={sym}\n\
                 act-order={act_order}\ncalib-text='{}'\ntokenizer='{}'\ncalib-samples=16\ncalib-seqlen=64\n",
                calib_path.display(),
                tok_path.display()
            ),
            tmp.path(),
            "gptq.onnx",
        );
        let e_rtn = logits_error(&orig, &rtn, &eval);
        let e_gptq = logits_error(&orig, &gptq, &eval);
        eprintln!("sym={sym} act_order={act_order}: logits rel-L2 on held-out text: RTN {e_rtn:.4}, GPTQ {e_gptq:.4}");
        assert!(
            e_gptq <= e_rtn,
            "sym={sym} act_order={act_order}: GPTQ {e_gptq} worse than RTN {e_rtn}"
        );
        if let Some(py) = common::python() {
            common::py(
                &py,
                "ort_check.py",
                &["run", gptq.to_str().unwrap(), orig.to_str().unwrap()],
            );
        }
    }
}

#[test]
fn the_fixture_tokenizer_round_trips_the_sample_text_with_merges() {
    let tok = Tokenizer::from_file(&common::fixtures().join("tokenizer.json")).unwrap();
    let text = std::fs::read_to_string(common::fixtures().join("sample.txt")).unwrap();
    let ids = tok.encode(&text).unwrap();
    // The post-processor's <s> (id 1) first, then the text.
    assert_eq!(ids[0], 1);
    assert_eq!(tok.decode(&ids[1..]).unwrap(), text);
    // Merges apply: fewer tokens than bytes, and every id is in the 320-entry vocabulary.
    assert!(
        ids.len() < text.len() * 3 / 4,
        "{} ids for {} bytes",
        ids.len(),
        text.len()
    );
    assert!(ids.iter().all(|&i| i < 320));
    // " the" is a learned merge ("Ġt he"): one token.
    let the = tok.encode(" the").unwrap();
    assert_eq!(the.len(), 2, "{the:?}");
}

#[test]
fn quantize_cli_runs_gptq_from_text_and_refuses_foreign_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("g.onnx");
    let fx = common::fixtures();
    let run = |extra: &[&str]| {
        std::process::Command::new(common::onnxq_bin())
            .arg("quantize")
            .arg(fx.join("llama-decomposed.onnx"))
            .arg(&out)
            .args(["--algorithm", "gptq"])
            .args(extra)
            .output()
            .unwrap()
    };
    let text = fx.join("sample.txt");
    let tok = fx.join("tokenizer.json");
    let o = run(&[
        "--calib-text",
        text.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--calib-samples",
        "4",
        "--calib-seqlen",
        "32",
        "--act-order",
        "--damp",
        "0.05",
        "--asymmetric",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = onnxq::load(&out).unwrap();
    let nbits: Vec<_> = m
        .graph
        .nodes()
        .filter(|(_, n)| n.op_type == "MatMulNBits")
        .collect();
    // 7 projections per layer × 2 layers + lm_head.
    assert_eq!(nbits.len(), 15);
    assert!(nbits
        .iter()
        .all(|(_, n)| n.input(3).is_some() && n.attr_int("bits") == Some(4)));
    let bad = run(&["--calib-text", text.to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tokenizer"));
    let bad = run(&["--per-channel"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--per-channel"));
    let rtn = std::process::Command::new(common::onnxq_bin())
        .arg("quantize")
        .arg(fx.join("llama-decomposed.onnx"))
        .arg(&out)
        .arg("--act-order")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&rtn.stderr).contains("--act-order applies to --algorithm gptq")
    );
}

#[test]
fn invalid_gptq_settings_are_rejected_before_any_model_is_read() {
    let fx = common::fixtures();
    let text = fx.join("sample.txt");
    let tok = fx.join("tokenizer.json");
    for (table, want) in [
        ("bits=3".to_string(), "bits=3"),
        ("damp=-0.1".to_string(), "damp"),
        ("block-size=24".to_string(), "block size 24"),
        ("calib-seqlen=0".to_string(), "calib-seqlen"),
        (format!("calib-text='{}'", text.display()), "tokenizer"),
        (
            format!(
                "calib-text='{}'\ntokenizer='{}'\ncalib='{}'",
                text.display(),
                tok.display(),
                fx.display()
            ),
            "exclusive",
        ),
        (
            format!(
                "calib-text='{}'\ntokenizer='{}'",
                text.display(),
                text.display()
            ),
            "not a tokenizer.json",
        ),
        ("runtime='gpu'".to_string(), "unknown runtime"),
    ] {
        let e = Recipe::parse(
            "r",
            &format!("[recipe]\nname='r'\n[[pass]]\nname='gptq'\n{table}\n"),
        )
        .err()
        .unwrap_or_else(|| panic!("{table} was accepted"))
        .to_string();
        assert!(e.contains(want), "{table}: {e}");
    }
}

#[test]
fn excluded_and_non_constant_matmuls_are_reported_and_left_alone() {
    let model = common::build::mlp(true);
    let r = Recipe::parse(
        "r",
        "[recipe]\nname='r'\n[[pass]]\nname='gptq'\nexclude=['fc1/*']\ncalib-samples=2\n",
    )
    .unwrap();
    let mut m = model.clone();
    let o = run_pipeline(&mut m, &r.build().unwrap(), &mut PassCx::default()).unwrap();
    assert!(o[0]
        .skipped
        .iter()
        .any(|s| s.node == "fc1/MatMul" && s.reason == "excluded"));
    assert!(o[0]
        .notes
        .iter()
        .any(|n| n.contains("seeded random inputs")));
    let ops: Vec<String> = m.graph.nodes().map(|(_, n)| n.op_type.clone()).collect();
    assert_eq!(
        ops.iter().filter(|o| *o == "MatMulNBits").count(),
        4,
        "{ops:?}"
    );
    assert_eq!(ops.iter().filter(|o| *o == "MatMul").count(), 1, "{ops:?}");
    // Every created node names the pass.
    assert!(m
        .graph
        .nodes()
        .filter(|(_, n)| n.op_type == "MatMulNBits")
        .all(|(_, n)| n
            .metadata_props
            .iter()
            .any(|(k, v)| k == "onnxq.pass" && v == "gptq")));
}

/// Runs a one-pass recipe, saves the model and returns what the pass reported.
fn quantize_noting(model: &onnxq::Model, recipe: &str, path: &Path) -> onnxq::pass::PassOutcome {
    let r = Recipe::parse("r", recipe).unwrap();
    let mut m = model.clone();
    let out = run_pipeline(&mut m, &r.build().unwrap(), &mut PassCx::default()).unwrap();
    onnxq::save(&m, path, &Default::default()).unwrap();
    out.into_iter().next().expect("one pass")
}

#[test]
fn calibrating_piece_by_piece_gives_the_same_model_as_in_one_session() {
    // A zero budget cuts the decoder wherever it can: every piece runs as its own
    // session on carried activations, and the Hessians must come out the same.
    let tmp = tempfile::tempdir().unwrap();
    let text = common::fixtures().join("sample.txt");
    let tok = common::fixtures().join("tokenizer.json");
    let eval = TextSamples::windows(
        &Tokenizer::from_file(&tok)
            .unwrap()
            .input_ids(&std::fs::read_to_string(&text).unwrap())
            .unwrap(),
        2,
        32,
        5,
    )
    .windows;
    // Every attention style: decomposed (with KV inputs, with a tied lm_head),
    // opset-23 Attention, onnxruntime-genai's GroupQueryAttention.
    for fixture in [
        "llama-decomposed.onnx",
        "llama-decomposed-kv.onnx",
        "llama-decomposed-tied.onnx",
        "llama-attention23.onnx",
        "llama-genai-kv.onnx",
    ] {
        let orig = common::fixtures().join(fixture);
        let model = onnxq::load(&orig).unwrap();
        let mut outs = Vec::new();
        for budget in [1024, 0] {
            let path = tmp.path().join(format!("{budget}-{fixture}"));
            let outcome = quantize_noting(
                &model,
                &format!(
                    "[recipe]\nname='g'\n[[pass]]\nname='gptq'\ncalib-text='{}'\ntokenizer='{}'\n\
                     calib-samples=4\ncalib-seqlen=32\ncalib-memory-mb={budget}\nruntime='auto'\n",
                    text.display(),
                    tok.display()
                ),
                &path,
            );
            let notes = &outcome.notes;
            let pieces = notes
                .iter()
                .find_map(|n| {
                    n.split('(')
                        .nth(1)?
                        .split(' ')
                        .next()?
                        .parse::<usize>()
                        .ok()
                })
                .unwrap_or_else(|| panic!("no piece count in {notes:?}"));
            // The per-layer report: one entry per quantized weight, GPTQ's output
            // error below RTN's on average.
            let layers = &outcome.layers;
            assert_eq!(layers.len() as u64, outcome.counters["matmuls quantized"]);
            let mean = |f: fn(&onnxq::pass::LayerError) -> f64| {
                layers.iter().map(f).sum::<f64>() / layers.len() as f64
            };
            assert!(
                mean(|l| l.after) < 0.8 * mean(|l| l.rtn),
                "{fixture}: {layers:?}"
            );
            if budget == 0 {
                assert!(pieces > 3, "{fixture}: only {pieces} pieces");
            } else {
                assert_eq!(pieces, 1, "{fixture}");
            }
            outs.push(path);
        }
        let diff = logits_error(&outs[0], &outs[1], &eval);
        eprintln!("{fixture}: one session vs pieces, logits rel-L2 {diff:.2e}");
        assert!(
            diff < 1e-3,
            "{fixture}: piecewise calibration changed the model by {diff}"
        );
    }
}

#[test]
fn text_that_cannot_calibrate_the_model_is_refused_by_name() {
    let text = common::fixtures().join("sample.txt");
    let tok = common::fixtures().join("tokenizer.json");
    let recipe = |seqlen: usize| {
        format!(
            "[recipe]\nname='g'\n[[pass]]\nname='gptq'\ncalib-text='{}'\ntokenizer='{}'\n\
             calib-samples=2\ncalib-seqlen={seqlen}\n",
            text.display(),
            tok.display()
        )
    };
    let run = |model: &onnxq::Model, seqlen: usize| {
        let r = Recipe::parse("g", &recipe(seqlen)).unwrap();
        let mut m = model.clone();
        run_pipeline(&mut m, &r.build().unwrap(), &mut PassCx::default())
            .unwrap_err()
            .to_string()
    };
    let model = onnxq::load(&common::fixtures().join("llama-decomposed.onnx")).unwrap();
    let e = run(&model, 100_000);
    assert!(e.contains("fewer than one window of 100000"), "{e}");

    // The same decoder with a 100-row embedding table: the 320-token tokenizer
    // does not belong to it.
    let mut small = model.clone();
    let g = &mut small.graph;
    let v = g.find("model.embed_tokens.weight").unwrap();
    let rows: Vec<f32> = g.initializer(v).unwrap().to_f32().unwrap()[..100 * 64].to_vec();
    g.set_initializer(
        v,
        onnxq::ir::Tensor::from_f32("model.embed_tokens.weight", vec![100, 64], &rows),
    );
    let e = run(&small, 32);
    assert!(
        e.contains("model.embed_tokens.weight") && e.contains("does not match the model"),
        "{e}"
    );
}

/// Logits rel-L2 of `cand` vs `reference` on held-out windows (ONNX Runtime when found).
fn logits_error(reference: &Path, cand: &Path, windows: &[Vec<i64>]) -> f64 {
    common::text_logits_error(reference, cand, windows, RuntimeKind::Auto)
}

#[test]
fn gptq_names_and_orders_layers_by_the_decoder_map_on_every_form() {
    let tmp = tempfile::tempdir().unwrap();
    let (calib, held_out) = split_sample();
    let calib_path = tmp.path().join("calib.txt");
    std::fs::write(&calib_path, &calib).unwrap();
    let tok_path = common::fixtures().join("tokenizer.json");
    let tok = Tokenizer::from_file(&tok_path).unwrap();
    let eval = TextSamples::windows(&tok.input_ids(&held_out).unwrap(), 4, 48, 99).windows;
    for fixture in [
        "decoders/decomposed.onnx",
        "decoders/genai.onnx",
        "decoders/opset24.onnx",
        "decoders/dynamo.onnx",
        "llama-decomposed.onnx",
        "llama-decomposed-kv.onnx",
        "llama-decomposed-tied.onnx",
        "llama-attention23.onnx",
        "llama-attention23-kv.onnx",
        "llama-genai-kv.onnx",
    ] {
        let orig = common::fixtures().join(fixture);
        let model = onnxq::load(&orig).unwrap();
        let map = onnxq::llm::DecoderMap::build(&model.graph).unwrap();
        let tag = fixture.replace('/', "-");
        let rtn = quantize(
            &model,
            "[recipe]\nname='r'\n[[pass]]\nname='matmul-nbits'\nbits=4\nblock-size=32\n",
            tmp.path(),
            &format!("rtn-{tag}"),
        );
        let gptq_path = tmp.path().join(format!("gptq-{tag}"));
        let o = quantize_noting(
            &model,
            &format!(
                "[recipe]\nname='g'\n[[pass]]\nname='gptq'\nbits=4\nblock-size=32\n\
                 calib-text='{}'\ntokenizer='{}'\ncalib-samples=4\ncalib-seqlen=48\n",
                calib_path.display(),
                tok_path.display()
            ),
            &gptq_path,
        );
        // Layers are reported by the map's names, in its execution order.
        let names: Vec<&str> = o.layers.iter().map(|l| l.name.as_str()).collect();
        let first = names.first().copied().unwrap_or_default();
        assert!(
            first == "layer 0 q_proj" || first == "layer 0 qkv_proj",
            "{fixture}: {names:?}"
        );
        assert!(
            names.iter().filter(|n| n.ends_with("down_proj")).count() == map.num_layers,
            "{fixture}: {names:?}"
        );
        let n_rtn = count_op(&rtn, "MatMulNBits");
        let n_gptq = count_op(&gptq_path, "MatMulNBits");
        assert_eq!(n_gptq, n_rtn, "{fixture}");
        assert_eq!(n_gptq, map.linears().len(), "{fixture}");
        let e_rtn = logits_error(&orig, &rtn, &eval);
        let e_gptq = logits_error(&orig, &gptq_path, &eval);
        eprintln!(
            "{fixture}: {n_gptq} MatMulNBits; held-out logits rel-L2 RTN {e_rtn:.4}, GPTQ {e_gptq:.4}"
        );
        assert!(
            e_gptq <= e_rtn,
            "{fixture}: GPTQ {e_gptq} worse than RTN {e_rtn}"
        );
        if let Some(py) = common::python() {
            common::py(
                &py,
                "ort_check.py",
                &["run", gptq_path.to_str().unwrap(), orig.to_str().unwrap()],
            );
        }
    }
}

fn count_op(path: &Path, op: &str) -> usize {
    onnxq::load(path)
        .unwrap()
        .graph
        .nodes()
        .filter(|(_, n)| n.op_type == op)
        .count()
}
