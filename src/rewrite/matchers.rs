//! Where the constant weights are: MatMul/Gemm nodes whose B is a constant 2-D float
//! tensor (an initializer or a Constant node, directly or through a Transpose).
use crate::ir::{DType, Graph, NodeId, Tensor, ValueDef, ValueId};

/// A constant a node reads: which value, and where its tensor lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConstSource {
    Initializer(ValueId),
    /// Output of a Constant node with a `value` tensor attribute.
    ConstantNode(NodeId),
}

/// The tensor behind `v` if it is a constant: an initializer that is not an
/// overridable graph input, or a Constant node's `value`.
pub fn constant(g: &Graph, v: ValueId) -> Option<(ConstSource, &Tensor)> {
    let val = g.value(v);
    match val.def {
        ValueDef::Initializer => val.init.as_ref().map(|t| (ConstSource::Initializer(v), t)),
        ValueDef::Node(n, 0) => {
            let node = g.node(n);
            if node.is("", "Constant") {
                node.attr("value")
                    .and_then(|a| a.t.as_ref())
                    .map(|t| (ConstSource::ConstantNode(n), t))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Why `v` is not usable as a constant weight (for skip reports).
pub fn not_constant_reason(g: &Graph, v: ValueId) -> String {
    match g.value(v).def {
        ValueDef::Input if g.value(v).init.is_some() => {
            "weight is a graph input with a default (overridable)".into()
        }
        ValueDef::Input => "weight is a graph input".into(),
        ValueDef::Outer => "weight is defined in an enclosing graph".into(),
        ValueDef::Node(n, _) => format!(
            "weight is computed by {} node '{}'",
            g.node(n).op_type,
            g.node(n).name()
        ),
        _ => "weight is not a dense constant".into(),
    }
}

/// A MatMul/Gemm with a constant weight, as y = A · W (+ bias).
#[derive(Clone, Debug)]
pub struct WeightMatMul {
    pub node: NodeId,
    /// The constant value the weight tensor comes from.
    pub weight: ValueId,
    pub source: ConstSource,
    /// The weight tensor is [N, K] (read through a Transpose, or Gemm transB=1)
    /// rather than ONNX MatMul's [K, N].
    pub transposed: bool,
    /// The Transpose node between the constant and the MatMul, if any.
    pub transpose: Option<NodeId>,
    /// Gemm's C input (a constant `[N]` vector), carried into the quantized op.
    pub bias: Option<ValueId>,
    pub k: usize,
    pub n: usize,
    pub dtype: DType,
}

/// Node metadata key marking a MatMul by a constant rotation inserted into the
/// activations (QuaRot's online Hadamard): not a linear layer of the model, so it is
/// neither quantized nor mapped as a projection.
pub const ONLINE_ROTATION_KEY: &str = "onnxq.online-rotation";

/// Whether `node` is an online rotation (see [`ONLINE_ROTATION_KEY`]).
pub fn is_online_rotation(g: &Graph, node: NodeId) -> bool {
    g.node(node)
        .metadata_props
        .iter()
        .any(|(k, _)| k == ONLINE_ROTATION_KEY)
}

/// Matches `node` as a weight MatMul, or says why not.
pub fn weight_matmul(g: &Graph, node: NodeId) -> Result<WeightMatMul, String> {
    let n = g.node(node);
    if is_online_rotation(g, node) {
        return Err("an online rotation of the activations (kept float)".into());
    }
    let is_gemm = n.is("", "Gemm");
    if !(n.is("", "MatMul") || is_gemm) {
        return Err(format!("{} is not MatMul or Gemm", n.op_type));
    }
    let b = n.input(1).ok_or("no B input")?;
    let mut transposed = false;
    if is_gemm {
        if n.attr_int("transA").unwrap_or(0) != 0 {
            return Err("Gemm with transA=1".into());
        }
        if n.attr_float("alpha").unwrap_or(1.0) != 1.0 {
            return Err("Gemm with alpha != 1".into());
        }
        if n.input(2).is_some() && n.attr_float("beta").unwrap_or(1.0) != 1.0 {
            return Err("Gemm with beta != 1".into());
        }
        transposed = n.attr_int("transB").unwrap_or(0) != 0;
    }
    let (weight, transpose) = match g.producer(b).map(|p| (p, g.node(p))) {
        Some((p, t)) if t.is("", "Transpose") => {
            let perm = t
                .attr("perm")
                .map(|a| a.ints.clone())
                .unwrap_or_else(|| vec![1, 0]);
            if perm != [1, 0] {
                return Err(format!("weight goes through Transpose with perm {perm:?}"));
            }
            transposed = !transposed;
            (t.input(0).ok_or("Transpose without input")?, Some(p))
        }
        _ => (b, None),
    };
    let (source, tensor) = constant(g, weight).ok_or_else(|| not_constant_reason(g, weight))?;
    if tensor.dims.len() != 2 {
        return Err(format!(
            "weight '{}' is {}-D, not 2-D",
            tensor.name(),
            tensor.dims.len()
        ));
    }
    let dtype = tensor.dtype();
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(format!(
            "weight '{}' is {dtype}, not a float type",
            tensor.name()
        ));
    }
    let (r, c) = (tensor.dims[0] as usize, tensor.dims[1] as usize);
    if r == 0 || c == 0 {
        // Nothing to quantize, and zero-length blocks would divide by zero.
        return Err(format!("weight '{}' is empty ({r} x {c})", tensor.name()));
    }
    let (k, n_out) = if transposed { (c, r) } else { (r, c) };
    let bias = if is_gemm {
        match n.input(2) {
            None => None,
            Some(c) => match constant(g, c) {
                Some((_, t)) if t.dims == [n_out as i64] && t.dtype() == dtype => Some(c),
                _ => {
                    return Err(
                        "Gemm bias C is not a constant [N] vector of the weight's type".into(),
                    )
                }
            },
        }
    } else {
        None
    };
    Ok(WeightMatMul {
        node,
        weight,
        source,
        transposed,
        transpose,
        bias,
        k,
        n: n_out,
        dtype,
    })
}

/// A constant `[N]` bias added right after `m` (MatMul → Add), which a fused op can
/// absorb: returns (Add node, bias value).
pub fn following_bias_add(g: &Graph, m: &WeightMatMul) -> Option<(NodeId, ValueId)> {
    let out = g.node(m.node).output(0)?;
    if g.is_graph_output(out) || m.bias.is_some() {
        return None;
    }
    let [crate::ir::Use::Input(add, _)] = g.value(out).uses() else {
        return None;
    };
    let add_node = g.node(*add);
    if !add_node.is("", "Add") {
        return None;
    }
    let other = add_node
        .inputs()
        .iter()
        .flatten()
        .copied()
        .find(|&v| v != out)?;
    let (_, t) = constant(g, other)?;
    (t.dims == [m.n as i64] && t.dtype() == m.dtype).then_some((*add, other))
}

/// A com.microsoft MatMulNBits or MatMulBnb4 node: y = A · W with W [K, N] stored
/// packed in the constant B, K and N given by the node's attributes.
#[derive(Clone, Debug)]
pub struct PackedMatMul {
    pub node: NodeId,
    /// The constant packed weight (input B).
    pub weight: ValueId,
    pub source: ConstSource,
    pub k: usize,
    pub n: usize,
    /// Code width: `bits` of MatMulNBits, 4 for MatMulBnb4.
    pub bits: i64,
    pub block_size: i64,
    /// The float type of the scales (the type the weight decodes to).
    pub dtype: DType,
}

/// Matches `node` as MatMulNBits/MatMulBnb4 with a constant B, or says why not.
pub fn packed_matmul(g: &Graph, node: NodeId) -> Result<PackedMatMul, String> {
    let n = g.node(node);
    let (bits, scales_slot) = if n.is("com.microsoft", "MatMulNBits") {
        (n.attr_int("bits").unwrap_or(4), 2)
    } else if n.is("com.microsoft", "MatMulBnb4") {
        (4, 2)
    } else {
        return Err(format!("{} is not MatMulNBits or MatMulBnb4", n.op_type));
    };
    let attr = |name: &str| {
        n.attr_int(name)
            .filter(|v| *v > 0)
            .ok_or_else(|| format!("{} without a positive '{name}' attribute", n.op_type))
    };
    let (k, n_out, block_size) = (attr("K")?, attr("N")?, attr("block_size")?);
    let weight = n.input(1).ok_or("no B input")?;
    let (source, _) = constant(g, weight).ok_or_else(|| not_constant_reason(g, weight))?;
    let dtype = n
        .input(scales_slot)
        .and_then(|s| constant(g, s))
        .map(|(_, t)| t.dtype())
        .ok_or("scales are not a constant")?;
    Ok(PackedMatMul {
        node,
        weight,
        source,
        k: k as usize,
        n: n_out as usize,
        bits,
        block_size,
        dtype,
    })
}

/// The integer values of a constant (e.g. a Reshape shape or Split sizes).
pub fn const_ints(g: &Graph, v: ValueId) -> Option<Vec<i64>> {
    constant(g, v).and_then(|(_, t)| t.to_i64().ok())
}

/// The value of a constant holding exactly one float (e.g. an epsilon or exponent).
pub fn const_scalar(g: &Graph, v: ValueId) -> Option<f32> {
    let (_, t) = constant(g, v)?;
    match t.to_f32().ok()?.as_slice() {
        [x] => Some(*x),
        _ => None,
    }
}

/// The nodes that read `v`, with the input slot, in use-list order.
pub fn consumers(g: &Graph, v: ValueId) -> Vec<(NodeId, usize)> {
    g.value(v)
        .uses()
        .iter()
        .filter_map(|u| match u {
            crate::ir::Use::Input(n, slot) => Some((*n, *slot)),
            crate::ir::Use::Capture(_) => None,
        })
        .collect()
}
