//! Kill-safety: onnxq is SIGKILLed at seeded moments while it overwrites an output
//! that has external data. Whatever the moment, the output path then loads as either
//! the complete old model or the complete new one (every tensor's bytes equal to one
//! of them), and the next run leaves no temp file and no stale data file behind.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// `onnxq quantize` of the tiny decoder to `out`, weights over 1 KiB in `out.onnx.data`.
fn quantize(out: &Path, bits: &str) -> Command {
    let mut c = Command::new(common::onnxq_bin());
    c.arg("quantize")
        .arg(common::fixtures().join("llama-decomposed.onnx"))
        .arg(out)
        .args(["--no-verify", "--bits", bits])
        .args([
            "--external-data",
            "out.onnx.data",
            "--size-threshold",
            "1024",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn run_ok(mut c: Command) {
    let o = c.output().expect("running onnxq");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The model at `p` with every tensor inline, hashed: equal for the same graph and
/// tensor bytes whatever the data files are called. None when it does not load.
fn fingerprint(p: &Path) -> Option<[u8; 32]> {
    let m = onnxq::load(p).ok()?;
    let bytes = onnxq::io::to_bytes(&m).ok()?;
    Some(Sha256::digest(&bytes).into())
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

/// Replaces `dir`'s contents with `from`'s.
fn reset(dir: &Path, from: &Path) {
    for n in names_in(dir) {
        std::fs::remove_file(dir.join(n)).unwrap();
    }
    for n in names_in(from) {
        std::fs::copy(from.join(&n), dir.join(&n)).unwrap();
    }
}

/// A small deterministic generator (splitmix64) for the kill moments.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn a_killed_overwrite_leaves_the_old_or_the_new_model_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let old_dir = tmp.path().join("old");
    let new_dir = tmp.path().join("new");
    let work = tmp.path().join("work");
    for d in [&old_dir, &new_dir, &work] {
        std::fs::create_dir(d).unwrap();
    }
    run_ok(quantize(&old_dir.join("out.onnx"), "4"));
    run_ok(quantize(&new_dir.join("out.onnx"), "8"));
    assert_eq!(names_in(&old_dir), ["out.onnx", "out.onnx.data"]);
    let old = fingerprint(&old_dir.join("out.onnx")).expect("old loads");
    let new = fingerprint(&new_dir.join("out.onnx")).expect("new loads");
    assert_ne!(old, new, "the two runs must be told apart");

    // How long an uninterrupted overwrite takes: kill moments spread over it.
    reset(&work, &old_dir);
    let t0 = Instant::now();
    run_ok(quantize(&work.join("out.onnx"), "8"));
    let span = t0.elapsed().as_micros().max(1000) as u64;
    assert_eq!(fingerprint(&work.join("out.onnx")), Some(new));

    let rounds: u64 = std::env::var("ONNXQ_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut seed = 22u64;
    let (mut saw_old, mut saw_new) = (0, 0);
    for round in 0..rounds {
        reset(&work, &old_dir);
        // Up to 1.2x the run: some kills land after it finished, most during it.
        let at = Duration::from_micros(splitmix(&mut seed) % (span + span / 5));
        let mut child = quantize(&work.join("out.onnx"), "8").spawn().unwrap();
        std::thread::sleep(at);
        let _ = child.kill(); // SIGKILL on unix
        let _ = child.wait();
        let got = fingerprint(&work.join("out.onnx"));
        assert!(
            got == Some(old) || got == Some(new),
            "round {round}: killed after {at:?}, the output is neither the old nor the new \
             model (files: {:?})",
            names_in(&work)
        );
        if got == Some(old) {
            saw_old += 1;
        } else {
            saw_new += 1;
        }
        // The next run cleans up whatever the killed one left.
        run_ok(quantize(&work.join("out.onnx"), "8"));
        assert_eq!(fingerprint(&work.join("out.onnx")), Some(new));
        let left = names_in(&work);
        assert_eq!(left.len(), 2, "round {round}: files left: {left:?}");
        assert!(
            left.iter().all(|n| !n.contains("onnxq-tmp")),
            "round {round}: temp files left: {left:?}"
        );
    }
    eprintln!("{rounds} kills: {saw_old} left the old model, {saw_new} the new one");
}

#[test]
fn an_overwrite_writes_its_data_under_a_fresh_name_then_removes_the_old() {
    // The old model's data file (hard-linked, so the link sees the same inode) keeps
    // its bytes while the new model is written: until the model file is renamed over,
    // the old model still finds its own data.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.onnx");
    run_ok(quantize(&out, "4"));
    let data = tmp.path().join("out.onnx.data");
    let link: PathBuf = tmp.path().join("held");
    std::fs::hard_link(&data, &link).unwrap();
    let before = std::fs::read(&link).unwrap();
    run_ok(quantize(&out, "8"));
    assert_eq!(std::fs::read(&link).unwrap(), before);
    std::fs::remove_file(&link).unwrap();
    // The new data went under a fresh name and the old file is gone.
    assert_eq!(names_in(tmp.path()), ["out.onnx", "out.onnx.v1.data"]);
    // A third run goes back to the first name.
    run_ok(quantize(&out, "4"));
    assert_eq!(names_in(tmp.path()), ["out.onnx", "out.onnx.data"]);
    assert_eq!(std::fs::read(&data).unwrap(), before);
}
