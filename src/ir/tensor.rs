//! Tensors: dtype, dims and storage that can stay a borrowed slice of a mapped file.
use std::borrow::Cow;

use bytes::Bytes;

use super::DType;
use crate::error::{Error, Result};

/// Where a tensor's bytes came from when they were external, so a save can keep the
/// input's layout. `entries` keeps every key/value pair of `external_data` in order.
#[derive(Clone, Debug, PartialEq)]
pub struct ExternalRef {
    pub location: String,
    pub offset: u64,
    pub length: Option<u64>,
    pub entries: Vec<(String, String)>,
}

/// The typed repeated fields of TensorProto, for tensors that do not use raw_data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypedFields {
    pub float_data: Vec<f32>,
    pub int32_data: Vec<i32>,
    pub string_data: Vec<Vec<u8>>,
    pub int64_data: Vec<i64>,
    pub double_data: Vec<f64>,
    pub uint64_data: Vec<u64>,
}

impl TypedFields {
    pub fn is_empty(&self) -> bool {
        self.float_data.is_empty()
            && self.int32_data.is_empty()
            && self.string_data.is_empty()
            && self.int64_data.is_empty()
            && self.double_data.is_empty()
            && self.uint64_data.is_empty()
    }
}

/// A tensor's payload.
#[derive(Clone, Debug, PartialEq)]
pub enum Storage {
    /// raw_data: a slice of the mapped model file, or bytes a pass produced.
    Raw(Bytes),
    /// Bytes of an external data file (mapped); `origin` says where they live.
    External { bytes: Bytes, origin: ExternalRef },
    /// Typed fields (float_data, int32_data, ...); `raw` is set only in the odd
    /// tensor that carries both, kept so it round-trips.
    Fields {
        fields: Box<TypedFields>,
        raw: Option<Bytes>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub begin: Option<i64>,
    pub end: Option<i64>,
}

/// TensorProto in IR form. `dtype_code` stays the raw code so presence and unknown
/// codes round-trip; use [`Tensor::dtype`].
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: Option<String>,
    pub dtype_code: Option<i32>,
    pub dims: Vec<i64>,
    pub storage: Storage,
    pub doc_string: Option<String>,
    pub segment: Option<Segment>,
    pub data_location: Option<i32>,
    pub metadata_props: Vec<(String, String)>,
    /// For tensors a pass created in place of an external one: the data file the
    /// original lived in, so a save that keeps the input's layout puts it there too.
    pub external_hint: Option<String>,
    /// In memory only (never saved, ignored by `==`): the float value whose rows this
    /// tensor holds quantized, in MatMulNBits' B layout [rows, k_blocks, blob]. Set
    /// by the weight-only passes so a tied embedding Gather can read the same bytes.
    pub quantized_rows_of: Note,
}

/// A pass's in-memory annotation on a tensor: not part of its value (always equal),
/// never saved.
#[derive(Clone, Debug, Default)]
pub struct Note(pub Option<String>);

impl PartialEq for Note {
    fn eq(&self, _: &Note) -> bool {
        true
    }
}

/// SparseTensorProto.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseTensor {
    pub values: Option<Tensor>,
    pub indices: Option<Tensor>,
    pub dims: Vec<i64>,
}

impl Tensor {
    /// A tensor owning little-endian bytes laid out as ONNX raw_data.
    pub fn from_raw(name: impl Into<String>, dtype: DType, dims: Vec<i64>, raw: Bytes) -> Self {
        Tensor {
            name: Some(name.into()),
            dtype_code: Some(dtype.code()),
            dims,
            storage: Storage::Raw(raw),
            doc_string: None,
            segment: None,
            data_location: None,
            metadata_props: Vec::new(),
            external_hint: None,
            quantized_rows_of: Note::default(),
        }
    }

    /// Marks this (new) tensor to be stored like `original`: external in the same
    /// data file when `original` was external.
    pub fn stored_like(mut self, original: &Tensor) -> Self {
        self.external_hint = match &original.storage {
            Storage::External { origin, .. } => Some(origin.location.clone()),
            _ => original.external_hint.clone(),
        };
        self
    }

    /// Notes (in memory only) that this tensor holds the rows of the float value
    /// `source` quantized, in MatMulNBits' B layout.
    pub fn holding_quantized_rows_of(mut self, source: &str) -> Self {
        self.quantized_rows_of = Note(Some(source.to_string()));
        self
    }

    /// The float value whose quantized rows this tensor holds, if a pass noted one.
    pub fn quantized_rows_source(&self) -> Option<&str> {
        self.quantized_rows_of.0.as_deref()
    }

    pub fn from_f32(name: impl Into<String>, dims: Vec<i64>, values: &[f32]) -> Self {
        Self::from_raw(name, DType::F32, dims, Bytes::from(f32_to_le(values)))
    }

    pub fn from_i64(name: impl Into<String>, dims: Vec<i64>, values: &[i64]) -> Self {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::from_raw(name, DType::I64, dims, Bytes::from(raw))
    }

    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    pub fn dtype(&self) -> DType {
        DType::from_code(self.dtype_code.unwrap_or(0))
    }

    /// Number of elements, or an error for negative or overflowing dims.
    pub fn numel(&self) -> Result<usize> {
        numel(&self.dims)
            .ok_or_else(|| Error::tensor(self.name(), format!("invalid dims {:?}", self.dims)))
    }

    pub fn is_external(&self) -> bool {
        matches!(self.storage, Storage::External { .. })
    }

    /// Bytes the payload occupies where it is stored (raw or external).
    pub fn stored_len(&self) -> usize {
        match &self.storage {
            Storage::Raw(b) | Storage::External { bytes: b, .. } => b.len(),
            Storage::Fields { fields, raw } => {
                raw.as_ref().map_or(0, |r| r.len())
                    + fields.float_data.len() * 4
                    + fields.int32_data.len() * 4
                    + fields.int64_data.len() * 8
                    + fields.double_data.len() * 8
                    + fields.uint64_data.len() * 8
                    + fields.string_data.iter().map(Vec::len).sum::<usize>()
            }
        }
    }

    /// The payload as ONNX raw_data bytes (little-endian, sub-byte types packed),
    /// converting typed fields when needed. Checks the length against dtype × dims.
    pub fn raw_bytes(&self) -> Result<Cow<'_, [u8]>> {
        let dtype = self.dtype();
        let bytes: Cow<[u8]> = match &self.storage {
            Storage::Raw(b) | Storage::External { bytes: b, .. } => Cow::Borrowed(&b[..]),
            Storage::Fields {
                fields,
                raw: Some(r),
            } if fields.is_empty() => Cow::Borrowed(&r[..]),
            Storage::Fields { fields, .. } => {
                Cow::Owned(fields_to_raw(self.name(), dtype, fields)?)
            }
        };
        let expected = dtype
            .byte_len(self.numel()?)
            .ok_or_else(|| Error::tensor(self.name(), format!("{dtype} has no fixed byte size")))?;
        if bytes.len() != expected {
            return Err(Error::tensor(
                self.name(),
                format!(
                    "holds {} bytes but {dtype}{:?} needs {expected}",
                    bytes.len(),
                    self.dims
                ),
            ));
        }
        Ok(bytes)
    }

    /// Values as f32, for float tensors (float, float16, bfloat16, double).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let raw = self.raw_bytes()?;
        let out = match self.dtype() {
            DType::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::F64 => raw
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            d => {
                return Err(Error::tensor(
                    self.name(),
                    format!("expected a float tensor, found {d}"),
                ))
            }
        };
        Ok(out)
    }

    /// Values as i64, for integer tensors up to 64 bits.
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        let raw = self.raw_bytes()?;
        let out = match self.dtype() {
            DType::I64 => raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
            DType::I32 => raw
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            DType::I16 => raw
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            DType::U16 => raw
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            DType::I8 => raw.iter().map(|&b| b as i8 as i64).collect(),
            DType::U8 | DType::Bool => raw.iter().map(|&b| b as i64).collect(),
            DType::U32 => raw
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            d => {
                return Err(Error::tensor(
                    self.name(),
                    format!("expected an integer tensor, found {d}"),
                ))
            }
        };
        Ok(out)
    }

    /// A short content hash for printing (first 8 hex digits of SHA-256 of raw bytes).
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        match self.raw_bytes() {
            Ok(b) => h.update(&b),
            Err(_) => {
                if let Storage::Fields { fields, .. } = &self.storage {
                    for s in &fields.string_data {
                        h.update((s.len() as u64).to_le_bytes());
                        h.update(s);
                    }
                }
            }
        }
        let d = h.finalize();
        d[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Product of dims, `None` for negative dims or overflow.
pub fn numel(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

pub fn f32_to_le(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Typed fields → raw bytes, following the TensorProto rules for which field holds
/// which dtype (float16/bfloat16/int8/... live in int32_data, one value per entry).
fn fields_to_raw(name: &str, dtype: DType, f: &TypedFields) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match dtype {
        DType::F32 => f
            .float_data
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::C64 => f
            .float_data
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::F64 | DType::C128 => f
            .double_data
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::I64 => f
            .int64_data
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::U32 => f
            .uint64_data
            .iter()
            .for_each(|v| out.extend_from_slice(&(*v as u32).to_le_bytes())),
        DType::U64 => f
            .uint64_data
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::I32 => f
            .int32_data
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::I16 | DType::U16 | DType::F16 | DType::BF16 => f
            .int32_data
            .iter()
            .for_each(|v| out.extend_from_slice(&(*v as u16).to_le_bytes())),
        DType::I8 | DType::U8 | DType::Bool => f.int32_data.iter().for_each(|v| out.push(*v as u8)),
        DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ | DType::F8E8M0 => {
            f.int32_data.iter().for_each(|v| out.push(*v as u8))
        }
        // Sub-byte types: int32_data holds already packed bytes, one per entry.
        DType::I4 | DType::U4 | DType::F4E2M1 | DType::I2 | DType::U2 => {
            f.int32_data.iter().for_each(|v| out.push(*v as u8))
        }
        d => {
            return Err(Error::tensor(
                name,
                format!("typed fields of {d} cannot be read as raw bytes"),
            ))
        }
    }
    Ok(out)
}

/// f32 values stored as `dtype` (the weight's float type).
pub fn float_tensor(name: &str, dtype: DType, dims: Vec<i64>, values: &[f32]) -> Tensor {
    Tensor::from_raw(
        name,
        scale_dtype(dtype),
        dims,
        Bytes::from(float_bytes(dtype, values)),
    )
}

/// The type scales of a `dtype` weight are stored as: its own for float16/bfloat16,
/// float32 otherwise.
pub fn scale_dtype(dtype: DType) -> DType {
    if matches!(dtype, DType::F16 | DType::BF16) {
        dtype
    } else {
        DType::F32
    }
}

/// f32 values as the little-endian bytes of [`scale_dtype`]`(dtype)`.
pub fn float_bytes(dtype: DType, values: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => f32_to_le(values),
    }
}
