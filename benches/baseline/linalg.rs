//! Baseline for benches/linalg.rs: onnxq's hand-written blocked Cholesky and triangular
//! inverse as they were before src/quant/linalg.rs moved to faer (kept only here, to
//! measure against). Errors are plain strings.
//!
//! Matrices are row-major `n × n` slices of the K of a MatMul (up to ~10⁴). The
//! factorizations are blocked so their bulk runs as f64 GEMMs (matrixmultiply); work
//! is split over rayon tasks by fixed blocks, and every element is computed by one
//! task in a fixed order, so results do not depend on the thread count.
use rayon::prelude::*;

/// The error of the original, with the same message.
pub struct QuantError(pub String);

/// Columns per block of the blocked factorizations: the bulk of the work is then
/// GEMMs on panels of this width.
const NB: usize = 64;

/// `C (m×n, row stride ldc) += alpha · A (m×k, ld lda) · B (k×n, ld ldb)`, row-major.
///
/// # Safety
/// The pointers must address matrices of those shapes and strides, and C must not
/// overlap A or B.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f64,
    a: *const f64,
    lda: usize,
    b: *const f64,
    ldb: usize,
    c: *mut f64,
    ldc: usize,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    matrixmultiply::dgemm(
        m,
        k,
        n,
        alpha,
        a,
        lda as isize,
        1,
        b,
        ldb as isize,
        1,
        1.0,
        c,
        ldc as isize,
        1,
    );
}

/// Lower Cholesky factor `L` of `a` (`a = L·Lᵀ`), in place: the lower triangle of
/// `a` becomes `L`, the strict upper triangle is zeroed. Fails with the pivot index
/// when `a` is not positive definite.
///
/// Left-looking by panels of [`NB`] columns: each panel is first updated by the
/// columns before it (one GEMM per block of rows, in parallel), then its diagonal
/// block is factored and the rows below solved against it.
pub fn cholesky_lower(a: &mut [f64], n: usize) -> Result<(), QuantError> {
    check(a, n)?;
    for j0 in (0..n).step_by(NB) {
        let j1 = (j0 + NB).min(n);
        let b = j1 - j0;
        if j0 > 0 {
            // A[j0.., j0..j1] -= L[j0.., ..j0] · L[j0..j1, ..j0]ᵀ
            let mut lt = vec![0f64; j0 * b];
            for c in 0..b {
                for t in 0..j0 {
                    lt[t * b + c] = a[(j0 + c) * n + t];
                }
            }
            a[j0 * n..].par_chunks_mut(NB * n).for_each(|rows| {
                let m = rows.len() / n;
                let p = rows.as_mut_ptr();
                // SAFETY: A = rows[.., 0..j0] and C = rows[.., j0..j1] are disjoint
                // columns of the same m rows (stride n); B = lt is j0×b.
                unsafe { gemm(m, j0, b, -1.0, p, n, lt.as_ptr(), b, p.add(j0), n) };
            });
        }
        // The diagonal block, unblocked.
        for j in j0..j1 {
            let d = a[j * n + j] - dot(&a[j * n + j0..j * n + j], &a[j * n + j0..j * n + j]);
            if d <= 0.0 || !d.is_finite() {
                return Err(QuantError(format!(
                    "matrix is not positive definite (pivot {j} is {d:e})"
                )));
            }
            let d = d.sqrt();
            a[j * n + j] = d;
            for i in j + 1..j1 {
                let s = dot(&a[i * n + j0..i * n + j], &a[j * n + j0..j * n + j]);
                a[i * n + j] = (a[i * n + j] - s) / d;
            }
        }
        // Rows below: L[i, j0..j1] · Ldᵀ = A[i, j0..j1], forward substitution.
        let diag: Vec<f64> = (j0..j1)
            .flat_map(|r| a[r * n + j0..r * n + j1].to_vec())
            .collect();
        a[j1 * n..].par_chunks_mut(n).for_each(|row| {
            for c in 0..b {
                let s = dot(&row[j0..j0 + c], &diag[c * b..c * b + c]);
                row[j0 + c] = (row[j0 + c] - s) / diag[c * b + c];
            }
        });
    }
    for i in 0..n {
        a[i * n + i + 1..(i + 1) * n].fill(0.0);
    }
    Ok(())
}

/// Inverse of a lower triangular matrix `l` (row-major), as a new lower triangular
/// matrix.
///
/// Blocked: the diagonal blocks are inverted first; then each column panel of the
/// inverse (independent of the others, so panels run in parallel) is built down the
/// rows, `X[i, j] = -Lᵢᵢ⁻¹ · L[i, j..i] · X[j..i, j]`, two GEMMs per block.
pub fn lower_inverse(l: &[f64], n: usize) -> Vec<f64> {
    let starts: Vec<usize> = (0..n).step_by(NB).collect();
    let end = |j0: usize| (j0 + NB).min(n);
    // Inverses of the diagonal blocks, each b×b row-major.
    let dinv: Vec<Vec<f64>> = starts
        .par_iter()
        .map(|&j0| {
            let b = end(j0) - j0;
            let mut x = vec![0f64; b * b];
            for c in 0..b {
                x[c * b + c] = 1.0 / l[(j0 + c) * n + j0 + c];
                for r in c + 1..b {
                    let row = &l[(j0 + r) * n + j0..(j0 + r) * n + j0 + r];
                    let s: f64 = (c..r).map(|t| row[t] * x[t * b + c]).sum();
                    x[r * b + c] = -s / l[(j0 + r) * n + j0 + r];
                }
            }
            x
        })
        .collect();
    // Column panel j: rows j0..n of X[:, j0..j1], row-major with stride b.
    let panels: Vec<Vec<f64>> = starts
        .par_iter()
        .enumerate()
        .map(|(bj, &j0)| {
            let b = end(j0) - j0;
            let mut x = vec![0f64; (n - j0) * b];
            x[..b * b].copy_from_slice(&dinv[bj]);
            for (bi, &i0) in starts.iter().enumerate().skip(bj + 1) {
                let bi_len = end(i0) - i0;
                let mut s = vec![0f64; bi_len * b];
                let (done, rest) = x.split_at_mut((i0 - j0) * b);
                // SAFETY: A = L[i0..i1, j0..i0] (stride n), B = X[j0..i0, panel]
                // (stride b), C = s; then A = Dᵢ⁻¹ (bi×bi), B = s, C = this block of
                // X (stride b), which `rest` owns apart from `done`.
                unsafe {
                    gemm(
                        bi_len,
                        i0 - j0,
                        b,
                        1.0,
                        l.as_ptr().add(i0 * n + j0),
                        n,
                        done.as_ptr(),
                        b,
                        s.as_mut_ptr(),
                        b,
                    );
                    gemm(
                        bi_len,
                        bi_len,
                        b,
                        -1.0,
                        dinv[bi].as_ptr(),
                        bi_len,
                        s.as_ptr(),
                        b,
                        rest.as_mut_ptr(),
                        b,
                    );
                }
            }
            x
        })
        .collect();
    let mut out = vec![0f64; n * n];
    for (&j0, x) in starts.iter().zip(&panels) {
        let b = end(j0) - j0;
        for (r, row) in x.chunks(b).enumerate() {
            out[(j0 + r) * n + j0..(j0 + r) * n + j0 + b].copy_from_slice(row);
        }
    }
    out
}

/// Upper Cholesky factor `U` of `a⁻¹` (`a⁻¹ = Uᵀ·U`) for a symmetric positive definite
/// `a`: what GPTQ's error feedback reads row by row.
///
/// With `J` the order-reversing permutation and `L = chol(J·a·J)`, `U = J·L⁻¹·J`:
/// `Uᵀ·U = J·L⁻ᵀ·L⁻¹·J = (J·a·J)⁻¹` conjugated back, and `J·(lower)·J` is upper with a
/// positive diagonal, so it is the Cholesky factor. One factorization and one
/// triangular inverse, no explicit inverse.
pub fn inverse_cholesky_upper(a: &[f64], n: usize) -> Result<Vec<f64>, QuantError> {
    check(a, n)?;
    let mut m: Vec<f64> = (0..n * n)
        .map(|idx| a[(n - 1 - idx / n) * n + (n - 1 - idx % n)])
        .collect();
    cholesky_lower(&mut m, n)?;
    let li = lower_inverse(&m, n);
    drop(m);
    Ok((0..n * n)
        .map(|idx| li[(n - 1 - idx / n) * n + (n - 1 - idx % n)])
        .collect())
}

/// `a · b` with four running sums (a fixed order, so results do not depend on the
/// machine, and one the compiler can keep in vector registers).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

fn check(a: &[f64], n: usize) -> Result<(), QuantError> {
    if n.checked_mul(n) != Some(a.len()) {
        return Err(QuantError(format!(
            "matrix has {} elements, expected {n}x{n}",
            a.len()
        )));
    }
    Ok(())
}
