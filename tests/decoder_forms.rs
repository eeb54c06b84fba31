//! The tiny decoder in its four export forms (fixtures/decoders/) run in ONNX
//! Runtime through onnxq's runtime layer: the forms agree, cached decoding
//! reproduces the whole prompt, load -> save keeps the outputs, and the default
//! `onnxq quantize` (RTN int4) turns every weight MatMul into MatMulNBits and
//! keeps the logits close.
mod common;

use std::path::Path;
use std::process::Command;

use common::forms::{self, decoder_feeds, Rng};
use onnxq::runtime::{NamedTensors, Runtime};

/// Runs `path` on the feeds it declares (genai has no position_ids).
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
        .unwrap_or_else(|e| panic!("{} on {}: {e}", path.display(), rt.name()))
}

fn get(outs: &NamedTensors, name: &str) -> Vec<f32> {
    outs.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no output {name}"))
        .1
        .to_f32_vec()
        .unwrap()
}

fn tokens(rng: &mut Rng, n: usize) -> Vec<i64> {
    (0..n).map(|_| rng.token()).collect()
}

#[test]
fn forms_give_the_same_outputs() {
    let Some(ort) = common::ort() else { return };
    let all = forms::decoder_forms();
    let mut rng = Rng::new(7);
    // (batch, new tokens, cached positions); GroupQueryAttention on CPU refuses batch > 1
    // with several new tokens after a non-empty cache.
    for (batch, seq, past) in [(2, 5, 0), (1, 5, 3), (2, 1, 4), (1, 1, 0)] {
        let ids = tokens(&mut rng, batch * seq);
        let feeds = decoder_feeds(&ids, batch, past, None, &mut rng);
        let reference = run(&ort, &all[0].1, &feeds);
        let logits = &reference[0].1;
        assert_eq!(logits.shape, vec![batch, seq, forms::VOCAB]);
        let peak = get(&reference, "logits")
            .iter()
            .fold(0f32, |m, x| m.max(x.abs()));
        // A form that lost the embedding or a layer would still be compared against
        // something: the logits must carry signal.
        assert!(peak > 0.05, "reference logits are ~0 ({peak})");
        for (form, path) in &all[1..] {
            let d = common::max_diff(&reference, &run(&ort, path, &feeds));
            eprintln!("(batch {batch}, seq {seq}, past {past}) {form} vs decomposed: {d:.2e}");
            // fp32, same weights, different op decompositions: measured ≤ 6e-7.
            assert!(d < 1e-4, "{form} (b={batch} s={seq} past={past}): {d}");
        }
    }
}

#[test]
fn cached_decoding_reproduces_the_prompt() {
    let Some(ort) = common::ort() else { return };
    let mut rng = Rng::new(11);
    let ids = tokens(&mut rng, 7);
    for (form, path) in forms::decoder_forms() {
        let full = run(&ort, &path, &decoder_feeds(&ids, 1, 0, None, &mut rng));
        let mut cache: Option<NamedTensors> = None;
        let mut stepped = Vec::new();
        for (lo, hi) in [(0, 4), (4, 6), (6, 7)] {
            let feeds = decoder_feeds(&ids[lo..hi], 1, lo, cache.as_ref(), &mut rng);
            let out = run(&ort, &path, &feeds);
            stepped.extend(get(&out, "logits"));
            cache = Some(out);
        }
        let whole = get(&full, "logits");
        assert_eq!(whole.len(), stepped.len());
        let d = whole
            .iter()
            .zip(&stepped)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let last = cache.expect("three steps ran");
        let dk = (0..forms::LAYERS)
            .flat_map(|i| ["key", "value"].map(|kv| format!("present.{i}.{kv}")))
            .map(|n| {
                let (a, b) = (get(&full, &n), get(&last, &n));
                assert_eq!(a.len(), b.len(), "{n}");
                a.iter()
                    .zip(&b)
                    .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            })
            .fold(0f32, f32::max);
        eprintln!("{form}: prefill + 2 steps vs prompt: logits {d:.2e}, cache {dk:.2e}");
        assert!(d < 1e-4 && dk < 1e-4, "{form}: logits {d}, cache {dk}");
    }
}

#[test]
fn forms_round_trip_with_identical_outputs() {
    let Some(ort) = common::ort() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(13);
    let ids = tokens(&mut rng, 5);
    let feeds = decoder_feeds(&ids, 1, 3, None, &mut rng);
    for (form, path) in forms::decoder_forms() {
        let saved = tmp.path().join(format!("{form}.onnx"));
        onnxq::save(&onnxq::load(&path).unwrap(), &saved, &Default::default()).unwrap();
        let (a, b) = (run(&ort, &path, &feeds), run(&ort, &saved, &feeds));
        assert_eq!(a, b, "{form}: outputs changed by load -> save");
    }
}

fn rel_l2(reference: &[f32], cand: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in reference.iter().zip(cand) {
        num += (*x as f64 - *y as f64).powi(2);
        den += (*x as f64).powi(2);
    }
    (num / den).sqrt()
}

fn quantize(input: &Path, output: &Path, extra: &[&str]) -> String {
    let o = Command::new(common::onnxq_bin())
        .arg("quantize")
        .arg(input)
        .arg(output)
        .args(extra)
        .output()
        .unwrap();
    let log = common::log_of(&o);
    assert!(
        o.status.success(),
        "onnxq quantize {}: {log}",
        input.display()
    );
    log
}

/// True when `onnxq quantize` compared its output with the input (its metrics table).
fn verified(log: &str) -> bool {
    !log.contains("verification skipped") && log.contains("rel-L2")
}

#[test]
fn forms_quantize_to_int4() {
    let Some(ort) = common::ort() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(17);
    let ids = tokens(&mut rng, 2 * 6);
    let prompt = decoder_feeds(&ids, 2, 0, None, &mut rng);
    let step_ids = tokens(&mut rng, 1);
    let step = decoder_feeds(&step_ids, 1, 4, None, &mut rng);
    let mut quantized_logits: Vec<(&str, Vec<f32>)> = Vec::new();
    for (form, path) in forms::decoder_forms() {
        let out = tmp.path().join(format!("{form}-int4.onnx"));
        // The genai form's head is its own tensor (untied), so compare the forms with
        // the tied head quantized like any MatMul.
        let log = quantize(&path, &out, &["--tied-head", "separate"]);
        // The mask width "past_seq_len + seq_len" is evaluated from its terms, so
        // the built-in verification runs on every form with its default inputs.
        assert!(verified(&log), "{form}: verification did not run:\n{log}");
        let m = onnxq::load(&out).unwrap();
        let nbits: Vec<_> = m
            .graph
            .nodes()
            .filter(|(_, n)| n.op_type == "MatMulNBits")
            .collect();
        assert_eq!(
            nbits.len(),
            forms::weight_matmuls(form),
            "{form}: MatMulNBits count"
        );
        assert!(nbits
            .iter()
            .all(|(_, n)| n.attr_int("bits") == Some(4) && n.attr_int("block_size") == Some(32)));
        for (what, feeds) in [("prompt", &prompt), ("step", &step)] {
            let (f, q) = (run(&ort, &path, feeds), run(&ort, &out, feeds));
            let (lf, lq) = (get(&f, "logits"), get(&q, "logits"));
            let e = rel_l2(&lf, &lq);
            let peak = lf
                .iter()
                .zip(&lq)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            eprintln!("{form} int4 {what}: logits rel L2 {e:.4}, max |diff| {peak:.4}");
            // RTN int4, block 32, on weights with planted ×6…×10 outlier columns:
            // measured 0.244 (prompt) and 0.129 (step), identical in every form; the
            // bound leaves 40 % headroom for kernel differences between ORT builds.
            assert!(e < 0.35, "{form} int4 {what}: rel L2 {e}");
            if what == "prompt" {
                quantized_logits.push((form, lq));
            }
        }
    }
    // Blocks run along K, so packing q|k|v (genai) or pre-transposing (opset24) must
    // not change the codes: the quantized forms still compute one function.
    let (_, reference) = &quantized_logits[0];
    for (form, l) in &quantized_logits[1..] {
        let d = reference
            .iter()
            .zip(l)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("int4 {form} vs int4 decomposed: {d:.2e}");
        assert!(d < 1e-4, "int4 {form} differs from int4 decomposed by {d}");
    }
}

#[test]
fn a_tied_head_is_one_8_bit_table_by_default() {
    // onnxruntime's quantizer leaves a tied head fp32 (the table stored once, fp32);
    // quantizing it like any MatMul adds a 4-bit copy beside the fp32 embedding. The
    // default must be smaller than both and lose no more than the fp32 head does.
    let Some(ort) = common::ort() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(29);
    let ids = tokens(&mut rng, 2 * 6);
    let prompt = decoder_feeds(&ids, 2, 0, None, &mut rng);
    let mut tied_forms = 0;
    for (form, path) in forms::decoder_forms() {
        let map = onnxq::llm::DecoderMap::build(&onnxq::load(&path).unwrap().graph).unwrap();
        if !map.tied_lm_head {
            assert_eq!(form, "genai", "only the genai form unties its head");
            continue;
        }
        tied_forms += 1;
        let head = map.lm_head.node.as_str();
        let out = |name: &str| tmp.path().join(format!("{form}-{name}.onnx"));
        quantize(&path, &out("shared"), &["--no-verify"]);
        quantize(
            &path,
            &out("separate"),
            &["--no-verify", "--tied-head", "separate"],
        );
        let float_head = ["--no-verify", "--tied-head", "separate", "--exclude", head];
        quantize(&path, &out("float-head"), &float_head);

        let m = onnxq::load(&out("shared")).unwrap();
        let q = onnxq::llm::DecoderMap::build(&m.graph).unwrap();
        assert!(
            q.tied_lm_head,
            "{form}: the quantized map sees the table tied"
        );
        assert_eq!(q.embedding.op, "com.microsoft::GatherBlockQuantized");
        assert_eq!(q.embedding.bits, Some(8), "{form}");
        assert_eq!(
            q.lm_head.initializer, q.embedding.table,
            "{form}: one table"
        );
        let head_bits = m
            .graph
            .nodes()
            .find(|(_, n)| n.name() == q.lm_head.node)
            .and_then(|(_, n)| n.attr_int("bits"));
        assert_eq!(head_bits, Some(8), "{form}");

        let size = |name: &str| std::fs::metadata(out(name)).unwrap().len();
        let (shared, separate, float_head) = (size("shared"), size("separate"), size("float-head"));
        eprintln!("{form}: bytes shared {shared}, separate {separate}, fp32 head {float_head}");
        assert!(shared < float_head && shared < separate, "{form}");

        let f = get(&run(&ort, &path, &prompt), "logits");
        let err = |name: &str| rel_l2(&f, &get(&run(&ort, &out(name), &prompt), "logits"));
        let (e_shared, e_separate, e_float) = (err("shared"), err("separate"), err("float-head"));
        eprintln!(
            "{form}: logits rel L2 shared {e_shared:.4}, separate {e_separate:.4}, \
             fp32 head {e_float:.4}"
        );
        assert!(
            e_shared < e_separate,
            "{form}: 8-bit head loses more than 4-bit"
        );
        assert!(e_shared < e_float * 1.05, "{form}: 8-bit head vs fp32 head");
    }
    assert_eq!(tied_forms, 3);
}

/// Held-out logits error (relative L2, ONNX Runtime) each form's 8-bit model must
/// stay under: about 1.5 times the largest measured over the four forms (dynamic
/// 0.026-0.027, static 0.050-0.055 on 2026-12-04).
const INT8_DYNAMIC_LIMIT: f64 = 0.04;
const INT8_STATIC_LIMIT: f64 = 0.085;

#[test]
fn forms_quantize_to_int8_dynamic_and_static() {
    let Some(_ort) = common::ort() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let fx = common::fixtures();
    let tok_path = fx.join("tokenizer.json");
    let text = std::fs::read_to_string(fx.join("sample.txt")).unwrap();
    let (calib, held_out) = text.split_at(text.len() / 2);
    let calib_path = tmp.path().join("calib.txt");
    std::fs::write(&calib_path, calib).unwrap();
    let tok = onnxq::calib::tokenizer::Tokenizer::from_file(&tok_path).unwrap();
    let eval =
        onnxq::calib::text::TextSamples::windows(&tok.input_ids(held_out).unwrap(), 4, 48, 5)
            .windows;
    let static_flags = [
        "--algorithm",
        "static",
        "--calib-text",
        calib_path.to_str().unwrap(),
        "--tokenizer",
        tok_path.to_str().unwrap(),
        "--calib-samples",
        "8",
        "--calib-seqlen",
        "48",
        "--runtime",
        "ort",
    ];
    for (what, flags, limit) in [
        (
            "dynamic",
            &["--algorithm", "dynamic"][..],
            INT8_DYNAMIC_LIMIT,
        ),
        ("static", &static_flags[..], INT8_STATIC_LIMIT),
    ] {
        for (form, path) in forms::decoder_forms() {
            let out = tmp.path().join(format!("{form}-{what}.onnx"));
            let log = quantize(&path, &out, flags);
            assert!(
                verified(&log),
                "{form} {what}: verification did not run:\n{log}"
            );
            let e = common::text_logits_error(&path, &out, &eval, onnxq::runtime::RuntimeKind::Ort);
            eprintln!("{form} int8 {what}: held-out logits rel L2 in onnxruntime {e:.4}");
            assert!(e < limit, "{form} int8 {what}: rel L2 {e} (limit {limit})");
        }
    }
}
