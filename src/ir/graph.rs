//! Graphs as arenas of nodes and values linked by typed ids, with use lists kept
//! exact by the mutation API. Names are the interface; ids never leave a graph.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{Attribute, IoSpec, SparseTensor, Tensor, ValueInfo};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub(crate) u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub(crate) u32);

/// Where a value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueDef {
    /// A graph input (it may also have a default initializer, see `Value::init`).
    Input,
    /// An initializer that is not a graph input.
    Initializer,
    /// A sparse initializer (index into `Graph::sparse_initializers`).
    SparseInitializer(usize),
    /// Output `slot` of a node.
    Node(NodeId, usize),
    /// Not defined in this graph: captured from an enclosing scope (or dangling).
    Outer,
}

/// One place a value is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Use {
    /// Input `slot` of a node.
    Input(NodeId, usize),
    /// Read by name inside a subgraph of this node.
    Capture(NodeId),
}

#[derive(Clone, Debug)]
pub struct Value {
    pub name: String,
    pub def: ValueDef,
    /// The initializer tensor, for initializers and inputs with a default.
    pub init: Option<Tensor>,
    uses: Vec<Use>,
}

impl Value {
    pub fn uses(&self) -> &[Use] {
        &self.uses
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: Option<String>,
    pub op_type: String,
    pub domain: Option<String>,
    pub overload: Option<String>,
    inputs: Vec<Option<ValueId>>,
    outputs: Vec<Option<ValueId>>,
    pub attributes: Vec<Attribute>,
    pub doc_string: Option<String>,
    pub metadata_props: Vec<(String, String)>,
    /// NodeDeviceConfigurationProto messages, kept encoded: nothing in onnxq reads them.
    pub device_configurations: Vec<bytes::Bytes>,
}

impl Node {
    pub fn inputs(&self) -> &[Option<ValueId>] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[Option<ValueId>] {
        &self.outputs
    }

    pub fn input(&self, slot: usize) -> Option<ValueId> {
        self.inputs.get(slot).copied().flatten()
    }

    pub fn output(&self, slot: usize) -> Option<ValueId> {
        self.outputs.get(slot).copied().flatten()
    }

    /// `domain::op` with the default domain printed as empty.
    pub fn domain(&self) -> &str {
        match self.domain.as_deref() {
            None | Some("ai.onnx") => "",
            Some(d) => d,
        }
    }

    pub fn is(&self, domain: &str, op: &str) -> bool {
        self.op_type == op && self.domain() == domain
    }

    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    pub fn attr(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }

    pub fn attr_int(&self, name: &str) -> Option<i64> {
        self.attr(name).and_then(|a| a.i)
    }

    pub fn attr_float(&self, name: &str) -> Option<f32> {
        self.attr(name).and_then(|a| a.f)
    }

    pub fn set_attr(&mut self, attr: Attribute) {
        match self.attributes.iter_mut().find(|a| a.name == attr.name) {
            Some(a) => *a = attr,
            None => self.attributes.push(attr),
        }
    }
}

/// A graph input, output or value_info entry: which value, and what the file said
/// about it.
#[derive(Clone, Debug)]
pub struct GraphIo {
    pub value: ValueId,
    pub info: ValueInfo,
}

/// TensorAnnotation of quantization_annotation.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorAnnotation {
    pub tensor_name: Option<String>,
    pub quant_parameter_tensor_names: Vec<(String, String)>,
}

/// A description of a node to add.
#[derive(Clone, Debug, Default)]
pub struct NodeSpec {
    pub op_type: String,
    pub domain: Option<String>,
    pub name: Option<String>,
    pub inputs: Vec<Option<ValueId>>,
    /// Names of the outputs to create; they must not exist yet.
    pub outputs: Vec<String>,
    pub attributes: Vec<Attribute>,
    pub metadata_props: Vec<(String, String)>,
}

impl NodeSpec {
    pub fn new(domain: &str, op_type: &str) -> NodeSpec {
        NodeSpec {
            op_type: op_type.to_string(),
            domain: (!domain.is_empty()).then(|| domain.to_string()),
            ..Default::default()
        }
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn input(mut self, v: ValueId) -> Self {
        self.inputs.push(Some(v));
        self
    }

    pub fn inputs(mut self, vs: impl IntoIterator<Item = Option<ValueId>>) -> Self {
        self.inputs.extend(vs);
        self
    }

    pub fn output(mut self, name: impl Into<String>) -> Self {
        self.outputs.push(name.into());
        self
    }

    pub fn attr(mut self, a: Attribute) -> Self {
        self.attributes.push(a);
        self
    }

    pub fn meta(mut self, key: &str, value: &str) -> Self {
        self.metadata_props
            .push((key.to_string(), value.to_string()));
        self
    }
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: Option<String>,
    pub doc_string: Option<String>,
    pub metadata_props: Vec<(String, String)>,
    pub inputs: Vec<GraphIo>,
    pub outputs: Vec<GraphIo>,
    pub value_info: Vec<GraphIo>,
    pub quantization_annotation: Vec<TensorAnnotation>,
    pub sparse_initializers: Vec<SparseTensor>,
    nodes: Vec<Option<Node>>,
    order: Vec<NodeId>,
    values: Vec<Value>,
    by_name: HashMap<String, ValueId>,
    /// Initializers in file order (values whose `init` is set).
    initializer_order: Vec<ValueId>,
    /// Set by any edit that can break the file's node order; save re-sorts then.
    reorder: bool,
}

impl Graph {
    pub fn new(name: &str) -> Graph {
        Graph {
            name: Some(name.to_string()),
            ..Default::default()
        }
    }

    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::graph(self.name(), reason)
    }

    // ---- reading ----

    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.0 as usize]
    }

    pub fn value_mut(&mut self, id: ValueId) -> &mut Value {
        &mut self.values[id.0 as usize]
    }

    pub fn value_name(&self, id: ValueId) -> &str {
        &self.value(id).name
    }

    pub fn find(&self, name: &str) -> Option<ValueId> {
        self.by_name.get(name).copied()
    }

    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes[id.0 as usize]
            .as_ref()
            .expect("NodeId of a removed node")
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes[id.0 as usize]
            .as_mut()
            .expect("NodeId of a removed node")
    }

    pub fn contains_node(&self, id: NodeId) -> bool {
        self.nodes.get(id.0 as usize).is_some_and(Option::is_some)
    }

    /// Live nodes in graph order.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Node)> + '_ {
        self.order
            .iter()
            .filter_map(|&id| self.nodes[id.0 as usize].as_ref().map(|n| (id, n)))
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes().map(|(id, _)| id).collect()
    }

    pub fn node_count(&self) -> usize {
        self.nodes().count()
    }

    /// The node that produces `v`, if any.
    pub fn producer(&self, v: ValueId) -> Option<NodeId> {
        match self.value(v).def {
            ValueDef::Node(n, _) => Some(n),
            _ => None,
        }
    }

    /// Initializers in file order.
    pub fn initializers(&self) -> impl Iterator<Item = (ValueId, &Tensor)> + '_ {
        self.initializer_order
            .iter()
            .filter_map(|&v| self.value(v).init.as_ref().map(|t| (v, t)))
    }

    pub fn initializer(&self, v: ValueId) -> Option<&Tensor> {
        self.value(v).init.as_ref()
    }

    pub fn is_graph_output(&self, v: ValueId) -> bool {
        self.outputs.iter().any(|o| o.value == v)
    }

    pub fn is_graph_input(&self, v: ValueId) -> bool {
        self.inputs.iter().any(|o| o.value == v)
    }

    /// What value_info/input/output entries say about `v`, first match.
    pub fn info(&self, v: ValueId) -> Option<&ValueInfo> {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .chain(&self.value_info)
            .find(|io| io.value == v)
            .map(|io| &io.info)
    }

    fn spec(&self, io: &GraphIo) -> IoSpec {
        let (dtype, dims) = io
            .info
            .ty
            .as_ref()
            .and_then(|t| t.tensor_parts())
            .unwrap_or((None, None));
        IoSpec {
            name: self.value_name(io.value).to_string(),
            dtype,
            dims,
        }
    }

    /// Graph inputs a caller must feed (inputs with an initializer are optional and
    /// not listed).
    pub fn input_specs(&self) -> Vec<IoSpec> {
        self.inputs
            .iter()
            .filter(|io| self.value(io.value).init.is_none())
            .map(|io| self.spec(io))
            .collect()
    }

    pub fn output_specs(&self) -> Vec<IoSpec> {
        self.outputs.iter().map(|io| self.spec(io)).collect()
    }

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
    fn detach(&mut self, id: NodeId) -> Node {
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

    /// Every subgraph of every node, for passes that recurse.
    pub fn subgraphs_mut(&mut self) -> impl Iterator<Item = &mut Graph> {
        self.nodes
            .iter_mut()
            .flatten()
            .flat_map(|n| n.attributes.iter_mut())
            .flat_map(|a| a.subgraphs_mut())
    }

    pub fn subgraphs(&self) -> impl Iterator<Item = &Graph> {
        self.nodes
            .iter()
            .flatten()
            .flat_map(|n| n.attributes.iter())
            .flat_map(|a| a.subgraphs())
    }
}
