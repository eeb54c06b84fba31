//! Calibration reads the activations ONNX Runtime computes. On every decoder form, the
//! matrix each quantized MatMul's statistics are built from (captured piece by piece,
//! as GPTQ and AWQ capture it, by tract and by ONNX Runtime) must equal ONNX Runtime's
//! value of that MatMul's input in one whole-model run on the same tokens; and the
//! Hessian GPTQ solves is `XᵀX / rows` over the weight's K, for a square and a
//! non-square weight.
mod common;

use std::collections::BTreeMap;

use common::forms::{self, decoder_feeds, Rng};
use onnxq::calib::capture::{capture, Observer, Plan};
use onnxq::calib::hessian::{hessians, TokenWeighting};
use onnxq::llm::DecoderMap;
use onnxq::runtime::{self, NamedTensors, Runtime};
use onnxq::Model;

/// One observed tensor: values and shape.
type Observed = (Vec<f32>, Vec<usize>);

/// Every observed tensor of every sample, in arrival order.
#[derive(Default)]
struct Recorder {
    seen: BTreeMap<String, Vec<Observed>>,
    completed: Vec<String>,
}

impl Observer for Recorder {
    fn observe(&mut self, name: &str, values: &[f32], shape: &[usize]) {
        self.seen
            .entry(name.to_string())
            .or_default()
            .push((values.to_vec(), shape.to_vec()));
    }

    fn piece_done(&mut self, completed: &[String]) -> onnxq::Result<()> {
        self.completed.extend(completed.iter().cloned());
        Ok(())
    }
}

/// The input (x of x·W) of each linear layer the decoder map finds, with its K.
fn linear_inputs(m: &Model) -> BTreeMap<String, usize> {
    let g = &m.graph;
    let map = DecoderMap::build(g).expect("decoder map");
    map.linears()
        .into_iter()
        .map(|w| {
            let x = g.node(w.node_id).input(0).expect("MatMul has an input");
            (g.value_name(x).to_string(), w.k)
        })
        .collect()
}

/// One sample per seed: 7 tokens, no cache, only the inputs `m` declares.
fn samples(m: &Model, n: usize) -> Vec<NamedTensors> {
    let declared: Vec<String> = m.graph.input_specs().into_iter().map(|s| s.name).collect();
    (0..n)
        .map(|i| {
            let mut rng = Rng::new(100 + i as u64);
            let ids: Vec<i64> = (0..7).map(|_| rng.token()).collect();
            decoder_feeds(&ids, 1, 0, None, &mut rng)
                .into_iter()
                .filter(|(name, _)| declared.contains(name))
                .collect()
        })
        .collect()
}

/// ONNX Runtime's values of `names` on each sample, from one whole-model session.
fn reference(
    ort: &dyn Runtime,
    m: &Model,
    names: &[String],
    feeds: &[NamedTensors],
) -> Vec<NamedTensors> {
    let mut s = runtime::open_model(ort, m, names).expect("open in ORT");
    feeds.iter().map(|f| s.run(f).expect("ORT run")).collect()
}

fn value<'a>(outs: &'a NamedTensors, name: &str) -> &'a runtime::HostTensor {
    &outs
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("ORT did not return {name}"))
        .1
}

/// max |a - b| / max |b|.
fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let peak = b.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
    let worst = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()));
    worst / peak.max(f64::MIN_POSITIVE)
}

#[test]
fn captured_matmul_inputs_equal_onnx_runtime_values_on_every_form() {
    let Some(ort) = common::ort() else { return };
    let tract = runtime::tract::TractRuntime;
    for (form, path) in forms::decoder_forms() {
        let m = onnxq::load(&path).unwrap();
        let inputs = linear_inputs(&m);
        assert_eq!(
            inputs.len(),
            // q, k and v read one normed value (packed into one MatMul in genai), so do
            // gate and up: o, down and the shared q|k|v and gate|up inputs per layer.
            forms::LAYERS * 4 + 1,
            "{form}: {inputs:?}"
        );
        let feeds = samples(&m, 3);
        let names: Vec<String> = inputs.keys().cloned().collect();
        let want = reference(&ort, &m, &names, &feeds);
        // A budget far below the weights' bytes, so the model is cut into pieces and
        // activations are carried between them, as on a model too large for memory.
        // (Pieces once carried Split sizes and Unsqueeze axes that Constant nodes
        // compute, and tract refused the genai and dynamo forms' pieces.)
        let plan = Plan {
            observed: inputs
                .iter()
                .map(|(n, &k)| (n.clone(), (k * k * 8) as u64))
                .collect(),
            budget: 64 << 10,
            stages: BTreeMap::new(),
        };
        let runtimes: [&dyn Runtime; 2] = [&ort, &tract];
        for rt in runtimes {
            let mut rec = Recorder::default();
            let run = capture(
                &m,
                &plan,
                feeds.len(),
                &mut |i| Ok(feeds[i].clone()),
                rt,
                &indicatif::ProgressBar::hidden(),
                &mut rec,
            );
            let pieces = run
                .unwrap_or_else(|e| panic!("{form} on {}: {e}", rt.name()))
                .pieces;
            assert!(pieces > 2, "{form}: only {pieces} pieces");
            let mut completed = rec.completed.clone();
            completed.sort();
            assert_eq!(completed, names, "{form}: every input completes once");
            let mut worst = 0f64;
            for (name, &k) in &inputs {
                let got = &rec.seen[name];
                assert_eq!(got.len(), feeds.len(), "{form} {name}: one per sample");
                for (i, (values, shape)) in got.iter().enumerate() {
                    let r = value(&want[i], name);
                    assert_eq!(shape, &r.shape, "{form} {name} sample {i}");
                    assert_eq!(shape.last(), Some(&k), "{form} {name}: last dim is K");
                    let e = max_rel(values, &r.to_f32_vec().unwrap());
                    assert!(e <= 1e-4, "{form} {name} sample {i} on {}: {e}", rt.name());
                    worst = worst.max(e);
                }
            }
            eprintln!(
                "{form} on {}: {} inputs in {pieces} pieces, max rel error {worst:.1e}",
                rt.name(),
                inputs.len()
            );
        }
    }
}

#[test]
fn hessian_is_k_by_k_over_the_matmul_input() {
    let Some(ort) = common::ort() else { return };
    let m = forms::load("decoders/decomposed.onnx");
    let g = &m.graph;
    let map = DecoderMap::build(g).unwrap();
    let layer = &map.layers[0];
    let linears = layer.linears();
    // q_proj is square (hidden × hidden); down_proj reads the MLP's inner width.
    let square = linears
        .iter()
        .find(|w| w.k == w.n)
        .expect("a square weight");
    let wide = linears
        .iter()
        .find(|w| w.k != w.n && w.k != square.k)
        .expect("a weight whose K is not the hidden size");
    let mut k_of = BTreeMap::new();
    for w in [square, wide] {
        let x = g.node(w.node_id).input(0).unwrap();
        k_of.insert(g.value_name(x).to_string(), w.k);
    }
    let feeds = samples(&m, 2);
    let names: Vec<String> = k_of.keys().cloned().collect();
    let want = reference(&ort, &m, &names, &feeds);
    let mut got = BTreeMap::new();
    hessians(
        &m,
        &k_of,
        TokenWeighting::Energy,
        u64::MAX,
        BTreeMap::new(),
        feeds.len(),
        &mut |i| Ok(feeds[i].clone()),
        &ort,
        &indicatif::ProgressBar::hidden(),
        &mut |finished| {
            for (name, h) in finished {
                got.insert(name, (h.rows, h.finish()));
            }
            Ok(Vec::new())
        },
    )
    .unwrap();
    for (name, &k) in &k_of {
        let (rows, h) = &got[name];
        assert_eq!(h.len(), k * k, "{name}: H is K×K with K = {k}");
        // XᵀX / rows from ONNX Runtime's X, every sample's tokens as rows.
        let x: Vec<f32> = want
            .iter()
            .flat_map(|o| value(o, name).to_f32_vec().unwrap())
            .collect();
        let n = x.len() / k;
        assert_eq!(*rows as usize, n, "{name}: one row per token");
        let mut expect = vec![0f64; k * k];
        for r in x.chunks(k) {
            for i in 0..k {
                for j in 0..k {
                    expect[i * k + j] += r[i] as f64 * r[j] as f64 / n as f64;
                }
            }
        }
        let e = max_rel(
            &h.iter().map(|v| *v as f32).collect::<Vec<_>>(),
            &expect.iter().map(|v| *v as f32).collect::<Vec<_>>(),
        );
        eprintln!("{name}: K = {k}, {n} rows, max rel error {e:.1e}");
        assert!(e <= 1e-4, "{name}: {e}");
    }
}
