//! Numeric kernels of weight-only quantization, on slices: no graphs, no tensors,
//! no file formats. Graph passes read a weight as `f32`, call one of these, and
//! wrap the returned buffers as initializers.
//!
//! Contracts shared by every kernel:
//! - Matrices are row-major `&[f32]`. A "[K, N]" weight is the ONNX MatMul `B`
//!   (K input features, N outputs); "[N, K]" is the PyTorch Linear layout.
//! - Blocks run along K (the row length of an [N, K] matrix). The `*_kn` entry
//!   points read [K, N] directly, tile by tile, so no transposed copy of the
//!   weight is made.
//! - Work is split over rayon threads by rows/tiles; each output element is computed
//!   from its own block only, so results are bit-identical for any thread count.
//! - Non-finite inputs and bad shapes/parameters are a [`QuantError`]; nothing
//!   panics on user data.
//!
//! API (f16/bf16 weights: widen with [`convert`], pass the [`FloatType`] so
//! scales are rounded to it before encoding, as onnxruntime's f16 kernel does):
//! - MatMulNBits / GatherBlockQuantized, RTN: `nbits::quantize_kn(w, k, n, &p)`
//!   and `nbits::quantize_rows(w, rows, cols, &p)` (`*_as(.., FloatType)`), with
//!   `p = QuantParams::new(bits, block_size, symmetric)?`, return a [`BlockQuant`]
//!   `{ packed [N, k_blocks, blob], scales [N, k_blocks], zero_points:
//!   Option<[N, ceil(k_blocks·bits/8)]>, scale_type, .. }` — equal to onnxruntime's
//!   `quantize_matmul_{2,4,8}bits`. `BlockQuant::dequantize_kn()` /
//!   `dequantize_rows()` decode; `BlockQuant::from_parts` wraps buffers read from
//!   a model.
//! - Blocked DequantizeLinear (opset 21, axis 0): `BlockQuant::to_qdq()` →
//!   [`QdqWeight`] `{ dtype int4/uint4/int8/uint8/int2/uint2, data [K, N], scales
//!   [k_blocks, N], zero_points }`, equal to onnxruntime's QDQ quantizer.
//! - HQQ: `hqq::quantize_kn` / `hqq::quantize_rows` (`*_as` with [`hqq::HqqParams`])
//!   return an asymmetric [`BlockQuant`] with integer zero points.
//! - MatMulBnb4: `bnb4::quantize_kn(w, k, n, block_size, QuantType::{Nf4, Fp4})`
//!   (or `quantize_nk` for [N, K]) → `Bnb4 { packed, absmax }`, bit-exact with
//!   onnxruntime's `quantize_matmul_bnb4`; `bnb4::dequantize_kn` decodes.
//! - Other solvers (GPTQ, AWQ, ...) plug into `nbits::quantize_*_with` through
//!   [`nbits::BlockSolver`].
//!
//! Modules:
//! - [`nbits`]: block quantization to 2/4/8 bits, layouts, dequantization.
//! - [`hqq`]: half-quadratic quantization (calibration-free).
//! - [`bnb4`]: NF4 / FP4 code books.
//! - [`pack`]: 1/2/4/8-bit packing in either nibble order.
//! - [`convert`]: f16/bf16 ↔ f32 slices and [`FloatType`].
//! - [`gptq`]: GPTQ (second-order error feedback; needs `H = XᵀX`, so not a
//!   per-block [`nbits::BlockSolver`]); [`linalg`]: its inverse Hessian factor (faer).
//! - [`awq`]: AWQ's per-channel scale search (RTN of the scaled weights).
//! - [`hadamard`]: Hadamard and random orthogonal rotations (QuaRot), in f64.
pub mod awq;
pub mod bnb4;
pub mod convert;
pub mod gptq;
pub mod hadamard;
pub mod hqq;
pub mod int8;
pub mod linalg;
pub mod mixed;
pub mod nbits;
pub mod pack;
pub mod promote;
mod qdq;

pub use convert::FloatType;
pub use nbits::{BlockQuant, QuantParams};
pub use qdq::QdqWeight;

use rayon::prelude::*;

/// An invalid kernel argument (shape, parameter or value).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct QuantError(pub String);

/// Rows per pass of [`gather_columns`]: 16 f32 fill one destination cache line.
const TILE: usize = 16;
/// Source columns per transpose task: 64 f32 = 256 contiguous bytes per row read,
/// so each page visited yields more than one cache line.
const TASK_COLS: usize = 64;

/// Transposes a row-major [rows, cols] matrix into a new [cols, rows] one
/// (cache-blocked, parallel over output rows).
pub fn transpose<T: Copy + Default + Send + Sync>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::default(); rows * cols];
    transpose_into(src, rows, cols, &mut out);
    out
}

/// [`transpose`] into a caller-provided buffer of `rows * cols` elements.
pub fn transpose_into<T: Copy + Default + Send + Sync>(
    src: &[T],
    rows: usize,
    cols: usize,
    dst: &mut [T],
) {
    assert_eq!(src.len(), rows * cols, "transpose source size");
    assert_eq!(dst.len(), rows * cols, "transpose destination size");
    if rows == 0 || cols == 0 {
        return;
    }
    // Each task owns TASK_COLS output rows (= input columns).
    dst.par_chunks_mut(TASK_COLS * rows)
        .enumerate()
        .for_each(|(t, out)| {
            let c0 = t * TASK_COLS;
            let tc = out.len() / rows;
            gather_columns(src, cols, c0, tc, 0, rows, out, rows);
        });
}

/// Copies the [len, width] sub-matrix at rows `r0..r0+len`, columns `c0..c0+width`
/// of a row-major matrix with `cols` columns into `dst` transposed: column `j`
/// becomes `dst[j * stride ..][..len]`. Goes through TILE×TILE blocks held in a
/// local array, so every destination cache line is written whole at once whatever
/// the stride (power-of-two strides would otherwise thrash L1 sets).
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn gather_columns<T: Copy + Default>(
    src: &[T],
    cols: usize,
    c0: usize,
    width: usize,
    r0: usize,
    len: usize,
    dst: &mut [T],
    stride: usize,
) {
    let mut tile = [[T::default(); TILE]; TILE];
    for rb in (0..len).step_by(TILE) {
        let rl = TILE.min(len - rb);
        for jb in (0..width).step_by(TILE) {
            let jl = TILE.min(width - jb);
            for r in 0..rl {
                let row = &src[(r0 + rb + r) * cols + c0 + jb..][..jl];
                for (j, &v) in row.iter().enumerate() {
                    tile[j][r] = v;
                }
            }
            for (j, t) in tile.iter().enumerate().take(jl) {
                dst[(jb + j) * stride + rb..][..rl].copy_from_slice(&t[..rl]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_matches_definition_on_ragged_shapes() {
        for &(r, c) in &[(1usize, 1usize), (3, 50), (37, 17), (64, 33), (0, 5)] {
            let m: Vec<u32> = (0..r * c).map(|i| i as u32).collect();
            let t = transpose(&m, r, c);
            for i in 0..r {
                for j in 0..c {
                    assert_eq!(t[j * r + i], m[i * c + j]);
                }
            }
            assert_eq!(transpose(&t, c, r), m);
        }
    }
}
