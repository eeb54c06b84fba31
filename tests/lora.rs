//! LoRA adapters (PEFT layout, generated) on the tiny decoder in every form and on
//! a MatMulNBits base: `onnxq lora inject` checked with ONNX Runtime's own adapter
//! API (tests/py/lora_check.py) against references merged in numpy, two adapters
//! switched on one session, no adapter = base; `lora merge` against the same
//! references; `lora pack` equal to inject's adapter file; clear errors.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::forms::decoder_forms;
use common::peft::{write_peft, PeftSpec};
use serde_json::Value;

const ALL: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Adapter one: fp32, every projection, per-module rank and alpha overrides.
fn adapter_one(dir: &Path) -> PathBuf {
    let d = dir.join("peft-one");
    write_peft(
        &d,
        &PeftSpec {
            seed: 11,
            r: 4,
            alpha: 8.0,
            fp16: false,
            targets: ALL,
            rank_pattern: &[("down_proj", 2)],
            alpha_pattern: &[("v_proj", 3.0)],
            use_rslora: false,
        },
    );
    d
}

/// Adapter two: fp16, other rank, rsLoRA scaling; the same modules (ONNX Runtime
/// swaps adapters over one set of inputs).
fn adapter_two(dir: &Path) -> PathBuf {
    let d = dir.join("peft-two");
    write_peft(
        &d,
        &PeftSpec {
            seed: 22,
            r: 8,
            alpha: 16.0,
            fp16: true,
            targets: ALL,
            rank_pattern: &[],
            alpha_pattern: &[],
            use_rslora: true,
        },
    );
    d
}

fn onnxq(args: &[&str]) -> std::process::Output {
    Command::new(common::onnxq_bin())
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) {
    let out = onnxq(args);
    assert!(
        out.status.success(),
        "onnxq {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Injects both adapters into `base`, merges them with onnxq when the base is
/// float, and returns lora_check.py's measurements.
fn check_base(python: &Path, dir: &Path, base: &Path, float_base: bool) -> Value {
    let (one, two) = (adapter_one(dir), adapter_two(dir));
    let injected = dir.join("injected.onnx");
    let file_one = dir.join("one.onnx_adapter");
    let file_two = dir.join("two.onnx_adapter");
    ok(&[
        "lora",
        "inject",
        s(base),
        s(&injected),
        "--adapter",
        s(&one),
        "--adapter-out",
        s(&file_one),
    ]);
    ok(&[
        "lora",
        "pack",
        s(&two),
        s(&file_two),
        "--model",
        s(&injected),
    ]);
    // pack for adapter one must reproduce inject's file byte for byte.
    let packed_one = dir.join("one-packed.onnx_adapter");
    ok(&["lora", "pack", s(&one), s(&packed_one), "--model", s(base)]);
    assert_eq!(
        std::fs::read(&file_one).unwrap(),
        std::fs::read(&packed_one).unwrap(),
        "pack and inject write the same adapter"
    );
    let mut args: Vec<String> = vec![s(base).into(), s(&injected).into()];
    for (name, peft, file) in [("one", &one, &file_one), ("two", &two, &file_two)] {
        args.push("--adapter".into());
        args.push(format!("{name}={}={}", s(peft), s(file)));
        if float_base {
            let merged = dir.join(format!("merged-{name}.onnx"));
            ok(&["lora", "merge", s(base), s(&merged), "--adapter", s(peft)]);
            args.push("--merged".into());
            args.push(format!("{name}={}", s(&merged)));
        }
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = common::py(python, "lora_check.py", &argv);
    let line = text.lines().last().unwrap();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn assert_results(what: &str, r: &Value, merged: bool) {
    let num = |v: &Value, path: &[&str]| -> f64 {
        let mut x = v;
        for p in path {
            x = &x[*p];
        }
        x.as_f64()
            .unwrap_or_else(|| panic!("{what}: no {path:?} in {r}"))
    };
    // No adapter bound: the rank-0 defaults add exact zeros.
    assert_eq!(num(r, &["no_adapter", "rel_l2"]), 0.0, "{what}: {r}");
    assert_eq!(num(r, &["no_adapter_after", "rel_l2"]), 0.0, "{what}: {r}");
    for name in ["one", "two"] {
        let a = &r["adapters"][name];
        // The adapter really changes the logits (else the checks below prove nothing).
        assert!(num(a, &["vs_base", "rel_l2"]) > 0.05, "{what} {name}: {r}");
        let err = num(a, &["max_abs_over_max_ref"]);
        assert!(
            err < 1e-4,
            "{what} {name}: ORT with adapter vs merged reference {err}: {r}"
        );
        assert_eq!(num(a, &["switch_back_max_abs"]), 0.0, "{what} {name}: {r}");
        if merged {
            let m = num(a, &["onnxq_merge", "max_abs_over_max_ref"]);
            assert!(
                m < 1e-4,
                "{what} {name}: onnxq lora merge vs reference {m}: {r}"
            );
        }
    }
    eprintln!("{what}: {r}");
}

#[test]
fn inject_matches_merged_reference_on_every_form() {
    let Some(python) = common::python() else {
        return;
    };
    for (form, path) in decoder_forms() {
        let dir = tempfile::tempdir().unwrap();
        let r = check_base(&python, dir.path(), &path, true);
        assert_results(form, &r, true);
    }
}

#[test]
fn inject_on_matmulnbits_base() {
    let Some(python) = common::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("int4.onnx");
    let base = common::fixtures().join("decoders/decomposed.onnx");
    // The checker dequantizes 4-bit weights only: keep the tied head at 4 bits too.
    let out =
        common::run::quantize_cli(&[s(&base), s(&q), "--no-verify", "--tied-head", "separate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = check_base(&python, dir.path(), &q, false);
    assert_results("decomposed int4", &r, false);
    // Merging into packed weights is refused, naming the node.
    let merged = dir.path().join("m.onnx");
    let out = onnxq(&[
        "lora",
        "merge",
        s(&q),
        s(&merged),
        "--adapter",
        s(&dir.path().join("peft-one")),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot merge LoRA into node") && err.contains("packed"),
        "{err}"
    );
}

#[test]
fn unmatched_module_and_shape_mismatch_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::fixtures().join("decoders/decomposed.onnx");
    let peft = dir.path().join("bad");
    write_peft(
        &peft,
        &PeftSpec {
            seed: 1,
            r: 2,
            alpha: 2.0,
            fp16: false,
            targets: &["q_proj"],
            rank_pattern: &[],
            alpha_pattern: &[],
            use_rslora: false,
        },
    );
    // Rename one module to a projection the model lacks.
    // Same length, so the safetensors header's offsets stay valid.
    let mut st = std::fs::read(peft.join("adapter_model.safetensors")).unwrap();
    let (from, to) = (b"layers.1.self_attn.q_proj", b"layers.1.self_attn.x_proj");
    let mut hits = 0;
    for i in 0..st.len() - from.len() {
        if &st[i..i + from.len()] == from {
            st[i..i + from.len()].copy_from_slice(to);
            hits += 1;
        }
    }
    assert_eq!(hits, 2, "lora_A and lora_B renamed");
    std::fs::write(peft.join("adapter_model.safetensors"), st).unwrap();
    let out = onnxq(&[
        "lora",
        "inject",
        s(&base),
        s(&dir.path().join("o.onnx")),
        "--adapter",
        s(&peft),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'model.layers.1.self_attn.x_proj'") && err.contains("no 'x_proj'"),
        "{err}"
    );

    // A q_proj adapter put on k_proj (N = 32, not 96) through a mapping file.
    write_peft(
        &peft,
        &PeftSpec {
            seed: 1,
            r: 2,
            alpha: 2.0,
            fp16: false,
            targets: &["q_proj"],
            rank_pattern: &[],
            alpha_pattern: &[],
            use_rslora: false,
        },
    );
    let mapping = dir.path().join("map.json");
    std::fs::write(
        &mapping,
        r#"{"model.layers.0.self_attn.q_proj": "/model/layers.0/self_attn/k_proj/MatMul"}"#,
    )
    .unwrap();
    let out = onnxq(&[
        "lora",
        "inject",
        s(&base),
        s(&dir.path().join("o.onnx")),
        "--adapter",
        s(&peft),
        "--mapping",
        s(&mapping),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'model.layers.0.self_attn.q_proj'") && err.contains("k_proj"),
        "{err}"
    );
}
