//! Linear 8-bit (and 16-bit) quantization on slices: scale and zero point from a
//! real range, per-tensor and per-channel weight quantization, int32 biases, and
//! the histogram statistics calibration reduces activations to (percentile, KL
//! entropy). No graphs here.
//!
//! The arithmetic follows onnxruntime's quantization tools step by step (which
//! operations run in f32 and which in f64, round-half-to-even, the clamp ranges), so
//! for the same range the same scale, zero point and codes come out:
//! `quant_utils.compute_scale_zp`, `quantize_nparray`, `get_qmin_qmax_for_qType`,
//! `base_quantizer.quantize_bias_static_impl` and `calibrate.HistogramCollector`.
use super::QuantError;

/// Integer type of a quantized tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QType {
    U8,
    I8,
    U16,
    I16,
}

impl QType {
    /// Every value the type holds.
    pub fn full_range(self) -> (i32, i32) {
        match self {
            QType::U8 => (0, 255),
            QType::I8 => (-128, 127),
            QType::U16 => (0, 65535),
            QType::I16 => (-32768, 32767),
        }
    }

    /// The code range quantization targets: reduced range (one bit less, for
    /// u8×s8 products that must not saturate int16 on pre-VNNI x86) wins over the
    /// symmetric range (signed types drop their most negative code).
    pub fn range(self, reduce_range: bool, symmetric: bool) -> (i32, i32) {
        if reduce_range {
            return match self {
                QType::U8 => (0, 127),
                QType::I8 => (-64, 64),
                QType::U16 => (0, 32767),
                QType::I16 => (-16384, 16384),
            };
        }
        match (self, symmetric) {
            (QType::I8, true) => (-127, 127),
            (QType::I16, true) => (-32767, 32767),
            _ => self.full_range(),
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            QType::U8 | QType::I8 => 1,
            QType::U16 | QType::I16 => 2,
        }
    }

    pub fn is_signed(self) -> bool {
        matches!(self, QType::I8 | QType::I16)
    }

    /// Little-endian bytes of one code (already within the type's range).
    fn push(self, q: i32, out: &mut Vec<u8>) {
        match self {
            QType::U8 | QType::I8 => out.push(q as u8),
            QType::U16 | QType::I16 => out.extend_from_slice(&(q as u16).to_le_bytes()),
        }
    }

    /// Little-endian bytes of codes of this type.
    pub fn encode(self, codes: &[i32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(codes.len() * self.bytes());
        for &q in codes {
            self.push(q, &mut out);
        }
        out
    }
}

/// `real = scale · (code − zero_point)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScaleZp {
    pub scale: f32,
    pub zero_point: i32,
}

/// Scale and zero point that represent `[rmin, rmax]` (widened to contain 0) on
/// codes `[qmin, qmax]`. Symmetric ranges become `[-absmax, absmax]` with the zero
/// point at the middle code. A range too small for an f32 scale gets scale 1,
/// zero point 0. Non-finite bounds are an error.
pub fn scale_zp(
    rmin: f32,
    rmax: f32,
    qmin: i32,
    qmax: i32,
    symmetric: bool,
) -> Result<ScaleZp, QuantError> {
    if !rmin.is_finite() || !rmax.is_finite() {
        return Err(QuantError(format!("range [{rmin}, {rmax}] is not finite")));
    }
    if qmin > 0 || qmax < 0 || qmin > qmax {
        return Err(QuantError(format!(
            "code range [{qmin}, {qmax}] must contain 0"
        )));
    }
    let mut lo = rmin.min(0.0);
    let mut hi = rmax.max(0.0);
    if symmetric {
        let absmax = lo.abs().max(hi.abs());
        lo = -absmax;
        hi = absmax;
    }
    // onnxruntime promotes to f64 here, then stores the scale in the tensor's type.
    let scale = (hi as f64 - lo as f64) / (qmax as f64 - qmin as f64);
    if scale < f32::MIN_POSITIVE as f64 {
        return Ok(ScaleZp {
            scale: 1.0,
            zero_point: 0,
        });
    }
    let zero_point = if symmetric {
        ((qmin + qmax) as f64 / 2.0).round_ties_even() as i32
    } else {
        (qmin as f64 - lo as f64 / scale).round_ties_even() as i32
    };
    Ok(ScaleZp {
        scale: scale as f32,
        zero_point,
    })
}

/// One value's code: `clamp(round_half_even(x / scale) + zp)` in f32, clamped to
/// the type's full range (not the target range, as onnxruntime does).
#[inline]
pub fn quantize_value(x: f32, p: ScaleZp, qt: QType) -> i32 {
    let (lo, hi) = qt.full_range();
    let v = round_half_even(x / p.scale) + p.zero_point as f32;
    v.clamp(lo as f32, hi as f32) as i32
}

/// `f32::round_ties_even` for codes: without SSE4.1 in the target that is a
/// `rintf` call per value (a quarter of dynamic quantization's time). Adding and
/// subtracting 1.5·2²³ rounds half to even in the FPU instead (the sum's unit is
/// 1 and the constant is even); exact for |y| <= 2²², and every code range lies
/// far inside that, so larger values are clamped there first (NaN stays NaN).
#[inline]
pub fn round_half_even(y: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    const LIMIT: f32 = 4_194_304.0;
    (y.clamp(-LIMIT, LIMIT) + SHIFT) - SHIFT
}

/// Codes of `x` with one scale/zero point.
pub fn quantize(x: &[f32], p: ScaleZp, qt: QType) -> Vec<i32> {
    x.iter().map(|&v| quantize_value(v, p, qt)).collect()
}

/// Min and max of a slice; errors on NaN/Inf (weights must be finite).
pub fn finite_min_max(x: &[f32]) -> Result<(f32, f32), QuantError> {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for (i, &v) in x.iter().enumerate() {
        if !v.is_finite() {
            return Err(QuantError(format!("value #{i} is {v}")));
        }
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if x.is_empty() {
        return Ok((0.0, 0.0));
    }
    Ok((lo, hi))
}

/// A quantized weight: codes, and one scale/zero point per tensor or per channel.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantWeight {
    pub codes: Vec<i32>,
    pub params: Vec<ScaleZp>,
    /// The channel axis, for per-channel weights.
    pub axis: Option<usize>,
}

/// How a weight is quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WeightSpec {
    pub qtype: QType,
    pub symmetric: bool,
    pub reduce_range: bool,
    /// Quantize each slice along this axis with its own scale.
    pub axis: Option<usize>,
}

/// Per-channel (or per-tensor) scales and zero points of a row-major tensor.
pub fn weight_params(
    w: &[f32],
    dims: &[usize],
    spec: &WeightSpec,
) -> Result<Vec<ScaleZp>, QuantError> {
    let (qmin, qmax) = spec.qtype.range(spec.reduce_range, spec.symmetric);
    let Some(axis) = spec.axis else {
        let (lo, hi) = finite_min_max(w)?;
        return Ok(vec![scale_zp(lo, hi, qmin, qmax, spec.symmetric)?]);
    };
    let (channels, inner) = channel_layout(w.len(), dims, axis)?;
    let mut lo = vec![f32::INFINITY; channels];
    let mut hi = vec![f32::NEG_INFINITY; channels];
    for (i, &v) in w.iter().enumerate() {
        if !v.is_finite() {
            return Err(QuantError(format!("value #{i} is {v}")));
        }
        let c = (i / inner) % channels;
        lo[c] = lo[c].min(v);
        hi[c] = hi[c].max(v);
    }
    lo.iter()
        .zip(&hi)
        .map(|(&l, &h)| {
            // An empty channel (a zero dim elsewhere) is range [0, 0] as in onnxruntime.
            let (l, h) = if l > h { (0.0, 0.0) } else { (l, h) };
            scale_zp(l, h, qmin, qmax, spec.symmetric)
        })
        .collect()
}

/// (channels, elements between two consecutive channel indices) for `axis`.
fn channel_layout(len: usize, dims: &[usize], axis: usize) -> Result<(usize, usize), QuantError> {
    if axis >= dims.len() {
        return Err(QuantError(format!(
            "channel axis {axis} out of range for a {}-D tensor",
            dims.len()
        )));
    }
    if dims.iter().product::<usize>() != len {
        return Err(QuantError(format!(
            "{len} values do not fill dims {dims:?}"
        )));
    }
    Ok((dims[axis], dims[axis + 1..].iter().product()))
}

/// Codes of `w` with the given per-tensor or per-channel parameters.
pub fn quantize_with(
    w: &[f32],
    dims: &[usize],
    params: &[ScaleZp],
    axis: Option<usize>,
    qt: QType,
) -> Result<Vec<i32>, QuantError> {
    match axis {
        None => {
            let p = *params
                .first()
                .ok_or_else(|| QuantError("no quantization parameters".into()))?;
            Ok(quantize(w, p, qt))
        }
        Some(axis) => {
            let (channels, inner) = channel_layout(w.len(), dims, axis)?;
            if params.len() != channels {
                return Err(QuantError(format!(
                    "{} parameters for {channels} channels",
                    params.len()
                )));
            }
            Ok(w.iter()
                .enumerate()
                .map(|(i, &v)| quantize_value(v, params[(i / inner) % channels], qt))
                .collect())
        }
    }
}

/// Quantizes a weight per tensor or per channel.
pub fn quantize_weight(
    w: &[f32],
    dims: &[usize],
    spec: &WeightSpec,
) -> Result<QuantWeight, QuantError> {
    let params = weight_params(w, dims, spec)?;
    let codes = quantize_with(w, dims, &params, spec.axis, spec.qtype)?;
    Ok(QuantWeight {
        codes,
        params,
        axis: spec.axis,
    })
}

/// Enlarges symmetric weight scales whose product with the input scale would put
/// the int32 bias out of range (onnxruntime's `_adjust_weight_scale_for_int32_bias`).
/// `weight` holds one scale, or one per bias element. Returns whether any changed.
pub fn adjust_scales_for_bias(bias: &[f32], input_scale: f32, weight: &mut [ScaleZp]) -> bool {
    let qrange = i32::MAX as f64 - (i32::MIN as f64 + 1.0);
    let eps = 1.0001;
    let mut changed = false;
    let mut fix = |absmax: f64, w: &mut ScaleZp| {
        let smallest = eps * (2.0 * absmax) / qrange;
        let candidate = input_scale as f64 * w.scale as f64;
        if candidate < smallest && candidate > 0.0 {
            w.scale = (w.scale as f64 * (smallest / candidate)) as f32;
            changed = true;
        }
    };
    if weight.len() == 1 {
        let lo = bias.iter().copied().fold(0f32, f32::min) as f64;
        let hi = bias.iter().copied().fold(0f32, f32::max) as f64;
        fix(lo.abs().max(hi.abs()), &mut weight[0]);
    } else {
        for (b, w) in bias.iter().zip(weight.iter_mut()) {
            fix((*b as f64).abs(), w);
        }
    }
    changed
}

/// An int32 bias: scale = input scale × weight scale (per tensor or per channel),
/// zero point 0, codes rounded half to even in f64 and clamped to int32.
pub fn quantize_bias(bias: &[f32], input_scale: f32, weight: &[ScaleZp]) -> (Vec<i32>, Vec<f32>) {
    let scales: Vec<f32> = weight.iter().map(|w| input_scale * w.scale).collect();
    let codes = bias
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let s = if scales.len() == 1 {
                scales[0]
            } else {
                scales[i]
            };
            (b as f64 / s as f64)
                .round_ties_even()
                .clamp(i32::MIN as f64, i32::MAX as f64) as i32
        })
        .collect();
    (codes, scales)
}

/// A histogram with `counts.len()` equal bins over `[lo, hi]`, filled in any
/// number of batches; values outside the range and NaN are not counted. Bins
/// follow numpy.histogram: edges are the f32 rounding of an f64 linspace, each bin
/// is `[edge_i, edge_i+1)`, the last one closed.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub counts: Vec<u64>,
    edges: Vec<f32>,
}

impl Histogram {
    pub fn new(bins: usize, lo: f32, hi: f32) -> Histogram {
        let bins = bins.max(1);
        // numpy widens an empty range by half a unit each way.
        let (lo, hi) = if lo == hi {
            (lo as f64 - 0.5, hi as f64 + 0.5)
        } else {
            (lo as f64, hi as f64)
        };
        let step = (hi - lo) / bins as f64;
        let mut edges: Vec<f32> = (0..=bins).map(|i| (lo + i as f64 * step) as f32).collect();
        edges[bins] = hi as f32;
        Histogram {
            counts: vec![0; bins],
            edges,
        }
    }

    pub fn edges(&self) -> &[f32] {
        &self.edges
    }

    pub fn add(&mut self, values: &[f32]) {
        let n = self.counts.len();
        let (first, last) = (self.edges[0], self.edges[n]);
        let norm = n as f64 / (last as f64 - first as f64);
        for &v in values {
            if !(v >= first && v <= last) {
                continue;
            }
            let mut i = (((v as f64 - first as f64) * norm) as usize).min(n - 1);
            // The f64 guess can be one off an f32 edge: settle it against the edges.
            while i > 0 && v < self.edges[i] {
                i -= 1;
            }
            while i + 1 < n && v >= self.edges[i + 1] {
                i += 1;
            }
            self.counts[i] += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Range that keeps `percentile` % of the mass (onnxruntime's Percentile
/// calibration). Symmetric: `hist` is of |x| and the range is ±edge; otherwise
/// (100 − p)/2 % is cut on each side of a histogram of x. Clipped to the observed
/// `[min, max]`.
pub fn percentile_range(
    hist: &Histogram,
    percentile: f64,
    symmetric: bool,
    min: f32,
    max: f32,
) -> Result<(f32, f32), QuantError> {
    if !(0.0..=100.0).contains(&percentile) {
        return Err(QuantError(format!(
            "percentile {percentile} is not within [0, 100]"
        )));
    }
    let total = hist.total() as f64;
    if total == 0.0 {
        return Ok((min, max));
    }
    let mut cdf = Vec::with_capacity(hist.counts.len());
    let mut acc = 0f64;
    for &c in &hist.counts {
        acc += c as f64 / total;
        cdf.push(acc);
    }
    let search = |v: f64| cdf.partition_point(|&c| c < v).min(hist.edges.len() - 1);
    let (mut lo, mut hi) = if symmetric {
        let e = hist.edges[search(percentile / 100.0)];
        (-e, e)
    } else {
        let cut = (100.0 - percentile) / 200.0;
        (hist.edges[search(cut)], hist.edges[search(1.0 - cut)])
    };
    if lo < min {
        lo = min;
    }
    if hi > max {
        hi = max;
    }
    Ok((lo, hi))
}

/// Range minimizing the KL divergence between a symmetric histogram of x (bins
/// over `[-t, t]`) and its quantization to `quantized_bins` levels (TensorRT's
/// entropy calibration, as onnxruntime implements it). Clipped to `[min, max]`.
pub fn entropy_range(
    hist: &Histogram,
    quantized_bins: usize,
    min: f32,
    max: f32,
) -> Result<(f32, f32), QuantError> {
    let counts = &hist.counts;
    let bins = counts.len();
    let zero = bins / 2;
    let half = quantized_bins / 2;
    if quantized_bins == 0 || half > zero {
        return Err(QuantError(format!(
            "{quantized_bins} quantized bins do not fit a histogram of {bins} bins"
        )));
    }
    let mut best: Option<(f64, (f32, f32))> = None;
    for i in half..=zero {
        let start = zero - i;
        let end = (zero + i + 1).min(bins);
        let thresholds = (hist.edges[start], hist.edges[end]);
        let sliced = &counts[start..end];
        let mut p: Vec<u64> = sliced.to_vec();
        p[0] += counts[..start].iter().sum::<u64>();
        let last = p.len() - 1;
        p[last] += counts[end..].iter().sum::<u64>();
        let merged = sliced.len() / quantized_bins;
        let mut quantized = vec![0u64; quantized_bins];
        for (k, q) in quantized.iter_mut().enumerate() {
            *q = sliced[k * merged..(k + 1) * merged].iter().sum();
        }
        quantized[quantized_bins - 1] += sliced[quantized_bins * merged..].iter().sum::<u64>();
        let mut q = vec![0u64; p.len()];
        for (k, &total) in quantized.iter().enumerate() {
            let (s, e) = (k * merged, (k + 1) * merged);
            let norm = p[s..e].iter().filter(|&&v| v != 0).count() as u64;
            // Integer division, as onnxruntime assigns a float into an int64 array.
            if let Some(v) = total.checked_div(norm) {
                q[s..e].fill(v);
            }
        }
        let div = match (smooth(&p), smooth(&q)) {
            (Some(p), Some(q)) => kl(&p, &q),
            _ => f64::INFINITY,
        };
        if best.is_none_or(|(d, _)| div < d) {
            best = Some((div, thresholds));
        }
    }
    let (_, (mut lo, mut hi)) = best.ok_or_else(|| QuantError("empty histogram".into()))?;
    if lo < min {
        lo = min;
    }
    if hi > max {
        hi = max;
    }
    Ok((lo, hi))
}

/// Replaces zero bins by a small mass taken from the non-zero ones.
fn smooth(p: &[u64]) -> Option<Vec<f64>> {
    const EPS: f64 = 1e-4;
    let zeros = p.iter().filter(|&&v| v == 0).count();
    let nonzeros = p.len() - zeros;
    if nonzeros == 0 {
        return None;
    }
    let eps1 = EPS * zeros as f64 / nonzeros as f64;
    Some(
        p.iter()
            .map(|&v| if v == 0 { EPS } else { v as f64 - eps1 })
            .collect(),
    )
}

fn kl(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let (a, b) = (a / sp, b / sq);
            if a == 0.0 {
                0.0
            } else if b <= 0.0 {
                f64::INFINITY
            } else {
                a * (a / b).ln()
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_rounding_equals_round_ties_even() {
        // Every half and quarter step over the int16 code range and beyond, values
        // near the ±2²² limit, and what must saturate or stay NaN.
        let mut ys: Vec<f32> = (-300_000..300_000).map(|i| i as f32 * 0.25).collect();
        ys.extend([
            4_194_303.5,
            -4_194_303.5,
            4_194_304.0,
            0.49999997,
            -0.49999997,
            2.5e-8,
        ]);
        for y in ys {
            assert_eq!(round_half_even(y), y.round_ties_even(), "{y}");
        }
        assert_eq!(round_half_even(1e30), 4_194_304.0);
        assert_eq!(round_half_even(f32::NEG_INFINITY), -4_194_304.0);
        assert!(round_half_even(f32::NAN).is_nan());
    }

    #[test]
    fn ranges_follow_onnxruntime_tables() {
        assert_eq!(QType::I8.range(false, true), (-127, 127));
        assert_eq!(QType::I8.range(false, false), (-128, 127));
        assert_eq!(QType::I8.range(true, true), (-64, 64));
        assert_eq!(QType::U8.range(true, false), (0, 127));
        assert_eq!(QType::U8.range(false, true), (0, 255));
        assert_eq!(QType::I16.range(false, true), (-32767, 32767));
    }

    #[test]
    fn scale_and_zero_point_of_known_ranges() {
        // [-1, 3] on uint8: scale 4/255, zp round(255/4) = round(63.75) = 64.
        let p = scale_zp(-1.0, 3.0, 0, 255, false).unwrap();
        assert_eq!(p.scale, (4.0f64 / 255.0) as f32);
        assert_eq!(p.zero_point, 64);
        // Positive-only ranges are widened to contain 0.
        let p = scale_zp(2.0, 3.0, -128, 127, false).unwrap();
        assert_eq!(p.zero_point, -128);
        // Symmetric uint8 puts zero at 128 (round half to even of 127.5).
        assert_eq!(scale_zp(-1.0, 2.0, 0, 255, true).unwrap().zero_point, 128);
        assert_eq!(scale_zp(-1.0, 2.0, -127, 127, true).unwrap().zero_point, 0);
        // Degenerate range.
        let p = scale_zp(0.0, 0.0, -128, 127, false).unwrap();
        assert_eq!((p.scale, p.zero_point), (1.0, 0));
        assert!(scale_zp(f32::NAN, 1.0, 0, 255, false).is_err());
    }

    #[test]
    fn codes_round_half_to_even_and_clamp_to_the_full_type() {
        let p = ScaleZp {
            scale: 0.5,
            zero_point: 0,
        };
        // 0.25/0.5 = 0.5 -> 0; 0.75/0.5 = 1.5 -> 2; -64.5 -> -129 -> clamped -128.
        assert_eq!(
            quantize(&[0.25, 0.75, -64.5, 100.0], p, QType::I8),
            [0, 2, -128, 127]
        );
    }

    #[test]
    fn per_channel_uses_each_channels_range() {
        // [2, 3] with axis 1: channel c holds w[0][c], w[1][c].
        let w = [1.0, -4.0, 10.0, 0.5, 2.0, 8.0];
        let spec = WeightSpec {
            qtype: QType::I8,
            symmetric: true,
            reduce_range: false,
            axis: Some(1),
        };
        let q = quantize_weight(&w, &[2, 3], &spec).unwrap();
        assert_eq!(q.params.len(), 3);
        assert_eq!(q.params[0].scale, (1.0f64 / 127.0 * 1.0) as f32);
        assert_eq!(q.params[1].scale, (8.0f64 / 254.0) as f32);
        assert_eq!(q.params[2].scale, (20.0f64 / 254.0) as f32);
        // The largest magnitude of each channel maps to ±127.
        assert_eq!(q.codes[0], 127);
        assert_eq!(q.codes[1], -127);
        assert_eq!(q.codes[2], 127);
        assert!(quantize_weight(&[f32::NAN], &[1], &spec).is_err());
    }

    #[test]
    fn bias_scale_is_the_product_and_small_scales_grow() {
        let w = [ScaleZp {
            scale: 0.5,
            zero_point: 0,
        }];
        let (codes, scales) = quantize_bias(&[1.0, -2.5], 0.1, &w);
        assert_eq!(scales, [0.1f32 * 0.5]);
        assert_eq!(codes, [20, -50]);
        let mut tiny = [ScaleZp {
            scale: 1e-12,
            zero_point: 0,
        }];
        assert!(adjust_scales_for_bias(&[1000.0], 1e-3, &mut tiny));
        let (codes, _) = quantize_bias(&[1000.0], 1e-3, &tiny);
        assert!(codes[0] < i32::MAX && codes[0] > i32::MAX / 2, "{codes:?}");
    }

    #[test]
    fn histogram_matches_numpy_binning() {
        // np.histogram([0, 0.5, 1, 1, 2], bins=4, range=(0, 2)) -> [1, 1, 2, 1]
        let mut h = Histogram::new(4, 0.0, 2.0);
        h.add(&[0.0, 0.5, 1.0, 1.0]);
        h.add(&[2.0, 3.0, f32::NAN]);
        assert_eq!(h.counts, [1, 1, 2, 1]);
        assert_eq!(h.edges(), [0.0, 0.5, 1.0, 1.5, 2.0]);
    }

    #[test]
    fn percentile_cuts_the_tail() {
        // 9 values in bin 0, one in bin 9: the 95th percentile reaches bin 9's edge.
        let mut h = Histogram::new(10, 0.0, 10.0);
        h.add(&[0.5; 9]);
        h.add(&[9.5]);
        let (lo, hi) = percentile_range(&h, 95.0, true, -20.0, 9.5).unwrap();
        assert_eq!((lo, hi), (-9.0, 9.0));
        // The left edge of the bin where the CDF reaches the percentile (as
        // onnxruntime), clipped to the observed range.
        let (lo, hi) = percentile_range(&h, 100.0, true, -3.0, 9.5).unwrap();
        assert_eq!((lo, hi), (-3.0, 9.0));
        // Asymmetric: 2.5 % cut each side of a histogram of x.
        let (lo, hi) = percentile_range(&h, 95.0, false, 0.5, 9.5).unwrap();
        assert_eq!((lo, hi), (0.5, 9.0));
    }

    #[test]
    fn entropy_drops_a_far_outlier() {
        // Mass near zero plus a lone far outlier: KL picks a threshold well inside.
        let mut h = Histogram::new(2048, -100.0, 100.0);
        let v: Vec<f32> = (0..20000)
            .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
            .chain([100.0])
            .collect();
        h.add(&v);
        let (lo, hi) = entropy_range(&h, 128, -1.0, 100.0).unwrap();
        assert!((1.0..20.0).contains(&hi), "{lo} {hi}");
        assert!(lo >= -1.0);
        // With as many quantized bins as bins there is one candidate: the full range.
        let (lo, hi) = entropy_range(&Histogram::new(128, -3.0, 3.0), 128, -2.0, 3.0).unwrap();
        assert_eq!((lo, hi), (-2.0, 3.0));
    }
}
