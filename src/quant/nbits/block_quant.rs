//! The stored form of a quantized matrix: packed codes, scales and zero points in
//! MatMulNBits' layout, with the row views and dequantization readers use.
use rayon::prelude::*;

use super::*;

/// A [rows, cols] matrix quantized along cols; for a MatMul weight rows = N and
/// cols = K. See the module docs for the layout.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockQuant {
    pub params: QuantParams,
    pub rows: usize,
    pub cols: usize,
    /// The float type `scales` are rounded to (and should be stored as).
    pub scale_type: FloatType,
    /// [rows, k_blocks, blob_size].
    pub packed: Vec<u8>,
    /// [rows, k_blocks].
    pub scales: Vec<f32>,
    /// Asymmetric only: [rows, zp_row_bytes].
    pub zero_points: Option<Vec<u8>>,
}

impl BlockQuant {
    /// Wraps existing MatMulNBits-layout buffers (e.g. read from a model) after
    /// checking their sizes. `params.symmetric` is set from whether zero points
    /// are given (absent means the implied 2^(bits-1)).
    pub fn from_parts(
        params: QuantParams,
        rows: usize,
        cols: usize,
        packed: Vec<u8>,
        scales: Vec<f32>,
        zero_points: Option<Vec<u8>>,
    ) -> Result<Self, QuantError> {
        params.check()?;
        let kb = params.k_blocks(cols);
        // Sizes come from a model's attributes: a product that overflows is a
        // mismatch, not a panic.
        let want = |what: &str, got: usize, want: Option<usize>| match want {
            Some(w) if w == got => Ok(()),
            _ => Err(QuantError(format!(
                "{what} has {got} elements, expected {} for {rows}x{cols} with {params:?}",
                want.map_or("more than fit in memory".to_string(), |w| w.to_string())
            ))),
        };
        let blob_row = kb.checked_mul(params.blob_size());
        want(
            "packed data",
            packed.len(),
            blob_row.and_then(|b| b.checked_mul(rows)),
        )?;
        want("scales", scales.len(), rows.checked_mul(kb))?;
        if let Some(z) = &zero_points {
            want(
                "zero points",
                z.len(),
                rows.checked_mul(params.zp_row_bytes(cols)),
            )?;
        }
        Ok(BlockQuant {
            params: QuantParams {
                symmetric: zero_points.is_none(),
                ..params
            },
            rows,
            cols,
            scale_type: FloatType::F32,
            packed,
            scales,
            zero_points,
        })
    }

    pub fn k_blocks(&self) -> usize {
        self.params.k_blocks(self.cols)
    }

    /// Bytes of one packed row.
    pub fn row_bytes(&self) -> usize {
        self.k_blocks() * self.params.blob_size()
    }

    pub fn zp_row_bytes(&self) -> usize {
        self.params.zp_row_bytes(self.cols)
    }

    /// Codes of row `r`, `cols` of them (padding dropped).
    pub fn codes_row(&self, r: usize) -> Vec<u8> {
        let rb = self.row_bytes();
        let mut codes = vec![0u8; self.cols];
        unpack_ordered(
            &self.packed[r * rb..(r + 1) * rb],
            self.params.bits,
            Order::LowFirst,
            &mut codes,
        );
        codes
    }

    /// Zero points of row `r`, one per block (the implied one when symmetric).
    pub fn zero_points_row(&self, r: usize) -> Vec<u8> {
        let kb = self.k_blocks();
        match &self.zero_points {
            Some(z) => {
                let zr = self.zp_row_bytes();
                let mut out = vec![0u8; kb];
                unpack_ordered(
                    &z[r * zr..(r + 1) * zr],
                    self.params.bits,
                    Order::LowFirst,
                    &mut out,
                );
                out
            }
            None => vec![self.params.mid(); kb],
        }
    }

    /// Scales as little-endian bytes of `scale_type`.
    pub fn scales_le_bytes(&self) -> Vec<u8> {
        self.scale_type.to_le_bytes(&self.scales)
    }

    /// Back to f32, [rows, cols] (`(code - zero_point) * scale`).
    pub fn dequantize_rows(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        if out.is_empty() {
            return out;
        }
        let (bs, kb) = (self.params.block_size, self.k_blocks());
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(r, row)| {
                let codes = self.codes_row(r);
                let zps = self.zero_points_row(r);
                let scales = &self.scales[r * kb..(r + 1) * kb];
                for (b, (o, c)) in row.chunks_mut(bs).zip(codes.chunks(bs)).enumerate() {
                    let (z, s) = (zps[b] as i32, scales[b]);
                    for (o, &c) in o.iter_mut().zip(c) {
                        *o = (c as i32 - z) as f32 * s;
                    }
                }
            });
        out
    }

    /// Back to f32 in MatMul layout [K, N] = [cols, rows], without an
    /// intermediate [N, K] copy: each task fills 64 rows of K, 16 columns at a
    /// time through a small local tile.
    pub fn dequantize_kn(&self) -> Vec<f32> {
        const KT: usize = 64; // a multiple of 8: task segments start on a byte
        const NT: usize = 16;
        let (n, k, bits) = (self.rows, self.cols, self.params.bits);
        let mut out = vec![0f32; k * n];
        if out.is_empty() {
            return out;
        }
        let (bs, kb, rb) = (self.params.block_size, self.k_blocks(), self.row_bytes());
        let shift = bs.trailing_zeros();
        let zps: Vec<u8> = (0..n).flat_map(|r| self.zero_points_row(r)).collect();
        out.par_chunks_mut(KT * n)
            .enumerate()
            .for_each(|(t, chunk)| {
                let k0 = t * KT;
                let kl = chunk.len() / n;
                let mut codes = [0u8; KT];
                let mut vals = [[0f32; KT]; NT];
                for nb in (0..n).step_by(NT) {
                    let nl = NT.min(n - nb);
                    for (j, v) in vals.iter_mut().enumerate().take(nl) {
                        let r = nb + j;
                        let row = &self.packed[r * rb..(r + 1) * rb];
                        let start = k0 * bits as usize / 8;
                        unpack_ordered(&row[start..], bits, Order::LowFirst, &mut codes[..kl]);
                        // Runs of codes that share a block.
                        let mut i = 0;
                        while i < kl {
                            let b = (k0 + i) >> shift;
                            let end = kl.min((b + 1) * bs - k0);
                            let (z, sc) = (zps[r * kb + b] as i32, self.scales[r * kb + b]);
                            for (o, &c) in v[i..end].iter_mut().zip(&codes[i..end]) {
                                *o = (c as i32 - z) as f32 * sc;
                            }
                            i = end;
                        }
                    }
                    for (i, orow) in chunk.chunks_mut(n).enumerate() {
                        for (j, o) in orow[nb..nb + nl].iter_mut().enumerate() {
                            *o = vals[j][i];
                        }
                    }
                }
            });
        out
    }
}
