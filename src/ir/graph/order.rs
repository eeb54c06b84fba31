//! Whole-graph walks: liveness, extracting a piece, dead-code removal, the
//! topological order, and the structural self-check.
use std::collections::{BTreeMap, BTreeSet};

use super::*;

impl Graph {
    /// Nodes that lead to one of `roots` without reading through a value of `stop`.
    fn live_nodes(
        &self,
        roots: impl IntoIterator<Item = ValueId>,
        stop: &BTreeSet<ValueId>,
    ) -> BTreeSet<NodeId> {
        let mut captured: HashMap<NodeId, Vec<ValueId>> = HashMap::new();
        for (i, val) in self.values.iter().enumerate() {
            for u in &val.uses {
                if let Use::Capture(n) = u {
                    captured.entry(*n).or_default().push(ValueId(i as u32));
                }
            }
        }
        let mut live_vals: BTreeSet<ValueId> = roots.into_iter().collect();
        let mut live_nodes = BTreeSet::new();
        let mut stack: Vec<ValueId> = live_vals.iter().copied().collect();
        while let Some(v) = stack.pop() {
            if stop.contains(&v) {
                continue;
            }
            if let ValueDef::Node(n, _) = self.value(v).def {
                if live_nodes.insert(n) {
                    let node = self.node(n);
                    let reads = node
                        .inputs
                        .iter()
                        .flatten()
                        .chain(captured.get(&n).into_iter().flatten());
                    for &r in reads {
                        if live_vals.insert(r) {
                            stack.push(r);
                        }
                    }
                }
            }
        }
        live_nodes
    }

    /// The part of this graph that computes `outputs` when the values of `cut` are
    /// given, as onnx.utils.extract_model cuts a model: the nodes that lead to an
    /// output without reading through a cut value, the initializers and original
    /// inputs they read, then the `cut` values as inputs (in the order given) and
    /// `outputs` as the outputs. A cut value must be a graph input or a node output
    /// none of the kept nodes computes.
    pub fn extract(&self, cut: &[GraphIo], outputs: &[GraphIo]) -> Result<Graph> {
        let stop: BTreeSet<ValueId> = cut.iter().map(|io| io.value).collect();
        let live = self.live_nodes(outputs.iter().map(|o| o.value), &stop);
        let mut g = self.clone();
        let order = self.sorted_node_ids()?;
        for &id in order.iter().rev() {
            if !live.contains(&id) {
                g.detach(id);
            }
        }
        for io in cut {
            let v = io.value;
            match g.value(v).def {
                ValueDef::Input => {}
                ValueDef::Outer => {
                    let name = g.value(v).name.clone();
                    g.value_mut(v).def = ValueDef::Input;
                    g.by_name.insert(name, v);
                }
                _ => {
                    return Err(g.err(format!(
                        "cannot cut at '{}': it is an initializer or still computed \
                         by a kept node",
                        g.value_name(v)
                    )))
                }
            }
        }
        let mut inputs: Vec<GraphIo> = g
            .inputs
            .iter()
            .filter(|io| !stop.contains(&io.value) && !g.value(io.value).uses.is_empty())
            .cloned()
            .collect();
        inputs.extend(cut.iter().cloned());
        g.inputs = inputs;
        g.outputs = outputs.to_vec();
        g.remove_dead();
        Ok(g)
    }

    /// Removes nodes and initializers that do not contribute to a graph output.
    /// Returns (nodes removed, initializers removed).
    pub fn remove_dead(&mut self) -> (usize, usize) {
        let live_nodes = self.live_nodes(self.outputs.iter().map(|o| o.value), &BTreeSet::new());
        let dead_nodes: Vec<NodeId> = self
            .nodes()
            .map(|(id, _)| id)
            .filter(|id| !live_nodes.contains(id))
            .collect();
        // Remove consumers before producers.
        for &id in dead_nodes.iter().rev() {
            self.detach(id);
        }
        let dead_inits: Vec<ValueId> = self
            .initializer_order
            .iter()
            .copied()
            .filter(|&v| {
                self.value(v).uses.is_empty() && !self.is_graph_input(v) && !self.is_graph_output(v)
            })
            .collect();
        for &v in &dead_inits {
            let _ = self.remove_initializer(v);
        }
        let removed_vals: BTreeSet<ValueId> = self
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.def == ValueDef::Outer && v.uses.is_empty())
            .map(|(i, _)| ValueId(i as u32))
            .collect();
        self.value_info
            .retain(|io| !removed_vals.contains(&io.value));
        (dead_nodes.len(), dead_inits.len())
    }

    /// Whether an edit may have broken the node order.
    pub fn needs_sort(&self) -> bool {
        self.reorder
    }

    /// Sorts nodes topologically, keeping the current order wherever it is already
    /// valid (so an unedited graph keeps its file order).
    pub fn toposort(&mut self) -> Result<()> {
        self.order = self.sorted_node_ids()?;
        self.reorder = false;
        Ok(())
    }

    /// Node ids in topological order (stable: file order wherever it is valid).
    pub fn sorted_node_ids(&self) -> Result<Vec<NodeId>> {
        let live: Vec<NodeId> = self.nodes().map(|(id, _)| id).collect();
        let pos: HashMap<NodeId, usize> = live.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut indeg = vec![0usize; live.len()];
        let mut succ: Vec<Vec<usize>> = vec![Vec::new(); live.len()];
        for (i, &id) in live.iter().enumerate() {
            let mut preds = BTreeSet::new();
            for v in self.node(id).inputs.iter().flatten() {
                if let ValueDef::Node(p, _) = self.value(*v).def {
                    preds.insert(pos[&p]);
                }
            }
            for val in &self.values {
                if val.uses.contains(&Use::Capture(id)) {
                    if let ValueDef::Node(p, _) = val.def {
                        preds.insert(pos[&p]);
                    }
                }
            }
            for p in preds {
                if p != i {
                    succ[p].push(i);
                    indeg[i] += 1;
                }
            }
        }
        let mut ready: BTreeSet<usize> = (0..live.len()).filter(|&i| indeg[i] == 0).collect();
        let mut order = Vec::with_capacity(live.len());
        while let Some(i) = ready.pop_first() {
            order.push(live[i]);
            for &s in &succ[i] {
                indeg[s] -= 1;
                if indeg[s] == 0 {
                    ready.insert(s);
                }
            }
        }
        if order.len() != live.len() {
            let stuck = live
                .iter()
                .enumerate()
                .find(|(i, _)| indeg[*i] > 0)
                .map(|(_, &n)| self.node(n).name().to_string())
                .unwrap_or_default();
            return Err(self.err(format!("the graph has a cycle through node '{stuck}'")));
        }
        Ok(order)
    }

    /// Checks the invariants passes rely on: use lists match node inputs, every
    /// value read is defined (or captured), node order is topological, names unique.
    pub fn verify(&self) -> Result<()> {
        let mut expected: BTreeMap<ValueId, Vec<Use>> = BTreeMap::new();
        let mut seen_defined: BTreeSet<ValueId> = BTreeSet::new();
        for (i, v) in self.values.iter().enumerate() {
            if !matches!(v.def, ValueDef::Node(..)) {
                seen_defined.insert(ValueId(i as u32));
            }
        }
        for (id, node) in self.nodes() {
            for (slot, v) in node.inputs.iter().enumerate() {
                if let Some(v) = v {
                    expected.entry(*v).or_default().push(Use::Input(id, slot));
                    if !seen_defined.contains(v) {
                        return Err(self.err(format!(
                            "node '{}' reads '{}' before it is defined",
                            node.name(),
                            self.value_name(*v)
                        )));
                    }
                }
            }
            for (slot, v) in node.outputs.iter().enumerate() {
                if let Some(v) = v {
                    if self.value(*v).def != ValueDef::Node(id, slot) {
                        return Err(self.err(format!(
                            "output '{}' has a stale definition",
                            self.value_name(*v)
                        )));
                    }
                    seen_defined.insert(*v);
                }
            }
        }
        for (i, v) in self.values.iter().enumerate() {
            let mut actual: Vec<Use> = v
                .uses
                .iter()
                .copied()
                .filter(|u| matches!(u, Use::Input(..)))
                .collect();
            let mut want = expected.remove(&ValueId(i as u32)).unwrap_or_default();
            actual.sort();
            want.sort();
            if actual != want {
                return Err(self.err(format!("use list of '{}' is out of date", v.name)));
            }
        }
        for o in &self.outputs {
            if self.value(o.value).def == ValueDef::Outer
                && self.find(self.value_name(o.value)).is_none()
            {
                return Err(self.err(format!(
                    "output '{}' is not defined",
                    self.value_name(o.value)
                )));
            }
        }
        Ok(())
    }
}
