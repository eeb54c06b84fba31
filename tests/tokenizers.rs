//! `--tokenizer` files of every kind give the ids Hugging Face's Python `tokenizers`
//! gives on the same text: byte-level BPE, Metaspace BPE with byte fallback, Unigram
//! and WordPiece (fixtures/tokenizers/, trained by fixtures/fixturegen/hf_tokenizers.py),
//! and the decoders' own fixtures/tokenizer.json.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use onnxq::calib::tokenizer::Tokenizer;

struct Reference {
    ids: Vec<u32>,
    tokens: Vec<String>,
}

fn tokenizers() -> Vec<PathBuf> {
    let fx = common::fixtures();
    let mut out: Vec<PathBuf> = [
        "byte_bpe.json",
        "metaspace_bpe.json",
        "unigram.json",
        "wordpiece.json",
    ]
    .iter()
    .map(|n| fx.join("tokenizers").join(n))
    .collect();
    out.push(fx.join("tokenizer.json"));
    out
}

/// Ids and token strings of `text` under each tokenizer, from the Python package.
fn python_reference(text: &Path, toks: &[PathBuf]) -> Option<HashMap<PathBuf, Reference>> {
    let python = common::python()?;
    let mut args = vec![text.to_str().unwrap()];
    args.extend(toks.iter().map(|t| t.to_str().unwrap()));
    let out = common::py(&python, "tokenizer_ids.py", &args);
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    Some(
        toks.iter()
            .map(|t| {
                let r = &v[t.to_str().unwrap()];
                let ids = r["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_u64().unwrap() as u32)
                    .collect();
                let tokens = r["tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect();
                (t.clone(), Reference { ids, tokens })
            })
            .collect(),
    )
}

fn name(p: &Path) -> &str {
    p.file_stem().unwrap().to_str().unwrap()
}

#[test]
fn every_kind_encodes_the_test_text_as_python_tokenizers_does() {
    let text_path = common::fixtures().join("tokenizers/test.txt");
    let text = std::fs::read_to_string(&text_path).unwrap();
    let toks = tokenizers();
    let Some(reference) = python_reference(&text_path, &toks) else {
        return;
    };
    for t in &toks {
        let ours = Tokenizer::from_file(t).unwrap().encode(&text).unwrap();
        let want = &reference[t];
        assert_eq!(ours, want.ids, "{}: ids differ from Python", t.display());
        let has = |tok: &str| want.tokens.iter().any(|s| s == tok);
        if t.parent().unwrap().ends_with("tokenizers") {
            // The added tokens inside the text are matched whole, special or not.
            for added in ["<|user|>", "<|end|>", "onnxq"] {
                assert!(
                    has(added) || has(&format!("▁{added}")),
                    "{}: no '{added}' token in {:?}",
                    name(t),
                    want.tokens
                );
            }
        }
        match name(t) {
            // Characters the training text never had become <0xNN> byte pieces
            // (🙂 is F0 9F 99 82).
            "metaspace_bpe" => assert!(
                ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]
                    .iter()
                    .all(|b| has(b)),
                "{:?}",
                want.tokens
            ),
            // NFKC folds the full-width letters and lowercases them: "ｆｕｌｌ" reads as "full".
            "unigram" => assert!(
                !want.tokens.iter().any(|s| s.contains('Ｆ')) && has("▁the"),
                "{:?}",
                want.tokens
            ),
            // BERT's normalizer strips accents and lowercases: "café" -> "cafe".
            "wordpiece" => assert!(
                has("[CLS]") && has("[SEP]") && !want.tokens.iter().any(|s| s.contains('é')),
                "{:?}",
                want.tokens
            ),
            _ => {}
        }
    }
}

#[test]
fn every_kind_encodes_the_sample_text_as_python_tokenizers_does() {
    let text_path = common::fixtures().join("sample.txt");
    let text = std::fs::read_to_string(&text_path).unwrap();
    let toks = tokenizers();
    let Some(reference) = python_reference(&text_path, &toks) else {
        return;
    };
    for t in &toks {
        let tok = Tokenizer::from_file(t).unwrap();
        let ours = tok.encode(&text).unwrap();
        assert_eq!(ours, reference[t].ids, "{}", t.display());
        assert!(ours.len() > 100, "{}: {} ids", name(t), ours.len());
        let wide = tok.input_ids(&text).unwrap();
        assert!(wide.iter().zip(&ours).all(|(&w, &o)| w == i64::from(o)));
    }
}
