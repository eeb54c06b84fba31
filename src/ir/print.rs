//! The one deterministic text form of a model, used by `onnxq diff`, `--dump-dir` and
//! insta snapshots: one line per node, no ids, no addresses, no hash-map order.
use std::collections::BTreeMap;
use std::fmt::Write;

use super::{AttrValue, Attribute, Dim, Graph, Model, Tensor, TypeInfo, TypeKind};

/// Prints the whole model.
pub fn model_to_string(m: &Model) -> String {
    let mut out = String::new();
    let opsets: Vec<String> = m
        .opset_import
        .iter()
        .map(|o| {
            format!(
                "{}={}",
                if o.domain().is_empty() {
                    "ai.onnx"
                } else {
                    o.domain()
                },
                o.version.unwrap_or(0)
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "model ir={} opsets=[{}]",
        m.ir_version.unwrap_or(0),
        opsets.join(", ")
    );
    print_graph(&mut out, &m.graph, 0);
    for f in &m.functions {
        let _ = writeln!(
            out,
            "function {}::{}",
            f.domain.as_deref().unwrap_or(""),
            f.name.as_deref().unwrap_or("")
        );
        print_graph(&mut out, &f.body, 1);
    }
    out
}

pub fn type_to_string(t: &TypeInfo) -> String {
    match &t.kind {
        TypeKind::Tensor { elem_type, shape } => {
            format!(
                "{}{}",
                super::DType::from_code(elem_type.unwrap_or(0)),
                shape_to_string(
                    shape
                        .as_ref()
                        .map(|s| s.iter().map(|d| d.dim.clone()).collect::<Vec<_>>())
                        .as_deref()
                )
            )
        }
        TypeKind::SparseTensor { elem_type, .. } => format!(
            "sparse<{}>",
            super::DType::from_code(elem_type.unwrap_or(0))
        ),
        TypeKind::Sequence(e) => format!(
            "seq<{}>",
            e.as_ref().map_or("?".into(), |e| type_to_string(e))
        ),
        TypeKind::Map {
            key_type,
            value_type,
        } => format!(
            "map<{},{}>",
            super::DType::from_code(key_type.unwrap_or(0)),
            value_type
                .as_ref()
                .map_or("?".into(), |e| type_to_string(e))
        ),
        TypeKind::Optional(e) => format!(
            "optional<{}>",
            e.as_ref().map_or("?".into(), |e| type_to_string(e))
        ),
        TypeKind::Opaque { name, .. } => format!("opaque<{}>", name.as_deref().unwrap_or("")),
        TypeKind::Unset => "?".into(),
    }
}

pub fn shape_to_string(dims: Option<&[Dim]>) -> String {
    match dims {
        None => "[?]".into(),
        Some(d) => {
            let parts: Vec<String> = d
                .iter()
                .map(|d| match d {
                    Dim::Value(v) => v.to_string(),
                    Dim::Param(p) => p.clone(),
                    Dim::Unknown => "?".into(),
                })
                .collect();
            format!("[{}]", parts.join(","))
        }
    }
}

pub fn tensor_summary(t: &Tensor) -> String {
    let dims: Vec<String> = t.dims.iter().map(|d| d.to_string()).collect();
    let mut s = format!("{}[{}]", t.dtype(), dims.join(","));
    let small = t.numel().map(|n| n <= 8).unwrap_or(false);
    if small {
        if let Ok(v) = t.to_f32() {
            let _ = write!(s, " {v:?}");
            return s;
        }
        if let Ok(v) = t.to_i64() {
            let _ = write!(s, " {v:?}");
            return s;
        }
    }
    let _ = write!(s, " #{}", t.content_hash());
    s
}

fn attr_to_string(a: &Attribute) -> String {
    match a.value() {
        AttrValue::Float(f) => format!("{f:?}"),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::String(s) => format!("{:?}", String::from_utf8_lossy(s)),
        AttrValue::Tensor(t) => tensor_summary(t),
        AttrValue::Graph(g) => format!("<graph {}>", g.name()),
        AttrValue::SparseTensor(_) => "<sparse>".into(),
        AttrValue::Type(t) => type_to_string(t),
        AttrValue::Floats(v) => format!("{v:?}"),
        AttrValue::Ints(v) => format!("{v:?}"),
        AttrValue::Strings(v) => format!(
            "{:?}",
            v.iter()
                .map(|s| String::from_utf8_lossy(s).to_string())
                .collect::<Vec<_>>()
        ),
        AttrValue::Tensors(v) => format!("<{} tensors>", v.len()),
        AttrValue::Graphs(v) => format!("<{} graphs>", v.len()),
        AttrValue::SparseTensors(v) => format!("<{} sparse>", v.len()),
        AttrValue::Types(v) => format!("<{} types>", v.len()),
        AttrValue::Ref(r) => format!("@{r}"),
        AttrValue::Undefined => "<undefined>".into(),
    }
}

fn print_graph(out: &mut String, g: &Graph, depth: usize) {
    let pad = "  ".repeat(depth);
    let _ = writeln!(out, "{pad}graph {}", g.name());
    for io in &g.inputs {
        let ty = io.info.ty.as_ref().map_or("?".into(), type_to_string);
        let _ = writeln!(out, "{pad}  input %{}: {ty}", g.value_name(io.value));
    }
    // Initializers sorted by name: file order is not meaning.
    let inits: BTreeMap<&str, &Tensor> = g
        .initializers()
        .map(|(v, t)| (g.value_name(v), t))
        .collect();
    for (name, t) in inits {
        let _ = writeln!(out, "{pad}  init {name}: {}", tensor_summary(t));
    }
    let ids = g.sorted_node_ids().unwrap_or_else(|_| g.node_ids());
    for id in ids {
        let n = g.node(id);
        let outs: Vec<String> = n
            .outputs()
            .iter()
            .map(|o| o.map_or("_".into(), |v| format!("%{}", g.value_name(v))))
            .collect();
        let ins: Vec<String> = n
            .inputs()
            .iter()
            .map(|o| o.map_or("_".into(), |v| format!("%{}", g.value_name(v))))
            .collect();
        let mut attrs: Vec<&Attribute> = n.attributes.iter().collect();
        attrs.sort_by(|a, b| a.name.cmp(&b.name));
        let attrs: Vec<String> = attrs
            .iter()
            .map(|a| format!("{}={}", a.name, attr_to_string(a)))
            .collect();
        let op = if n.domain().is_empty() {
            n.op_type.clone()
        } else {
            format!("{}::{}", n.domain(), n.op_type)
        };
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(" {{{}}}", attrs.join(", "))
        };
        let _ = writeln!(
            out,
            "{pad}  {} = {op}({}){attrs}  # {}",
            outs.join(", "),
            ins.join(", "),
            n.name()
        );
        for a in &n.attributes {
            for sub in a.subgraphs() {
                print_graph(out, sub, depth + 2);
            }
        }
    }
    for io in &g.outputs {
        let ty = io.info.ty.as_ref().map_or("?".into(), type_to_string);
        let _ = writeln!(out, "{pad}  output %{}: {ty}", g.value_name(io.value));
    }
}

/// `onnxq diff`: a summary line (nodes, bytes by dtype) and a unified diff of the
/// two printouts.
pub fn diff(a: &Model, b: &Model) -> String {
    let (pa, pb) = (model_to_string(a), model_to_string(b));
    let (na, nb) = (count_nodes(&a.graph), count_nodes(&b.graph));
    let (ba, bb) = (bytes_by_dtype(&a.graph), bytes_by_dtype(&b.graph));
    let mut out = format!("nodes: {na} -> {nb} ({:+})\n", nb as i64 - na as i64);
    let dtypes: std::collections::BTreeSet<&String> = ba.keys().chain(bb.keys()).collect();
    for d in dtypes {
        let (x, y) = (
            ba.get(d).copied().unwrap_or(0),
            bb.get(d).copied().unwrap_or(0),
        );
        if x != y {
            let _ = writeln!(out, "{d} bytes: {x} -> {y} ({:+})", y as i64 - x as i64);
        }
    }
    let text = similar::TextDiff::from_lines(&pa, &pb);
    let _ = write!(
        out,
        "{}",
        text.unified_diff().context_radius(1).header("a", "b")
    );
    out
}

fn count_nodes(g: &Graph) -> usize {
    g.node_count() + g.subgraphs().map(count_nodes).sum::<usize>()
}

/// Initializer bytes by dtype, subgraphs included.
pub fn bytes_by_dtype(g: &Graph) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    fn walk(g: &Graph, m: &mut BTreeMap<String, u64>) {
        for (_, t) in g.initializers() {
            *m.entry(t.dtype().to_string()).or_insert(0) += t.stored_len() as u64;
        }
        for (_, n) in g.nodes() {
            for a in &n.attributes {
                if let Some(t) = &a.t {
                    *m.entry(t.dtype().to_string()).or_insert(0) += t.stored_len() as u64;
                }
            }
        }
        for s in g.subgraphs() {
            walk(s, m);
        }
    }
    walk(g, &mut m);
    m
}
