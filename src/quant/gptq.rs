//! GPTQ (Frantar et al., 2022): block quantization along K with second-order error
//! feedback, on one [K, N] MatMul weight given `H = XᵀX` of its input activations.
//!
//! Contract of [`quantize_kn`]:
//! - Output is a [`BlockQuant`] in the MatMulNBits layout (as `nbits::quantize_kn`),
//!   groups = blocks of `block_size` consecutive K indices in the *original* order,
//!   so no `g_idx` is needed.
//! - Each group's scale and zero point are the RTN fit (`nbits::rtn_fit`, scale
//!   rounded to `scale_type`) of the group's current weights — already corrected by
//!   the error feedback of every column processed before — taken the moment the
//!   first column of the group is quantized. Codes are encoded exactly as RTN does
//!   (reciprocal of the stored scale, `roundf`, clamp), so with a diagonal `H` the
//!   result equals RTN bit for bit.
//! - `H` is damped by `damp · mean(diag H)` on its diagonal; input channels never
//!   seen (diag 0) get diag 1 and their weights are quantized as they are (they do
//!   not affect the output on the calibration data, and RTN of them is the safest
//!   guess elsewhere).
//! - Columns are processed in batches of `max(128, block_size)` (a multiple of the
//!   block size): the error feedback inside a batch is immediate, to later rows one
//!   matrix product per batch (the "lazy batch" update).
//! - `act_order`: columns are processed in order of decreasing `diag H` (the
//!   permutation is applied to the rows of W and to H, and undone on output).
//!   Groups stay the original contiguous blocks: a group is fitted when the first of
//!   its columns comes up in the processing order, from its columns' current
//!   values (in-batch rows current; rows in later batches as of the last batch
//!   update). This keeps the MatMulNBits layout valid at the cost of fitting some
//!   groups before all feedback reached them.
use rayon::prelude::*;

use super::convert::FloatType;
use super::nbits::{min_max, reciprocal, round_nonneg, rtn_fit, BlockQuant, QuantParams};
use super::pack::pack;
use super::QuantError;

/// GPTQ settings besides the block format.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqOptions {
    /// Relative dampening of H's diagonal (0.01 in the paper's code).
    pub damp: f64,
    /// Process columns by decreasing activation energy (diag H).
    pub act_order: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions {
            damp: 0.01,
            act_order: false,
        }
    }
}

/// Lazy batch size: columns whose feedback is applied to later rows at once.
const BATCH: usize = 128;
/// Later rows per task of the lazy update, and output columns per cache tile.
const UPDATE_ROWS: usize = 16;
const UPDATE_COLS: usize = 256;

/// Quantizes the [K, N] weight `w` with GPTQ, given the K×K Hessian `h`
/// (symmetric, row-major; any positive scaling of XᵀX).
pub fn quantize_kn(
    w: &[f32],
    k: usize,
    n: usize,
    h: &[f64],
    p: &QuantParams,
    scale_type: FloatType,
    opts: &GptqOptions,
) -> Result<BlockQuant, QuantError> {
    p.check()?;
    let f = factor(h, k, opts)?;
    quantize_factored(w, k, n, &f, p, scale_type)
}

/// What GPTQ reads of a Hessian, shared by every weight with the same input: the
/// processing order, dead channels, and the upper Cholesky factor of the damped,
/// permuted inverse.
pub struct HessianFactor {
    k: usize,
    perm: Vec<usize>,
    pos: Vec<usize>,
    dead: Vec<bool>,
    hinv: Vec<f64>,
}

/// Damps, permutes and factors the K×K Hessian `h` (see [`quantize_kn`]).
pub fn factor(h: &[f64], k: usize, opts: &GptqOptions) -> Result<HessianFactor, QuantError> {
    if k.checked_mul(k) != Some(h.len()) {
        return Err(QuantError(format!(
            "Hessian has {} values, expected {k}x{k}",
            h.len()
        )));
    }
    if !(opts.damp >= 0.0 && opts.damp.is_finite()) {
        return Err(QuantError(format!(
            "damp {} must be a finite value >= 0",
            opts.damp
        )));
    }
    if h.iter().any(|v| !v.is_finite()) {
        return Err(QuantError("the Hessian holds non-finite values".into()));
    }

    // Processing order.
    let perm: Vec<usize> = if opts.act_order {
        let mut idx: Vec<usize> = (0..k).collect();
        // Stable: ties keep the original order, so the result is deterministic.
        idx.sort_by(|&a, &b| h[b * k + b].total_cmp(&h[a * k + a]));
        idx
    } else {
        (0..k).collect()
    };
    let mut pos = vec![0usize; k];
    for (p_, &j) in perm.iter().enumerate() {
        pos[j] = p_;
    }

    // Permuted, damped H with dead channels neutralised.
    let mut hp = vec![0f64; k * k];
    for (a, &ja) in perm.iter().enumerate() {
        for (b, &jb) in perm.iter().enumerate() {
            hp[a * k + b] = h[ja * k + jb];
        }
    }
    let dead: Vec<bool> = (0..k).map(|i| hp[i * k + i] <= 0.0).collect();
    for i in 0..k {
        if dead[i] {
            for j in 0..k {
                hp[i * k + j] = 0.0;
                hp[j * k + i] = 0.0;
            }
            hp[i * k + i] = 1.0;
        }
    }
    let mean_diag = (0..k).map(|i| hp[i * k + i]).sum::<f64>() / k.max(1) as f64;
    for i in 0..k {
        hp[i * k + i] += opts.damp * mean_diag;
    }
    let hinv = super::linalg::inverse_cholesky_upper(&hp, k)?;
    Ok(HessianFactor {
        k,
        perm,
        pos,
        dead,
        hinv,
    })
}

/// GPTQ of the [K, N] weight `w` with a prepared [`HessianFactor`] of its input.
pub fn quantize_factored(
    w: &[f32],
    k: usize,
    n: usize,
    f: &HessianFactor,
    p: &QuantParams,
    scale_type: FloatType,
) -> Result<BlockQuant, QuantError> {
    p.check()?;
    if k.checked_mul(n) != Some(w.len()) || f.k != k {
        return Err(QuantError(format!(
            "weight has {} values, expected {}x{n} ([K, N])",
            w.len(),
            f.k
        )));
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(QuantError(format!(
            "non-finite weight value {} at row {}, column {} of [K, N]",
            w[i],
            i / n.max(1),
            i % n.max(1)
        )));
    }
    let (perm, pos, dead, hinv) = (&f.perm, &f.pos, &f.dead, &f.hinv);

    // Rows of W in processing order.
    let mut wp = vec![0f32; k * n];
    for (a, &j) in perm.iter().enumerate() {
        wp[a * n..(a + 1) * n].copy_from_slice(&w[j * n..(j + 1) * n]);
    }

    let bs = p.block_size;
    let kb = p.k_blocks(k);
    let max_code = p.max_code() as f32;
    // Per group: scales and zero points for every output column, once fitted.
    let mut fits: Vec<Option<(Vec<f32>, Vec<u8>)>> = vec![None; kb];
    // Codes in original K order, [K, N].
    let mut codes = vec![0u8; k * n];
    let batch = BATCH.div_ceil(bs) * bs;

    let mut err = vec![0f32; batch * n];
    let mut i1 = 0;
    while i1 < k {
        let i2 = (i1 + batch).min(k);
        let count = i2 - i1;
        for i in 0..count {
            let row = i1 + i;
            let orig = perm[row];
            let g = orig / bs;
            if fits[g].is_none() {
                fits[g] = Some(fit_group(&wp, n, g, bs, k, pos, p, scale_type));
            }
            let (scales, zps) = fits[g].as_ref().expect("fitted above");
            let d = hinv[row * k + row];
            let (cur, later) = wp[row * n..i2 * n].split_at_mut(n);
            let e = &mut err[i * n..(i + 1) * n];
            let crow = &mut codes[orig * n..(orig + 1) * n];
            for c in 0..n {
                let s = scales[c];
                let z = zps[c] as f32;
                let y = (cur[c] * reciprocal(s) + z).max(0.0).min(max_code);
                let q = round_nonneg(y);
                crow[c] = q as u8;
                let deq = (q - z) * s;
                let e_ = if dead[row] {
                    0.0
                } else {
                    ((cur[c] - deq) as f64 / d) as f32
                };
                e[c] = e_;
                cur[c] = deq;
            }
            // Immediate feedback to the rest of the batch.
            for (j, r) in later.chunks_mut(n).enumerate() {
                let hij = hinv[row * k + row + 1 + j] as f32;
                if hij != 0.0 {
                    for (v, &ev) in r.iter_mut().zip(e.iter()) {
                        *v -= ev * hij;
                    }
                }
            }
        }
        // Lazy feedback to every later row: W[j] -= Σ_i Hinv[i1+i][j] · E[i]. A task
        // owns a few rows and walks N in tiles, so the tile of E it reads stays in
        // cache across its rows.
        let err_b = &err[..count * n];
        let hinv_ref = hinv;
        wp[i2 * n..]
            .par_chunks_mut(UPDATE_ROWS * n)
            .enumerate()
            .for_each(|(t, rows)| {
                let j0 = i2 + t * UPDATE_ROWS;
                let nr = rows.len() / n;
                let coef: Vec<Vec<f32>> = (0..nr)
                    .map(|jj| {
                        (0..count)
                            .map(|i| hinv_ref[(i1 + i) * k + j0 + jj] as f32)
                            .collect()
                    })
                    .collect();
                for c0 in (0..n).step_by(UPDATE_COLS) {
                    let c1 = (c0 + UPDATE_COLS).min(n);
                    for (r, cj) in rows.chunks_mut(n).zip(&coef) {
                        let r = &mut r[c0..c1];
                        for (i, &hij) in cj.iter().enumerate() {
                            if hij != 0.0 {
                                let e = &err_b[i * n + c0..i * n + c1];
                                for (v, &ev) in r.iter_mut().zip(e) {
                                    *v -= ev * hij;
                                }
                            }
                        }
                    }
                }
            });
        i1 = i2;
    }

    // MatMulNBits layout: [N, kb, blob] codes, [N, kb] scales, packed zero points.
    let blob = p.blob_size();
    let zr = p.zp_row_bytes(k);
    let mut packed = vec![0u8; n * kb * blob];
    let mut scales = vec![0f32; n * kb];
    let mut zp_packed = vec![0u8; n * zr];
    let zslots = zr * 8 / p.bits as usize;
    packed
        .par_chunks_mut(kb * blob)
        .zip(scales.par_chunks_mut(kb))
        .zip(zp_packed.par_chunks_mut(zr))
        .enumerate()
        .for_each(|(c, ((prow, srow), zrow))| {
            let mut block = vec![0u8; bs];
            let mut zc = vec![p.mid(); zslots];
            for (g, fit) in fits.iter().enumerate() {
                let (s, z) = fit.as_ref().expect("every group is fitted");
                srow[g] = s[c];
                zc[g] = z[c];
                block.fill(0);
                for (t, b) in block.iter_mut().enumerate() {
                    let kk = g * bs + t;
                    if kk < k {
                        *b = codes[kk * n + c];
                    }
                }
                pack(&block, p.bits, &mut prow[g * blob..(g + 1) * blob]);
            }
            pack(&zc, p.bits, zrow);
        });
    let mut q = BlockQuant::from_parts(
        *p,
        n,
        k,
        packed,
        scales,
        (!p.symmetric).then_some(zp_packed),
    )?;
    q.scale_type = scale_type;
    Ok(q)
}

/// RTN fit of group `g` (original K rows `g·bs..`) from the rows' current values in
/// the permuted working copy `wp`: per output column, (scale, zero point).
#[allow(clippy::too_many_arguments)]
fn fit_group(
    wp: &[f32],
    n: usize,
    g: usize,
    bs: usize,
    k: usize,
    pos: &[usize],
    p: &QuantParams,
    scale_type: FloatType,
) -> (Vec<f32>, Vec<u8>) {
    let rows: Vec<usize> = (g * bs..((g + 1) * bs).min(k)).map(|j| pos[j]).collect();
    let mut scales = vec![0f32; n];
    let mut zps = vec![0u8; n];
    let mut col = vec![0f32; rows.len()];
    for c in 0..n {
        for (v, &r) in col.iter_mut().zip(&rows) {
            *v = wp[r * n + c];
        }
        let (lo, hi, _) = min_max(&col);
        let f = rtn_fit(lo, hi, p);
        scales[c] = scale_type.round(f.scale);
        zps[c] = f.zero_point;
    }
    (scales, zps)
}

/// ‖X·(W − Ŵ)‖² / ‖X·W‖² computed from `h = XᵀX`: the relative output error of a
/// quantized [K, N] weight on the calibration data.
pub fn relative_output_error(w: &[f32], w_hat: &[f32], k: usize, n: usize, h: &[f64]) -> f64 {
    output_errors(w, &[w_hat], k, n, h, n)[0]
}

/// [`relative_output_error`] of each candidate `Ŵ`, estimated on at most `max_cols`
/// evenly spaced output columns (the quadratic forms are an f32 GEMM with `h`).
pub fn output_errors(
    w: &[f32],
    candidates: &[&[f32]],
    k: usize,
    n: usize,
    h: &[f64],
    max_cols: usize,
) -> Vec<f64> {
    let step = n.div_ceil(max_cols.max(1)).max(1);
    let cols: Vec<usize> = (0..n).step_by(step).collect();
    let m = cols.len();
    let hf: Vec<f32> = h.iter().map(|&v| v as f32).collect();
    // Σ_c dᶜᵀ H dᶜ over the chosen columns of d ([K, N]).
    let quad = |d: &dyn Fn(usize) -> f32| -> f64 {
        let mut dm = vec![0f32; k * m];
        for i in 0..k {
            for (j, &c) in cols.iter().enumerate() {
                dm[i * m + j] = d(i * n + c);
            }
        }
        let mut hd = vec![0f32; k * m];
        // Rows of H·D in parallel blocks; each block is one GEMM.
        const ROWS: usize = 64;
        hd.par_chunks_mut(ROWS * m)
            .enumerate()
            .for_each(|(b, out)| {
                let r0 = b * ROWS;
                let rows = out.len() / m;
                // SAFETY: A = H[r0..r0+rows, :] inside hf (row stride k); B = D (k×m,
                // row stride m); C = this block of H·D (rows×m, row stride m).
                unsafe {
                    matrixmultiply::sgemm(
                        rows,
                        k,
                        m,
                        1.0,
                        hf.as_ptr().add(r0 * k),
                        k as isize,
                        1,
                        dm.as_ptr(),
                        m as isize,
                        1,
                        0.0,
                        out.as_mut_ptr(),
                        m as isize,
                        1,
                    );
                }
            });
        dm.iter().zip(&hd).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let den = quad(&|i| w[i]);
    candidates
        .iter()
        .map(|w_hat| {
            let num = quad(&|i| w[i] - w_hat[i]);
            if den > 0.0 {
                num / den
            } else {
                num
            }
        })
        .collect()
}
