//! Bad input gets a clear error naming the file/tensor/node, never a panic, and no
//! output is left behind; external data and the 2 GB limit are handled.
mod common;

use std::process::Command;

use onnxq::io::{Layout, SaveOptions};

fn model_with_external(dir: &std::path::Path) -> std::path::PathBuf {
    let m = common::build::mlp(false);
    let p = dir.join("ext.onnx");
    let opts = SaveOptions {
        layout: Layout::External {
            file: "ext.onnx.data".into(),
            threshold: 128,
        },
        ..Default::default()
    };
    onnxq::save(&m, &p, &opts).unwrap();
    p
}

fn load_err(p: &std::path::Path) -> String {
    onnxq::load(p).expect_err("load must fail").to_string()
}

#[test]
fn truncated_and_garbage_files_are_refused_with_the_file_named() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("m.onnx");
    onnxq::save(&common::build::mlp(false), &good, &Default::default()).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cut = tmp.path().join("cut.onnx");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(load_err(&cut).contains("cut.onnx"));
    let junk = tmp.path().join("junk.onnx");
    std::fs::write(&junk, b"\xff\xfe this is not a protobuf at all \x00\x01").unwrap();
    assert!(load_err(&junk).contains("junk.onnx"));
    let empty = tmp.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    assert!(load_err(&empty).contains("empty"));
}

#[test]
fn missing_short_and_escaping_external_data_name_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let p = model_with_external(tmp.path());
    let data = tmp.path().join("ext.onnx.data");
    let full = std::fs::read(&data).unwrap();
    std::fs::write(&data, &full[..full.len() - 100]).unwrap();
    let e = load_err(&p);
    assert!(e.contains("tensor '") && e.contains("past the end"), "{e}");
    std::fs::remove_file(&data).unwrap();
    let e = load_err(&p);
    assert!(e.contains("tensor '") && e.contains("cannot open"), "{e}");
    // A location that escapes the model's folder.
    let mut m = std::fs::read(&p).unwrap();
    let needle = b"ext.onnx.data";
    let pos = m.windows(needle.len()).position(|w| w == needle).unwrap();
    m[pos..pos + needle.len()].copy_from_slice(b"../etc/passwd");
    std::fs::write(&p, &m).unwrap();
    let e = load_err(&p);
    assert!(e.contains("escapes the model's folder"), "{e}");
}

#[test]
fn external_data_loads_mapped_and_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let p = model_with_external(tmp.path());
    let m = onnxq::load(&p).unwrap();
    let ext = m
        .graph
        .initializers()
        .filter(|(_, t)| t.is_external())
        .count();
    assert_eq!(ext, 3, "three initializers of >= 128 bytes went external");
    // Keep layout into another folder: data file written next to the new model.
    let out = tmp.path().join("copy/m.onnx");
    let r = onnxq::save(&m, &out, &Default::default()).unwrap();
    // The input's conventional `<model>.data` is named after the output.
    assert_eq!(r.data_files.keys().collect::<Vec<_>>(), ["m.onnx.data"]);
    let again = onnxq::load(&out).unwrap();
    let a: Vec<_> = m
        .graph
        .initializers()
        .map(|(_, t)| t.raw_bytes().unwrap().to_vec())
        .collect();
    let b: Vec<_> = again
        .graph
        .initializers()
        .map(|(_, t)| t.raw_bytes().unwrap().to_vec())
        .collect();
    assert_eq!(a, b);
}

#[test]
fn the_two_gigabyte_limit_moves_the_largest_tensors_out() {
    let tmp = tempfile::tempdir().unwrap();
    let m = common::build::mlp(true);
    let out = tmp.path().join("big.onnx");
    // An injected limit of 20 kB stands in for protobuf's 2 GB.
    let opts = SaveOptions {
        layout: Layout::Keep,
        size_limit: 20_000,
    };
    let r = onnxq::save(&m, &out, &opts).unwrap();
    assert!(r.model_bytes <= 20_000, "{}", r.model_bytes);
    assert!(r.moved_for_limit >= 1);
    assert!(r.data_files.contains_key("big.onnx.data"));
    let back = onnxq::load(&out).unwrap();
    assert!(back.graph.initializers().any(|(_, t)| t.is_external()));
    // All inline is refused rather than written broken.
    let opts = SaveOptions {
        layout: Layout::Inline,
        size_limit: 20_000,
    };
    let e = onnxq::save(&m, &tmp.path().join("inline.onnx"), &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("limit"), "{e}");
    assert!(!tmp.path().join("inline.onnx").exists());
}

#[test]
fn a_cycle_is_reported_with_the_node_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = common::build::mlp(false);
    let g = &mut m.graph;
    // Feed relu's output back into fc0's Add: a cycle.
    let add = g
        .node_ids()
        .into_iter()
        .find(|&n| g.node(n).op_type == "Add")
        .unwrap();
    let h2 = g.find("h2").unwrap();
    g.set_input(add, 1, Some(h2));
    let out = tmp.path().join("cyc.onnx");
    let e = onnxq::save(&m, &out, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cycle") && e.contains("node '"), "{e}");
    assert!(
        std::fs::read_dir(tmp.path()).unwrap().next().is_none(),
        "no file, not even a temp file"
    );
}

#[test]
fn cli_errors_exit_nonzero_without_panicking() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.onnx");
    std::fs::write(&junk, b"garbage").unwrap();
    let out = tmp.path().join("o.onnx");
    for args in [
        vec!["inspect", junk.to_str().unwrap()],
        vec!["convert", junk.to_str().unwrap(), out.to_str().unwrap()],
        vec!["quantize", junk.to_str().unwrap(), out.to_str().unwrap()],
    ] {
        let o = Command::new(common::onnxq_bin())
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("junk.onnx") && !err.contains("panicked"),
            "{err}"
        );
        assert!(!out.exists());
    }
}

#[test]
fn inspect_reports_ops_parameters_and_quantization() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.onnx");
    onnxq::save(&common::build::mlp(true), &p, &Default::default()).unwrap();
    let o = Command::new(common::onnxq_bin())
        .args(["inspect", p.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["op_histogram"]["MatMul"], 4);
    assert_eq!(
        j["parameters"],
        64 * 96 + 96 + 96 * 64 + 32 * 96 + 32 + 48 * 96 + 96 * 16 + 16 * 64
    );
    assert_eq!(j["inputs"].as_array().unwrap().len(), 2);
    assert!(j["quantized_ops"].as_object().unwrap().is_empty());
}
