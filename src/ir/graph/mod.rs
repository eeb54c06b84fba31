//! Graphs as arenas of nodes and values linked by typed ids, with use lists kept
//! exact by the mutation API. Names are the interface; ids never leave a graph.
mod edit;
mod order;

use std::collections::HashMap;

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
