//! NumPy `.npy` files (format versions 1–3): the dtypes ONNX shares with NumPy,
//! C or Fortran order, either byte order; fixed-width byte and unicode strings.
use crate::error::{Error, Result};
use crate::ir::DType;
use crate::runtime::HostTensor;

const MAGIC: &[u8] = b"\x93NUMPY";

/// The NumPy type string ONNX dtype `d` is written as.
fn descr_of(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::I8 => "|i1",
        DType::U8 => "|u1",
        DType::I16 => "<i2",
        DType::U16 => "<u2",
        DType::I32 => "<i4",
        DType::U32 => "<u4",
        DType::I64 => "<i8",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
        DType::C64 => "<c8",
        DType::C128 => "<c16",
        _ => return None,
    })
}

enum Elem {
    Num {
        dtype: DType,
        size: usize,
        big: bool,
    },
    Bytes(usize),
    Unicode {
        chars: usize,
        big: bool,
    },
}

fn parse_descr(descr: &str) -> Option<Elem> {
    // Every NumPy type string is ASCII; checking first keeps the byte splits below
    // on character boundaries.
    if !descr.is_ascii() {
        return None;
    }
    let (order, rest) = descr.split_at(1.min(descr.len()));
    let big = order == ">";
    if !matches!(order, "<" | ">" | "|" | "=") {
        return None;
    }
    let (kind, size) = rest.split_at(1.min(rest.len()));
    let size: usize = size.parse().ok()?;
    let dtype = match (kind, size) {
        ("f", 2) => DType::F16,
        ("f", 4) => DType::F32,
        ("f", 8) => DType::F64,
        ("i", 1) => DType::I8,
        ("i", 2) => DType::I16,
        ("i", 4) => DType::I32,
        ("i", 8) => DType::I64,
        ("u", 1) => DType::U8,
        ("u", 2) => DType::U16,
        ("u", 4) => DType::U32,
        ("u", 8) => DType::U64,
        ("b", 1) => DType::Bool,
        ("c", 8) => DType::C64,
        ("c", 16) => DType::C128,
        ("S", n) => return Some(Elem::Bytes(n)),
        ("U", n) => return Some(Elem::Unicode { chars: n, big }),
        _ => return None,
    };
    Some(Elem::Num { dtype, size, big })
}

/// The value of `'key': value` in the header dict (a Python literal).
fn header_field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))?;
    let rest = header[at + key.len() + 2..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else if let Some(r) = rest.strip_prefix('\'') {
        r.find('\'')? + 2
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let inner = s.strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.trim_end_matches('L').parse().ok())
        .collect()
}

/// Reads one `.npy` file's bytes; `what` names it in errors.
pub fn read(bytes: &[u8], what: &str) -> Result<HostTensor> {
    let bad =
        |reason: String| Error::invalid(format!("{what}: not a readable .npy file: {reason}"));
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("no NumPy magic".into()));
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("format version {v} is not supported"))),
    };
    let header = bytes
        .get(start..start + hlen)
        .ok_or_else(|| bad("truncated header".into()))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text".into()))?;
    let descr = header_field(header, "descr")
        .and_then(|d| d.strip_prefix('\'')?.strip_suffix('\''))
        .ok_or_else(|| bad("no 'descr' in header".into()))?;
    let fortran = header_field(header, "fortran_order")
        .ok_or_else(|| bad("no 'fortran_order' in header".into()))?
        == "True";
    let shape = header_field(header, "shape")
        .and_then(parse_shape)
        .ok_or_else(|| bad("no readable 'shape' in header".into()))?;
    let elem = parse_descr(descr).ok_or_else(|| {
        bad(format!(
            "element type '{descr}' is not supported (numbers, bool and fixed-width strings are)"
        ))
    })?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    let width = match &elem {
        Elem::Num { size, .. } => Some(*size),
        Elem::Bytes(w) => Some(*w),
        Elem::Unicode { chars, .. } => chars.checked_mul(4),
    }
    .ok_or_else(|| bad(format!("element type '{descr}' is too wide")))?;
    // Every element then takes at least one byte of the file, so the element count
    // (and what is allocated per element) is bounded by the file's length.
    if width == 0 {
        return Err(bad(format!("element type '{descr}' has zero width")));
    }
    let data_len = n
        .checked_mul(width)
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    let available = bytes.len() - (start + hlen);
    if data_len > available {
        return Err(bad(format!(
            "holds {available} data bytes, fewer than the {data_len} its header announces"
        )));
    }
    let body = &bytes[start + hlen..start + hlen + data_len];
    let mut body = body.to_vec();
    if fortran && shape.len() > 1 {
        body = fortran_to_c(&body, &shape, width);
    }
    match elem {
        Elem::Num { dtype, size, big } => {
            if big && size > 1 {
                // Complex numbers swap each half.
                let part = if matches!(dtype, DType::C64 | DType::C128) {
                    size / 2
                } else {
                    size
                };
                body.chunks_exact_mut(part).for_each(|c| c.reverse());
            }
            HostTensor::from_bytes(dtype, shape, body).map_err(|e| bad(e.to_string()))
        }
        Elem::Bytes(w) => {
            let strings = body
                .chunks_exact(w)
                .map(|c| {
                    let end = c.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
                    c[..end].to_vec()
                })
                .collect();
            HostTensor::from_strings(shape, strings).map_err(|e| bad(e.to_string()))
        }
        Elem::Unicode { chars, big } => {
            let mut strings = Vec::with_capacity(n);
            for i in 0..n {
                let mut s = String::new();
                for c in body[i * chars * 4..(i + 1) * chars * 4].chunks_exact(4) {
                    let code = if big {
                        u32::from_be_bytes([c[0], c[1], c[2], c[3]])
                    } else {
                        u32::from_le_bytes([c[0], c[1], c[2], c[3]])
                    };
                    if code == 0 {
                        break;
                    }
                    s.push(
                        char::from_u32(code)
                            .ok_or_else(|| bad(format!("invalid character {code:#x}")))?,
                    );
                }
                strings.push(s.into_bytes());
            }
            HostTensor::from_strings(shape, strings).map_err(|e| bad(e.to_string()))
        }
    }
}

/// Column-major elements of `width` bytes → row-major.
fn fortran_to_c(data: &[u8], shape: &[usize], width: usize) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let mut out = vec![0u8; data.len()];
    let mut idx = vec![0usize; shape.len()];
    for c_pos in 0..n {
        let mut f_pos = 0;
        let mut stride = 1;
        for (i, &d) in idx.iter().zip(shape) {
            f_pos += i * stride;
            stride *= d;
        }
        out[c_pos * width..(c_pos + 1) * width]
            .copy_from_slice(&data[f_pos * width..(f_pos + 1) * width]);
        for ax in (0..shape.len()).rev() {
            idx[ax] += 1;
            if idx[ax] < shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    out
}

/// Writes `t` as a version-1 `.npy` file (strings as fixed-width unicode).
pub fn write(t: &HostTensor, what: &str) -> Result<Vec<u8>> {
    let (descr, body) = if t.dtype == DType::String {
        let strs: Vec<Vec<char>> = t
            .strings
            .iter()
            .map(|s| String::from_utf8_lossy(s).chars().collect())
            .collect();
        let w = strs.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut body = Vec::with_capacity(strs.len() * w * 4);
        for s in &strs {
            for i in 0..w {
                let c = s.get(i).map_or(0, |&c| c as u32);
                body.extend_from_slice(&c.to_le_bytes());
            }
        }
        (format!("<U{w}"), body)
    } else {
        let d = descr_of(t.dtype).ok_or_else(|| {
            Error::invalid(format!(
                "{what}: {} has no NumPy type; write it as .pb (--format pb)",
                t.dtype
            ))
        })?;
        (d.to_string(), t.data.clone())
    };
    let shape = match t.shape.len() {
        1 => format!("({},)", t.shape[0]),
        _ => format!(
            "({})",
            t.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // The data starts on a 64-byte boundary; the header ends with a newline.
    let total = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_numbers_and_strings() {
        let f = HostTensor::from_f32(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let b = write(&f, "f").unwrap();
        assert_eq!((10 + u16::from_le_bytes([b[8], b[9]]) as usize) % 64, 0);
        assert_eq!(read(&b, "f").unwrap(), f);
        let s = HostTensor::from_strings(vec![2], vec![b"ab".to_vec(), "é".as_bytes().to_vec()])
            .unwrap();
        assert_eq!(read(&write(&s, "s").unwrap(), "s").unwrap(), s);
        let scalar = HostTensor::from_i64(vec![], &[7]).unwrap();
        assert_eq!(read(&write(&scalar, "x").unwrap(), "x").unwrap(), scalar);
    }

    #[test]
    fn fortran_order_and_big_endian_are_converted() {
        // np.asfortranarray(np.arange(6, dtype='>i2').reshape(2, 3)): memory 0 3 1 4 2 5.
        let mut b = Vec::new();
        let header = "{'descr': '>i2', 'fortran_order': True, 'shape': (2, 3), }";
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        for v in [0i16, 3, 1, 4, 2, 5] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        let t = read(&b, "t").unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.to_i64_vec().unwrap(), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn bad_files_are_named() {
        let e = read(b"not numpy", "in.npy").unwrap_err().to_string();
        assert!(e.contains("in.npy"), "{e}");
        let mut b = write(&HostTensor::from_f32(vec![4], &[0.0; 4]).unwrap(), "x").unwrap();
        b.truncate(b.len() - 1);
        let e = read(&b, "short.npy").unwrap_err().to_string();
        assert!(e.contains("short.npy") && e.contains("fewer"), "{e}");
    }
}
