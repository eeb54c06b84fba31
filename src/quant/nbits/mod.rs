//! Block-wise integer quantization along K to 2, 4 or 8 bits, in the layout
//! com.microsoft MatMulNBits and GatherBlockQuantized (uint8-packed) read.
//!
//! Output of quantizing an [N, K] matrix ("rows" = N, "cols" = K), or the
//! ONNX MatMul weight [K, N] through [`quantize_kn`]:
//! - `packed`: uint8 [N, k_blocks, block_size·bits/8]; codes low bits first, so for
//!   4 bits element 2i is the low nibble of byte i. `k_blocks = ceil(K/block_size)`;
//!   positions past K in the last block hold code 0, as onnxruntime leaves them.
//! - `scales`: [N, k_blocks], already rounded to the weight's float type.
//! - `zero_points` (asymmetric only): uint8 [N, ceil(k_blocks·bits/8)], packed
//!   like `packed`; the unused slots at the end of a row hold 2^(bits-1), as
//!   onnxruntime writes them. Symmetric blocks have the implied zero point
//!   2^(bits-1) and no tensor.
//!
//! Decoding: `w = (code - zero_point) * scale`.
//!
//! Rules (onnxruntime's MLAS `BlockwiseQuantizer`, which its Python
//! MatMulNBitsQuantizer calls; min/max over the block's real elements):
//! - symmetric: `m` = the block's max if |max| > |min|, else its min;
//!   `scale = -m / 2^(bits-1)`. The sign maps the larger half of the data to
//!   the side of the grid with the extra code (-8 for 4 bits).
//! - asymmetric: `lo = min(min, 0)`, `hi = max(max, 0)`,
//!   `scale = (hi - lo) / (2^bits - 1)`, zero point = `roundf(-lo / scale)`
//!   clamped to the code range (0 when the block is all zero).
//! - codes: `clamp(roundf(w * (1/scale) + zero_point), 0, 2^bits - 1)` with the
//!   reciprocal of the *stored* scale (so f16 scales quantize like ORT's f16
//!   kernel), `roundf` = half away from zero, and 1/0 taken as 0.
mod block_quant;
mod drivers;

pub use block_quant::BlockQuant;
pub use drivers::{
    quantize_kn, quantize_kn_as, quantize_kn_with, quantize_rows, quantize_rows_as,
    quantize_rows_with,
};

use super::convert::FloatType;
use super::pack::{pack, packed_len, unpack_ordered, Order};
use super::{gather_columns, QuantError};

/// Bits, block size and symmetry of one quantization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QuantParams {
    /// 2, 4 or 8.
    pub bits: u8,
    /// A power of two >= 16.
    pub block_size: usize,
    /// No zero-point tensor; implied zero point 2^(bits-1).
    pub symmetric: bool,
}

impl QuantParams {
    /// Validated parameters.
    pub fn new(bits: u8, block_size: usize, symmetric: bool) -> Result<Self, QuantError> {
        let p = QuantParams {
            bits,
            block_size,
            symmetric,
        };
        p.check()?;
        Ok(p)
    }

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

    /// Largest code, 2^bits - 1.
    pub fn max_code(&self) -> u8 {
        ((1u16 << self.bits) - 1) as u8
    }

    /// The implied zero point of symmetric blocks, 2^(bits-1).
    pub fn mid(&self) -> u8 {
        1 << (self.bits - 1)
    }

    /// Bytes per packed block.
    pub fn blob_size(&self) -> usize {
        self.block_size * self.bits as usize / 8
    }

    pub fn k_blocks(&self, k: usize) -> usize {
        k.div_ceil(self.block_size)
    }

    /// Bytes per row of packed zero points.
    pub fn zp_row_bytes(&self, k: usize) -> usize {
        packed_len(self.k_blocks(k), self.bits)
    }
}

/// Scale and integer zero point of one block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockFit {
    pub scale: f32,
    pub zero_point: u8,
}

/// Chooses scale and zero point for one block; RTN ([`Rtn`]) and HQQ implement it.
pub trait BlockSolver: Sync {
    /// `block` holds the block's real elements (the padding past K is not
    /// included), all finite, with minimum `lo` and maximum `hi`. `scratch` is a
    /// per-thread buffer the solver may resize and overwrite.
    fn fit(
        &self,
        block: &[f32],
        lo: f32,
        hi: f32,
        p: &QuantParams,
        scratch: &mut Vec<f32>,
    ) -> BlockFit;

    /// True when `fit` reads only `lo` and `hi`; the [K, N] driver then computes
    /// them column by column without transposing the weight, and calls `fit` with
    /// an empty block.
    fn uses_min_max_only(&self) -> bool {
        false
    }
}

/// Round to nearest with min/max scales, exactly as onnxruntime.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rtn;

impl BlockSolver for Rtn {
    #[inline]
    fn fit(&self, _: &[f32], lo: f32, hi: f32, p: &QuantParams, _: &mut Vec<f32>) -> BlockFit {
        rtn_fit(lo, hi, p)
    }

    fn uses_min_max_only(&self) -> bool {
        true
    }
}

/// onnxruntime's scale and zero point for a block with min `lo` and max `hi`.
#[inline]
pub fn rtn_fit(lo: f32, hi: f32, p: &QuantParams) -> BlockFit {
    if p.symmetric {
        let m = if hi.abs() > lo.abs() { hi } else { lo };
        BlockFit {
            scale: -m / p.mid() as f32,
            zero_point: p.mid(),
        }
    } else {
        let lo = lo.min(0.0);
        let hi = hi.max(0.0);
        let max = p.max_code() as f32;
        let scale = (hi - lo) / max;
        let zf = if scale != 0.0 { -lo / scale } else { lo };
        let zero_point = if zf < 0.0 {
            0
        } else if zf > max {
            p.max_code()
        } else {
            zf.round() as u8
        };
        BlockFit { scale, zero_point }
    }
}

/// Minimum and maximum of a block, and whether every element is finite.
#[inline(always)]
pub fn min_max(block: &[f32]) -> (f32, f32, bool) {
    const L: usize = 8;
    let mut lo = [f32::MAX; L];
    let mut hi = [f32::MIN; L];
    // v·0 is 0 for finite v and NaN otherwise; the sum stays 0 iff all are finite.
    let mut nan = [0f32; L];
    let mut chunks = block.chunks_exact(L);
    for c in &mut chunks {
        for j in 0..L {
            lo[j] = lo[j].min(c[j]);
            hi[j] = hi[j].max(c[j]);
            nan[j] += c[j] * 0.0;
        }
    }
    for (j, &v) in chunks.remainder().iter().enumerate() {
        lo[j] = lo[j].min(v);
        hi[j] = hi[j].max(v);
        nan[j] += v * 0.0;
    }
    let l = lo.iter().fold(f32::MAX, |a, &b| a.min(b));
    let h = hi.iter().fold(f32::MIN, |a, &b| a.max(b));
    let z: f32 = nan.iter().sum();
    (l, h, z == 0.0 && l.is_finite() && h.is_finite())
}

/// 2^23: adding it to a float in [0, 2^23) rounds to an integer (ties to even)
/// held in the low mantissa bits.
const MAGIC: f32 = 8_388_608.0;

/// `roundf` (half away from zero) of `y` in [0, 2^23), as f32. Written without
/// libm calls or float→int casts so loops around it vectorize on baseline x86-64.
#[inline(always)]
pub fn round_nonneg(y: f32) -> f32 {
    let n = (y + MAGIC) - MAGIC;
    // Ties went to even; roundf takes them up. y - n is exact.
    n + ((y - n == 0.5) as u32 as f32)
}

/// [`round_nonneg`] of `y` in [0, 255] as a code byte.
#[inline(always)]
fn round_code(y: f32) -> u8 {
    let t = y + MAGIC;
    let tie = (y - (t - MAGIC) == 0.5) as u32;
    (t.to_bits() + tie) as u8
}

/// Codes for `block` given the reciprocal scale and zero point.
#[inline(always)]
pub fn encode(block: &[f32], inv: f32, zero_point: f32, max_code: f32, codes: &mut [u8]) {
    for (c, &v) in codes.iter_mut().zip(block) {
        // Clamping before rounding equals rounding then clamping for finite input.
        let y = (v * inv + zero_point).max(0.0).min(max_code);
        *c = round_code(y);
    }
}

/// Reciprocal used for encoding: 1/scale, or 0 for a zero scale.
#[inline]
pub fn reciprocal(scale: f32) -> f32 {
    if scale != 0.0 {
        1.0 / scale
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) with a few large ones.
    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                if i % 53 == 0 {
                    u * 4.0
                } else {
                    u
                }
            })
            .collect()
    }

    fn params(bits: u8, block_size: usize, symmetric: bool) -> QuantParams {
        QuantParams::new(bits, block_size, symmetric).unwrap()
    }

    #[test]
    fn dequantized_error_is_within_half_a_step() {
        for bits in [2u8, 4, 8] {
            for sym in [true, false] {
                // K not a multiple of the block size; N not a multiple of the tile.
                let (k, n) = (100, 70);
                let w = data(k * n, bits as u64 + sym as u64 * 10);
                let p = params(bits, 32, sym);
                let q = quantize_kn(&w, k, n, &p).unwrap();
                let d = q.dequantize_kn();
                let kb = q.k_blocks();
                for kk in 0..k {
                    for nn in 0..n {
                        let s = q.scales[nn * kb + kk / 32].abs();
                        let x = w[kk * n + nn];
                        let err = (x - d[kk * n + nn]).abs();
                        // Asymmetric grids cover [min, max]. A symmetric grid has one
                        // code less on the side opposite the extreme value, so values
                        // there may clip by up to one more step.
                        let bound = if sym { s * 1.5 } else { s * 0.5 } + 1e-6;
                        assert!(
                            err <= bound,
                            "bits {bits} sym {sym}: {x} err {err} > {bound}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn kn_and_rows_entry_points_agree_bit_for_bit() {
        for (bits, sym, bs) in [
            (4u8, true, 32usize),
            (4, false, 16),
            (8, false, 64),
            (2, true, 32),
        ] {
            let (k, n) = (200, 131);
            let w = data(k * n, 7);
            let p = params(bits, bs, sym);
            let a = quantize_kn(&w, k, n, &p).unwrap();
            let b = quantize_rows(&crate::quant::transpose(&w, k, n), n, k, &p).unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn dequantize_kn_is_the_transpose_of_dequantize_rows() {
        for (bits, sym) in [(2u8, false), (4, true), (4, false), (8, false)] {
            // Several K tasks, a partial last one, N not a multiple of the tile.
            let (k, n) = (150, 37);
            let w = data(k * n, 21);
            let q = quantize_kn(&w, k, n, &params(bits, 16, sym)).unwrap();
            let rows = q.dequantize_rows();
            assert_eq!(q.dequantize_kn(), crate::quant::transpose(&rows, n, k));
        }
    }

    #[test]
    fn padding_codes_are_zero_and_layout_sizes_follow_k_blocks() {
        let (k, n) = (40, 3);
        let w = data(k * n, 3);
        for sym in [true, false] {
            let p = params(4, 32, sym);
            let q = quantize_kn(&w, k, n, &p).unwrap();
            assert_eq!(q.k_blocks(), 2);
            assert_eq!(q.packed.len(), n * 2 * 16);
            assert_eq!(q.scales.len(), n * 2);
            assert_eq!(q.zero_points.as_ref().map(Vec::len), (!sym).then_some(n));
            for r in 0..n {
                let row = &q.packed[r * 32..(r + 1) * 32];
                // Elements 40..64 of the row live in bytes 20..32 of the row.
                assert!(row[20..].iter().all(|&b| b == 0));
            }
        }
        // Three blocks: the fourth zero-point slot of each row holds the midpoint.
        let q = quantize_kn(&w, k, n, &params(4, 16, false)).unwrap();
        let z = q.zero_points.unwrap();
        assert_eq!(z.len(), n * 2);
        assert!(z.chunks(2).all(|row| row[1] >> 4 == 8));
    }

    #[test]
    fn symmetric_scale_follows_the_signed_extreme() {
        let p = params(4, 16, true);
        let mut w = vec![0.5f32; 16];
        w[3] = -2.0;
        let q = quantize_rows(&w, 1, 16, &p).unwrap();
        // -(-2)/8: the negative extreme maps to code 0 (= -8 after the offset).
        assert_eq!(q.scales[0], 0.25);
        assert_eq!(q.codes_row(0)[3], 0);
        w[3] = 2.0;
        let q = quantize_rows(&w, 1, 16, &p).unwrap();
        assert_eq!(q.scales[0], -0.25);
        assert_eq!(q.codes_row(0)[3], 0);
    }

    #[test]
    fn all_zero_blocks_use_zero_scale() {
        let w = vec![0f32; 32];
        let q = quantize_rows(&w, 1, 32, &params(4, 32, false)).unwrap();
        assert_eq!(q.scales, vec![0.0]);
        assert_eq!(q.zero_points_row(0), vec![0]);
        assert!(q.dequantize_rows().iter().all(|&v| v == 0.0));
        let q = quantize_rows(&w, 1, 32, &params(4, 32, true)).unwrap();
        assert!(q.codes_row(0).iter().all(|&c| c == 8));
    }

    #[test]
    fn rounding_is_half_away_from_zero_like_roundf() {
        let mut ys = vec![
            0.0f32, 0.49999997, 0.5, 1.5, 2.5, 7.4999995, 14.5, 254.5, 255.0,
        ];
        ys.extend((0..100_000).map(|i| i as f32 * 0.002_55));
        for y in ys {
            assert_eq!(round_nonneg(y), y.round(), "{y}");
            assert_eq!(round_code(y), y.round() as u8, "{y}");
        }
    }

    #[test]
    fn f16_scales_are_representable_and_used_for_codes() {
        let (k, n) = (64, 8);
        let w = data(k * n, 11);
        let p = params(4, 32, false);
        let q = quantize_kn_as(&w, k, n, &p, FloatType::F16).unwrap();
        for &s in &q.scales {
            assert_eq!(half::f16::from_f32(s).to_f32(), s);
        }
        let d = q.dequantize_kn();
        let err = w
            .iter()
            .zip(&d)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let max_scale = q.scales.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!(err <= max_scale * 0.5 * 1.01, "{err} vs {max_scale}");
    }

    #[test]
    fn results_do_not_depend_on_thread_count() {
        let (k, n) = (512, 300);
        let w = data(k * n, 5);
        let p = params(4, 32, false);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let a = one.install(|| quantize_kn(&w, k, n, &p).unwrap());
        let b = quantize_kn(&w, k, n, &p).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn rejects_bad_params_shapes_and_values() {
        assert!(QuantParams::new(3, 32, true).is_err());
        assert!(QuantParams::new(4, 24, true).is_err());
        assert!(QuantParams::new(4, 8, true).is_err());
        let p = params(4, 32, true);
        assert!(quantize_rows(&[0.0; 31], 1, 32, &p).is_err());
        let mut w = vec![0.0f32; 64];
        w[40] = f32::NAN;
        let e = quantize_kn(&w, 8, 8, &p).unwrap_err().to_string();
        assert!(e.contains("element 40") && e.contains("row 5"), "{e}");
        w[40] = f32::INFINITY;
        assert!(quantize_rows(&w, 2, 32, &p).is_err());
    }

    #[test]
    fn from_parts_checks_sizes_and_roundtrips() {
        let (k, n) = (48, 5);
        let w = data(k * n, 9);
        let p = params(4, 16, false);
        let q = quantize_kn(&w, k, n, &p).unwrap();
        let back = BlockQuant::from_parts(
            p,
            n,
            k,
            q.packed.clone(),
            q.scales.clone(),
            q.zero_points.clone(),
        )
        .unwrap();
        assert_eq!(back.dequantize_kn(), q.dequantize_kn());
        assert!(BlockQuant::from_parts(p, n, k, vec![0; 3], q.scales.clone(), None).is_err());
    }
}
