//! The parallel drivers that quantize a whole matrix block by block, row-major
//! ([N, K]) or straight from the ONNX MatMul layout ([K, N]) in column tiles.
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::*;

/// Elements each parallel task of the row-major driver works on (about).
const TASK_ELEMS: usize = 1 << 16;
/// Columns of N per task in the [K, N] driver: 64 f32 = 256 contiguous bytes per
/// row read.
const KN_TILE: usize = 64;

/// Quantizes the row-major [rows, cols] matrix `w` along its rows (RTN, f32 scales).
pub fn quantize_rows(
    w: &[f32],
    rows: usize,
    cols: usize,
    p: &QuantParams,
) -> Result<BlockQuant, QuantError> {
    quantize_rows_with(w, rows, cols, p, FloatType::F32, &Rtn)
}

/// Quantizes the ONNX MatMul weight [K, N] along K (RTN, f32 scales); the result
/// is laid out [N, k_blocks, blob] like [`quantize_rows`] of its transpose.
pub fn quantize_kn(
    w: &[f32],
    k: usize,
    n: usize,
    p: &QuantParams,
) -> Result<BlockQuant, QuantError> {
    quantize_kn_with(w, k, n, p, FloatType::F32, &Rtn)
}

/// [`quantize_rows`] with scales rounded to `scale_type` before encoding (the
/// weight was f16/bf16).
pub fn quantize_rows_as(
    w: &[f32],
    rows: usize,
    cols: usize,
    p: &QuantParams,
    scale_type: FloatType,
) -> Result<BlockQuant, QuantError> {
    quantize_rows_with(w, rows, cols, p, scale_type, &Rtn)
}

/// [`quantize_kn`] with scales rounded to `scale_type` before encoding.
pub fn quantize_kn_as(
    w: &[f32],
    k: usize,
    n: usize,
    p: &QuantParams,
    scale_type: FloatType,
) -> Result<BlockQuant, QuantError> {
    quantize_kn_with(w, k, n, p, scale_type, &Rtn)
}

/// Shared state of one quantization run.
struct Run<'a, S> {
    p: &'a QuantParams,
    scale_type: FloatType,
    solver: &'a S,
    max_code: f32,
}

/// Per-thread buffers.
struct Scratch {
    codes: Vec<u8>,
    solver: Vec<f32>,
}

impl<S: BlockSolver> Run<'_, S> {
    /// Quantizes one block into `blob`; None if it holds a non-finite value.
    #[inline]
    fn block(&self, block: &[f32], blob: &mut [u8], sc: &mut Scratch) -> Option<(f32, u8)> {
        let (lo, hi, finite) = min_max(block);
        if !finite {
            return None;
        }
        let fit = self.solver.fit(block, lo, hi, self.p, &mut sc.solver);
        let scale = self.scale_type.round(fit.scale);
        let codes = &mut sc.codes[..self.p.block_size];
        let (real, pad) = codes.split_at_mut(block.len());
        encode(
            block,
            reciprocal(scale),
            fit.zero_point as f32,
            self.max_code,
            real,
        );
        pad.fill(0);
        pack(codes, self.p.bits, blob);
        Some((scale, fit.zero_point))
    }
}

struct Outputs {
    packed: Vec<u8>,
    scales: Vec<f32>,
    zp_codes_packed: Vec<u8>,
}

fn check_shape(w: &[f32], a: usize, b: usize, layout: &str) -> Result<(), QuantError> {
    if a.checked_mul(b) != Some(w.len()) {
        return Err(QuantError(format!(
            "weight has {} values, expected {a}x{b} ({layout})",
            w.len()
        )));
    }
    Ok(())
}

fn alloc(rows: usize, cols: usize, p: &QuantParams) -> Outputs {
    let kb = p.k_blocks(cols);
    Outputs {
        packed: vec![0u8; rows * kb * p.blob_size()],
        scales: vec![0f32; rows * kb],
        zp_codes_packed: vec![0u8; rows * p.zp_row_bytes(cols)],
    }
}

fn finish(
    o: Outputs,
    rows: usize,
    cols: usize,
    p: &QuantParams,
    scale_type: FloatType,
) -> BlockQuant {
    BlockQuant {
        params: *p,
        rows,
        cols,
        scale_type,
        packed: o.packed,
        scales: o.scales,
        zero_points: (!p.symmetric).then_some(o.zp_codes_packed),
    }
}

fn non_finite(w: &[f32], cols: usize, layout: &str) -> QuantError {
    let i = w.iter().position(|v| !v.is_finite()).unwrap_or(0);
    QuantError(format!(
        "non-finite weight value {} at element {i} (row {}, column {} of {layout})",
        w.get(i).copied().unwrap_or(f32::NAN),
        i / cols.max(1),
        i % cols.max(1)
    ))
}

/// [`quantize_rows`] with a chosen scale type and block solver.
pub fn quantize_rows_with<S: BlockSolver>(
    w: &[f32],
    rows: usize,
    cols: usize,
    p: &QuantParams,
    scale_type: FloatType,
    solver: &S,
) -> Result<BlockQuant, QuantError> {
    p.check()?;
    check_shape(w, rows, cols, "[rows, cols]")?;
    let mut o = alloc(rows, cols, p);
    if rows == 0 || cols == 0 {
        return Ok(finish(o, rows, cols, p, scale_type));
    }
    let run = Run {
        p,
        scale_type,
        solver,
        max_code: p.max_code() as f32,
    };
    let (bs, kb, blob, zr) = (
        p.block_size,
        p.k_blocks(cols),
        p.blob_size(),
        p.zp_row_bytes(cols),
    );
    let rows_per_task = (TASK_ELEMS / cols).max(1);
    let bad = AtomicBool::new(false);
    o.packed
        .par_chunks_mut(rows_per_task * kb * blob)
        .zip(o.scales.par_chunks_mut(rows_per_task * kb))
        .zip(o.zp_codes_packed.par_chunks_mut(rows_per_task * zr))
        .enumerate()
        .for_each(|(t, ((packed, scales), zps))| {
            let mut sc = Scratch {
                codes: vec![0u8; bs],
                solver: Vec::new(),
            };
            // Whole bytes of zero-point slots; the unused ones keep the midpoint.
            let mut zcodes = vec![p.mid(); zr * 8 / p.bits as usize];
            let r0 = t * rows_per_task;
            for (i, ((prow, srow), zrow)) in packed
                .chunks_mut(kb * blob)
                .zip(scales.chunks_mut(kb))
                .zip(zps.chunks_mut(zr))
                .enumerate()
            {
                let row = &w[(r0 + i) * cols..][..cols];
                for (b, (block, blob_out)) in row.chunks(bs).zip(prow.chunks_mut(blob)).enumerate()
                {
                    match run.block(block, blob_out, &mut sc) {
                        Some((s, z)) => {
                            srow[b] = s;
                            zcodes[b] = z;
                        }
                        None => bad.store(true, Ordering::Relaxed),
                    }
                }
                pack(&zcodes, p.bits, zrow);
            }
        });
    if bad.load(Ordering::Relaxed) {
        return Err(non_finite(w, cols, "[rows, cols]"));
    }
    Ok(finish(o, rows, cols, p, scale_type))
}

/// [`quantize_kn`] with a chosen scale type and block solver. Works on tiles of
/// `KN_TILE` (64) output columns, reading the weight once, row segment by row
/// segment: solvers that need only min/max get them column-wise (vertical SIMD,
/// codes packed along K and transposed as bytes); others get each block gathered
/// transposed into a small buffer.
pub fn quantize_kn_with<S: BlockSolver>(
    w: &[f32],
    k: usize,
    n: usize,
    p: &QuantParams,
    scale_type: FloatType,
    solver: &S,
) -> Result<BlockQuant, QuantError> {
    p.check()?;
    check_shape(w, k, n, "[K, N]")?;
    let mut o = alloc(n, k, p);
    if k == 0 || n == 0 {
        return Ok(finish(o, n, k, p, scale_type));
    }
    let run = Run {
        p,
        scale_type,
        solver,
        max_code: p.max_code() as f32,
    };
    let (kb, blob, zr) = (p.k_blocks(k), p.blob_size(), p.zp_row_bytes(k));
    // Whole bytes of zero-point slots per row; the unused ones keep the midpoint.
    let zslots = zr * 8 / p.bits as usize;
    let bad = AtomicBool::new(false);
    o.packed
        .par_chunks_mut(KN_TILE * kb * blob)
        .zip(o.scales.par_chunks_mut(KN_TILE * kb))
        .zip(o.zp_codes_packed.par_chunks_mut(KN_TILE * zr))
        .enumerate()
        .for_each(|(t, ((packed, scales), zps))| {
            let tile = Tile {
                w,
                k,
                n,
                n0: t * KN_TILE,
                tn: scales.len() / kb,
                zslots,
            };
            let mut zcodes = vec![p.mid(); tile.tn * zslots];
            let finite = if solver.uses_min_max_only() {
                tile.columnwise(&run, packed, scales, &mut zcodes)
            } else {
                tile.gathered(&run, packed, scales, &mut zcodes)
            };
            if !finite {
                bad.store(true, Ordering::Relaxed);
            }
            for (zc, zrow) in zcodes.chunks(zslots).zip(zps.chunks_mut(zr)) {
                pack(zc, p.bits, zrow);
            }
        });
    if bad.load(Ordering::Relaxed) {
        return Err(non_finite(w, n, "[K, N]"));
    }
    Ok(finish(o, n, k, p, scale_type))
}

/// Columns `n0..n0+tn` of a [K, N] weight, producing rows `n0..` of the output.
/// Output slices are the tile's own: `packed` [tn, kb, blob], `scales` [tn, kb],
/// `zcodes` [tn, zslots] (unpacked zero points).
struct Tile<'a> {
    w: &'a [f32],
    k: usize,
    n: usize,
    n0: usize,
    tn: usize,
    zslots: usize,
}

impl Tile<'_> {
    /// Any solver: each block gathered into a contiguous buffer. False if a value
    /// is not finite.
    fn gathered<S: BlockSolver>(
        &self,
        run: &Run<S>,
        packed: &mut [u8],
        scales: &mut [f32],
        zcodes: &mut [u8],
    ) -> bool {
        let p = run.p;
        let (bs, kb, blob, tn) = (p.block_size, p.k_blocks(self.k), p.blob_size(), self.tn);
        let mut sc = Scratch {
            codes: vec![0u8; bs],
            solver: Vec::new(),
        };
        let mut buf = vec![0f32; tn * bs];
        let mut finite = true;
        for b in 0..kb {
            let k0 = b * bs;
            let len = bs.min(self.k - k0);
            gather_columns(self.w, self.n, self.n0, tn, k0, len, &mut buf, bs);
            for j in 0..tn {
                let blob_out = &mut packed[(j * kb + b) * blob..][..blob];
                match run.block(&buf[j * bs..][..len], blob_out, &mut sc) {
                    Some((s, z)) => {
                        scales[j * kb + b] = s;
                        zcodes[j * self.zslots + b] = z;
                    }
                    None => finite = false,
                }
            }
        }
        finite
    }

    /// Solvers that use only min/max, without transposing floats. Produces the
    /// same bits as the row-major path: min/max do not depend on order, and each
    /// code is computed by the same expression.
    fn columnwise<S: BlockSolver>(
        &self,
        run: &Run<S>,
        packed: &mut [u8],
        scales: &mut [f32],
        zcodes: &mut [u8],
    ) -> bool {
        let p = run.p;
        let (bs, kb, blob, tn) = (p.block_size, p.k_blocks(self.k), p.blob_size(), self.tn);
        let per = 8 / p.bits as usize;
        let (mut lo, mut hi, mut nan) = (vec![0f32; tn], vec![0f32; tn], vec![0f32; tn]);
        let (mut inv, mut zpf) = (vec![0f32; tn], vec![0f32; tn]);
        // Codes of one block, [bs, tn]; then bytes packed along K, [blob, tn].
        let mut codes = vec![0u8; bs * tn];
        let mut bytes = vec![0u8; blob * tn];
        let mut none = Vec::new();
        let mut finite = true;
        for b in 0..kb {
            let k0 = b * bs;
            let len = bs.min(self.k - k0);
            let row = |r: usize| &self.w[(k0 + r) * self.n + self.n0..][..tn];
            lo.fill(f32::MAX);
            hi.fill(f32::MIN);
            nan.fill(0.0);
            for r in 0..len {
                for (((l, h), z), &v) in lo.iter_mut().zip(&mut hi).zip(&mut nan).zip(row(r)) {
                    *l = if v < *l { v } else { *l };
                    *h = if v > *h { v } else { *h };
                    *z += v * 0.0;
                }
            }
            for j in 0..tn {
                finite &= nan[j] == 0.0 && lo[j].is_finite() && hi[j].is_finite();
                let fit = run.solver.fit(&[], lo[j], hi[j], p, &mut none);
                let s = run.scale_type.round(fit.scale);
                inv[j] = reciprocal(s);
                zpf[j] = fit.zero_point as f32;
                scales[j * kb + b] = s;
                zcodes[j * self.zslots + b] = fit.zero_point;
            }
            for r in 0..len {
                let out = &mut codes[r * tn..][..tn];
                for (((c, &v), &i), &z) in out.iter_mut().zip(row(r)).zip(&inv).zip(&zpf) {
                    *c = round_code((v * i + z).max(0.0).min(run.max_code));
                }
            }
            codes[len * tn..].fill(0);
            // Combine `per` consecutive rows of codes into one row of bytes.
            let src: &[u8] = if per == 1 {
                &codes
            } else {
                for (i, out) in bytes.chunks_mut(tn).enumerate() {
                    let rows = &codes[i * per * tn..][..per * tn];
                    match per {
                        2 => {
                            let (c0, c1) = rows.split_at(tn);
                            for ((o, &a), &b) in out.iter_mut().zip(c0).zip(c1) {
                                *o = a | b << 4;
                            }
                        }
                        _ => {
                            let (c01, c23) = rows.split_at(2 * tn);
                            let (c0, c1) = c01.split_at(tn);
                            let (c2, c3) = c23.split_at(tn);
                            for ((((o, &a), &b), &c), &d) in
                                out.iter_mut().zip(c0).zip(c1).zip(c2).zip(c3)
                            {
                                *o = a | b << 2 | c << 4 | d << 6;
                            }
                        }
                    }
                }
                &bytes
            };
            // [blob, tn] → each output row's blob b.
            gather_columns(src, tn, 0, tn, 0, blob, &mut packed[b * blob..], kb * blob);
        }
        finite
    }
}
