//! The decoder's graph inputs and outputs by role (token ids, positions, mask, KV
//! cache, logits), each with its dim expressions as the file declares them.
use serde::Serialize;

use super::walk::source_inputs;
use crate::ir::{DType, Dim, Graph, ValueId};

/// One dimension as declared: a number, a symbolic expression (`past_seq_len +
/// seq_len`), or unknown (null).
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum DimExpr {
    Fixed(i64),
    Param(String),
    Unknown,
}

#[derive(Serialize, Clone, Debug)]
pub struct TensorIo {
    pub name: String,
    pub dtype: Option<String>,
    /// None when the file declares no shape.
    pub dims: Option<Vec<DimExpr>>,
}

/// The cache tensors of one layer.
#[derive(Serialize, Clone, Debug)]
pub struct KvIo {
    pub layer: usize,
    pub key: TensorIo,
    pub value: TensorIo,
}

#[derive(Serialize, Clone, Debug)]
pub struct DecoderIo {
    pub input_ids: TensorIo,
    pub position_ids: Option<TensorIo>,
    pub attention_mask: Option<TensorIo>,
    /// past_key_values inputs, one entry per layer that has them.
    pub past: Vec<KvIo>,
    /// present outputs, one entry per layer that has them.
    pub present: Vec<KvIo>,
    pub logits: Option<TensorIo>,
}

pub fn tensor_io(g: &Graph, v: ValueId) -> TensorIo {
    let parts = g
        .info(v)
        .and_then(|i| i.ty.as_ref())
        .and_then(|t| t.tensor_parts());
    let (dtype, dims) = parts.unwrap_or((None, None));
    TensorIo {
        name: g.value_name(v).to_string(),
        dtype: dtype.map(|d| d.to_string()),
        dims: dims.map(|ds| {
            ds.into_iter()
                .map(|d| match d {
                    Dim::Value(n) => DimExpr::Fixed(n),
                    Dim::Param(p) => DimExpr::Param(p),
                    Dim::Unknown => DimExpr::Unknown,
                })
                .collect()
        }),
    }
}

fn is_integer_input(g: &Graph, v: ValueId) -> bool {
    g.info(v)
        .and_then(|i| i.ty.as_ref())
        .and_then(|t| t.tensor_parts())
        .and_then(|(d, _)| d)
        .is_some_and(|d| matches!(d, DType::I64 | DType::I32 | DType::Bool))
}

/// The graph input carrying positions: the rotary's position value itself when it
/// is an input, else the integer input it is computed from.
pub fn position_input(g: &Graph, pos: ValueId, input_ids: ValueId) -> Option<ValueId> {
    if g.is_graph_input(pos) {
        return Some(pos);
    }
    source_inputs(g, pos, 12)
        .into_iter()
        .find(|&v| v != input_ids && is_integer_input(g, v))
}

/// The graph input the attention mask is computed from: an integer input among the
/// mask's sources that is neither the token ids nor the positions.
pub fn mask_input(g: &Graph, mask: ValueId, known: &[ValueId]) -> Option<ValueId> {
    source_inputs(g, mask, 16)
        .into_iter()
        .find(|&v| !known.contains(&v) && is_integer_input(g, v))
}
