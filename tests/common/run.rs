//! Running onnxq in tests: save a model, apply a recipe, call the CLI, measure.
use std::path::{Path, PathBuf};
use std::process::Command;

use onnxq::ir::Model;
use onnxq::pass::recipe::Recipe;
use onnxq::pass::{run_pipeline, PassCx};
use onnxq::verify::{compare, VerifyOptions};

pub fn save(m: &Model, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    onnxq::save(m, &p, &Default::default()).unwrap();
    p
}

pub fn apply(model: &Model, recipe_toml: &str) -> Model {
    let r = Recipe::parse("test", recipe_toml).unwrap();
    let mut m = model.clone();
    run_pipeline(&mut m, &r.build().unwrap(), &mut PassCx::default()).unwrap();
    m
}

pub fn try_apply(model: &Model, recipe_toml: &str) -> onnxq::Result<Model> {
    let r = Recipe::parse("test", recipe_toml)?;
    let mut m = model.clone();
    run_pipeline(&mut m, &r.build()?, &mut PassCx::default())?;
    Ok(m)
}

pub fn rel_l2(a: &Path, b: &Path) -> f64 {
    let r = compare(
        a,
        b,
        &VerifyOptions {
            samples: 2,
            ..Default::default()
        },
    )
    .unwrap();
    r.outputs.iter().map(|o| o.rel_l2).fold(0.0, f64::max)
}

pub fn quantize_cli(args: &[&str]) -> std::process::Output {
    Command::new(super::onnxq_bin())
        .arg("quantize")
        .args(args)
        .output()
        .unwrap()
}

/// A fixture's path as a command-line argument.
pub fn fixture_arg(name: &str) -> String {
    super::fixtures().join(name).to_str().unwrap().to_string()
}
