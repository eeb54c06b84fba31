//! A minimal reader for Hugging Face `tokenizer.json` files of the byte-level BPE
//! kind (GPT-2 / Llama-3 style): `model.type = "BPE"` with `vocab` and `merges`, a
//! `ByteLevel` pre-tokenizer (alone or in a `Sequence`, optionally after a `Digits`
//! split, as SmolLM/StarCoder tokenizers have), and optionally a `TemplateProcessing`
//! post-processor whose special tokens are added around the text. Enough to turn calibration text
//! into token ids; not a general tokenizer (no normalizers, no added-token
//! splitting inside the text, no other model types — those are refused by name).
use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

pub struct Tokenizer {
    vocab: HashMap<String, i64>,
    ranks: HashMap<(String, String), usize>,
    unk: Option<i64>,
    /// Ids added before and after the text by the post-processor.
    prefix: Vec<i64>,
    suffix: Vec<i64>,
    byte_char: [char; 256],
    /// A `Digits` pre-tokenizer runs before the byte-level split.
    digits: Option<Digits>,
}

/// Hugging Face's `Digits` pre-tokenizer: numeric characters are cut out of the text,
/// each on its own (`individual_digits`) or as runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Digits {
    Individual,
    Runs,
}

/// GPT-2's reversible byte → printable char map.
fn bytes_to_unicode() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        out[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    out
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(format!("{}: not JSON: {e}", path.display())))?;
        Tokenizer::from_json(&v)
            .map_err(|e| Error::invalid(format!("tokenizer {}: {e}", path.display())))
    }

    pub fn from_json(v: &Value) -> std::result::Result<Tokenizer, String> {
        let model = v.get("model").ok_or("no `model`")?;
        let ty = model.get("type").and_then(Value::as_str).unwrap_or("");
        if ty != "BPE" {
            return Err(format!(
                "model type '{ty}' is not supported (only byte-level BPE)"
            ));
        }
        let pre = v.get("pre_tokenizer").unwrap_or(&Value::Null);
        let byte_level = pre.get("type").and_then(Value::as_str) == Some("ByteLevel")
            || pre
                .get("pretokenizers")
                .and_then(Value::as_array)
                .is_some_and(|a| {
                    a.iter()
                        .any(|p| p.get("type").and_then(Value::as_str) == Some("ByteLevel"))
                });
        if !byte_level {
            return Err("the pre-tokenizer is not ByteLevel (only byte-level BPE)".into());
        }
        let digits = pre
            .get("pretokenizers")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .find(|p| p.get("type").and_then(Value::as_str) == Some("Digits"))
            })
            .map(|d| {
                if d.get("individual_digits").and_then(Value::as_bool) == Some(true) {
                    Digits::Individual
                } else {
                    Digits::Runs
                }
            });
        if !v.get("normalizer").unwrap_or(&Value::Null).is_null() {
            return Err("normalizers are not supported".into());
        }
        let vocab: HashMap<String, i64> = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or("no `model.vocab` object")?
            .iter()
            .filter_map(|(k, id)| id.as_i64().map(|id| (k.clone(), id)))
            .collect();
        let mut ranks = HashMap::new();
        for (i, m) in model
            .get("merges")
            .and_then(Value::as_array)
            .ok_or("no `model.merges` list")?
            .iter()
            .enumerate()
        {
            let pair = match m {
                Value::String(s) => s
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string())),
                Value::Array(a) if a.len() == 2 => match (a[0].as_str(), a[1].as_str()) {
                    (Some(x), Some(y)) => Some((x.to_string(), y.to_string())),
                    _ => None,
                },
                _ => None,
            };
            let pair = pair.ok_or_else(|| format!("merge #{i} is not a pair: {m}"))?;
            ranks.entry(pair).or_insert(i);
        }
        let unk = model
            .get("unk_token")
            .and_then(Value::as_str)
            .and_then(|t| vocab.get(t).copied());
        let (prefix, suffix) = template(v.get("post_processor").unwrap_or(&Value::Null))?;
        Ok(Tokenizer {
            vocab,
            ranks,
            unk,
            prefix,
            suffix,
            byte_char: bytes_to_unicode(),
            digits,
        })
    }

    /// Token ids of `text`, with the post-processor's special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let mut ids = self.prefix.clone();
        let mut cache: HashMap<&str, Vec<i64>> = HashMap::new();
        let pieces = match self.digits {
            None => pre_tokenize(text),
            Some(d) => split_digits(text, d == Digits::Individual)
                .into_iter()
                .flat_map(pre_tokenize)
                .collect(),
        };
        for piece in pieces {
            if let Some(c) = cache.get(piece) {
                ids.extend_from_slice(c);
                continue;
            }
            let word: Vec<String> = piece
                .bytes()
                .map(|b| self.byte_char[b as usize].to_string())
                .collect();
            let mut out = Vec::new();
            for sym in self.bpe(word) {
                match self.vocab.get(&sym).copied().or(self.unk) {
                    Some(id) => out.push(id),
                    None => {
                        return Err(Error::invalid(format!(
                            "tokenizer: symbol '{sym}' is not in the vocabulary and there is no \
                             unk token"
                        )))
                    }
                }
            }
            ids.extend_from_slice(&out);
            cache.insert(piece, out);
        }
        ids.extend_from_slice(&self.suffix);
        Ok(ids)
    }

    /// The bytes behind `ids` (special and unknown ids are dropped): the inverse of
    /// [`Tokenizer::encode`] for byte-level vocabularies.
    pub fn decode(&self, ids: &[i64]) -> Vec<u8> {
        let by_id: HashMap<i64, &str> = self.vocab.iter().map(|(k, &v)| (v, k.as_str())).collect();
        let byte_of: HashMap<char, u8> = self
            .byte_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let mut out = Vec::new();
        for id in ids {
            let Some(sym) = by_id.get(id) else { continue };
            let bytes: Option<Vec<u8>> = sym.chars().map(|c| byte_of.get(&c).copied()).collect();
            if let Some(b) = bytes {
                out.extend(b);
            }
        }
        out
    }

    /// Applies merges, lowest rank first, until none applies.
    fn bpe(&self, mut word: Vec<String>) -> Vec<String> {
        loop {
            let best = word
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.ranks
                        .get(&(w[0].clone(), w[1].clone()))
                        .map(|&r| (r, i))
                })
                .min();
            let Some((_, i)) = best else { return word };
            let (a, b) = (word[i].clone(), word[i + 1].clone());
            let mut merged = Vec::with_capacity(word.len());
            let mut j = 0;
            while j < word.len() {
                if j + 1 < word.len() && word[j] == a && word[j + 1] == b {
                    merged.push(format!("{a}{b}"));
                    j += 2;
                } else {
                    merged.push(word[j].clone());
                    j += 1;
                }
            }
            word = merged;
        }
    }
}

/// Ids a TemplateProcessing post-processor puts before and after a single sequence.
fn template(pp: &Value) -> std::result::Result<(Vec<i64>, Vec<i64>), String> {
    if pp.is_null() || pp.get("type").and_then(Value::as_str) == Some("ByteLevel") {
        return Ok((Vec::new(), Vec::new()));
    }
    if pp.get("type").and_then(Value::as_str) != Some("TemplateProcessing") {
        return Err(format!(
            "post-processor {} is not supported (TemplateProcessing or ByteLevel only)",
            pp.get("type").unwrap_or(&Value::Null)
        ));
    }
    let specials = pp.get("special_tokens").cloned().unwrap_or(Value::Null);
    let (mut pre, mut post, mut seen) = (Vec::new(), Vec::new(), false);
    for item in pp
        .get("single")
        .and_then(Value::as_array)
        .ok_or("TemplateProcessing without `single`")?
    {
        if item.get("Sequence").is_some() {
            seen = true;
        } else if let Some(tok) = item
            .get("SpecialToken")
            .and_then(|s| s.get("id"))
            .and_then(Value::as_str)
        {
            let ids: Vec<i64> = specials
                .get(tok)
                .and_then(|s| s.get("ids"))
                .and_then(Value::as_array)
                .ok_or_else(|| format!("special token '{tok}' has no ids"))?
                .iter()
                .filter_map(Value::as_i64)
                .collect();
            if seen { &mut post } else { &mut pre }.extend(ids);
        }
    }
    Ok((pre, post))
}

/// The `Digits` pre-tokenizer: numeric characters become pieces of their own (one
/// per character, or one per run), the text between them stays whole.
fn split_digits(text: &str, individual: bool) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut run: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if c.is_numeric() {
            if start < i && run.is_none() {
                out.push(&text[start..i]);
            }
            if individual {
                out.push(&text[i..i + c.len_utf8()]);
                start = i + c.len_utf8();
            } else if run.is_none() {
                run = Some(i);
            }
        } else if let Some(r) = run.take() {
            out.push(&text[r..i]);
            start = i;
        }
    }
    if let Some(r) = run {
        out.push(&text[r..]);
    } else if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

fn contraction(rest: &str) -> Option<usize> {
    ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
        .iter()
        .find(|c| rest.starts_with(*c))
        .map(|c| c.len())
}

/// GPT-2's split, `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`,
/// written out by hand (letters/numbers as Rust's `is_alphabetic`/`is_numeric`).
pub fn pre_tokenize(text: &str) -> Vec<&str> {
    #[derive(PartialEq, Clone, Copy)]
    enum Class {
        Letter,
        Number,
        Space,
        Other,
    }
    let class = |c: char| {
        if c.is_alphabetic() {
            Class::Letter
        } else if c.is_numeric() {
            Class::Number
        } else if c.is_whitespace() {
            Class::Space
        } else {
            Class::Other
        }
    };
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let at = |i: usize| chars.get(i).map_or(text.len(), |c| c.0);
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let start = at(i);
        if let Some(len) = contraction(&text[start..]) {
            out.push(&text[start..start + len]);
            i += text[start..start + len].chars().count();
            continue;
        }
        let c = chars[i].1;
        let o = if c == ' ' && chars.get(i + 1).is_some_and(|n| class(n.1) != Class::Space) {
            i + 1
        } else {
            i
        };
        let cls = class(chars[o].1);
        if cls != Class::Space {
            let mut j = o + 1;
            while j < chars.len() && class(chars[j].1) == cls {
                j += 1;
            }
            out.push(&text[start..at(j)]);
            i = j;
            continue;
        }
        let mut j = i + 1;
        while j < chars.len() && class(chars[j].1) == Class::Space {
            j += 1;
        }
        if j < chars.len() && j - i > 1 {
            j -= 1;
        }
        out.push(&text[start..at(j)]);
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_gpt2() {
        assert_eq!(
            pre_tokenize("Hello world's  2024 tests!!\n\nOk"),
            vec!["Hello", " world", "'s", " ", " 2024", " tests", "!!", "\n", "\n", "Ok"]
        );
    }

    #[test]
    fn digits_pre_tokenizer_splits_numbers_first() {
        assert_eq!(
            split_digits("a  2024 b7", true),
            vec!["a  ", "2", "0", "2", "4", " b", "7"]
        );
        assert_eq!(
            split_digits("a  2024 b7", false),
            vec!["a  ", "2024", " b", "7"]
        );
        // SmolLM2's tokenizer.json: Sequence[Digits(individual), ByteLevel]. The two
        // spaces before the number stay one piece ("ĠĠ"), and no digit merges with a space.
        let v = serde_json::json!({
            "normalizer": null,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}]},
            "post_processor": null,
            "model": {"type": "BPE", "unk_token": null,
                "vocab": {"a": 0, "Ġ": 1, "ĠĠ": 2, "2": 3, "0": 4, "Ġ2": 5, "4": 6},
                "merges": ["Ġ Ġ", "Ġ 2"]}
        });
        let tok = Tokenizer::from_json(&v).unwrap();
        assert_eq!(tok.encode("a  2024").unwrap(), vec![0, 2, 3, 4, 3, 6]);
        // Without the Digits step the same vocabulary gives "Ġ" + "Ġ2".
        let mut plain = v.clone();
        plain["pre_tokenizer"] = serde_json::json!({"type": "ByteLevel"});
        let tok = Tokenizer::from_json(&plain).unwrap();
        assert_eq!(tok.encode("a  2024").unwrap(), vec![0, 1, 5, 4, 3, 6]);
    }
}
