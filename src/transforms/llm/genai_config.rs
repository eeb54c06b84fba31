//! genai_config.json for a decoder in genai form, and the tokenizer files that go
//! next to it. The special-token ids come from the Hugging Face files of the
//! tokenizer folder: generation_config.json, then config.json (`*_token_id`), then
//! tokenizer_config.json's token strings looked up in tokenizer.json.
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::calib::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::llm::DecoderMap;

/// Files a tokenizer folder may hold that genai's tokenizer (onnxruntime-extensions)
/// or a user of the output reads; the ones present are copied.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
];

/// Token ids genai stops at, starts with and pads with.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecialTokens {
    pub bos: Option<i64>,
    /// One or more end-of-sequence ids.
    pub eos: Vec<i64>,
    pub pad: Option<i64>,
    /// config.json's max_position_embeddings, when there is one.
    pub max_positions: Option<usize>,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::invalid(format!("{}: not JSON: {e}", path.display())))
}

fn ids(v: Option<&Value>) -> Vec<i64> {
    match v {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    }
}

/// `"</s>"` or `{"content": "</s>", ...}` as tokenizer_config.json writes them.
fn token_text(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

impl SpecialTokens {
    /// Reads the special tokens of the tokenizer folder `dir`.
    pub fn from_dir(dir: &Path) -> Result<SpecialTokens> {
        if !dir.is_dir() {
            return Err(Error::invalid(format!(
                "--tokenizer {}: not a folder",
                dir.display()
            )));
        }
        let tj = dir.join("tokenizer.json");
        if !tj.is_file() && !dir.join("tokenizer.model").is_file() {
            return Err(Error::invalid(format!(
                "--tokenizer {}: no tokenizer.json or tokenizer.model in it",
                dir.display()
            )));
        }
        let sources: Vec<Value> = ["generation_config.json", "config.json"]
            .iter()
            .map(|f| read_json(&dir.join(f)))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        let from_ids = |key: &str| {
            sources
                .iter()
                .map(|s| ids(s.get(key)))
                .find(|v| !v.is_empty())
        };
        let tok_cfg = read_json(&dir.join("tokenizer_config.json"))?;
        let tokenizer = if tj.is_file() {
            Some(Tokenizer::from_file(&tj)?)
        } else {
            None
        };
        let from_text = |key: &str| -> Option<i64> {
            let text = token_text(tok_cfg.as_ref()?.get(key))?;
            tokenizer.as_ref()?.token_id(text).map(i64::from)
        };
        let one = |ids_key: &str, text_key: &str| {
            from_ids(ids_key)
                .and_then(|v| v.first().copied())
                .or_else(|| from_text(text_key))
        };
        let eos = from_ids("eos_token_id")
            .or_else(|| from_text("eos_token").map(|e| vec![e]))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "--tokenizer {}: no eos token: none of generation_config.json, config.json \
                     (eos_token_id) or tokenizer_config.json (eos_token) names one",
                    dir.display()
                ))
            })?;
        let max_positions = sources
            .iter()
            .find_map(|s| s.get("max_position_embeddings")?.as_u64())
            .map(|n| n as usize);
        Ok(SpecialTokens {
            bos: one("bos_token_id", "bos_token"),
            pad: one("pad_token_id", "pad_token"),
            eos,
            max_positions,
        })
    }

    /// The files of `dir` to copy next to the model.
    pub fn files(dir: &Path) -> Vec<PathBuf> {
        TOKENIZER_FILES
            .iter()
            .map(|f| dir.join(f))
            .filter(|p| p.is_file())
            .collect()
    }
}

/// `past_key_values.3.key` → `past_key_values.%d.key`, checked against every layer.
fn name_pattern(names: &[&str]) -> Result<String> {
    let first = names
        .first()
        .ok_or_else(|| Error::invalid("genai_config: the decoder has no KV cache tensors"))?;
    let candidates: Vec<String> = (0..first.len())
        .filter(|&i| first[i..].starts_with('0'))
        .filter(|&i| {
            let before = first[..i].chars().last();
            let after = first[i + 1..].chars().next();
            !before.is_some_and(|c| c.is_ascii_digit())
                && !after.is_some_and(|c| c.is_ascii_digit())
        })
        .map(|i| format!("{}%d{}", &first[..i], &first[i + 1..]))
        .collect();
    candidates
        .into_iter()
        .find(|p| {
            names
                .iter()
                .enumerate()
                .all(|(i, n)| p.replace("%d", &i.to_string()) == *n)
        })
        .ok_or_else(|| {
            Error::invalid(format!(
                "genai_config: the cache names {names:?} do not follow one pattern with the \
                 layer index (genai names them by a %d pattern)"
            ))
        })
}

/// genai_config.json for the converted decoder `map`, written as `filename`.
pub fn genai_config(
    map: &DecoderMap,
    tokens: &SpecialTokens,
    context_length: usize,
    filename: &str,
) -> Result<Value> {
    let io = &map.io;
    let names = |f: &dyn Fn(&crate::llm::KvIo) -> &str, kv: &[crate::llm::KvIo]| {
        name_pattern(&kv.iter().map(f).collect::<Vec<_>>())
    };
    let mut inputs = json!({
        "input_ids": io.input_ids.name,
        "past_key_names": names(&|k| &k.key.name, &io.past)?,
        "past_value_names": names(&|k| &k.value.name, &io.past)?,
    });
    if let Some(m) = &io.attention_mask {
        inputs["attention_mask"] = json!(m.name);
    }
    if let Some(p) = &io.position_ids {
        inputs["position_ids"] = json!(p.name);
    }
    let logits = io
        .logits
        .as_ref()
        .ok_or_else(|| Error::invalid("genai_config: no logits output found"))?;
    let eos: Value = match tokens.eos.as_slice() {
        [one] => json!(one),
        many => json!(many),
    };
    let pad = tokens.pad.unwrap_or(tokens.eos[0]);
    let mut model = json!({
        "context_length": context_length,
        "decoder": {
            "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
            "filename": filename,
            "head_size": map.head_size,
            "hidden_size": map.hidden_size,
            "inputs": inputs,
            "outputs": {
                "logits": logits.name,
                "present_key_names": names(&|k| &k.key.name, &io.present)?,
                "present_value_names": names(&|k| &k.value.name, &io.present)?,
            },
            "num_attention_heads": map.num_heads,
            "num_hidden_layers": map.num_layers,
            "num_key_value_heads": map.num_kv_heads,
        },
        "eos_token_id": eos,
        "pad_token_id": pad,
        "type": "llama",
        "vocab_size": map.vocab_size,
    });
    if let Some(b) = tokens.bos {
        model["bos_token_id"] = json!(b);
    }
    Ok(json!({
        "model": model,
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": false,
            "early_stopping": true,
            "length_penalty": 1.0,
            "max_length": context_length,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": false,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::name_pattern;

    #[test]
    fn cache_names_become_a_layer_pattern() {
        let p = name_pattern(&["past_key_values.0.key", "past_key_values.1.key"]).unwrap();
        assert_eq!(p, "past_key_values.%d.key");
        let p = name_pattern(&["l0_k", "l1_k", "l2_k"]).unwrap();
        assert_eq!(p, "l%d_k");
        assert!(name_pattern(&["a.0.key", "b.1.key"]).is_err());
    }
}
