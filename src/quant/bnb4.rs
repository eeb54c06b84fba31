//! bitsandbytes 4-bit code books (NF4, FP4), block-wise absmax over a flattened
//! [N, K] weight, as com.microsoft MatMulBnb4 reads it: the first element of a
//! pair in the HIGH nibble.
use rayon::prelude::*;

use super::QuantError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantType {
    Fp4,
    Nf4,
}

/// NF4 values (QLoRA), ascending by code.
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_1,
    -0.394_917_5,
    -0.284_441_4,
    -0.184_773_4,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// FP4 (bitsandbytes: sign bit 3, exponent bias 3), normalised to a max of 1.
pub const FP4: [f32; 16] = [
    0.0,
    0.005_208_333,
    0.666_666_7,
    1.0,
    0.333_333_34,
    0.5,
    0.166_666_67,
    0.25,
    -0.0,
    -0.005_208_333,
    -0.666_666_7,
    -1.0,
    -0.333_333_34,
    -0.5,
    -0.166_666_67,
    -0.25,
];

pub fn table(qt: QuantType) -> &'static [f32; 16] {
    match qt {
        QuantType::Nf4 => &NF4,
        QuantType::Fp4 => &FP4,
    }
}

/// The code whose value is nearest to `x` (x already divided by absmax).
#[inline]
pub fn nearest(x: f32, qt: QuantType) -> u8 {
    match qt {
        QuantType::Nf4 => {
            // Midpoints of the ascending table.
            let mut code = 0u8;
            for i in 0..15 {
                if x > (NF4[i] + NF4[i + 1]) * 0.5 {
                    code = i as u8 + 1;
                }
            }
            code
        }
        QuantType::Fp4 => {
            let sign = if x < 0.0 { 8u8 } else { 0 };
            let a = x.abs();
            let mut best = 0u8;
            let mut best_d = f32::INFINITY;
            for c in 0..8u8 {
                let d = (FP4[c as usize] - a).abs();
                if d < best_d {
                    best_d = d;
                    best = c;
                }
            }
            best | sign
        }
    }
}

pub struct Bnb4Weight {
    /// [(N·K + 1) / 2], first element of a pair in the high nibble.
    pub packed: Vec<u8>,
    /// [ceil(N·K / block_size)].
    pub absmax: Vec<f32>,
}

/// Quantizes a row-major [N, K] weight flattened, in blocks of `block_size`.
pub fn quantize_nk(
    w: &[f32],
    n: usize,
    k: usize,
    block_size: usize,
    qt: QuantType,
) -> Result<Bnb4Weight, QuantError> {
    if w.len() != n * k {
        return Err(QuantError(format!(
            "weight has {} values, expected {n}x{k}",
            w.len()
        )));
    }
    if block_size < 16 || !block_size.is_power_of_two() {
        return Err(QuantError(format!(
            "block size {block_size} must be a power of two >= 16"
        )));
    }
    let blocks = w.len().div_ceil(block_size);
    let mut absmax = vec![0f32; blocks];
    let mut packed = vec![0u8; w.len().div_ceil(2)];
    // block_size is even, so each block owns whole bytes.
    packed
        .par_chunks_mut(block_size / 2)
        .zip(absmax.par_iter_mut())
        .enumerate()
        .for_each(|(b, (out, amax))| {
            let block = &w[b * block_size..((b + 1) * block_size).min(w.len())];
            let m = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            *amax = m;
            let inv = if m == 0.0 { 0.0 } else { 1.0 / m };
            for (i, pair) in block.chunks(2).enumerate() {
                let hi = nearest(pair[0] * inv, qt);
                let lo = pair.get(1).map_or(0, |v| nearest(v * inv, qt));
                out[i] = hi << 4 | lo;
            }
        });
    Ok(Bnb4Weight { packed, absmax })
}

/// Back to f32 [N, K].
pub fn dequantize_nk(
    q: &Bnb4Weight,
    n: usize,
    k: usize,
    block_size: usize,
    qt: QuantType,
) -> Vec<f32> {
    let t = table(qt);
    (0..n * k)
        .map(|i| {
            let byte = q.packed[i / 2];
            let code = if i % 2 == 0 { byte >> 4 } else { byte & 0x0F };
            t[code as usize] * q.absmax[i / block_size]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_codes_hit_table_values() {
        for qt in [QuantType::Nf4, QuantType::Fp4] {
            for (c, &v) in table(qt).iter().enumerate() {
                let got = nearest(v, qt);
                assert_eq!(table(qt)[got as usize], v, "{qt:?} code {c}");
            }
        }
    }

    #[test]
    fn dequantized_error_is_bounded_by_largest_gap() {
        let w: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let q = quantize_nk(&w, 4, 64, 64, QuantType::Nf4).unwrap();
        let d = dequantize_nk(&q, 4, 64, 64, QuantType::Nf4);
        for (a, b) in w.iter().zip(&d) {
            assert!((a - b).abs() <= 0.16 * 1.0 + 1e-6);
        }
    }
}
