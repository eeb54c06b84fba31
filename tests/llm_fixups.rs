//! `onnxq llm add-kv-cache` and `onnxq llm rope`, checked in ONNX Runtime: greedy
//! decoding through the added cache gives the logits of full no-cache runs, and
//! recomputed rotary tables keep the model on the old positions.
mod common;

use std::path::{Path, PathBuf};

use onnxq::runtime::{HostTensor, NamedTensors, Runtime};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ids_feeds(ids: &[i64], positions: &[i64], mask_len: usize) -> NamedTensors {
    let n = ids.len();
    vec![
        (
            "input_ids".into(),
            HostTensor::from_i64(vec![1, n], ids).unwrap(),
        ),
        (
            "attention_mask".into(),
            HostTensor::from_i64(vec![1, mask_len], &vec![1; mask_len]).unwrap(),
        ),
        (
            "position_ids".into(),
            HostTensor::from_i64(vec![1, n], positions).unwrap(),
        ),
    ]
}

fn run(rt: &dyn Runtime, path: &Path, feeds: &NamedTensors) -> NamedTensors {
    let mut sess = rt
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // A model counting positions itself declares no position_ids.
    let wanted: Vec<_> = feeds
        .iter()
        .filter(|(n, _)| sess.inputs().iter().any(|i| &i.name == n))
        .cloned()
        .collect();
    sess.run(&wanted)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn get(outs: &NamedTensors, name: &str) -> Vec<f32> {
    outs.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no output {name}"))
        .1
        .to_f32_vec()
        .unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn argmax(v: &[f32]) -> i64 {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap() as i64
}

/// The no-KV models: two fixtures, the decomposed and dynamo forms of
/// fixtures/decoders generated without a cache, and llama-decomposed counting its
/// positions with a Range (no position_ids input).
fn no_kv_models(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![
        common::fixtures().join("llama-decomposed.onnx"),
        common::fixtures().join("llama-attention23.onnx"),
    ];
    if let Some(py) = common::python() {
        common::py(&py, "nokv_forms.py", &[s(dir)]);
        out.extend(
            ["decomposed", "dynamo", "computed-positions"].map(|f| dir.join(format!("{f}.onnx"))),
        );
    }
    out
}

#[test]
fn added_cache_reproduces_full_runs_in_greedy_decoding() {
    let Some(ort) = common::ort() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for model in no_kv_models(tmp.path()) {
        let stem = model.file_stem().unwrap().to_str().unwrap().to_string();
        let cached = tmp.path().join(format!("{stem}-kv.onnx"));
        let (ok, log) = common::onnxq(&["llm", "add-kv-cache", s(&model), s(&cached)]);
        assert!(ok, "{stem}: {log}");
        let sess = ort.open(&cached).unwrap();
        let past: Vec<_> = sess
            .inputs()
            .iter()
            .filter(|i| i.name.starts_with("past_key_values."))
            .map(|i| i.name.clone())
            .collect();
        assert_eq!(past.len(), 4, "{stem}: two layers, key and value");
        drop(sess);
        let (kv_heads, head_dim) = (2, 16);
        let mut tokens: Vec<i64> = vec![5, 17, 42, 9];
        let mut cache: NamedTensors = past
            .iter()
            .map(|n| {
                let t = HostTensor::from_f32(vec![1, kv_heads, 0, head_dim], &[]).unwrap();
                (n.clone(), t)
            })
            .collect();
        let mut done = 0usize;
        let mut worst = 0f32;
        for step in 0..5 {
            let new = &tokens[done..];
            let positions: Vec<i64> = (done..tokens.len()).map(|p| p as i64).collect();
            let mut feeds = ids_feeds(new, &positions, tokens.len());
            feeds.extend(cache.iter().cloned());
            let out = run(&ort, &cached, &feeds);
            let step_logits = get(&out, "logits");
            let all: Vec<i64> = (0..tokens.len() as i64).collect();
            let full = get(
                &run(&ort, &model, &ids_feeds(&tokens, &all, tokens.len())),
                "logits",
            );
            let vocab = full.len() / tokens.len();
            let d = max_abs(&step_logits, &full[done * vocab..]);
            worst = worst.max(d);
            let peak = full.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(peak > 0.05, "{stem}: logits carry no signal ({peak})");
            assert!(d <= 1e-4, "{stem} step {step}: max abs {d}");
            cache = out
                .into_iter()
                .filter(|(n, _)| n.starts_with("present."))
                .map(|(n, t)| (n.replacen("present.", "past_key_values.", 1), t))
                .collect();
            done = tokens.len();
            tokens.push(argmax(&step_logits[step_logits.len() - vocab..]));
        }
        eprintln!("{stem}: prefill + 4 greedy steps vs full runs: max abs {worst:.2e}");
    }
}

#[test]
fn a_model_with_a_cache_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.onnx");
    let model = common::fixtures().join("llama-decomposed-kv.onnx");
    let (ok, log) = common::onnxq(&["llm", "add-kv-cache", s(&model), s(&out)]);
    assert!(!ok, "{log}");
    assert!(log.contains("already has a KV cache"), "{log}");
    assert!(!out.exists());
}

#[test]
fn a_missing_pattern_names_the_layer_and_part_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = onnxq::load(&common::fixtures().join("llama-decomposed.onnx")).unwrap();
    let g = &mut m.graph;
    // Layer 1's scores get a constant mask: nothing ties it to attention_mask.
    let softmax = g
        .nodes()
        .filter(|(_, n)| n.op_type == "Softmax")
        .map(|(id, _)| id)
        .nth(1)
        .unwrap();
    let add = g.producer(g.node(softmax).input(0).unwrap()).unwrap();
    assert_eq!(g.node(add).op_type, "Add");
    let zero = g
        .add_initializer(onnxq::ir::Tensor::from_f32(
            "constant_mask",
            vec![1, 1, 1, 1],
            &[0.0],
        ))
        .unwrap();
    g.set_input(add, 1, Some(zero));
    let broken = tmp.path().join("broken.onnx");
    onnxq::save(&m, &broken, &Default::default()).unwrap();
    let out = tmp.path().join("out.onnx");
    let (ok, log) = common::onnxq(&["llm", "add-kv-cache", s(&broken), s(&out)]);
    assert!(!ok, "{log}");
    assert!(log.contains("layer 1") && log.contains("mask"), "{log}");
    assert!(!out.exists());
}

fn logits_at(rt: &dyn Runtime, model: &Path, ids: &[i64], first: i64, stride: i64) -> Vec<f32> {
    let pos: Vec<i64> = (0..ids.len() as i64).map(|p| first + stride * p).collect();
    get(&run(rt, model, &ids_feeds(ids, &pos, ids.len())), "logits")
}

#[test]
fn longer_rope_caches_keep_old_positions_and_match_computed_rotary() {
    let Some(ort) = common::ort() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cached = common::fixtures().join("llama-attention23.onnx");
    // Same weights, rotary computed from inv_freq on the fly: the reference beyond
    // the old cache length.
    let computed = common::fixtures().join("llama-decomposed.onnx");
    let long = tmp.path().join("long.onnx");
    let (ok, log) = common::onnxq(&["llm", "rope", s(&cached), s(&long), "--max-length", "2048"]);
    assert!(ok, "{log}");
    assert!(log.contains("was 256"), "{log}");
    let ids = [3i64, 77, 12, 150, 8, 99];
    for first in [0, 100, 250] {
        let (a, b) = (
            logits_at(&ort, &cached, &ids, first, 1),
            logits_at(&ort, &long, &ids, first, 1),
        );
        assert_eq!(a, b, "positions from {first} changed");
    }
    for first in [300, 1500, 2040] {
        let d = max_abs(
            &logits_at(&ort, &long, &ids, first, 1),
            &logits_at(&ort, &computed, &ids, first, 1),
        );
        eprintln!("positions {first}..: extended caches vs computed rotary {d:.2e}");
        assert!(d < 1e-3, "positions from {first}: {d}");
    }
}

#[test]
fn linear_scaling_stretches_positions() {
    let Some(ort) = common::ort() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ids = [3i64, 77, 12, 150, 8, 99];
    for fixture in ["llama-decomposed.onnx", "llama-attention23.onnx"] {
        let model = common::fixtures().join(fixture);
        let scaled = tmp.path().join(format!("scaled-{fixture}"));
        let (ok, log) = common::onnxq(&[
            "llm",
            "rope",
            s(&model),
            s(&scaled),
            "--max-length",
            "512",
            "--scaling",
            "linear:2",
        ]);
        assert!(ok, "{fixture}: {log}");
        // Frequencies halved: position 2p turns by the old angle of p.
        let d = max_abs(
            &logits_at(&ort, &model, &ids, 7, 1),
            &logits_at(&ort, &scaled, &ids, 14, 2),
        );
        let moved = max_abs(
            &logits_at(&ort, &model, &ids, 7, 1),
            &logits_at(&ort, &scaled, &ids, 7, 1),
        );
        eprintln!(
            "{fixture}: linear:2 at 2p vs original at p {d:.2e} (same positions {moved:.2e})"
        );
        assert!(d < 1e-4, "{fixture}: {d}");
        assert!(moved > 1e-3, "{fixture}: scaling changed nothing ({moved})");
    }
    let (ok, log) = common::onnxq(&[
        "llm",
        "rope",
        s(&common::fixtures().join("llama-decomposed.onnx")),
        s(&tmp.path().join("y.onnx")),
        "--max-length",
        "512",
        "--scaling",
        "yarn:4",
    ]);
    assert!(!ok && log.contains("yarn"), "{log}");
}

#[test]
fn ntk_scaling_agrees_between_caches_and_inv_freq() {
    let Some(ort) = common::ort() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let rope = |fixture: &str| {
        let out = tmp.path().join(format!("ntk-{fixture}"));
        let model = common::fixtures().join(fixture);
        let args = ["llm", "rope", s(&model), s(&out), "--max-length", "1024"];
        let (ok, log) = common::onnxq(&[&args[..], &["--scaling", "ntk:4"]].concat());
        assert!(ok, "{fixture}: {log}");
        out
    };
    let (inv, caches) = (
        rope("llama-decomposed.onnx"),
        rope("llama-attention23.onnx"),
    );
    // NTK keeps the highest frequency and divides the lowest by F.
    let m = onnxq::load(&inv).unwrap();
    let f = m
        .graph
        .initializers()
        .find(|(_, t)| t.name() == "model.rotary_emb.inv_freq")
        .map(|(_, t)| t.to_f32().unwrap())
        .unwrap();
    let old = onnxq::load(&common::fixtures().join("llama-decomposed.onnx"))
        .unwrap()
        .graph
        .initializers()
        .find(|(_, t)| t.name() == "model.rotary_emb.inv_freq")
        .map(|(_, t)| t.to_f32().unwrap())
        .unwrap();
    let last = f.len() - 1;
    assert!((f[0] - old[0]).abs() < 1e-6, "{} vs {}", f[0], old[0]);
    assert!(
        (f[last] - old[last] / 4.0).abs() < 1e-6 * old[last],
        "{} vs {}",
        f[last],
        old[last] / 4.0
    );
    let ids = [3i64, 77, 12, 150, 8, 99];
    for first in [0, 600] {
        let d = max_abs(
            &logits_at(&ort, &inv, &ids, first, 1),
            &logits_at(&ort, &caches, &ids, first, 1),
        );
        eprintln!("ntk:4 from {first}: caches vs inv_freq {d:.2e}");
        assert!(d < 1e-4, "positions from {first}: {d}");
    }
}

fn init_f32(path: &Path, name: &str) -> Vec<f32> {
    onnxq::load(path)
        .unwrap()
        .graph
        .initializers()
        .find(|(_, t)| t.name() == name)
        .map(|(_, t)| t.to_f32().unwrap())
        .unwrap_or_else(|| panic!("no {name} in {}", path.display()))
}

/// YaRN on the 256-row caches (head_dim 16, theta 10000): with beta_fast 32 and
/// beta_slow 1 the correction dims are 0 and 4, so frequency 0 is kept, frequencies
/// 4..8 are divided by F, and every entry carries the attention factor 0.1·ln F + 1.
#[test]
fn yarn_keeps_fast_dims_interpolates_slow_ones_and_scales_by_the_attention_factor() {
    let Some(ort) = common::ort() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cached = common::fixtures().join("llama-attention23.onnx");
    let yarn = tmp.path().join("yarn.onnx");
    let args = ["llm", "rope", s(&cached), s(&yarn), "--max-length", "512"];
    let (ok, log) = common::onnxq(&[&args[..], &["--scaling", "yarn:2"]].concat());
    assert!(ok, "{log}");
    let (half, gain) = (8usize, 0.1 * 2f32.ln() + 1.0);
    let [old_cos, old_sin] =
        ["cos", "sin"].map(|t| init_f32(&cached, &format!("model.rotary_emb.{t}_cache")));
    let [cos, sin] =
        ["cos", "sin"].map(|t| init_f32(&yarn, &format!("model.rotary_emb.{t}_cache")));
    assert_eq!(cos.len(), 512 * half);
    // The fixture's caches were computed with f32 angles (≈1.5e-5 rad off at 255 rad),
    // the rewrite uses f64: entries agree to ~1e-5, hence 1e-4.
    for p in 0..256 {
        let (at, old) = (p * half, p * half);
        assert!((cos[at] / gain - old_cos[old]).abs() < 1e-4, "cos[{p}, 0]");
        assert!((sin[at] / gain - old_sin[old]).abs() < 1e-4, "sin[{p}, 0]");
        for j in 4..half {
            // Frequency / 2 at position 2p is the old frequency at p.
            let at2 = 2 * p * half + j;
            assert!(
                (cos[at2] / gain - old_cos[old + j]).abs() < 1e-4,
                "cos[{}, {j}]",
                2 * p
            );
            assert!(
                (sin[at2] / gain - old_sin[old + j]).abs() < 1e-4,
                "sin[{}, {j}]",
                2 * p
            );
        }
    }
    for (c, s) in cos.iter().zip(&sin) {
        assert!((c * c + s * s - gain * gain).abs() < 1e-5);
    }
    // The model runs past the old maximum.
    let ids = [3i64, 77, 12, 150, 8, 99];
    let logits = logits_at(&ort, &yarn, &ids, 500, 1);
    assert!(logits.iter().all(|x| x.is_finite()));
    // inv_freq cannot carry the attention factor; unknown parameters are named.
    let computed = common::fixtures().join("llama-decomposed.onnx");
    let out = tmp.path().join("refused.onnx");
    let (ok, log) = common::onnxq(&[
        "llm",
        "rope",
        s(&computed),
        s(&out),
        "--max-length",
        "512",
        "--scaling",
        "yarn:2",
    ]);
    assert!(!ok && log.contains("yarn needs cos/sin caches"), "{log}");
    let (ok, log) = common::onnxq(&[
        "llm",
        "rope",
        s(&cached),
        s(&out),
        "--max-length",
        "512",
        "--scaling",
        "yarn:2,beta=3",
    ]);
    assert!(!ok && log.contains("'beta=3'"), "{log}");
    assert!(!out.exists());
}
