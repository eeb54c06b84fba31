//! Lowering for tract: quantized models onnxq writes, run natively by ONNX Runtime
//! and lowered (or natively, where tract has the op) by tract, give the same
//! outputs.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use onnxq::runtime::{self, lowering, NamedTensors};
use onnxq::verify::{random_inputs, InputHints};

fn quantize(input: &Path, out: &Path, args: &[&str]) {
    let o = Command::new(common::onnxq_bin())
        .arg("quantize")
        .arg(input)
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "quantize {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn run(
    rt: &dyn runtime::Runtime,
    path: &Path,
    inputs: &NamedTensors,
) -> (NamedTensors, Option<String>) {
    let p = runtime::prepare(path, rt.name(), &[]).unwrap();
    let lowered = p.lowered.as_ref().map(|r| r.to_string());
    let mut s = rt
        .open(p.path())
        .unwrap_or_else(|e| panic!("{}: {e}", rt.name()));
    (s.run(inputs).unwrap(), lowered)
}

fn max_diff(a: &NamedTensors, b: &NamedTensors) -> f64 {
    let mut worst = 0f64;
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!((na, &ta.shape), (nb, &tb.shape));
        for (x, y) in ta
            .to_f64_vec()
            .unwrap()
            .iter()
            .zip(tb.to_f64_vec().unwrap())
        {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

#[test]
fn lowered_quantized_ops_match_onnxruntime() {
    // ORT fuses DequantizeLinear→MatMul into MatMulNBits with int8 activations
    // (accuracy level 4) by default; level 0 keeps the QDQ models in fp32 so both
    // runtimes compute the same math.
    let fp32 = [(
        "session.qdq_matmulnbits_accuracy_level".to_string(),
        "0".to_string(),
    )];
    let ort = match runtime::ort::OrtRuntime::new(Some(2)) {
        Ok(r) => r.with_config(&fp32),
        Err(e) => {
            assert!(!common::required(), "{e}");
            eprintln!("SKIPPED: {e}");
            return;
        }
    };
    let tract = runtime::tract::TractRuntime;
    let tmp = tempfile::tempdir().unwrap();
    let src = common::fixtures().join("llama-decomposed.onnx");
    let m = onnxq::load(&src).unwrap();
    let dims = BTreeMap::from([("sequence_length".to_string(), 6)]);
    let inputs = random_inputs(
        &m.graph.input_specs(),
        &dims,
        &InputHints::from_model(&m),
        3,
    )
    .unwrap();

    // (quantize flags, what tract lowers)
    let nbits = "MatMulNBits x15";
    let with_gbq = "GatherBlockQuantized x1, MatMulNBits x15";
    let variants: &[(&[&str], &str)] = &[
        (&["--bits", "4"], nbits),
        (
            &["--bits", "4", "--asymmetric", "--block-size", "16"],
            nbits,
        ),
        (&["--bits", "2", "--asymmetric"], nbits),
        (&["--bits", "8"], nbits),
        (
            &["--bits", "8", "--asymmetric", "--block-size", "64"],
            nbits,
        ),
        (&["--format", "qdq", "--bits", "4"], "DequantizeLinear x15"),
        (
            &["--format", "qdq", "--bits", "4", "--asymmetric"],
            "DequantizeLinear x15",
        ),
        (&["--format", "qdq", "--bits", "8"], "DequantizeLinear x15"),
        (
            &["--algorithm", "bnb4", "--quant-type", "nf4"],
            "MatMulBnb4 x15",
        ),
        (
            &[
                "--algorithm",
                "bnb4",
                "--quant-type",
                "fp4",
                "--block-size",
                "32",
            ],
            "MatMulBnb4 x15",
        ),
        (&["--bits", "4", "--embeddings"], with_gbq),
        (&["--bits", "8", "--embeddings", "--asymmetric"], with_gbq),
        (
            &["--bits", "2", "--embeddings", "--block-size", "64"],
            with_gbq,
        ),
    ];
    for (i, (flags, want)) in variants.iter().enumerate() {
        let out: PathBuf = tmp.path().join(format!("q{i}.onnx"));
        let mut args = flags.to_vec();
        args.push("--no-verify");
        quantize(&src, &out, &args);
        let (a, lowered) = run(&tract, &out, &inputs);
        let (b, _) = run(&ort, &out, &inputs);
        let d = max_diff(&a, &b);
        eprintln!("{flags:?}: lowered {lowered:?}, max |tract - ort| = {d:.3e}");
        assert_eq!(lowered.as_deref(), Some(*want), "{flags:?}");
        // Logits of magnitude ≲ 0.5; the dequantized weights are the same numbers,
        // only the summation order differs (measured ≤ 2.4e-7).
        assert!(d < 1e-5, "{flags:?}: {d}");
    }
}

#[test]
fn lowering_leaves_float_models_alone_and_reports_what_it_did() {
    let mut m = onnxq::load(&common::fixtures().join("llama-decomposed.onnx")).unwrap();
    assert!(!lowering::needs_lowering(&m));
    let before = onnxq::ir::print::model_to_string(&m);
    let r = lowering::lower_for_tract(&mut m).unwrap();
    assert!(r.lowered.is_empty());
    assert_eq!(onnxq::ir::print::model_to_string(&m), before);

    let mut a = onnxq::load(&common::fixtures().join("llama-attention23.onnx")).unwrap();
    assert!(lowering::needs_lowering(&a));
    let r = lowering::lower_for_tract(&mut a).unwrap();
    assert_eq!(r.to_string(), "Attention x2");
    a.graph.verify().unwrap();
    assert!(!lowering::needs_lowering(&a));
}
