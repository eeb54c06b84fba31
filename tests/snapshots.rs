//! Golden diffs: what each shipped recipe does to a tiny model, as `onnxq diff`
//! prints it. A change in any pass's output shows up here as a reviewable diff.
mod common;

use onnxq::ir::print;
use onnxq::pass::recipe::{Recipe, SHIPPED};
use onnxq::pass::{run_pipeline, PassCx};

#[test]
fn shipped_recipes_diff_on_the_tiny_mlp() {
    let model = common::build::mlp(true);
    for (name, _) in SHIPPED {
        if DECODER_ONLY.contains(name) {
            continue;
        }
        let recipe = Recipe::load(name).unwrap();
        let mut m = model.clone();
        run_pipeline(&mut m, &recipe.build().unwrap(), &mut PassCx::default()).unwrap();
        let mut diff = print::diff(&model, &m);
        if CALIBRATED.contains(name) {
            diff = without_values(&diff);
        }
        insta::assert_snapshot!(format!("recipe_{name}"), diff);
    }
}

/// Recipes that refuse anything but a decoder (snapshotted on the decoder forms).
const DECODER_ONLY: &[&str] = &["quarot-int4", "genai-decoder"];

#[test]
fn quarot_diff_on_the_decoder_forms() {
    for form in ["decomposed", "genai", "opset24", "dynamo"] {
        let path = common::fixtures()
            .join("decoders")
            .join(format!("{form}.onnx"));
        let model = onnxq::load(&path).unwrap();
        for name in DECODER_ONLY {
            let recipe = Recipe::load(name).unwrap();
            let mut m = model.clone();
            let cx = &mut PassCx {
                seed: 1,
                ..Default::default()
            };
            run_pipeline(&mut m, &recipe.build().unwrap(), cx).unwrap();
            insta::assert_snapshot!(format!("recipe_{name}_{form}"), print::diff(&model, &m));
        }
        // The rotation alone: the float graph as `onnxq rotate` writes it.
        let recipe =
            Recipe::parse("r", "[recipe]\nname='r'\n[[pass]]\nname='quarot'\nseed=1\n").unwrap();
        let mut m = model.clone();
        run_pipeline(&mut m, &recipe.build().unwrap(), &mut PassCx::default()).unwrap();
        insta::assert_snapshot!(format!("rotate_{form}"), print::diff(&model, &m));
    }
}

/// Recipes whose values come from running the model: calibration goes through f32
/// kernels that tract and matrixmultiply pick by the CPU's SIMD features (FMA,
/// AVX-512), so activation ranges and Hessians differ in their last bits between
/// machines, and so do the scales (and GPTQ/AWQ choices) built on them. Their
/// snapshots pin the structure (nodes, names, types, shapes); tests/gptq.rs,
/// tests/awq.rs and tests/int8.rs measure their values.
const CALIBRATED: &[&str] = &[
    "gptq-int4",
    "awq-int4",
    "int8-static-qdq",
    "int8-static-qoperator",
];

/// The diff with initializer contents (a `#` hash, or inline `[values]`) masked.
fn without_values(diff: &str) -> String {
    diff.lines()
        .map(|line| {
            let is_init = line
                .trim_start_matches(['+', '-', ' '])
                .starts_with("init ");
            match line.find("] ").filter(|_| is_init) {
                Some(at) => format!("{}] …", &line[..at]),
                None => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `onnxq diff --format text` of the tiny model and its int4 copy: one line per
/// added, removed or changed item, stable across runs and machines (RTN is exact
/// integer arithmetic on the same floats).
#[test]
fn diff_text_of_a_model_and_its_int4_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::build::mlp(true);
    let a = common::run::save(&model, tmp.path(), "a.onnx");
    let b = tmp.path().join("b.onnx");
    let o = std::process::Command::new(common::onnxq_bin())
        .args([
            "quantize",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--no-verify",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = std::process::Command::new(common::onnxq_bin())
        .args([
            "diff",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--format",
            "text",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(!text.contains(tmp.path().to_str().unwrap()));
    insta::assert_snapshot!("diff_text_int4_rtn", text);
}

/// `onnxq llm rope --rotary`: the fused opset-24 rotary spelled out, and the
/// decomposed one fused both ways (ONNX opset 23 and com.microsoft).
#[test]
fn rotary_form_conversions_on_the_decoder_forms() {
    use onnxq::transforms::llm::{convert_rotary, RotaryForm};
    for (form, target, name) in [
        ("opset24", RotaryForm::Decomposed, "decomposed"),
        ("decomposed", RotaryForm::Fused, "fused"),
        ("decomposed", RotaryForm::Microsoft, "com.microsoft"),
    ] {
        let path = common::fixtures()
            .join("decoders")
            .join(format!("{form}.onnx"));
        let model = onnxq::load(&path).unwrap();
        let mut m = model.clone();
        convert_rotary(&mut m, target, Some(64)).unwrap();
        insta::assert_snapshot!(format!("rotary_{form}_to_{name}"), print::diff(&model, &m));
    }
}
