//! Block-wise integer quantization along K (RTN), in the layouts ONNX Runtime's
//! MatMulNBits and GatherBlockQuantized read, and ONNX's blocked DequantizeLinear.
//!
//! Conventions match onnxruntime's quantizer: symmetric blocks take the signed value
//! of largest magnitude `m` and use scale = m / -2^(bits-1), codes stored with the
//! implied zero point 2^(bits-1); asymmetric blocks use min(x, 0)..max(x, 0), scale =
//! range / (2^bits - 1) and an integer zero point.
use rayon::prelude::*;

use super::pack::{pack, unpack};
use super::QuantError;
use crate::ir::DType;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantParams {
    pub bits: u8,
    pub block_size: usize,
    pub symmetric: bool,
}

impl QuantParams {
    pub fn check(&self) -> Result<(), QuantError> {
        if ![2, 4, 8].contains(&self.bits) {
            return Err(QuantError(format!(
                "bits must be 2, 4 or 8, not {}",
                self.bits
            )));
        }
        if self.block_size < 16 || !self.block_size.is_power_of_two() {
            return Err(QuantError(format!(
                "block size {} must be a power of two >= 16",
                self.block_size
            )));
        }
        Ok(())
    }

    pub fn max_code(&self) -> f32 {
        ((1u32 << self.bits) - 1) as f32
    }

    pub fn mid(&self) -> u8 {
        1 << (self.bits - 1)
    }
}

/// A [rows, cols] matrix quantized along cols (rows = N output features, cols = K).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockQuant {
    pub params: QuantParams,
    pub rows: usize,
    pub cols: usize,
    /// [rows, k_blocks, block_size·bits/8], the last block zero-padded.
    pub packed: Vec<u8>,
    /// [rows, k_blocks].
    pub scales: Vec<f32>,
    /// Asymmetric only: [rows, ceil(k_blocks·bits/8)], packed like `packed`.
    pub zero_points: Option<Vec<u8>>,
}

/// Standard-ONNX DequantizeLinear tensors for the [K, N] weight (axis 0, blocked).
pub struct QdqWeight {
    /// int4/int8 (symmetric) or uint4/uint8 (asymmetric).
    pub dtype: DType,
    /// [K, N] row-major codes, packed for 4 bits.
    pub data: Vec<u8>,
    /// [k_blocks, N].
    pub scales: Vec<f32>,
    /// [k_blocks, N] in `dtype`, asymmetric only.
    pub zero_points: Option<Vec<u8>>,
}

impl BlockQuant {
    pub fn k_blocks(&self) -> usize {
        self.cols.div_ceil(self.params.block_size)
    }

    fn blob(&self) -> usize {
        self.params.block_size * self.params.bits as usize / 8
    }

    fn zp_row_bytes(&self) -> usize {
        (self.k_blocks() * self.params.bits as usize).div_ceil(8)
    }

    /// Code of element (r, c).
    pub fn codes_row(&self, r: usize) -> Vec<u8> {
        let row_bytes = self.k_blocks() * self.blob();
        let mut codes = unpack(
            &self.packed[r * row_bytes..(r + 1) * row_bytes],
            self.params.bits,
            self.k_blocks() * self.params.block_size,
        );
        codes.truncate(self.cols);
        codes
    }

    pub fn zero_points_row(&self, r: usize) -> Vec<u8> {
        let kb = self.k_blocks();
        match &self.zero_points {
            Some(z) => {
                let n = self.zp_row_bytes();
                unpack(&z[r * n..(r + 1) * n], self.params.bits, kb)
            }
            None => vec![self.params.mid(); kb],
        }
    }

    /// Back to f32, [rows, cols].
    pub fn dequantize_rows(&self) -> Vec<f32> {
        let bs = self.params.block_size;
        let kb = self.k_blocks();
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                let codes = self.codes_row(r);
                let zps = self.zero_points_row(r);
                for (c, o) in row.iter_mut().enumerate() {
                    let b = c / bs;
                    *o = (codes[c] as f32 - zps[b] as f32) * self.scales[r * kb + b];
                }
            });
        out
    }

    /// Back to f32 in MatMul layout [K, N].
    pub fn dequantize_kn(&self) -> Vec<f32> {
        super::transpose(&self.dequantize_rows(), self.rows, self.cols)
    }

    /// The same quantized values as ONNX DequantizeLinear inputs (axis 0, blocked)
    /// for the [K, N] weight.
    pub fn to_qdq(&self) -> QdqWeight {
        let (n, k, kb) = (self.rows, self.cols, self.k_blocks());
        let bits = self.params.bits;
        let sym = self.params.symmetric;
        let dtype = match (bits, sym) {
            (4, true) => DType::I4,
            (4, false) => DType::U4,
            (_, true) => DType::I8,
            (_, false) => DType::U8,
        };
        let mid = self.params.mid() as i16;
        // Symmetric codes are stored signed (code - 2^(bits-1)), with no zero point.
        let to_stored = |code: u8| -> u8 {
            if sym {
                let v = code as i16 - mid;
                (v as u8) & if bits == 4 { 0x0F } else { 0xFF }
            } else {
                code
            }
        };
        let mut codes_kn = vec![0u8; k * n];
        for r in 0..n {
            for (c, code) in self.codes_row(r).into_iter().enumerate() {
                codes_kn[c * n + r] = to_stored(code);
            }
        }
        let mut zps_kn = vec![0u8; kb * n];
        let mut scales_kn = vec![0f32; kb * n];
        for r in 0..n {
            let z = self.zero_points_row(r);
            for b in 0..kb {
                scales_kn[b * n + r] = self.scales[r * kb + b];
                zps_kn[b * n + r] = z[b];
            }
        }
        let packed = |v: &[u8]| -> Vec<u8> {
            if bits == 4 {
                let mut out = vec![0u8; v.len().div_ceil(2)];
                pack(v, 4, &mut out);
                out
            } else {
                v.to_vec()
            }
        };
        QdqWeight {
            dtype,
            data: packed(&codes_kn),
            scales: scales_kn,
            zero_points: (!sym).then(|| packed(&zps_kn)),
        }
    }
}

/// Scale and zero point (as f32) for one block by onnxruntime's rules.
pub fn block_scale_zp(block: &[f32], p: &QuantParams) -> (f32, f32) {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in block {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if block.is_empty() {
        return (0.0, p.mid() as f32);
    }
    if p.symmetric {
        let m = if hi.abs() > lo.abs() { hi } else { lo };
        (m / -(p.mid() as f32), p.mid() as f32)
    } else {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let scale = (hi - lo) / p.max_code();
        let zp = if scale == 0.0 {
            p.mid() as f32
        } else {
            (-lo / scale).round().clamp(0.0, p.max_code())
        };
        (scale, zp)
    }
}

/// Codes for one block with a given scale and (integer) zero point.
#[inline]
pub fn block_codes(block: &[f32], scale: f32, zp: f32, max_code: f32, out: &mut [u8]) {
    let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
    for (o, &v) in out.iter_mut().zip(block) {
        *o = (v * inv + zp).round().clamp(0.0, max_code) as u8;
    }
}

/// How one block is quantized: RTN, or a smarter search (HQQ) returning scale and
/// integer zero point.
pub type BlockSolver = dyn Fn(&[f32], &QuantParams) -> (f32, f32) + Sync;

/// Quantizes a row-major [rows, cols] matrix along cols.
pub fn quantize_rows(
    w: &[f32],
    rows: usize,
    cols: usize,
    p: &QuantParams,
) -> Result<BlockQuant, QuantError> {
    quantize_rows_with(w, rows, cols, p, &block_scale_zp)
}

/// Quantizes the ONNX MatMul weight [K, N] (stored transposed as [N, K] blocks).
pub fn quantize_kn(
    w: &[f32],
    k: usize,
    n: usize,
    p: &QuantParams,
) -> Result<BlockQuant, QuantError> {
    if w.len() != k * n {
        return Err(QuantError(format!(
            "weight has {} values, expected {k}x{n}",
            w.len()
        )));
    }
    quantize_rows(&super::transpose(w, k, n), n, k, p)
}

pub fn quantize_rows_with(
    w: &[f32],
    rows: usize,
    cols: usize,
    p: &QuantParams,
    solve: &BlockSolver,
) -> Result<BlockQuant, QuantError> {
    p.check()?;
    if w.len() != rows * cols {
        return Err(QuantError(format!(
            "weight has {} values, expected {rows}x{cols}",
            w.len()
        )));
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(QuantError(format!(
            "non-finite weight value {} at element {i}",
            w[i]
        )));
    }
    let bs = p.block_size;
    let kb = cols.div_ceil(bs);
    let blob = bs * p.bits as usize / 8;
    let zp_row = (kb * p.bits as usize).div_ceil(8);
    let mut packed = vec![0u8; rows * kb * blob];
    let mut scales = vec![0f32; rows * kb];
    let mut zps = vec![0u8; rows * zp_row];
    let max_code = p.max_code();
    packed
        .par_chunks_mut((kb * blob).max(1))
        .zip(scales.par_chunks_mut(kb.max(1)))
        .zip(zps.par_chunks_mut(zp_row.max(1)))
        .enumerate()
        .for_each(|(r, ((prow, srow), zrow))| {
            let row = &w[r * cols..(r + 1) * cols];
            let mut padded = vec![0f32; bs];
            let mut codes = vec![0u8; bs];
            let mut z = vec![0u8; kb];
            for b in 0..kb {
                let start = b * bs;
                let end = (start + bs).min(cols);
                // The last block is padded with zeros, as onnxruntime does.
                let block: &[f32] = if end - start == bs {
                    &row[start..end]
                } else {
                    padded.fill(0.0);
                    padded[..end - start].copy_from_slice(&row[start..end]);
                    &padded
                };
                let (scale, zp) = solve(block, p);
                block_codes(block, scale, zp, max_code, &mut codes);
                srow[b] = scale;
                z[b] = zp as u8;
                pack(&codes, p.bits, &mut prow[b * blob..(b + 1) * blob]);
            }
            pack(&z, p.bits, zrow);
        });
    Ok(BlockQuant {
        params: *p,
        rows,
        cols,
        packed,
        scales,
        zero_points: (!p.symmetric).then_some(zps),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 2.0
            })
            .collect()
    }

    #[test]
    fn dequantized_error_is_within_half_a_step() {
        for &(bits, sym) in &[(4u8, true), (4, false), (8, true), (8, false), (2, false)] {
            let (k, n) = (100, 24); // K not a multiple of the block size
            let w = data(k * n, bits as u32);
            let p = QuantParams {
                bits,
                block_size: 32,
                symmetric: sym,
            };
            let q = quantize_kn(&w, k, n, &p).unwrap();
            let d = q.dequantize_kn();
            let kb = q.k_blocks();
            for kk in 0..k {
                for nn in 0..n {
                    let s = q.scales[nn * kb + kk / 32].abs();
                    let err = (w[kk * n + nn] - d[kk * n + nn]).abs();
                    // Symmetric grids are one-sided: the extreme code on the short side clips.
                    let bound = if sym { s * 1.0 + 1e-6 } else { s * 0.5 + 1e-6 };
                    assert!(err <= bound, "bits {bits} sym {sym}: err {err} > {bound}");
                }
            }
        }
    }

    #[test]
    fn qdq_layout_matches_blocks() {
        let (k, n) = (64, 8);
        let w = data(k * n, 7);
        for sym in [true, false] {
            let p = QuantParams {
                bits: 4,
                block_size: 32,
                symmetric: sym,
            };
            let q = quantize_kn(&w, k, n, &p).unwrap();
            let d = q.to_qdq();
            let codes = unpack(&d.data, 4, k * n);
            let deq = q.dequantize_kn();
            for kk in 0..k {
                for nn in 0..n {
                    let c = codes[kk * n + nn];
                    let v = if sym {
                        ((c as i8) << 4 >> 4) as f32
                    } else {
                        let z =
                            unpack(d.zero_points.as_ref().unwrap(), 4, 2 * n)[(kk / 32) * n + nn];
                        c as f32 - z as f32
                    };
                    let x = v * d.scales[(kk / 32) * n + nn];
                    assert!((x - deq[kk * n + nn]).abs() < 1e-6);
                }
            }
        }
    }

    #[test]
    fn rejects_bad_params_and_values() {
        let p = QuantParams {
            bits: 3,
            block_size: 32,
            symmetric: true,
        };
        assert!(quantize_rows(&[0.0; 32], 1, 32, &p).is_err());
        let p = QuantParams {
            bits: 4,
            block_size: 24,
            symmetric: true,
        };
        assert!(quantize_rows(&[0.0; 24], 1, 24, &p).is_err());
        let p = QuantParams {
            bits: 4,
            block_size: 32,
            symmetric: true,
        };
        assert!(quantize_rows(&[f32::NAN; 32], 1, 32, &p).is_err());
    }
}
