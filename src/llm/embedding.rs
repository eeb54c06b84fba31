//! The token embedding: a Gather (or com.microsoft GatherBlockQuantized) of a
//! constant [vocab, hidden] table by integer ids that come from a graph input.
use serde::Serialize;

use super::walk::{label, source_inputs};
use crate::ir::{DType, Graph, NodeId, ValueId};
use crate::rewrite::matchers::constant;

#[derive(Serialize, Clone, Debug)]
pub struct Embedding {
    pub node: String,
    /// `Gather` or `com.microsoft::GatherBlockQuantized`.
    pub op: String,
    /// The table constant (for a quantized table read through a Reshape, the constant
    /// behind it).
    pub table: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub dtype: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits: Option<i64>,
    pub output: String,
    #[serde(skip)]
    pub node_id: NodeId,
    #[serde(skip)]
    pub table_id: ValueId,
    #[serde(skip)]
    pub ids_input: ValueId,
    #[serde(skip)]
    pub output_id: ValueId,
}

/// `v`, or the constant behind a chain of Reshapes of it.
fn through_reshapes(g: &Graph, mut v: ValueId) -> ValueId {
    for _ in 0..3 {
        match g.producer(v).map(|p| g.node(p)) {
            Some(n) if n.is("", "Reshape") => match n.input(0) {
                Some(i) => v = i,
                None => break,
            },
            _ => break,
        }
    }
    v
}

/// Every Gather that looks up rows of a constant 2-D table by ids computed from an
/// integer graph input, in graph order. (Rotary caches gathered by position ids
/// match too; the caller keeps the one a norm reads.)
pub fn candidates(g: &Graph) -> Vec<Embedding> {
    g.nodes()
        .filter_map(|(id, _)| embedding_at(g, id))
        .collect()
}

fn embedding_at(g: &Graph, id: NodeId) -> Option<Embedding> {
    let n = g.node(id);
    let quantized = n.is("com.microsoft", "GatherBlockQuantized");
    if !(n.is("", "Gather") || quantized) || n.attr_int("axis").unwrap_or(0) != 0 {
        return None;
    }
    let table = through_reshapes(g, n.input(0)?);
    let ids = n.input(1)?;
    let (_, t) = constant(g, table)?;
    let out = n.output(0)?;
    let ids_input = source_inputs(g, ids, 3).into_iter().find(|v| {
        g.info(*v)
            .and_then(|i| i.ty.as_ref())
            .and_then(|t| t.tensor_parts())
            .and_then(|(d, _)| d)
            .is_some_and(|d| matches!(d, DType::I64 | DType::I32))
    })?;
    let (vocab, hidden, dtype, bits) = if quantized {
        let bits = n.attr_int("bits").unwrap_or(4);
        if !(1..=8).contains(&bits) {
            return None;
        }
        // The scales (input 2) give the float type; a row of the table is packed
        // codes, counted in bytes (uint8) or in elements (int4/uint4).
        let scales = n
            .input(2)
            .and_then(|s| constant(g, s))
            .map(|(_, s)| s.dtype());
        let dims = match constant(g, n.input(0)?) {
            Some((_, d)) => d.dims.clone(),
            None => t.dims.clone(),
        };
        let rows = *dims.first()?;
        let row: i64 = dims[1..].iter().product();
        let per_row = if t.dtype() == DType::U8 {
            row * 8 / bits
        } else {
            row
        };
        (rows, per_row, scales.unwrap_or(DType::F32), Some(bits))
    } else {
        if t.dims.len() != 2 || !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            return None;
        }
        (t.dims[0], t.dims[1], t.dtype(), None)
    };
    Some(Embedding {
        node: label(g, id),
        op: if quantized {
            "com.microsoft::GatherBlockQuantized".into()
        } else {
            "Gather".into()
        },
        table: g.value_name(table).to_string(),
        vocab_size: vocab.max(0) as usize,
        hidden_size: hidden.max(0) as usize,
        dtype: dtype.to_string(),
        bits,
        output: g.value_name(out).to_string(),
        node_id: id,
        table_id: table,
        ids_input,
        output_id: out,
    })
}
