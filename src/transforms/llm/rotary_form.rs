//! `rope --rotary FORM`: converts each layer's rotary embedding between the fused
//! nodes and the decomposed rotate_half subgraph, found through the decoder map.
//!
//! - `decomposed`: `x·cos + rotate_half(x)·sin` with Slice/Neg/Concat/Mul/Add, the
//!   cos/sin rows gathered by the position ids (`Gather(cache, position_ids)`) when
//!   the fused node reads caches, duplicated to the full head size (Concat(c, c)).
//!   A 3-D input [batch, seq, heads·head_dim] is reshaped to [batch, seq, heads,
//!   head_dim] around the rotation.
//! - `fused`: ONNX `RotaryEmbedding` (opset 23; the model's default opset is raised
//!   when no op in it changed meaning) on the 4-D [batch, heads, seq, head_dim]
//!   input, fed the first half of the decomposed form's cos/sin rows
//!   ([batch, seq, head_dim/2], no position ids), so the values are the same.
//! - `com.microsoft`: `com.microsoft::RotaryEmbedding(x, position_ids, cos_cache,
//!   sin_cache)`; the caches are the model's own ([rows, head_dim/2] initializers) or
//!   computed from inv_freq for `max_length` rows (default: the model's cache rows,
//!   else [`DEFAULT_CONTEXT_LENGTH`]).
//!
//! A fused node converts to another fused form through the decomposed one. Refused,
//! naming the layer and the part: interleaved or partial rotary, rotary applied
//! inside GroupQueryAttention, a decomposed rotation whose Slice/Neg/Concat/Mul/Add
//! pattern or cos/sin layout is not the one described above.
use std::collections::HashMap;

use super::genai::DEFAULT_CONTEXT_LENGTH;
use super::kv_cache::float_dtype;
use super::rope::{cache_values, rotary_tables, RopeScaling, RotaryTables};
use crate::error::{Error, Result};
use crate::ir::{float_tensor, Attribute, Graph, Model, NodeId, NodeSpec, Tensor, ValueId};
use crate::llm::{DecoderMap, RotaryKind};
use crate::rewrite::matchers::const_ints;
use crate::rewrite::PASS_KEY;
use crate::transforms::common::opset::raise_default_opset;

const NAME: &str = "rope-rotary-form";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotaryForm {
    /// Slice/Neg/Concat/Mul/Add.
    Decomposed,
    /// ONNX RotaryEmbedding (opset 23).
    Fused,
    /// com.microsoft RotaryEmbedding.
    Microsoft,
}

impl std::str::FromStr for RotaryForm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "decomposed" => Ok(Self::Decomposed),
            "fused" => Ok(Self::Fused),
            "com.microsoft" => Ok(Self::Microsoft),
            _ => Err(Error::invalid(format!(
                "--rotary '{s}': expected decomposed, fused or com.microsoft"
            ))),
        }
    }
}

impl RotaryForm {
    fn kind(self) -> RotaryKind {
        match self {
            Self::Decomposed => RotaryKind::Decomposed,
            Self::Fused => RotaryKind::RotaryEmbedding,
            Self::Microsoft => RotaryKind::MicrosoftRotaryEmbedding,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct RotaryFormReport {
    /// Rotations (q and k of every layer) rewritten.
    pub converted: usize,
    /// Rows of the com.microsoft caches, when they were computed.
    pub cache_rows: Option<usize>,
}

fn part_err(layer: usize, part: &str, reason: impl Into<String>) -> Error {
    Error::DecoderMap {
        at: format!("layer {layer}"),
        step: part.to_string(),
        reason: reason.into(),
    }
}

/// Converts every layer's rotary to `form`. Works on a copy: on an error the model
/// is unchanged.
pub fn convert_rotary(
    model: &mut Model,
    form: RotaryForm,
    max_length: Option<usize>,
) -> Result<RotaryFormReport> {
    let mut m = model.clone();
    let mut report = RotaryFormReport::default();
    let map = DecoderMap::build(&m.graph)?;
    check_convertible(&map)?;
    let all = rotations(&m.graph, &map, |_| true)?;
    report.converted = all.iter().filter(|r| r.kind != form.kind()).count();
    // Every fused rotation not already in the target form goes through the
    // decomposed one.
    let fused: Vec<&Rotation> = all
        .iter()
        .filter(|r| r.kind != RotaryKind::Decomposed && r.kind != form.kind())
        .collect();
    let opset = m.opset("").unwrap_or(1);
    let mut b = Builder {
        g: &mut m.graph,
        opset,
        memo: HashMap::new(),
    };
    for r in fused {
        b.fused_to_decomposed(r)?;
    }
    // The replaced nodes go before the graph is mapped again.
    m.graph.remove_dead();
    m.graph.toposort()?;
    if form != RotaryForm::Decomposed {
        let map = DecoderMap::build(&m.graph)?;
        let dec = rotations(&m.graph, &map, |k| k == RotaryKind::Decomposed)?;
        if form == RotaryForm::Fused && !dec.is_empty() {
            raise_default_opset(&mut m, 23)?;
        }
        let caches = if form == RotaryForm::Microsoft && !dec.is_empty() {
            let tables = rotary_tables(&m.graph, &map)
                .map_err(|e| part_err(dec[0].layer, "rotary", e.to_string()))?;
            let stored = match tables {
                RotaryTables::Caches { cos, .. } => {
                    m.graph.initializer(cos).map(|t| t.dims[0] as usize)
                }
                RotaryTables::InvFreq(_) => None,
            };
            let rows = max_length.or(stored).unwrap_or(DEFAULT_CONTEXT_LENGTH);
            let v = cache_values(&m.graph, tables, rows, RopeScaling::None)?;
            let dtype = float_dtype(&m.graph, &map);
            let dims = vec![rows as i64, v.half as i64];
            let g = &mut m.graph;
            let (cn, sn) = (g.fresh_name("cos_cache"), g.fresh_name("sin_cache"));
            let c = g.add_initializer(float_tensor(&cn, dtype, dims.clone(), &v.cos))?;
            let s = g.add_initializer(float_tensor(&sn, dtype, dims, &v.sin))?;
            report.cache_rows = Some(rows);
            Some((c, s))
        } else {
            None
        };
        let opset = m.opset("").unwrap_or(1);
        let mut b = Builder {
            g: &mut m.graph,
            opset,
            memo: HashMap::new(),
        };
        for r in &dec {
            b.decomposed_to_fused(r, form, caches)?;
        }
        m.graph.toposort()?;
        if form == RotaryForm::Microsoft && !dec.is_empty() {
            m.require_opset("com.microsoft", 1);
        }
    }
    m.graph.remove_dead();
    m.graph.verify()?;
    // The converted graph must still map, with the requested rotary in every layer.
    let after = DecoderMap::build(&m.graph)?;
    for l in &after.layers {
        let kind = l.attention.rotary.as_ref().map(|r| r.kind);
        if kind != Some(form.kind()) {
            return Err(part_err(
                l.index,
                "rotary",
                format!(
                    "after conversion the rotary is {kind:?}, not {:?}",
                    form.kind()
                ),
            ));
        }
    }
    *model = m;
    Ok(report)
}

fn check_convertible(map: &DecoderMap) -> Result<()> {
    for l in &map.layers {
        match &l.attention.rotary {
            None => return Err(part_err(l.index, "rotary", "no rotary embedding found")),
            Some(r) if r.kind == RotaryKind::InsideAttention => {
                return Err(part_err(
                    l.index,
                    "rotary",
                    "the rotary is applied inside GroupQueryAttention (do_rotary=1); \
                     there is no separate rotation to convert",
                ))
            }
            Some(r) if r.interleaved => {
                return Err(part_err(
                    l.index,
                    "rotary",
                    "interleaved rotary is not converted",
                ))
            }
            Some(r) if r.nodes.len() != 2 => {
                return Err(part_err(
                    l.index,
                    "rotary",
                    format!(
                        "k: no rotation found (expected one on q and one on k, found {}: {})",
                        r.nodes.len(),
                        r.nodes.join(", ")
                    ),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// One rotation (q or k of a layer): the fused node, or the final Add.
struct Rotation {
    layer: usize,
    which: &'static str,
    node: NodeId,
    kind: RotaryKind,
    head_size: usize,
    position: Option<ValueId>,
}

fn rotations(
    g: &Graph,
    map: &DecoderMap,
    want: impl Fn(RotaryKind) -> bool,
) -> Result<Vec<Rotation>> {
    let by_label: HashMap<String, NodeId> = g
        .nodes()
        .map(|(id, _)| (crate::llm::label(g, id), id))
        .collect();
    let mut out = Vec::new();
    for l in &map.layers {
        let Some(r) = &l.attention.rotary else {
            continue;
        };
        if !want(r.kind) {
            continue;
        }
        for (which, label) in ["q", "k"].into_iter().zip(&r.nodes) {
            let node = *by_label.get(label).ok_or_else(|| {
                part_err(
                    l.index,
                    "rotary",
                    format!("{which}: node '{label}' not found"),
                )
            })?;
            out.push(Rotation {
                layer: l.index,
                which,
                node,
                kind: r.kind,
                head_size: l.attention.head_size,
                position: r.position_input,
            });
        }
    }
    Ok(out)
}

struct Builder<'a> {
    g: &'a mut Graph,
    opset: i64,
    /// Shared cos/sin values: (source, extra, what) -> value.
    memo: HashMap<(ValueId, Option<ValueId>, &'static str), ValueId>,
}

impl Builder<'_> {
    fn add(
        &mut self,
        domain: &str,
        op: &str,
        base: &str,
        inputs: Vec<Option<ValueId>>,
        attrs: Vec<Attribute>,
    ) -> Result<ValueId> {
        let out = self.g.fresh_name(&format!("{base}/{op}_output_0"));
        let mut spec = NodeSpec::new(domain, op)
            .name(self.g.fresh_node_name(&format!("{base}/{op}")))
            .inputs(inputs)
            .output(out)
            .meta(PASS_KEY, NAME);
        let mut attrs = attrs;
        attrs.sort_by(|a, b| a.name.cmp(&b.name));
        spec.attributes = attrs;
        let id = self.g.add_node(spec)?;
        Ok(self.g.node(id).output(0).expect("one output declared"))
    }

    fn ints(&mut self, base: &str, vals: &[i64]) -> Result<ValueId> {
        let name = self.g.fresh_name(&format!("{base}/const"));
        self.g
            .add_initializer(Tensor::from_i64(name, vec![vals.len() as i64], vals))
    }

    fn unsqueeze(&mut self, base: &str, x: ValueId, axis: i64) -> Result<ValueId> {
        if self.opset >= 13 {
            let axes = self.ints(base, &[axis])?;
            self.add("", "Unsqueeze", base, vec![Some(x), Some(axes)], vec![])
        } else {
            self.add(
                "",
                "Unsqueeze",
                base,
                vec![Some(x)],
                vec![Attribute::ints("axes", vec![axis])],
            )
        }
    }

    fn slice_last(&mut self, base: &str, x: ValueId, start: i64, end: i64) -> Result<ValueId> {
        let s = self.ints(base, &[start])?;
        let e = self.ints(base, &[end])?;
        let a = self.ints(base, &[-1])?;
        self.add(
            "",
            "Slice",
            base,
            vec![Some(x), Some(s), Some(e), Some(a)],
            vec![],
        )
    }

    /// Replaces the rotation's output with `new` and removes the old node.
    fn replace(&mut self, old: NodeId, new: ValueId) -> Result<()> {
        let out = self.g.node(old).output(0).expect("a rotary output");
        self.g.replace_all_uses(out, new, true)?;
        Ok(())
    }

    /// Full-width cos or sin rows [batch, seq, 1|heads..., head_dim] broadcastable
    /// against the rotated tensor: Unsqueeze(Concat(rows, rows), axis).
    fn full_rows(
        &mut self,
        base: &str,
        table: ValueId,
        pos: Option<ValueId>,
        axis: i64,
    ) -> Result<ValueId> {
        let key = (table, pos, if axis == 1 { "bhsd" } else { "bshd" });
        if let Some(v) = self.memo.get(&key) {
            return Ok(*v);
        }
        let rows = match pos {
            Some(p) => self.add(
                "",
                "Gather",
                base,
                vec![Some(table), Some(p)],
                vec![Attribute::int("axis", 0)],
            )?,
            None => table,
        };
        let full = self.add(
            "",
            "Concat",
            base,
            vec![Some(rows), Some(rows)],
            vec![Attribute::int("axis", -1)],
        )?;
        let v = self.unsqueeze(base, full, axis)?;
        self.memo.insert(key, v);
        Ok(v)
    }

    fn fused_to_decomposed(&mut self, r: &Rotation) -> Result<()> {
        let g = &*self.g;
        let node = g.node(r.node);
        let err = |reason: String| part_err(r.layer, "rotary", format!("{}: {reason}", r.which));
        let microsoft = node.domain() == "com.microsoft";
        let dim = node.attr_int("rotary_embedding_dim").unwrap_or(0);
        if dim != 0 && dim as usize != r.head_size {
            return Err(err(format!(
                "partial rotary (rotary_embedding_dim {dim} of head size {}) is not converted",
                r.head_size
            )));
        }
        if node.attr_int("interleaved").unwrap_or(0) != 0 {
            return Err(err("interleaved rotary is not converted".into()));
        }
        let x = node.input(0).ok_or_else(|| err("no input".into()))?;
        let (cos, sin, pos) = if microsoft {
            (node.input(2), node.input(3), node.input(1))
        } else {
            (node.input(1), node.input(2), node.input(3))
        };
        let (Some(cos), Some(sin)) = (cos, sin) else {
            return Err(err("cos or sin input missing".into()));
        };
        if microsoft && pos.is_none() {
            return Err(err(
                "com.microsoft RotaryEmbedding without position_ids".into()
            ));
        }
        let rank = rank_of(g, x).unwrap_or(if node.attr_int("num_heads").is_some() {
            3
        } else {
            4
        });
        let d = r.head_size as i64;
        let base = format!("/model/layers.{}/self_attn/rotary_{}", r.layer, r.which);
        let (xr, axis) = if rank == 3 {
            let shape = self.ints(&base, &[0, 0, -1, d])?;
            (
                self.add("", "Reshape", &base, vec![Some(x), Some(shape)], vec![])?,
                2,
            )
        } else if rank == 4 {
            (x, 1)
        } else {
            return Err(err(format!("input of rank {rank}, expected 3 or 4")));
        };
        let c = self.full_rows(&base, cos, pos, axis)?;
        let s = self.full_rows(&base, sin, pos, axis)?;
        let x1 = self.slice_last(&base, xr, 0, d / 2)?;
        let x2 = self.slice_last(&base, xr, d / 2, i64::MAX)?;
        let neg = self.add("", "Neg", &base, vec![Some(x2)], vec![])?;
        let rot = self.add(
            "",
            "Concat",
            &base,
            vec![Some(neg), Some(x1)],
            vec![Attribute::int("axis", -1)],
        )?;
        let xc = self.add("", "Mul", &base, vec![Some(xr), Some(c)], vec![])?;
        let rs = self.add("", "Mul", &base, vec![Some(rot), Some(s)], vec![])?;
        let mut y = self.add("", "Add", &base, vec![Some(xc), Some(rs)], vec![])?;
        if rank == 3 {
            let shape = self.ints(&base, &[0, 0, -1])?;
            y = self.add("", "Reshape", &base, vec![Some(y), Some(shape)], vec![])?;
        }
        self.replace(r.node, y)
    }

    fn decomposed_to_fused(
        &mut self,
        r: &Rotation,
        form: RotaryForm,
        caches: Option<(ValueId, ValueId)>,
    ) -> Result<()> {
        let p = match_rotate_half(self.g, r.node, r.head_size)
            .map_err(|e| part_err(r.layer, "rotary", format!("{}: {e}", r.which)))?;
        let base = format!("/model/layers.{}/self_attn/rotary_{}", r.layer, r.which);
        // Fused nodes read [batch, heads, seq, head_dim].
        let x = if p.bshd {
            self.add(
                "",
                "Transpose",
                &base,
                vec![Some(p.x)],
                vec![Attribute::ints("perm", vec![0, 2, 1, 3])],
            )?
        } else {
            p.x
        };
        let mut y = match form {
            RotaryForm::Fused => {
                let c = self.half_rows(&base, p.cos, r.head_size)?;
                let s = self.half_rows(&base, p.sin, r.head_size)?;
                self.add(
                    "",
                    "RotaryEmbedding",
                    &base,
                    vec![Some(x), Some(c), Some(s)],
                    vec![],
                )?
            }
            RotaryForm::Microsoft => {
                let (c, s) = caches.expect("caches prepared for com.microsoft");
                let pos = r.position.ok_or_else(|| {
                    part_err(
                        r.layer,
                        "rotary",
                        format!("{}: no position ids found for the rotary", r.which),
                    )
                })?;
                self.add(
                    "com.microsoft",
                    "RotaryEmbedding",
                    &base,
                    vec![Some(x), Some(pos), Some(c), Some(s)],
                    vec![Attribute::int("interleaved", 0)],
                )?
            }
            RotaryForm::Decomposed => unreachable!("decomposed is not a fused target"),
        };
        if p.bshd {
            y = self.add(
                "",
                "Transpose",
                &base,
                vec![Some(y)],
                vec![Attribute::ints("perm", vec![0, 2, 1, 3])],
            )?;
        }
        self.replace(r.node, y)
    }

    /// [batch, seq, head_dim/2] rows from a full-width table [batch, seq, head_dim]:
    /// the first half of Concat(h, h) is h; otherwise a Slice (rotate_half's tables
    /// repeat their first half).
    fn half_rows(&mut self, base: &str, table: ValueId, head: usize) -> Result<ValueId> {
        if let Some(v) = self.memo.get(&(table, None, "half")) {
            return Ok(*v);
        }
        let g = &*self.g;
        let dup = g.producer(table).and_then(|c| {
            let n = g.node(c);
            let axis = n.attr_int("axis")?;
            (n.is("", "Concat")
                && n.inputs().len() == 2
                && n.input(0) == n.input(1)
                && (axis == -1 || axis == 2))
                .then(|| n.input(0))
                .flatten()
        });
        let v = match dup {
            Some(h) => h,
            None => self.slice_last(base, table, 0, head as i64 / 2)?,
        };
        self.memo.insert((table, None, "half"), v);
        Ok(v)
    }
}

fn rank_of(g: &Graph, v: ValueId) -> Option<usize> {
    if let Some((_, Some(dims))) = g
        .info(v)
        .and_then(|i| i.ty.as_ref())
        .and_then(|t| t.tensor_parts())
    {
        return Some(dims.len());
    }
    let p = g.node(g.producer(v)?);
    match p.op_type.as_str() {
        "Transpose" => p.attr("perm").map(|a| a.ints.len()),
        "Reshape" => const_ints(g, p.input(1)?).map(|s| s.len()),
        _ => None,
    }
}

/// The parts of a decomposed rotation Add(Mul(x, cos), Mul(rotate_half(x), sin)).
struct RotateHalf {
    x: ValueId,
    /// [batch, seq, head_dim] tables (before the Unsqueeze over the heads axis).
    cos: ValueId,
    sin: ValueId,
    /// x is [batch, seq, heads, head_dim] (the tables unsqueezed on axis 2).
    bshd: bool,
}

fn match_rotate_half(
    g: &Graph,
    add: NodeId,
    head: usize,
) -> std::result::Result<RotateHalf, String> {
    let node = g.node(add);
    if !node.is("", "Add") || node.inputs().len() != 2 {
        return Err(format!("'{}' is not the rotation's Add", node.name()));
    }
    let mul = |v: Option<ValueId>| -> std::result::Result<(ValueId, ValueId), String> {
        let m = v
            .and_then(|v| g.producer(v))
            .map(|m| g.node(m))
            .filter(|m| m.is("", "Mul"))
            .ok_or("an input of the Add is not a Mul")?;
        Ok((
            m.input(0).ok_or("Mul input")?,
            m.input(1).ok_or("Mul input")?,
        ))
    };
    let is_concat = |v: ValueId| g.producer(v).is_some_and(|p| g.node(p).is("", "Concat"));
    let (a0, a1) = mul(node.input(0))?;
    let (b0, b1) = mul(node.input(1))?;
    // The sin product multiplies rotate_half(x) (a Concat).
    let ((x, cos), (rot, sin)) = match (
        is_concat(a0) || is_concat(a1),
        is_concat(b0) || is_concat(b1),
    ) {
        (false, true) => ((a0, a1), if is_concat(b0) { (b0, b1) } else { (b1, b0) }),
        (true, false) => ((b0, b1), if is_concat(a0) { (a0, a1) } else { (a1, a0) }),
        _ => return Err("no Mul of rotate_half(x) (a Concat) by sin next to x·cos".into()),
    };
    // Mul(x, cos) may list cos first: x is the one the rotate_half slices read.
    let cat = g.node(g.producer(rot).expect("checked"));
    let half = head as i64 / 2;
    let last = |n: &crate::ir::Node| {
        let a = n.attr_int("axis").unwrap_or(0);
        a == -1 || a == 3
    };
    if cat.inputs().len() != 2 || !last(cat) {
        return Err("rotate_half's Concat is not two parts on the last axis".into());
    }
    let neg = cat
        .input(0)
        .and_then(|v| g.producer(v))
        .map(|n| g.node(n))
        .filter(|n| n.is("", "Neg"))
        .ok_or("rotate_half's Concat does not start with Neg")?;
    let slice = |v: Option<ValueId>| -> std::result::Result<(ValueId, i64, i64), String> {
        let s = v
            .and_then(|v| g.producer(v))
            .map(|n| g.node(n))
            .filter(|n| n.is("", "Slice"))
            .ok_or("rotate_half's halves are not Slices")?;
        let start = s
            .input(1)
            .and_then(|v| const_ints(g, v))
            .ok_or("Slice start")?;
        let end = s
            .input(2)
            .and_then(|v| const_ints(g, v))
            .ok_or("Slice end")?;
        let axes = s
            .input(3)
            .and_then(|v| const_ints(g, v))
            .unwrap_or_default();
        let steps = s.input(4).and_then(|v| const_ints(g, v)).unwrap_or(vec![1]);
        if start.len() != 1 || end.len() != 1 || !(axes == [-1] || axes == [3]) || steps != [1] {
            return Err("rotate_half's Slice is not one range on the last axis".into());
        }
        Ok((s.input(0).ok_or("Slice input")?, start[0], end[0]))
    };
    let (x2, s2, _) = slice(neg.input(0))?;
    let (x1, s1, e1) = slice(cat.input(1))?;
    if s1 != 0 || e1 != half || s2 != half {
        return Err(format!(
            "rotate_half splits at {s2}/{e1}, not at half the head size {half}"
        ));
    }
    let (x, cos) = if x1 == x {
        (x, cos)
    } else if x1 == cos {
        (cos, x)
    } else {
        return Err("rotate_half does not read the x multiplied by cos".into());
    };
    if x2 != x {
        return Err("the two halves of rotate_half read different tensors".into());
    }
    // cos/sin: Unsqueeze(table [batch, seq, head_dim], 1 or 2).
    let table = |v: ValueId, what: &str| -> std::result::Result<(ValueId, i64), String> {
        let u = g
            .producer(v)
            .map(|n| g.node(n))
            .filter(|n| n.is("", "Unsqueeze"))
            .ok_or(format!("{what} is not Unsqueeze(table, heads axis)"))?;
        let axes = u
            .input(1)
            .and_then(|a| const_ints(g, a))
            .or_else(|| u.attr("axes").map(|a| a.ints.clone()))
            .ok_or(format!("{what}: Unsqueeze axes not constant"))?;
        match axes.as_slice() {
            [1] | [2] => Ok((u.input(0).ok_or("Unsqueeze input")?, axes[0])),
            _ => Err(format!(
                "{what}: Unsqueeze on axes {axes:?}, expected 1 or 2"
            )),
        }
    };
    let (cos, ca) = table(cos, "cos")?;
    let (sin, sa) = table(sin, "sin")?;
    if ca != sa {
        return Err("cos and sin are unsqueezed on different axes".into());
    }
    Ok(RotateHalf {
        x,
        cos,
        sin,
        bshd: ca == 2,
    })
}
