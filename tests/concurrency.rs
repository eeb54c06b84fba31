//! Concurrency: the library quantizes several models from several threads at once
//! (load → shipped recipe → run_pipeline → save), each result byte-identical to the
//! same job run alone (whose numerics the per-algorithm tests check against ONNX
//! Runtime), and each a quantized model that loads back.
mod common;

use std::path::{Path, PathBuf};

use onnxq::pass::recipe::Recipe;
use onnxq::pass::{run_pipeline, PassCx};

/// (fixture, recipe) pairs: different models and different passes in flight together.
fn jobs() -> Vec<(PathBuf, &'static str)> {
    let f = common::fixtures();
    vec![
        (f.join("llama-decomposed.onnx"), "int4-rtn"),
        (f.join("llama-genai-kv.onnx"), "int4-hqq"),
        (f.join("mlp.onnx"), "int4-rtn-qdq"),
        (f.join("cnn.onnx"), "int8-dynamic"),
        (f.join("llama-attention23.onnx"), "bnb4-nf4"),
        (f.join("llama-decomposed-tied.onnx"), "int8-dynamic"),
        (f.join("decoders/opset24.onnx"), "int4-rtn"),
        (f.join("llama-decomposed.onnx"), "int8-static-qdq"),
    ]
}

/// One job through the library; the saved bytes.
fn quantize(input: &Path, recipe: &str, out: &Path) -> onnxq::Result<Vec<u8>> {
    let passes = Recipe::load(recipe)?.build()?;
    let mut model = onnxq::load(input)?;
    let mut cx = PassCx {
        progress: false,
        seed: 0,
    };
    let outcomes = run_pipeline(&mut model, &passes, &mut cx)?;
    assert!(
        outcomes.iter().any(|o| o.changed),
        "{recipe} changed nothing in {}",
        input.display()
    );
    onnxq::save(&model, out, &Default::default())?;
    Ok(std::fs::read(out).expect("just written"))
}

#[test]
fn models_quantized_from_several_threads_at_once_equal_the_single_threaded_results() {
    let tmp = tempfile::tempdir().unwrap();
    let alone: Vec<Vec<u8>> = jobs()
        .iter()
        .enumerate()
        .map(|(i, (input, recipe))| {
            quantize(input, recipe, &tmp.path().join(format!("alone-{i}.onnx")))
                .unwrap_or_else(|e| panic!("{recipe} on {}: {e}", input.display()))
        })
        .collect();
    // Every job twice, all at once: two threads share each model file and recipe.
    let together: Vec<(usize, onnxq::Result<Vec<u8>>)> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs()
            .into_iter()
            .enumerate()
            .flat_map(|(i, job)| [(i, job.clone(), 0), (i, job, 1)])
            .map(|(i, (input, recipe), copy)| {
                let out = tmp.path().join(format!("together-{i}-{copy}.onnx"));
                s.spawn(move || (i, quantize(&input, recipe, &out)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together.len(), 2 * alone.len());
    for (i, r) in together {
        let (input, recipe) = &jobs()[i];
        let bytes = r.unwrap_or_else(|e| panic!("{recipe} on {}: {e}", input.display()));
        assert!(
            bytes == alone[i],
            "{recipe} on {}: the concurrent result differs from the one run alone",
            input.display()
        );
    }
    // The results are the quantized models, not copies of the inputs.
    for (i, (input, recipe)) in jobs().iter().enumerate() {
        let m = onnxq::load(&tmp.path().join(format!("alone-{i}.onnx"))).unwrap();
        assert!(
            !m.quantized_ops().is_empty(),
            "{recipe} on {}: no quantized ops",
            input.display()
        );
    }
}
