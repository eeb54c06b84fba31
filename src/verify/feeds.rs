//! What a verification feeds a model, chosen once from the reference:
//!
//! 1. calibration or input files when given (their shapes fix the symbolic dims);
//! 2. else, for a decoder with a KV cache, a prefill of random tokens on an empty
//!    cache and one decode step continuing the reference's cache, with ids,
//!    positions and mask of consistent lengths (roles from the decoder map);
//! 3. else seeded random inputs whose symbolic dims come from `--dim`, then from
//!    what the graph implies (a Reshape to a constant shape), then from the usual
//!    defaults (batch 1, sequence 16), and last from trying sizes until the
//!    reference runs (the smallest a Conv/Pad/Slice chain accepts).
//!
//! Every dim chosen is named in a note.
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::Result;
use crate::ir::{Dim, Graph, IoSpec, Model, Use};
use crate::llm::DecoderIoNames;
use crate::runtime::inputs::{
    default_dim, dim_value, empty_past, int_tensor, InputHints, DEFAULT_SEQ,
};
use crate::runtime::NamedTensors;

/// Sizes tried, smallest first, for a dim nothing else fixes.
pub const PROBE_SIZES: &[i64] = &[16, 32, 64, 128, 224, 256, 512];

/// How the inputs of a comparison are made.
#[derive(Clone, Debug)]
pub enum FeedPlan {
    /// Input sets read from files (one sample each).
    Files(Vec<PathBuf>),
    /// Calibration samples (the first `count` of them).
    Calib {
        source: crate::calib::data::Source,
        count: usize,
    },
    /// A decoder with a KV cache: prefill `seq` tokens, then one decode step.
    Decoder {
        names: DecoderIoNames,
        seq: usize,
        vocab: i64,
    },
    /// Seeded random inputs at one of these dim sets: the first the reference runs
    /// on is used (one set unless some dim had to be probed).
    Random {
        candidates: Vec<(BTreeMap<String, i64>, String)>,
    },
}

/// The plan and the notes that say how each dim was chosen.
#[derive(Clone, Debug)]
pub struct Chosen {
    pub plan: FeedPlan,
    pub notes: Vec<String>,
}

/// The names in a dim expression that are not numbers (`past + seq` → past, seq).
fn terms(p: &str) -> Vec<String> {
    p.split(['+', '*'])
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.parse::<i64>().is_err())
        .map(str::to_string)
        .collect()
}

/// For an input read directly by a Reshape to a constant shape with no 0 or -1,
/// the element count that shape implies.
fn reshape_elements(g: &Graph, input: &str) -> Option<(i64, String)> {
    let v = g.find(input)?;
    g.value(v).uses().iter().find_map(|u| {
        let Use::Input(n, 0) = *u else { return None };
        let node = g.node(n);
        if node.op_type != "Reshape" {
            return None;
        }
        let shape = g.initializer(node.input(1)?)?.to_i64().ok()?;
        shape
            .iter()
            .all(|&d| d > 0)
            .then(|| (shape.iter().product(), node.name().to_string()))
    })
}

/// Dims fixed by `--dim`, the graph and the defaults; the rest still open.
fn fixed_dims(
    g: &Graph,
    specs: &[IoSpec],
    given: &BTreeMap<String, i64>,
    notes: &mut Vec<String>,
) -> (BTreeMap<String, i64>, Vec<(String, bool)>) {
    let mut dims = given.clone();
    for (k, v) in given {
        notes.push(format!("dim {k} = {v} (--dim)"));
    }
    // Graph implications: one unknown dim of an input that a Reshape flattens.
    for s in specs {
        let Some(declared) = &s.dims else { continue };
        let open: Vec<&String> = declared
            .iter()
            .filter_map(|d| match d {
                Dim::Param(p) if terms(p).len() == 1 && !dims.contains_key(p.trim()) => Some(p),
                _ => None,
            })
            .collect();
        let [p] = open[..] else { continue };
        let Some((elements, node)) = reshape_elements(g, &s.name) else {
            continue;
        };
        let known: Option<i64> = declared
            .iter()
            .filter(|d| !matches!(d, Dim::Param(q) if q == p))
            .map(|d| match d {
                Dim::Value(v) => Some(*v),
                Dim::Param(q) => dim_value(q, &dims),
                Dim::Unknown => None,
            })
            .product();
        if let Some(k) = known.filter(|&k| k > 0 && elements % k == 0) {
            dims.insert(p.clone(), elements / k);
            notes.push(format!(
                "dim {p} = {} (Reshape '{node}' takes {elements} elements of '{}')",
                elements / k,
                s.name
            ));
        }
    }
    let mut open: Vec<(String, bool)> = Vec::new();
    for s in specs {
        let Some(declared) = &s.dims else { continue };
        for (axis, d) in declared.iter().enumerate() {
            let Dim::Param(p) = d else { continue };
            for t in terms(p) {
                if dims.contains_key(&t) || open.iter().any(|(o, _)| *o == t) {
                    continue;
                }
                match default_dim(&t, &dims) {
                    Some(v) => {
                        dims.insert(t.clone(), v);
                        notes.push(format!("dim {t} = {v} (default)"));
                    }
                    None => open.push((t, axis == 0 && terms(p).len() == 1)),
                }
            }
        }
    }
    (dims, open)
}

/// Whether every input of `specs` has a decoder role in `names`.
fn all_roles(names: &DecoderIoNames, specs: &[IoSpec]) -> bool {
    specs.iter().all(|s| {
        s.name == names.input_ids
            || names.position_ids.as_ref() == Some(&s.name)
            || names.attention_mask.as_ref() == Some(&s.name)
            || names.kv.iter().any(|k| k.past == s.name)
    })
}

/// Chooses how to feed `model` (the reference).
pub fn choose(
    model: &Model,
    inputs: Option<&PathBuf>,
    calib: Option<&PathBuf>,
    given: &BTreeMap<String, i64>,
    samples: usize,
) -> Result<Chosen> {
    let g = &model.graph;
    let specs = g.input_specs();
    let mut notes = Vec::new();
    if let Some(p) = inputs {
        notes.push(format!("inputs from {}", p.display()));
        return Ok(Chosen {
            plan: FeedPlan::Files(crate::tensorfile::sample_sets(p)?),
            notes,
        });
    }
    if let Some(p) = calib {
        let source = crate::calib::data::Source::open(p)?;
        let count = samples.clamp(1, source.len().max(1));
        let first = source.sample(0, &specs, &InputHints::from_model(model))?;
        let dims = crate::runtime::inputs::solve_dims(&specs, &first);
        let said: Vec<String> = dims.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        notes.push(format!(
            "inputs: {count} calibration sample(s) from {}{}",
            p.display(),
            if said.is_empty() {
                String::new()
            } else {
                format!(" (dims {})", said.join(", "))
            }
        ));
        return Ok(Chosen {
            plan: FeedPlan::Calib { source, count },
            notes,
        });
    }
    if let Ok(names) = DecoderIoNames::of(g) {
        if names.has_cache() && all_roles(&names, &specs) {
            let hints = InputHints::from_model(model);
            let vocab = hints.vocab.get(&names.input_ids).copied().unwrap_or(2);
            // The ids' sequence axis, when --dim names it.
            let seq = specs
                .iter()
                .find(|s| s.name == names.input_ids)
                .and_then(|s| s.dims.as_ref()?.get(1).cloned())
                .and_then(|d| match d {
                    Dim::Param(p) => given.get(p.trim()).copied(),
                    _ => None,
                })
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_SEQ);
            notes.push(format!(
                "decoder inputs ({}): prefill of {seq} tokens on an empty cache, then one \
                 decode step on the reference's cache",
                names.source
            ));
            return Ok(Chosen {
                plan: FeedPlan::Decoder {
                    names,
                    seq: seq as usize,
                    vocab,
                },
                notes,
            });
        }
    }
    let (dims, open) = fixed_dims(g, &specs, given, &mut notes);
    if open.is_empty() {
        return Ok(Chosen {
            plan: FeedPlan::Random {
                candidates: vec![(dims, String::new())],
            },
            notes,
        });
    }
    // Leading axes are batches: 1. The rest get the smallest size that runs.
    let mut candidates = Vec::new();
    for &size in PROBE_SIZES {
        let mut d = dims.clone();
        let mut said = Vec::new();
        for (name, leading) in &open {
            let v = if *leading { 1 } else { size };
            d.insert(name.clone(), v);
            said.push(format!("dim {name} = {v}"));
        }
        candidates.push((
            d,
            format!(
                "{} (no default; the smallest of {PROBE_SIZES:?} the reference runs on)",
                said.join(", ")
            ),
        ));
    }
    Ok(Chosen {
        plan: FeedPlan::Random { candidates },
        notes,
    })
}

/// Feeds of one decoder step for the inputs `specs`: `ids` after `past` tokens,
/// positions `past..past + ids`, a mask over all of them, and the cache from the
/// `previous` step's present outputs (none: an empty cache).
pub fn decoder_step(
    specs: &[IoSpec],
    names: &DecoderIoNames,
    ids: &[i64],
    past: usize,
    previous: Option<&NamedTensors>,
) -> Result<NamedTensors> {
    let seq = ids.len();
    let mut feeds = Vec::with_capacity(specs.len());
    for s in specs {
        let t = if s.name == names.input_ids {
            int_tensor(s, vec![1, seq], ids)?
        } else if names.position_ids.as_ref() == Some(&s.name) {
            let pos: Vec<i64> = (past as i64..(past + seq) as i64).collect();
            int_tensor(s, vec![1, seq], &pos)?
        } else if names.attention_mask.as_ref() == Some(&s.name) {
            int_tensor(s, vec![1, past + seq], &vec![1; past + seq])?
        } else {
            let kv = names.kv.iter().find(|k| k.past == s.name);
            match (previous, kv) {
                (Some(out), Some(k)) => out
                    .iter()
                    .find(|(n, _)| *n == k.present)
                    .map(|(_, t)| t.clone())
                    .ok_or_else(|| {
                        crate::error::Error::tensor(
                            &k.present,
                            "the previous step returned no such present output",
                        )
                    })?,
                _ => empty_past(s)?,
            }
        };
        feeds.push((s.name.clone(), t));
    }
    Ok(feeds)
}
