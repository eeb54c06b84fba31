//! `verify`: zero error for a model against itself, the analytically expected
//! error for a model with one weight perturbed, thresholds that set the exit code.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use onnxq::ir::*;
use onnxq::runtime::{HostTensor, NamedTensors, RuntimeKind};
use onnxq::verify::{compare, random_inputs, InputHints, VerifyOptions};

fn ort_ok() -> bool {
    if onnxq::runtime::ort::available() {
        return true;
    }
    assert!(
        !common::required(),
        "ONNXQ_REQUIRE_ORT=1 but ONNX Runtime is not available"
    );
    eprintln!("SKIPPED the ONNX Runtime half: not available");
    false
}

fn runtimes() -> Vec<RuntimeKind> {
    let mut r = vec![RuntimeKind::Tract];
    if ort_ok() {
        r.push(RuntimeKind::Ort);
    }
    r
}

/// y = x·W + b, x [batch, 4], W [4, 3].
fn linear_model(w: &[f32], b: &[f32], output: &str) -> Model {
    let mut m = Model {
        ir_version: Some(8),
        opset_import: vec![OpsetImport {
            domain: Some(String::new()),
            version: Some(17),
        }],
        has_graph: true,
        ..Default::default()
    };
    let g = &mut m.graph;
    g.name = Some("linear".into());
    let ty = |d0: Dim, n: i64| TypeInfo {
        kind: TypeKind::Tensor {
            elem_type: Some(DType::F32.code()),
            shape: Some(
                [d0, Dim::Value(n)]
                    .into_iter()
                    .map(|dim| ShapeDim {
                        dim,
                        denotation: None,
                    })
                    .collect(),
            ),
        },
        denotation: None,
    };
    let batch = Dim::Param("batch".into());
    let x = g
        .add_input(
            "x",
            ValueInfo {
                ty: Some(ty(batch.clone(), 4)),
                ..Default::default()
            },
        )
        .unwrap();
    let wv = g
        .add_initializer(Tensor::from_f32("W", vec![4, 3], w))
        .unwrap();
    let bv = g
        .add_initializer(Tensor::from_f32("b", vec![3], b))
        .unwrap();
    let mm = g
        .add_node(
            NodeSpec::new("", "MatMul")
                .name("mm")
                .input(x)
                .input(wv)
                .output("xw"),
        )
        .unwrap();
    let xw = g.node(mm).output(0).unwrap();
    g.add_node(
        NodeSpec::new("", "Add")
            .name("add")
            .input(xw)
            .input(bv)
            .output(output),
    )
    .unwrap();
    let y = g.find(output).unwrap();
    g.outputs.push(GraphIo {
        value: y,
        info: ValueInfo {
            ty: Some(ty(batch, 3)),
            ..Default::default()
        },
    });
    m
}

const W: [f32; 12] = [
    0.5, -1.0, 0.25, 2.0, 0.125, -0.5, 1.0, 1.5, -2.0, -0.75, 0.0, 1.25,
];
const B: [f32; 3] = [0.5, -0.25, 1.0];
/// The perturbed weight: W[1][2] += DELTA.
const ROW: usize = 1;
const COL: usize = 2;
const DELTA: f32 = 0.25;

fn save(m: &Model, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    onnxq::save(m, &p, &Default::default()).unwrap();
    p
}

fn pair(dir: &Path) -> (PathBuf, PathBuf) {
    let mut w2 = W;
    w2[ROW * 3 + COL] += DELTA;
    (
        save(&linear_model(&W, &B, "y"), dir, "ref.onnx"),
        save(&linear_model(&w2, &B, "y"), dir, "cand.onnx"),
    )
}

/// The metrics the perturbation must give on inputs `xs` (rows of 4), computed in
/// f64 from the definition: the candidate's output differs from the reference's
/// only in column COL, by DELTA · x[ROW].
struct Expected {
    max_abs: f64,
    mean_abs: f64,
    rel_l2: f64,
    cosine: f64,
    snr_db: f64,
}

fn expected(xs: &[[f32; 4]]) -> Expected {
    let (mut ref_sq, mut cand_sq, mut dot, mut err_sq, mut sum_abs, mut max_abs) =
        (0f64, 0f64, 0f64, 0f64, 0f64, 0f64);
    for x in xs {
        for j in 0..3 {
            let y: f64 = (0..4)
                .map(|i| x[i] as f64 * W[i * 3 + j] as f64)
                .sum::<f64>()
                + B[j] as f64;
            let e = if j == COL {
                DELTA as f64 * x[ROW] as f64
            } else {
                0.0
            };
            let y2 = y + e;
            ref_sq += y * y;
            cand_sq += y2 * y2;
            dot += y * y2;
            err_sq += e * e;
            sum_abs += e.abs();
            max_abs = max_abs.max(e.abs());
        }
    }
    Expected {
        max_abs,
        mean_abs: sum_abs / (3 * xs.len()) as f64,
        rel_l2: (err_sq / ref_sq).sqrt(),
        cosine: dot / (ref_sq * cand_sq).sqrt(),
        snr_db: 10.0 * (ref_sq / err_sq).log10(),
    }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-12)
}

#[test]
fn a_model_against_itself_has_zero_error() {
    for rt in runtimes() {
        for path in common::models_under(&common::fixtures()) {
            let file = path.file_name().unwrap().to_string_lossy().to_string();
            // Loop (tract), a sequence output (both).
            if file == "roundtrip.onnx" || (file == "mlp.onnx" && rt == RuntimeKind::Tract) {
                continue;
            }
            let r = compare(
                &path,
                &path,
                &VerifyOptions {
                    runtime: rt,
                    samples: 2,
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{file} on {rt}: {e}"));
            assert_eq!(r.samples, 2);
            assert!(!r.outputs.is_empty());
            for m in &r.outputs {
                assert_eq!(
                    (m.max_abs, m.mean_abs, m.rel_l2, m.cosine),
                    (0.0, 0.0, 0.0, 1.0),
                    "{file} {}",
                    m.name
                );
                assert!(m.snr_db.is_infinite());
                if m.name == "logits" {
                    assert_eq!(m.top1, Some(1.0), "{file}");
                }
            }
        }
    }
}

#[test]
fn one_perturbed_weight_gives_the_analytic_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = pair(tmp.path());
    for rt in runtimes() {
        // Random inputs, three samples: the expectation is computed from the same
        // seeded inputs the comparison draws.
        let opts = VerifyOptions {
            runtime: rt,
            samples: 3,
            seed: 7,
            dims: [("batch".to_string(), 2)].into(),
            ..Default::default()
        };
        let r = compare(&a, &b, &opts).unwrap();
        let m0 = onnxq::load(&a).unwrap();
        let mut xs = Vec::new();
        for s in 0..3u64 {
            let f = random_inputs(
                &m0.graph.input_specs(),
                &opts.dims,
                &InputHints::default(),
                7 + s,
            )
            .unwrap();
            let v = f[0].1.to_f32_vec().unwrap();
            xs.extend(v.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]));
        }
        assert_eq!(xs.len(), 6);
        let e = expected(&xs);
        let m = &r.outputs[0];
        assert_eq!((m.name.as_str(), m.elements), ("y", 18));
        // The runtimes compute in f32; the expectation in f64.
        for (what, got, want) in [
            ("max-abs", m.max_abs, e.max_abs),
            ("mean-abs", m.mean_abs, e.mean_abs),
            ("rel-l2", m.rel_l2, e.rel_l2),
            ("snr", m.snr_db, e.snr_db),
        ] {
            assert!(close(got, want, 1e-5), "{rt} {what}: {got} vs {want}");
        }
        assert!(
            (m.cosine - e.cosine).abs() < 1e-6,
            "{rt}: {} vs {}",
            m.cosine,
            e.cosine
        );
        assert!(m.rel_l2 > 0.01, "the perturbation must show: {}", m.rel_l2);
    }
}

fn onnxq(args: &[&str]) -> std::process::Output {
    Command::new(common::onnxq_bin())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn thresholds_gate_the_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = pair(tmp.path());
    // Given inputs (dyadic, so every runtime result is exact): x = [1, -2, 0.5, 4].
    let x = [1.0f32, -2.0, 0.5, 4.0];
    let inputs: NamedTensors = vec![("x".into(), HostTensor::from_f32(vec![1, 4], &x).unwrap())];
    let npz = tmp.path().join("x.npz");
    onnxq::tensorfile::write_set(&npz, &inputs, onnxq::tensorfile::Format::Npy).unwrap();
    let e = expected(&[x]);
    assert_eq!(e.max_abs, 0.5);
    let rt = if ort_ok() { "ort" } else { "tract" };
    let base = [
        "verify",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--runtime",
        rt,
        "--inputs",
        npz.to_str().unwrap(),
    ];
    let with = |extra: &[&str]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        onnxq(&v)
    };

    let o = with(&[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("max-abs") && table.contains(" 0.5 "),
        "{table}"
    );

    let tight = format!("{}", e.rel_l2 * 0.9);
    let loose = format!("{}", e.rel_l2 * 1.1);
    let o = with(&["--max-rel-l2", &tight]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("output 'y': rel-l2"), "{err}");
    assert_eq!(with(&["--max-rel-l2", &loose]).status.code(), Some(0));

    assert_eq!(with(&["--max-abs", "0.49"]).status.code(), Some(3));
    assert_eq!(with(&["--max-abs", "0.5"]).status.code(), Some(0));
    let snr = format!("{}", e.snr_db + 0.1);
    assert_eq!(with(&["--min-snr-db", &snr]).status.code(), Some(3));
    let cos = format!("{}", e.cosine + (1.0 - e.cosine) / 2.0);
    assert_eq!(with(&["--min-cosine", &cos]).status.code(), Some(3));

    let o = with(&["--json", "--max-abs", "0.1"]);
    assert_eq!(o.status.code(), Some(3));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["passed"], false);
    assert_eq!(j["violations"][0]["metric"], "max-abs");
    let m = &j["report"]["outputs"][0];
    assert_eq!(m["max_abs"], 0.5);
    assert!(close(m["rel_l2"].as_f64().unwrap(), e.rel_l2, 1e-12), "{m}");
    assert!(close(m["snr_db"].as_f64().unwrap(), e.snr_db, 1e-12), "{m}");
    assert!(
        close(m["mean_abs"].as_f64().unwrap(), e.mean_abs, 1e-12),
        "{m}"
    );
}

#[test]
fn mismatched_models_and_bad_inputs_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let a = save(&linear_model(&W, &B, "y"), tmp.path(), "a.onnx");
    let renamed = save(&linear_model(&W, &B, "z"), tmp.path(), "z.onnx");
    let e = compare(&a, &renamed, &VerifyOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no output 'y'") && e.contains("z.onnx"), "{e}");

    // Inputs that match no model input.
    let npz = tmp.path().join("bad.npz");
    let t: NamedTensors = vec![(
        "q".into(),
        HostTensor::from_f32(vec![1, 4], &[0.0; 4]).unwrap(),
    )];
    onnxq::tensorfile::write_set(&npz, &t, onnxq::tensorfile::Format::Npy).unwrap();
    let o = onnxq(&[
        "verify",
        a.to_str().unwrap(),
        a.to_str().unwrap(),
        "--inputs",
        npz.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("'q'") && err.contains("matches no model input"),
        "{err}"
    );

    // The wrong shape for an input.
    let t: NamedTensors = vec![(
        "x".into(),
        HostTensor::from_f32(vec![1, 5], &[0.0; 5]).unwrap(),
    )];
    onnxq::tensorfile::write_set(&npz, &t, onnxq::tensorfile::Format::Npy).unwrap();
    let o = onnxq(&[
        "verify",
        a.to_str().unwrap(),
        a.to_str().unwrap(),
        "--inputs",
        npz.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("input 'x' has shape [1, 5]") && err.contains("float[batch,4]"),
        "{err}"
    );
    assert!(!err.contains("does not run"), "{err}");

    // A reference the runtime cannot run is reported as such, and the other
    // runtime runs the check.
    let mlp = common::fixtures().join("mlp.onnx");
    let r = compare(&mlp, &mlp, &VerifyOptions::default()).unwrap();
    assert_eq!(r.runtime, "onnxruntime");
    let note = r.runtime_note.unwrap_or_default();
    assert!(
        note.contains("tract failed") && note.contains("Loop"),
        "{note}"
    );
}
