//! A decoder as a next-token function: token ids (and an optional KV cache) in,
//! logits (and the new cache) out. Which inputs carry ids, positions, the mask and
//! the past, and which output holds the logits, comes from the decoder map; a model
//! the map cannot read (a quantized form it does not know) falls back to the usual
//! exporter names.
use std::path::Path;

use crate::error::{Error, Result};
use crate::ir::{DType, Dim, Graph, IoSpec};
use crate::llm::DecoderMap;
use crate::runtime::{self, HostTensor, NamedTensors, Prepared, Runtime, Session};

/// One past input and the present output that continues it.
#[derive(Clone, Debug)]
struct KvPair {
    past: String,
    present: String,
}

/// Names of the decoder's inputs and outputs by role.
#[derive(Clone, Debug)]
pub struct DecoderIoNames {
    pub input_ids: String,
    pub position_ids: Option<String>,
    pub attention_mask: Option<String>,
    kv: Vec<KvPair>,
    pub logits: String,
    /// How the roles were found (the map, or names when it could not be built).
    pub source: String,
}

impl DecoderIoNames {
    /// Roles from the decoder map of `g`, else from input and output names.
    pub fn of(g: &Graph) -> Result<DecoderIoNames> {
        match DecoderMap::build(g) {
            Ok(map) => Self::from_map(&map),
            Err(e) => Self::from_names(g, &e.to_string()),
        }
    }

    fn from_map(map: &DecoderMap) -> Result<DecoderIoNames> {
        let io = &map.io;
        let logits = io
            .logits
            .as_ref()
            .ok_or_else(|| Error::invalid("the decoder's logits are not a graph output"))?;
        let mut kv = Vec::new();
        for past in &io.past {
            let present = io
                .present
                .iter()
                .find(|p| p.layer == past.layer)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "layer {}: the past KV inputs have no present outputs to continue from",
                        past.layer
                    ))
                })?;
            kv.push(KvPair {
                past: past.key.name.clone(),
                present: present.key.name.clone(),
            });
            kv.push(KvPair {
                past: past.value.name.clone(),
                present: present.value.name.clone(),
            });
        }
        Ok(DecoderIoNames {
            input_ids: io.input_ids.name.clone(),
            position_ids: io.position_ids.as_ref().map(|t| t.name.clone()),
            attention_mask: io.attention_mask.as_ref().map(|t| t.name.clone()),
            kv,
            logits: logits.name.clone(),
            source: "decoder map".into(),
        })
    }

    fn from_names(g: &Graph, why: &str) -> Result<DecoderIoNames> {
        let inputs: Vec<String> = g
            .inputs
            .iter()
            .map(|i| g.value_name(i.value).to_string())
            .collect();
        let outputs: Vec<String> = g
            .outputs
            .iter()
            .map(|o| g.value_name(o.value).to_string())
            .collect();
        let find = |key: &str| inputs.iter().find(|n| n.contains(key)).cloned();
        let input_ids = find("input_ids").ok_or_else(|| {
            Error::invalid(format!(
                "not readable as a decoder ({why}), and no input is named input_ids"
            ))
        })?;
        let past: Vec<&String> = inputs.iter().filter(|n| n.contains("past")).collect();
        let present: Vec<&String> = outputs.iter().filter(|n| n.contains("present")).collect();
        if past.len() != present.len() {
            return Err(Error::invalid(format!(
                "not readable as a decoder ({why}); by name it has {} past inputs but {} \
                 present outputs",
                past.len(),
                present.len()
            )));
        }
        let logits = outputs
            .iter()
            .find(|n| n.contains("logits"))
            .or_else(|| outputs.first())
            .cloned()
            .ok_or_else(|| Error::invalid("the model has no outputs"))?;
        Ok(DecoderIoNames {
            input_ids,
            position_ids: find("position_ids"),
            attention_mask: find("attention_mask"),
            kv: past
                .into_iter()
                .zip(present)
                .map(|(p, q)| KvPair {
                    past: p.clone(),
                    present: q.clone(),
                })
                .collect(),
            logits,
            source: format!("input and output names (decoder map: {why})"),
        })
    }

    pub fn has_cache(&self) -> bool {
        !self.kv.is_empty()
    }
}

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

fn int_tensor(spec: &IoSpec, shape: Vec<usize>, values: &[i64]) -> Result<HostTensor> {
    match spec.dtype.unwrap_or(DType::I64) {
        DType::I64 => HostTensor::from_i64(shape, values),
        DType::I32 => {
            let v: Vec<i32> = values.iter().map(|&x| x as i32).collect();
            HostTensor::from_i32(shape, &v)
        }
        other => Err(Error::tensor(
            &spec.name,
            format!("a {other} input cannot take token ids, positions or a mask"),
        )),
    }
}

/// An empty past for `spec`: batch 1, the cache length 0, fixed dims as declared.
fn empty_past(spec: &IoSpec) -> Result<HostTensor> {
    let dims = spec
        .dims
        .as_ref()
        .ok_or_else(|| Error::tensor(&spec.name, "the past input has no declared shape"))?;
    // [batch, heads, past, head_size] is what every exporter writes; for another rank
    // the first symbolic axis after the batch is taken for the past length.
    let past_axis = if dims.len() == 4 {
        2
    } else {
        (1..dims.len())
            .find(|&i| !matches!(dims[i], Dim::Value(_)))
            .ok_or_else(|| Error::tensor(&spec.name, "the past input has no symbolic axis"))?
    };
    let mut shape = Vec::with_capacity(dims.len());
    for (i, d) in dims.iter().enumerate() {
        shape.push(match d {
            _ if i == past_axis => 0,
            Dim::Value(v) if *v >= 0 => *v as usize,
            _ if i == 0 => 1,
            _ => {
                return Err(Error::tensor(
                    &spec.name,
                    format!("axis {i} of the past input has no fixed size"),
                ))
            }
        });
    }
    let dtype = spec.dtype.unwrap_or(DType::F32);
    HostTensor::from_bytes(dtype, shape, Vec::new())
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
