//! Quantized-prefix calibration (`calib-sequential`) and `--algorithm awq,gptq`.
//!
//! The capture cuts a decoder between its layers and, after each layer, runs the rest
//! with the weights the observer hands back: the activations observed for layer i
//! must be ONNX Runtime's activations of the model whose layers 0…i−1 carry those
//! weights. Then GPTQ with the flag (a different model, no worse than RTN) and
//! AWQ's scales before GPTQ, measured against the float model with ONNX Runtime.
mod common;

use std::collections::BTreeMap;
use std::path::Path;

use onnxq::calib::capture::{capture, Observer, Plan};
use onnxq::calib::text::{feeds_for_tokens, TextSamples};
use onnxq::calib::tokenizer::Tokenizer;
use onnxq::error::Result;
use onnxq::ir::Tensor;
use onnxq::llm::DecoderMap;
use onnxq::pass::recipe::Recipe;
use onnxq::pass::{run_pipeline, PassCx};
use onnxq::quant::nbits::{quantize_kn_as, QuantParams};
use onnxq::quant::FloatType;
use onnxq::runtime::{HostTensor, RuntimeKind};

/// Every fixture form of the tiny decoder (fixtures/README.md).
const FORMS: &[&str] = &[
    "decoders/decomposed.onnx",
    "decoders/opset24.onnx",
    "decoders/dynamo.onnx",
    "decoders/genai.onnx",
    "llama-decomposed.onnx",
];

/// Token windows of fixtures/sample.txt.
fn windows(samples: usize, seqlen: usize, seed: u64) -> Vec<Vec<i64>> {
    let tok = Tokenizer::from_file(&common::fixtures().join("tokenizer.json")).unwrap();
    let text = std::fs::read_to_string(common::fixtures().join("sample.txt")).unwrap();
    TextSamples::windows(&tok.input_ids(&text).unwrap(), samples, seqlen, seed).windows
}

/// The stored weight with every [rows, cols] block of 32 rows rounded to 4 bits and
/// back: some quantized version of it.
fn rtn(t: &Tensor) -> Tensor {
    let w = t.to_f32().unwrap();
    let (rows, cols) = (t.dims[0] as usize, t.dims[1] as usize);
    let q = quantize_kn_as(
        &w,
        rows,
        cols,
        &QuantParams::new(4, 32, true).unwrap(),
        FloatType::F32,
    )
    .unwrap()
    .dequantize_kn();
    Tensor::from_f32(t.name(), t.dims.clone(), &q)
}

/// Records each observed activation per sample and, after each piece, hands back
/// RTN weights for the linear layers reading the values the piece completed.
struct Recorder<'a> {
    model: &'a onnxq::Model,
    /// Observed value → the initializers of the linear layers reading it.
    weights_of: BTreeMap<String, Vec<String>>,
    seen: BTreeMap<String, Vec<Vec<f32>>>,
    handed: BTreeMap<String, Tensor>,
    pending: Vec<Tensor>,
}

impl Observer for Recorder<'_> {
    fn observe(&mut self, name: &str, values: &[f32], _shape: &[usize]) {
        self.seen
            .entry(name.to_string())
            .or_default()
            .push(values.to_vec());
    }

    fn piece_done(&mut self, completed: &[String]) -> Result<()> {
        let g = &self.model.graph;
        for x in completed {
            for w in &self.weights_of[x] {
                let t = rtn(g.initializer(g.find(w).unwrap()).unwrap());
                self.handed.insert(w.clone(), t.clone());
                self.pending.push(t);
            }
        }
        Ok(())
    }

    fn replacements(&mut self) -> Vec<Tensor> {
        std::mem::take(&mut self.pending)
    }
}

/// `values` of the model's intermediate `names` on ONNX Runtime, per window.
fn runtime_values(
    model: &onnxq::Model,
    names: &[String],
    windows: &[Vec<i64>],
) -> Vec<BTreeMap<String, HostTensor>> {
    let rt = onnxq::runtime::named("ort").unwrap();
    let mut s = onnxq::runtime::open_model(rt.as_ref(), model, names).unwrap();
    windows
        .iter()
        .map(|w| {
            let feeds = feeds_for_tokens(s.inputs(), w).unwrap();
            s.run(&feeds).unwrap().into_iter().collect()
        })
        .collect()
}

/// max |a − b| / max |b|.
fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    let den = b.iter().map(|y| y.abs() as f64).fold(0.0, f64::max);
    num / den.max(f64::MIN_POSITIVE)
}

#[test]
fn each_layer_is_observed_on_the_outputs_of_the_quantized_layers_before_it() {
    let windows = windows(3, 24, 11);
    for fixture in FORMS {
        let model = onnxq::load(&common::fixtures().join(fixture)).unwrap();
        let g = &model.graph;
        let map = DecoderMap::build(g).unwrap();
        let stages = map.layer_inputs(g);
        let mut weights_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for w in map.linears() {
            let x = g.value_name(g.node(w.node_id).input(0).unwrap());
            // Only initializers can be replaced.
            if g.initializer(w.weight_id).is_some() {
                weights_of
                    .entry(x.to_string())
                    .or_default()
                    .push(w.initializer.clone());
            }
        }
        let plan = Plan {
            observed: stages.keys().map(|x| (x.clone(), 1)).collect(),
            budget: u64::MAX,
            stages: stages.clone(),
        };
        let mut rec = Recorder {
            model: &model,
            weights_of,
            seen: BTreeMap::new(),
            handed: BTreeMap::new(),
            pending: Vec::new(),
        };
        let rt = onnxq::runtime::named("ort").unwrap();
        let specs = onnxq::runtime::open_model(rt.as_ref(), &model, &[])
            .unwrap()
            .inputs()
            .to_vec();
        let mut feeds = |i: usize| feeds_for_tokens(&specs, &windows[i]);
        let captured = capture(
            &model,
            &plan,
            windows.len(),
            &mut feeds,
            rt.as_ref(),
            &indicatif::ProgressBar::hidden(),
            &mut rec,
        )
        .unwrap();
        // One piece per layer and one for the head; every layer piece re-runs with
        // its replaced weights (the head has nothing to carry on).
        assert_eq!(captured.pieces, map.num_layers + 1, "{fixture}");
        assert_eq!(captured.reruns, map.num_layers, "{fixture}");
        assert!(captured.too_late.is_empty(), "{fixture}: {captured:?}");

        let float = runtime_values(
            &model,
            &stages.keys().cloned().collect::<Vec<_>>(),
            &windows,
        );
        for layer in 0..=map.num_layers {
            // The model with the weights handed back for layers 0..layer.
            let mut partial = model.clone();
            for w in map.linears() {
                let x = g.value_name(g.node(w.node_id).input(0).unwrap());
                if stages[x] < layer {
                    if let Some(t) = rec.handed.get(&w.initializer) {
                        let v = partial.graph.find(&w.initializer).unwrap();
                        partial.graph.set_initializer(v, t.clone());
                    }
                }
            }
            let names: Vec<String> = stages
                .iter()
                .filter(|(_, &s)| s == layer)
                .map(|(x, _)| x.clone())
                .collect();
            let want = runtime_values(&partial, &names, &windows);
            for x in &names {
                for (i, w) in want.iter().enumerate() {
                    let ort = w[x].to_f32_vec().unwrap();
                    let err = max_rel(&rec.seen[x][i], &ort);
                    assert!(
                        err <= 1e-4,
                        "{fixture}: layer {layer} input '{x}', window {i}: max rel error {err:.2e}"
                    );
                    // The float model's activation differs: the test can tell.
                    if layer > 0 {
                        let drift = max_rel(&float[i][x].to_f32_vec().unwrap(), &ort);
                        assert!(drift > 1e-3, "{fixture}: '{x}' drift only {drift:.2e}");
                    }
                }
            }
        }
        eprintln!(
            "{fixture}: {} pieces, activations of {} layer inputs match ONNX Runtime",
            captured.pieces,
            stages.len()
        );
    }
}

/// Runs a recipe on a copy of `model`, saves it to `path`, returns the passes' notes.
fn quantize(model: &onnxq::Model, recipe: &str, path: &Path) -> Vec<String> {
    let r = Recipe::parse("r", recipe).unwrap();
    let mut m = model.clone();
    let outs = run_pipeline(&mut m, &r.build().unwrap(), &mut PassCx::default()).unwrap();
    onnxq::save(&m, path, &Default::default()).unwrap();
    outs.into_iter().flat_map(|o| o.notes).collect()
}

fn logits_error(reference: &Path, cand: &Path, windows: &[Vec<i64>]) -> f64 {
    common::text_logits_error(reference, cand, windows, RuntimeKind::Ort)
}

#[test]
fn gptq_calibrated_sequentially_differs_and_stays_below_rtn() {
    let tmp = tempfile::tempdir().unwrap();
    let text = common::fixtures().join("sample.txt");
    let tok = common::fixtures().join("tokenizer.json");
    let eval = windows(4, 48, 99);
    for fixture in FORMS {
        let orig = common::fixtures().join(fixture);
        let model = onnxq::load(&orig).unwrap();
        let layers = DecoderMap::build(&model.graph).unwrap().num_layers;
        let tag = fixture.replace('/', "-");
        let rtn = tmp.path().join(format!("rtn-{tag}"));
        quantize(
            &model,
            "[recipe]\nname='r'\n[[pass]]\nname='matmul-nbits'\n",
            &rtn,
        );
        let mut errs = Vec::new();
        for seq in [false, true] {
            let path = tmp.path().join(format!("{seq}-{tag}"));
            let notes = quantize(
                &model,
                &format!(
                    "[recipe]\nname='g'\n[[pass]]\nname='gptq'\ncalib-text='{}'\ntokenizer='{}'\n\
                     calib-samples=16\ncalib-seqlen=64\nruntime='ort'\ncalib-sequential={seq}\n",
                    text.display(),
                    tok.display()
                ),
                &path,
            );
            let sequential = notes
                .iter()
                .find(|n| n.starts_with("calibrated sequentially"));
            assert_eq!(sequential.is_some(), seq, "{fixture}: {notes:?}");
            if let Some(n) = sequential {
                assert!(n.contains(&format!("({} pieces", layers + 1)), "{n}");
            }
            let e = logits_error(&orig, &path, &eval);
            errs.push((path, e));
        }
        let e_rtn = logits_error(&orig, &rtn, &eval);
        let between = logits_error(&errs[0].0, &errs[1].0, &eval);
        eprintln!(
            "{fixture}: logits rel-L2 on sample windows: RTN {e_rtn:.4}, GPTQ {:.4}, GPTQ sequential \
             {:.4} (the two GPTQ models differ by {between:.2e})",
            errs[0].1, errs[1].1
        );
        assert!(between > 1e-4, "{fixture}: the flag changed nothing");
        assert!(
            errs[1].1 <= e_rtn,
            "{fixture}: sequential GPTQ worse than RTN"
        );
    }
}

#[test]
fn awq_then_gptq_from_the_cli_measured_against_each_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let text = common::fixtures().join("sample.txt");
    let tok = common::fixtures().join("tokenizer.json");
    let eval = windows(4, 48, 99);
    for fixture in ["decoders/opset24.onnx", "llama-decomposed.onnx"] {
        let orig = common::fixtures().join(fixture);
        let map = DecoderMap::build(&onnxq::load(&orig).unwrap().graph).unwrap();
        let tag = fixture.replace('/', "-");
        let mut err = BTreeMap::new();
        for alg in ["rtn", "awq", "gptq", "awq,gptq"] {
            let out = tmp.path().join(format!("{}-{tag}", alg.replace(',', "+")));
            let mut cmd = std::process::Command::new(common::onnxq_bin());
            cmd.arg("quantize").arg(&orig).arg(&out).args([
                "--algorithm",
                alg,
                "--no-verify",
                "--runtime",
                "ort",
            ]);
            if alg != "rtn" {
                cmd.arg("--calib-text")
                    .arg(&text)
                    .arg("--tokenizer")
                    .arg(&tok)
                    .args(["--calib-samples", "8", "--calib-seqlen", "48"]);
            }
            let o = cmd.output().unwrap();
            let log = String::from_utf8_lossy(&o.stderr).to_string()
                + &String::from_utf8_lossy(&o.stdout);
            assert!(o.status.success(), "{fixture} {alg}: {log}");
            if alg == "awq,gptq" {
                // AWQ scaled, then GPTQ quantized every linear layer.
                assert!(log.contains("awq: activations scaled"), "{log}");
                assert!(log.contains("gptq: hessians"), "{log}");
                let q = onnxq::load(&out).unwrap();
                let n = q
                    .graph
                    .nodes()
                    .filter(|(_, n)| n.op_type == "MatMulNBits")
                    .count();
                assert_eq!(n, map.linears().len(), "{fixture}");
            }
            err.insert(alg, logits_error(&orig, &out, &eval));
        }
        eprintln!("{fixture}: logits rel-L2 vs float on ONNX Runtime (sample windows): {err:?}");
        assert!(err["awq,gptq"] <= err["rtn"], "{fixture}: {err:?}");
        assert!(
            (err["awq,gptq"] - err["gptq"]).abs() > 1e-6,
            "{fixture}: AWQ's scales changed nothing: {err:?}"
        );
    }
}
