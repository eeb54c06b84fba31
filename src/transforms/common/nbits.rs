//! The bridge between graph tensors and the numeric kernels of `crate::quant`:
//! reads a weight as f32 (releasing mapped pages after), quantizes it, and builds
//! the tensors each output format stores.
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ir::{float_bytes, scale_dtype, DType, Storage, Tensor};
use crate::quant;

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// com.microsoft MatMulNBits (ONNX Runtime's fused dequantize + MatMul).
    #[default]
    Matmulnbits,
    /// Standard ONNX DequantizeLinear (blocked, opset 21) followed by MatMul.
    Qdq,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Round to nearest, per block.
    #[default]
    Rtn,
    /// Half-quadratic quantization (calibration-free), integer zero points.
    Hqq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Params {
    pub bits: u8,
    pub block_size: usize,
    pub symmetric: bool,
    pub algorithm: Algorithm,
}

/// The tensors one quantized weight is stored as.
pub struct WeightTensors {
    pub data: Tensor,
    pub scales: Tensor,
    pub zero_points: Option<Tensor>,
}

/// A quantized [K, N] weight.
pub struct NbitsWeight {
    pub params: Params,
    pub k: usize,
    pub n: usize,
    /// Float type of the original weight (and of the scales).
    pub dtype: DType,
    pub q: quant::nbits::BlockQuant,
    pub original_bytes: usize,
}

/// Reads a float tensor as f32; for mapped external data, drops the pages after.
pub fn read_f32(t: &Tensor) -> Result<Vec<f32>> {
    let v = t.to_f32()?;
    release_mapped(t);
    Ok(v)
}

/// Drops the resident pages of a tensor read through a file map: external data, or
/// a spilled tensor (a rescaled weight read again by the next pass).
fn release_mapped(t: &Tensor) {
    match &t.storage {
        Storage::External { bytes, .. } => crate::io::release_pages(bytes),
        Storage::Raw(b) if crate::io::spill::is_spilled(b) => crate::io::release_pages(b),
        _ => {}
    }
}

/// Calls `f` on the tensor's values as f32. An aligned little-endian f32 payload is
/// borrowed in place (no copy of a multi-hundred-MB weight); anything else is
/// converted. Mapped external pages are dropped afterwards.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let r = match (&t.storage, t.dtype()) {
        (Storage::Raw(b) | Storage::External { bytes: b, .. }, DType::F32)
            if cfg!(target_endian = "little") && (b.as_ptr() as usize).is_multiple_of(4) =>
        {
            // Checks the length against dtype and dims.
            t.raw_bytes()?;
            // SAFETY: 4-byte aligned, length checked to be numel * 4, every bit
            // pattern is a valid f32, and the bytes outlive the borrow.
            let w = unsafe { std::slice::from_raw_parts(b.as_ptr() as *const f32, b.len() / 4) };
            f(w)
        }
        _ => f(&t.to_f32()?),
    };
    release_mapped(t);
    Ok(r)
}

/// Weights larger than this are read and quantized a slice of stored rows at a time,
/// each slice's mapped pages dropped once it is quantized: memory follows the slice,
/// not the weight (a 32000 × 2048 float32 lm_head is 262 MB).
pub const SLICE_BYTES: usize = 16 << 20;

/// Quantizes a weight tensor stored [K, N] (or [N, K] when `transposed`).
pub fn quantize_weight(t: &Tensor, transposed: bool, p: &Params) -> Result<NbitsWeight> {
    quantize_weight_sliced(t, transposed, p, SLICE_BYTES)
}

/// [`quantize_weight`] with slices of about `slice_bytes` (same result for any size:
/// blocks never straddle a slice).
pub fn quantize_weight_sliced(
    t: &Tensor,
    transposed: bool,
    p: &Params,
    slice_bytes: usize,
) -> Result<NbitsWeight> {
    let (r, c) = (t.dims[0] as usize, t.dims[1] as usize);
    let (k, n) = if transposed { (c, r) } else { (r, c) };
    let elem = match t.dtype() {
        DType::F32 => 4,
        DType::F16 | DType::BF16 => 2,
        _ => 0,
    };
    let sliceable = elem > 0
        && matches!(t.storage, Storage::Raw(_) | Storage::External { .. })
        && t.stored_len() > slice_bytes;
    let q = if sliceable {
        t.raw_bytes()?; // checks the length against dtype and dims
                        // Stored rows per slice: whole rows of N when transposed; whole groups of 8
                        // blocks along K otherwise (so packed zero points stay byte-aligned).
        let unit = if transposed { 1 } else { 8 * p.block_size };
        let step = (slice_bytes / (c * elem)).max(1).div_ceil(unit) * unit;
        let mut out: Option<quant::nbits::BlockQuant> = None;
        for r0 in (0..r).step_by(step) {
            let r1 = (r0 + step).min(r);
            let part = with_f32_rows(t, r0, r1, |w| {
                if transposed {
                    quantize_block(w, k, r1 - r0, transposed, p, t.dtype())
                } else {
                    quantize_block(w, r1 - r0, n, transposed, p, t.dtype())
                }
            })?
            .map_err(|e| Error::tensor(t.name(), e.to_string()))?;
            let o = out.get_or_insert_with(|| empty_like(&part, n, k));
            if transposed {
                place_rows(o, &part, r0);
            } else {
                place_blocks(o, &part, r0 / p.block_size);
            }
        }
        out.expect("a non-empty weight")
    } else {
        with_f32(t, |w| quantize_block(w, k, n, transposed, p, t.dtype()))?
            .map_err(|e| Error::tensor(t.name(), e.to_string()))?
    };
    Ok(NbitsWeight {
        params: *p,
        k,
        n,
        dtype: t.dtype(),
        q,
        original_bytes: t.stored_len(),
    })
}

/// Quantizes the [k, n] weight `w` ([n, k] when `transposed`).
fn quantize_block(
    w: &[f32],
    k: usize,
    n: usize,
    transposed: bool,
    p: &Params,
    dtype: DType,
) -> std::result::Result<quant::nbits::BlockQuant, quant::QuantError> {
    let qp = quant::nbits::QuantParams {
        bits: p.bits,
        block_size: p.block_size,
        symmetric: p.symmetric,
    };
    // f16/bf16 weights: scales are rounded to the weight's type before encoding,
    // as onnxruntime does, so codes match the stored scales exactly.
    let ft = quant::convert::FloatType::from_dtype(dtype).unwrap_or_default();
    let hqq = quant::hqq::HqqParams::default();
    match (p.algorithm, transposed) {
        (Algorithm::Rtn, false) => quant::nbits::quantize_kn_as(w, k, n, &qp, ft),
        (Algorithm::Rtn, true) => quant::nbits::quantize_rows_as(w, n, k, &qp, ft),
        (Algorithm::Hqq, false) => quant::hqq::quantize_kn_as(w, k, n, &qp, &hqq, ft),
        (Algorithm::Hqq, true) => quant::hqq::quantize_rows_as(w, n, k, &qp, &hqq, ft),
    }
}

/// Calls `f` on stored rows `r0..r1` of a float tensor (raw or external) as f32,
/// borrowed when aligned little-endian f32; the rows' mapped pages are dropped after.
fn with_f32_rows<R>(t: &Tensor, r0: usize, r1: usize, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (Storage::Raw(b) | Storage::External { bytes: b, .. }) = &t.storage else {
        return Err(Error::tensor(t.name(), "typed fields are not sliced"));
    };
    let c = t.dims[1] as usize;
    let elem = if t.dtype() == DType::F32 { 4 } else { 2 };
    let bytes = &b[r0 * c * elem..r1 * c * elem];
    let r = match t.dtype() {
        DType::F32
            if cfg!(target_endian = "little") && (bytes.as_ptr() as usize).is_multiple_of(4) =>
        {
            // SAFETY: 4-byte aligned, a whole number of f32 inside the checked
            // payload, every bit pattern is a valid f32.
            f(
                unsafe {
                    std::slice::from_raw_parts(bytes.as_ptr() as *const f32, bytes.len() / 4)
                },
            )
        }
        DType::F32 => f(&bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect::<Vec<_>>()),
        DType::F16 => f(&bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect::<Vec<_>>()),
        _ => f(&bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect::<Vec<_>>()),
    };
    let mapped = match &t.storage {
        Storage::External { .. } => true,
        Storage::Raw(b) => crate::io::spill::is_spilled(b),
        _ => false,
    };
    if mapped {
        crate::io::release_pages(bytes);
    }
    Ok(r)
}

/// An all-zero [n, k] quantization shaped like `part`'s settings.
fn empty_like(part: &quant::nbits::BlockQuant, n: usize, k: usize) -> quant::nbits::BlockQuant {
    let p = part.params;
    quant::nbits::BlockQuant {
        params: p,
        rows: n,
        cols: k,
        scale_type: part.scale_type,
        packed: vec![0; n * p.k_blocks(k) * p.blob_size()],
        scales: vec![0.0; n * p.k_blocks(k)],
        zero_points: part
            .zero_points
            .as_ref()
            .map(|_| vec![0; n * p.zp_row_bytes(k)]),
    }
}

/// Copies `part` (whole rows) into `out` from row `r0`.
fn place_rows(out: &mut quant::nbits::BlockQuant, part: &quant::nbits::BlockQuant, r0: usize) {
    let (kb, blob, zb) = (out.k_blocks(), out.params.blob_size(), out.zp_row_bytes());
    let at = |v: usize| r0 * v..r0 * v + part.rows * v;
    out.packed[at(kb * blob)].copy_from_slice(&part.packed);
    out.scales[at(kb)].copy_from_slice(&part.scales);
    if let (Some(o), Some(z)) = (out.zero_points.as_mut(), part.zero_points.as_ref()) {
        o[at(zb)].copy_from_slice(z);
    }
}

/// Copies `part` (every row, blocks `b0..` along K; `b0` a multiple of 8) into `out`.
fn place_blocks(out: &mut quant::nbits::BlockQuant, part: &quant::nbits::BlockQuant, b0: usize) {
    let (kb, blob, zb) = (out.k_blocks(), out.params.blob_size(), out.zp_row_bytes());
    let (pkb, pzb) = (part.k_blocks(), part.zp_row_bytes());
    let z0 = b0 * out.params.bits as usize / 8;
    for i in 0..out.rows {
        out.packed[(i * kb + b0) * blob..][..pkb * blob]
            .copy_from_slice(&part.packed[i * pkb * blob..][..pkb * blob]);
        out.scales[i * kb + b0..][..pkb].copy_from_slice(&part.scales[i * pkb..][..pkb]);
        if let (Some(o), Some(z)) = (out.zero_points.as_mut(), part.zero_points.as_ref()) {
            o[i * zb + z0..][..pzb].copy_from_slice(&z[i * pzb..][..pzb]);
        }
    }
}

/// A new tensor owning `raw`; large payloads are spilled (see `crate::io::spill`)
/// so quantized weights waiting for the save do not stay resident.
pub fn new_tensor(name: &str, dtype: DType, dims: Vec<i64>, raw: Vec<u8>) -> Tensor {
    Tensor::from_raw(name, dtype, dims, crate::io::spill::bytes(raw))
}

/// A quantized weight in its stored form: the tensors of one output format, built
/// (and spilled) as soon as the weight is quantized.
pub struct ReadyWeight {
    pub params: Params,
    pub original_bytes: usize,
    pub stored_bytes: usize,
    pub tensors: WeightTensors,
}

impl NbitsWeight {
    pub fn k_blocks(&self) -> usize {
        self.k.div_ceil(self.params.block_size)
    }

    pub fn stored_bytes(&self) -> usize {
        let scale_bytes = self.q.scales.len() * self.dtype.bits().max(16) / 8;
        self.q.packed.len() + scale_bytes + self.q.zero_points.as_ref().map_or(0, Vec::len)
    }

    /// MatMulNBits inputs: B uint8 [N, k_blocks, blob], scales [N, k_blocks] and
    /// packed uint8 zero points [N, ceil(k_blocks·bits/8)]. Consumes the weight so the
    /// packed bytes move into the tensors instead of being copied.
    pub fn into_matmulnbits_tensors(self) -> WeightTensors {
        let (n, kb) = (self.n as i64, self.k_blocks() as i64);
        let blob = (self.params.block_size * self.params.bits as usize / 8) as i64;
        let per_row = self
            .q
            .zero_points
            .as_ref()
            .map(|z| (z.len() / self.n.max(1)) as i64);
        let scales = float_bytes(self.dtype, &self.q.scales);
        WeightTensors {
            data: new_tensor("B", DType::U8, vec![n, kb, blob], self.q.packed),
            scales: new_tensor("scales", scale_dtype(self.dtype), vec![n, kb], scales),
            zero_points: self
                .q
                .zero_points
                .map(|z| new_tensor("zero_points", DType::U8, vec![n, per_row.unwrap_or(0)], z)),
        }
    }

    /// DequantizeLinear (opset 21, axis 0, blocked) inputs for the [K, N] weight.
    pub fn into_qdq_tensors(self) -> WeightTensors {
        let (k, n, kb) = (self.k as i64, self.n as i64, self.k_blocks() as i64);
        let d = self.q.to_qdq();
        drop(self.q);
        let dtype = d.dtype;
        let scales = float_bytes(self.dtype, &d.scales);
        WeightTensors {
            data: new_tensor("x", dtype, vec![k, n], d.data),
            scales: new_tensor("scale", scale_dtype(self.dtype), vec![kb, n], scales),
            zero_points: d
                .zero_points
                .map(|z| new_tensor("zp", dtype, vec![kb, n], z)),
        }
    }

    /// The stored tensors of `format`, built now (large ones spilled).
    pub fn into_ready(self, format: Format) -> ReadyWeight {
        let (params, original_bytes, stored_bytes) =
            (self.params, self.original_bytes, self.stored_bytes());
        let tensors = match format {
            Format::Matmulnbits => self.into_matmulnbits_tensors(),
            Format::Qdq => self.into_qdq_tensors(),
        };
        ReadyWeight {
            params,
            original_bytes,
            stored_bytes,
            tensors,
        }
    }
}

/// A progress bar on a terminal, hidden otherwise.
pub fn progress_bar(enabled: bool, total: u64, msg: &'static str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() || total == 0 {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_message(msg);
    pb
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::float_tensor;

    fn weight(rows: usize, cols: usize, dtype: DType) -> Tensor {
        let mut s = 12345u32;
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                let u = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                if i % 37 == 0 {
                    u * 9.0
                } else {
                    u
                }
            })
            .collect();
        float_tensor("w", dtype, vec![rows as i64, cols as i64], &v)
    }

    #[test]
    fn slicing_a_weight_changes_nothing() {
        // K = 600 is not a multiple of the block (padded last block, odd block
        // counts); slices of a few rows force many parts.
        for dtype in [DType::F32, DType::F16] {
            for transposed in [false, true] {
                let t = if transposed {
                    weight(70, 600, dtype)
                } else {
                    weight(600, 70, dtype)
                };
                for (bits, block, symmetric, algorithm) in [
                    (4, 32, true, Algorithm::Rtn),
                    (4, 16, false, Algorithm::Rtn),
                    (2, 16, false, Algorithm::Rtn),
                    (8, 64, true, Algorithm::Rtn),
                    (4, 32, false, Algorithm::Hqq),
                ] {
                    let p = Params {
                        bits,
                        block_size: block,
                        symmetric,
                        algorithm,
                    };
                    let whole = quantize_weight_sliced(&t, transposed, &p, usize::MAX).unwrap();
                    for slice in [1, 3000, 40_000] {
                        let sliced = quantize_weight_sliced(&t, transposed, &p, slice).unwrap();
                        let what = format!("{dtype:?} transposed={transposed} {p:?} slice {slice}");
                        assert_eq!(sliced.q.packed, whole.q.packed, "{what}");
                        assert_eq!(sliced.q.scales, whole.q.scales, "{what}");
                        assert_eq!(sliced.q.zero_points, whole.q.zero_points, "{what}");
                        assert_eq!(sliced.q.params, whole.q.params, "{what}");
                        assert_eq!(sliced.q.scale_type, whole.q.scale_type, "{what}");
                        assert_eq!((sliced.q.rows, sliced.q.cols), (70, 600), "{what}");
                    }
                }
            }
        }
    }
}
