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

fn check(python: &Path, pairs: &str, tmp: &Path) {
    let list = tmp.join("pairs.tsv");
    std::fs::write(&list, pairs).unwrap();
    let out = common::py(python, "roundtrip_check.py", &[list.to_str().unwrap()]);
    eprintln!("{}", out.lines().last().unwrap_or(""));
}

#[test]
fn onnx_backend_models_round_trip() {
    let Some(python) = common::python() else {
        return;
    };
    let data = common::onnx_backend_data(&python);
    let models = common::models_under(&data);
    assert!(
        models.len() > 1000,
        "expected the onnx node tests under {}, found {}",
        data.display(),
        models.len()
    );
    let tmp = tempfile::tempdir().unwrap();
    let pairs = resave_all(&models, tmp.path(), &SaveOptions::default());
    check(&python, &pairs, tmp.path());
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
        check(&python, &pairs, tmp.path());
    }
}
