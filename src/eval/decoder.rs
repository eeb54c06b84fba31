//! A decoder as a next-token function: token ids (and an optional KV cache) in,
//! logits (and the new cache) out. Which inputs carry ids, positions, the mask and
//! the past, and which output holds the logits, comes from the decoder map; a model
//! the map cannot read (a quantized form it does not know) falls back to the usual
//! exporter names.
use std::path::Path;

use crate::error::{Error, Result};
use crate::ir::IoSpec;
pub use crate::llm::DecoderIoNames;
use crate::runtime::inputs::{empty_past, int_tensor};
use crate::runtime::{self, NamedTensors, Prepared, Runtime, Session};

/// The KV cache after some tokens: the present outputs, keyed by the past input
/// each one feeds next.
pub struct Cache {
    tensors: NamedTensors,
    len: usize,
}

impl Cache {
    /// Tokens the cache holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Logits of one forward pass, `[rows, vocab]` row-major.
pub struct Logits {
    pub values: Vec<f32>,
    pub vocab: usize,
}

impl Logits {
    pub fn rows(&self) -> usize {
        self.values.len() / self.vocab.max(1)
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.vocab..(i + 1) * self.vocab]
    }
}

/// A session on a decoder model.
pub struct Decoder {
    pub names: DecoderIoNames,
    specs: Vec<IoSpec>,
    session: Box<dyn Session>,
    _file: Prepared,
}

impl Decoder {
    /// Opens `path` on `rt` (lowered for tract when needed).
    pub fn open(rt: &dyn Runtime, path: &Path) -> Result<Decoder> {
        let model = crate::io::load(path)?;
        let names = DecoderIoNames::of(&model.graph)?;
        drop(model);
        let file = runtime::prepare(path, rt.name(), &[])?;
        let session = rt.open(file.path())?;
        let specs = session.inputs().to_vec();
        for s in &specs {
            let known = s.name == names.input_ids
                || names.position_ids.as_ref() == Some(&s.name)
                || names.attention_mask.as_ref() == Some(&s.name)
                || names.kv.iter().any(|k| k.past == s.name);
            if !known {
                return Err(Error::tensor(
                    &s.name,
                    format!(
                        "{}: an input that is not a decoder's (ids, positions, mask, past KV)",
                        path.display()
                    ),
                ));
            }
        }
        Ok(Decoder {
            names,
            specs,
            session,
            _file: file,
        })
    }

    /// Runs `ids` (batch 1) after `cache` (none: an empty past); returns the logits of
    /// every new token and the cache after them (when the model has one).
    pub fn forward(
        &mut self,
        ids: &[i64],
        cache: Option<&Cache>,
    ) -> Result<(Logits, Option<Cache>)> {
        let past = cache.map_or(0, Cache::len);
        let seq = ids.len();
        let mut feeds = Vec::with_capacity(self.specs.len());
        for s in &self.specs {
            let t = if s.name == self.names.input_ids {
                int_tensor(s, vec![1, seq], ids)?
            } else if self.names.position_ids.as_ref() == Some(&s.name) {
                let pos: Vec<i64> = (past as i64..(past + seq) as i64).collect();
                int_tensor(s, vec![1, seq], &pos)?
            } else if self.names.attention_mask.as_ref() == Some(&s.name) {
                int_tensor(s, vec![1, past + seq], &vec![1; past + seq])?
            } else {
                match cache {
                    Some(c) => c
                        .tensors
                        .iter()
                        .find(|(n, _)| *n == s.name)
                        .map(|(_, t)| t.clone())
                        .ok_or_else(|| Error::tensor(&s.name, "the cache has no such tensor"))?,
                    None => empty_past(s)?,
                }
            };
            feeds.push((s.name.clone(), t));
        }
        let outputs = self.session.run(&feeds)?;
        let mut logits = None;
        let mut next = Vec::new();
        for (name, t) in outputs {
            if name == self.names.logits {
                logits = Some(t);
            } else if let Some(k) = self.names.kv.iter().find(|k| k.present == name) {
                next.push((k.past.clone(), t));
            }
        }
        let t = logits
            .ok_or_else(|| Error::tensor(&self.names.logits, "the run returned no logits"))?;
        let vocab = t.shape.last().copied().unwrap_or(0);
        let values = t.to_f32_vec()?;
        if vocab == 0 || values.len() != seq * vocab {
            return Err(Error::tensor(
                &self.names.logits,
                format!(
                    "logits of shape {:?} for {seq} tokens: expected one row of the vocabulary \
                     per token",
                    t.shape
                ),
            ));
        }
        let cache = (!self.names.kv.is_empty()).then_some(Cache {
            tensors: next,
            len: past + seq,
        });
        Ok((Logits { values, vocab }, cache))
    }
}
