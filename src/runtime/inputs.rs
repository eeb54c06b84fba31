//! Inputs for verification: seeded random values shaped like the model's declared
//! inputs, with LLM-aware defaults (token ids within the vocabulary, an all-ones
//! attention mask, position ids counting up from the cache length).
use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::ir::{DType, Dim, Graph, IoSpec, Model, Use, ValueId};
use crate::runtime::{HostTensor, NamedTensors, RuntimeError};

/// Facts about inputs read from the graph: the vocabulary size behind token ids.
#[derive(Default, Debug, Clone)]
pub struct InputHints {
    pub vocab: BTreeMap<String, i64>,
}

/// Ops an id input may pass through on its way to the embedding Gather.
const PASS_THROUGH: &[&str] = &[
    "Cast",
    "Reshape",
    "Unsqueeze",
    "Squeeze",
    "Flatten",
    "Identity",
];

impl InputHints {
    pub fn from_model(m: &Model) -> Self {
        let g = &m.graph;
        let mut vocab = BTreeMap::new();
        for io in &g.inputs {
            if let Some(rows) = gather_rows(g, io.value, 3) {
                vocab.insert(g.value_name(io.value).to_string(), rows);
            }
        }
        InputHints { vocab }
    }
}

/// Rows of the table a Gather (or GatherBlockQuantized) indexes with `v`, looking
/// through up to `depth` shape/cast ops.
fn gather_rows(g: &Graph, v: ValueId, depth: usize) -> Option<i64> {
    let mut best: Option<i64> = None;
    for u in g.value(v).uses() {
        let Use::Input(n, slot) = *u else { continue };
        let node = g.node(n);
        let rows = if slot == 1
            && node.op_type.starts_with("Gather")
            && node.attr_int("axis").unwrap_or(0) == 0
        {
            node.input(0).and_then(|d| {
                g.initializer(d)
                    .and_then(|t| t.dims.first().copied())
                    .or_else(|| {
                        g.info(d)
                            .and_then(|i| i.ty.as_ref())
                            .and_then(|t| t.tensor_parts())
                            .and_then(|(_, dims)| match dims?.first()? {
                                Dim::Value(r) => Some(*r),
                                _ => None,
                            })
                    })
            })
        } else if slot == 0 && depth > 0 && PASS_THROUGH.contains(&node.op_type.as_str()) {
            node.output(0).and_then(|o| gather_rows(g, o, depth - 1))
        } else {
            None
        };
        if let Some(r) = rows.filter(|&r| r > 0) {
            best = Some(best.map_or(r, |b| b.min(r)));
        }
    }
    best
}

/// Tokens of a default sequence: enough for attention and rotary to mix positions.
pub const DEFAULT_SEQ: i64 = 16;

/// The value of a symbolic dim nobody set, for the names exporters use: batch 1,
/// an empty KV cache (every runtime supports a prefill from nothing), 16 tokens.
pub fn default_dim(name: &str, dims: &BTreeMap<String, i64>) -> Option<i64> {
    let n = name.to_ascii_lowercase();
    let lookup = |pred: &dyn Fn(&str) -> bool, dflt: i64| {
        dims.iter()
            .find(|(k, _)| pred(&k.to_ascii_lowercase()))
            .map_or(dflt, |(_, v)| *v)
    };
    let is_past = |k: &str| k.contains("past");
    let is_seq = |k: &str| {
        !k.contains("past") && !k.contains("total") && (k.contains("seq") || k.contains("len"))
    };
    if n.contains("batch") {
        Some(1)
    } else if is_past(&n) {
        Some(0)
    } else if n.contains("total") && (n.contains("seq") || n.contains("len")) {
        Some(lookup(&is_past, 0) + lookup(&is_seq, DEFAULT_SEQ))
    } else if is_seq(&n) || n.contains("token") {
        Some(DEFAULT_SEQ)
    } else {
        None
    }
}

/// The value of a symbolic dim: given in `dims`, else its default; an exporter's
/// expression (`past_seq_len + seq_len`, `2*sequence_length`) is evaluated term by
/// term, so a mask sized past + new agrees with the past and the ids it goes with.
pub fn dim_value(name: &str, dims: &BTreeMap<String, i64>) -> Option<i64> {
    let term = |t: &str| {
        let t = t.trim();
        t.parse::<i64>()
            .ok()
            .or_else(|| dims.get(t).copied())
            .or_else(|| default_dim(t, dims))
    };
    if let Some(v) = dims.get(name) {
        return Some(*v);
    }
    if name.contains('+') {
        return name.split('+').map(|t| dim_value(t.trim(), dims)).sum();
    }
    if name.contains('*') {
        return name.split('*').map(term).product();
    }
    term(name)
}

/// The symbolic dims fixed by tensors already given (calibration or input files):
/// a plain name takes the size of its axis; an expression (`past_seq_len +
/// seq_len`, `a*b`) with one unknown term is solved for it once the others are
/// known. Repeats until nothing new is learned.
pub fn solve_dims(specs: &[IoSpec], feeds: &NamedTensors) -> BTreeMap<String, i64> {
    let mut dims = BTreeMap::new();
    let mut exprs: Vec<(String, i64)> = Vec::new();
    for s in specs {
        let (Some(declared), Some((_, t))) = (&s.dims, feeds.iter().find(|(n, _)| n == &s.name))
        else {
            continue;
        };
        for (d, &size) in declared.iter().zip(&t.shape) {
            if let Dim::Param(p) = d {
                let p = p.trim();
                if p.contains('+') || p.contains('*') {
                    exprs.push((p.to_string(), size as i64));
                } else {
                    dims.insert(p.to_string(), size as i64);
                }
            }
        }
    }
    loop {
        let mut learned = false;
        for (e, size) in &exprs {
            let sum = e.contains('+');
            let terms: Vec<&str> = e
                .split(if sum { '+' } else { '*' })
                .map(str::trim)
                .collect();
            let known = |t: &str| t.parse::<i64>().ok().or_else(|| dims.get(t).copied());
            let unknown: Vec<&str> = terms
                .iter()
                .copied()
                .filter(|t| known(t).is_none())
                .collect();
            let [u] = unknown[..] else { continue };
            let rest: Vec<i64> = terms.iter().filter_map(|t| known(t)).collect();
            let v = if sum {
                Some(size - rest.iter().sum::<i64>())
            } else {
                let p: i64 = rest.iter().product();
                (p != 0 && size % p == 0).then(|| size / p)
            };
            if let Some(v) = v.filter(|v| *v >= 0) {
                dims.insert(u.to_string(), v);
                learned = true;
            }
        }
        if !learned {
            return dims;
        }
    }
}

/// Concrete shapes for `specs`: symbolic dims from `dims`, else the defaults of
/// `default_dim`, else an error naming the dim.
pub fn resolve_shapes(specs: &[IoSpec], dims: &BTreeMap<String, i64>) -> Result<Vec<Vec<usize>>> {
    specs
        .iter()
        .map(|s| {
            let declared = s.dims.as_ref().ok_or_else(|| {
                Error::invalid(format!(
                    "input '{}' has no declared shape; give its values with --inputs",
                    s.name
                ))
            })?;
            declared
                .iter()
                .enumerate()
                .map(|(axis, d)| match d {
                    Dim::Value(v) if *v >= 0 => Ok(*v as usize),
                    Dim::Param(p) => {
                        let v = dim_value(p, dims).ok_or_else(|| {
                            RuntimeError::UnresolvedDim {
                                input: s.name.clone(),
                                dim: p.clone(),
                            }
                        })?;
                        usize::try_from(v)
                            .map_err(|_| Error::invalid(format!("--dim {p}={v}: must not be negative")))
                    }
                    _ => Err(Error::invalid(format!(
                        "input '{}': dim {axis} has no size and no name; give its values with --inputs",
                        s.name
                    ))),
                })
                .collect()
        })
        .collect()
}

/// splitmix64: small, seeded, identical on every platform.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x006f_6e6e_7871)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn signed(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Seeded random feeds for every input in `specs`: floats uniform in [-1, 1);
/// integer inputs named like ids in [0, vocab) (vocab from `hints`, else 10),
/// masks all ones, position ids counting from the past length; other integers in
/// [0, 10); bools random.
pub fn random_inputs(
    specs: &[IoSpec],
    dims: &BTreeMap<String, i64>,
    hints: &InputHints,
    seed: u64,
) -> Result<NamedTensors> {
    let shapes = resolve_shapes(specs, dims)?;
    let past = dims
        .iter()
        .find(|(k, _)| k.to_ascii_lowercase().contains("past"))
        .map_or(0, |(_, v)| *v);
    let mut rng = Rng::new(seed);
    specs
        .iter()
        .zip(shapes)
        .map(|(s, shape)| {
            let n: usize = shape.iter().product();
            let lname = s.name.to_ascii_lowercase();
            let dtype = s.dtype.unwrap_or(DType::F32);
            let ints = |rng: &mut Rng| -> Vec<i64> {
                let last = shape.last().copied().unwrap_or(1).max(1);
                if lname.contains("mask") {
                    vec![1; n]
                } else if lname.contains("position") {
                    (0..n).map(|i| past + (i % last) as i64).collect()
                } else {
                    let hi = hints.vocab.get(&s.name).copied().unwrap_or(10).max(1) as u64;
                    (0..n).map(|_| rng.below(hi) as i64).collect()
                }
            };
            let t = match dtype {
                DType::F32 | DType::F16 | DType::BF16 | DType::F64 => {
                    let v: Vec<f32> = (0..n).map(|_| rng.signed()).collect();
                    match dtype {
                        DType::F16 => HostTensor::from_f16(shape, &v)?,
                        DType::BF16 => HostTensor::from_bf16(shape, &v)?,
                        DType::F64 => {
                            let b = v.iter().flat_map(|x| (*x as f64).to_le_bytes()).collect();
                            HostTensor::from_bytes(DType::F64, shape, b)?
                        }
                        _ => HostTensor::from_f32(shape, &v)?,
                    }
                }
                DType::I64
                | DType::I32
                | DType::I16
                | DType::I8
                | DType::U8
                | DType::U16
                | DType::U32
                | DType::U64 => {
                    let v = ints(&mut rng);
                    let size = dtype.bits() / 8;
                    let bytes = v
                        .iter()
                        .flat_map(|x| x.to_le_bytes()[..size].to_vec())
                        .collect();
                    HostTensor::from_bytes(dtype, shape, bytes)?
                }
                DType::Bool => {
                    let v: Vec<bool> = if lname.contains("mask") {
                        vec![true; n]
                    } else {
                        (0..n).map(|_| rng.below(2) == 1).collect()
                    };
                    HostTensor::from_bool(shape, &v)?
                }
                d => {
                    return Err(Error::invalid(format!(
                        "input '{}': cannot make random {d} values; give them with --inputs",
                        s.name
                    )))
                }
            };
            Ok((s.name.clone(), t))
        })
        .collect()
}

/// Token ids, positions or a mask as the integer type `spec` declares.
pub fn int_tensor(spec: &IoSpec, shape: Vec<usize>, values: &[i64]) -> Result<HostTensor> {
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
pub fn empty_past(spec: &IoSpec) -> Result<HostTensor> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: DType, dims: &[Dim]) -> IoSpec {
        IoSpec {
            name: name.into(),
            dtype: Some(dtype),
            dims: Some(dims.to_vec()),
        }
    }

    #[test]
    fn dim_expressions_are_evaluated_term_by_term() {
        let p = |s: &str| Dim::Param(s.into());
        let specs = [
            spec("input_ids", DType::I64, &[p("batch"), p("seq_len")]),
            spec(
                "past_key_values.0.key",
                DType::F32,
                &[
                    p("batch"),
                    Dim::Value(2),
                    p("past_sequence_len"),
                    Dim::Value(16),
                ],
            ),
            spec(
                "attention_mask",
                DType::I64,
                &[p("batch"), p("past_seq_len + seq_len")],
            ),
            spec("doubled", DType::F32, &[p("2*seq_len")]),
        ];
        let shapes = resolve_shapes(&specs, &BTreeMap::new()).unwrap();
        assert_eq!(shapes[1][2], 0, "an empty cache by default");
        assert_eq!(shapes[2], vec![1, 16], "mask = past (0) + new (16)");
        assert_eq!(shapes[3], vec![32]);
        let given = BTreeMap::from([("past_seq_len".to_string(), 3), ("seq_len".to_string(), 1)]);
        assert_eq!(resolve_shapes(&specs, &given).unwrap()[2], vec![1, 4]);
    }

    #[test]
    fn dims_are_solved_from_given_tensors() {
        let p = |s: &str| Dim::Param(s.into());
        let specs = [
            spec("input_ids", DType::I64, &[p("batch"), p("seq_len")]),
            spec(
                "attention_mask",
                DType::I64,
                &[p("batch"), p("past_len + seq_len")],
            ),
            spec("x", DType::F32, &[p("rows*cols")]),
            spec("y", DType::F32, &[p("rows")]),
        ];
        let t = |shape: Vec<usize>| {
            HostTensor::from_f32(shape.clone(), &vec![0.0; shape.iter().product()]).unwrap()
        };
        let feeds = vec![
            ("input_ids".to_string(), t(vec![1, 5])),
            ("attention_mask".to_string(), t(vec![1, 12])),
            ("x".to_string(), t(vec![12])),
            ("y".to_string(), t(vec![3])),
        ];
        let d = solve_dims(&specs, &feeds);
        assert_eq!(d["past_len"], 7);
        assert_eq!(d["seq_len"], 5);
        assert_eq!(d["cols"], 4);
        assert_eq!(d["batch"], 1);
    }

    #[test]
    fn llm_inputs_get_sensible_values() {
        let p = |s: &str| Dim::Param(s.into());
        let specs = [
            spec(
                "input_ids",
                DType::I64,
                &[p("batch_size"), p("sequence_length")],
            ),
            spec(
                "attention_mask",
                DType::I64,
                &[p("batch_size"), p("total_sequence_length")],
            ),
            spec(
                "position_ids",
                DType::I64,
                &[p("batch_size"), p("sequence_length")],
            ),
        ];
        let mut hints = InputHints::default();
        hints.vocab.insert("input_ids".into(), 5);
        let dims = BTreeMap::from([
            ("past_sequence_length".to_string(), 3),
            ("sequence_length".to_string(), 4),
        ]);
        let f = random_inputs(&specs, &dims, &hints, 1).unwrap();
        assert_eq!(f[0].1.shape, vec![1, 4]);
        assert!(f[0]
            .1
            .to_i64_vec()
            .unwrap()
            .iter()
            .all(|&v| (0..5).contains(&v)));
        assert_eq!(f[1].1.shape, vec![1, 7]);
        assert!(f[1].1.to_i64_vec().unwrap().iter().all(|&v| v == 1));
        assert_eq!(f[2].1.to_i64_vec().unwrap(), vec![3, 4, 5, 6]);
        // Same seed, same values.
        assert_eq!(random_inputs(&specs, &dims, &hints, 1).unwrap(), f);
    }

    #[test]
    fn an_unknown_symbolic_dim_is_an_error_naming_it() {
        let specs = [spec(
            "x",
            DType::F32,
            &[Dim::Param("N".into()), Dim::Value(3)],
        )];
        let e = random_inputs(&specs, &BTreeMap::new(), &InputHints::default(), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'N'") && e.contains("--dim N="), "{e}");
        let dims = BTreeMap::from([("N".to_string(), 2)]);
        let f = random_inputs(&specs, &dims, &InputHints::default(), 0).unwrap();
        assert_eq!(f[0].1.shape, vec![2, 3]);
        assert!(f[0]
            .1
            .to_f32_vec()
            .unwrap()
            .iter()
            .all(|v| (-1.0..1.0).contains(v)));
    }
}
