//! f16 / bf16 ↔ f32 slice conversion, and the float type scales are stored in.
//!
//! Weights arrive as little-endian bytes that need not be aligned, so the byte
//! entry points decode through a small aligned buffer; `half`'s slice conversions
//! use F16C when the CPU has it. Large inputs are split over rayon threads; every
//! element is converted independently, so results do not depend on the split.
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use super::QuantError;
use crate::ir::DType;

/// Elements per parallel task and per stack buffer.
const CHUNK: usize = 1 << 14;

/// The float type a weight (and so its scales) is stored in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FloatType {
    #[default]
    F32,
    F16,
    BF16,
}

impl FloatType {
    /// The float type of an ONNX dtype, if it is one we quantize.
    pub fn from_dtype(d: DType) -> Option<FloatType> {
        match d {
            DType::F32 => Some(FloatType::F32),
            DType::F16 => Some(FloatType::F16),
            DType::BF16 => Some(FloatType::BF16),
            _ => None,
        }
    }

    pub fn dtype(self) -> DType {
        match self {
            FloatType::F32 => DType::F32,
            FloatType::F16 => DType::F16,
            FloatType::BF16 => DType::BF16,
        }
    }

    pub fn byte_size(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::BF16 => 2,
        }
    }

    /// `v` rounded to this type (round to nearest even) and widened back.
    #[inline(always)]
    pub fn round(self, v: f32) -> f32 {
        match self {
            FloatType::F32 => v,
            FloatType::F16 => f16::from_f32(v).to_f32(),
            FloatType::BF16 => bf16::from_f32(v).to_f32(),
        }
    }

    /// Little-endian bytes of `values` in this type.
    pub fn to_le_bytes(self, values: &[f32]) -> Vec<u8> {
        match self {
            FloatType::F32 => f32_to_le_bytes(values),
            FloatType::F16 => f32_to_f16_le_bytes(values),
            FloatType::BF16 => f32_to_bf16_le_bytes(values),
        }
    }

    /// f32 values of little-endian bytes in this type.
    pub fn from_le_bytes(self, bytes: &[u8]) -> Result<Vec<f32>, QuantError> {
        match self {
            FloatType::F32 => f32_from_le_bytes(bytes),
            FloatType::F16 => f16_le_bytes_to_f32(bytes),
            FloatType::BF16 => bf16_le_bytes_to_f32(bytes),
        }
    }
}

fn check_len(bytes: &[u8], size: usize, what: &str) -> Result<usize, QuantError> {
    if !bytes.len().is_multiple_of(size) {
        return Err(QuantError(format!(
            "{what} data has {} bytes, not a multiple of {size}",
            bytes.len()
        )));
    }
    Ok(bytes.len() / size)
}

pub fn f32_from_le_bytes(bytes: &[u8]) -> Result<Vec<f32>, QuantError> {
    let n = check_len(bytes, 4, "float")?;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(CHUNK * 4))
        .for_each(|(o, b)| {
            for (v, c) in o.iter_mut().zip(b.chunks_exact(4)) {
                *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        });
    Ok(out)
}

pub fn f32_to_le_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; values.len() * 4];
    out.par_chunks_mut(CHUNK * 4)
        .zip(values.par_chunks(CHUNK))
        .for_each(|(o, v)| {
            for (c, x) in o.chunks_exact_mut(4).zip(v) {
                c.copy_from_slice(&x.to_le_bytes());
            }
        });
    out
}

/// f16 values to f32.
pub fn f16_to_f32(src: &[f16]) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    out.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(o, s)| s.convert_to_f32_slice(o));
    out
}

/// f32 values to f16 (round to nearest even; overflow becomes infinity).
pub fn f32_to_f16(src: &[f32]) -> Vec<f16> {
    let mut out = vec![f16::ZERO; src.len()];
    out.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(o, s)| o.convert_from_f32_slice(s));
    out
}

/// Little-endian f16 bytes (any alignment) to f32.
pub fn f16_le_bytes_to_f32(bytes: &[u8]) -> Result<Vec<f32>, QuantError> {
    let n = check_len(bytes, 2, "float16")?;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(CHUNK * 2))
        .for_each(|(o, b)| {
            let mut buf = [f16::ZERO; CHUNK];
            let buf = &mut buf[..o.len()];
            for (h, c) in buf.iter_mut().zip(b.chunks_exact(2)) {
                *h = f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
            }
            buf.convert_to_f32_slice(o);
        });
    Ok(out)
}

/// f32 to little-endian f16 bytes.
pub fn f32_to_f16_le_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; values.len() * 2];
    out.par_chunks_mut(CHUNK * 2)
        .zip(values.par_chunks(CHUNK))
        .for_each(|(o, v)| {
            let mut buf = [f16::ZERO; CHUNK];
            let buf = &mut buf[..v.len()];
            buf.convert_from_f32_slice(v);
            for (c, h) in o.chunks_exact_mut(2).zip(buf.iter()) {
                c.copy_from_slice(&h.to_bits().to_le_bytes());
            }
        });
    out
}

/// Little-endian bf16 bytes (any alignment) to f32 (exact: bf16 is the top half of
/// an f32).
pub fn bf16_le_bytes_to_f32(bytes: &[u8]) -> Result<Vec<f32>, QuantError> {
    let n = check_len(bytes, 2, "bfloat16")?;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(CHUNK * 2))
        .for_each(|(o, b)| {
            for (v, c) in o.iter_mut().zip(b.chunks_exact(2)) {
                *v = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        });
    Ok(out)
}

/// f32 to little-endian bf16 bytes (round to nearest even, NaN stays NaN).
pub fn f32_to_bf16_le_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; values.len() * 2];
    out.par_chunks_mut(CHUNK * 2)
        .zip(values.par_chunks(CHUNK))
        .for_each(|(o, v)| {
            for (c, x) in o.chunks_exact_mut(2).zip(v) {
                c.copy_from_slice(&bf16::from_f32(*x).to_bits().to_le_bytes());
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<f32> {
        let mut v: Vec<f32> = (0..40_000)
            .map(|i| ((i as f32) * 0.377).sin() * 10f32.powi(i % 7 - 3))
            .collect();
        v.extend([0.0, -0.0, 65504.0, 1e-8, -3.5, f32::INFINITY]);
        v
    }

    #[test]
    fn f16_bytes_roundtrip_matches_scalar_conversion() {
        let v = samples();
        let bytes = f32_to_f16_le_bytes(&v);
        let back = f16_le_bytes_to_f32(&bytes).unwrap();
        for (a, b) in v.iter().zip(&back) {
            let expect = f16::from_f32(*a).to_f32();
            assert_eq!(expect.to_bits(), b.to_bits(), "{a}");
            assert_eq!(FloatType::F16.round(*a).to_bits(), b.to_bits());
        }
        // Unaligned input decodes the same.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        assert_eq!(f16_le_bytes_to_f32(&shifted[1..]).unwrap(), back);
        let typed = f32_to_f16(&v);
        assert_eq!(f16_to_f32(&typed), back);
    }

    #[test]
    fn bf16_bytes_roundtrip_matches_scalar_conversion() {
        let v = samples();
        let back = bf16_le_bytes_to_f32(&f32_to_bf16_le_bytes(&v)).unwrap();
        for (a, b) in v.iter().zip(&back) {
            assert_eq!(bf16::from_f32(*a).to_f32().to_bits(), b.to_bits());
        }
    }

    #[test]
    fn odd_byte_counts_are_errors() {
        assert!(f16_le_bytes_to_f32(&[0, 1, 2]).is_err());
        assert!(bf16_le_bytes_to_f32(&[0]).is_err());
        assert!(f32_from_le_bytes(&[0, 0, 0]).is_err());
    }
}
