//! AWQ: the scaling pass leaves the float model's function unchanged (scales folded
//! into norms, gated MatMuls or an inserted Mul), and AWQ + RTN is no worse than RTN
//! on held-out text of the tiny Llama fixtures; outputs run in ONNX Runtime.
mod common;

use std::path::{Path, PathBuf};

use onnxq::calib::text::TextSamples;
use onnxq::calib::tokenizer::Tokenizer;
use onnxq::pass::recipe::Recipe;
use onnxq::pass::{run_pipeline, PassCx, PassOutcome};
use onnxq::runtime::RuntimeKind;

fn split_sample() -> (String, String) {
    let text = std::fs::read_to_string(common::fixtures().join("sample.txt")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines.len() * 2 / 3;
    (lines[..cut].join("\n"), lines[cut..].join("\n"))
}

fn apply(model: &onnxq::Model, recipe: &str, path: &Path) -> Vec<PassOutcome> {
    let r = Recipe::parse("t", recipe).unwrap();
    let mut m = model.clone();
    let o = run_pipeline(&mut m, &r.build().unwrap(), &mut PassCx::default()).unwrap();
    onnxq::save(&m, path, &Default::default()).unwrap();
    o
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    calib: PathBuf,
    tokenizer: PathBuf,
    eval: Vec<Vec<i64>>,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (calib, held_out) = split_sample();
    let calib_path = dir.join("calib.txt");
    std::fs::write(&calib_path, calib).unwrap();
    let tokenizer = common::fixtures().join("tokenizer.json");
    let tok = Tokenizer::from_file(&tokenizer).unwrap();
    let eval = TextSamples::windows(&tok.input_ids(&held_out).unwrap(), 4, 48, 99).windows;
    Setup {
        _tmp: tmp,
        dir,
        calib: calib_path,
        tokenizer,
        eval,
    }
}

fn awq_table(s: &Setup, sym: bool) -> String {
    format!(
        "[[pass]]\nname='awq'\nbits=4\nblock-size=32\nsymmetric={sym}\ncalib-text='{}'\n\
         tokenizer='{}'\ncalib-samples=8\ncalib-seqlen=64\nmax-rows=256\n",
        s.calib.display(),
        s.tokenizer.display()
    )
}

#[test]
fn scaling_alone_keeps_the_float_model_within_1e_5() {
    let s = setup();
    // decomposed: Mul(γ) norms, a gated MLP and inserted Muls; attention23:
    // RMSNormalization; genai: (Skip)SimplifiedLayerNormalization.
    for (fixture, want_folds) in [
        ("llama-decomposed.onnx", true),
        ("llama-attention23.onnx", true),
        ("llama-genai-kv.onnx", true),
    ] {
        let orig = common::fixtures().join(fixture);
        let model = onnxq::load(&orig).unwrap();
        let out = s.dir.join(format!("scaled-{fixture}"));
        let o = apply(
            &model,
            &format!("[recipe]\nname='a'\n{}", awq_table(&s, true)),
            &out,
        );
        let scaled = o[0]
            .counters
            .get("activations scaled")
            .copied()
            .unwrap_or(0);
        assert!(
            !want_folds || scaled >= 4,
            "{fixture}: {:?} {:?}",
            o[0].counters,
            o[0].notes
        );
        // Every observed group is in the per-layer report, relative errors in
        // (0, 1) and never above plain RTN's (α = 0 is a grid point).
        let layers = &o[0].layers;
        assert!(layers.len() as u64 >= scaled, "{fixture}: {layers:?}");
        for l in layers {
            assert!(
                l.after > 0.0 && l.after <= l.rtn && l.rtn < 1.0,
                "{fixture}: {l:?}"
            );
        }
        assert!(
            layers.iter().any(|l| l.after < l.rtn),
            "{fixture}: {layers:?}"
        );
        // The weights did change.
        let m = onnxq::load(&out).unwrap();
        let (_, w0) = model
            .graph
            .initializers()
            .find(|(_, t)| t.name().contains("q_proj"))
            .unwrap();
        let w1 = m
            .graph
            .initializer(m.graph.find(w0.name()).unwrap())
            .unwrap();
        assert_ne!(w0.to_f32().unwrap(), w1.to_f32().unwrap(), "{fixture}");
        let e = logits_error(&orig, &out, &s.eval);
        eprintln!("{fixture}: scaled float model, logits rel-L2 {e:.2e}");
        assert!(e < 1e-5, "{fixture}: folding changed the function: {e}");
    }
}

#[test]
fn awq_then_rtn_is_no_worse_than_rtn_on_held_out_text() {
    let s = setup();
    let orig = common::fixtures().join("llama-decomposed.onnx");
    let model = onnxq::load(&orig).unwrap();
    for sym in [true, false] {
        let nbits =
            format!("[[pass]]\nname='matmul-nbits'\nbits=4\nblock-size=32\nsymmetric={sym}\n");
        let rtn = s.dir.join("rtn.onnx");
        apply(&model, &format!("[recipe]\nname='r'\n{nbits}"), &rtn);
        let awq = s.dir.join("awq.onnx");
        apply(
            &model,
            &format!("[recipe]\nname='a'\n{}{nbits}", awq_table(&s, sym)),
            &awq,
        );
        let e_rtn = logits_error(&orig, &rtn, &s.eval);
        let e_awq = logits_error(&orig, &awq, &s.eval);
        eprintln!("sym={sym}: logits rel-L2 on held-out text: RTN {e_rtn:.4}, AWQ+RTN {e_awq:.4}");
        assert!(
            e_awq <= e_rtn,
            "sym={sym}: AWQ {e_awq} worse than RTN {e_rtn}"
        );
        if let Some(py) = common::python() {
            common::py(
                &py,
                "ort_check.py",
                &["run", awq.to_str().unwrap(), orig.to_str().unwrap()],
            );
        }
    }
}

#[test]
fn quantize_cli_runs_awq() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a.onnx");
    let fx = common::fixtures();
    let o = std::process::Command::new(common::onnxq_bin())
        .arg("quantize")
        .arg(fx.join("llama-attention23.onnx"))
        .arg(&out)
        .args(["--algorithm", "awq", "--calib-text"])
        .arg(fx.join("sample.txt"))
        .arg("--tokenizer")
        .arg(fx.join("tokenizer.json"))
        .args([
            "--calib-samples",
            "4",
            "--calib-seqlen",
            "32",
            "--block-size",
            "16",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = onnxq::load(&out).unwrap();
    let nbits: Vec<_> = m
        .graph
        .nodes()
        .filter(|(_, n)| n.op_type == "MatMulNBits")
        .collect();
    assert_eq!(nbits.len(), 15);
    assert!(nbits
        .iter()
        .all(|(_, n)| n.attr_int("block_size") == Some(16)));
    let bad = std::process::Command::new(common::onnxq_bin())
        .arg("quantize")
        .arg(fx.join("llama-attention23.onnx"))
        .arg(&out)
        .args(["--algorithm", "awq", "--act-order"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--act-order applies to --algorithm gptq")
    );
}

#[test]
fn inputs_nothing_can_absorb_are_skipped_without_insert_mul() {
    let model = common::build::mlp(true);
    let r = Recipe::parse(
        "r",
        "[recipe]\nname='r'\n[[pass]]\nname='awq'\ninsert-mul=false\ncalib-samples=2\n",
    )
    .unwrap();
    let mut m = model.clone();
    let o = run_pipeline(&mut m, &r.build().unwrap(), &mut PassCx::default()).unwrap();
    assert!(!o[0].changed);
    assert!(
        o[0].skipped
            .iter()
            .any(|s| s.reason.contains("insert-mul = false")),
        "{:?}",
        o[0].skipped
    );
    assert_eq!(
        onnxq::ir::print::diff(&model, &m).lines().next(),
        Some("nodes: 10 -> 10 (+0)")
    );
}

/// Logits rel-L2 of `cand` vs `reference` on held-out windows (ONNX Runtime when found).
fn logits_error(reference: &Path, cand: &Path, windows: &[Vec<i64>]) -> f64 {
    common::text_logits_error(reference, cand, windows, RuntimeKind::Auto)
}

/// Every decoder form the map knows, old and new fixtures.
const DECODER_FORMS: &[&str] = &[
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
];

fn count_op(path: &Path, op: &str) -> usize {
    onnxq::load(path)
        .unwrap()
        .graph
        .nodes()
        .filter(|(_, n)| n.op_type == op)
        .count()
}

#[test]
fn awq_folds_into_the_norms_the_decoder_map_finds_on_every_form() {
    let s = setup();
    let nbits = "[[pass]]\nname='matmul-nbits'\nbits=4\nblock-size=32\nsymmetric=true\n";
    let table = format!(
        "[[pass]]\nname='awq'\nbits=4\nblock-size=32\nsymmetric=true\ncalib-text='{}'\n\
         tokenizer='{}'\ncalib-samples=4\ncalib-seqlen=48\nmax-rows=128\n",
        s.calib.display(),
        s.tokenizer.display()
    );
    for fixture in DECODER_FORMS {
        let orig = common::fixtures().join(fixture);
        let model = onnxq::load(&orig).unwrap();
        let map = onnxq::llm::DecoderMap::build(&model.graph).unwrap();
        let layers = map.num_layers as u64;
        let tag = fixture.replace('/', "-");
        let rtn = s.dir.join(format!("rtn-{tag}"));
        apply(&model, &format!("[recipe]\nname='r'\n{nbits}"), &rtn);
        let awq = s.dir.join(format!("awq-{tag}"));
        let o = apply(&model, &format!("[recipe]\nname='a'\n{table}{nbits}"), &awq);
        let c = &o[0].counters;
        let sites = c.get("norm fold sites").copied().unwrap_or(0);
        let norms = c.get("folded into norms").copied().unwrap_or(0);
        let ups = c.get("folded into up projections").copied().unwrap_or(0);
        // Both norms of every layer absorb their scales (fused, Skip or decomposed);
        // the final norm too unless the lm_head is tied to the embedding.
        // (A tied lm_head's weight is the embedding's: it is not scaled.)
        let want_sites = layers * 2 + u64::from(!map.tied_lm_head);
        assert!(
            sites >= want_sites && norms >= 1,
            "{fixture}: {sites} norm fold sites, want >= {want_sites}: {c:?} {:?} {:?}",
            o[0].notes,
            o[0].skipped
        );
        // o_proj's input comes out of the attention core: the reason is reported.
        assert!(
            o[0].notes
                .iter()
                .any(|n| n.starts_with("layer 0 o_proj: ") && n.contains("Mul(x, 1/s)")),
            "{fixture}: {:?}",
            o[0].notes
        );
        // The report names groups after the map.
        assert!(
            o[0].layers.iter().any(|l| l.name.starts_with("layer 0 ")),
            "{fixture}: {:?}",
            o[0].layers
        );
        let n_rtn = count_op(&rtn, "MatMulNBits");
        let n_awq = count_op(&awq, "MatMulNBits");
        assert_eq!(n_awq, n_rtn, "{fixture}");
        assert_eq!(n_awq, map.linears().len(), "{fixture}");
        let e_rtn = logits_error(&orig, &rtn, &s.eval);
        let e_awq = logits_error(&orig, &awq, &s.eval);
        eprintln!(
            "{fixture}: {layers} layers, {n_awq} MatMulNBits, {sites} norm sites, folds: {norms} \
             norms, {ups} up, \
             {} muls; held-out logits rel-L2 RTN {e_rtn:.4}, AWQ+RTN {e_awq:.4}",
            c.get("muls inserted").copied().unwrap_or(0)
        );
        assert!(
            e_awq <= e_rtn,
            "{fixture}: AWQ {e_awq} worse than RTN {e_rtn}"
        );
        if let Some(py) = common::python() {
            common::py(
                &py,
                "ort_check.py",
                &["run", awq.to_str().unwrap(), orig.to_str().unwrap()],
            );
        }
    }
}

#[test]
fn a_norm_weight_read_by_two_norms_is_reported_and_not_divided() {
    let s = setup();
    let orig = common::fixtures().join("llama-decomposed.onnx");
    let mut model = onnxq::load(&orig).unwrap();
    let map = onnxq::llm::DecoderMap::build(&model.graph).unwrap();
    // Layer 1's input norm now reads layer 0's gamma: one weight, two norms.
    let shared = model
        .graph
        .find(map.layers[0].input_norm.weight.as_deref().unwrap())
        .unwrap();
    let own = model
        .graph
        .find(map.layers[1].input_norm.weight.as_deref().unwrap())
        .unwrap();
    let norm1 = map.layers[1].input_norm.node_id;
    let slot = model
        .graph
        .node(norm1)
        .inputs()
        .iter()
        .position(|v| *v == Some(own))
        .unwrap();
    model.graph.set_input(norm1, slot, Some(shared));
    let before = model.graph.initializer(shared).unwrap().to_f32().unwrap();
    let out = s.dir.join("shared.onnx");
    let o = apply(
        &model,
        &format!(
            "[recipe]\nname='a'\n{}insert-mul=false\n",
            awq_table(&s, true)
        ),
        &out,
    );
    for label in ["layer 0 q,k,v", "layer 1 q,k,v"] {
        assert!(
            o[0].skipped
                .iter()
                .any(|k| k.node == label && k.reason.contains("shared (2 readers)")),
            "{label}: {:?}",
            o[0].skipped
        );
    }
    // The post-attention norms and the final norm still take their scales.
    assert_eq!(o[0].counters.get("norm fold sites"), Some(&3), "{:?}", o[0]);
    let m = onnxq::load(&out).unwrap();
    let after = m
        .graph
        .initializer(m.graph.find(model.graph.value_name(shared)).unwrap())
        .unwrap()
        .to_f32()
        .unwrap();
    assert_eq!(before, after);
}
