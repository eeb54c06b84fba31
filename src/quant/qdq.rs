//! The same quantized values as standard ONNX DequantizeLinear (opset 21,
//! blocked) inputs for the MatMul weight [K, N], with `axis = 0` and
//! `block_size` — what onnxruntime's MatMulNBitsQuantizer emits with
//! `quant_format = QDQ`.
//!
//! - data: [K, N] row-major, `int4`/`int8`/`int2` for symmetric blocks (stored
//!   code − 2^(bits-1), no zero point) or `uint4`/`uint8`/`uint2` for asymmetric
//!   ones; sub-byte types packed over the flat index, lower index in the lower
//!   bits, last byte zero-padded (the ONNX int4 rule).
//! - scales: [ceil(K / block_size), N].
//! - zero points (asymmetric): same shape as scales, same dtype and packing as data.
//!
//! int2/uint2 need opset 25; ORT's MatMulNBitsQuantizer itself only writes 4 bits.
use rayon::prelude::*;

use super::nbits::BlockQuant;
use super::pack::{pack, packed_len, unpack, unpack_ordered, Order};
use crate::ir::DType;

/// DequantizeLinear tensors for a [K, N] weight.
#[derive(Clone, Debug, PartialEq)]
pub struct QdqWeight {
    /// int2/int4/int8 (symmetric) or uint2/uint4/uint8 (asymmetric).
    pub dtype: DType,
    pub k: usize,
    pub n: usize,
    pub block_size: usize,
    /// [K, N], packed for sub-byte types.
    pub data: Vec<u8>,
    /// [k_blocks, N].
    pub scales: Vec<f32>,
    /// [k_blocks, N] in `dtype`, packed like `data`; asymmetric only.
    pub zero_points: Option<Vec<u8>>,
}

/// Rows of K each task converts; a multiple of 8 so every task starts on a byte.
const ROWS_PER_TASK: usize = 64;

impl QdqWeight {
    pub fn bits(&self) -> u8 {
        self.dtype.bits() as u8
    }

    fn signed(&self) -> bool {
        matches!(self.dtype, DType::I2 | DType::I4 | DType::I8)
    }

    pub fn k_blocks(&self) -> usize {
        self.k.div_ceil(self.block_size)
    }

    /// DequantizeLinear's result, [K, N]: `(x - zero_point) * scale`.
    pub fn dequantize(&self) -> Vec<f32> {
        let (k, n, bits) = (self.k, self.n, self.bits());
        let mut out = vec![0f32; k * n];
        if out.is_empty() {
            return out;
        }
        let shift = 8 - bits as u32;
        let value = |c: u8| -> i32 {
            if self.signed() {
                // Sign-extend a `bits`-wide two's complement value.
                ((c << shift) as i8 >> shift) as i32
            } else {
                c as i32
            }
        };
        let zps = self
            .zero_points
            .as_ref()
            .map(|z| unpack(z, bits, self.k_blocks() * n));
        out.par_chunks_mut(ROWS_PER_TASK * n)
            .enumerate()
            .for_each(|(t, rows)| {
                let k0 = t * ROWS_PER_TASK;
                let mut codes = vec![0u8; rows.len()];
                let start = packed_len(k0 * n, bits);
                unpack_ordered(&self.data[start..], bits, Order::LowFirst, &mut codes);
                for (i, (orow, crow)) in rows.chunks_mut(n).zip(codes.chunks(n)).enumerate() {
                    let m0 = ((k0 + i) / self.block_size) * n;
                    let scales = &self.scales[m0..m0 + n];
                    for (j, ((o, &c), &s)) in orow.iter_mut().zip(crow).zip(scales).enumerate() {
                        let z = zps.as_ref().map_or(0, |z| value(z[m0 + j]));
                        *o = (value(c) - z) as f32 * s;
                    }
                }
            });
        out
    }
}

impl BlockQuant {
    /// The weight as blocked DequantizeLinear inputs for the [K, N] layout
    /// (this matrix is [N, K]: rows = N, cols = K). Codes are the same; only the
    /// layout and, for symmetric blocks, the signed storage change.
    pub fn to_qdq(&self) -> QdqWeight {
        let (n, k, kb) = (self.rows, self.cols, self.k_blocks());
        let bits = self.params.bits;
        let sym = self.params.symmetric && self.zero_points.is_none();
        let dtype = match (bits, sym) {
            (2, true) => DType::I2,
            (2, false) => DType::U2,
            (4, true) => DType::I4,
            (4, false) => DType::U4,
            (_, true) => DType::I8,
            (_, false) => DType::U8,
        };
        // Symmetric codes are stored signed: code - 2^(bits-1) (packing masks it).
        let offset = if sym { self.params.mid() } else { 0 };
        let row_bytes = self.row_bytes();
        let mut data = vec![0u8; packed_len(k * n, bits)];
        if !data.is_empty() {
            data.par_chunks_mut(packed_len(ROWS_PER_TASK * n, bits))
                .enumerate()
                .for_each(|(t, out)| {
                    let k0 = t * ROWS_PER_TASK;
                    let rows = ROWS_PER_TASK.min(k - k0);
                    let mut seg = vec![0u8; rows];
                    let mut codes = vec![0u8; rows * n];
                    for r in 0..n {
                        // Along a packed row the codes of K are consecutive; k0 is a
                        // multiple of 8, so the segment starts on a byte.
                        let row = &self.packed[r * row_bytes..(r + 1) * row_bytes];
                        unpack_ordered(
                            &row[packed_len(k0, bits)..],
                            bits,
                            Order::LowFirst,
                            &mut seg,
                        );
                        for (i, &c) in seg.iter().enumerate() {
                            codes[i * n + r] = c.wrapping_sub(offset);
                        }
                    }
                    pack(&codes, bits, out);
                });
        }
        let scales = super::transpose(&self.scales, n, kb);
        let zero_points = self.zero_points.as_ref().map(|_| {
            let mut z_nk = Vec::with_capacity(n * kb);
            for r in 0..n {
                z_nk.extend(self.zero_points_row(r));
            }
            let z_kn = super::transpose(&z_nk, n, kb);
            let mut out = vec![0u8; packed_len(kb * n, bits)];
            pack(&z_kn, bits, &mut out);
            out
        });
        QdqWeight {
            dtype,
            k,
            n,
            block_size: self.params.block_size,
            data,
            scales,
            zero_points,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::quant::nbits::{quantize_kn, QuantParams};

    #[test]
    fn qdq_dequantizes_to_the_same_values_as_matmulnbits() {
        // Odd N, so packed int4 bytes straddle rows of [K, N]; K not a multiple of
        // the block size, and more than one task of rows.
        let (k, n) = (150, 7);
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.45) * (1 + i % 5) as f32)
            .collect();
        for bits in [2u8, 4, 8] {
            for sym in [true, false] {
                let p = QuantParams::new(bits, 32, sym).unwrap();
                let q = quantize_kn(&w, k, n, &p).unwrap();
                let d = q.to_qdq();
                assert_eq!(d.data.len(), (k * n * bits as usize).div_ceil(8));
                assert_eq!(d.scales.len(), 5 * n);
                assert_eq!(d.zero_points.is_some(), !sym);
                assert_eq!(d.dequantize(), q.dequantize_kn(), "bits {bits} sym {sym}");
            }
        }
    }

    #[test]
    fn symmetric_int4_is_stored_twos_complement() {
        let p = QuantParams::new(4, 16, true).unwrap();
        let mut w = vec![0f32; 16];
        w[0] = -1.0; // the extreme: scale 1/8, code 0, stored -8 = 0b1000
        w[1] = 0.5; // code 12, stored 4
        let q = quantize_kn(&w, 16, 1, &p).unwrap();
        let d = q.to_qdq();
        assert_eq!(d.data[0], 0x48);
    }
}
