//! LoRA adapters (PEFT layout, generated) on the tiny decoder in every form and on
//! a MatMulNBits base: `onnxq lora inject` checked with ONNX Runtime's own adapter
//! API (tests/py/lora_check.py) against references merged in numpy, two adapters
//! switched on one session, no adapter = base; `lora merge` against the same
//! references; `lora pack` equal to inject's adapter file; `lora merge` into a
//! MatMulNBits base (re-quantized) against float references; `lora extract` of
//! baked-in weights; the lm_head (tied in three forms) adapted like any layer; a
//! snapshot of the injected graph; clear errors.
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
    "lm_head",
];

/// The decoder layers only (the head is quantized differently from the body, so a
/// float head merge cannot be re-quantized "the same way" as the body).
const BODY: &[&str] = &[
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
    // The head's adapter (tied in three forms) leaves the embedding table alone.
    let table = |path: &Path| {
        let m = onnxq::load(path).unwrap();
        let v = m.graph.find("model.embed_tokens.weight");
        v.and_then(|v| m.graph.initializer(v))
            .map(|t| t.raw_bytes().unwrap().into_owned())
    };
    let base_table = table(base);
    assert!(
        base_table.is_some() || !float_base,
        "no embedding table in {base:?}"
    );
    assert_eq!(
        table(&injected),
        base_table,
        "inject changed the embedding table"
    );
    for name in ["one", "two"] {
        let merged = dir.join(format!("merged-{name}.onnx"));
        if merged.exists() {
            assert_eq!(
                table(&merged),
                base_table,
                "merge changed the embedding table"
            );
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
}

fn quantize(src: &Path, dst: &Path, extra: &[&str]) {
    let mut args = vec![s(src), s(dst), "--no-verify"];
    args.extend_from_slice(extra);
    let out = common::run::quantize_cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Token windows for logits comparisons in ONNX Runtime.
fn windows() -> Vec<Vec<i64>> {
    let mut rng = common::forms::Rng::new(5);
    (0..3)
        .map(|_| (0..16).map(|_| rng.token()).collect())
        .collect()
}

fn ort_error(reference: &Path, cand: &Path) -> f64 {
    common::text_logits_error(
        reference,
        cand,
        &windows(),
        onnxq::runtime::RuntimeKind::Ort,
    )
}

/// (op type, node name) per node: what a merge must keep.
fn ops(m: &onnxq::Model) -> Vec<String> {
    let g = &m.graph;
    g.nodes()
        .map(|(_, n)| format!("{} {}", n.op_type, n.name()))
        .collect()
}

/// Every MatMulNBits keeps its attributes (bits, block size, accuracy level) and
/// its B/scales/zero-point tensors' types and shapes; the adapted ones' codes change.
fn assert_same_settings(q: &onnxq::Model, merged: &onnxq::Model, what: &str) {
    let (gq, gm) = (&q.graph, &merged.graph);
    let mut changed = 0;
    for ((_, a), (_, b)) in gq.nodes().zip(gm.nodes()) {
        if a.op_type != "MatMulNBits" {
            continue;
        }
        assert_eq!(
            format!("{:?}", a.attributes),
            format!("{:?}", b.attributes),
            "{what}: {}",
            a.name()
        );
        for slot in 1..=3 {
            let tensor = |g: &onnxq::ir::Graph, n: &onnxq::ir::Node| {
                n.input(slot)
                    .map(|v| g.initializer(v).expect("an initializer").clone())
            };
            let (ta, tb) = (tensor(gq, a), tensor(gm, b));
            assert_eq!(
                ta.as_ref().map(|t| (t.dtype(), t.dims.clone())),
                tb.as_ref().map(|t| (t.dtype(), t.dims.clone())),
                "{what}: {} input {slot}",
                a.name()
            );
            if slot == 1 {
                let bytes =
                    |t: Option<onnxq::ir::Tensor>| t.unwrap().raw_bytes().unwrap().into_owned();
                changed += usize::from(bytes(ta) != bytes(tb));
            }
        }
    }
    // Every body projection, none of the (unadapted) head.
    assert_eq!(
        changed,
        common::forms::LAYERS * common::forms::LINEARS_PER_LAYER,
        "{what}"
    );
}

#[test]
fn merge_into_matmulnbits_base_requantizes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = common::fixtures().join("decoders/decomposed.onnx");
    let body = d.join("peft-body");
    write_peft(
        &body,
        &PeftSpec {
            seed: 33,
            r: 4,
            alpha: 8.0,
            fp16: false,
            targets: BODY,
            rank_pattern: &[],
            alpha_pattern: &[],
            use_rslora: false,
        },
    );
    // Default int4 (RTN, symmetric, block 32) and an asymmetric block-16 variant.
    for (what, settings) in [
        ("int4 sym b32", &[][..]),
        ("int4 asym b16", &["--asymmetric", "--block-size", "16"][..]),
    ] {
        let q = d.join("int4.onnx");
        quantize(&base, &q, settings);
        let merged_q = d.join("merged-int4.onnx");
        ok(&["lora", "merge", s(&q), s(&merged_q), "--adapter", s(&body)]);
        let merged = d.join("merged.onnx");
        ok(&["lora", "merge", s(&base), s(&merged), "--adapter", s(&body)]);
        let merged_then_q = d.join("merged-then-int4.onnx");
        quantize(&merged, &merged_then_q, settings);
        // Same nodes and attributes; only weight bytes change.
        let (qm, mq) = (onnxq::load(&q).unwrap(), onnxq::load(&merged_q).unwrap());
        assert_eq!(ops(&qm), ops(&mq), "{what}");
        assert_same_settings(&qm, &mq, what);
        let e_merged = ort_error(&merged, &merged_q);
        let e_unmerged = ort_error(&merged, &q);
        let e_reference_q = ort_error(&merged, &merged_then_q);
        let e_vs_reference_q = ort_error(&merged_then_q, &merged_q);
        eprintln!(
            "{what}: merged int4 vs float merged {e_merged:.4}, unmerged int4 {e_unmerged:.4}, \
             float merged then int4 {e_reference_q:.4}; merged int4 vs merged-then-int4 \
             {e_vs_reference_q:.4}"
        );
        // The adapter is in: much closer to the float merged model than the base is.
        assert!(e_merged < 0.5 * e_unmerged, "{what}");
        // Its error is int4 error: within a small factor of quantizing the float
        // merged model directly. Dequantize, add, re-round rounds twice, and the two
        // roundings are of different weights, so the two int4 models differ by about
        // both errors together (measured: sym b32 0.34 vs 0.23, apart 0.41).
        assert!(e_merged < 1.6 * e_reference_q, "{what}");
        assert!(e_vs_reference_q < 2.0 * e_reference_q, "{what}");
    }
}

#[test]
fn merge_into_a_shared_tied_head_unties_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = common::fixtures().join("decoders/decomposed.onnx");
    let head = d.join("peft-head");
    write_peft(
        &head,
        &PeftSpec {
            seed: 44,
            r: 4,
            // Scale 200: the ±0.01 test head update made larger than the body's
            // int4 error, which both models below share.
            alpha: 800.0,
            fp16: false,
            targets: &["lm_head"],
            rank_pattern: &[],
            alpha_pattern: &[],
            use_rslora: false,
        },
    );
    // Default quantization shares one 8-bit table between the head and the Gather.
    let q = d.join("int4.onnx");
    quantize(&base, &q, &[]);
    let merged_q = d.join("merged-int4.onnx");
    ok(&["lora", "merge", s(&q), s(&merged_q), "--adapter", s(&head)]);
    let merged = d.join("merged.onnx");
    ok(&["lora", "merge", s(&base), s(&merged), "--adapter", s(&head)]);
    let (qm, mq, fm) = (
        onnxq::load(&q).unwrap(),
        onnxq::load(&merged_q).unwrap(),
        onnxq::load(&merged).unwrap(),
    );
    let table_of = |m: &onnxq::Model, op: &str| -> (String, Vec<u8>) {
        let g = &m.graph;
        let (_, n) = g
            .nodes()
            .find(|(_, n)| n.op_type == op)
            .unwrap_or_else(|| panic!("no {op}"));
        let mut v = n.input(if op == "MatMulNBits" { 1 } else { 0 }).unwrap();
        // GatherBlockQuantized reads the head's B through a Reshape.
        if let Some(r) = g.producer(v).filter(|&r| g.node(r).op_type == "Reshape") {
            v = g.node(r).input(0).unwrap();
        }
        let t = g.initializer(v).expect("an initializer");
        (
            g.value_name(v).to_string(),
            t.raw_bytes().unwrap().into_owned(),
        )
    };
    // The embedding still reads the original table; the head reads its own merged one.
    let (q_table, q_bytes) = table_of(&qm, "GatherBlockQuantized");
    let (m_table, m_bytes) = table_of(&mq, "GatherBlockQuantized");
    assert_eq!((&q_table, &q_bytes), (&m_table, &m_bytes));
    let (head_table, head_bytes) = table_of(&mq, "MatMulNBits");
    assert_ne!(head_table, m_table);
    assert_ne!(head_bytes, m_bytes);
    // The float merge leaves the Gather on model.embed_tokens.weight, unchanged.
    let emb = |m: &onnxq::Model| {
        let g = &m.graph;
        let v = g.find("model.embed_tokens.weight").unwrap();
        g.initializer(v).unwrap().raw_bytes().unwrap().into_owned()
    };
    assert_eq!(emb(&fm), emb(&onnxq::load(&base).unwrap()));
    let e_merged = ort_error(&merged, &merged_q);
    let e_unmerged = ort_error(&merged, &q);
    eprintln!("tied head: merged int4 vs float merged {e_merged:.4}, unmerged {e_unmerged:.4}");
    assert!(e_merged < 0.5 * e_unmerged);
}

#[test]
fn extract_turns_baked_lora_weights_into_an_adapter() {
    let Some(python) = common::python() else {
        return;
    };
    for (form, path) in decoder_forms() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let one = adapter_one(d);
        let (injected, file) = (d.join("injected.onnx"), d.join("one.onnx_adapter"));
        ok(&[
            "lora",
            "inject",
            s(&path),
            s(&injected),
            "--adapter",
            s(&one),
            "--adapter-out",
            s(&file),
        ]);
        let baked = d.join("baked.onnx");
        common::py(
            &python,
            "lora_extract.py",
            &["bake", s(&injected), s(&file), s(&baked)],
        );
        let (extracted, ext_file) = (d.join("extracted.onnx"), d.join("ext.onnx_adapter"));
        ok(&[
            "lora",
            "extract",
            s(&baked),
            s(&extracted),
            "--adapter-out",
            s(&ext_file),
        ]);
        let text = common::py(
            &python,
            "lora_extract.py",
            &[
                "check",
                s(&path),
                s(&baked),
                s(&extracted),
                s(&ext_file),
                s(&file),
            ],
        );
        let r: Value = serde_json::from_str(text.lines().last().unwrap())
            .unwrap_or_else(|e| panic!("{e}: {text}"));
        let num = |a: &str, b: &str| r[a][b].as_f64().unwrap_or_else(|| panic!("{r}"));
        assert!(num("baked_vs_base", "rel_l2") > 0.05, "{form}: {r}");
        assert!(
            num("with_adapter_vs_baked", "max_abs_over_max_ref") < 1e-5,
            "{form}: {r}"
        );
        assert_eq!(num("no_adapter_vs_base", "rel_l2"), 0.0, "{form}: {r}");
        assert_eq!(r["params_max_abs"].as_f64(), Some(0.0), "{form}: {r}");
        assert_eq!(
            r["params"].as_u64(),
            Some(2 * common::forms::weight_matmuls(form) as u64),
            "{form}: {r}"
        );
        // The scale Muls and the baked tensors are gone.
        let m = onnxq::load(&extracted).unwrap();
        assert!(m.graph.find("lora_scaling").is_none(), "{form}");
        assert!(
            m.graph
                .initializers()
                .all(|(_, t)| !t.name().contains(".default.")),
            "{form}"
        );
        eprintln!("{form}: {r}");
    }
}

#[test]
fn extract_without_lora_branches_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::fixtures().join("decoders/decomposed.onnx");
    let out = onnxq(&["lora", "extract", s(&base), s(&dir.path().join("o.onnx"))]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no LoRA branch with constant weights"),
        "{err}"
    );
}

#[test]
fn injected_graph_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::fixtures().join("decoders/decomposed.onnx");
    let one = adapter_one(dir.path());
    let injected = dir.path().join("injected.onnx");
    ok(&[
        "lora",
        "inject",
        s(&base),
        s(&injected),
        "--adapter",
        s(&one),
    ]);
    let (b, i) = (onnxq::load(&base).unwrap(), onnxq::load(&injected).unwrap());
    insta::assert_snapshot!("inject_decomposed", onnxq::ir::print::diff(&b, &i));
}

/// A q_proj-only adapter (rank 2) in `dir`.
fn q_proj_adapter(dir: &Path) -> PathBuf {
    let peft = dir.join("bad");
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
    peft
}

/// `onnxq lora inject` of `peft` into the decomposed form must fail; its stderr.
fn inject_error(dir: &Path, peft: &Path, extra: &[&str]) -> String {
    let base = common::fixtures().join("decoders/decomposed.onnx");
    let out_model = dir.join("o.onnx");
    let mut args = vec![
        "lora",
        "inject",
        s(&base),
        s(&out_model),
        "--adapter",
        s(peft),
    ];
    args.extend_from_slice(extra);
    let out = onnxq(&args);
    assert!(!out.status.success(), "onnxq {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unmatched_module_and_shape_mismatch_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let peft = q_proj_adapter(dir.path());
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
    let err = inject_error(dir.path(), &peft, &[]);
    assert!(
        err.contains("'model.layers.1.self_attn.x_proj'") && err.contains("no 'x_proj'"),
        "{err}"
    );

    // A q_proj adapter put on k_proj (N = 32, not 96) through a mapping file.
    let peft = q_proj_adapter(dir.path());
    let mapping = dir.path().join("map.json");
    std::fs::write(
        &mapping,
        r#"{"model.layers.0.self_attn.q_proj": "/model/layers.0/self_attn/k_proj/MatMul"}"#,
    )
    .unwrap();
    let err = inject_error(dir.path(), &peft, &["--mapping", s(&mapping)]);
    assert!(
        err.contains("'model.layers.0.self_attn.q_proj'") && err.contains("k_proj"),
        "{err}"
    );
}

#[test]
fn merge_into_bnb4_is_refused_naming_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = common::fixtures().join("decoders/decomposed.onnx");
    let q = d.join("nf4.onnx");
    quantize(&base, &q, &["--algorithm", "bnb4"]);
    let peft = q_proj_adapter(d);
    let out = onnxq(&[
        "lora",
        "merge",
        s(&q),
        s(&d.join("m.onnx")),
        "--adapter",
        s(&peft),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot merge LoRA into node '/model/layers.0/self_attn/q_proj/MatMul")
            && err.contains("MatMulBnb4"),
        "{err}"
    );
    // Nothing was written.
    assert!(!d.join("m.onnx").exists());
}
