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
        let recipe = Recipe::load(name).unwrap();
        let mut m = model.clone();
        run_pipeline(&mut m, &recipe.build().unwrap(), &mut PassCx::default()).unwrap();
        insta::assert_snapshot!(format!("recipe_{name}"), print::diff(&model, &m));
    }
}

#[test]
fn embeddings_and_a_mixed_nodes_config() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("nodes.json");
    std::fs::write(
        &cfg,
        r#"{"fc1/*": {"bits": 8, "block-size": 64}, "fc3/*": "skip"}"#,
    )
    .unwrap();
    let text = format!(
        "[recipe]\nname='t'\n[[pass]]\nname='matmul-nbits'\nnodes-config='{}'\n[[pass]]\nname='gather-block-quantized'\n",
        cfg.display()
    );
    let recipe = Recipe::parse("t", &text).unwrap();
    let model = common::build::mlp(true);
    let mut m = model.clone();
    run_pipeline(&mut m, &recipe.build().unwrap(), &mut PassCx::default()).unwrap();
    insta::assert_snapshot!("nodes_config_and_embeddings", print::diff(&model, &m));
}

#[test]
fn recipes_are_validated_before_any_model_is_read() {
    let bad_pass = Recipe::parse("r", "[recipe]\nname='r'\n[[pass]]\nname='no-such-pass'\n")
        .unwrap_err()
        .to_string();
    assert!(
        bad_pass.contains("unknown pass 'no-such-pass'") && bad_pass.contains("matmul-nbits"),
        "{bad_pass}"
    );
    let bad_key = Recipe::parse(
        "r",
        "[recipe]\nname='r'\n[[pass]]\nname='matmul-nbits'\nbitz=4\n",
    )
    .unwrap_err()
    .to_string();
    assert!(bad_key.contains("bitz"), "{bad_key}");
    let bad_value = Recipe::parse(
        "r",
        "[recipe]\nname='r'\n[[pass]]\nname='matmul-nbits'\nbits=3\n",
    )
    .unwrap_err()
    .to_string();
    assert!(bad_value.contains("bits=3"), "{bad_value}");
}
