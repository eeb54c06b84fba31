//! The command line as a contract: exit codes (0 success, 1 error, 2 usage, 3 a
//! check failed), unchanged copies, Olive/onnxruntime names, "did you mean" hints and
//! the report's fields.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::run::save;

fn onnxq(args: &[&str]) -> Output {
    Command::new(common::onnxq_bin())
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn mlp(dir: &Path) -> PathBuf {
    save(&common::build::mlp(true), dir, "mlp.onnx")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn usage_errors_exit_2_with_a_suggestion() {
    let tmp = tempfile::tempdir().unwrap();
    let m = mlp(tmp.path());
    let out = tmp.path().join("o.onnx");
    for (args, hint) in [
        (
            vec!["quantize", s(&m), s(&out), "--blok-size", "32"],
            "--block-size",
        ),
        (
            vec!["quantize", s(&m), s(&out), "--algorithm", "gtpq"],
            "gptq",
        ),
        (
            vec!["apply", "int4-rnt", s(&m), s(&out)],
            "did you mean 'int4-rtn'",
        ),
        (
            vec!["quantize", s(&m), s(&out), "--algorithm", "quarot"],
            "name the quantizer",
        ),
        (
            vec!["quantize", s(&m), s(&out), "--algorithm", "kquant"],
            "not built",
        ),
        (
            vec![
                "quantize",
                s(&m),
                s(&out),
                "--algorithm",
                "rtn",
                "--precision",
                "fp16",
            ],
            "float conversion",
        ),
        (
            vec!["quantize", s(&m), s(&out), "--damp", "0.1"],
            "--damp applies to",
        ),
        (
            vec![
                "quantize",
                s(&m),
                s(&out),
                "--algorithm",
                "gptq",
                "--precision",
                "nf4",
            ],
            "bitsandbytes",
        ),
        (
            vec![
                "quantize",
                s(&m),
                s(&out),
                "--precision",
                "int4",
                "--bits",
                "8",
            ],
            "contradicts",
        ),
    ] {
        let o = onnxq(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(hint), "{args:?}: expected {hint:?} in {err}");
        assert!(!out.exists(), "{args:?} wrote a file");
    }
    // An unknown option inside a recipe file names the closest key.
    let recipe = tmp.path().join("r.toml");
    std::fs::write(
        &recipe,
        "[recipe]\nname='r'\n[[pass]]\nname='matmul-nbits'\nblok-size=32\n",
    )
    .unwrap();
    let o = onnxq(&["apply", s(&recipe), s(&m), s(&out)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("did you mean 'block-size'"),
        "{}",
        stderr(&o)
    );
    let o = onnxq(&["quantize", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("Exit codes") && help.contains("nodes-to-exclude"),
        "{help}"
    );
    let o = onnxq(&["--help"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("3 a check failed"));
}

#[test]
fn other_errors_exit_1_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.onnx");
    std::fs::write(&junk, b"not a model").unwrap();
    let out = tmp.path().join("o.onnx");
    let o = onnxq(&["quantize", s(&junk), s(&out)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn a_broken_threshold_exits_3() {
    let tmp = tempfile::tempdir().unwrap();
    let m = mlp(tmp.path());
    let out = tmp.path().join("q.onnx");
    let o = onnxq(&["quantize", s(&m), s(&out), "--max-abs", "1e-12"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("verify: FAILED"), "{}", stderr(&o));
    let o = onnxq(&["verify", s(&m), s(&out), "--max-abs", "1e-12"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let o = onnxq(&["verify", s(&m), s(&out), "--max-abs", "1e6"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn nothing_matched_writes_an_unchanged_copy_unless_asked_to_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let m = mlp(tmp.path());
    let out = tmp.path().join("copy.onnx");
    let o = onnxq(&["quantize", s(&m), s(&out), "--exclude", "*"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning: nothing changed") && err.contains("unchanged copy"),
        "{err}"
    );
    let print = |p: &Path| onnxq::ir::print::model_to_string(&onnxq::load(p).unwrap());
    assert_eq!(print(&out), print(&m));

    let refused = tmp.path().join("refused.onnx");
    let o = onnxq(&[
        "quantize",
        s(&m),
        s(&refused),
        "--exclude",
        "*",
        "--fail-if-unchanged",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("--fail-if-unchanged"), "{err}");
    assert!(!refused.exists());
    let mut names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["copy.onnx", "mlp.onnx"], "nothing half-written");
}

/// Writes `quantize` outputs for two spellings and asserts they are the same bytes.
fn same_output(m: &Path, dir: &Path, a: &[&str], b: &[&str]) {
    let run = |flags: &[&str], name: &str| {
        let out = dir.join(name);
        let mut args = vec!["quantize", s(m), s(&out), "--no-verify"];
        args.extend_from_slice(flags);
        let o = onnxq(&args);
        assert_eq!(o.status.code(), Some(0), "{flags:?}: {}", stderr(&o));
        std::fs::read(&out).unwrap()
    };
    let (x, y) = (run(a, "a.onnx"), run(b, "b.onnx"));
    assert!(x == y, "{a:?} and {b:?} wrote different models");
    let plain = run(&[], "plain.onnx");
    if !a.is_empty() {
        assert!(x != plain, "{a:?} changed nothing compared to the defaults");
    }
}

#[test]
fn olive_and_onnxruntime_names_mean_the_same_as_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let m = mlp(tmp.path());
    let d = tmp.path();
    same_output(
        &m,
        d,
        &["--nodes-to-exclude", "fc0/MatMul,fc1/MatMul"],
        &["--exclude", "fc0/MatMul", "--exclude", "fc1/MatMul"],
    );
    same_output(
        &m,
        d,
        &["--op-types-to-quantize", "Gemm"],
        &["--include-op", "Gemm"],
    );
    same_output(&m, d, &["--is-symmetric", "false"], &["--asymmetric"]);
    same_output(&m, d, &["--precision", "int8"], &["--bits", "8"]);
    same_output(
        &m,
        d,
        &["--precision", "uint8"],
        &["--bits", "8", "--asymmetric"],
    );
    same_output(
        &m,
        d,
        &["--precision", "fp4"],
        &["--algorithm", "bnb4", "--quant-type", "fp4"],
    );
    same_output(
        &m,
        d,
        &[
            "--algorithm",
            "dynamic",
            "--activations",
            "per-tensor",
            "--precision",
            "uint8",
        ],
        &[
            "--algorithm",
            "dynamic",
            "--activations",
            "per-tensor",
            "--weight-type",
            "uint8",
        ],
    );
    same_output(
        &m,
        d,
        &[
            "--algorithm",
            "dynamic",
            "--activations",
            "per-tensor",
            "--is-symmetric",
            "false",
        ],
        &[
            "--algorithm",
            "dynamic",
            "--activations",
            "per-tensor",
            "--weight-type",
            "uint8",
        ],
    );
}

#[test]
fn the_report_names_each_node_with_its_setting_and_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let m = mlp(tmp.path());
    let out = tmp.path().join("q.onnx");
    let report = tmp.path().join("r.json");
    let o = onnxq(&[
        "quantize",
        s(&m),
        s(&out),
        "--exclude",
        "fc1/MatMul",
        "--report",
        s(&report),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let nodes = r["nodes"].as_array().unwrap();
    let fc0 = nodes
        .iter()
        .find(|n| n["replaces"][0] == "fc0/MatMul")
        .expect("fc0 reported");
    assert_eq!(fc0["status"], "quantized");
    assert_eq!(fc0["op"], "com.microsoft::MatMulNBits");
    assert_eq!(fc0["setting"]["bits"], 4);
    assert_eq!(fc0["setting"]["block_size"], 32);
    // fc0.weight is float[64, 96]: 24576 bytes; 4-bit blocks of 32 with a float scale
    // per block take 96*2*16 + 96*2*4.
    assert_eq!(fc0["bytes_before"], 64 * 96 * 4);
    assert_eq!(fc0["bytes_after"], 96 * 2 * 16 + 96 * 2 * 4);
    let skipped = nodes
        .iter()
        .find(|n| n["node"] == "fc1/MatMul")
        .expect("the excluded node is reported");
    assert_eq!(skipped["status"], "skipped");
    assert!(
        skipped["reason"].as_str().unwrap().contains("exclude"),
        "{skipped}"
    );
    assert!(r["totals"]["skipped_nodes"].as_u64().unwrap() >= 1);
    assert!(
        r["totals"]["weight_bytes_after"].as_u64() < r["totals"]["weight_bytes_before"].as_u64()
    );
    assert!(
        r["peak_rss_bytes"].as_u64().unwrap() > 1 << 20,
        "{}",
        r["peak_rss_bytes"]
    );
    for phase in ["load", "passes", "save", "verify"] {
        assert!(r["phase_seconds"][phase].as_f64().is_some(), "{phase}: {r}");
    }
    assert!(r["verify"].is_object());
    assert_eq!(r["changed"], true);

    // --json: one JSON object per line on stdout, ending with the report.
    let stdout = String::from_utf8_lossy(&o.stdout);
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(events.iter().any(|e| e["event"] == "pass"));
    assert!(events.iter().any(|e| e["event"] == "node"));
    assert_eq!(events.last().unwrap()["event"], "report");
    assert_eq!(events.last().unwrap()["report"]["nodes"], r["nodes"]);

    // verify --report writes its JSON with time and memory.
    let vr = tmp.path().join("v.json");
    let o = onnxq(&["verify", s(&m), s(&out), "--report", s(&vr)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&vr).unwrap()).unwrap();
    assert_eq!(v["passed"], true);
    assert!(v["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(v["report"]["outputs"].is_array(), "{v}");
}

#[test]
fn log_level_error_keeps_stderr_quiet() {
    let tmp = tempfile::tempdir().unwrap();
    let m = mlp(tmp.path());
    let out = tmp.path().join("q.onnx");
    let o = onnxq(&[
        "--log-level",
        "error",
        "quantize",
        s(&m),
        s(&out),
        "--no-verify",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    let o = onnxq(&[
        "quantize",
        s(&m),
        s(&out),
        "--no-verify",
        "--log-level",
        "info",
    ]);
    assert!(stderr(&o).contains("matmul-nbits:"), "{}", stderr(&o));
}

#[test]
fn completions_and_man_page_are_generated() {
    let o = onnxq(&["completions", "bash"]);
    assert_eq!(o.status.code(), Some(0));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("--fail-if-unchanged") && text.contains("quantize"),
        "{text}"
    );
    let o = onnxq(&["man"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.starts_with(".ie") || text.contains(".TH onnxq"),
        "{text}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let o = onnxq(&["man", "--out", s(tmp.path())]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(tmp.path().join("onnxq-quantize.1").exists());
}
