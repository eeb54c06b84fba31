//! onnxq's quantization kernels against onnxruntime's own quantizers (the C++
//! kernels its Python MatMulNBitsQuantizer and MatMulBnb4Quantizer call, and the
//! numpy code quantize_dynamic/quantize_static quantize weights with), on seeded
//! random weights: RTN 2/4/8-bit MatMulNBits (f32 and f16), 4-bit QDQ, bnb4
//! NF4/FP4, and 8/16-bit weights per tensor and per channel. Scales, zero points, codes and bnb4 output must be identical (QDQ
//! codes near ties follow a documented other rounding, see the QDQ test). Besides
//! random weights, RTN and 8-bit run on weights placed within a few ulps of the midpoints
//! between codes, where the order of float operations decides the code (dividing
//! instead of multiplying by the reciprocal, or a fused multiply-add, changes ~3 %
//! of them there and almost none on random data).
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use onnxq::quant::bnb4::{self, QuantType};
use onnxq::quant::int8::{quantize_weight, QType, WeightSpec};
use onnxq::quant::nbits::{quantize_kn_as, BlockQuant, QuantParams};
use onnxq::quant::pack::{unpack, unpack_ordered, Order};
use onnxq::quant::FloatType;

// ---------------------------------------------------------------------------
// Minimal .npy (version 1.0, C order) for the dtypes exchanged here.

fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // Magic (6) + version (2) + length (2) + header, padded to 64 with a newline.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).expect("writing npy");
}

/// (descr, raw little-endian data) of a 1-D or flattened array.
fn read_npy(path: &Path) -> (String, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{} is not npy", path.display());
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + len]).expect("npy header");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let descr = header
        .split("'descr':")
        .nth(1)
        .and_then(|s| s.split('\'').nth(1))
        .expect("npy descr")
        .to_string();
    (descr, bytes[start + len..].to_vec())
}

fn read_u8(path: &Path) -> Vec<u8> {
    let (descr, data) = read_npy(path);
    assert_eq!(descr, "|u1", "{}", path.display());
    data
}

fn read_i64(path: &Path) -> Vec<i64> {
    let (descr, data) = read_npy(path);
    assert_eq!(descr, "<i8", "{}", path.display());
    data.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// f32 values of an f4 or f2 array.
fn read_float(path: &Path) -> Vec<f32> {
    let (descr, data) = read_npy(path);
    let ft = match descr.as_str() {
        "<f4" => FloatType::F32,
        "<f2" => FloatType::F16,
        d => panic!("{}: unexpected dtype {d}", path.display()),
    };
    ft.from_le_bytes(&data).expect("float data")
}

// ---------------------------------------------------------------------------
// Python plumbing.

/// Python with onnxruntime's quantizers, or None (a loud skip) unless CI requires it.
fn ort_python() -> Option<PathBuf> {
    let python = common::python()?;
    let script = common::repo().join("tests/py/quant_ref.py");
    let out = Command::new(&python).arg(&script).arg("--probe").output();
    match out {
        Ok(o) if o.status.success() => Some(python),
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                !common::required(),
                "ONNXQ_REQUIRE_ORT=1 but onnxruntime's quantizers are not importable: {why}"
            );
            eprintln!(
                "\n*** SKIPPED: onnxruntime's Python quantizers are not available ({}); \
                 run .ci/setup-python ***\n",
                why.lines().last().unwrap_or("")
            );
            None
        }
    }
}

fn run_jobs(python: &Path, dir: &Path, jobs: &[serde_json::Value]) {
    let path = dir.join("jobs.json");
    std::fs::write(&path, serde_json::to_vec(jobs).unwrap()).unwrap();
    common::py(python, "quant_ref.py", &[path.to_str().unwrap()]);
}

// ---------------------------------------------------------------------------
// Data.

struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn gauss(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// [K, N] weights, σ = 0.02, with outlier input channels, one all-zero output
/// column and one all-positive column (asymmetric zero point clamps to 0).
fn weights(k: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut w: Vec<f32> = (0..k * n).map(|_| rng.gauss() * 0.02).collect();
    for kk in 0..k {
        if kk % 37 == 3 {
            for v in &mut w[kk * n..(kk + 1) * n] {
                *v *= 10.0;
            }
        }
        if n > 2 {
            w[kk * n] = 0.0;
            w[kk * n + 1] = w[kk * n + 1].abs();
        }
    }
    w
}

/// The weights as stored in `ft`, widened back to f32 (what a pass reads).
fn stored(w: &[f32], ft: FloatType) -> Vec<f32> {
    w.iter().map(|&v| ft.round(v)).collect()
}

fn save_weight(dir: &Path, name: &str, w: &[f32], k: usize, n: usize, ft: FloatType) -> PathBuf {
    let path = dir.join(format!("{name}.npy"));
    let descr = match ft {
        FloatType::F16 => "<f2",
        _ => "<f4",
    };
    write_npy(&path, descr, &[k, n], &ft.to_le_bytes(w));
    path
}

fn count_bit_mismatches(a: &[f32], b: &[f32]) -> usize {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count()
}

/// Codes that differ, and the largest difference, over `count` codes (as signed
/// `bits`-wide values when `signed`).
fn code_diffs(ours: &[u8], theirs: &[u8], bits: u8, count: usize, signed: bool) -> (usize, i32) {
    let mut a = vec![0u8; count];
    let mut b = vec![0u8; count];
    unpack_ordered(ours, bits, Order::LowFirst, &mut a);
    unpack_ordered(theirs, bits, Order::LowFirst, &mut b);
    let v = |c: u8| {
        let shift = 8 - bits as u32;
        if signed {
            ((c << shift) as i8 >> shift) as i32
        } else {
            c as i32
        }
    };
    let mut diff = 0;
    let mut worst = 0;
    for (x, y) in a.iter().zip(&b) {
        let d = (v(*x) - v(*y)).abs();
        if d != 0 {
            diff += 1;
            worst = worst.max(d);
        }
    }
    (diff, worst)
}

/// [K, N] weights whose values sit within 3 ulps of the midpoint between two codes
/// of their block's RTN grid (block extremes in [0.1, 1]; the first two rows of each
/// block hold them).
fn near_ties(k: usize, n: usize, bits: u8, bs: usize, symmetric: bool, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let max_code = ((1u32 << bits) - 1) as f32;
    let mid = (1u32 << (bits - 1)) as f32;
    let mut w = vec![0f32; k * n];
    for col in 0..n {
        for b0 in (0..k).step_by(bs) {
            let hi = 0.1 + 0.9 * rng.uniform() as f32;
            let lo = -(0.1 + 0.9 * rng.uniform() as f32);
            let (scale, z) = if symmetric {
                let m = if hi.abs() > lo.abs() { hi } else { lo };
                (-m / mid, mid)
            } else {
                let s = (hi - lo) / max_code;
                (s, (-lo / s).round())
            };
            for r in 0..bs.min(k - b0) {
                let v = match r {
                    0 => hi,
                    1 => lo,
                    _ => {
                        let j = (rng.uniform() * max_code as f64).floor() as f32;
                        let mut v = (j + 0.5 - z) * scale;
                        let steps = (rng.uniform() * 7.0) as i32 - 3;
                        for _ in 0..steps.abs() {
                            v = if steps > 0 {
                                v.next_up()
                            } else {
                                v.next_down()
                            };
                        }
                        v.clamp(lo, hi)
                    }
                };
                w[(b0 + r) * n + col] = v;
            }
        }
    }
    w
}

// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct NbitsCase {
    k: usize,
    n: usize,
    bits: u8,
    block_size: usize,
    symmetric: bool,
    ft: FloatType,
    /// Values near the midpoints between codes instead of random ones.
    near_ties: bool,
}

impl NbitsCase {
    fn weights(&self, seed: u64) -> Vec<f32> {
        let w = if self.near_ties {
            near_ties(
                self.k,
                self.n,
                self.bits,
                self.block_size,
                self.symmetric,
                seed,
            )
        } else {
            weights(self.k, self.n, seed)
        };
        stored(&w, self.ft)
    }
}

fn nbits_cases() -> Vec<NbitsCase> {
    let mut cases = Vec::new();
    // (K, N): aligned; K padded (even); K odd; N below one tile.
    let shapes = [(512, 200), (200, 67), (333, 96), (64, 3)];
    for &(k, n) in &shapes {
        for symmetric in [true, false] {
            cases.push(NbitsCase {
                k,
                n,
                bits: 4,
                block_size: 32,
                symmetric,
                ft: FloatType::F32,
                near_ties: false,
            });
        }
    }
    for (bits, block_size) in [
        (4u8, 16usize),
        (4, 128),
        (4, 256),
        (8, 32),
        (8, 128),
        (2, 16),
        (2, 64),
    ] {
        for symmetric in [true, false] {
            cases.push(NbitsCase {
                k: 300,
                n: 90,
                bits,
                block_size,
                symmetric,
                ft: FloatType::F32,
                near_ties: false,
            });
        }
    }
    for bits in [4u8, 8] {
        for symmetric in [true, false] {
            cases.push(NbitsCase {
                k: 256,
                n: 72,
                bits,
                block_size: 32,
                symmetric,
                ft: FloatType::F16,
                near_ties: false,
            });
        }
    }
    for bits in [2u8, 4, 8] {
        for symmetric in [true, false] {
            cases.push(NbitsCase {
                k: 256,
                n: 64,
                bits,
                block_size: 32,
                symmetric,
                ft: FloatType::F32,
                near_ties: true,
            });
        }
    }
    cases
}

#[test]
fn matmulnbits_rtn_matches_onnxruntime() {
    let Some(python) = ort_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cases = nbits_cases();
    let mut jobs = Vec::new();
    let mut inputs = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let w = c.weights(i as u64 + 1);
        let path = save_weight(dir.path(), &format!("w{i}"), &w, c.k, c.n, c.ft);
        jobs.push(serde_json::json!({
            "kind": "nbits", "weight": path, "out": dir.path().join(format!("r{i}")),
            "bits": c.bits, "block_size": c.block_size, "symmetric": c.symmetric,
        }));
        inputs.push(w);
    }
    run_jobs(&python, dir.path(), &jobs);

    let (mut total_codes, mut total_diff) = (0usize, 0usize);
    for (i, (c, w)) in cases.iter().zip(&inputs).enumerate() {
        let p = QuantParams::new(c.bits, c.block_size, c.symmetric).unwrap();
        let q: BlockQuant = quantize_kn_as(w, c.k, c.n, &p, c.ft).unwrap();
        let out = |s: &str| dir.path().join(format!("r{i}_{s}.npy"));
        let packed = read_u8(&out("packed"));
        let scales = read_float(&out("scales"));
        assert_eq!(packed.len(), q.packed.len(), "{c:?}: packed size");
        let scale_mismatch = count_bit_mismatches(&q.scales, &scales);
        let zp_equal = match &q.zero_points {
            Some(z) => *z == read_u8(&out("zp")),
            None => true,
        };
        // Codes past K are padding: onnxruntime leaves whole padding bytes 0 (as
        // we do) but a stale nibble in the byte holding K when K is odd.
        let rb = q.row_bytes();
        let (mut diff, mut worst) = (0, 0);
        for r in 0..c.n {
            let row = r * rb..(r + 1) * rb;
            let (d, w) = code_diffs(&q.packed[row.clone()], &packed[row], c.bits, c.k, false);
            diff += d;
            worst = worst.max(w);
        }
        let bytes_equal = q.packed.iter().zip(&packed).filter(|(a, b)| a == b).count();
        let codes = c.k * c.n;
        eprintln!(
            "{:>3}x{:<3} {}-bit b{:<3} {} {:?}{}: scales differ {scale_mismatch}, zero points {}, codes differ {diff}/{codes} (max {worst}), packed bytes equal {bytes_equal}/{}",
            c.k,
            c.n,
            c.bits,
            c.block_size,
            if c.symmetric { "sym " } else { "asym" },
            c.ft,
            if c.near_ties { " near ties" } else { "" },
            if zp_equal { "equal" } else { "DIFFER" },
            packed.len()
        );
        assert_eq!(scale_mismatch, 0, "{c:?}: scales");
        assert!(zp_equal, "{c:?}: zero points");
        assert_eq!(diff, 0, "{c:?}: codes differ (by up to {worst} steps)");
        total_codes += codes;
        total_diff += diff;
    }
    eprintln!("MatMulNBits RTN: {total_diff} of {total_codes} codes differ from onnxruntime");
}

#[test]
fn qdq_int4_matches_onnxruntime() {
    let Some(python) = ort_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Odd N: packed int4 bytes straddle rows; K not a multiple of the block; the
    // last one near ties.
    let cases = [
        (256usize, 96usize, 32usize),
        (200, 33, 32),
        (128, 64, 128),
        (256, 64, 32),
    ];
    let mut jobs = Vec::new();
    let mut inputs = Vec::new();
    for (i, &(k, n, bs)) in cases.iter().enumerate() {
        for (j, symmetric) in [true, false].into_iter().enumerate() {
            let w = if i == 3 {
                near_ties(k, n, 4, bs, symmetric, 100 + i as u64)
            } else {
                weights(k, n, 100 + i as u64)
            };
            let path = save_weight(dir.path(), &format!("w{i}_{j}"), &w, k, n, FloatType::F32);
            jobs.push(serde_json::json!({
                "kind": "qdq", "weight": path, "out": dir.path().join(format!("r{i}_{j}")),
                "bits": 4, "block_size": bs, "symmetric": symmetric,
            }));
            inputs.push((k, n, bs, symmetric, w));
        }
    }
    run_jobs(&python, dir.path(), &jobs);
    for (idx, (k, n, bs, symmetric, w)) in inputs.iter().enumerate() {
        let (i, j) = (idx / 2, idx % 2);
        let out = |s: &str| dir.path().join(format!("r{i}_{j}_{s}.npy"));
        let p = QuantParams::new(4, *bs, *symmetric).unwrap();
        let d = onnxq::quant::nbits::quantize_kn(w, *k, *n, &p)
            .unwrap()
            .to_qdq();
        let packed = read_u8(&out("packed"));
        let scales = read_float(&out("scales"));
        assert_eq!(d.data.len(), packed.len());
        let scale_mismatch = count_bit_mismatches(&d.scales, &scales);
        let (diff, worst) = code_diffs(&d.data, &packed, 4, k * n, *symmetric);
        let zp_equal = match &d.zero_points {
            Some(z) => *z == read_u8(&out("zp")),
            None => true,
        };
        eprintln!(
            "QDQ {k}x{n} b{bs} {}: dtype {:?}, scales differ {scale_mismatch}, zero points {}, codes differ {diff}/{} (max {worst})",
            if *symmetric { "sym " } else { "asym" },
            d.dtype,
            if zp_equal { "equal" } else { "DIFFER" },
            k * n
        );
        assert_eq!(scale_mismatch, 0);
        assert!(zp_equal);
        if i < 3 {
            assert_eq!(diff, 0, "codes differ (by up to {worst} steps)");
            continue;
        }
        // Near ties the two orders of operations part: onnxq's QDQ codes are its
        // MatMulNBits codes (round(w·(1/s) + zp), as onnxruntime's MatMulNBits
        // quantizer), onnxruntime's QDQ kernel rounds first (round(w·(1/s)) + zp).
        // Both formulas must hold exactly, and explain every difference.
        let zps = d.zero_points.as_ref().map(|z| unpack(z, 4, d.scales.len()));
        let codes = unpack(&packed, 4, k * n);
        let (mut explained, mut ours_off, mut theirs_off) = (0, 0, 0);
        let ours = unpack(&d.data, 4, k * n);
        for (e, &v) in w.iter().enumerate() {
            let (kk, nn) = (e / n, e % n);
            let m = (kk / bs) * n + nn;
            let inv = 1.0 / scales[m];
            // Unsigned codes; symmetric blocks store code - 8 as int4.
            let z = zps.as_ref().map_or(8.0, |z| z[m] as f32);
            let add_then_round = (v * inv + z).round().clamp(0.0, 15.0) as u8;
            let round_then_add = ((v * inv).round() + z).clamp(0.0, 15.0) as u8;
            let stored = |c: u8| {
                if *symmetric {
                    c.wrapping_sub(8) & 15
                } else {
                    c
                }
            };
            ours_off += (ours[e] != stored(add_then_round)) as usize;
            theirs_off += (codes[e] != stored(round_then_add)) as usize;
            explained += (add_then_round != round_then_add) as usize;
        }
        eprintln!("  near ties: {diff} codes differ, {explained} where the two roundings part");
        assert_eq!(ours_off, 0, "onnxq's QDQ codes are not round(w/s + zp)");
        assert_eq!(
            theirs_off, 0,
            "onnxruntime's QDQ codes are not round(w/s) + zp"
        );
        assert_eq!(diff, explained);
        assert!(diff > 0, "the near-tie weights no longer reach any tie");
    }
}

#[test]
fn bnb4_matches_onnxruntime_exactly() {
    let Some(python) = ort_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    // (K, N, block): blocks crossing rows of [N, K], an odd element count, f16.
    let shapes = [
        (256usize, 64usize, 64usize, FloatType::F32),
        (40, 7, 32, FloatType::F32),
        (33, 9, 16, FloatType::F32),
        (512, 48, 256, FloatType::F32),
        (128, 40, 64, FloatType::F16),
    ];
    let mut jobs = Vec::new();
    let mut inputs = Vec::new();
    for (i, &(k, n, bs, ft)) in shapes.iter().enumerate() {
        for qt in [QuantType::Nf4, QuantType::Fp4] {
            let w = stored(&weights(k, n, 200 + i as u64), ft);
            let name = format!("b{i}_{}", qt.code());
            let path = save_weight(dir.path(), &name, &w, k, n, ft);
            jobs.push(serde_json::json!({
                "kind": "bnb4", "weight": path, "out": dir.path().join(&name),
                "block_size": bs, "quant_type": qt.code(),
            }));
            inputs.push((name, k, n, bs, ft, qt, w));
        }
    }
    run_jobs(&python, dir.path(), &jobs);
    for (name, k, n, bs, ft, qt, w) in &inputs {
        let q = bnb4::quantize_kn(w, *k, *n, *bs, *qt).unwrap();
        let packed = read_u8(&dir.path().join(format!("{name}_packed.npy")));
        let absmax = read_float(&dir.path().join(format!("{name}_absmax.npy")));
        // absmax is stored in the weight's type.
        let ours_absmax = stored(&q.absmax, *ft);
        let bytes_differ = q.packed.iter().zip(&packed).filter(|(a, b)| a != b).count();
        let absmax_differ = count_bit_mismatches(&ours_absmax, &absmax);
        eprintln!(
            "bnb4 {qt:?} {k}x{n} b{bs} {ft:?}: packed bytes differ {bytes_differ}/{}, absmax differ {absmax_differ}/{}",
            packed.len(),
            absmax.len()
        );
        assert_eq!(q.packed.len(), packed.len());
        assert_eq!(bytes_differ, 0, "{name}");
        assert_eq!(absmax_differ, 0, "{name}");
    }
}

/// [K, N] weights for 8/16-bit quantization whose values sit within 3 ulps of the
/// midpoint between two codes, with onnxruntime's scale and zero point for the
/// range of the whole tensor or (`per_column`) of each column.
fn int8_near_ties(k: usize, n: usize, spec: &WeightSpec, per_column: bool, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let (qmin, qmax) = spec.qtype.range(spec.reduce_range, spec.symmetric);
    let mut w = vec![0f32; k * n];
    let groups: Vec<Vec<usize>> = if per_column {
        (0..n)
            .map(|c| (0..k).map(|r| r * n + c).collect())
            .collect()
    } else {
        vec![(0..k * n).collect()]
    };
    for idx in groups {
        let mut lo = -(0.1 + 0.9 * rng.uniform() as f32);
        let mut hi = 0.1 + 0.9 * rng.uniform() as f32;
        if spec.symmetric {
            let a = lo.abs().max(hi);
            (lo, hi) = (-a, a);
        }
        let scale = (hi as f64 - lo as f64) / (qmax - qmin) as f64;
        let zp = if spec.symmetric {
            ((qmin + qmax) as f64 / 2.0).round_ties_even()
        } else {
            (qmin as f64 - lo as f64 / scale).round_ties_even()
        } as f32;
        let s = scale as f32;
        for (i, &e) in idx.iter().enumerate() {
            w[e] = match i {
                0 => lo,
                1 => hi,
                _ => {
                    let j = qmin as f32 + (rng.uniform() * (qmax - qmin) as f64).floor() as f32;
                    let mut v = (j + 0.5 - zp) * s;
                    let steps = (rng.uniform() * 7.0) as i32 - 3;
                    for _ in 0..steps.abs() {
                        v = if steps > 0 {
                            v.next_up()
                        } else {
                            v.next_down()
                        };
                    }
                    v.clamp(lo, hi)
                }
            };
        }
    }
    w
}

#[test]
fn int8_weights_match_onnxruntime_exactly() {
    let Some(python) = ort_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (k, n) = (96usize, 40usize);
    let mut cases = Vec::new();
    for (qtype, symmetric, reduce_range) in [
        (QType::I8, true, false),
        (QType::I8, true, true),
        (QType::U8, false, false),
        (QType::U8, false, true),
        (QType::U8, true, false),
        (QType::I16, true, false),
        (QType::U16, false, false),
    ] {
        for axis in [None, Some(1), Some(0)] {
            for near in [false, true] {
                let spec = WeightSpec {
                    qtype,
                    symmetric,
                    reduce_range,
                    axis,
                };
                cases.push((spec, near));
            }
        }
    }
    let mut jobs = Vec::new();
    let mut inputs = Vec::new();
    for (i, (spec, near)) in cases.iter().enumerate() {
        let seed = 300 + i as u64;
        let w = if *near {
            int8_near_ties(k, n, spec, spec.axis == Some(1), seed)
        } else {
            weights(k, n, seed)
        };
        let path = save_weight(dir.path(), &format!("i{i}"), &w, k, n, FloatType::F32);
        let qtype = format!("{:?}", spec.qtype).to_lowercase();
        let qtype = match qtype.as_str() {
            "i8" => "int8",
            "u8" => "uint8",
            "i16" => "int16",
            _ => "uint16",
        };
        jobs.push(serde_json::json!({
            "kind": "int8", "weight": path, "out": dir.path().join(format!("q{i}")),
            "qtype": qtype, "symmetric": spec.symmetric, "reduce_range": spec.reduce_range,
            "axis": spec.axis,
        }));
        inputs.push(w);
    }
    run_jobs(&python, dir.path(), &jobs);
    let mut total = 0;
    for (i, ((spec, near), w)) in cases.iter().zip(&inputs).enumerate() {
        let out = |s: &str| dir.path().join(format!("q{i}_{s}.npy"));
        let q = quantize_weight(w, &[k, n], spec).unwrap();
        let scales = read_float(&out("scales"));
        let zps = read_i64(&out("zp"));
        let codes = read_i64(&out("codes"));
        let ours_scales: Vec<f32> = q.params.iter().map(|p| p.scale).collect();
        let ours_zps: Vec<i64> = q.params.iter().map(|p| p.zero_point as i64).collect();
        let diff = q
            .codes
            .iter()
            .zip(&codes)
            .filter(|(a, b)| **a as i64 != **b)
            .count();
        eprintln!(
            "{spec:?}{}: scales differ {}, zero points {}, codes differ {diff}/{}",
            if *near { " near ties" } else { "" },
            count_bit_mismatches(&ours_scales, &scales),
            if ours_zps == zps { "equal" } else { "DIFFER" },
            codes.len()
        );
        assert_eq!(count_bit_mismatches(&ours_scales, &scales), 0, "{spec:?}");
        assert_eq!(ours_zps, zps, "{spec:?}");
        assert_eq!(q.codes.len(), codes.len(), "{spec:?}");
        assert_eq!(diff, 0, "{spec:?} near ties {near}");
        total += codes.len();
    }
    eprintln!("8/16-bit weights: {total} codes identical to onnxruntime's");
}
