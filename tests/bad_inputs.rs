//! The bad-input corpus (tests/bad-inputs/, written by its make.py): every file
//! goes through the command a user would run on it and must be refused with the
//! error listed in tests/bad-inputs/EXPECTED.txt — exit 1 or 2 (which of the two is
//! the CLI's choice), never a panic's 101 or a signal, no panic message, no file left
//! behind — or, for handled/, succeed with the note listed there and write no NaN or
//! Inf. Every file of the corpus must be listed.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus() -> PathBuf {
    common::repo().join("tests/bad-inputs")
}

/// file (relative to the corpus) → the error fragment it must produce.
fn expected() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(corpus().join("EXPECTED.txt")).expect("EXPECTED.txt");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (file, fragment) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("EXPECTED.txt: no tab in {line:?}"));
        assert!(
            !fragment.trim().is_empty(),
            "EXPECTED.txt: {file} has no fragment"
        );
        assert!(
            out.insert(file.to_string(), fragment.trim().to_string())
                .is_none(),
            "EXPECTED.txt lists {file} twice"
        );
    }
    out
}

/// Files the cases read that are not cases themselves.
const HELPERS: &[&str] = &[
    "npy/identity.onnx",
    "calib/model.onnx",
    "external/data.bin",
    "external/link-out.bin",
];

/// Corpus files that are inputs to test (not the generator, the list or the files
/// the cases read).
fn corpus_files() -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["lowering", "npy", "model", "external", "calib", "handled"] {
        for e in std::fs::read_dir(corpus().join(sub)).unwrap().flatten() {
            let name = format!("{sub}/{}", e.file_name().to_string_lossy());
            if !HELPERS.contains(&name.as_str()) {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

/// The command for one corpus file: lowering cases run on tract (which lowers
/// them); .npy files are fed to a one-input model; models are quantized to `out`,
/// calibration sets calibrate a one-input model.
fn command(file: &str, out: &Path) -> Command {
    let path = corpus().join(file);
    let mut c = Command::new(common::onnxq_bin());
    if file.starts_with("model/") || file.starts_with("external/") {
        c.arg("quantize").arg(&path).arg(out);
        return c;
    }
    if file.starts_with("handled/") {
        c.arg("quantize").arg(&path).arg(out).arg("--explain");
        return c;
    }
    if file.starts_with("calib/") {
        c.arg("quantize")
            .arg(corpus().join("calib/model.onnx"))
            .arg(out)
            .args(["--algorithm", "static", "--calib"])
            .arg(&path);
        return c;
    }
    if file.starts_with("npy/") {
        c.arg("run")
            .arg(corpus().join("npy/identity.onnx"))
            .arg("--inputs")
            .arg(&path);
    } else {
        c.arg("run").arg(&path);
    }
    c.args(["--runtime", "tract"]);
    c
}

fn check(file: &str, fragment: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let o = command(file, &out).output().expect("running onnxq");
    let err = String::from_utf8_lossy(&o.stderr);
    let code = o.status.code();
    if err.contains("panicked") {
        return Err(format!("{file}: panicked, stderr:\n{err}"));
    }
    if !err.contains(fragment) {
        return Err(format!("{file}: expected {fragment:?} in:\n{err}"));
    }
    let left = std::fs::read_dir(dir.path()).unwrap().count();
    if file.starts_with("handled/") {
        if code != Some(0) {
            return Err(format!("{file}: exit {code:?}, stderr:\n{err}"));
        }
        if out.exists() {
            non_finite_free(&out).map_err(|e| format!("{file}: {e}"))?;
        }
        return Ok(());
    }
    if !matches!(code, Some(1) | Some(2)) {
        return Err(format!("{file}: exit {code:?}, stderr:\n{err}"));
    }
    if left != 0 {
        return Err(format!("{file}: refused, but left {left} file(s) behind"));
    }
    Ok(())
}

/// Every float initializer of the model at `p` is finite.
fn non_finite_free(p: &Path) -> Result<(), String> {
    let m = onnxq::load(p).map_err(|e| e.to_string())?;
    for (_, t) in m.graph.initializers() {
        if matches!(
            t.dtype(),
            onnxq::ir::DType::F32 | onnxq::ir::DType::F16 | onnxq::ir::DType::BF16
        ) {
            let v = t.to_f32().map_err(|e| e.to_string())?;
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return Err(format!("initializer '{}' holds {x}", t.name()));
            }
        }
    }
    Ok(())
}

#[test]
fn every_bad_input_is_refused_with_its_error_and_no_panic() {
    let want = expected();
    let files = corpus_files();
    let listed: Vec<&String> = want.keys().collect();
    assert_eq!(
        files.iter().collect::<Vec<_>>(),
        listed,
        "tests/bad-inputs/EXPECTED.txt must list exactly the corpus files"
    );
    assert!(files.len() >= 40, "{} corpus files", files.len());
    let failures: Vec<String> = want
        .iter()
        .filter_map(|(f, frag)| check(f, frag).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_lowering_errors_name_the_node() {
    // The library entry point gives the same errors without the CLI around it.
    for (file, node) in [
        ("lowering/gbq-bits260.onnx", "node 'embed'"),
        ("lowering/mnb-huge-k-n.onnx", "node 'proj'"),
        ("lowering/dq-empty-zero-point.onnx", "node 'dq'"),
    ] {
        let mut m = onnxq::load(&corpus().join(file)).unwrap();
        let e = onnxq::runtime::lowering::lower_for_tract(&mut m)
            .expect_err(file)
            .to_string();
        assert!(e.contains(node), "{file}: {e}");
    }
}

#[test]
fn the_npy_errors_name_the_file() {
    for file in ["npy/zero-width-unicode-huge.npy", "npy/non-ascii-dtype.npy"] {
        let p: &Path = &corpus().join(file);
        let e = onnxq::tensorfile::read_file(p).expect_err(file).to_string();
        assert!(
            e.contains(p.file_name().unwrap().to_str().unwrap()),
            "{file}: {e}"
        );
    }
}

/// `onnxq quantize` of a corpus file with `args`, into a fresh folder: (exit code,
/// stderr, the output path, the folder).
fn quantize_with(file: &str, args: &[&str]) -> (Option<i32>, String, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let o = Command::new(common::onnxq_bin())
        .arg("quantize")
        .arg(corpus().join(file))
        .arg(&out)
        .args(args)
        .output()
        .expect("running onnxq");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    (o.status.code(), err, out, dir)
}

/// Every algorithm `onnxq quantize` has, with the flags each needs.
const ALGORITHMS: &[&[&str]] = &[
    &["--algorithm", "rtn"],
    &["--algorithm", "rtn", "--asymmetric"],
    &["--algorithm", "rtn", "--format", "qdq"],
    &["--algorithm", "hqq"],
    &["--algorithm", "bnb4"],
    &["--algorithm", "dynamic"],
    &["--algorithm", "static"],
    &["--algorithm", "gptq"],
    &["--algorithm", "awq"],
];

#[test]
fn nan_and_inf_weights_are_refused_by_every_algorithm_with_the_element_named() {
    let mut failures = Vec::new();
    for (file, value) in [
        ("model/nan-weight.onnx", "NaN"),
        ("model/inf-weight.onnx", "inf"),
    ] {
        for args in ALGORITHMS {
            let (code, err, _, dir) = quantize_with(file, args);
            let named = err.contains(&format!("non-finite weight value {value}"))
                || err.contains(&format!("is {value}"));
            let left = std::fs::read_dir(dir.path()).unwrap().count();
            if !matches!(code, Some(1) | Some(2)) || !named || left != 0 || err.contains("panicked")
            {
                failures.push(format!(
                    "{file} {args:?}: exit {code:?}, {left} file(s) left:\n{err}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The scale of block 0 of output column 2 (K = 64 in blocks of 32, N = 16), read
/// from the MatMulNBits or blocked DequantizeLinear the model holds.
fn column2_block0_scale(p: &Path) -> Option<f32> {
    let m = onnxq::load(p).unwrap();
    let g = &m.graph;
    for (_, n) in g.nodes() {
        let (at, scales) = match n.op_type.as_str() {
            // [N, K / block] flattened.
            "MatMulNBits" => (2 * 2, n.input(2)?),
            // [K / block, N].
            "DequantizeLinear" if n.attr_int("block_size").is_some() => (2, n.input(1)?),
            _ => continue,
        };
        return Some(g.initializer(scales)?.to_f32().unwrap()[at]);
    }
    None
}

#[test]
fn an_all_zero_block_gets_scale_zero_and_no_algorithm_writes_nan() {
    let mut failures = Vec::new();
    for args in ALGORITHMS {
        let (code, err, out, _dir) = quantize_with("handled/zero-block.onnx", args);
        if code != Some(0) {
            failures.push(format!("{args:?}: exit {code:?}:\n{err}"));
            continue;
        }
        if let Err(e) = non_finite_free(&out) {
            failures.push(format!("{args:?}: {e}"));
        }
        // Block quantizers with a per-block scale: the zero block's scale is 0. GPTQ
        // in its default act-order fits a block after the error feedback of columns
        // processed earlier has moved its weights, so only its finiteness is checked.
        let blocked = !args.contains(&"bnb4")
            && !args.contains(&"dynamic")
            && !args.contains(&"static")
            && !args.contains(&"gptq");
        if blocked {
            match column2_block0_scale(&out) {
                Some(0.0) => {}
                other => failures.push(format!("{args:?}: zero block's scale {other:?}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
