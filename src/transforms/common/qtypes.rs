//! The integer and float types quantized activations and weights are stored as, and
//! the constant tensors (codes, scales, zero points) every 8-bit pass writes.
use serde::Deserialize;

use crate::error::Result;
use crate::ir::{DType, Graph, Tensor, ValueId};
use crate::quant::int8::{self, QType, ScaleZp};
use crate::rewrite::matchers::{ConstSource, WeightMatMul};

/// Integer type of quantized activations.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ActivationType {
    #[default]
    Int8,
    Uint8,
    /// Needs opset 21 (raised when possible, else com.microsoft Q/DQ).
    Int16,
    /// 8-bit float (1-4-3, no infinities, max 448), zero point 0, scale absmax /
    /// 448: a relative grid that outliers cannot flatten. Needs opset 19. Q/DQ
    /// only (no integer kernels); constants of elementwise ops stay float.
    Float8e4m3fn,
}

/// Largest finite float8 e4m3fn value.
pub const FLOAT8_E4M3FN_MAX: f32 = 448.0;

impl ActivationType {
    /// The integer type; float8 is modelled as symmetric int8 where only an
    /// integer grid is known (SmoothQuant's search refuses it instead).
    pub fn qtype(self) -> QType {
        match self {
            ActivationType::Int8 | ActivationType::Float8e4m3fn => QType::I8,
            ActivationType::Uint8 => QType::U8,
            ActivationType::Int16 => QType::I16,
        }
    }

    pub fn is_float8(self) -> bool {
        self == ActivationType::Float8e4m3fn
    }

    /// Scale and zero point of an activation calibrated to [lo, hi].
    pub(crate) fn params(
        self,
        lo: f32,
        hi: f32,
        symmetric: bool,
    ) -> std::result::Result<ScaleZp, String> {
        if self.is_float8() {
            if !lo.is_finite() || !hi.is_finite() {
                return Err(format!("range [{lo}, {hi}] is not finite"));
            }
            let absmax = lo.abs().max(hi.abs());
            let scale = if absmax > 0.0 {
                absmax / FLOAT8_E4M3FN_MAX
            } else {
                1.0
            };
            return Ok(ScaleZp {
                scale,
                zero_point: 0,
            });
        }
        let (qmin, qmax) = self.qtype().range(false, symmetric);
        int8::scale_zp(lo, hi, qmin, qmax, symmetric).map_err(|e| e.to_string())
    }

    /// The zero-point tensor of `p`.
    pub(crate) fn zero_point(self, p: ScaleZp) -> Tensor {
        if self.is_float8() {
            // float8 +0.0 is the all-zero byte.
            return Tensor::from_raw("", DType::F8E4M3FN, vec![], vec![0u8].into());
        }
        zp_tensor(&[p], self.qtype(), vec![])
    }
}

/// Integer type of quantized weights.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WeightType {
    /// Signed, symmetric (zero point 0).
    #[default]
    Int8,
    /// Unsigned, asymmetric.
    Uint8,
}

impl WeightType {
    pub fn qtype(self) -> QType {
        match self {
            WeightType::Int8 => QType::I8,
            WeightType::Uint8 => QType::U8,
        }
    }
}

/// Adds `t` as an initializer under a fresh name derived from `name`.
pub(crate) fn add_named(g: &mut Graph, name: &str, mut t: Tensor) -> Result<ValueId> {
    t.name = Some(g.fresh_name(name));
    g.add_initializer(t)
}

pub(crate) fn qtype_dtype(q: QType) -> DType {
    match q {
        QType::U8 => DType::U8,
        QType::I8 => DType::I8,
        QType::U16 => DType::U16,
        QType::I16 => DType::I16,
    }
}

/// A tensor of encoded codes; a large payload is spilled (`crate::io::spill`) so it
/// does not stay resident until the save.
pub(crate) fn codes_tensor(name: &str, q: QType, dims: Vec<i64>, codes: &[i32]) -> Tensor {
    Tensor::from_raw(
        name,
        qtype_dtype(q),
        dims,
        crate::io::spill::bytes(q.encode(codes)),
    )
}

pub(crate) fn scale_tensor(params: &[ScaleZp], dims: Vec<i64>) -> Tensor {
    let s: Vec<f32> = params.iter().map(|p| p.scale).collect();
    Tensor::from_f32("", dims, &s)
}

pub(crate) fn zp_tensor(params: &[ScaleZp], q: QType, dims: Vec<i64>) -> Tensor {
    let z: Vec<i32> = params.iter().map(|p| p.zero_point).collect();
    codes_tensor("", q, dims, &z)
}

/// Removes a constant (initializer or Constant node) nothing reads any more.
pub(crate) fn drop_if_unused(g: &mut Graph, v: ValueId, source: ConstSource) {
    if !g.value(v).uses().is_empty() || g.is_graph_output(v) {
        return;
    }
    match source {
        ConstSource::Initializer(v) => {
            let _ = g.remove_initializer(v);
        }
        ConstSource::ConstantNode(n) => {
            if g.contains_node(n) {
                let _ = g.remove_node(n);
            }
        }
    }
}

/// Drops the original weight (and its Transpose/Constant) once nothing reads it.
pub fn remove_orphans(g: &mut Graph, m: &WeightMatMul) {
    if let Some(t) = m.transpose {
        if g.contains_node(t)
            && g.node(t)
                .outputs()
                .iter()
                .flatten()
                .all(|&v| g.value(v).uses().is_empty() && !g.is_graph_output(v))
        {
            let _ = g.remove_node(t);
        }
    }
    drop_if_unused(g, m.weight, m.source);
}
