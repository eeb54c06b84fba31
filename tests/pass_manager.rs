//! The pass manager checks the model after every pass (release builds too), can run
//! a full type/shape check, stop after a named pass and dump the model as text.
mod common;

use std::process::Command;

use onnxq::ir::{Model, NodeSpec, Tensor};
use onnxq::pass::{
    run_pipeline, run_pipeline_with, CheckLevel, Pass, PassCx, PassOutcome, RunOptions,
};

/// A pass that breaks the graph in a chosen way, as a buggy rewrite would.
struct Breaks(&'static str);

impl Pass for Breaks {
    fn name(&self) -> &'static str {
        "breaks"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassCx) -> onnxq::Result<PassOutcome> {
        let g = &mut model.graph;
        let first = g.node_ids()[0];
        let x = g.node(first).input(0).expect("input");
        match self.0 {
            // A value read before the node that defines it.
            "order" => {
                let out = g.node(first).output(0).expect("output");
                let id = g.add_node(
                    NodeSpec::new("", "Identity")
                        .name("reads_late")
                        .input(out)
                        .output("late"),
                )?;
                g.place_before(id, first);
            }
            // A second value under an existing name.
            "duplicate" => {
                let name = g.value_name(x).to_string();
                let id = g.add_node(NodeSpec::new("", "Identity").input(x).output("tmp_dup"))?;
                let out = g.node(id).output(0).expect("output");
                g.value_mut(out).name = name;
            }
            // An initializer whose element type is unknown.
            "dtype" => {
                let mut t = Tensor::from_f32("bad_type", vec![1], &[0.0]);
                t.dtype_code = Some(0);
                g.add_initializer(t)?;
            }
            _ => {}
        }
        let mut o = PassOutcome::new("breaks");
        o.changed = true;
        Ok(o)
    }
}

fn mlp() -> Model {
    onnxq::load(&common::fixtures().join("mlp.onnx")).expect("load mlp")
}

#[test]
fn the_structural_check_names_the_pass_and_the_fault() {
    for (how, fault) in [
        ("order", "before it is defined"),
        ("duplicate", "two values are named"),
        ("dtype", "no element type"),
    ] {
        let mut model = mlp();
        let passes: Vec<Box<dyn Pass>> = vec![Box::new(Breaks(how))];
        let err = run_pipeline(&mut model, &passes, &mut PassCx::default())
            .expect_err(how)
            .to_string();
        assert!(err.contains("breaks"), "{how}: {err}");
        assert!(err.contains(fault), "{how}: {err}");
    }
}

#[test]
fn a_correct_pass_passes_the_full_check() {
    let mut model = mlp();
    let recipe = onnxq::pass::recipe::Recipe::load("int4-rtn").expect("recipe");
    let passes = recipe.build().expect("build");
    let opts = RunOptions {
        check: CheckLevel::Full,
        ..Default::default()
    };
    let outcomes =
        run_pipeline_with(&mut model, &passes, &mut PassCx::default(), &opts).expect("full check");
    assert!(outcomes.iter().any(|o| o.changed));
    // ONNX Runtime loads the Loop that tract cannot read; without it the check says
    // it was skipped rather than passing silently.
    let skipped = outcomes
        .iter()
        .flat_map(|o| &o.notes)
        .any(|n| n.starts_with("full check skipped"));
    assert_eq!(skipped, !onnxq::runtime::ort::available());
    assert!(onnxq::runtime::ort::available() || !common::required());
}

#[test]
fn stop_after_refuses_a_pass_the_recipe_does_not_have() {
    let mut model = mlp();
    let passes = onnxq::pass::recipe::Recipe::load("int4-rtn")
        .expect("recipe")
        .build()
        .expect("build");
    let opts = RunOptions {
        stop_after: Some("gptq".into()),
        ..Default::default()
    };
    let err = run_pipeline_with(&mut model, &passes, &mut PassCx::default(), &opts)
        .expect_err("unknown pass")
        .to_string();
    assert!(
        err.contains("--stop-after gptq") && err.contains("matmul-nbits"),
        "{err}"
    );
}

#[test]
fn dump_dir_and_stop_after_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dumps = dir.path().join("dumps");
    let out = dir.path().join("out.onnx");
    let run = Command::new(common::onnxq_bin())
        .arg("quantize")
        .arg(common::fixtures().join("llama-decomposed.onnx"))
        .arg(&out)
        .args(["--embeddings", "--tied-head", "separate"])
        .args(["--no-verify", "--check-passes", "full"])
        .arg("--dump-dir")
        .arg(&dumps)
        .args(["--stop-after", "1"])
        .output()
        .expect("run onnxq");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let mut files: Vec<String> = std::fs::read_dir(&dumps)
        .expect("dump dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    files.sort();
    // --embeddings makes the recipe two passes; stopping after the first leaves
    // the embedding table float.
    assert_eq!(files, ["00-input.txt", "01-matmul-nbits.txt"], "{stderr}");
    let before = std::fs::read_to_string(dumps.join("00-input.txt")).expect("read");
    let after = std::fs::read_to_string(dumps.join("01-matmul-nbits.txt")).expect("read");
    assert!(!before.contains("MatMulNBits") && after.contains("com.microsoft::MatMulNBits"));
    let model = onnxq::load(&out).expect("load output");
    let printed = onnxq::ir::print::model_to_string(&model);
    assert_eq!(
        printed, after,
        "the written model is the model after the pass it stopped at"
    );
    assert!(!printed.contains("GatherBlockQuantized"));
}
