//! Shared test plumbing: where the pinned Python venv and fixtures are.
#![allow(dead_code)]
pub mod build;
pub mod forms;
pub mod int8;
pub mod peft;
pub mod run;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo().join("fixtures")
}

/// True when CI asked for the Python/ORT tools to be present (ONNXQ_REQUIRE_ORT=1).
pub fn required() -> bool {
    std::env::var("ONNXQ_REQUIRE_ORT").is_ok_and(|v| v == "1")
}

/// ONNX Runtime with two threads, or None (test skipped) when the library is missing;
/// under ONNXQ_REQUIRE_ORT=1 a missing runtime fails the test instead.
pub fn ort() -> Option<onnxq::runtime::ort::OrtRuntime> {
    match onnxq::runtime::ort::OrtRuntime::new(Some(2)) {
        Ok(r) => Some(r),
        Err(e) => {
            assert!(!required(), "ONNXQ_REQUIRE_ORT=1 but: {e}");
            eprintln!("SKIPPED: {e}");
            None
        }
    }
}

/// Runs the onnxq binary: (exit status success, stdout + stderr).
pub fn onnxq(args: &[&str]) -> (bool, String) {
    let o = Command::new(onnxq_bin()).args(args).output().unwrap();
    (o.status.success(), log_of(&o))
}

/// A finished command's stdout then stderr, as one text for assertion messages.
pub fn log_of(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Largest |a - b| over all outputs; names and shapes must agree.
pub fn max_diff(a: &onnxq::runtime::NamedTensors, b: &onnxq::runtime::NamedTensors) -> f64 {
    assert_eq!(
        a.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        b.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    let mut worst = 0f64;
    for ((name, ta), (_, tb)) in a.iter().zip(b) {
        assert_eq!(ta.shape, tb.shape, "{name}");
        for (x, y) in ta
            .to_f32_vec()
            .unwrap()
            .iter()
            .zip(tb.to_f32_vec().unwrap())
        {
            worst = worst.max((*x as f64 - y as f64).abs());
        }
    }
    worst
}

/// The pinned Python (ONNXQ_PYTHON or the repo's .venv). None means skip, which
/// `required()` turns into a failure.
pub fn python() -> Option<PathBuf> {
    let p = std::env::var_os("ONNXQ_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    if p.exists() {
        return Some(p);
    }
    assert!(
        !required(),
        "ONNXQ_REQUIRE_ORT=1 but no Python venv at {}: run .ci/setup-python",
        p.display()
    );
    eprintln!(
        "SKIPPED: no Python venv at {} (run .ci/setup-python)",
        p.display()
    );
    None
}

/// Runs a Python script from tests/py with arguments; panics with its output on failure.
pub fn py(python: &Path, script: &str, args: &[&str]) -> String {
    let out = Command::new(python)
        .arg(repo().join("tests/py").join(script))
        .args(args)
        .output()
        .expect("running python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} {args:?} failed:\n{text}");
    text
}

/// The onnx package's backend test data folder (node tests live under node/).
pub fn onnx_backend_data(python: &Path) -> PathBuf {
    let out = Command::new(python)
        .args(["-c", "import onnx, os; print(os.path.join(os.path.dirname(onnx.__file__), 'backend', 'test', 'data'))"])
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "onnx is not importable from {}",
        python.display()
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Every `*.onnx` under `dir`, sorted.
pub fn models_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                // fixtures/large/ holds the generated multi-GB bench model.
                if p.file_name().is_some_and(|n| n != "large") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "onnx") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

pub fn onnxq_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_onnxq"))
}

/// Relative L2 of the logits (first output) of `cand` vs `reference` over token
/// windows, both run on `kind`.
pub fn text_logits_error(
    reference: &Path,
    cand: &Path,
    windows: &[Vec<i64>],
    kind: onnxq::runtime::RuntimeKind,
) -> f64 {
    let sel = onnxq::runtime::select(&onnxq::runtime::RuntimeOptions {
        kind,
        ..Default::default()
    })
    .unwrap();
    let mut a = sel.runtime.open(reference).unwrap();
    let mut b = sel.runtime.open(cand).unwrap();
    let (mut num, mut den) = (0f64, 0f64);
    for w in windows {
        let feeds = onnxq::calib::text::feeds_for_tokens(a.inputs(), w).unwrap();
        let ya = a.run(&feeds).unwrap();
        let yb = b.run(&feeds).unwrap();
        let la = ya[0].1.to_f32_vec().unwrap();
        let lb = yb[0].1.to_f32_vec().unwrap();
        for (x, y) in la.iter().zip(&lb) {
            num += ((x - y) as f64).powi(2);
            den += (*x as f64).powi(2);
        }
    }
    (num / den).sqrt()
}
