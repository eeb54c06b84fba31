//! Calibration samples from text for decoder LLMs: the text is tokenized once,
//! `samples` windows of `seqlen` tokens are picked at seeded random offsets, and
//! each window becomes one set of model inputs built from the declared inputs:
//! token ids, an all-ones attention mask, position ids 0..seqlen, and an empty
//! past KV cache (past length 0) for inputs with a past axis.
use std::path::Path;

use crate::error::{Error, Result};
use crate::ir::{DType, Dim, IoSpec};
use crate::runtime::{HostTensor, NamedTensors};

use super::tokenizer::Tokenizer;

/// Token windows for calibration.
#[derive(Clone, Debug)]
pub struct TextSamples {
    pub windows: Vec<Vec<i64>>,
    /// Tokens in the whole text.
    pub tokens: usize,
}

/// Reads a text file as a tokenizer expects it: Windows (CRLF) and old Mac (CR) line
/// ends become LF, so a text saved on another system gives the same tokens as the one
/// a user evaluates on.
pub fn read_text(path: &Path) -> Result<String> {
    let raw = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(normalize_newlines(&raw))
}

fn normalize_newlines(text: &str) -> String {
    if !text.contains('\r') {
        return text.to_string();
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// splitmix64: a tiny seeded generator, enough to pick offsets reproducibly.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl TextSamples {
    /// Tokenizes `text_file` with `tokenizer` and picks `samples` windows of
    /// `seqlen` tokens (the whole text once if it is shorter than `seqlen`).
    pub fn from_files(
        text_file: &Path,
        tokenizer: &Path,
        samples: usize,
        seqlen: usize,
        seed: u64,
    ) -> Result<TextSamples> {
        let tok = Tokenizer::from_file(tokenizer)?;
        let text = read_text(text_file)?;
        let ids = tok.input_ids(&text)?;
        if ids.is_empty() {
            return Err(Error::invalid(format!(
                "{}: the calibration text has no tokens",
                text_file.display()
            )));
        }
        Ok(Self::windows(&ids, samples, seqlen, seed))
    }

    /// `samples` seeded windows of `seqlen` tokens of `ids`.
    pub fn windows(ids: &[i64], samples: usize, seqlen: usize, seed: u64) -> TextSamples {
        let seqlen = seqlen.max(1);
        let mut state = seed;
        let windows = if ids.len() <= seqlen {
            vec![ids.to_vec()]
        } else {
            let span = (ids.len() - seqlen + 1) as u64;
            (0..samples.max(1))
                .map(|_| {
                    let s = (splitmix(&mut state) % span) as usize;
                    ids[s..s + seqlen].to_vec()
                })
                .collect()
        };
        TextSamples {
            windows,
            tokens: ids.len(),
        }
    }
}

fn int_tensor(dtype: DType, shape: Vec<usize>, values: &[i64]) -> Result<HostTensor> {
    match dtype {
        DType::I64 => HostTensor::from_i64(shape, values),
        DType::I32 => {
            let v: Vec<i32> = values.iter().map(|&x| x as i32).collect();
            HostTensor::from_i32(shape, &v)
        }
        other => Err(Error::invalid(format!(
            "integer input of type {other} is not supported"
        ))),
    }
}

/// Model inputs for one window of token ids (batch 1), from the declared inputs.
pub fn feeds_for_tokens(specs: &[IoSpec], ids: &[i64]) -> Result<NamedTensors> {
    let l = ids.len();
    let mut out = Vec::with_capacity(specs.len());
    for s in specs {
        let name = s.name.as_str();
        let dtype = s.dtype.unwrap_or(DType::I64);
        let t = if name.contains("input_ids") {
            int_tensor(dtype, vec![1, l], ids)?
        } else if name.contains("attention_mask") {
            int_tensor(dtype, vec![1, l], &vec![1; l])?
        } else if name.contains("position_ids") {
            let pos: Vec<i64> = (0..l as i64).collect();
            int_tensor(dtype, vec![1, l], &pos)?
        } else if dtype.is_float() && name.contains("past") {
            // A past KV input: batch 1, every other symbolic axis (the past length) 0.
            let dims = s.dims.as_ref().ok_or_else(|| {
                Error::tensor(
                    name,
                    "input has no declared shape to build an empty past from",
                )
            })?;
            let shape: Vec<usize> = dims
                .iter()
                .enumerate()
                .map(|(i, d)| match d {
                    Dim::Value(v) if *v >= 0 => *v as usize,
                    _ if i == 0 => 1,
                    _ => 0,
                })
                .collect();
            HostTensor::from_bytes(dtype, shape.clone(), Vec::new()).map_err(|_| {
                Error::tensor(
                    name,
                    format!("cannot build an empty past of shape {shape:?}: no symbolic past axis"),
                )
            })?
        } else {
            return Err(Error::tensor(
                name,
                "text calibration fills only decoder inputs (input_ids, attention_mask, \
                 position_ids, past key/values); give calibration files instead",
            ));
        };
        out.push((s.name.clone(), t));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::normalize_newlines;

    #[test]
    fn line_ends_become_lf() {
        assert_eq!(normalize_newlines("a\r\nb\rc\nd"), "a\nb\nc\nd");
        assert_eq!(normalize_newlines("plain\n"), "plain\n");
    }
}
