//! `onnxq llm genai`: the converted folder loads in onnxruntime-genai (PyPI, pinned
//! in .ci/requirements.txt) and generates the greedy tokens of a step-by-step ONNX
//! Runtime loop on the input model, from the same last-position logits (max abs
//! ≤ 1e-4), for every fixture form, for exports without a cache and for a model
//! quantized with `onnxq quantize`; errors name the layer and part and write nothing.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The prompt every check decodes from (ids of tokenizer.json, `<s>` first).
const PROMPT: &str = "1,40,77,120,200,33,9";
const NEW_TOKENS: &str = "10";

/// The pinned Python with onnxruntime_genai importable; None (skip) only when CI did
/// not require the Python tools.
fn genai_python() -> Option<PathBuf> {
    let py = common::python()?;
    let ok = Command::new(&py)
        .args(["-c", "import onnxruntime_genai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !common::required(),
            "ONNXQ_REQUIRE_ORT=1 but onnxruntime_genai is not importable from {} (pip install \
             -r .ci/requirements.txt)",
            py.display()
        );
        eprintln!("SKIPPED: onnxruntime_genai is not importable");
        return None;
    }
    Some(py)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tokenizer folder: the fixture tokenizer.json and a tokenizer_config.json naming
/// its specials (`<s>` = 1, `</s>` = 2).
fn tokenizer_dir(dir: &Path) -> PathBuf {
    let tok = dir.join("tokenizer");
    std::fs::create_dir_all(&tok).unwrap();
    std::fs::copy(
        common::fixtures().join("tokenizer.json"),
        tok.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        tok.join("tokenizer_config.json"),
        r#"{"bos_token": "<s>", "eos_token": {"content": "</s>"}, "unk_token": "<unk>",
            "tokenizer_class": "PreTrainedTokenizerFast"}"#,
    )
    .unwrap();
    tok
}

fn convert(model: &Path, out: &Path, tok: &Path) {
    let (ok, log) = common::onnxq(&["llm", "genai", s(model), s(out), "--tokenizer", s(tok)]);
    assert!(ok, "llm genai {}: {log}", model.display());
}

fn op_count(m: &onnxq::Model, domain: &str, op: &str) -> usize {
    m.graph.nodes().filter(|(_, n)| n.is(domain, op)).count()
}

/// The converted folder's structure and config, as genai reads them.
fn check_folder(out: &Path) {
    let m = onnxq::load(&out.join("model.onnx")).unwrap();
    assert_eq!(op_count(&m, "com.microsoft", "GroupQueryAttention"), 2);
    for op in [
        "Softmax",
        "Attention",
        "RMSNormalization",
        "RotaryEmbedding",
        "Pow",
    ] {
        assert_eq!(op_count(&m, "", op), 0, "{op} left in {}", out.display());
    }
    assert_eq!(op_count(&m, "", "SimplifiedLayerNormalization"), 1);
    assert_eq!(
        op_count(&m, "com.microsoft", "SkipSimplifiedLayerNormalization"),
        4
    );
    let inputs: Vec<String> = m
        .graph
        .inputs
        .iter()
        .map(|i| m.graph.value_name(i.value).to_string())
        .collect();
    assert!(!inputs.iter().any(|n| n == "position_ids"), "{inputs:?}");
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("genai_config.json")).unwrap())
            .unwrap();
    let d = &cfg["model"]["decoder"];
    assert_eq!(d["num_hidden_layers"], 2);
    assert_eq!(d["num_attention_heads"], 6);
    assert_eq!(d["num_key_value_heads"], 2);
    assert_eq!(d["head_size"], 16);
    assert_eq!(d["hidden_size"], 96);
    assert_eq!(d["inputs"]["past_key_names"], "past_key_values.%d.key");
    assert_eq!(d["outputs"]["present_value_names"], "present.%d.value");
    assert_eq!(cfg["model"]["vocab_size"], 320);
    assert_eq!(cfg["model"]["bos_token_id"], 1);
    assert_eq!(cfg["model"]["eos_token_id"], 2);
    assert!(out.join("tokenizer.json").is_file() && out.join("tokenizer_config.json").is_file());
}

/// genai's greedy tokens on `out` against ORT's on `input`.
fn generates_like_ort(py: &Path, out: &Path, input: &Path) {
    let text = common::py(
        py,
        "genai_generate.py",
        &[s(out), s(input), "--prompt", PROMPT, "--new", NEW_TOKENS],
    );
    let line = text.lines().rev().find(|l| l.starts_with('{')).unwrap();
    let r: Value = serde_json::from_str(line).unwrap();
    assert_eq!(r["genai"].as_array().unwrap().len(), 10, "{line}");
    let diff = r["max_abs_logits"].as_f64().unwrap();
    assert!(diff <= 1e-4, "{}: logits differ by {diff}", input.display());
    // onnxruntime, fed genai's tokens, picks the same ones, or one whose logit ties
    // genai's within float rounding (random weights make near-ties).
    let margin = r["tie_margin"].as_f64().unwrap();
    assert!(
        r["genai"] == r["ort"] || margin <= 1e-5,
        "{}: genai's pick is {margin} below onnxruntime's best: {line}",
        input.display()
    );
    eprintln!("{}: {line}", input.display());
}

#[test]
fn fixture_forms_generate_like_ort_step_by_step() {
    let Some(py) = genai_python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer_dir(tmp.path());
    for form in ["decomposed", "opset24", "dynamo", "genai"] {
        let input = common::fixtures().join(format!("decoders/{form}.onnx"));
        let out = tmp.path().join(form);
        convert(&input, &out, &tok);
        check_folder(&out);
        generates_like_ort(&py, &out, &input);
    }
}

#[test]
fn exports_without_a_cache_get_one_and_generate_like_ort() {
    let Some(py) = genai_python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer_dir(tmp.path());
    let nokv = tmp.path().join("nokv");
    std::fs::create_dir_all(&nokv).unwrap();
    common::py(&py, "nokv_forms.py", &[s(&nokv)]);
    for form in ["decomposed", "dynamo", "computed-positions"] {
        let input = nokv.join(format!("{form}.onnx"));
        let out = tmp.path().join(form);
        convert(&input, &out, &tok);
        if form != "computed-positions" {
            check_folder(&out);
        }
        generates_like_ort(&py, &out, &input);
    }
}

#[test]
fn quantized_inputs_keep_their_quantized_weights() {
    let Some(py) = genai_python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer_dir(tmp.path());
    for form in ["decomposed", "opset24"] {
        let float = common::fixtures().join(format!("decoders/{form}.onnx"));
        let q = tmp.path().join(format!("{form}-int4.onnx"));
        let (ok, log) = common::onnxq(&[
            "quantize",
            s(&float),
            s(&q),
            "--algorithm",
            "rtn",
            "--bits",
            "4",
            "--block-size",
            "32",
            "--no-verify",
        ]);
        assert!(ok, "{log}");
        let out = tmp.path().join(form);
        convert(&q, &out, &tok);
        check_folder(&out);
        let (a, b) = (
            onnxq::load(&q).unwrap(),
            onnxq::load(&out.join("model.onnx")).unwrap(),
        );
        let nbits = op_count(&a, "com.microsoft", "MatMulNBits");
        assert_eq!(nbits, 15, "every linear layer of {form} quantized");
        assert_eq!(op_count(&b, "com.microsoft", "MatMulNBits"), nbits);
        assert_eq!(op_count(&b, "", "MatMul"), 0);
        // The packed weights are the quantizer's, byte for byte.
        for (v, t) in a.graph.initializers() {
            if t.dtype() == onnxq::ir::DType::U8 {
                let name = a.graph.value_name(v);
                let other = b.graph.find(name).and_then(|w| b.graph.initializer(w));
                let other = other.unwrap_or_else(|| panic!("{name} lost"));
                assert_eq!(t.content_hash(), other.content_hash(), "{name} changed");
            }
        }
        generates_like_ort(&py, &out, &q);
    }
}

/// A decoder broken in one layer: the error names the layer and the part, and the
/// output folder is not created.
#[test]
fn unmatched_patterns_name_the_layer_and_part_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tokenizer_dir(tmp.path());
    let base = onnxq::load(&common::fixtures().join("decoders/decomposed.onnx")).unwrap();

    let mut no_present = base.clone();
    let v = no_present.graph.find("present.1.value").unwrap();
    no_present.graph.outputs.retain(|o| o.value != v);
    let mut no_softmax = base.clone();
    let sm = no_softmax
        .graph
        .nodes()
        .find(|(_, n)| n.op_type == "Softmax" && n.name().contains("layers.1"))
        .map(|(id, _)| id)
        .unwrap();
    no_softmax.graph.node_mut(sm).op_type = "Sigmoid".into();

    for (name, model, expected) in [
        ("no-present", no_present, "layer 1: kv cache:"),
        ("no-softmax", no_softmax, "layer 1: attention:"),
    ] {
        let input = common::run::save(&model, tmp.path(), &format!("{name}.onnx"));
        let out = tmp.path().join(format!("{name}-genai"));
        let (ok, log) =
            common::onnxq(&["llm", "genai", s(&input), s(&out), "--tokenizer", s(&tok)]);
        assert!(!ok, "{name} converted");
        assert!(log.contains(expected), "{name}: {log}");
        assert!(!out.exists(), "{name}: {} was created", out.display());
    }
    // A tokenizer folder without an eos token is refused before the model is read.
    let bare = tmp.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(
        common::fixtures().join("tokenizer.json"),
        bare.join("tokenizer.json"),
    )
    .unwrap();
    let out = tmp.path().join("bare-genai");
    let input = common::fixtures().join("decoders/decomposed.onnx");
    let (ok, log) = common::onnxq(&["llm", "genai", s(&input), s(&out), "--tokenizer", s(&bare)]);
    assert!(!ok && log.contains("no eos token"), "{log}");
    assert!(!out.exists());
}
