//! Reading constants as f64 matrices and writing them back in their own layout,
//! type and storage.
use crate::error::{Error, Result};
use crate::ir::{float_tensor, Attribute, Graph, Tensor, ValueId};
use crate::rewrite::matchers::{constant, ConstSource, WeightMatMul};
use crate::transforms::common::nbits::read_f32;

/// A constant's new contents, written once every new value is computed.
pub(super) struct Edit {
    pub value: ValueId,
    pub source: ConstSource,
    pub tensor: Tensor,
}

fn const_of(g: &Graph, v: ValueId) -> Result<(ConstSource, &Tensor)> {
    constant(g, v).ok_or_else(|| Error::tensor(g.value_name(v), "is not a constant"))
}

/// The values of constant `v` as f64.
pub(super) fn read(g: &Graph, v: ValueId) -> Result<Vec<f64>> {
    let (_, t) = const_of(g, v)?;
    let vals = read_f32(t)?;
    if let Some(i) = vals.iter().position(|x| !x.is_finite()) {
        return Err(Error::tensor(
            g.value_name(v),
            format!("element {i} is {}: cannot rotate", vals[i]),
        ));
    }
    Ok(vals.into_iter().map(f64::from).collect())
}

/// The weight of `m` as [K, N], row-major.
pub(super) fn read_kn(g: &Graph, m: &WeightMatMul) -> Result<Vec<f64>> {
    let w = read(g, m.weight)?;
    Ok(if m.transposed {
        transpose(&w, m.n, m.k)
    } else {
        w
    })
}

/// `a` [r, c] transposed to [c, r].
pub(super) fn transpose(a: &[f64], r: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0f64; a.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = a[i * c + j];
        }
    }
    out
}

/// New contents for constant `v` with the same name, dims, type and storage.
pub(super) fn replace(g: &Graph, v: ValueId, values: &[f64]) -> Result<Edit> {
    let (source, t) = const_of(g, v)?;
    let f: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    let raw = crate::ir::float_bytes(t.dtype(), &f);
    let tensor = Tensor::from_raw(
        t.name(),
        t.dtype(),
        t.dims.clone(),
        crate::io::spill::bytes(raw),
    )
    .stored_like(t);
    Ok(Edit {
        value: v,
        source,
        tensor,
    })
}

/// New contents for the weight of `m` given as [K, N], stored as `m` stores it.
pub(super) fn replace_kn(g: &Graph, m: &WeightMatMul, kn: &[f64]) -> Result<Edit> {
    if m.transposed {
        replace(g, m.weight, &transpose(kn, m.k, m.n))
    } else {
        replace(g, m.weight, kn)
    }
}

/// A new tensor `name` of the type `like` has.
pub(super) fn new_tensor(name: &str, like: &Tensor, dims: Vec<i64>, values: &[f64]) -> Tensor {
    let f: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    float_tensor(name, like.dtype(), dims, &f).stored_like(like)
}

pub(super) fn apply(g: &mut Graph, edits: Vec<Edit>) {
    for e in edits {
        match e.source {
            ConstSource::Initializer(_) => g.set_initializer(e.value, e.tensor),
            ConstSource::ConstantNode(n) => {
                g.node_mut(n).set_attr(Attribute::tensor("value", e.tensor))
            }
        }
    }
}
