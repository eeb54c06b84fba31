//! The ONNX backend node tests shipped in the onnx package (model.onnx +
//! test_data_set_*/input_N.pb, output_N.pb) through onnxq: load → save → ONNX
//! Runtime (via onnxq's runtime layer) → compare with the expected outputs.
//!
//! Tests that cannot pass for a known reason are listed in
//! tests/backend_expected_failures.txt with how they fail (refused or wrong, and a
//! stable fragment of the error) and why. An unlisted failure fails this test, and
//! so does a listed one that fails another way; a listed test that passes is
//! reported (so the list can shrink) but does not fail.
//! `ONNXQ_BACKEND_FAILURES=FILE` writes every failure with its error to FILE.
//!
//! The same cases run on tract (lowering applied) must give the expected values or
//! be refused with an error that points at ONNX Runtime; nothing may run and give
//! a wrong answer. `ONNXQ_BACKEND_FAILURES_TRACT=FILE` lists what tract refuses.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use onnxq::ir::TypeKind;
use onnxq::runtime::{HostTensor, Runtime};
use rayon::prelude::*;

/// numpy.testing.assert_allclose as the onnx backend runner calls it, with the
/// absolute tolerance onnxruntime's own backend test run uses.
const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-5;
/// Half-precision outputs: a couple of ulps (f16 has 11 significant bits, bf16 8);
/// tract's fp16 CausalConvWithState is 2 f16 ulps from the reference.
const RTOL_F16: f64 = 2e-3;
const RTOL_BF16: f64 = 1.6e-2;

/// How a listed test is expected to fail.
#[derive(Debug)]
struct Expected {
    /// The case runs and gives other values (else the runtime refuses it).
    wrong: bool,
    /// Part of the error text that stays the same from run to run.
    fragment: String,
}

impl Expected {
    fn matches(&self, f: &Failure) -> bool {
        let (wrong, text) = match f {
            Failure::Refused(m) => (false, m),
            Failure::Wrong(m) => (true, m),
        };
        wrong == self.wrong && text.contains(&self.fragment)
    }
}

/// `NAME  refused|wrong  "FRAGMENT"  REASON` lines.
fn expected_failures() -> BTreeMap<String, Expected> {
    let text = std::fs::read_to_string(common::repo().join("tests/backend_expected_failures.txt"))
        .expect("tests/backend_expected_failures.txt");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let bad = |what: &str| -> ! { panic!("backend_expected_failures.txt: {what}: {l}") };
            let (name, rest) = l
                .split_once(char::is_whitespace)
                .unwrap_or_else(|| bad("no kind"));
            let (kind, rest) = rest
                .trim_start()
                .split_once(char::is_whitespace)
                .unwrap_or_else(|| bad("no fragment"));
            let wrong = match kind {
                "refused" => false,
                "wrong" => true,
                _ => bad("kind is not refused or wrong"),
            };
            let rest = rest
                .trim_start()
                .strip_prefix('"')
                .unwrap_or_else(|| bad("no quoted fragment"));
            let (fragment, reason) = rest
                .split_once('"')
                .unwrap_or_else(|| bad("unterminated fragment"));
            if fragment.trim().is_empty() || reason.trim().is_empty() {
                bad("empty fragment or reason");
            }
            (
                name.to_string(),
                Expected {
                    wrong,
                    fragment: fragment.to_string(),
                },
            )
        })
        .collect()
}

fn compare(name: &str, got: &HostTensor, want: &HostTensor) -> Result<(), String> {
    if got.shape != want.shape {
        return Err(format!(
            "output '{name}': shape {:?}, expected {:?}",
            got.shape, want.shape
        ));
    }
    if got.dtype != want.dtype {
        return Err(format!(
            "output '{name}': {} , expected {}",
            got.dtype, want.dtype
        ));
    }
    if want.dtype == onnxq::ir::DType::String {
        return if got.strings == want.strings {
            Ok(())
        } else {
            Err(format!("output '{name}': strings differ"))
        };
    }
    let (g, w) = match (got.to_f64_vec(), want.to_f64_vec()) {
        (Ok(g), Ok(w)) => (g, w),
        // Types with no numeric reading (float8, int4, ...) compare bit for bit.
        _ => {
            return if got.data == want.data {
                Ok(())
            } else {
                Err(format!("output '{name}': {} bytes differ", got.dtype))
            }
        }
    };
    let rtol = match want.dtype {
        onnxq::ir::DType::F16 => RTOL_F16,
        onnxq::ir::DType::BF16 => RTOL_BF16,
        _ => RTOL,
    };
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= ATOL + rtol * b.abs();
        if !ok {
            return Err(format!("output '{name}' element {i}: {a} vs expected {b}"));
        }
    }
    Ok(())
}

/// Why a case did not pass: the runtime refused it (an error), or it ran and gave
/// other values than expected.
#[derive(Debug)]
enum Failure {
    Refused(String),
    Wrong(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(m) => write!(f, "{m}"),
            Failure::Wrong(m) => write!(f, "wrong result: {m}"),
        }
    }
}

fn run_case(dir: &Path, rt: &dyn Runtime, tmp: &Path) -> Result<(), Failure> {
    let refused = |e: String| Failure::Refused(e);
    let model = onnxq::load(&dir.join("model.onnx")).map_err(|e| refused(format!("load: {e}")))?;
    let g = &model.graph;
    for io in g.inputs.iter().chain(&g.outputs) {
        if let Some(t) = &io.info.ty {
            if !matches!(t.kind, TypeKind::Tensor { .. }) {
                return Err(refused(format!(
                    "'{}' is not a tensor",
                    g.value_name(io.value)
                )));
            }
        }
    }
    let specs = g.input_specs();
    let saved = tmp.join("model.onnx");
    onnxq::save(&model, &saved, &Default::default()).map_err(|e| refused(format!("save: {e}")))?;
    drop(model);
    let prepared =
        onnxq::runtime::prepare(&saved, rt.name(), &[]).map_err(|e| refused(e.to_string()))?;
    let mut session = rt
        .open(prepared.path())
        .map_err(|e| refused(e.to_string()))?;
    let sets = onnxq::tensorfile::sample_sets(dir).map_err(|e| refused(e.to_string()))?;
    for set in sets.iter().filter(|s| *s != dir) {
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for l in onnxq::tensorfile::read_dir(set).map_err(|e| refused(e.to_string()))? {
            let file = l.source.file_name().unwrap().to_string_lossy().to_string();
            if file.starts_with("input_") {
                inputs.push(l);
            } else if file.starts_with("output_") {
                outputs.push(l);
            }
        }
        outputs.sort_by_key(|l| l.index);
        let feeds = onnxq::tensorfile::bind(inputs, &specs).map_err(|e| refused(e.to_string()))?;
        let got = session.run(&feeds).map_err(|e| refused(e.to_string()))?;
        if got.len() != outputs.len() {
            return Err(Failure::Wrong(format!(
                "{} outputs, expected {}",
                got.len(),
                outputs.len()
            )));
        }
        for ((name, g), want) in got.iter().zip(&outputs) {
            compare(name, g, &want.tensor).map_err(Failure::Wrong)?;
        }
    }
    Ok(())
}

/// Every node test on `rt`, in name order.
fn run_all(python: &Path, rt: &dyn Runtime) -> Vec<(String, Result<(), Failure>)> {
    let node_dir = common::onnx_backend_data(python).join("node");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&node_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    cases.sort();
    assert!(
        cases.len() > 1000,
        "{} node tests under {}",
        cases.len(),
        node_dir.display()
    );
    cases
        .par_iter()
        .map(|dir| {
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            let tmp = tempfile::tempdir().unwrap();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_case(dir, rt, tmp.path())
            }))
            .unwrap_or_else(|_| Err(Failure::Refused("panicked".into())));
            (name, r)
        })
        .collect()
}

#[test]
fn onnx_backend_node_tests_pass_on_onnxruntime() {
    let Some(python) = common::python() else {
        return;
    };
    let ort = match onnxq::runtime::ort::OrtRuntime::new(Some(1)) {
        Ok(r) => r,
        Err(e) => {
            assert!(!common::required(), "ONNXQ_REQUIRE_ORT=1 but: {e}");
            eprintln!("SKIPPED: {e}");
            return;
        }
    };
    let results = run_all(&python, &ort);
    if let Some(out) = std::env::var_os("ONNXQ_BACKEND_FAILURES") {
        let text: String = results
            .iter()
            .filter_map(|(n, r)| {
                r.as_ref()
                    .err()
                    .map(|e| format!("{n}\t{}\n", e.to_string().replace('\n', " ")))
            })
            .collect();
        std::fs::write(out, text).unwrap();
    }

    let listed = expected_failures();
    let mut unexpected = Vec::new();
    let mut changed = Vec::new();
    let mut now_passing = Vec::new();
    let mut passed = 0;
    for (name, r) in &results {
        match (r, listed.get(name)) {
            (Ok(()), None) => passed += 1,
            (Ok(()), Some(_)) => now_passing.push(name.clone()),
            (Err(e), None) => unexpected.push(format!("{name}: {e}")),
            (Err(e), Some(want)) if !want.matches(e) => {
                changed.push(format!("{name}: expected {want:?}, got {e:?}"))
            }
            (Err(_), Some(_)) => {}
        }
    }
    let unknown: Vec<&String> = listed
        .keys()
        .filter(|n| !results.iter().any(|(r, _)| r == *n))
        .collect();
    eprintln!(
        "onnx backend node tests on ONNX Runtime: {passed} passed, {} expected failures, {} listed but passing, {} of {} total",
        listed.len() - now_passing.len() - unknown.len(),
        now_passing.len(),
        results.len(),
        results.len()
    );
    if !now_passing.is_empty() {
        eprintln!("listed in tests/backend_expected_failures.txt but passing now: {now_passing:?}");
    }
    if !unknown.is_empty() {
        eprintln!("listed but not a test: {unknown:?}");
    }
    assert!(
        unexpected.is_empty(),
        "{} unlisted failures:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
    assert!(
        changed.is_empty(),
        "{} listed failures fail differently now (tests/backend_expected_failures.txt):\n{}",
        changed.len(),
        changed.join("\n")
    );
    assert!(passed > 1000, "only {passed} passed");
}

#[test]
fn onnx_backend_node_tests_on_tract_are_right_or_refused() {
    let Some(python) = common::python() else {
        return;
    };
    let results = run_all(&python, &onnxq::runtime::tract::TractRuntime);
    if let Some(out) = std::env::var_os("ONNXQ_BACKEND_FAILURES_TRACT") {
        let text: String = results
            .iter()
            .filter_map(|(n, r)| {
                r.as_ref()
                    .err()
                    .map(|e| format!("{n}\t{}\n", e.to_string().replace('\n', " ")))
            })
            .collect();
        std::fs::write(out, text).unwrap();
    }
    let passed = results.iter().filter(|(_, r)| r.is_ok()).count();
    let wrong: Vec<String> = results
        .iter()
        .filter_map(|(n, r)| match r {
            Err(Failure::Wrong(m)) => Some(format!("{n}: {m}")),
            _ => None,
        })
        .collect();
    eprintln!(
        "onnx backend node tests on tract: {passed} passed, {} wrong, {} refused",
        wrong.len(),
        results.len() - passed - wrong.len()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // What tract refuses, it refuses with a pointer to ONNX Runtime.
    let unhelpful: Vec<String> = results
        .iter()
        .filter_map(|(n, r)| match r {
            Err(Failure::Refused(m))
                if !m.contains("is not a tensor") && !m.contains("--runtime ort") =>
            {
                Some(format!("{n}: {m}"))
            }
            _ => None,
        })
        .collect();
    assert!(unhelpful.is_empty(), "{}", unhelpful.join("\n"));
    // Measured: 1014 of 1765.
    assert!(passed > 1000, "only {passed} passed on tract");
}
