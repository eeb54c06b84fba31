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
                // A Transpose of a float weight; a Cast of float16 scales (scale-type).
                if g.node(p).is("", "Transpose") || g.node(p).is("", "Cast") {
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

/// The scale-type pass after a quantizer.
const F16_SCALES: &str = "[[pass]]\nname='scale-type'\nto='f16'\n";

#[test]
fn with_float16_scales_the_budget_holds_exactly_and_buys_more_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let (calib, _) = text(tmp.path());
    for fixture in ["llama-decomposed-tied.onnx", "llama-decomposed.onnx"] {
        let model = onnxq::load(&common::fixtures().join(fixture)).unwrap();
        let params = weight_params(&model);
        for bpw in [3.0, 4.5, 5.0, 6.0] {
            let budget = (bpw * params as f64 / 8.0).floor() as u64;
            let mut on_disk = [0u64; 2];
            let mut predicted = [0.0f64; 2];
            for (i, f16) in [false, true].into_iter().enumerate() {
                let (scale_key, after) = if f16 {
                    ("scale-type='f16'\n", F16_SCALES)
                } else {
                    ("", "")
                };
                let recipe = mixed_recipe(
                    &format!("budget-bpw={bpw}\n{scale_key}"),
                    &calib,
                    &format!("{RTN}{after}"),
                );
                let (m, outcomes) = run(&model, &recipe).unwrap();
                let path = common::run::save(&m, tmp.path(), "m.onnx");
                on_disk[i] = weight_bytes_on_disk(&path);
                assert_eq!(
                    counter(&outcomes, "weight bytes"),
                    on_disk[i],
                    "{fixture} {bpw} f16={f16}: predicted bytes differ from the bytes written"
                );
                assert!(on_disk[i] <= budget, "{fixture} {bpw} f16={f16}");
                let o = outcomes
                    .iter()
                    .find(|o| o.pass == "mixed-precision")
                    .unwrap();
                predicted[i] = o.precision.iter().map(|r| r.error * r.params as f64).sum();
                // Never worse, by the allocation's own measure, than uniform int4/b32
                // when that fits.
                let b32 = |r: &onnxq::rewrite::PrecisionRow| {
                    r.candidates
                        .iter()
                        .find(|c| c.0 == "int4/b32")
                        .cloned()
                        .unwrap()
                };
                let b32_bytes: u64 = o.precision.iter().map(|r| b32(r).1).sum();
                let b32_error: f64 = o.precision.iter().map(|r| b32(r).2 * r.params as f64).sum();
                if b32_bytes <= budget {
                    assert!(
                        predicted[i] <= b32_error * (1.0 + 1e-9),
                        "{fixture} {bpw} f16={f16}: {} > uniform int4/b32 {b32_error}",
                        predicted[i]
                    );
                }
                if f16 && bpw >= 4.5 {
                    assert!(
                        b32_bytes <= budget,
                        "{fixture} {bpw}: int4/b32 f16 should fit"
                    );
                }
                if f16 {
                    // Every scale of a float32 model went to float16 behind a Cast.
                    let g = &m.graph;
                    for (_, n) in g.nodes() {
                        if n.domain() == "com.microsoft" {
                            let s = n.input(2).unwrap();
                            assert!(g.initializer(s).is_none(), "{}: scales not cast", n.name());
                        }
                    }
                }
            }
            eprintln!(
                "{fixture} {bpw} bpw: f32 scales {} bytes (error {:.4e}), f16 scales {} bytes \
                 (error {:.4e})",
                on_disk[0], predicted[0], on_disk[1], predicted[1]
            );
        }
    }
}

#[test]
fn float16_scales_equal_the_float32_model_with_rounded_scales_in_both_runtimes() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, eval) = text(tmp.path());
    for fixture in ["llama-decomposed-tied.onnx", "llama-decomposed.onnx"] {
        let orig = onnxq::load(&common::fixtures().join(fixture)).unwrap();
        let quant =
            format!("[recipe]\nname='q'\n[[pass]]\nname='tied-embedding'\nhead-bits=4\n{RTN}");
        let (a, _) = run(&orig, &quant).unwrap();
        let (b, outcomes) = run(&a, &format!("[recipe]\nname='s'\n{F16_SCALES}")).unwrap();
        let o = outcomes.iter().find(|o| o.pass == "scale-type").unwrap();
        // The reference: the float32-scale model with each scale rounded to float16 in
        // place (float32 storage, no Cast).
        let mut c = a.clone();
        let mut rounded = 0;
        let scales: Vec<_> = c
            .graph
            .nodes()
            .filter(|(_, n)| n.domain() == "com.microsoft")
            .filter_map(|(_, n)| n.input(2))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for v in scales {
            let t = c.graph.initializer(v).unwrap().clone();
            let r: Vec<f32> = t
                .to_f32()
                .unwrap()
                .iter()
                .map(|x| half::f16::from_f32(*x).to_f32())
                .collect();
            let new = onnxq::ir::float_tensor(t.name(), t.dtype(), t.dims.clone(), &r);
            c.graph.set_initializer(v, new);
            rounded += 1;
        }
        assert_eq!(
            o.counters.get("scale tensors to float16").copied(),
            Some(rounded),
            "{fixture}: {:?}",
            o
        );
        assert_eq!(
            o.counters["scale bytes after"] * 2,
            o.counters["scale bytes before"]
        );
        let pa = common::run::save(&a, tmp.path(), "a.onnx");
        let pb = common::run::save(&b, tmp.path(), "b.onnx");
        let pc = common::run::save(&c, tmp.path(), "c.onnx");
        // ONNX Runtime folds the Casts at load: the kernels get float32 initializers
        // (and prepack them) as without the pass.
        if let Some(py) = common::python() {
            common::py(&py, "folded_scales.py", &[pb.to_str().unwrap()]);
        }
        for kind in [RuntimeKind::Ort, RuntimeKind::Tract] {
            let same = common::text_logits_error(&pc, &pb, &eval, kind);
            let moved = common::text_logits_error(&pa, &pb, &eval, kind);
            eprintln!(
                "{fixture} {kind:?}: f16 vs rounded {same:.3e}, f16 vs f32 scales {moved:.3e}"
            );
            assert!(same <= 1e-6, "{fixture} {kind:?}: {same}");
            // float16 rounding of the scales moves the logits, but by far less than
            // the 4-bit codes do. (tract's own 4-bit path stores float16 scales, Q4_0,
            // so there float32 and float16 scales give the same logits.)
            assert!(moved < 2e-3, "{fixture} {kind:?}: {moved}");
            if kind == RuntimeKind::Ort {
                assert!(moved > 0.0, "{fixture}: the scales were not rounded");
            }
        }
        // tract after onnxq's lowering (what verify and eval run): the dequantized
        // weights come from the Cast's float16 initializer.
        let lowered: Vec<_> = [&pa, &pb, &pc]
            .iter()
            .map(|p| onnxq::runtime::prepare(p, "tract", &[]).unwrap())
            .collect();
        let [la, lb, lc] = [0, 1, 2].map(|i| lowered[i].path().to_path_buf());
        let same = common::text_logits_error(&lc, &lb, &eval, RuntimeKind::Tract);
        let moved = common::text_logits_error(&la, &lb, &eval, RuntimeKind::Tract);
        eprintln!(
            "{fixture} tract lowered: f16 vs rounded {same:.3e}, f16 vs f32 scales {moved:.3e}"
        );
        assert!(same <= 1e-6, "{fixture} lowered: {same}");
        assert!(moved > 0.0 && moved < 2e-3, "{fixture} lowered: {moved}");
    }
}

#[test]
fn a_near_tie_keeps_the_uniform_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let (calib, _) = text(tmp.path());
    let model = onnxq::load(&common::fixtures().join("llama-decomposed-tied.onnx")).unwrap();
    // 5.0 bits per parameter: uniform int4/b32 with float32 scales fits exactly.
    let recipe = mixed_recipe("budget-bpw=5.0\nuniform-margin=0.99", &calib, RTN);
    let (_, outcomes) = run(&model, &recipe).unwrap();
    let o = outcomes
        .iter()
        .find(|o| o.pass == "mixed-precision")
        .unwrap();
    let settings: BTreeSet<&str> = o.precision.iter().map(|r| r.setting.as_str()).collect();
    assert_eq!(settings.len(), 1, "{settings:?} {:?}", o.notes);
    assert!(
        o.notes.iter().any(|n| n.contains("kept uniform")),
        "{:?}",
        o.notes
    );
    // Without the margin, the allocation's own choice stands when it predicts less.
    let recipe = mixed_recipe("budget-bpw=5.0\nuniform-margin=0.0", &calib, RTN);
    let (_, outcomes) = run(&model, &recipe).unwrap();
    let o = outcomes
        .iter()
        .find(|o| o.pass == "mixed-precision")
        .unwrap();
    let total =
        |o: &PassOutcome| -> f64 { o.precision.iter().map(|r| r.error * r.params as f64).sum() };
    let uniform: f64 = o
        .precision
        .iter()
        .map(|r| {
            r.candidates
                .iter()
                .find(|c| c.0 == "int4/b32")
                .map(|c| c.2 * r.params as f64)
                .unwrap()
        })
        .sum();
    assert!(
        total(o) <= uniform * (1.0 + 1e-9),
        "{} > {uniform}",
        total(o)
    );
}

#[test]
fn the_loss_probe_measures_each_kind_of_weight() {
    let tmp = tempfile::tempdir().unwrap();
    let (calib, _) = text(tmp.path());
    let Some(_) = common::ort() else { return };
    let model = onnxq::load(&common::fixtures().join("llama-decomposed-tied.onnx")).unwrap();
    let params = weight_params(&model);
    let recipe = mixed_recipe(
        "budget-bpw=4.5\nsensitivity='kind'\nprobe-samples=2\nruntime='ort'",
        &calib,
        RTN,
    );
    let (m, outcomes) = run(&model, &recipe).unwrap();
    let o = outcomes
        .iter()
        .find(|o| o.pass == "mixed-precision")
        .unwrap();
    // 7 projections + the tied head, each with a measured KL and a finite gain.
    let probes: Vec<&String> = o
        .notes
        .iter()
        .filter(|n| n.starts_with("loss probe '"))
        .collect();
    assert_eq!(probes.len(), 8, "{:?}", o.notes);
    for p in &probes {
        let kl: f64 = p
            .split("KL ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{p}"));
        assert!(kl > 0.0 && kl.is_finite(), "{p}");
    }
    assert!(
        o.notes
            .iter()
            .any(|n| n.starts_with("loss probes: 8 groups")),
        "{:?}",
        o.notes
    );
    let path = common::run::save(&m, tmp.path(), "m.onnx");
    assert!(weight_bytes_on_disk(&path) <= (4.5 * params as f64 / 8.0).floor() as u64);
}

#[test]
fn a_tighter_budget_never_measures_a_lower_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (calib, eval) = text(tmp.path());
    for (fixture, quantizer) in [
        ("llama-decomposed-tied.onnx", RTN.to_string()),
        // float16 scales (counted at 2 bytes) behind a Cast.
        ("llama-decomposed-tied.onnx", format!("{RTN}{F16_SCALES}")),
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
        let scale_key = if quantizer.contains("scale-type") {
            "\nscale-type='f16'"
        } else {
            ""
        };
        for bpw in [3.0, 3.5, 4.5, 6.0, 9.0] {
            let recipe = mixed_recipe(&format!("budget-bpw={bpw}{scale_key}"), &calib, &quantizer);
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
