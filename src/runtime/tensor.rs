//! Tensors as runtimes take and return them: an element type, a shape and the
//! payload laid out as ONNX raw_data (little-endian, sub-byte types packed).
use crate::error::{Error, Result};
use crate::ir::{DType, Tensor};

/// A dense tensor in host memory. `data` holds the elements as ONNX raw_data;
/// string tensors keep their elements in `strings` and leave `data` empty.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
    pub strings: Vec<Vec<u8>>,
}

/// Named tensors in a fixed order (a model's inputs or outputs).
pub type NamedTensors = Vec<(String, HostTensor)>;

impl HostTensor {
    /// A tensor from raw bytes; checks the byte count against dtype × shape.
    pub fn from_bytes(dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> Result<HostTensor> {
        let n = numel(&shape)?;
        let want = dtype
            .byte_len(n)
            .ok_or_else(|| Error::invalid(format!("{dtype} tensors have no fixed byte size")))?;
        if data.len() != want {
            return Err(Error::invalid(format!(
                "{dtype}{shape:?} needs {want} bytes, got {}",
                data.len()
            )));
        }
        Ok(HostTensor {
            dtype,
            shape,
            data,
            strings: Vec::new(),
        })
    }

    pub fn from_strings(shape: Vec<usize>, strings: Vec<Vec<u8>>) -> Result<HostTensor> {
        let n = numel(&shape)?;
        if strings.len() != n {
            return Err(Error::invalid(format!(
                "string tensor of shape {shape:?} needs {n} elements, got {}",
                strings.len()
            )));
        }
        Ok(HostTensor {
            dtype: DType::String,
            shape,
            data: Vec::new(),
            strings,
        })
    }

    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<HostTensor> {
        Self::from_bytes(DType::F32, shape, le_bytes(values, |v| v.to_le_bytes()))
    }

    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> Result<HostTensor> {
        Self::from_bytes(DType::I64, shape, le_bytes(values, |v| v.to_le_bytes()))
    }

    pub fn from_i32(shape: Vec<usize>, values: &[i32]) -> Result<HostTensor> {
        Self::from_bytes(DType::I32, shape, le_bytes(values, |v| v.to_le_bytes()))
    }

    pub fn from_f16(shape: Vec<usize>, values: &[f32]) -> Result<HostTensor> {
        let b = le_bytes(values, |v| half::f16::from_f32(*v).to_le_bytes());
        Self::from_bytes(DType::F16, shape, b)
    }

    pub fn from_bf16(shape: Vec<usize>, values: &[f32]) -> Result<HostTensor> {
        let b = le_bytes(values, |v| half::bf16::from_f32(*v).to_le_bytes());
        Self::from_bytes(DType::BF16, shape, b)
    }

    pub fn from_bool(shape: Vec<usize>, values: &[bool]) -> Result<HostTensor> {
        Self::from_bytes(
            DType::Bool,
            shape,
            values.iter().map(|&b| b as u8).collect(),
        )
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_float(&self) -> bool {
        self.dtype.is_float()
    }

    /// Whether every element is an integer or a bool (compared by exact match).
    pub fn is_integer(&self) -> bool {
        matches!(
            self.dtype,
            DType::I8
                | DType::U8
                | DType::I16
                | DType::U16
                | DType::I32
                | DType::U32
                | DType::I64
                | DType::U64
                | DType::Bool
        )
    }

    /// Elements as f32, for float tensors (float, float16, bfloat16, double).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        Ok(self.to_f64_vec()?.into_iter().map(|v| v as f32).collect())
    }

    /// Elements as f64: floats exactly (double), integers and bools by value
    /// (64-bit integers beyond 2^53 round).
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        let d = &self.data;
        let v: Vec<f64> = match self.dtype {
            DType::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            DType::F64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(arr8(c)))
                .collect(),
            DType::F16 => d
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            DType::BF16 => d
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            DType::U64 => d
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(arr8(c)) as f64)
                .collect(),
            DType::F8E4M3FN
            | DType::F8E4M3FNUZ
            | DType::F8E5M2
            | DType::F8E5M2FNUZ
            | DType::F8E8M0 => d.iter().map(|&b| float8_to_f64(self.dtype, b)).collect(),
            _ => self.to_i64_vec()?.into_iter().map(|v| v as f64).collect(),
        };
        Ok(v)
    }

    /// Elements as i64, for integer and bool tensors (uint64 beyond i64::MAX wraps).
    pub fn to_i64_vec(&self) -> Result<Vec<i64>> {
        let d = &self.data;
        let v: Vec<i64> = match self.dtype {
            DType::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(arr8(c)))
                .collect(),
            DType::U64 => d
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(arr8(c)) as i64)
                .collect(),
            DType::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            DType::U32 => d
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            DType::I16 => d
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            DType::U16 => d
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            DType::I8 => d.iter().map(|&b| b as i8 as i64).collect(),
            DType::U8 => d.iter().map(|&b| b as i64).collect(),
            DType::Bool => d.iter().map(|&b| (b != 0) as i64).collect(),
            t => {
                return Err(Error::invalid(format!(
                    "cannot read {t} elements as numbers"
                )))
            }
        };
        Ok(v)
    }

    /// The tensor as an IR initializer-style tensor named `name`.
    pub fn to_ir(&self, name: &str) -> Result<Tensor> {
        let dims = self.shape.iter().map(|&d| d as i64).collect();
        if self.dtype == DType::String {
            let mut t = Tensor::from_raw(name, DType::String, dims, bytes::Bytes::new());
            t.storage = crate::ir::Storage::Fields {
                fields: Box::new(crate::ir::TypedFields {
                    string_data: self.strings.clone(),
                    ..Default::default()
                }),
                raw: None,
            };
            return Ok(t);
        }
        Ok(Tensor::from_raw(
            name,
            self.dtype,
            dims,
            bytes::Bytes::from(self.data.clone()),
        ))
    }

    /// An IR tensor (e.g. read from a TensorProto file) as a host tensor.
    pub fn from_ir(t: &Tensor) -> Result<HostTensor> {
        let shape = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| Error::tensor(t.name(), format!("invalid dims {:?}", t.dims)))?;
        if t.dtype() == DType::String {
            let strings = match &t.storage {
                crate::ir::Storage::Fields { fields, .. } => fields.string_data.clone(),
                _ => Vec::new(),
            };
            return HostTensor::from_strings(shape, strings)
                .map_err(|e| Error::tensor(t.name(), e.to_string()));
        }
        let raw = t.raw_bytes()?.into_owned();
        HostTensor::from_bytes(t.dtype(), shape, raw)
            .map_err(|e| Error::tensor(t.name(), e.to_string()))
    }

    /// `float[1,8]`-style description for messages.
    pub fn describe(&self) -> String {
        format!("{}{:?}", self.dtype, self.shape)
    }
}

/// The value of one float8 byte (ONNX's four 8-bit float formats and E8M0).
fn float8_to_f64(dtype: DType, b: u8) -> f64 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    // (exponent bits, bias, finite-only with the NaN at 0x80)
    let (ebits, bias, uz) = match dtype {
        DType::F8E4M3FN => (4, 7, false),
        DType::F8E4M3FNUZ => (4, 8, true),
        DType::F8E5M2 => (5, 15, false),
        DType::F8E5M2FNUZ => (5, 16, true),
        // E8M0: an unsigned power of two, 0xFF is NaN.
        _ => {
            return if b == 0xFF {
                f64::NAN
            } else {
                2f64.powi(b as i32 - 127)
            }
        }
    };
    let mbits = 7 - ebits;
    let exp = ((b & 0x7F) >> mbits) as i32;
    let man = (b & ((1 << mbits) - 1)) as f64 / (1 << mbits) as f64;
    let emax = (1 << ebits) - 1;
    if uz {
        if b == 0x80 {
            return f64::NAN;
        }
    } else if ebits == 5 && exp == emax {
        return if man == 0.0 {
            sign * f64::INFINITY
        } else {
            f64::NAN
        };
    } else if ebits == 4 && b & 0x7F == 0x7F {
        return f64::NAN;
    }
    if exp == 0 {
        sign * man * 2f64.powi(1 - bias)
    } else {
        sign * (1.0 + man) * 2f64.powi(exp - bias)
    }
}

fn arr8(c: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(c);
    a
}

fn le_bytes<T, const N: usize>(values: &[T], f: impl Fn(&T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * N);
    for v in values {
        out.extend_from_slice(&f(v));
    }
    out
}

fn numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::invalid(format!("shape {shape:?} overflows")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_accessors_read_what_constructors_wrote() {
        let t = HostTensor::from_f16(vec![3], &[1.0, -2.5, 0.125]).unwrap();
        assert_eq!(t.data.len(), 6);
        assert_eq!(t.to_f32_vec().unwrap(), vec![1.0, -2.5, 0.125]);
        let i = HostTensor::from_i32(vec![2], &[-7, 9]).unwrap();
        assert_eq!(i.to_i64_vec().unwrap(), vec![-7, 9]);
        assert!(HostTensor::from_bytes(DType::F32, vec![2], vec![0; 7]).is_err());
    }

    #[test]
    fn float8_bytes_decode_to_their_values() {
        let t = |dtype, bytes: Vec<u8>| {
            HostTensor::from_bytes(dtype, vec![bytes.len()], bytes)
                .unwrap()
                .to_f64_vec()
                .unwrap()
        };
        // E4M3FN: 0x38 = 1.0, 0x7E = 448 (max), 0x01 = 2^-9 (smallest subnormal).
        assert_eq!(
            t(DType::F8E4M3FN, vec![0x38, 0x7E, 0x01, 0xB8]),
            vec![1.0, 448.0, 2f64.powi(-9), -1.0]
        );
        assert!(t(DType::F8E4M3FN, vec![0x7F])[0].is_nan());
        // E5M2: 0x3C = 1.0, 0x7B = 57344 (max), 0x7C = inf, 0x7E and 0x7F are NaN.
        let v = t(DType::F8E5M2, vec![0x3C, 0x7B, 0x7C, 0x7E, 0x7F]);
        assert_eq!(&v[..3], &[1.0, 57344.0, f64::INFINITY]);
        assert!(v[3].is_nan() && v[4].is_nan());
        // FNUZ: bias one higher, 0x80 is the NaN.
        assert_eq!(t(DType::F8E4M3FNUZ, vec![0x40]), vec![1.0]);
        assert_eq!(t(DType::F8E5M2FNUZ, vec![0x40]), vec![1.0]);
        assert!(t(DType::F8E5M2FNUZ, vec![0x80])[0].is_nan());
        assert_eq!(t(DType::F8E8M0, vec![127, 130]), vec![1.0, 8.0]);
    }

    #[test]
    fn ir_round_trip_keeps_strings_and_bytes() {
        let s = HostTensor::from_strings(vec![2], vec![b"a".to_vec(), b"bc".to_vec()]).unwrap();
        assert_eq!(HostTensor::from_ir(&s.to_ir("s").unwrap()).unwrap(), s);
        let f = HostTensor::from_f32(vec![1, 2], &[1.0, 2.0]).unwrap();
        assert_eq!(HostTensor::from_ir(&f.to_ir("f").unwrap()).unwrap(), f);
    }
}
