//! `rope`: recomputes the rotary tables of a decoder for a longer context, with
//! optional frequency scaling.
//!
//! Two storages are handled: cos/sin caches ([max_positions, rot_dim/2] rows of
//! cos(p·f)), and an inv_freq vector the graph multiplies by the positions. The
//! frequencies are read back from the tables themselves (atan2 of row 1 of the
//! caches), so no config file is needed; theta, which NTK scaling needs, follows
//! from the second frequency (f_1 = theta^(-2/d)).
use std::collections::BTreeSet;

use crate::error::{Error, Result};
use crate::ir::{float_tensor, DType, Graph, ValueId};
use crate::llm::{DecoderMap, RotaryKind};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: every frequency divided by F.
    Linear(f64),
    /// NTK-aware: theta multiplied by F^(d/(d-2)).
    Ntk(f64),
    /// YaRN: NTK-by-parts interpolation plus an attention factor on cos/sin.
    Yarn(Yarn),
}

/// YaRN's parameters (transformers' `rope_scaling` with `rope_type: yarn`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Yarn {
    pub factor: f64,
    /// The context the model was trained for; default: the rows of its caches.
    pub original: Option<usize>,
    /// Dimensions turning fewer than `beta_slow` times over `original` positions are
    /// interpolated (frequency / factor), more than `beta_fast` times kept.
    pub beta_fast: f64,
    pub beta_slow: f64,
    /// Multiplies cos and sin; default 0.1·ln(factor) + 1.
    pub attention: Option<f64>,
}

impl Yarn {
    fn attention_factor(&self) -> f64 {
        self.attention.unwrap_or(0.1 * self.factor.ln() + 1.0)
    }

    /// The frequencies, blended per dimension between kept and divided by the factor
    /// by a linear ramp between the correction dimensions of beta_fast and beta_slow.
    fn freqs(&self, freqs: &[f64], theta: f64, original: usize) -> Vec<f64> {
        let half = freqs.len();
        let d = 2.0 * half as f64;
        let correction = |turns: f64| {
            d * (original as f64 / (turns * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
        };
        let low = correction(self.beta_fast).floor().max(0.0);
        let mut high = correction(self.beta_slow).ceil().min(d - 1.0);
        if low == high {
            high += 0.001;
        }
        freqs
            .iter()
            .enumerate()
            .map(|(j, f)| {
                let ramp = ((j as f64 - low) / (high - low)).clamp(0.0, 1.0);
                f / self.factor * ramp + f * (1.0 - ramp)
            })
            .collect()
    }
}

fn parse_yarn(s: &str, factor: f64, rest: &[&str]) -> Result<Yarn> {
    let mut y = Yarn {
        factor,
        original: None,
        beta_fast: 32.0,
        beta_slow: 1.0,
        attention: None,
    };
    for kv in rest {
        let bad = || {
            Error::invalid(format!(
                "--scaling '{s}': '{kv}': expected original=N, beta_fast=X, beta_slow=X or \
                 attention=X"
            ))
        };
        let (k, v) = kv.split_once('=').ok_or_else(bad)?;
        let x: f64 = v
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite() && *x > 0.0)
            .ok_or_else(bad)?;
        match k {
            "original" => y.original = Some(x as usize),
            "beta_fast" => y.beta_fast = x,
            "beta_slow" => y.beta_slow = x,
            "attention" => y.attention = Some(x),
            _ => return Err(bad()),
        }
    }
    Ok(y)
}

impl std::str::FromStr for RopeScaling {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (kind, f) = s.split_once(':').ok_or_else(|| {
            Error::invalid(format!(
                "--scaling '{s}': expected linear:F, ntk:F or yarn:F[,original=N,beta_fast=X,\
                 beta_slow=X,attention=X]"
            ))
        })?;
        let mut parts = f.split(',');
        let f = parts.next().unwrap_or_default();
        let rest: Vec<&str> = parts.collect();
        if kind != "yarn" && !rest.is_empty() {
            return Err(Error::invalid(format!(
                "--scaling '{s}': only yarn takes parameters"
            )));
        }
        let f: f64 = f
            .parse()
            .ok()
            .filter(|f: &f64| f.is_finite() && *f >= 1.0)
            .ok_or_else(|| Error::invalid(format!("--scaling '{s}': F must be a number ≥ 1")))?;
        match kind {
            "linear" => Ok(RopeScaling::Linear(f)),
            "ntk" => Ok(RopeScaling::Ntk(f)),
            "yarn" => parse_yarn(s, f, &rest).map(RopeScaling::Yarn),
            _ => Err(Error::invalid(format!(
                "--scaling '{s}': unknown kind '{kind}' (linear, ntk, yarn)"
            ))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RopeReport {
    /// The tables rewritten (initializer names).
    pub tables: Vec<String>,
    /// Rows of the caches before (None for inv_freq).
    pub old_max: Option<usize>,
    pub theta: f64,
}

/// Float initializers `v` is computed from (within 12 nodes).
fn float_inits(g: &Graph, v: ValueId) -> Vec<ValueId> {
    let mut found = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        if let Some(t) = g.initializer(v) {
            if matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) {
                found.insert(v);
            }
        }
        if let Some(p) = g.producer(v) {
            if d < 12 {
                for i in g.node(p).inputs().iter().flatten() {
                    stack.push((*i, d + 1));
                }
            }
        }
    }
    found.into_iter().collect()
}

fn scaled(freqs: &[f64], scaling: RopeScaling) -> (Vec<f64>, f64) {
    let half = freqs.len();
    let d = 2.0 * half as f64;
    // f_1 = theta^(-2/d); a single frequency carries no theta.
    let theta = if half > 1 {
        freqs[1].powf(-d / 2.0)
    } else {
        0.0
    };
    let out = match scaling {
        RopeScaling::None => freqs.to_vec(),
        RopeScaling::Linear(f) => freqs.iter().map(|x| x / f).collect(),
        RopeScaling::Ntk(f) => {
            let t = theta * f.powf(d / (d - 2.0));
            (0..half).map(|j| t.powf(-2.0 * j as f64 / d)).collect()
        }
        // Needs the original context length: see `cache_values`.
        RopeScaling::Yarn(_) => freqs.to_vec(),
    };
    (out, theta)
}

/// Where a decoder stores its rotary frequencies.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RotaryTables {
    /// cos/sin caches, [max_positions, rot_dim/2].
    Caches { cos: ValueId, sin: ValueId },
    /// An inv_freq vector [rot_dim/2] multiplied by the positions in the graph.
    InvFreq(ValueId),
}

/// The rotary tables of the first layer that has a rotary embedding.
pub(crate) fn rotary_tables(g: &Graph, map: &DecoderMap) -> Result<RotaryTables> {
    let rot = map
        .layers
        .iter()
        .find_map(|l| l.attention.rotary.clone())
        .ok_or_else(|| Error::invalid("no rotary embedding found in the decoder"))?;
    if rot.kind == RotaryKind::InsideAttention && rot.cos.is_none() {
        return Err(Error::invalid(
            "the rotary tables of the attention node were not found",
        ));
    }
    let value = |n: &Option<String>| n.as_deref().and_then(|n| g.find(n));
    let (Some(cos), Some(sin)) = (value(&rot.cos), value(&rot.sin)) else {
        return Err(Error::invalid("the rotary cos/sin values were not found"));
    };
    let cos_src = float_inits(g, cos);
    let sin_src = float_inits(g, sin);
    let dims = |v: ValueId| g.initializer(v).map(|t| t.dims.clone()).unwrap_or_default();
    match (cos_src.as_slice(), sin_src.as_slice()) {
        ([c], [s]) if c != s && dims(*c).len() == 2 && dims(*c) == dims(*s) => {
            Ok(RotaryTables::Caches { cos: *c, sin: *s })
        }
        ([f], [f2]) if f == f2 && dims(*f).len() == 1 => Ok(RotaryTables::InvFreq(*f)),
        _ => Err(Error::invalid(format!(
            "rotary: expected cos/sin caches or one inv_freq initializer, found {} and {} \
             float initializers behind cos and sin",
            cos_src.len(),
            sin_src.len()
        ))),
    }
}

/// cos/sin caches for `max_length` positions, [max_length, rot_dim/2] row-major.
pub(crate) struct CacheValues {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
    /// Rows of the stored caches (None for inv_freq).
    pub old_rows: Option<usize>,
    pub theta: f64,
}

/// The caches `tables` give for `max_length` positions under `scaling`. Unscaled
/// caches keep their stored rows bit for bit; other rows are cos/sin(p·f).
pub(crate) fn cache_values(
    g: &Graph,
    tables: RotaryTables,
    max_length: usize,
    scaling: RopeScaling,
) -> Result<CacheValues> {
    let (freqs, stored) = match tables {
        RotaryTables::Caches { cos, sin } => {
            let ct = g.initializer(cos).expect("found as initializer");
            let st = g.initializer(sin).expect("found as initializer");
            let (rows, half) = (ct.dims[0] as usize, ct.dims[1] as usize);
            if rows < 2 {
                return Err(Error::tensor(
                    ct.name(),
                    "a rotary cache needs at least 2 rows",
                ));
            }
            let (c, s) = (ct.to_f32()?, st.to_f32()?);
            // Row 1 holds cos(f)/sin(f) with 0 < f ≤ 1: atan2 recovers f exactly enough.
            let freqs: Vec<f64> = (0..half)
                .map(|j| (s[half + j] as f64).atan2(c[half + j] as f64))
                .collect();
            (freqs, Some((rows, c, s)))
        }
        RotaryTables::InvFreq(f) => {
            let t = g.initializer(f).expect("found as initializer");
            let freqs: Vec<f64> = t.to_f32()?.iter().map(|&x| x as f64).collect();
            (freqs, None)
        }
    };
    let half = freqs.len();
    let (mut new, theta) = scaled(&freqs, scaling);
    let mut gain = 1.0;
    if let RopeScaling::Yarn(y) = scaling {
        let original = y
            .original
            .or(stored.as_ref().map(|(rows, _, _)| *rows))
            .ok_or_else(|| {
                Error::invalid(
                    "--scaling yarn: the model stores inv_freq, not caches: give the trained \
                     context as yarn:F,original=N",
                )
            })?;
        new = y.freqs(&freqs, theta, original);
        gain = y.attention_factor();
    }
    let keep = match &stored {
        Some((rows, _, _)) if scaling == RopeScaling::None => (*rows).min(max_length),
        _ => 0,
    };
    let mut cos = Vec::with_capacity(max_length * half);
    let mut sin = Vec::with_capacity(max_length * half);
    if let Some((_, c, s)) = &stored {
        cos.extend_from_slice(&c[..keep * half]);
        sin.extend_from_slice(&s[..keep * half]);
    }
    for p in keep..max_length {
        for f in &new {
            let a = p as f64 * f;
            cos.push((gain * a.cos()) as f32);
            sin.push((gain * a.sin()) as f32);
        }
    }
    Ok(CacheValues {
        cos,
        sin,
        half,
        old_rows: stored.map(|(rows, _, _)| rows),
        theta,
    })
}

/// Rewrites the rotary tables of every layer for `max_length` positions.
pub fn extend_rope(g: &mut Graph, max_length: usize, scaling: RopeScaling) -> Result<RopeReport> {
    let map = DecoderMap::build(g)?;
    match rotary_tables(g, &map)? {
        tables @ RotaryTables::Caches { cos, sin } => {
            let v = cache_values(g, tables, max_length, scaling)?;
            let ct = g.initializer(cos).expect("initializer");
            let st = g.initializer(sin).expect("initializer");
            let (dtype, cn, sn) = (ct.dtype(), ct.name().to_string(), st.name().to_string());
            let dims = vec![max_length as i64, v.half as i64];
            g.set_initializer(cos, float_tensor(&cn, dtype, dims.clone(), &v.cos));
            g.set_initializer(sin, float_tensor(&sn, dtype, dims, &v.sin));
            Ok(RopeReport {
                tables: vec![cn, sn],
                old_max: v.old_rows,
                theta: v.theta,
            })
        }
        RotaryTables::InvFreq(_) if matches!(scaling, RopeScaling::Yarn(_)) => Err(Error::invalid(
            "--scaling yarn: the model computes cos/sin from inv_freq, which cannot carry \
                 YaRN's attention factor; yarn needs cos/sin caches",
        )),
        RotaryTables::InvFreq(f) => {
            let t = g.initializer(f).expect("found as initializer");
            let freqs: Vec<f64> = t.to_f32()?.iter().map(|&x| x as f64).collect();
            let (new, theta) = scaled(&freqs, scaling);
            let vals: Vec<f32> = new.iter().map(|&x| x as f32).collect();
            let name = g.value_name(f).to_string();
            let tensor = float_tensor(&name, t.dtype(), t.dims.clone(), &vals);
            g.set_initializer(f, tensor);
            Ok(RopeReport {
                tables: vec![name],
                old_max: None,
                theta,
            })
        }
    }
}
