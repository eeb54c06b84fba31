//! A linear layer's weight as the MatMul sees it ([K, N]), whatever form it is
//! stored in: [K, N] initializer, [N, K] behind a Transpose or Gemm transB, a
//! Constant node, float32/16/bfloat16, or already packed by MatMulNBits/MatMulBnb4.
use serde::Serialize;

use super::walk::label;
use crate::ir::{Graph, NodeId, ValueId};
use crate::rewrite::matchers::{following_bias_add, packed_matmul, weight_matmul, ConstSource};

/// How the weight tensor is laid out relative to the MatMul's [K, N].
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WeightLayout {
    /// A [K, N] tensor read as is (also pre-transposed `*.weight_t` initializers).
    Kn,
    /// A torch-layout [N, K] tensor behind a Transpose(perm=`[1,0]`).
    NkTransposed,
    /// A [N, K] tensor read by Gemm with transB=1.
    NkGemmTransB,
    /// com.microsoft MatMulNBits blocks [N, K/block, block*bits/8]; K, N from attributes.
    MatMulNBits,
    /// com.microsoft MatMulBnb4 packed NF4/FP4 codes; K, N from attributes.
    MatMulBnb4,
}

/// Where the weight tensor lives.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WeightSource {
    Initializer,
    ConstantNode,
}

/// One linear layer: the node computing x · W and its weight seen as [K, N].
#[derive(Serialize, Clone, Debug)]
pub struct WeightRef {
    #[serde(skip)]
    pub node_id: NodeId,
    #[serde(skip)]
    pub weight_id: ValueId,
    /// The MatMul/Gemm/MatMulNBits node.
    pub node: String,
    /// `MatMul`, `Gemm`, `com.microsoft::MatMulNBits`, ...
    pub op: String,
    /// The constant holding the weight (initializer name, or the Constant node's output).
    pub initializer: String,
    pub k: usize,
    pub n: usize,
    /// The float type the weight computes in (for packed weights: their scales' type).
    pub dtype: String,
    pub layout: WeightLayout,
    pub source: WeightSource,
    /// The Transpose node between the constant and the MatMul, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transpose: Option<String>,
    /// Packed weights: bits per code and block size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_size: Option<i64>,
    /// A constant `[N]` bias: Gemm's C or an Add right after the MatMul.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bias: Option<String>,
    /// The value the layer produces, bias included.
    #[serde(skip)]
    pub output_id: ValueId,
}

fn source_of(s: ConstSource) -> WeightSource {
    match s {
        ConstSource::Initializer(_) => WeightSource::Initializer,
        ConstSource::ConstantNode(_) => WeightSource::ConstantNode,
    }
}

/// Reads `node` as a linear layer with a constant weight, or says why it is not one.
pub fn weight_ref(g: &Graph, node: NodeId) -> Result<WeightRef, String> {
    let n = g.node(node);
    let out = n.output(0).ok_or("the node has no output")?;
    let op = if n.domain().is_empty() {
        n.op_type.clone()
    } else {
        format!("{}::{}", n.domain(), n.op_type)
    };
    if let Ok(p) = packed_matmul(g, node) {
        let bias = n.input(5).map(|b| g.value_name(b).to_string());
        return Ok(WeightRef {
            node_id: node,
            weight_id: p.weight,
            node: label(g, node),
            op,
            initializer: g.value_name(p.weight).to_string(),
            k: p.k,
            n: p.n,
            dtype: p.dtype.to_string(),
            layout: if n.op_type == "MatMulBnb4" {
                WeightLayout::MatMulBnb4
            } else {
                WeightLayout::MatMulNBits
            },
            source: source_of(p.source),
            transpose: None,
            bits: Some(p.bits),
            block_size: Some(p.block_size),
            bias,
            output_id: out,
        });
    }
    let m = weight_matmul(g, node)?;
    let layout = match (m.transposed, m.transpose.is_some()) {
        (false, _) => WeightLayout::Kn,
        (true, true) => WeightLayout::NkTransposed,
        (true, false) => WeightLayout::NkGemmTransB,
    };
    let (bias, output_id) = match (m.bias, following_bias_add(g, &m)) {
        (Some(c), _) => (Some(c), out),
        (None, Some((add, b))) => (Some(b), g.node(add).output(0).unwrap_or(out)),
        (None, None) => (None, out),
    };
    Ok(WeightRef {
        node_id: node,
        weight_id: m.weight,
        node: label(g, node),
        op,
        initializer: g.value_name(m.weight).to_string(),
        k: m.k,
        n: m.n,
        dtype: m.dtype.to_string(),
        layout,
        source: source_of(m.source),
        transpose: m.transpose.map(|t| label(g, t)),
        bits: None,
        block_size: None,
        bias: bias.map(|b| g.value_name(b).to_string()),
        output_id,
    })
}

/// Whether `node` multiplies by a matrix at all (constant or not): the forward
/// searches stop there, as a path through one is no longer the same tensor.
/// An online rotation (QuaRot) is walked through: it rotates the same tensor.
pub fn is_matmul_like(g: &Graph, node: NodeId) -> bool {
    let n = g.node(node);
    if crate::rewrite::matchers::is_online_rotation(g, node) {
        return false;
    }
    n.is("", "MatMul")
        || n.is("", "Gemm")
        || n.is("com.microsoft", "MatMulNBits")
        || n.is("com.microsoft", "MatMulBnb4")
}

/// The linear layers (constant-weight MatMuls) that read `v`, in graph order, also
/// through online rotations (QuaRot's de-rotation of a norm output, and its scale).
pub fn linear_consumers(g: &Graph, v: ValueId) -> Vec<WeightRef> {
    let mut out = Vec::new();
    let mut values = vec![v];
    // A rotation reads one value and writes one: the walk is a short chain.
    while let Some(v) = values.pop() {
        for (n, slot) in crate::rewrite::matchers::consumers(g, v) {
            if slot != 0 {
                continue;
            }
            if crate::rewrite::matchers::is_online_rotation(g, n) {
                values.extend(g.node(n).output(0));
            } else if let Ok(w) = weight_ref(g, n) {
                out.push(w);
            }
        }
    }
    out
}
