//! Block scales stored as float16 in a float32 model.
//!
//! Why: MatMulNBits and GatherBlockQuantized take scales in the activation type, so a
//! float32 model stores a 4-byte scale per block: 1 bit per parameter at block 32,
//! a fifth of an int4 model. Stored as float16 behind a Cast to float, they cost half;
//! ONNX Runtime folds the Cast of an initializer at session load (constant folding,
//! any optimization level above disabled), so the kernels see a float32 initializer
//! again and prepack it as before. The model's function changes only by the float16
//! rounding of each scale (relative 2⁻¹¹).
//!
//! Matches: float32 initializers read as scales (input 2) of com.microsoft
//! MatMulNBits / GatherBlockQuantized in the main graph, and by nothing else.
//! Emits: a float16 initializer `{name}_f16` and one Cast(to=float) per scale tensor,
//! read by every node that read the float32 one (a tied table's MatMulNBits and
//! GatherBlockQuantized share it). Keeps: a scale tensor with a value beyond float16's
//! range stays float32 (named in a note).
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ir::{Attribute, DType, Graph, Model, NodeSpec, Tensor, Use, ValueDef, ValueId};
use crate::rewrite::{Pass, PassCx, PassOutcome, PASS_KEY};

/// The type block scales are stored as.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ScaleType {
    /// The activation type (what the quantizers write): nothing changes.
    #[default]
    F32,
    /// float16 behind a Cast to float (in a float32 model).
    F16,
}

impl ScaleType {
    /// Bytes one scale of a `dtype` weight takes on disk under this setting; float16
    /// and bfloat16 models already store 2.
    pub fn bytes(self, dtype: DType) -> usize {
        match (self, dtype) {
            (_, DType::F16 | DType::BF16) | (ScaleType::F16, _) => 2,
            (ScaleType::F32, _) => 4,
        }
    }
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ScaleTypeConfig {
    pub to: ScaleType,
}

pub const SCALE_TYPE_KEYS: &[&str] = &["to"];

pub const NAME: &str = "scale-type";

/// The largest magnitude float16 holds; a scale beyond it would become infinite.
pub const F16_MAX: f32 = 65504.0;

pub struct ScaleTypePass {
    config: ScaleTypeConfig,
}

impl ScaleTypePass {
    pub fn new(config: ScaleTypeConfig) -> Result<Self> {
        Ok(ScaleTypePass { config })
    }
}

/// Whether `(domain, op, slot)` reads block scales this pass may retype.
fn scale_slot(g: &Graph, u: &Use) -> bool {
    match *u {
        Use::Input(n, 2) => {
            let node = g.node(n);
            node.is("com.microsoft", "MatMulNBits")
                || node.is("com.microsoft", "GatherBlockQuantized")
        }
        _ => false,
    }
}

impl Pass for ScaleTypePass {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, model: &mut Model, _cx: &mut PassCx) -> Result<PassOutcome> {
        let mut outcome = PassOutcome::new(NAME);
        if self.config.to == ScaleType::F32 {
            return Ok(outcome);
        }
        let g = &mut model.graph;
        // Each scale tensor once, in graph order (deterministic names).
        let mut found: Vec<ValueId> = Vec::new();
        for (_, n) in g.nodes() {
            let ms = n.is("com.microsoft", "MatMulNBits")
                || n.is("com.microsoft", "GatherBlockQuantized");
            if let Some(v) = n.input(2).filter(|_| ms) {
                if !found.contains(&v) {
                    found.push(v);
                }
            }
        }
        for v in found {
            let val = g.value(v);
            if val.def != ValueDef::Initializer {
                continue;
            }
            let Some(t) = val.init.as_ref() else { continue };
            if t.dtype() != DType::F32 {
                continue;
            }
            let name = val.name.clone();
            // Another reader (or a graph output) would see the rounded values too: leave
            // such a tensor alone rather than change more than the quantized ops.
            if !val.uses().iter().all(|u| scale_slot(g, u)) || g.is_graph_output(v) {
                outcome.skip(
                    &name,
                    "read by other nodes than MatMulNBits/GatherBlockQuantized",
                );
                continue;
            }
            let values = t
                .to_f32()
                .map_err(|e| Error::tensor(&name, e.to_string()))?;
            if values.iter().any(|x| !x.is_finite() || x.abs() > F16_MAX) {
                outcome.notes.push(format!(
                    "'{name}' stays float32: a scale is beyond float16's range (±{F16_MAX})"
                ));
                continue;
            }
            let bytes: Vec<u8> = values
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect();
            let dims = t.dims.clone();
            let half_t = Tensor::from_raw(
                g.fresh_name(&format!("{name}_f16")),
                DType::F16,
                dims,
                bytes.into(),
            )
            .stored_like(t);
            let before = t.stored_len() as u64;
            let after = half_t.stored_len() as u64;
            let readers: Vec<(crate::ir::NodeId, usize)> = val
                .uses()
                .iter()
                .filter_map(|u| match *u {
                    Use::Input(n, s) => Some((n, s)),
                    Use::Capture(_) => None,
                })
                .collect();
            let h = g.add_initializer(half_t)?;
            let out = g.fresh_name(&format!("{name}_f32"));
            let node_name = g.fresh_node_name(&format!("{name}_Cast"));
            let cast = g.add_node(
                NodeSpec::new("", "Cast")
                    .name(node_name)
                    .inputs([Some(h)])
                    .output(out)
                    .attr(Attribute::int("to", i64::from(DType::F32.code())))
                    .meta(PASS_KEY, NAME),
            )?;
            let cast_out = g.node(cast).output(0).expect("one output");
            let first = g
                .nodes()
                .map(|(id, _)| id)
                .find(|id| readers.iter().any(|(n, _)| n == id));
            for (n, s) in readers {
                g.set_input(n, s, Some(cast_out));
            }
            if let Some(first) = first {
                g.place_before(cast, first);
            }
            g.remove_initializer(v)?;
            outcome.count("scale tensors to float16", 1);
            outcome.count("scale bytes before", before);
            outcome.count("scale bytes after", after);
            outcome.changed = true;
        }
        Ok(outcome)
    }
}
