//! The library API for build scripts: `Pipeline` from a recipe or typed steps, and
//! `run_cached`, which skips the work while the input, the recipe with its options
//! and onnxq's version are unchanged.
mod common;

use std::path::Path;

use onnxq::io::{Layout, SaveOptions};
use onnxq::ir::print::model_to_string;
use onnxq::{Pipeline, WeightOnly};

fn printed(p: &Path) -> String {
    model_to_string(&onnxq::load(p).unwrap())
}

#[test]
fn a_recipe_run_from_the_library_equals_the_pass_manager() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::build::mlp(true);
    let input = common::run::save(&model, tmp.path(), "mlp.onnx");
    let out = tmp.path().join("q.onnx");
    let done = Pipeline::from_recipe("int4-rtn")
        .unwrap()
        .option("block-size", 16)
        .unwrap()
        .run(&input, &out)
        .unwrap();
    assert!(done.changed && !done.cached);
    let expected = common::run::apply(
        &model,
        &onnxq::pass::recipe::SHIPPED
            .iter()
            .find(|(n, _)| *n == "int4-rtn")
            .unwrap()
            .1
            .replace("block-size = 32", "block-size = 16"),
    );
    assert_eq!(printed(&out), model_to_string(&expected));
    assert!(printed(&out).contains("block_size=16"));
}

#[test]
fn typed_steps_equal_the_recipe_they_stand_for() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::run::save(&common::build::mlp(true), tmp.path(), "mlp.onnx");
    let (a, b) = (tmp.path().join("a.onnx"), tmp.path().join("b.onnx"));
    Pipeline::new()
        .quantize(WeightOnly {
            bits: 8,
            block_size: 64,
            symmetric: false,
            ..Default::default()
        })
        .run(&input, &a)
        .unwrap();
    Pipeline::from_recipe("int4-rtn")
        .unwrap()
        .option("bits", 8)
        .unwrap()
        .option("block-size", 64)
        .unwrap()
        .option("symmetric", false)
        .unwrap()
        .run(&input, &b)
        .unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(printed(&a).contains("bits=8"));
}

#[test]
fn unknown_names_are_errors_with_a_suggestion() {
    let e = Pipeline::from_recipe("int4-rnt").unwrap_err().to_string();
    assert!(e.contains("did you mean 'int4-rtn'"), "{e}");
    let e = Pipeline::from_recipe("int4-rtn")
        .unwrap()
        .option("blocksize", 16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("did you mean 'block-size'"), "{e}");
    // A bad value is refused when set, before any model is read.
    let e = Pipeline::from_recipe("int4-rtn")
        .unwrap()
        .option("bits", 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bits"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    let e = Pipeline::new()
        .run(&tmp.path().join("a.onnx"), &tmp.path().join("b.onnx"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no passes"), "{e}");
}

fn modified(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn a_cache_hit_does_not_rewrite_and_any_change_misses() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::build::mlp(true);
    let input = common::run::save(&model, tmp.path(), "mlp.onnx");
    let out = tmp.path().join("q.onnx");
    let cache = tmp.path().join("cache");
    let p = Pipeline::from_recipe("int4-rtn").unwrap();

    let first = p.run_cached(&input, &out, &cache).unwrap();
    assert!(!first.cached && first.changed);
    assert!(!first.passes.is_empty());
    let written = modified(&out);
    let bytes = std::fs::read(&out).unwrap();

    let hit = p.run_cached(&input, &out, &cache).unwrap();
    assert!(hit.cached && hit.changed, "{hit:?}");
    assert!(hit.passes.is_empty(), "a hit runs no pass");
    assert_eq!(hit.cache_key, first.cache_key);
    assert_eq!(modified(&out), written, "a hit does not rewrite the output");

    // A changed option misses, and so does the old option again (one stamp per output).
    let p8 = Pipeline::from_recipe("int4-rtn")
        .unwrap()
        .option("bits", 8)
        .unwrap();
    let miss = p8.run_cached(&input, &out, &cache).unwrap();
    assert!(!miss.cached);
    assert_ne!(miss.cache_key, first.cache_key);
    assert!(printed(&out).contains("bits=8"));
    let back = p.run_cached(&input, &out, &cache).unwrap();
    assert!(!back.cached);
    assert_eq!(std::fs::read(&out).unwrap(), bytes);

    // A changed input misses.
    let mut other = model.clone();
    let w = other.graph.find("fc1.weight").unwrap();
    let t = onnxq::ir::Tensor::from_f32(
        "fc1.weight",
        vec![96, 64],
        &common::build::weights(96 * 64, 99, 0.2),
    );
    other.graph.set_initializer(w, t);
    onnxq::save(&other, &input, &Default::default()).unwrap();
    let miss = p.run_cached(&input, &out, &cache).unwrap();
    assert!(!miss.cached);
    assert_ne!(miss.cache_key, first.cache_key);
    assert!(p.run_cached(&input, &out, &cache).unwrap().cached);

    // An output changed behind the cache's back is rebuilt.
    std::fs::write(&out, b"edited").unwrap();
    let rebuilt = p.run_cached(&input, &out, &cache).unwrap();
    assert!(!rebuilt.cached);
    assert!(onnxq::load(&out).is_ok());
}

#[test]
fn the_cache_key_covers_external_data() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::build::mlp(false);
    let input = tmp.path().join("ext.onnx");
    let save = SaveOptions {
        layout: Layout::External {
            file: "ext.onnx.data".into(),
            threshold: 1024,
        },
        ..Default::default()
    };
    onnxq::save(&model, &input, &save).unwrap();
    let data = tmp.path().join("ext.onnx.data");
    assert!(data.exists());
    let p = Pipeline::from_recipe("int4-rtn").unwrap();
    let before = p.cache_key(&input).unwrap();
    assert_eq!(p.cache_key(&input).unwrap(), before, "the key is stable");
    // Flip the low mantissa bit of one weight: same file sizes, new data.
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&data, bytes).unwrap();
    assert_ne!(p.cache_key(&input).unwrap(), before);
}
