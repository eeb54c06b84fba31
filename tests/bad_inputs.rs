//! The bad-input corpus (tests/bad-inputs/, written by its make.py): every file
//! goes through the command a user would run on it and must be refused with the
//! error listed in tests/bad-inputs/EXPECTED.txt — a non-zero exit that is not a
//! panic's (101), and no panic message. Every file of the corpus must be listed.
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

/// Corpus files that are inputs to test (not the generator, the list or the model
/// the .npy files are fed to).
fn corpus_files() -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["lowering", "npy"] {
        for e in std::fs::read_dir(corpus().join(sub)).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name != "identity.onnx" {
                out.push(format!("{sub}/{name}"));
            }
        }
    }
    out.sort();
    out
}

/// The command for one corpus file: lowering cases run on tract (which lowers
/// them); .npy files are fed to a one-input model.
fn command(file: &str) -> Command {
    let path = corpus().join(file);
    let mut c = Command::new(common::onnxq_bin());
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
    let o = command(file).output().expect("running onnxq");
    let err = String::from_utf8_lossy(&o.stderr);
    let code = o.status.code();
    if code == Some(0) || code == Some(101) || code.is_none() || err.contains("panicked") {
        return Err(format!("{file}: exit {code:?}, stderr:\n{err}"));
    }
    if !err.contains(fragment) {
        return Err(format!("{file}: expected {fragment:?} in:\n{err}"));
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
    assert!(files.len() >= 15, "{} corpus files", files.len());
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
