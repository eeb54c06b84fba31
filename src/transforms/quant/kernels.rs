//! The bridge between graph tensors and the numeric kernels of `crate::quant`:
//! reads a weight as f32 (releasing mapped pages after), quantizes it, and builds
//! the tensors each output format stores.
use bytes::Bytes;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ir::{DType, Storage, Tensor};
use crate::quant;

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
    if let Storage::External { bytes, .. } = &t.storage {
        crate::io::release_pages(bytes);
    }
    Ok(v)
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
    if let Storage::External { bytes, .. } = &t.storage {
        crate::io::release_pages(bytes);
    }
    Ok(r)
}

/// Quantizes a weight tensor stored [K, N] (or [N, K] when `transposed`).
pub fn quantize_weight(t: &Tensor, transposed: bool, p: &Params) -> Result<NbitsWeight> {
    with_f32(t, |w| quantize_values(t, w, transposed, p))?
}

fn quantize_values(t: &Tensor, w: &[f32], transposed: bool, p: &Params) -> Result<NbitsWeight> {
    let (r, c) = (t.dims[0] as usize, t.dims[1] as usize);
    let (k, n) = if transposed { (c, r) } else { (r, c) };
    let qp = quant::nbits::QuantParams {
        bits: p.bits,
        block_size: p.block_size,
        symmetric: p.symmetric,
    };
    // f16/bf16 weights: scales are rounded to the weight's type before encoding,
    // as onnxruntime does, so codes match the stored scales exactly.
    let ft = quant::convert::FloatType::from_dtype(t.dtype()).unwrap_or_default();
    let hqq = quant::hqq::HqqParams::default();
    let q = match (p.algorithm, transposed) {
        (Algorithm::Rtn, false) => quant::nbits::quantize_kn_as(w, k, n, &qp, ft),
        (Algorithm::Rtn, true) => quant::nbits::quantize_rows_as(w, n, k, &qp, ft),
        (Algorithm::Hqq, false) => quant::hqq::quantize_kn_as(w, k, n, &qp, &hqq, ft),
        (Algorithm::Hqq, true) => quant::hqq::quantize_rows_as(w, n, k, &qp, &hqq, ft),
    }
    .map_err(|e| Error::tensor(t.name(), e.to_string()))?;
    Ok(NbitsWeight {
        params: *p,
        k,
        n,
        dtype: t.dtype(),
        q,
        original_bytes: t.stored_len(),
    })
}

/// f32 values stored as `dtype` (the weight's float type).
pub fn float_tensor(name: &str, dtype: DType, dims: Vec<i64>, values: &[f32]) -> Tensor {
    let raw: Vec<u8> = match dtype {
        DType::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => crate::ir::f32_to_le(values),
    };
    let dtype = if matches!(dtype, DType::F16 | DType::BF16) {
        dtype
    } else {
        DType::F32
    };
    Tensor::from_raw(name, dtype, dims, Bytes::from(raw))
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
        WeightTensors {
            scales: float_tensor("scales", self.dtype, vec![n, kb], &self.q.scales),
            data: Tensor::from_raw(
                "B",
                DType::U8,
                vec![n, kb, blob],
                Bytes::from(self.q.packed),
            ),
            zero_points: self.q.zero_points.map(|z| {
                Tensor::from_raw(
                    "zero_points",
                    DType::U8,
                    vec![n, per_row.unwrap_or(0)],
                    Bytes::from(z),
                )
            }),
        }
    }

    /// DequantizeLinear (opset 21, axis 0, blocked) inputs for the [K, N] weight.
    pub fn into_qdq_tensors(self) -> WeightTensors {
        let d = self.q.to_qdq();
        let (k, n, kb) = (self.k as i64, self.n as i64, self.k_blocks() as i64);
        let dtype = d.dtype;
        WeightTensors {
            data: Tensor::from_raw("x", dtype, vec![k, n], Bytes::from(d.data)),
            scales: float_tensor("scale", self.dtype, vec![kb, n], &d.scales),
            zero_points: d
                .zero_points
                .map(|z| Tensor::from_raw("zp", dtype, vec![kb, n], Bytes::from(z))),
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
