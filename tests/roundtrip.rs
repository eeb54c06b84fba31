//! Load → save with no pass keeps every field: proven on the ONNX backend test
//! models shipped in the onnx package and on our fixtures, by onnx message equality
//! and identical ONNX Runtime outputs (tests/py/roundtrip_check.py).
mod common;

use std::path::Path;

use onnxq::io::{Layout, SaveOptions};

fn resave_all(models: &[std::path::PathBuf], out_dir: &Path, opts: &SaveOptions) -> String {
    let mut pairs = String::new();
    for (i, m) in models.iter().enumerate() {
        let model = onnxq::load(m).unwrap_or_else(|e| panic!("{}: {e}", m.display()));
        let dir = out_dir.join(i.to_string());
        let out = dir.join(m.file_name().unwrap());
        onnxq::save(&model, &out, opts).unwrap_or_else(|e| panic!("{}: {e}", m.display()));
        pairs.push_str(&format!("{}\t{}\n", m.display(), out.display()));
    }
    pairs
}

/// What roundtrip_check.py counted (its last stdout line is this as JSON).
#[derive(serde::Deserialize, Debug)]
struct Counts {
    models: usize,
    equal: usize,
    compared: usize,
    not_runnable: usize,
    /// False only without ONNXQ_REQUIRE_ORT (the script fails otherwise).
    have_ort: bool,
}

fn check(python: &Path, pairs: &str, tmp: &Path) -> Counts {
    let list = tmp.join("pairs.tsv");
    std::fs::write(&list, pairs).unwrap();
    let out = common::py(python, "roundtrip_check.py", &[list.to_str().unwrap()]);
    let json = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no counts from roundtrip_check.py:\n{out}"));
    let c: Counts = serde_json::from_str(json).unwrap();
    eprintln!("{c:?}");
    // The script fails on any difference; these say that nothing was left out.
    assert_eq!(c.models, pairs.lines().count(), "{c:?}");
    assert_eq!(c.equal, c.models, "{c:?}");
    if c.have_ort {
        assert_eq!(c.compared + c.not_runnable, c.models, "{c:?}");
    } else {
        eprintln!("SKIPPED: onnxruntime is not importable; outputs were not compared");
    }
    c
}

/// The two numbers README.md's round-trip sentence states: models that round-trip
/// as messages, and of those the ones compared in ONNX Runtime.
fn readme_counts() -> (usize, usize) {
    let readme = std::fs::read_to_string(common::repo().join("README.md")).unwrap();
    let flat = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    let number = |before: &str| -> usize {
        let end = flat
            .find(before)
            .unwrap_or_else(|| panic!("README.md no longer says {before:?}"));
        let digits: String = flat[..end]
            .trim_end()
            .rsplit(|c: char| !(c.is_ascii_digit() || c == ' '))
            .next()
            .unwrap()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("no number before {before:?} in README.md"))
    };
    (
        number("ONNX backend test models round-trip"),
        number("of them that ONNX Runtime runs"),
    )
}

#[test]
fn onnx_backend_models_round_trip() {
    let Some(python) = common::python() else {
        return;
    };
    let data = common::onnx_backend_data(&python);
    let models = common::models_under(&data);
    let (readme_models, readme_compared) = readme_counts();
    assert_eq!(
        models.len(),
        readme_models,
        "README.md's round-trip count vs the onnx backend models under {}",
        data.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let pairs = resave_all(&models, tmp.path(), &SaveOptions::default());
    let c = check(&python, &pairs, tmp.path());
    if !c.have_ort {
        return;
    }
    // The rest fail in the original already (ops or types ONNX Runtime or numpy
    // lack, sequence inputs the harness cannot build, a missing locale for
    // StringNormalizer): a change here means a claim in README.md changed.
    assert_eq!(
        c.compared, readme_compared,
        "models compared in ONNX Runtime vs README.md ({c:?})"
    );
}

#[test]
fn fixtures_round_trip_in_every_layout() {
    let Some(python) = common::python() else {
        return;
    };
    let models = common::models_under(&common::fixtures());
    assert!(!models.is_empty(), "no fixtures: run fixtures/generate.py");
    let layouts = [
        Layout::Keep,
        Layout::Inline,
        Layout::External {
            file: "weights.bin".into(),
            threshold: 256,
        },
    ];
    for layout in layouts {
        let tmp = tempfile::tempdir().unwrap();
        let opts = SaveOptions {
            layout,
            ..Default::default()
        };
        let pairs = resave_all(&models, tmp.path(), &opts);
        let c = check(&python, &pairs, tmp.path());
        // Every fixture runs in ONNX Runtime (fixtures/generate.py checks that).
        if c.have_ort {
            assert_eq!(c.compared, models.len(), "{:?}: {c:?}", opts.layout);
        }
    }
}
