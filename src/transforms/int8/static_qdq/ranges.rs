//! From calibration statistics to quantization parameters: scales and zero
//! points per activation, which Relu/Clip folds hold, which groups
//! `exclude-worst` leaves float, and the opset the chosen types need.
use super::*;

impl StaticQdq {
    /// A Relu/Clip is folded into its producer's QuantizeLinear only when the
    /// quantized range clips as it would: [0, ·] for Relu, within [min, max] for
    /// Clip. Symmetric ranges (Distribution calibration) keep the activation.
    pub(super) fn check_folds(
        &self,
        g: &Graph,
        plan: &mut Plan,
        cal: &calib::Calibration,
        outcome: &mut PassOutcome,
    ) {
        let mut keep = Vec::new();
        for (act, producer) in std::mem::take(&mut plan.merges) {
            let node = g.node(act);
            let (Some(i), Some(o)) = (node.input(0), node.output(0)) else {
                continue;
            };
            let range = cal.ranges.get(g.value_name(o)).copied();
            let bound = |slot: usize, attr: &str, default: f32| {
                node.input(slot)
                    .and_then(|v| constant(g, v))
                    .and_then(|(_, t)| t.to_f32().ok())
                    .and_then(|v| v.first().copied())
                    .or_else(|| node.attr_float(attr))
                    .unwrap_or(default)
            };
            let foldable = match (node.op_type.as_str(), range) {
                ("Relu", Some((lo, _))) => lo >= 0.0,
                ("Clip", Some((lo, hi))) => {
                    lo >= bound(1, "min", f32::NEG_INFINITY) && hi <= bound(2, "max", f32::INFINITY)
                }
                _ => false,
            };
            if foldable {
                keep.push((act, producer));
            } else {
                outcome.skip(
                    node.name(),
                    "kept: the calibrated range would not clip as the activation does",
                );
                plan.mark(i, Mark::Act);
                plan.range_from_output.push((i, o));
            }
        }
        plan.merges = keep;
    }

    /// Scale/zero point of every calibrated activation, after onnxruntime's range
    /// adjustments (a Relu/Clip input takes its output's range).
    pub(super) fn activation_params(
        &self,
        g: &Graph,
        plan: &Plan,
        cal: &calib::Calibration,
    ) -> Result<HashMap<ValueId, ScaleZp>> {
        let mut ranges: HashMap<ValueId, (f32, f32)> = HashMap::new();
        for (name, r) in &cal.ranges {
            if let Some(v) = g.find(name) {
                ranges.insert(v, *r);
            }
        }
        for &(i, o) in &plan.range_from_output {
            if g.value(i).uses().len() == 1 {
                if let Some(r) = ranges.get(&o).copied() {
                    ranges.insert(i, r);
                }
            }
        }
        let sym = self.config.activation_symmetric;
        let mut out = HashMap::new();
        for &v in &plan.order {
            if plan.marks.get(&v) != Some(&Mark::Act) {
                continue;
            }
            let Some(&(lo, hi)) = ranges.get(&v) else {
                continue; // not float
            };
            let p = self
                .type_of(plan, v)
                .params(lo, hi, sym)
                .map_err(|e| Error::tensor(g.value_name(v), e))?;
            out.insert(v, p);
        }
        Ok(out)
    }

    /// Raises the opset for per-axis DQ (13), float8 (19) or 16-bit Q/DQ (21);
    /// returns the domain Q/DQ nodes use. When the raise to 21 is refused (an op in
    /// the model changed meaning since its opset), int16 Q/DQ fall back to
    /// com.microsoft QuantizeLinear/DequantizeLinear, which take 16-bit types at
    /// any opset; the refusal left the model unchanged and is noted in the report.
    /// Other refusals stop the pass.
    pub(super) fn prepare_opset(
        &self,
        model: &mut Model,
        plan: &Plan,
        outcome: &mut PassOutcome,
    ) -> Result<String> {
        if plan
            .types
            .values()
            .any(|t| self.override_domain(*t).is_some())
        {
            model.require_opset("com.microsoft", 1);
        }
        if self.config.activation_type.is_float8() {
            crate::transforms::common::opset::raise_default_opset(model, 19)
                .map_err(|e| Error::invalid(format!("float8 activations need opset 19: {e}")))?;
            if model.ir_version.unwrap_or(0) < 9 {
                model.ir_version = Some(9);
            }
            return Ok(String::new());
        }
        if self.config.activation_type == ActivationType::Int16 {
            match crate::transforms::common::opset::raise_default_opset(model, 21) {
                Ok(()) => {
                    if model.ir_version.unwrap_or(0) < 10 {
                        model.ir_version = Some(10);
                    }
                    return Ok(String::new());
                }
                Err(e) => outcome.notes.push(format!(
                    "int16 Q/DQ written as com.microsoft QuantizeLinear/DequantizeLinear: the \
                     default opset stays {} because {e}",
                    model.opset("").unwrap_or(1)
                )),
            }
            model.require_opset("com.microsoft", 1);
            return Ok("com.microsoft".into());
        }
        if model.opset("").unwrap_or(1) < 13 {
            crate::transforms::common::opset::raise_default_opset(model, 13)?;
        }
        Ok(String::new())
    }

    /// The nodes of the MatMul/Gemm/Conv groups (nodes reading one activation, so
    /// sharing its quantization) `exclude-worst` leaves float, ranked by the
    /// predicted relative noise of their input on the calibrated grid,
    /// scale / (√12 · RMS): uniform rounding noise against the signal. Outlier
    /// channels or tokens stretch the range and show up here. No extra model runs:
    /// the calibration statistics decide, so this scales to LLMs.
    pub(super) fn worst_nodes(
        &self,
        g: &Graph,
        plan: &Plan,
        cal: &calib::Calibration,
        outcome: &mut PassOutcome,
    ) -> Result<BTreeSet<String>> {
        let mut groups: BTreeMap<ValueId, BTreeSet<String>> = BTreeMap::new();
        for w in &plan.weights {
            let n = g.node(w.node);
            if matches!(n.op_type.as_str(), "MatMul" | "Gemm" | "Conv") {
                if let Some(x) = n.input(0) {
                    groups.entry(x).or_default().insert(n.name().to_string());
                }
            }
        }
        let at = self.config.activation_type;
        let sym = self.config.activation_symmetric;
        let mut scored = Vec::new();
        for (x, members) in groups {
            let name = g.value_name(x);
            let (Some(&(lo, hi)), Some(&rms)) = (cal.ranges.get(name), cal.rms.get(name)) else {
                continue; // shares an upstream scale, or not float
            };
            if rms <= 0.0 {
                continue;
            }
            let p = at.params(lo, hi, sym).map_err(|e| Error::tensor(name, e))?;
            // float8's grid is relative (3 mantissa bits: a step of 1/8 of the
            // value's binade) down to its subnormal step, 2⁻⁹ of the scale: an
            // outlier-stretched range only hurts once typical values sink there.
            let step = if at.is_float8() {
                (rms as f64 / 8.0).max(p.scale as f64 / 512.0)
            } else {
                p.scale as f64
            };
            let noise = step / (12f64.sqrt() * rms as f64);
            scored.push((noise, name.to_string(), members));
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let keep = match &self.config.exclude_worst {
            ExcludeWorst::Count(n) => *n,
            ExcludeWorst::Auto(_) => scored
                .iter()
                .take_while(|s| s.0 > self.config.exclude_noise)
                .count(),
        };
        if let Some((noise, x, _)) = scored.get(keep) {
            outcome.notes.push(format!(
                "noisiest input kept quantized: '{x}', predicted noise {:.1}% of its RMS",
                noise * 100.0
            ));
        }
        let mut out = BTreeSet::new();
        for (rank, (noise, x, members)) in scored.into_iter().take(keep).enumerate() {
            let names: Vec<&str> = members.iter().map(String::as_str).collect();
            outcome.notes.push(format!(
                "left float {}: the int8 step of their input '{x}' is predicted to add noise \
                 of {:.1}% of its RMS (outliers stretch its range; worst #{})",
                names.join(", "),
                noise * 100.0,
                rank + 1
            ));
            outcome.count("nodes left float (worst)", members.len() as u64);
            out.extend(members);
        }
        Ok(out)
    }
}
