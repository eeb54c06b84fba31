//! Half-quadratic quantization (HQQ; Badri & Shaji, 2023), calibration-free,
//! with **integer** zero points so the result is an ordinary asymmetric
//! MatMulNBits weight that onnxruntime decodes at RTN speed. (onnxruntime's own
//! HQQWeightOnlyQuantizer keeps float zero points, which its CPU kernel decodes
//! several times slower.)
//!
//! Per block (always asymmetric; `symmetric` in the params is ignored):
//! 1. Start from the RTN scale `s` and zero point `z` (onnxruntime's rules, the
//!    grid includes 0).
//! 2. HQQ's proximal iterations with `s` fixed, minimising `‖w − (q − z)·s‖_p^p`,
//!    p < 1: `q = clamp(round(w/s + z))`, `e = w − (q − z)·s`,
//!    `w_e = shrink_p(e, β)` (generalised soft threshold
//!    `sign(e)·max(|e| − |e|^(p−1)/β, 0)`), `z = mean(q − (w − w_e)/s)`,
//!    `β ← κ·β`; stop when the mean |e| stops falling (kept per block, where the
//!    reference implementation stops on the whole tensor's error). Defaults are
//!    those of HQQ and onnxruntime: p = 0.7, β = 10, κ = 1.01, 20 iterations.
//!    Like the reference, the threshold acts on raw weight units.
//! 3. Project the optimised zero onto the integer grid (floor and ceil), and for
//!    each candidate — plus RTN's own zero point — refit the scale by least squares
//!    on the current codes a few times.
//! 4. Keep the candidate with the least squared error; RTN is a candidate, so no
//!    block is ever worse than RTN in squared error.
//!
//! `|e|^(p−1)` uses a vectorizable log2/exp2 approximation (relative error
//! ~1e-6): it only sets a shrinkage threshold.
use super::convert::FloatType;
use super::nbits::{
    quantize_kn_with, quantize_rows_with, reciprocal, round_nonneg, rtn_fit, BlockFit, BlockQuant,
    BlockSolver, QuantParams,
};
use super::QuantError;

/// HQQ's optimisation parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HqqParams {
    /// p of the lp loss, < 1 (sparsity promoting).
    pub lp_norm: f32,
    /// Initial half-quadratic penalty.
    pub beta: f32,
    /// β grows by this factor every iteration.
    pub kappa: f32,
    /// Maximum zero-point iterations.
    pub iters: usize,
    /// Least-squares scale refits per integer zero-point candidate.
    pub scale_refits: usize,
}

impl Default for HqqParams {
    fn default() -> Self {
        HqqParams {
            lp_norm: 0.7,
            beta: 10.0,
            kappa: 1.01,
            iters: 20,
            scale_refits: 2,
        }
    }
}

/// The HQQ block solver.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hqq {
    pub params: HqqParams,
}

const L: usize = 8;

/// log2(x) for finite x > 0 (normal).
#[inline(always)]
fn log2_approx(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xFF) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007F_FFFF) | 0x3F80_0000);
    // Centre the mantissa on 1: m in [√½, √2).
    let big = m > std::f32::consts::SQRT_2;
    m = if big { m * 0.5 } else { m };
    e += big as i32;
    // Least-squares fit of log2(1 + t) = t·P(t) on [√½ − 1, √2 − 1] (Chebyshev
    // nodes); max abs error 2.5e-6.
    let t = m - 1.0;
    let p = 1.442_715_8
        + t * (-0.721_122_56
            + t * (0.479_324_37 + t * (-0.367_703_97 + t * (0.322_085_5 + t * -0.205_298_29))));
    e as f32 + t * p
}

/// 1.5·2^23: adding it to |y| < 2^22 rounds y to an integer held in the low
/// mantissa bits (two's complement).
const MAGIC_SIGNED: f32 = 12_582_912.0;

/// 2^y for y in about [-120, 120].
#[inline(always)]
fn exp2_approx(y: f32) -> f32 {
    let r = (y + MAGIC_SIGNED) - MAGIC_SIGNED;
    let fl = r - ((r > y) as u32 as f32);
    let f = (y - fl) * std::f32::consts::LN_2; // [0, ln 2)
    let p = 1.0
        + f * (1.0
            + f * (0.5
                + f * (1.0 / 6.0
                    + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0 + f / 5040.0))))));
    let t = (fl + MAGIC_SIGNED).to_bits() as i32 - MAGIC_SIGNED.to_bits() as i32;
    f32::from_bits((p.to_bits() as i32 + (t << 23)) as u32)
}

/// One iteration's shrinkage parameters. `sign(e)·max(|e| − |e|^(p−1)/β, 0)` is 0
/// exactly when |e| ≤ β^(−1/(2−p)) (`dead`), so lanes at or below it skip the
/// power; defining the result as 0 there makes it independent of how lanes are
/// grouped.
#[derive(Clone, Copy)]
struct Shrink {
    expo: f32,
    inv_beta: f32,
    dead: f32,
}

impl Shrink {
    fn new(lp_norm: f32, beta: f32) -> Self {
        Shrink {
            expo: lp_norm - 1.0,
            inv_beta: 1.0 / beta,
            dead: beta.powf(-1.0 / (2.0 - lp_norm)),
        }
    }

    #[inline(always)]
    fn apply(&self, e: f32) -> f32 {
        let a = e.abs();
        let thr = exp2_approx(self.expo * log2_approx(a + 1e-8)) * self.inv_beta;
        let we = e - e.max(-thr).min(thr);
        if a > self.dead {
            we
        } else {
            0.0
        }
    }
}

/// Sum of |e| and of the new zero point's terms `q − (w − w_e)/s` over a block.
fn hq_step(w: &[f32], s: f32, si: f32, z: f32, max: f32, sh: &Shrink) -> (f32, f32) {
    let mut ea = [0f32; L];
    let mut za = [0f32; L];
    let mut q = [0f32; L];
    let mut e = [0f32; L];
    let mut we = [0f32; L];
    for c in w.chunks(L) {
        let mut amax = 0f32;
        for (j, &v) in c.iter().enumerate() {
            q[j] = code(v, si, z, max);
            e[j] = v - (q[j] - z) * s;
            ea[j] += e[j].abs();
            amax = amax.max(e[j].abs());
        }
        // Typical weights never reach the threshold: skip the power then.
        if amax > sh.dead {
            for j in 0..c.len() {
                we[j] = sh.apply(e[j]);
            }
        } else {
            we = [0.0; L];
        }
        for (j, &v) in c.iter().enumerate() {
            za[j] += q[j] - (v - we[j]) * si;
        }
    }
    (ea.iter().sum(), za.iter().sum())
}

#[inline(always)]
fn code(w: f32, si: f32, z: f32, max: f32) -> f32 {
    round_nonneg((w * si + z).max(0.0).min(max))
}

/// At scale `s`, zero point `z`: the block's squared reconstruction error, and the
/// least-squares scale for the codes it has there (`s` when that is degenerate).
fn evaluate(w: &[f32], s: f32, z: f32, max: f32) -> (f32, f32) {
    let si = reciprocal(s);
    let mut sq = [0f32; L];
    let mut num = [0f32; L];
    let mut den = [0f32; L];
    let mut add = |j: usize, v: f32| {
        let d = code(v, si, z, max) - z;
        let e = v - d * s;
        sq[j] += e * e;
        num[j] += v * d;
        den[j] += d * d;
    };
    let mut chunks = w.chunks_exact(L);
    for c in &mut chunks {
        for (j, &v) in c.iter().enumerate() {
            add(j, v);
        }
    }
    for (j, &v) in chunks.remainder().iter().enumerate() {
        add(j, v);
    }
    let sum = |a: [f32; L]| a.iter().sum::<f32>();
    let (num, den) = (sum(num), sum(den));
    let fit = num / den;
    let refit = if den > 0.0 && fit.is_finite() && fit > 0.0 {
        fit
    } else {
        s
    };
    (sum(sq), refit)
}

impl BlockSolver for Hqq {
    fn fit(&self, w: &[f32], lo: f32, hi: f32, p: &QuantParams, _: &mut Vec<f32>) -> BlockFit {
        let asym = QuantParams {
            symmetric: false,
            ..*p
        };
        let rtn = rtn_fit(lo, hi, &asym);
        let s = rtn.scale;
        if s == 0.0 || !s.is_finite() || w.is_empty() {
            return rtn;
        }
        let hp = &self.params;
        let max = asym.max_code() as f32;
        let nel = w.len() as f32;
        let si = 1.0 / s;

        let mut z = rtn.zero_point as f32;
        let mut beta = hp.beta;
        let mut best_err = f32::INFINITY;
        let mut best_z = z;
        for _ in 0..hp.iters {
            let (err, zsum) = hq_step(w, s, si, z, max, &Shrink::new(hp.lp_norm, beta));
            let err = err / nel;
            if err < best_err {
                best_err = err;
                best_z = z;
            } else {
                break;
            }
            z = zsum / nel;
            beta *= hp.kappa;
        }

        // Integer zero-point candidates: RTN's, and the optimum's floor and ceil.
        let lo_z = best_z.floor().clamp(0.0, max) as u8;
        let hi_z = best_z.ceil().clamp(0.0, max) as u8;
        let mut cands = [rtn.zero_point; 3];
        let mut count = 1;
        for c in [lo_z, hi_z] {
            if !cands[..count].contains(&c) {
                cands[count] = c;
                count += 1;
            }
        }
        // (scale, zero point, squared error); RTN's own solution comes first.
        let mut best = (s, rtn.zero_point, f32::INFINITY);
        for &zc in &cands[..count] {
            let zf = zc as f32;
            let mut sc = s;
            let (mut err, mut next) = evaluate(w, sc, zf, max);
            if err < best.2 {
                best = (sc, zc, err);
            }
            for _ in 0..hp.scale_refits {
                if next == sc {
                    break;
                }
                let (e, n) = evaluate(w, next, zf, max);
                if e >= err {
                    break;
                }
                (sc, err, next) = (next, e, n);
                if err < best.2 {
                    best = (sc, zc, err);
                }
            }
        }
        BlockFit {
            scale: best.0,
            zero_point: best.1,
        }
    }
}

fn asym(p: &QuantParams) -> QuantParams {
    QuantParams {
        symmetric: false,
        ..*p
    }
}

/// HQQ of a row-major [rows, cols] matrix along its rows (f32 scales).
pub fn quantize_rows(
    w: &[f32],
    rows: usize,
    cols: usize,
    p: &QuantParams,
) -> Result<BlockQuant, QuantError> {
    quantize_rows_with(w, rows, cols, &asym(p), FloatType::F32, &Hqq::default())
}

/// HQQ of the ONNX MatMul weight [K, N] along K (f32 scales).
pub fn quantize_kn(
    w: &[f32],
    k: usize,
    n: usize,
    p: &QuantParams,
) -> Result<BlockQuant, QuantError> {
    quantize_kn_with(w, k, n, &asym(p), FloatType::F32, &Hqq::default())
}

/// [`quantize_rows`] with explicit HQQ parameters and scale type.
pub fn quantize_rows_as(
    w: &[f32],
    rows: usize,
    cols: usize,
    p: &QuantParams,
    hqq: &HqqParams,
    scale_type: FloatType,
) -> Result<BlockQuant, QuantError> {
    quantize_rows_with(w, rows, cols, &asym(p), scale_type, &Hqq { params: *hqq })
}

/// [`quantize_kn`] with explicit HQQ parameters and scale type.
pub fn quantize_kn_as(
    w: &[f32],
    k: usize,
    n: usize,
    p: &QuantParams,
    hqq: &HqqParams,
    scale_type: FloatType,
) -> Result<BlockQuant, QuantError> {
    quantize_kn_with(w, k, n, &asym(p), scale_type, &Hqq { params: *hqq })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::nbits;

    /// Deterministic standard normal samples (xorshift + Box-Muller).
    struct Gauss(u64);
    impl Gauss {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn next(&mut self) -> f32 {
            let (u, v) = (self.uniform(), self.uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        }
    }

    /// [K, N] Gaussian weights (σ = 0.02, LLM-like) whose input channels (rows of
    /// [K, N], columns of the [N, K] torch weight) include a few 8× outliers.
    fn outlier_channels(k: usize, n: usize, seed: u64) -> Vec<f32> {
        let mut g = Gauss(seed);
        let mut w: Vec<f32> = (0..k * n).map(|_| g.next() * 0.02).collect();
        for kk in (5..k).step_by(41) {
            for v in &mut w[kk * n..(kk + 1) * n] {
                *v *= 8.0;
            }
        }
        w
    }

    /// Student-t with 3 degrees of freedom (heavy tails), scaled by 0.02.
    fn heavy_tailed(len: usize, seed: u64) -> Vec<f32> {
        let mut g = Gauss(seed);
        (0..len)
            .map(|_| {
                let z = g.next();
                let chi2: f32 = (0..3).map(|_| g.next().powi(2)).sum();
                0.02 * z / (chi2 / 3.0).sqrt()
            })
            .collect()
    }

    fn errors(w: &[f32], d: &[f32]) -> (f64, f32) {
        let mse = w
            .iter()
            .zip(d)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / w.len() as f64;
        let max = w
            .iter()
            .zip(d)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        (mse, max)
    }

    fn compare(name: &str, w: &[f32], k: usize, n: usize, bits: u8) -> (f64, f64) {
        let p = QuantParams::new(bits, 32, false).unwrap();
        let rtn_q = nbits::quantize_kn(w, k, n, &p).unwrap();
        let hqq_q = quantize_kn(w, k, n, &p).unwrap();
        let (rtn, rtn_max) = errors(w, &rtn_q.dequantize_kn());
        let (hqq, hqq_max) = errors(w, &hqq_q.dequantize_kn());
        eprintln!(
            "{name} {bits}-bit b32: mse rtn {rtn:.4e} hqq {hqq:.4e} ({:+.1}%), max |err| rtn {rtn_max:.4e} hqq {hqq_max:.4e}",
            (hqq / rtn - 1.0) * 100.0
        );
        // Integer zero points in the ordinary asymmetric layout.
        assert_eq!(
            hqq_q.zero_points.as_ref().map(Vec::len),
            Some(n * p.zp_row_bytes(k))
        );
        (rtn, hqq)
    }

    // Measured MSE vs RTN asym (block 32): outlier channels −4.5% (4-bit) and
    // −17.2% (2-bit), Student-t −4.8% and −21.2%. A brute-force search over scale
    // and integer zero point reaches −6.0% on the 4-bit outlier case, so the
    // integer-zero family leaves little more to gain. The asserts keep a margin.
    #[test]
    fn hqq_beats_rtn_on_outlier_channels() {
        let (k, n) = (512, 96);
        let w = outlier_channels(k, n, 42);
        let (rtn, hqq) = compare("outlier channels", &w, k, n, 4);
        assert!(hqq < 0.97 * rtn, "hqq {hqq} vs rtn {rtn}");
        let (rtn, hqq) = compare("outlier channels", &w, k, n, 2);
        assert!(hqq < 0.97 * rtn, "hqq {hqq} vs rtn {rtn}");
    }

    #[test]
    fn hqq_beats_rtn_on_heavy_tailed_weights() {
        let (k, n) = (512, 96);
        let w = heavy_tailed(k * n, 7);
        let (rtn, hqq) = compare("student-t(3)", &w, k, n, 4);
        assert!(hqq < 0.97 * rtn, "hqq {hqq} vs rtn {rtn}");
        let (rtn, hqq) = compare("student-t(3)", &w, k, n, 2);
        assert!(hqq < 0.97 * rtn, "hqq {hqq} vs rtn {rtn}");
    }

    #[test]
    fn no_block_is_worse_than_rtn() {
        let (k, n) = (256, 40);
        let w = heavy_tailed(k * n, 3);
        let p = QuantParams::new(4, 32, false).unwrap();
        let nk = crate::quant::transpose(&w, k, n);
        let rtn = nbits::quantize_rows(&nk, n, k, &p)
            .unwrap()
            .dequantize_rows();
        let hqq = quantize_rows(&nk, n, k, &p).unwrap().dequantize_rows();
        for (b, ((x, r), h)) in nk
            .chunks(32)
            .zip(rtn.chunks(32))
            .zip(hqq.chunks(32))
            .enumerate()
        {
            let e = |d: &[f32]| x.iter().zip(d).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
            assert!(e(h) <= e(r) * (1.0 + 1e-5), "block {b}");
        }
    }

    #[test]
    fn kn_and_rows_entry_points_agree_bit_for_bit() {
        // N not a multiple of the tile, K not a multiple of the block.
        let (k, n) = (200, 70);
        let w = heavy_tailed(k * n, 5);
        let p = QuantParams::new(4, 32, false).unwrap();
        let a = quantize_kn(&w, k, n, &p).unwrap();
        let b = quantize_rows(&crate::quant::transpose(&w, k, n), n, k, &p).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn results_do_not_depend_on_thread_count() {
        let (k, n) = (256, 150);
        let w = heavy_tailed(k * n, 11);
        let p = QuantParams::new(4, 32, false).unwrap();
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let a = one.install(|| quantize_kn(&w, k, n, &p).unwrap());
        assert_eq!(a, quantize_kn(&w, k, n, &p).unwrap());
    }

    #[test]
    fn shrinkage_matches_the_lp_soft_threshold() {
        let sh = Shrink::new(0.7, 10.0);
        for &e in &[
            -3.0f32, -0.5, -0.2, -0.171, 0.0, 0.05, 0.169, 0.18, 0.3, 1.0, 7.5,
        ] {
            let exact = e.signum() * (e.abs() - (e.abs() + 1e-8).powf(-0.3) / 10.0).max(0.0);
            assert!((sh.apply(e) - exact).abs() <= 1e-5 * (1.0 + e.abs()), "{e}");
        }
    }

    #[test]
    fn hqq_with_active_shrinkage_is_not_worse_than_rtn() {
        // Unit-variance weights: rounding errors reach the lp threshold
        // (|e| > 10^(-1/1.3) ≈ 0.17), so the shrinkage path runs.
        let (k, n) = (256, 64);
        let w: Vec<f32> = heavy_tailed(k * n, 13).iter().map(|v| v * 50.0).collect();
        let (rtn, hqq) = compare("student-t(3) x50", &w, k, n, 4);
        assert!(hqq < 0.97 * rtn, "hqq {hqq} vs rtn {rtn}");
    }

    #[test]
    fn fast_log_and_exp_are_accurate() {
        for &x in &[1e-8f32, 3.7e-5, 0.01, 0.3, 1.0, 1.4, 1.5, 2.5, 1234.5] {
            let got = exp2_approx(-0.3 * log2_approx(x));
            let want = x.powf(-0.3);
            assert!((got / want - 1.0).abs() < 1e-5, "{x}: {got} vs {want}");
        }
    }

    #[test]
    fn constant_and_zero_blocks_are_handled() {
        let p = QuantParams::new(4, 16, false).unwrap();
        for w in [vec![0f32; 32], vec![0.25f32; 32]] {
            let q = quantize_rows(&w, 2, 16, &p).unwrap();
            let d = q.dequantize_rows();
            for (a, b) in w.iter().zip(&d) {
                assert!((a - b).abs() <= 1e-6, "{a} {b}");
            }
        }
    }
}
