//! `onnxq llm rope --rotary decomposed|fused|com.microsoft`: every layer's rotary
//! converted between the fused RotaryEmbedding nodes and the decomposed rotate_half
//! subgraph leaves the model's outputs (logits and KV cache) unchanged, on ONNX
//! Runtime and on tract, including with a non-empty past (positions offset).
mod common;

use std::path::{Path, PathBuf};

use common::forms::{decoder_feeds, Rng};
use onnxq::ir::Dim;
use onnxq::llm::{DecoderMap, RotaryKind};
use onnxq::runtime::{self, NamedTensors, Runtime};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(rt: &dyn Runtime, path: &Path, feeds: &NamedTensors) -> Result<NamedTensors, String> {
    let mut sess = rt.open(path).map_err(|e| e.to_string())?;
    let wanted: Vec<_> = feeds
        .iter()
        .filter(|(n, _)| sess.inputs().iter().any(|i| &i.name == n))
        .cloned()
        .collect();
    sess.run(&wanted).map_err(|e| e.to_string())
}

fn rotary_kinds(path: &Path) -> Vec<RotaryKind> {
    let m = onnxq::io::load(path).unwrap();
    let map = DecoderMap::build(&m.graph).unwrap();
    map.layers
        .iter()
        .map(|l| l.attention.rotary.as_ref().expect("a rotary").kind)
        .collect()
}

fn count_ops(path: &Path, domain: &str, op: &str) -> usize {
    let m = onnxq::io::load(path).unwrap();
    m.graph.nodes().filter(|(_, n)| n.is(domain, op)).count()
}

/// The sources: the decomposed fixtures (rotary computed from inv_freq), opset-24
/// (ONNX RotaryEmbedding on gathered rows, 3-D input), attention23 (ONNX
/// RotaryEmbedding reading the caches with position_ids), dynamo.
fn sources() -> Vec<(&'static str, PathBuf, RotaryKind)> {
    let f = common::fixtures();
    vec![
        (
            "decomposed",
            f.join("decoders/decomposed.onnx"),
            RotaryKind::Decomposed,
        ),
        (
            "opset24",
            f.join("decoders/opset24.onnx"),
            RotaryKind::RotaryEmbedding,
        ),
        (
            "dynamo",
            f.join("decoders/dynamo.onnx"),
            RotaryKind::Decomposed,
        ),
        (
            "attention23-kv",
            f.join("llama-attention23-kv.onnx"),
            RotaryKind::RotaryEmbedding,
        ),
        (
            "decomposed-kv",
            f.join("llama-decomposed-kv.onnx"),
            RotaryKind::Decomposed,
        ),
    ]
}

const TARGETS: [(&str, RotaryKind); 3] = [
    ("decomposed", RotaryKind::Decomposed),
    ("fused", RotaryKind::RotaryEmbedding),
    ("com.microsoft", RotaryKind::MicrosoftRotaryEmbedding),
];

/// Feeds for the fixture: the forms' shapes, or llama-*'s (read from the session).
fn feeds_for(
    rt: &dyn Runtime,
    path: &Path,
    ids: &[i64],
    batch: usize,
    past: usize,
    rng: &mut Rng,
) -> NamedTensors {
    let mut f = decoder_feeds(ids, batch, past, None, rng);
    // Past inputs sized from the model's declared [batch, kv_heads, past, head_dim].
    let sess = rt.open(path).unwrap();
    f.retain(|(n, _)| !n.starts_with("past_key_values."));
    for i in sess
        .inputs()
        .iter()
        .filter(|i| i.name.starts_with("past_key_values."))
    {
        let dims: Vec<usize> = i
            .dims
            .as_ref()
            .expect("past shape declared")
            .iter()
            .enumerate()
            .map(|(k, d)| match (k, d) {
                (0, _) => batch,
                (2, _) => past,
                (_, Dim::Value(n)) => *n as usize,
                _ => panic!("{}: dim {k} of {} unknown", path.display(), i.name),
            })
            .collect();
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.signed()).collect();
        f.push((
            i.name.clone(),
            runtime::HostTensor::from_f32(dims, &v).unwrap(),
        ));
    }
    f
}

#[test]
fn converted_rotary_keeps_the_outputs_on_ort_and_tract() {
    let Some(ort) = common::ort() else { return };
    let tract = runtime::tract::TractRuntime;
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(23);
    let mut tract_checked = 0;
    for (name, src, kind) in sources() {
        assert!(rotary_kinds(&src).iter().all(|k| *k == kind), "{name}");
        for (target, want) in TARGETS {
            let out = tmp.path().join(format!("{name}-{target}.onnx"));
            let (ok, log) = common::onnxq(&["llm", "rope", s(&src), s(&out), "--rotary", target]);
            assert!(ok, "{name} -> {target}: {log}");
            let kinds = rotary_kinds(&out);
            assert!(
                kinds.iter().all(|k| *k == want),
                "{name} -> {target}: {kinds:?}"
            );
            // The fused forms really are one node per rotation, the decomposed none.
            let fused = count_ops(&out, "", "RotaryEmbedding")
                + count_ops(&out, "com.microsoft", "RotaryEmbedding");
            let expect = if want == RotaryKind::Decomposed {
                0
            } else {
                2 * kinds.len()
            };
            assert_eq!(fused, expect, "{name} -> {target}");
            // (batch, new tokens, past): prefill, and decoding after a cache so the
            // position offset matters.
            for (batch, seq, past) in [(2, 5, 0), (1, 4, 3), (2, 1, 6)] {
                let ids: Vec<i64> = (0..batch * seq).map(|_| rng.token()).collect();
                let feeds = feeds_for(&ort, &src, &ids, batch, past, &mut rng);
                let want = run(&ort, &src, &feeds).unwrap();
                let got = run(&ort, &out, &feeds)
                    .unwrap_or_else(|e| panic!("{name} -> {target} on ORT: {e}"));
                let d = common::max_diff(&want, &got);
                eprintln!("{name} -> {target} (b={batch} s={seq} past={past}) ORT: {d:.2e}");
                assert!(
                    d <= 1e-4,
                    "{name} -> {target} (b={batch} s={seq} past={past}): {d}"
                );
                // tract: where it runs the original, the conversion must run and agree.
                if let Ok(tw) = run(&tract, &src, &feeds) {
                    let tg = run(&tract, &out, &feeds)
                        .unwrap_or_else(|e| panic!("{name} -> {target} on tract: {e}"));
                    let d = common::max_diff(&tw, &tg);
                    eprintln!("{name} -> {target} (b={batch} s={seq} past={past}) tract: {d:.2e}");
                    assert!(d <= 1e-4, "{name} -> {target} tract: {d}");
                    tract_checked += 1;
                }
            }
        }
    }
    // tract runs at least the decomposed-core fixtures.
    assert!(
        tract_checked >= 9,
        "tract compared only {tract_checked} runs"
    );
}

#[test]
fn conversions_round_trip() {
    // fused -> decomposed -> fused -> com.microsoft -> decomposed gives the same outputs.
    let Some(ort) = common::ort() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = common::fixtures().join("decoders/opset24.onnx");
    let mut prev = src.clone();
    for (i, target) in [
        "decomposed",
        "fused",
        "com.microsoft",
        "decomposed",
        "fused",
    ]
    .iter()
    .enumerate()
    {
        let out = tmp.path().join(format!("{i}-{target}.onnx"));
        let (ok, log) = common::onnxq(&["llm", "rope", s(&prev), s(&out), "--rotary", target]);
        assert!(ok, "step {i} -> {target}: {log}");
        prev = out;
    }
    let mut rng = Rng::new(5);
    let ids: Vec<i64> = (0..3).map(|_| rng.token()).collect();
    let feeds = feeds_for(&ort, &src, &ids, 1, 4, &mut rng);
    let d = common::max_diff(
        &run(&ort, &src, &feeds).unwrap(),
        &run(&ort, &prev, &feeds).unwrap(),
    );
    assert!(d <= 1e-4, "{d}");
}

#[test]
fn the_genai_form_is_refused_naming_the_layer_and_part_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.onnx");
    let src = common::fixtures().join("decoders/genai.onnx");
    let (ok, log) = common::onnxq(&["llm", "rope", s(&src), s(&out), "--rotary", "decomposed"]);
    assert!(!ok, "{log}");
    assert!(log.contains("layer 0") && log.contains("rotary"), "{log}");
    assert!(log.contains("GroupQueryAttention"), "{log}");
    assert!(!out.exists());
}

#[test]
fn a_broken_rotate_half_is_refused_naming_the_layer_and_part() {
    // Layer 1's k rotation in the decomposed fixture, with rotate_half's Neg replaced
    // by an Identity: no longer the pattern, so the conversion must refuse and name it.
    let tmp = tempfile::tempdir().unwrap();
    let mut m = onnxq::io::load(&common::fixtures().join("decoders/decomposed.onnx")).unwrap();
    let map = DecoderMap::build(&m.graph).unwrap();
    let k_add = map.layers[1].attention.rotary.as_ref().unwrap().nodes[1].clone();
    let add = m
        .graph
        .nodes()
        .find(|(_, n)| n.name() == k_add)
        .map(|(id, _)| id)
        .unwrap();
    // Walk Add <- Mul(rot, sin) <- Concat <- Neg.
    let g = &m.graph;
    let neg = g
        .node(add)
        .inputs()
        .iter()
        .flatten()
        .filter_map(|v| g.producer(*v))
        .flat_map(|mul| {
            g.node(mul)
                .inputs()
                .iter()
                .flatten()
                .copied()
                .collect::<Vec<_>>()
        })
        .filter_map(|v| g.producer(v))
        .filter(|c| g.node(*c).is("", "Concat"))
        .filter_map(|c| g.node(c).input(0).and_then(|v| g.producer(v)))
        .find(|n| g.node(*n).is("", "Neg"))
        .expect("the k rotation's Neg");
    m.graph.node_mut(neg).op_type = "Sqrt".into();
    let bad = tmp.path().join("bad.onnx");
    onnxq::io::save(&m, &bad, &Default::default()).unwrap();
    let out = tmp.path().join("out.onnx");
    let (ok, log) = common::onnxq(&["llm", "rope", s(&bad), s(&out), "--rotary", "fused"]);
    assert!(!ok, "{log}");
    assert!(log.contains("layer 1") && log.contains("rotary"), "{log}");
    assert!(!out.exists());
}
