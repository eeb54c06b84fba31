//! `onnxq diff --format text`: the differences of two models as one line per item,
//! for code review. Nodes are matched by name (unnamed ones by their outputs),
//! initializers by name; each line says what an item is (op, attributes, dtype,
//! shape, byte count), never its values.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::print::type_to_string;
use super::{AttrValue, Attribute, Graph, Model, Tensor};

/// The line-based description of what changed from `a` to `b`: a header of totals,
/// then `-` (only in a), `+` (only in b) and `~` (in both, different) lines, sorted
/// by kind and name so the same two models always print the same text.
pub fn diff_text(a: &Model, b: &Model) -> String {
    let (da, db) = (describe(a), describe(b));
    let mut out = String::new();
    let count =
        |d: &BTreeMap<String, String>, kind: &str| d.keys().filter(|k| k.starts_with(kind)).count();
    let bytes = |m: &Model| {
        let mut total = 0u64;
        walk(&m.graph, "", &mut |_, g| {
            total += g
                .initializers()
                .map(|(_, t)| t.stored_len() as u64)
                .sum::<u64>();
        });
        total
    };
    let _ = writeln!(
        out,
        "nodes {} -> {}, initializers {} -> {}, initializer bytes {} -> {}",
        count(&da, "node "),
        count(&db, "node "),
        count(&da, "init "),
        count(&db, "init "),
        bytes(a),
        bytes(b)
    );
    let keys: BTreeSet<&String> = da.keys().chain(db.keys()).collect();
    for k in keys {
        match (da.get(k), db.get(k)) {
            (Some(x), None) => {
                let _ = writeln!(out, "- {k}: {x}");
            }
            (None, Some(y)) => {
                let _ = writeln!(out, "+ {k}: {y}");
            }
            (Some(x), Some(y)) if x != y => {
                let _ = writeln!(out, "~ {k}: {x}  =>  {y}");
            }
            _ => {}
        }
    }
    out
}

/// Every item of the model (opsets, graph inputs/outputs, initializers, nodes of all
/// graphs) keyed `kind name` with its one-line description.
fn describe(m: &Model) -> BTreeMap<String, String> {
    let mut items = BTreeMap::new();
    for o in &m.opset_import {
        let d = if o.domain().is_empty() {
            "ai.onnx"
        } else {
            o.domain()
        };
        items.insert(format!("opset {d}"), o.version.unwrap_or(0).to_string());
    }
    walk(&m.graph, "", &mut |path, g| {
        for io in &g.inputs {
            let ty = io.info.ty.as_ref().map_or("?".into(), type_to_string);
            items.insert(format!("input {path}{}", g.value_name(io.value)), ty);
        }
        for io in &g.outputs {
            let ty = io.info.ty.as_ref().map_or("?".into(), type_to_string);
            items.insert(format!("output {path}{}", g.value_name(io.value)), ty);
        }
        for (v, t) in g.initializers() {
            items.insert(format!("init {path}{}", g.value_name(v)), tensor_text(t));
        }
        for (_, n) in g.nodes() {
            let outs: Vec<&str> = n
                .outputs()
                .iter()
                .map(|o| o.map_or("_", |v| g.value_name(v)))
                .collect();
            let ins: Vec<&str> = n
                .inputs()
                .iter()
                .map(|o| o.map_or("_", |v| g.value_name(v)))
                .collect();
            let name = match n.name() {
                "" => format!("({})", outs.join(",")),
                name => name.to_string(),
            };
            let op = if n.domain().is_empty() {
                n.op_type.clone()
            } else {
                format!("{}::{}", n.domain(), n.op_type)
            };
            let mut attrs: Vec<&Attribute> = n.attributes.iter().collect();
            attrs.sort_by(|a, b| a.name.cmp(&b.name));
            let attrs: Vec<String> = attrs
                .iter()
                .map(|a| format!("{}={}", a.name, attr_text(a)))
                .collect();
            let attrs = if attrs.is_empty() {
                String::new()
            } else {
                format!(" {{{}}}", attrs.join(", "))
            };
            items.insert(
                format!("node {path}{name}"),
                format!("{op}({}) -> {}{attrs}", ins.join(", "), outs.join(", ")),
            );
        }
    });
    items
}

/// Visits `g` and its subgraphs, each with a `graph/node/attr/` path prefix.
fn walk(g: &Graph, path: &str, f: &mut dyn FnMut(&str, &Graph)) {
    f(path, g);
    for (_, n) in g.nodes() {
        for a in &n.attributes {
            for sub in a.subgraphs() {
                walk(sub, &format!("{path}{}/{}/", n.name(), a.name), f);
            }
        }
    }
}

/// dtype, shape and stored bytes; a content fingerprint so a re-quantized tensor of
/// the same shape shows as changed, without printing values.
fn tensor_text(t: &Tensor) -> String {
    let dims: Vec<String> = t.dims.iter().map(|d| d.to_string()).collect();
    format!(
        "{}[{}] {} bytes #{}",
        t.dtype(),
        dims.join(","),
        t.stored_len(),
        t.content_hash()
    )
}

fn attr_text(a: &Attribute) -> String {
    match a.value() {
        AttrValue::Float(f) => format!("{f:?}"),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::String(s) => format!("{:?}", String::from_utf8_lossy(s)),
        AttrValue::Tensor(t) => tensor_text(t),
        AttrValue::Graph(g) => format!("<graph {}>", g.name()),
        AttrValue::Floats(v) => format!("{v:?}"),
        AttrValue::Ints(v) => format!("{v:?}"),
        AttrValue::Strings(v) => format!(
            "{:?}",
            v.iter()
                .map(|s| String::from_utf8_lossy(s).to_string())
                .collect::<Vec<_>>()
        ),
        AttrValue::Type(t) => type_to_string(t),
        AttrValue::Ref(r) => format!("@{r}"),
        AttrValue::Tensors(v) => format!("<{} tensors>", v.len()),
        AttrValue::Graphs(v) => format!("<{} graphs>", v.len()),
        AttrValue::SparseTensor(_) => "<sparse>".into(),
        AttrValue::SparseTensors(v) => format!("<{} sparse>", v.len()),
        AttrValue::Types(v) => format!("<{} types>", v.len()),
        AttrValue::Undefined => "<undefined>".into(),
    }
}
