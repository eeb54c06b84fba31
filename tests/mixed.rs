//! Mixed precision under a size budget (`mixed-precision` + the int4-mixed recipe) on
//! the tiny decoders calibrated on fixtures/sample.txt: every setting it offers runs in
//! ONNX Runtime, the budget holds exactly counting the bytes written, and a tighter
//! budget never measures a lower logits error (ONNX Runtime, held-out text) than a
//! looser one.
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use onnxq::calib::text::TextSamples;
use onnxq::calib::tokenizer::Tokenizer;
use onnxq::ir::Model;
use onnxq::pass::recipe::Recipe;
use onnxq::pass::{run_pipeline, PassCx, PassOutcome};
use onnxq::runtime::RuntimeKind;

/// Calibration text (first two thirds of sample.txt) and held-out windows (the rest).
fn text(dir: &Path) -> (PathBuf, Vec<Vec<i64>>) {
    let all = std::fs::read_to_string(common::fixtures().join("sample.txt")).unwrap();
    let cut = all
        .char_indices()
        .nth(all.chars().count() * 2 / 3)
        .map_or(all.len(), |(i, _)| i);
    let calib = dir.join("calib.txt");
    std::fs::write(&calib, &all[..cut]).unwrap();
    let tok = Tokenizer::from_file(&common::fixtures().join("tokenizer.json")).unwrap();
    let eval = TextSamples::windows(&tok.input_ids(&all[cut..]).unwrap(), 4, 48, 99).windows;
    (calib, eval)
}

fn mixed_recipe(budget: &str, calib: &Path, quantizer: &str) -> String {
    format!(
        "[recipe]\nname='m'\n[[pass]]\nname='mixed-precision'\n{budget}\ncalib-text='{}'\n\
         tokenizer='{}'\ncalib-samples=8\ncalib-seqlen=48\n\
         [[pass]]\nname='tied-embedding'\n{quantizer}",
        calib.display(),
        common::fixtures().join("tokenizer.json").display()
    )
}

fn run(model: &Model, recipe: &str) -> onnxq::Result<(Model, Vec<PassOutcome>)> {
    let r = Recipe::parse("m", recipe)?;
    let mut m = model.clone();
    let outcomes = run_pipeline(&mut m, &r.build()?, &mut PassCx::default())?;
    Ok((m, outcomes))
}

/// Parameters of every weight matrix (distinct 2-D float initializers read as a
/// MatMul/Gemm weight, directly or through Transpose, or as a Gather table).
fn weight_params(m: &Model) -> u64 {
    let g = &m.graph;
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for (_, n) in g.nodes() {
        let slot = match n.op_type.as_str() {
            "MatMul" | "Gemm" => 1,
            "Gather" => 0,
            _ => continue,
        };
        let Some(mut v) = n.input(slot) else { continue };
        if let Some(p) = g.producer(v) {
            if g.node(p).is("", "Transpose") {
                v = g.node(p).input(0).unwrap();
            }
        }
        if let Some(t) = g.initializer(v) {
            let table_ok = slot == 1 || t.dims.get(1) == Some(&HIDDEN);
            if t.dims.len() == 2 && table_ok && seen.insert(t.name().to_string()) {
                total += (t.dims[0] * t.dims[1]) as u64;
            }
        }
    }
    total
}

/// Bytes of every weight as the saved model stores it: MatMulNBits B/scales/zero
/// points, GatherBlockQuantized data/scales/zero points, float MatMul/Gemm weights and
/// Gather tables; each initializer once.
fn weight_bytes_on_disk(path: &Path) -> u64 {
    let m = onnxq::load(path).unwrap();
    let g = &m.graph;
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for (_, n) in g.nodes() {
        let slots: &[usize] = match (n.domain(), n.op_type.as_str()) {
            ("com.microsoft", "MatMulNBits") => &[1, 2, 3],
            ("com.microsoft", "GatherBlockQuantized") => &[0, 2, 3],
            ("", "MatMul") | ("", "Gemm") => &[1],
            ("", "Gather") => &[0],
            _ => continue,
        };
        for &s in slots {
            let Some(mut v) = n.input(s) else { continue };
            if let Some(p) = g.producer(v) {
                if g.node(p).is("", "Transpose") {
                    v = g.node(p).input(0).unwrap();
                }
            }
            if let Some(t) = g.initializer(v) {
                let quantized = n.domain() == "com.microsoft";
                let float_ok = t.dims.len() == 2 && (n.op_type != "Gather" || t.dims[1] == HIDDEN);
                if (quantized || float_ok) && seen.insert(t.name().to_string()) {
                    total += t.stored_len() as u64;
                }
            }
        }
    }
    total
}

fn counter(outcomes: &[PassOutcome], key: &str) -> u64 {
    outcomes
        .iter()
        .find(|o| o.pass == "mixed-precision")
        .and_then(|o| o.counters.get(key).copied())
        .unwrap_or_else(|| panic!("no '{key}' counter"))
}

const RTN: &str = "[[pass]]\nname='matmul-nbits'\nbits=4\nblock-size=32\n\
                   [[pass]]\nname='gather-block-quantized'\n";

/// The tiny decoders' hidden size: Gather tables with other rows are rotary caches.
const HIDDEN: i64 = 64;

#[test]
fn every_offered_setting_runs_in_onnx_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, eval) = text(tmp.path());
    let orig = common::fixtures().join("llama-decomposed.onnx");
    let model = onnxq::load(&orig).unwrap();
    // The pass's default settings: bits 2/4/8 × blocks 16..256, both symmetries.
    let defaults = onnxq::transforms::calibrated::mixed::MixedConfig::default();
    for &bits in &defaults.bits {
        for &block in &defaults.block_sizes {
            for sym in [true, false] {
                let (m, _) = run(
                    &model,
                    &format!(
                        "[recipe]\nname='u'\n[[pass]]\nname='matmul-nbits'\nbits={bits}\n\
                         block-size={block}\nsymmetric={sym}\n"
                    ),
                )
                .unwrap();
                let p = common::run::save(&m, tmp.path(), "u.onnx");
                let e = common::text_logits_error(&orig, &p, &eval[..1], RuntimeKind::Ort);
                // 8 bits is near lossless, 2 bits is not; each must run and stay finite.
                let bound = match bits {
                    8 => 0.02,
                    4 => 0.3,
                    _ => 2.0,
                };
                assert!(
                    e.is_finite() && e < bound,
                    "int{bits}/b{block} sym={sym}: ORT logits rel-L2 {e}"
                );
            }
        }
    }
}

#[test]
fn the_budget_holds_exactly_counting_bytes_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let (calib, _) = text(tmp.path());
    for fixture in ["llama-decomposed-tied.onnx", "llama-decomposed.onnx"] {
        let model = onnxq::load(&common::fixtures().join(fixture)).unwrap();
        let params = weight_params(&model);
        for bpw in [3.0, 3.5, 4.5, 5.0, 6.0, 9.0, 20.0] {
            let recipe = mixed_recipe(&format!("budget-bpw={bpw}"), &calib, RTN);
            let (m, outcomes) = run(&model, &recipe).unwrap();
            let path = common::run::save(&m, tmp.path(), "m.onnx");
            let on_disk = weight_bytes_on_disk(&path);
            let budget = (bpw * params as f64 / 8.0).floor() as u64;
            eprintln!(
                "{fixture} {bpw} bpw: {on_disk} bytes on disk, budget {budget} ({:.3} bpw)",
                on_disk as f64 * 8.0 / params as f64
            );
            assert_eq!(counter(&outcomes, "parameters"), params, "{fixture}");
            assert_eq!(
                counter(&outcomes, "budget bytes"),
                budget,
                "{fixture} {bpw}"
            );
            assert_eq!(
                counter(&outcomes, "weight bytes"),
                on_disk,
                "{fixture} {bpw}: predicted bytes differ from the bytes written"
            );
            assert!(on_disk <= budget, "{fixture} {bpw}: {on_disk} > {budget}");
        }
    }
}

#[test]
fn a_tighter_budget_never_measures_a_lower_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (calib, eval) = text(tmp.path());
    for (fixture, quantizer) in [
        ("llama-decomposed-tied.onnx", RTN.to_string()),
        (
            "llama-decomposed.onnx",
            format!(
                "[[pass]]\nname='gptq'\ncalib-text='{}'\ntokenizer='{}'\ncalib-samples=8\n\
                 calib-seqlen=48\n[[pass]]\nname='gather-block-quantized'\n",
                calib.display(),
                common::fixtures().join("tokenizer.json").display()
            ),
        ),
    ] {
        let orig = common::fixtures().join(fixture);
        let model = onnxq::load(&orig).unwrap();
        let mut last: Option<(f64, f64)> = None;
        for bpw in [3.0, 3.5, 4.5, 6.0, 9.0] {
            let recipe = mixed_recipe(&format!("budget-bpw={bpw}"), &calib, &quantizer);
            let (m, _) = run(&model, &recipe).unwrap();
            let p = common::run::save(&m, tmp.path(), "m.onnx");
            let e = common::text_logits_error(&orig, &p, &eval, RuntimeKind::Ort);
            eprintln!("{fixture} {bpw} bpw: logits rel-L2 {e:.5} (ORT, held-out text)");
            if let Some((b, prev)) = last {
                assert!(
                    e <= prev,
                    "{fixture}: {bpw} bpw measures {e}, more than {prev} at the tighter {b} bpw"
                );
            }
            last = Some((bpw, e));
        }
    }
}

#[test]
fn an_impossible_budget_is_refused_naming_the_smallest_size() {
    let tmp = tempfile::tempdir().unwrap();
    let (calib, _) = text(tmp.path());
    let model = onnxq::load(&common::fixtures().join("llama-decomposed.onnx")).unwrap();
    let Err(e) = run(&model, &mixed_recipe("budget-bpw=1.0", &calib, RTN)) else {
        panic!("1 bit per parameter cannot hold");
    };
    let e = e.to_string();
    assert!(e.contains("smallest possible size"), "{e}");
    let Err(e) = run(&model, &mixed_recipe("", &calib, RTN)) else {
        panic!("no budget");
    };
    let e = e.to_string();
    assert!(e.contains("needs a budget"), "{e}");
}

#[test]
fn the_report_has_a_row_per_weight_and_the_prior_is_ranked() {
    let tmp = tempfile::tempdir().unwrap();
    let (calib, _) = text(tmp.path());
    let model = onnxq::load(&common::fixtures().join("llama-decomposed-tied.onnx")).unwrap();
    let (_, outcomes) = run(&model, &mixed_recipe("budget-bpw=4.5", &calib, RTN)).unwrap();
    let o = outcomes
        .iter()
        .find(|o| o.pass == "mixed-precision")
        .unwrap();
    // 2 layers × 7 projections + the tied head (which stands for the embedding).
    assert_eq!(o.precision.len(), 15, "{:?}", o.precision);
    for row in &o.precision {
        let chosen = row
            .candidates
            .iter()
            .find(|(s, _, _)| *s == row.setting)
            .unwrap();
        assert_eq!((chosen.1, chosen.2), (row.bytes, row.error), "{}", row.name);
        // More bits at one block size never predicts more error than fewer bits.
        let err = |s: &str| row.candidates.iter().find(|c| c.0 == s).map(|c| c.2);
        if let (Some(e2), Some(e4), Some(e8)) = (err("int2/b32"), err("int4/b32"), err("int8/b32"))
        {
            assert!(e8 <= e4 && e4 <= e2, "{}: {e2} {e4} {e8}", row.name);
        }
    }
    assert!(
        o.notes.iter().any(|n| n.contains("Spearman")),
        "{:?}",
        o.notes
    );
}
