//! bitsandbytes-style 4-bit code books (NF4, FP4) for com.microsoft MatMulBnb4,
//! bit-exact with onnxruntime's `quantize_matmul_bnb4` (MatMulBnb4Quantizer).
//!
//! The weight in [N, K] (PyTorch Linear) order is flattened and cut into blocks of
//! `block_size`; per block `absmax = max |x|`, each `x · (1/absmax)` (1/0 taken as
//! 0) maps to a code by comparing against fixed thresholds (the midpoints of the
//! code book, as float constants from onnxruntime's `blockwise_quant_block_bnb4.h`),
//! and two codes share a byte with the FIRST element in the HIGH nibble. An odd
//! element count encodes a 0.0 in the last low nibble (code 7 for NF4, 0 for FP4).
//!
//! Outputs: packed uint8 [(N·K + 1) / 2] and absmax [ceil(N·K / block_size)].
//! Decoding: `table[code] * absmax[block]`.
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::pack::{pack_ordered, packed_len, unpack_ordered, Order};
use super::{gather_columns, QuantError};

/// The data type, with MatMulBnb4's `quant_type` attribute values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    Fp4 = 0,
    Nf4 = 1,
}

impl QuantType {
    /// The `quant_type` attribute value.
    pub fn code(self) -> i64 {
        self as i64
    }
}

/// NF4 values (QLoRA), by code.
#[allow(clippy::excessive_precision)] // the decimal text onnxruntime uses
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// FP4 values (bitsandbytes: sign in bit 3, exponent bias 3, divided by 12), by
/// code.
#[allow(clippy::excessive_precision)] // the decimal text onnxruntime uses
pub const FP4: [f32; 16] = [
    0.0,
    5.208_333_333e-3,
    0.666_666_67,
    1.0,
    0.333_333_33,
    0.5,
    0.166_666_67,
    0.25,
    -0.0,
    -5.208_333_333e-3,
    -0.666_666_67,
    -1.0,
    -0.333_333_33,
    -0.5,
    -0.166_666_67,
    -0.25,
];

/// x > NF4_UP[i] means code > i (ascending midpoints between NF4 values).
#[allow(clippy::excessive_precision)] // the decimal text onnxruntime uses
const NF4_UP: [f32; 15] = [
    -0.848_096_400_499_343_9,
    -0.610_632_926_225_662_2,
    -0.459_995_269_775_390_6,
    -0.339_679_434_895_515_44,
    -0.234_607_405_960_559_84,
    -0.137_911_733_239_889_14,
    -0.045_525_018_125_772_476,
    0.039_790_149_778_127_67,
    0.120_255_250_483_751_3,
    0.203_521_251_678_466_8,
    0.292_013_771_831_989_3,
    0.389_312_535_524_368_3,
    0.501_663_416_624_069_2,
    0.642_786_920_070_648_2,
    0.861_478_418_111_801_1,
];

/// |x| > FP4_UP[i] means the magnitude ranks above i (midpoints of the sorted
/// magnitudes 0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1).
#[allow(clippy::excessive_precision)] // the decimal text onnxruntime uses
const FP4_UP: [f32; 7] = [
    0.002_604_17,
    0.085_937_5,
    0.208_333_33,
    0.291_666_67,
    0.416_666_7,
    0.583_333,
    0.833_333_3,
];

/// The FP4 code of magnitude rank r (0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1 get
/// codes 0, 1, 6, 7, 4, 5, 2, 3) is r with bit 2 flipped when bit 1 is set.
#[inline(always)]
fn fp4_rank_code(rank: u8) -> u8 {
    rank ^ ((rank & 2) << 1)
}

pub fn table(qt: QuantType) -> &'static [f32; 16] {
    match qt {
        QuantType::Nf4 => &NF4,
        QuantType::Fp4 => &FP4,
    }
}

/// The code of `x` (already multiplied by 1/absmax).
#[inline]
pub fn encode(x: f32, qt: QuantType) -> u8 {
    match qt {
        QuantType::Nf4 => NF4_UP.iter().map(|&t| (x > t) as u8).sum(),
        QuantType::Fp4 => {
            let a = x.abs();
            let rank: u8 = FP4_UP.iter().map(|&t| (a > t) as u8).sum();
            fp4_rank_code(rank) | (((x < 0.0) as u8) << 3)
        }
    }
}

/// A MatMulBnb4 weight.
#[derive(Clone, Debug, PartialEq)]
pub struct Bnb4 {
    /// [(N·K + 1) / 2], first element of a pair in the high nibble.
    pub packed: Vec<u8>,
    /// [ceil(N·K / block_size)].
    pub absmax: Vec<f32>,
}

fn check(
    len: usize,
    a: usize,
    b: usize,
    block_size: usize,
    layout: &str,
) -> Result<(), QuantError> {
    if a.checked_mul(b) != Some(len) {
        return Err(QuantError(format!(
            "weight has {len} values, expected {a}x{b} ({layout})"
        )));
    }
    if block_size < 16 || !block_size.is_power_of_two() {
        return Err(QuantError(format!(
            "block size {block_size} must be a power of two >= 16"
        )));
    }
    Ok(())
}

/// Quantizes one block (`out` holds `ceil(block.len()/2)` bytes) using `codes`
/// (at least `block.len() + 1` long) as scratch; None if a value is not finite.
#[inline]
fn quantize_block(block: &[f32], qt: QuantType, codes: &mut [u8], out: &mut [u8]) -> Option<f32> {
    const L: usize = 8;
    let mut m = [0f32; L];
    let mut nan = [0f32; L];
    let mut chunks = block.chunks_exact(L);
    for c in &mut chunks {
        for j in 0..L {
            m[j] = m[j].max(c[j].abs());
            nan[j] += c[j] * 0.0;
        }
    }
    for (j, &v) in chunks.remainder().iter().enumerate() {
        m[j] = m[j].max(v.abs());
        nan[j] += v * 0.0;
    }
    let absmax = m.iter().fold(0f32, |a, &b| a.max(b));
    if nan.iter().sum::<f32>() != 0.0 || !absmax.is_finite() {
        return None;
    }
    let inv = if absmax != 0.0 { 1.0 / absmax } else { 0.0 };
    let len = block.len();
    match qt {
        QuantType::Nf4 => {
            for (c, &v) in codes.iter_mut().zip(block) {
                *c = encode(v * inv, QuantType::Nf4);
            }
        }
        QuantType::Fp4 => {
            for (c, &v) in codes.iter_mut().zip(block) {
                *c = encode(v * inv, QuantType::Fp4);
            }
        }
    }
    // An odd block (only the last one) pairs its last element with a 0.0.
    let padded = len + len % 2;
    codes[len..padded].fill(encode(0.0, qt));
    pack_ordered(&codes[..padded], 4, Order::HighFirst, out);
    Some(absmax)
}

/// Blocks per parallel task of the flat driver.
const TASK_ELEMS: usize = 1 << 16;

/// Quantizes a row-major [N, K] weight (flattened order).
pub fn quantize_nk(
    w: &[f32],
    n: usize,
    k: usize,
    block_size: usize,
    qt: QuantType,
) -> Result<Bnb4, QuantError> {
    check(w.len(), n, k, block_size, "[N, K]")?;
    let mut packed = vec![0u8; w.len().div_ceil(2)];
    let mut absmax = vec![0f32; w.len().div_ceil(block_size)];
    if w.is_empty() {
        return Ok(Bnb4 { packed, absmax });
    }
    let per_task = (TASK_ELEMS / block_size).max(1);
    let bad = AtomicBool::new(false);
    packed
        .par_chunks_mut(per_task * block_size / 2)
        .zip(absmax.par_chunks_mut(per_task))
        .enumerate()
        .for_each(|(t, (out, amax))| {
            let mut codes = vec![0u8; block_size + 1];
            let src = &w[t * per_task * block_size..];
            for (i, a) in amax.iter_mut().enumerate() {
                let block = &src[i * block_size..][..block_size.min(src.len() - i * block_size)];
                let o = &mut out[i * block_size / 2..][..block.len().div_ceil(2)];
                match quantize_block(block, qt, &mut codes, o) {
                    Some(m) => *a = m,
                    None => bad.store(true, Ordering::Relaxed),
                }
            }
        });
    if bad.load(Ordering::Relaxed) {
        return Err(non_finite(w));
    }
    Ok(Bnb4 { packed, absmax })
}

/// Quantizes the ONNX MatMul weight [K, N] as MatMulBnb4 wants it: the [N, K]
/// transpose, flattened. Works on slabs of whole rows of [N, K] that hold whole
/// blocks, transposed into a buffer one slab at a time.
pub fn quantize_kn(
    w: &[f32],
    k: usize,
    n: usize,
    block_size: usize,
    qt: QuantType,
) -> Result<Bnb4, QuantError> {
    check(w.len(), k, n, block_size, "[K, N]")?;
    let total = w.len();
    let mut packed = vec![0u8; total.div_ceil(2)];
    let mut absmax = vec![0f32; total.div_ceil(block_size)];
    if total == 0 {
        return Ok(Bnb4 { packed, absmax });
    }
    // Rows per slab: a multiple of block_size / gcd(K, block_size), so a slab of
    // rows·K elements is whole blocks (block_size is a power of two).
    let base = block_size >> k.trailing_zeros().min(block_size.trailing_zeros());
    let slab = base * 16usize.div_ceil(base);
    let slab_elems = slab * k;
    let bad = AtomicBool::new(false);
    packed
        .par_chunks_mut(slab_elems / 2)
        .zip(absmax.par_chunks_mut(slab_elems / block_size))
        .enumerate()
        .for_each(|(t, (out, amax))| {
            let n0 = t * slab;
            let rows = slab.min(n - n0);
            let mut buf = vec![0f32; rows * k];
            gather_columns(w, n, n0, rows, 0, k, &mut buf, k);
            let mut codes = vec![0u8; block_size + 1];
            for (i, a) in amax.iter_mut().enumerate() {
                let block = &buf[i * block_size..][..block_size.min(buf.len() - i * block_size)];
                let o = &mut out[i * block_size / 2..][..block.len().div_ceil(2)];
                match quantize_block(block, qt, &mut codes, o) {
                    Some(m) => *a = m,
                    None => bad.store(true, Ordering::Relaxed),
                }
            }
        });
    if bad.load(Ordering::Relaxed) {
        return Err(non_finite(w));
    }
    Ok(Bnb4 { packed, absmax })
}

/// Same as [`quantize_kn`] (the name MatMul-weight callers look for).
pub fn quantize(
    w_kn: &[f32],
    k: usize,
    n: usize,
    block_size: usize,
    qt: QuantType,
) -> Result<Bnb4, QuantError> {
    quantize_kn(w_kn, k, n, block_size, qt)
}

fn non_finite(w: &[f32]) -> QuantError {
    let i = w.iter().position(|v| !v.is_finite()).unwrap_or(0);
    QuantError(format!(
        "non-finite weight value {} at element {i}",
        w.get(i).copied().unwrap_or(f32::NAN)
    ))
}

/// Back to f32 in the flattened [N, K] order.
pub fn dequantize_nk(
    q: &Bnb4,
    n: usize,
    k: usize,
    block_size: usize,
    qt: QuantType,
) -> Result<Vec<f32>, QuantError> {
    let misfit = || {
        QuantError(format!(
            "bnb4 data ({} bytes, {} absmax) does not fit {n}x{k} with block size {block_size}",
            q.packed.len(),
            q.absmax.len()
        ))
    };
    // n and k may come from a model's attributes: an overflowing product is a misfit.
    let count = n.checked_mul(k).ok_or_else(misfit)?;
    if q.packed.len() != count.div_ceil(2)
        || block_size == 0
        || q.absmax.len() != count.div_ceil(block_size)
    {
        return Err(misfit());
    }
    let t = table(qt);
    let mut codes = vec![0u8; count];
    unpack_ordered(&q.packed, 4, Order::HighFirst, &mut codes);
    debug_assert_eq!(packed_len(count, 4), q.packed.len());
    let mut out = vec![0f32; count];
    out.par_chunks_mut(block_size)
        .zip(codes.par_chunks(block_size))
        .zip(q.absmax.par_iter())
        .for_each(|((o, c), &m)| {
            for (o, &c) in o.iter_mut().zip(c) {
                *o = t[c as usize] * m;
            }
        });
    Ok(out)
}

/// Back to f32 in MatMul layout [K, N].
pub fn dequantize_kn(
    q: &Bnb4,
    k: usize,
    n: usize,
    block_size: usize,
    qt: QuantType,
) -> Result<Vec<f32>, QuantError> {
    Ok(super::transpose(
        &dequantize_nk(q, n, k, block_size, qt)?,
        n,
        k,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_midpoints_of_the_code_books() {
        for i in 0..15 {
            let mid = (NF4[i] + NF4[i + 1]) / 2.0;
            assert!((NF4_UP[i] - mid).abs() < 1e-6, "nf4 {i}");
        }
        let mut mags: Vec<f32> = FP4[..8].to_vec();
        mags.sort_by(f32::total_cmp);
        assert_eq!(FP4[fp4_rank_code(7) as usize], mags[7]);
        for i in 0..7 {
            let mid = (mags[i] + mags[i + 1]) / 2.0;
            assert!((FP4_UP[i] - mid).abs() < 1e-6, "fp4 {i}");
            assert_eq!(FP4[fp4_rank_code(i as u8) as usize], mags[i]);
        }
    }

    #[test]
    fn every_code_book_value_encodes_to_itself() {
        for qt in [QuantType::Nf4, QuantType::Fp4] {
            for (c, &v) in table(qt).iter().enumerate() {
                let got = encode(v, qt);
                assert_eq!(table(qt)[got as usize], v, "{qt:?} code {c}");
            }
        }
        assert_eq!(encode(0.0, QuantType::Nf4), 7);
        assert_eq!(encode(-1e-9, QuantType::Fp4), 8);
    }

    fn weights(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 2654435761usize % 1000) as f32 / 500.0 - 1.0) * (1 + i % 3) as f32)
            .collect()
    }

    #[test]
    fn error_is_bounded_by_half_the_largest_gap() {
        let (n, k) = (6, 96);
        let w = weights(n * k);
        for (qt, gap) in [(QuantType::Nf4, 0.3039), (QuantType::Fp4, 0.3334)] {
            let q = quantize_nk(&w, n, k, 64, qt).unwrap();
            let d = dequantize_nk(&q, n, k, 64, qt).unwrap();
            for (i, (a, b)) in w.iter().zip(&d).enumerate() {
                let m = q.absmax[i / 64];
                assert!((a - b).abs() <= gap / 2.0 * m + 1e-6, "{qt:?} {i}: {a} {b}");
            }
        }
    }

    #[test]
    fn kn_entry_matches_transposed_nk_with_blocks_crossing_rows() {
        // K = 40 with block 32: blocks span rows of [N, K]; odd N·K pads a nibble.
        for &(k, n, bs) in &[(40usize, 7usize, 32usize), (64, 5, 16), (33, 9, 64)] {
            let w = weights(k * n);
            for qt in [QuantType::Nf4, QuantType::Fp4] {
                let a = quantize_kn(&w, k, n, bs, qt).unwrap();
                let nk = crate::quant::transpose(&w, k, n);
                let b = quantize_nk(&nk, n, k, bs, qt).unwrap();
                assert_eq!(a, b, "{k}x{n} bs {bs} {qt:?}");
            }
        }
        let q = quantize_nk(&[0.5; 33], 3, 11, 16, QuantType::Nf4).unwrap();
        assert_eq!(q.packed[16] & 0x0F, 7);
    }

    #[test]
    fn results_do_not_depend_on_thread_count() {
        let (k, n) = (256, 300);
        let w = weights(k * n);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        for qt in [QuantType::Nf4, QuantType::Fp4] {
            let a = one.install(|| quantize_kn(&w, k, n, 64, qt).unwrap());
            assert_eq!(a, quantize_kn(&w, k, n, 64, qt).unwrap());
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert!(quantize_nk(&[0.0; 10], 2, 4, 64, QuantType::Nf4).is_err());
        assert!(quantize_nk(&[0.0; 8], 2, 4, 24, QuantType::Nf4).is_err());
        let mut w = vec![0.0f32; 64];
        w[9] = f32::NAN;
        assert!(quantize_kn(&w, 8, 8, 16, QuantType::Fp4).is_err());
    }
}
