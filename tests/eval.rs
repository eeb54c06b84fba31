//! `onnxq eval` on the decoder forms (fixtures/decoders/) with the fixture tokenizer
//! and text: perplexity, KL, top-1 agreement against an independent onnxruntime +
//! numpy computation (tests/py/eval_ppl.py), on ONNX Runtime and on tract; greedy
//! generation through the KV cache equals recomputing the whole sequence.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::forms;
use onnxq::eval::{greedy, tokenize, Decoder};
use onnxq::runtime::{self, RuntimeKind, RuntimeOptions};
use serde_json::Value;

fn text() -> PathBuf {
    common::fixtures().join("sample.txt")
}

fn tokenizer() -> PathBuf {
    common::fixtures().join("tokenizer.json")
}

fn ids() -> Vec<i64> {
    tokenize(&text(), &tokenizer()).unwrap()
}

/// `onnxq eval MODEL ... --json` on the fixture text; the parsed report.
fn eval_cli(model: &Path, extra: &[&str]) -> Value {
    let out = Command::new(common::onnxq_bin())
        .arg("eval")
        .arg(model)
        .arg("--text")
        .arg(text())
        .arg("--tokenizer")
        .arg(tokenizer())
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "eval {} {extra:?}: {}{}",
        model.display(),
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// tests/py/eval_ppl.py on the first `tokens` ids of the fixture text.
fn eval_python(
    py: &Path,
    dir: &Path,
    model: &Path,
    tokens: usize,
    window: usize,
    stride: usize,
    reference: Option<&Path>,
) -> Value {
    let ids_file = dir.join("ids.txt");
    let ids: Vec<String> = ids()[..tokens].iter().map(i64::to_string).collect();
    std::fs::write(&ids_file, ids.join(" ")).unwrap();
    let mut args = vec![
        model.to_str().unwrap().to_string(),
        ids_file.to_str().unwrap().to_string(),
        window.to_string(),
        stride.to_string(),
    ];
    args.extend(reference.map(|r| r.to_str().unwrap().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::py(py, "eval_ppl.py", &args);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number '{key}' in {v}"))
}

fn assert_rel(ours: f64, theirs: f64, tol: f64, what: &str) {
    let rel = (ours - theirs).abs() / theirs.abs();
    assert!(
        rel <= tol,
        "{what}: onnxq {ours} vs Python {theirs} (relative {rel:e} > {tol:e})"
    );
}

fn python_and_ort() -> Option<PathBuf> {
    let py = common::python()?;
    if !runtime::ort::available() {
        assert!(
            !common::required(),
            "ONNXQ_REQUIRE_ORT=1 but ONNX Runtime is not found"
        );
        eprintln!("SKIPPED: ONNX Runtime is not found");
        return None;
    }
    Some(py)
}

/// One forward pass over the first N tokens, every form, on ONNX Runtime and on
/// tract: the perplexity ORT + numpy give, within 0.1%.
#[test]
fn one_window_perplexity_matches_onnxruntime_on_every_form() {
    let Some(py) = python_and_ort() else { return };
    let dir = tempfile::tempdir().unwrap();
    let n = 96;
    assert!(ids().len() > n, "the fixture text is long enough");
    let ns = n.to_string();
    for (form, path) in forms::decoder_forms() {
        let want = eval_python(&py, dir.path(), &path, n, n, n, None);
        assert_eq!(num(&want, "tokens"), (n - 1) as f64);
        for rt in ["ort", "tract"] {
            let got = eval_cli(
                &path,
                &[
                    "--window",
                    &ns,
                    "--stride",
                    &ns,
                    "--tokens",
                    &ns,
                    "--runtime",
                    rt,
                ],
            );
            assert_eq!(
                got["runtime"],
                if rt == "ort" { "onnxruntime" } else { "tract" }
            );
            assert_eq!(num(&got, "tokens"), (n - 1) as f64, "{form} {rt}");
            assert_eq!(num(&got, "windows"), 1.0, "{form} {rt}");
            assert_rel(
                num(&got, "perplexity"),
                num(&want, "perplexity"),
                1e-3,
                &format!("{form} on {rt}"),
            );
        }
    }
}

/// Strided windows (context carried over, each token scored once) over more tokens
/// than one window, as Hugging Face's perplexity guide computes them.
#[test]
fn strided_perplexity_matches_onnxruntime() {
    let Some(py) = python_and_ort() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (n, w, s) = (200, 64, 24);
    for (form, path) in forms::decoder_forms() {
        let want = eval_python(&py, dir.path(), &path, n, w, s, None);
        let got = eval_cli(
            &path,
            &[
                "--window",
                &w.to_string(),
                "--stride",
                &s.to_string(),
                "--tokens",
                &n.to_string(),
                "--runtime",
                "ort",
            ],
        );
        assert_eq!(
            num(&got, "tokens"),
            (n - 1) as f64,
            "{form}: every token but the first"
        );
        assert_eq!(num(&got, "tokens"), num(&want, "tokens"));
        assert!(num(&got, "windows") > 1.0);
        assert_rel(
            num(&got, "perplexity"),
            num(&want, "perplexity"),
            1e-3,
            &format!("{form} strided"),
        );
    }
}

/// An int4 model against its fp32 original: KL (mean, p99) and top-1 agreement as
/// ORT + numpy give them; the quantization shows (KL > 0).
#[test]
fn reference_statistics_match_onnxruntime() {
    let Some(py) = python_and_ort() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (form, orig) = forms::decoder_forms().remove(0);
    let model = onnxq::load(&orig).unwrap();
    let int4 = common::run::apply(
        &model,
        "[recipe]\nname = \"int4\"\n\n[[pass]]\nname = \"matmul-nbits\"\nbits = 4\nblock-size = 32\nsymmetric = true\n",
    );
    let q = common::run::save(&int4, dir.path(), "int4.onnx");
    let (n, w) = (128, 64);
    let want = eval_python(&py, dir.path(), &q, n, w, w, Some(&orig));
    let got = eval_cli(
        &q,
        &[
            "--reference",
            orig.to_str().unwrap(),
            "--window",
            &w.to_string(),
            "--stride",
            &w.to_string(),
            "--tokens",
            &n.to_string(),
            "--runtime",
            "ort",
        ],
    );
    for key in ["perplexity", "reference_perplexity", "kl_mean", "kl_p99"] {
        assert_rel(
            num(&got, key),
            num(&want, key),
            1e-3,
            &format!("{form} int4 {key}"),
        );
    }
    assert!(num(&got, "kl_mean") > 0.0, "int4 changes the distributions");
    assert!(num(&got, "kl_p99") >= num(&got, "kl_mean"));
    let top1 = num(&got, "top1_agreement");
    assert!(
        (top1 - num(&want, "top1_agreement")).abs() < 1e-9,
        "top-1 {top1} vs {want}"
    );
    let g = &got["greedy"];
    assert_eq!(g["prompts"], 4);
    assert_eq!(g["kv_cache"], true);
    let agree = num(g, "agreement");
    assert!((0.0..=1.0).contains(&agree), "{g}");
}

/// Every form computes the same function as the decomposed one: against it as the
/// reference, the distributions agree to rounding and greedy generations (through
/// each form's KV cache) are the same.
#[test]
fn forms_agree_with_each_other() {
    if python_and_ort().is_none() {
        return;
    }
    let forms = forms::decoder_forms();
    let reference = forms[0].1.to_str().unwrap().to_string();
    for (form, path) in &forms[1..] {
        let got = eval_cli(
            path,
            &[
                "--reference",
                &reference,
                "--window",
                "64",
                "--tokens",
                "160",
                "--runtime",
                "ort",
            ],
        );
        assert!(num(&got, "kl_mean") < 1e-9, "{form}: {got}");
        assert!(num(&got, "top1_agreement") >= 0.99, "{form}: {got}");
        let g = &got["greedy"];
        assert_eq!(g["kv_cache"], true, "{form}");
        assert_eq!(num(g, "agreement"), 1.0, "{form}: {g}");
        assert_rel(
            num(&got, "perplexity"),
            num(&got, "reference_perplexity"),
            1e-5,
            form,
        );
    }
}

/// Greedy steps that feed one token and the cache generate what recomputing the
/// whole sequence generates, in every form, on both runtimes.
#[test]
fn greedy_with_the_kv_cache_equals_recomputing() {
    let ids = ids();
    for kind in [RuntimeKind::Tract, RuntimeKind::Ort] {
        let sel = match runtime::select(&RuntimeOptions {
            kind,
            threads: Some(1),
            ..Default::default()
        }) {
            Ok(s) => s,
            Err(e) => {
                assert!(!common::required(), "ONNXQ_REQUIRE_ORT=1 but: {e}");
                eprintln!("SKIPPED on {kind}: {e}");
                continue;
            }
        };
        for (form, path) in forms::decoder_forms() {
            if form == "opset24" && kind == RuntimeKind::Tract {
                // tract aligns `Attention(is_causal=1)`'s mask top-left, as the ONNX
                // spec words it, so a query after a past sees only the first keys;
                // ONNX Runtime aligns it bottom-right, which cached decoding needs
                // (fixtures/README.md). Not a feed problem: left to the runtime layer.
                continue;
            }
            let mut dec = Decoder::open(sel.runtime.as_ref(), &path).unwrap();
            assert!(dec.names.has_cache(), "{form}");
            let prompt = &ids[10..22];
            let cached = greedy::generate(&mut dec, prompt, 12, true).unwrap();
            let full = greedy::generate(&mut dec, prompt, 12, false).unwrap();
            assert_eq!(cached.len(), 12);
            assert_eq!(cached, full, "{form} on {kind}");
        }
    }
}

/// A text saved with CRLF line ends tokenizes as the same text with LF.
#[test]
fn crlf_text_reads_as_lf() {
    let dir = tempfile::tempdir().unwrap();
    let lf = std::fs::read_to_string(text()).unwrap();
    assert!(lf.contains('\n') && !lf.contains('\r'));
    let crlf = dir.path().join("crlf.txt");
    std::fs::write(&crlf, lf.replace('\n', "\r\n")).unwrap();
    assert_eq!(tokenize(&crlf, &tokenizer()).unwrap(), ids());
}

/// Settings that cannot give a perplexity are refused with a message, not a panic.
#[test]
fn bad_settings_are_refused() {
    let (_, path) = forms::decoder_forms().remove(0);
    let out = Command::new(common::onnxq_bin())
        .arg("eval")
        .arg(&path)
        .arg("--text")
        .arg(text())
        .arg("--tokenizer")
        .arg(tokenizer())
        .args(["--window", "16", "--stride", "32", "--runtime", "tract"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--stride 32"), "{err}");
}
