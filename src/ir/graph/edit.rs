//! Building and editing a graph: values, initializers, nodes, and the rewiring
//! that keeps every use list right.
use std::collections::BTreeSet;

use super::*;

impl Graph {
    // ---- building (used by io::load and by passes) ----

    fn new_value(&mut self, name: String, def: ValueDef) -> Result<ValueId> {
        if self.by_name.contains_key(&name) {
            return Err(self.err(format!("'{name}' is defined twice")));
        }
        let id = ValueId(self.values.len() as u32);
        self.by_name.insert(name.clone(), id);
        self.values.push(Value {
            name,
            def,
            init: None,
            uses: Vec::new(),
        });
        Ok(id)
    }

    /// The value named `name`, or a new `Outer` value (a capture from an enclosing
    /// scope) when nothing in this graph defines it yet.
    pub fn value_or_outer(&mut self, name: &str) -> ValueId {
        match self.find(name) {
            Some(v) => v,
            None => self
                .new_value(name.to_string(), ValueDef::Outer)
                .expect("name checked absent"),
        }
    }

    /// Declares a graph input (appended to `inputs`).
    pub fn add_input(&mut self, name: &str, info: ValueInfo) -> Result<ValueId> {
        let v = match self.find(name) {
            // An initializer listed as input too (IR < 4 style or overridable default).
            Some(v) if self.value(v).def == ValueDef::Initializer => {
                self.value_mut(v).def = ValueDef::Input;
                v
            }
            Some(v) if self.value(v).def == ValueDef::Outer => {
                self.value_mut(v).def = ValueDef::Input;
                v
            }
            _ => self.new_value(name.to_string(), ValueDef::Input)?,
        };
        self.inputs.push(GraphIo { value: v, info });
        Ok(v)
    }

    /// Adds an initializer; if `tensor`'s name is already a graph input, it becomes
    /// that input's default.
    pub fn add_initializer(&mut self, tensor: Tensor) -> Result<ValueId> {
        let name = tensor.name().to_string();
        let v = match self.find(&name) {
            Some(v)
                if self.value(v).init.is_none()
                    && matches!(self.value(v).def, ValueDef::Input | ValueDef::Outer) =>
            {
                if self.value(v).def == ValueDef::Outer {
                    self.value_mut(v).def = ValueDef::Initializer;
                }
                v
            }
            _ => self.new_value(name, ValueDef::Initializer)?,
        };
        self.value_mut(v).init = Some(tensor);
        self.initializer_order.push(v);
        Ok(v)
    }

    /// Replaces the tensor of an existing initializer, keeping its name and position.
    pub fn set_initializer(&mut self, v: ValueId, mut tensor: Tensor) {
        tensor.name = Some(self.value(v).name.clone());
        if self.value(v).init.is_none() {
            self.initializer_order.push(v);
        }
        self.value_mut(v).init = Some(tensor);
    }

    pub fn add_sparse_initializer(&mut self, sparse: SparseTensor) -> Result<ValueId> {
        let name = sparse
            .values
            .as_ref()
            .map(|t| t.name().to_string())
            .unwrap_or_default();
        let idx = self.sparse_initializers.len();
        self.sparse_initializers.push(sparse);
        match self.find(&name) {
            Some(v) if self.value(v).def == ValueDef::Outer => {
                self.value_mut(v).def = ValueDef::SparseInitializer(idx);
                Ok(v)
            }
            _ => self.new_value(name, ValueDef::SparseInitializer(idx)),
        }
    }

    /// A name not used in this graph, derived from `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        if !self.by_name.contains_key(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !self.by_name.contains_key(n))
            .expect("unbounded")
    }

    /// A node name not used in this graph, derived from `base`.
    pub fn fresh_node_name(&self, base: &str) -> String {
        let taken: std::collections::HashSet<&str> = self.nodes().map(|(_, n)| n.name()).collect();
        if !taken.contains(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !taken.contains(n.as_str()))
            .expect("unbounded")
    }

    /// Adds a node; its outputs become new values. The node goes at the end of the
    /// order; save sorts topologically when anything moved.
    pub fn add_node(&mut self, spec: NodeSpec) -> Result<NodeId> {
        let id = NodeId(self.nodes.len() as u32);
        let mut outputs = Vec::with_capacity(spec.outputs.len());
        for (slot, name) in spec.outputs.into_iter().enumerate() {
            if name.is_empty() {
                outputs.push(None);
                continue;
            }
            let v = match self.find(&name) {
                Some(v)
                    if self.value(v).def == ValueDef::Outer && self.value(v).uses.is_empty() =>
                {
                    self.value_mut(v).def = ValueDef::Node(id, slot);
                    v
                }
                Some(v) if self.value(v).def == ValueDef::Outer => {
                    // Read before defined (file not sorted yet): take the definition.
                    self.value_mut(v).def = ValueDef::Node(id, slot);
                    self.reorder = true;
                    v
                }
                Some(_) => {
                    return Err(self.err(format!(
                        "'{name}' is defined twice (again by node '{}')",
                        spec.name.as_deref().unwrap_or(&spec.op_type)
                    )))
                }
                None => self.new_value(name, ValueDef::Node(id, slot))?,
            };
            outputs.push(Some(v));
        }
        for (slot, input) in spec.inputs.iter().enumerate() {
            if let Some(v) = input {
                self.values[v.0 as usize].uses.push(Use::Input(id, slot));
            }
        }
        let node = Node {
            name: spec.name,
            op_type: spec.op_type,
            domain: spec.domain,
            overload: None,
            inputs: spec.inputs,
            outputs,
            attributes: spec.attributes,
            doc_string: None,
            metadata_props: spec.metadata_props,
            device_configurations: Vec::new(),
        };
        self.nodes.push(Some(node));
        self.order.push(id);
        self.record_captures(id);
        Ok(id)
    }

    /// Recomputes the `Use::Capture`s of node `id` after its subgraphs changed
    /// what they read from this graph.
    pub fn refresh_captures(&mut self, id: NodeId) {
        for v in self.values.iter_mut() {
            v.uses.retain(|u| *u != Use::Capture(id));
        }
        self.record_captures(id);
    }

    /// Records `Use::Capture` for every outer name the node's subgraphs read.
    fn record_captures(&mut self, id: NodeId) {
        let mut free = BTreeSet::new();
        for a in &self.node(id).attributes {
            for g in a.subgraphs() {
                g.collect_free_names(&mut free);
            }
        }
        for name in free {
            let v = self.value_or_outer(&name);
            self.values[v.0 as usize].uses.push(Use::Capture(id));
        }
    }

    /// Names this graph (and its subgraphs) read but do not define.
    pub fn collect_free_names(&self, out: &mut BTreeSet<String>) {
        for v in &self.values {
            if v.def == ValueDef::Outer && !v.uses.is_empty() {
                out.insert(v.name.clone());
            }
        }
    }

    /// Sets the node fields that `add_node` does not take (used by the loader).
    pub fn node_extras(&mut self, id: NodeId) -> &mut Node {
        self.node_mut(id)
    }

    // ---- editing ----

    pub fn set_input(&mut self, node: NodeId, slot: usize, value: Option<ValueId>) {
        let old = self.node(node).inputs.get(slot).copied().flatten();
        if let Some(old) = old {
            let uses = &mut self.values[old.0 as usize].uses;
            if let Some(pos) = uses.iter().position(|u| *u == Use::Input(node, slot)) {
                uses.remove(pos);
            }
        }
        let n = self.node_mut(node);
        if n.inputs.len() <= slot {
            n.inputs.resize(slot + 1, None);
        }
        n.inputs[slot] = value;
        if let Some(v) = value {
            self.values[v.0 as usize].uses.push(Use::Input(node, slot));
        }
        self.reorder = true;
    }

    /// Points every node input reading `old` at `new`. Graph outputs move too only
    /// when `move_outputs` is set; otherwise a graph output on `old` is an error,
    /// because output names are what callers bind to.
    pub fn replace_all_uses(
        &mut self,
        old: ValueId,
        new: ValueId,
        move_outputs: bool,
    ) -> Result<()> {
        if self.is_graph_output(old) && !move_outputs {
            return Err(self.err(format!(
                "cannot move graph output '{}' to '{}'",
                self.value_name(old),
                self.value_name(new)
            )));
        }
        let uses = std::mem::take(&mut self.values[old.0 as usize].uses);
        for u in uses {
            match u {
                Use::Input(n, slot) => {
                    self.node_mut(n).inputs[slot] = Some(new);
                    self.values[new.0 as usize].uses.push(u);
                }
                Use::Capture(_) => self.values[old.0 as usize].uses.push(u),
            }
        }
        if move_outputs {
            for o in &mut self.outputs {
                if o.value == old {
                    o.value = new;
                }
            }
        }
        self.reorder = true;
        Ok(())
    }

    /// Replaces node `old` by a new node built from `spec` that takes over `old`'s
    /// output values (same names, same uses). `spec.outputs` must be empty.
    pub fn swap_node(&mut self, old: NodeId, spec: NodeSpec) -> Result<NodeId> {
        if !spec.outputs.is_empty() {
            return Err(self.err("swap_node: the new node takes the old node's outputs"));
        }
        let outputs = self.node(old).outputs.clone();
        let id = self.add_node(spec)?;
        // The new node takes the old one's place in the order.
        self.order.pop();
        if let Some(pos) = self.order.iter().position(|&n| n == old) {
            self.order.insert(pos, id);
        }
        for (slot, v) in outputs.iter().enumerate() {
            if let Some(v) = v {
                self.values[v.0 as usize].def = ValueDef::Node(id, slot);
            }
        }
        self.node_mut(id).outputs = outputs;
        self.node_mut(old).outputs.clear();
        self.remove_node(old)?;
        self.reorder = true;
        Ok(id)
    }

    /// Moves `node` just before `anchor` in the order (keeps printed graphs and saved
    /// files in reading order when a pass inserts a producer).
    pub fn place_before(&mut self, node: NodeId, anchor: NodeId) {
        self.order.retain(|&n| n != node);
        let pos = self
            .order
            .iter()
            .position(|&n| n == anchor)
            .unwrap_or(self.order.len());
        self.order.insert(pos, node);
    }

    /// Removes a node whose outputs nobody reads.
    pub fn remove_node(&mut self, id: NodeId) -> Result<()> {
        let node = self.node(id);
        for v in node.outputs.iter().flatten() {
            if !self.value(*v).uses.is_empty() || self.is_graph_output(*v) {
                return Err(self.err(format!(
                    "cannot remove node '{}': its output '{}' is still used",
                    node.name(),
                    self.value_name(*v)
                )));
            }
        }
        let node = self.detach(id);
        self.value_info
            .retain(|io| !node.outputs.contains(&Some(io.value)));
        Ok(())
    }

    /// Takes a node out of the arena: drops its uses and captures and undefines its
    /// outputs. Callers check that nothing still reads them.
    pub(super) fn detach(&mut self, id: NodeId) -> Node {
        let node = self.nodes[id.0 as usize].take().expect("live node");
        for (slot, v) in node.inputs.iter().enumerate() {
            if let Some(v) = v {
                self.values[v.0 as usize]
                    .uses
                    .retain(|u| *u != Use::Input(id, slot));
            }
        }
        for v in self.values.iter_mut() {
            v.uses.retain(|u| *u != Use::Capture(id));
        }
        for v in node.outputs.iter().flatten() {
            let name = self.values[v.0 as usize].name.clone();
            self.by_name.remove(&name);
            self.values[v.0 as usize].def = ValueDef::Outer;
        }
        node
    }

    /// Removes an initializer nobody reads (not a graph input).
    pub fn remove_initializer(&mut self, v: ValueId) -> Result<()> {
        let val = self.value(v);
        if !val.uses.is_empty() || self.is_graph_output(v) || self.is_graph_input(v) {
            return Err(self.err(format!("initializer '{}' is still used", val.name)));
        }
        let name = val.name.clone();
        self.values[v.0 as usize].init = None;
        self.values[v.0 as usize].def = ValueDef::Outer;
        self.by_name.remove(&name);
        self.initializer_order.retain(|x| *x != v);
        self.value_info.retain(|io| io.value != v);
        Ok(())
    }

    /// Removes a graph input nobody reads (its default initializer, if any, too).
    pub fn remove_input(&mut self, v: ValueId) -> Result<()> {
        let val = self.value(v);
        if !val.uses.is_empty() || self.is_graph_output(v) || !self.is_graph_input(v) {
            return Err(self.err(format!("'{}' is not a graph input nobody reads", val.name)));
        }
        let name = val.name.clone();
        self.inputs.retain(|io| io.value != v);
        self.values[v.0 as usize].init = None;
        self.values[v.0 as usize].def = ValueDef::Outer;
        self.by_name.remove(&name);
        self.initializer_order.retain(|x| *x != v);
        self.value_info.retain(|io| io.value != v);
        Ok(())
    }

    /// Gives value `v` the name `name`, which nothing else may carry (a pass that
    /// rebuilds the producer of a named graph output hands the name over this way).
    pub fn rename_value(&mut self, v: ValueId, name: &str) -> Result<()> {
        if let Some(other) = self.find(name) {
            if other != v {
                return Err(self.err(format!("'{name}' is already a value of the graph")));
            }
            return Ok(());
        }
        let old = std::mem::replace(&mut self.values[v.0 as usize].name, name.to_string());
        self.by_name.remove(&old);
        self.by_name.insert(name.to_string(), v);
        Ok(())
    }
}
