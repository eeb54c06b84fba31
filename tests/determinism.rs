//! Determinism: `onnxq quantize` gives byte-identical output for the same input and
//! options across runs and across thread counts (RAYON_NUM_THREADS=1, 2, 8), for every
//! algorithm, the calibrated ones (GPTQ, AWQ, static int8 on a text) included.
mod common;

use std::path::Path;
use std::process::Command;

/// `--algorithm` and its extra flags. Calibration is on the fixture text, few samples
/// so the suite stays quick; the code paths (Hessians, scale search, histograms,
/// parallel reductions) are the ones full calibration takes.
fn algorithms() -> Vec<(&'static str, Vec<String>)> {
    let f = common::fixtures();
    let text = |extra: &[&str]| {
        let mut v: Vec<String> = vec![
            "--calib-text".into(),
            f.join("sample.txt").display().to_string(),
            "--tokenizer".into(),
            f.join("tokenizer.json").display().to_string(),
            "--calib-samples".into(),
            "4".into(),
            "--calib-seqlen".into(),
            "32".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    vec![
        ("rtn", vec!["--embeddings".into()]),
        (
            "rtn",
            vec!["--format".into(), "qdq".into(), "--asymmetric".into()],
        ),
        ("hqq", vec![]),
        ("bnb4", vec![]),
        ("dynamic", vec![]),
        ("static", text(&[])),
        ("static", text(&["--calib-method", "entropy"])),
        ("gptq", text(&["--act-order"])),
        ("awq", text(&[])),
    ]
}

fn quantize(out: &Path, algorithm: &str, extra: &[String], threads: u32) -> Vec<u8> {
    let o = Command::new(common::onnxq_bin())
        .arg("quantize")
        .arg(common::fixtures().join("llama-decomposed.onnx"))
        .arg(out)
        .args(["--no-verify", "--algorithm", algorithm])
        .args(extra)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .output()
        .expect("running onnxq");
    assert!(
        o.status.success(),
        "{algorithm} {extra:?} with {threads} threads: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read(out).unwrap()
}

#[test]
fn every_algorithm_writes_the_same_bytes_at_1_2_and_8_threads_and_on_a_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, (algorithm, extra)) in algorithms().iter().enumerate() {
        let out = |t: &str| tmp.path().join(format!("{i}-{t}.onnx"));
        let first = quantize(&out("1"), algorithm, extra, 1);
        let original = std::fs::read(common::fixtures().join("llama-decomposed.onnx")).unwrap();
        assert_ne!(first, original, "{algorithm} {extra:?} changed nothing");
        for (t, threads) in [("2", 2), ("8", 8), ("8-again", 8)] {
            let again = quantize(&out(t), algorithm, extra, threads);
            if again != first {
                let at = first.iter().zip(&again).position(|(a, b)| a != b);
                failures.push(format!(
                    "{algorithm} {extra:?}: {threads} threads ({t}) differ from 1 thread \
                     ({} vs {} bytes, first difference at {at:?})",
                    again.len(),
                    first.len()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
