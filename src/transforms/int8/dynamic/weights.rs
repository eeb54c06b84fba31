//! Constant weights quantized once and stored as int8 codes with their scales
//! and zero points, computed in row blocks so a large table is never held whole
//! as f32 and codes.
use super::*;

/// The constant `v` quantized with `spec`, once per (value, spec).
pub(super) fn quantized_constant(
    g: &mut Graph,
    v: ValueId,
    spec: &WeightSpec,
    st: &mut State,
) -> Result<QuantInit> {
    let key = (v, false, *spec);
    if let Some(w) = st.weights.get(&key) {
        return Ok(*w);
    }
    let t = constant(g, v).expect("matched as constant").1.clone();
    let w = add_quantized(g, &t, g.value_name(v).to_string(), spec, st)?;
    st.weights.insert(key, w);
    Ok(w)
}

/// Quantizes a constant 2-D weight as [K, N] (transposing an [N, K] one).
pub(super) fn quantize_matrix(
    g: &mut Graph,
    weight: ValueId,
    transposed: bool,
    spec: &WeightSpec,
    st: &mut State,
) -> Result<QuantInit> {
    let t = constant(g, weight).expect("matched as constant").1.clone();
    let base = g.value_name(weight).to_string();
    if !transposed {
        return add_quantized(g, &t, base, spec, st);
    }
    let (r, c) = (t.dims[0] as usize, t.dims[1] as usize);
    let wt = crate::transforms::common::nbits::with_f32(&t, |w| crate::quant::transpose(w, r, c))?;
    add_quantized_values(g, &wt, &[c, r], &t, format!("{base}_Transposed"), spec, st)
}

/// Quantizes float tensor `t` and adds `{base}_quantized`, `{base}_scale` and
/// `{base}_zero_point` initializers (onnxruntime's names).
pub(super) fn add_quantized(
    g: &mut Graph,
    t: &Tensor,
    base: String,
    spec: &WeightSpec,
    st: &mut State,
) -> Result<QuantInit> {
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    // The float values are borrowed from the map where possible (pages dropped after).
    crate::transforms::common::nbits::with_f32(t, |w| {
        add_quantized_values(g, w, &dims, t, base, spec, st)
    })?
}

/// Quantizes the values `w` (dims `dims`) of the float tensor `original` (stored
/// as-is or transposed) and adds `{base}_quantized`, `{base}_scale` and
/// `{base}_zero_point`. Codes are made a block of rows at a time, in parallel, and
/// spilled: no i32 code array of the whole weight, nothing resident until the save.
pub(super) fn add_quantized_values(
    g: &mut Graph,
    w: &[f32],
    dims: &[usize],
    original: &Tensor,
    base: String,
    spec: &WeightSpec,
    st: &mut State,
) -> Result<QuantInit> {
    let err = |e: QuantError| Error::tensor(original.name(), e.to_string());
    let params = weight_params(w, dims, spec).map_err(err)?;
    let raw = encode_rows(w, dims, &params, spec).map_err(err)?;
    st.bytes_before += original.stored_len() as u64;
    let data = Tensor::from_raw(
        "",
        qtype_dtype(spec.qtype),
        dims.iter().map(|&d| d as i64).collect(),
        crate::io::spill::bytes(raw),
    )
    .stored_like(original);
    st.bytes_after += data.stored_len() as u64;
    let pdims = if spec.axis.is_some() {
        vec![params.len() as i64]
    } else {
        vec![]
    };
    let data = add_named(g, &format!("{base}_quantized"), data)?;
    let scale = add_named(
        g,
        &format!("{base}_scale"),
        scale_tensor(&params, pdims.clone()),
    )?;
    let zero_point = add_named(
        g,
        &format!("{base}_zero_point"),
        zp_tensor(&params, spec.qtype, pdims),
    )?;
    Ok(QuantInit {
        data,
        scale,
        zero_point,
    })
}

/// Elements quantized per parallel step of [`encode_rows`] and [`weight_params`].
const CODES_PER_STEP: usize = 1 << 20;

/// Leading rows per step for a tensor of `dims`, and the elements in one row.
pub(super) fn row_steps(dims: &[usize]) -> (usize, usize) {
    let row: usize = dims[1..].iter().product::<usize>().max(1);
    ((CODES_PER_STEP / row).max(1), row)
}

/// Smallest and largest value per channel.
type ChannelRange = (Vec<f32>, Vec<f32>);

/// `int8::weight_params`, with the min/max scan split over blocks of leading rows
/// in parallel (the same ranges, so the same parameters).
pub(super) fn weight_params(
    w: &[f32],
    dims: &[usize],
    spec: &WeightSpec,
) -> Result<Vec<ScaleZp>, QuantError> {
    if dims.len() < 2 || w.len() <= CODES_PER_STEP || spec.axis.is_some_and(|a| a >= dims.len()) {
        return int8::weight_params(w, dims, spec);
    }
    let (rows_per_step, row) = row_steps(dims);
    let channels = spec.axis.map_or(1, |a| dims[a]);
    let inner: usize = spec.axis.map_or(1, |a| dims[a + 1..].iter().product());
    let blocks: Vec<Result<ChannelRange, QuantError>> = w
        .par_chunks(rows_per_step * row)
        .enumerate()
        .map(|(b, chunk)| {
            let r0 = b * rows_per_step;
            let mut lo = vec![f32::INFINITY; channels];
            let mut hi = vec![f32::NEG_INFINITY; channels];
            for (e, &v) in chunk.iter().enumerate() {
                if !v.is_finite() {
                    return Err(QuantError(format!("value #{} is {v}", r0 * row + e)));
                }
                // Blocks start on a row, so channels of later axes repeat within a row.
                let c = match spec.axis {
                    None => 0,
                    Some(0) => r0 + e / row,
                    Some(_) => (e / inner) % channels,
                };
                lo[c] = lo[c].min(v);
                hi[c] = hi[c].max(v);
            }
            Ok((lo, hi))
        })
        .collect();
    let mut lo = vec![f32::INFINITY; channels];
    let mut hi = vec![f32::NEG_INFINITY; channels];
    for block in blocks {
        let (l, h) = block?;
        for c in 0..channels {
            lo[c] = lo[c].min(l[c]);
            hi[c] = hi[c].max(h[c]);
        }
    }
    let (qmin, qmax) = spec.qtype.range(spec.reduce_range, spec.symmetric);
    lo.iter()
        .zip(&hi)
        .map(|(&l, &h)| {
            let (l, h) = if l > h { (0.0, 0.0) } else { (l, h) };
            int8::scale_zp(l, h, qmin, qmax, spec.symmetric)
        })
        .collect()
}

/// The encoded codes of `w` (dims `dims`) with `params`, computed over blocks of
/// leading rows in parallel (the same codes as quantizing the whole tensor at once).
pub(super) fn encode_rows(
    w: &[f32],
    dims: &[usize],
    params: &[ScaleZp],
    spec: &WeightSpec,
) -> Result<Vec<u8>, QuantError> {
    let bytes = spec.qtype.bytes();
    if dims.len() < 2 || w.is_empty() {
        let codes = int8::quantize_with(w, dims, params, spec.axis, spec.qtype)?;
        return Ok(spec.qtype.encode(&codes));
    }
    let (rows_per_step, row) = row_steps(dims);
    let mut out = vec![0u8; w.len() * bytes];
    out.par_chunks_mut(rows_per_step * row * bytes)
        .zip(w.par_chunks(rows_per_step * row))
        .enumerate()
        .try_for_each(|(b, (o, chunk))| {
            let r0 = b * rows_per_step;
            let rows = chunk.len() / row;
            let mut cdims = dims.to_vec();
            cdims[0] = rows;
            // Per-channel along axis 0: this block's rows have their own parameters.
            let p = match spec.axis {
                Some(0) => &params[r0..r0 + rows],
                _ => params,
            };
            let codes = int8::quantize_with(chunk, &cdims, p, spec.axis, spec.qtype)?;
            o.copy_from_slice(&spec.qtype.encode(&codes));
            Ok(())
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_and_codes_made_by_row_blocks_equal_the_whole_tensor_at_once() {
        // 600 rows of 2000: more than one block of CODES_PER_STEP.
        let dims = [600usize, 2000];
        let w: Vec<f32> = (0..dims[0] * dims[1])
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0 + (i / 2000) as f32 * 0.01)
            .collect();
        for (qtype, symmetric, axis) in [
            (QType::I8, true, None),
            (QType::U8, false, None),
            (QType::I8, true, Some(1)),
            (QType::I8, true, Some(0)),
        ] {
            let spec = WeightSpec {
                qtype,
                symmetric,
                reduce_range: false,
                axis,
            };
            let params = int8::weight_params(&w, &dims, &spec).unwrap();
            assert_eq!(
                weight_params(&w, &dims, &spec).unwrap(),
                params,
                "{qtype:?} {axis:?}"
            );
            let whole = int8::quantize_with(&w, &dims, &params, axis, qtype).unwrap();
            let got = encode_rows(&w, &dims, &params, &spec).unwrap();
            assert_eq!(got, qtype.encode(&whole), "{qtype:?} {axis:?}");
        }
        let mut bad = w.clone();
        bad[700_001] = f32::NAN;
        let spec = WeightSpec {
            qtype: QType::I8,
            symmetric: true,
            reduce_range: false,
            axis: None,
        };
        let want = int8::weight_params(&bad, &dims, &spec).unwrap_err().0;
        assert_eq!(weight_params(&bad, &dims, &spec).unwrap_err().0, want);
    }
}
