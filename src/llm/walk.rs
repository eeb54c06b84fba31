//! Bounded searches along data edges, shared by the component matchers.
use std::collections::{BTreeSet, VecDeque};

use crate::ir::{Graph, NodeId, ValueDef, ValueId};
use crate::rewrite::matchers::consumers;

/// A node's name, or `Op -> first output` for unnamed nodes (names are optional in
/// ONNX, and a map that printed "" would not say which node it means).
pub fn label(g: &Graph, id: NodeId) -> String {
    let n = g.node(id);
    if !n.name().is_empty() {
        return n.name().to_string();
    }
    let out = n.output(0).map(|v| g.value_name(v)).unwrap_or("");
    format!("{} -> {out}", n.op_type)
}

/// Where a forward search arrived: `node` reads the searched tensor at input `slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub node: NodeId,
    pub slot: usize,
}

/// Breadth-first from `start` along consumers, up to `depth` nodes deep: every node
/// for which `target` holds is a hit (and not walked through); nodes for which
/// `wall` holds are neither hits nor walked through. Hits come nearest first.
pub fn forward(
    g: &Graph,
    start: ValueId,
    depth: usize,
    target: &dyn Fn(&Graph, NodeId) -> bool,
    wall: &dyn Fn(&Graph, NodeId) -> bool,
) -> Vec<Hit> {
    let mut hits = Vec::new();
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([(start, 0usize)]);
    let mut seen_vals = BTreeSet::from([start]);
    while let Some((v, d)) = queue.pop_front() {
        for (n, slot) in consumers(g, v) {
            if target(g, n) {
                let hit = Hit { node: n, slot };
                if !hits.contains(&hit) {
                    hits.push(hit);
                }
                continue;
            }
            if d + 1 >= depth || wall(g, n) || !seen.insert(n) {
                continue;
            }
            for out in g.node(n).outputs().iter().flatten() {
                if seen_vals.insert(*out) {
                    queue.push_back((*out, d + 1));
                }
            }
        }
    }
    hits
}

/// The nodes strictly between the value `start` and the node `end` (neither
/// `start`'s producer nor `end` itself), found backwards from `end` within `depth`
/// nodes: the ops a component is made of, e.g. the activation between a gate
/// projection and its join.
pub fn nodes_between(g: &Graph, start: ValueId, end: NodeId, depth: usize) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut stack: Vec<(NodeId, usize)> = vec![(end, 0)];
    let mut seen = BTreeSet::new();
    while let Some((n, d)) = stack.pop() {
        for v in g.node(n).inputs().iter().flatten() {
            if *v == start || d >= depth {
                continue;
            }
            if let Some(p) = g.producer(*v) {
                if reaches_back(g, *v, start, depth - d) && seen.insert(p) {
                    out.push(p);
                    stack.push((p, d + 1));
                }
            }
        }
    }
    out.sort();
    out
}

/// Whether `v` is computed from `start` within `depth` nodes.
pub fn reaches_back(g: &Graph, v: ValueId, start: ValueId, depth: usize) -> bool {
    if v == start {
        return true;
    }
    if depth == 0 {
        return false;
    }
    match g.producer(v) {
        Some(p) => g
            .node(p)
            .inputs()
            .iter()
            .flatten()
            .any(|i| reaches_back(g, *i, start, depth - 1)),
        None => false,
    }
}

/// The graph inputs `v` is computed from (within `depth` nodes), in graph-input order.
pub fn source_inputs(g: &Graph, v: ValueId, depth: usize) -> Vec<ValueId> {
    let mut found = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        match g.value(v).def {
            ValueDef::Input if g.value(v).init.is_none() => {
                found.insert(v);
            }
            ValueDef::Node(p, _) if d < depth => {
                for i in g.node(p).inputs().iter().flatten() {
                    stack.push((*i, d + 1));
                }
            }
            _ => {}
        }
    }
    g.inputs
        .iter()
        .map(|io| io.value)
        .filter(|v| found.contains(v))
        .collect()
}

/// The one consumer of `v`, when there is exactly one.
pub fn sole_consumer(g: &Graph, v: ValueId) -> Option<(NodeId, usize)> {
    match consumers(g, v).as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// `Op 'name'` for each consumer of `v`, to say in an error what was found instead.
pub fn describe_consumers(g: &Graph, v: ValueId) -> String {
    let list: Vec<String> = consumers(g, v)
        .into_iter()
        .map(|(n, _)| format!("{} '{}'", g.node(n).op_type, label(g, n)))
        .collect();
    if list.is_empty() {
        "nothing reads it".into()
    } else {
        format!("read by {}", list.join(", "))
    }
}
