//! Inputs for verification: seeded random values shaped like the model's declared
//! inputs, with LLM-aware defaults (token ids within the vocabulary, an all-ones
//! attention mask, position ids counting up).
use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::ir::{DType, Dim, IoSpec, Model, Use};

/// Typed input data.
#[derive(Clone, Debug)]
pub enum Data {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    Bool(Vec<bool>),
}

#[derive(Clone, Debug)]
pub struct Feed {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Data,
}

/// An output, as f32 for metrics.
#[derive(Clone, Debug)]
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
    pub is_float: bool,
}

/// Facts about inputs read from the graph: the vocabulary size behind token ids.
#[derive(Default, Debug)]
pub struct InputHints {
    pub vocab: BTreeMap<String, i64>,
}

impl InputHints {
    pub fn from_model(m: &Model) -> Self {
        let g = &m.graph;
        let mut vocab = BTreeMap::new();
        for io in &g.inputs {
            for u in g.value(io.value).uses() {
                let Use::Input(n, 1) = u else { continue };
                let node = g.node(*n);
                if node.op_type.starts_with("Gather") {
                    if let Some(t) = node.input(0).and_then(|d| g.initializer(d)) {
                        if let Some(&rows) = t.dims.first() {
                            vocab.insert(g.value_name(io.value).to_string(), rows);
                        }
                    }
                }
            }
        }
        InputHints { vocab }
    }
}

/// A default for a symbolic dim nobody set: batch 1, an empty KV cache (every
/// runtime supports a prefill from nothing), 8 tokens otherwise.
fn default_dim(name: &str) -> i64 {
    let n = name.to_ascii_lowercase();
    if n.contains("batch") {
        1
    } else if n.contains("past") {
        0
    } else {
        8
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64: small, seeded, identical on every platform.
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Seeded random feeds for every input in `specs`.
pub fn random_inputs(
    specs: &[IoSpec],
    dims: &BTreeMap<String, i64>,
    hints: &InputHints,
    seed: u64,
) -> Result<Vec<Feed>> {
    let mut rng = Rng(seed ^ 0x006f_6e6e_7871);
    specs
        .iter()
        .map(|s| {
            let shape: Vec<usize> = s
                .dims
                .as_ref()
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "input '{}' has no declared shape; pass inputs explicitly",
                        s.name
                    ))
                })?
                .iter()
                .map(|d| match d {
                    Dim::Value(v) => Ok(*v as usize),
                    Dim::Param(p) => {
                        Ok(dims.get(p).copied().unwrap_or_else(|| default_dim(p)) as usize)
                    }
                    Dim::Unknown => Err(Error::invalid(format!(
                        "input '{}' has an unknown dim; pass inputs explicitly",
                        s.name
                    ))),
                })
                .collect::<Result<_>>()?;
            let n: usize = shape.iter().product();
            let lname = s.name.to_ascii_lowercase();
            let dtype = s.dtype.unwrap_or(DType::F32);
            let data = match dtype {
                DType::F32 => Data::F32((0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect()),
                DType::F16 => Data::F16(
                    (0..n)
                        .map(|_| half::f16::from_f32(rng.uniform() * 2.0 - 1.0))
                        .collect(),
                ),
                DType::I64 | DType::I32 => {
                    let last = *shape.last().unwrap_or(&1);
                    let v: Vec<i64> = if lname.contains("mask") {
                        vec![1; n]
                    } else if lname.contains("position") {
                        (0..n).map(|i| (i % last.max(1)) as i64).collect()
                    } else {
                        let hi = hints.vocab.get(&s.name).copied().unwrap_or(10).max(1) as u64;
                        (0..n).map(|_| (rng.next() % hi) as i64).collect()
                    };
                    if dtype == DType::I64 {
                        Data::I64(v)
                    } else {
                        Data::I32(v.into_iter().map(|x| x as i32).collect())
                    }
                }
                DType::Bool => Data::Bool((0..n).map(|_| rng.next().is_multiple_of(2)).collect()),
                d => {
                    return Err(Error::invalid(format!(
                        "input '{}': cannot make random {d} values",
                        s.name
                    )))
                }
            };
            Ok(Feed {
                name: s.name.clone(),
                shape,
                data,
            })
        })
        .collect()
}
