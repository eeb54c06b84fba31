//! What the static pass will do, decided on the unmodified graph: which values
//! are quantized with their own range or share another's, which constant weights
//! and biases are stored quantized, and which Relu/Clip fold into their producer.
use super::*;

/// How a node reads one constant weight.
#[derive(Clone, Debug)]
pub(crate) struct WeightUse {
    pub node: NodeId,
    pub slot: usize,
    /// The constant value (behind the Transpose, if any).
    pub value: ValueId,
    pub source: ConstSource,
    pub transpose: Option<NodeId>,
    pub spec: WeightSpec,
}

#[derive(Clone, Debug)]
pub(super) struct BiasUse {
    pub(super) node: NodeId,
    pub(super) value: ValueId,
    pub(super) source: ConstSource,
    pub(super) input: ValueId,
    /// Index into `Plan::weights` of the node's weight.
    pub(super) weight: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mark {
    /// Its own calibrated range.
    Act,
    /// Shares the scale/zero point of another quantized tensor.
    Shared(ValueId),
}

/// What the pass will do, decided on the unmodified graph.
#[derive(Default)]
pub(super) struct Plan {
    pub(super) order: Vec<ValueId>,
    pub(super) marks: HashMap<ValueId, Mark>,
    pub(super) weights: Vec<WeightUse>,
    pub(super) biases: Vec<BiasUse>,
    /// (Relu/Clip, its producer): the producer takes over the activation's output.
    pub(super) merges: Vec<(NodeId, NodeId)>,
    /// Relu/Clip whose input takes the output's range.
    pub(super) range_from_output: Vec<(ValueId, ValueId)>,
    pub(super) nodes: usize,
    /// Every node the pass quantizes: only these read the dequantized copies.
    pub(super) members: BTreeSet<NodeId>,
    /// Activations whose type `nodes-config` sets (others: `activation-type`).
    pub(super) types: HashMap<ValueId, ActivationType>,
}

impl Plan {
    pub(super) fn is_marked(&self, v: ValueId) -> bool {
        self.marks.contains_key(&v)
    }

    /// An own-range mark never replaces an existing one; sharing always does (as
    /// onnxruntime's QDQ quantizer).
    pub(super) fn mark(&mut self, v: ValueId, m: Mark) {
        match self.marks.get(&v) {
            Some(_) if m == Mark::Act => return,
            Some(_) => {}
            None => self.order.push(v),
        }
        self.marks.insert(v, m);
    }

    pub(super) fn unmark(&mut self, v: ValueId) {
        self.marks.remove(&v);
        self.order.retain(|&x| x != v);
    }
}

/// A weight input of `node` at `slot`: the constant read directly or through a
/// 2-D Transpose.
pub(super) fn weight_at(
    g: &Graph,
    node: NodeId,
    slot: usize,
) -> Option<(ValueId, ConstSource, Option<NodeId>)> {
    let v = g.node(node).input(slot)?;
    if let Some((src, t)) = constant(g, v) {
        return t.dtype().is_float().then_some((v, src, None));
    }
    let p = g.producer(v)?;
    let t = g.node(p);
    if !t.is("", "Transpose") || g.value(v).uses().len() != 1 {
        return None;
    }
    let perm = t.attr("perm").map(|a| a.ints.clone());
    let w = t.input(0)?;
    let (src, tensor) = constant(g, w)?;
    let two_d = tensor.dims.len() == 2 && perm.as_ref().is_none_or(|p| p == &[1, 0]);
    (two_d && tensor.dtype().is_float()).then_some((w, src, Some(p)))
}

impl StaticQdq {
    pub(super) fn plan(
        &self,
        g: &Graph,
        outcome: &mut PassOutcome,
        excluded: &BTreeSet<String>,
    ) -> Plan {
        let mut plan = Plan::default();
        let from_dq: BTreeSet<ValueId> = g
            .nodes()
            .filter(|(_, n)| n.op_type == "DequantizeLinear")
            .flat_map(|(_, n)| n.outputs().iter().flatten().copied().collect::<Vec<_>>())
            .collect();
        // ONNX Runtime (1.32) drops a Relu whose only reader is a QuantizeLinear
        // when the zero point looks like the bottom of the type, and takes float8's
        // zero for that: with float8 a Relu output is never quantized; its input is,
        // and Relu commutes with a symmetric grid, so the values are the same.
        let float8 = self.config.activation_type.is_float8();
        let after_relu =
            |v: ValueId| float8 && g.producer(v).is_some_and(|p| g.node(p).op_type == "Relu");
        let act = |plan: &mut Plan, v: Option<ValueId>| {
            if let Some(v) = v {
                if !from_dq.contains(&v) && constant(g, v).is_none() && !after_relu(v) {
                    plan.mark(v, Mark::Act);
                }
            }
        };
        for (id, node) in g.nodes() {
            let op = node.op_type.as_str();
            if !node.domain().is_empty()
                || !self.selection.op_included(op)
                || op == "QuantizeLinear"
                || op == "DequantizeLinear"
            {
                continue;
            }
            if self.skipped_op(op) {
                outcome.skip(node.name(), format!("{op} stays float (keep-float)"));
                continue;
            }
            if self.selection.resolve(node.name()) == NodeOverride::Skip
                || excluded.contains(node.name())
            {
                outcome.skip(node.name(), "excluded");
                continue;
            }
            plan.members.insert(id);
            let before = (plan.order.len(), plan.weights.len(), plan.merges.len());
            match op {
                "MatMul" if self.config.matmul_const_b_only && weight_at(g, id, 1).is_none() => {
                    outcome.skip(node.name(), "B is not a constant (matmul-const-b-only)");
                    continue;
                }
                "Conv" | "ConvTranspose" | "Gemm" | "MatMul" => {
                    self.plan_weighted(g, id, &mut plan, &act, outcome)
                }
                "Relu" | "Clip" => {
                    let (Some(i), Some(o)) = (node.input(0), node.output(0)) else {
                        continue;
                    };
                    if !plan.is_marked(i) {
                        continue;
                    }
                    let producer = g.producer(i);
                    // Only an asymmetric integer grid clips at 0 as Relu does.
                    let mergeable = !self.config.activation_symmetric
                        && !self.config.activation_type.is_float8()
                        && producer.is_some()
                        && g.value(i).uses().len() == 1
                        && !g.is_graph_output(i)
                        && !g.is_graph_input(i)
                        && plan.marks.get(&i) == Some(&Mark::Act);
                    if mergeable {
                        plan.unmark(i);
                        plan.merges.push((id, producer.expect("checked")));
                    } else {
                        plan.range_from_output.push((i, o));
                    }
                    act(&mut plan, Some(o));
                }
                _ if SHARING.contains(&op) => {
                    let Some(i) = node.input(0) else { continue };
                    if plan.is_marked(i) {
                        for o in node.outputs().iter().flatten() {
                            plan.mark(*o, Mark::Shared(i));
                        }
                    }
                }
                "Where" => {
                    if node.input(1).is_some_and(|v| plan.is_marked(v))
                        && node.input(2).is_some_and(|v| plan.is_marked(v))
                    {
                        for o in node.outputs().iter().flatten() {
                            act(&mut plan, Some(*o));
                        }
                    }
                }
                _ => {
                    for (slot, v) in node.inputs().iter().enumerate() {
                        let Some(v) = *v else { continue };
                        match constant(g, v) {
                            // float8 constants would need float8 storage: they stay float.
                            Some((_, t))
                                if t.dtype().is_float()
                                    && self.config.activation_type.is_float8() => {}
                            Some((src, t)) if t.dtype().is_float() => {
                                plan.weights.push(WeightUse {
                                    node: id,
                                    slot,
                                    value: v,
                                    source: src,
                                    transpose: None,
                                    spec: self.const_act_spec(),
                                })
                            }
                            Some(_) => {}
                            None => act(&mut plan, Some(v)),
                        }
                    }
                    for o in node.outputs().iter().flatten() {
                        act(&mut plan, Some(*o));
                    }
                }
            }
            if (plan.order.len(), plan.weights.len(), plan.merges.len()) != before {
                plan.nodes += 1;
            }
        }
        self.plan_types(g, &mut plan);
        plan
    }

    /// Per-node activation types (`nodes-config`): every quantized value the node
    /// reads or writes takes the type (through shared scales, the value that owns
    /// them); where two nodes disagree, int16 wins.
    pub(super) fn plan_types(&self, g: &Graph, plan: &mut Plan) {
        for &n in &plan.members {
            let node = g.node(n);
            let NodeOverride::Quantize {
                activation_type: Some(t),
                ..
            } = self.selection.resolve(node.name())
            else {
                continue;
            };
            for &v in node.inputs().iter().chain(node.outputs()).flatten() {
                let mut root = v;
                while let Some(Mark::Shared(up)) = plan.marks.get(&root) {
                    root = *up;
                }
                if plan.marks.get(&root) == Some(&Mark::Act) {
                    let e = plan.types.entry(root).or_insert(t);
                    if t == ActivationType::Int16 {
                        *e = t;
                    }
                }
            }
        }
    }

    /// The domain of the Q/DQ of a value `nodes-config` gives type `t`, when not
    /// the pass's: int16 among 8-bit activations is written as com.microsoft
    /// Q/DQ. At opset 21 in the default domain, ONNX Runtime (1.32) fails to load
    /// such a mix (its QDQ propagation builds an int8 Q with a uint8 zero point).
    pub(super) fn override_domain(&self, t: ActivationType) -> Option<&'static str> {
        (t == ActivationType::Int16 && self.config.activation_type != ActivationType::Int16)
            .then_some("com.microsoft")
    }

    /// The type of activation `v`'s grid.
    pub(super) fn type_of(&self, plan: &Plan, v: ValueId) -> ActivationType {
        plan.types
            .get(&v)
            .copied()
            .unwrap_or(self.config.activation_type)
    }

    pub(super) fn plan_weighted(
        &self,
        g: &Graph,
        id: NodeId,
        plan: &mut Plan,
        act: &dyn Fn(&mut Plan, Option<ValueId>),
        outcome: &mut PassOutcome,
    ) {
        let node = g.node(id);
        let op = node.op_type.as_str();
        let rank_of = |v: ValueId| constant(g, v).map_or(0, |(_, t)| t.dims.len());
        let (wslot, axis) = match op {
            "Conv" => (1, 0),
            "ConvTranspose" => (1, 1),
            "Gemm" => (
                1,
                if node.attr_int("transB").unwrap_or(0) != 0 {
                    0
                } else {
                    1
                },
            ),
            _ => (1, 1),
        };
        // MatMul: any constant input is a weight (onnxruntime does the same for A).
        let mut weight_index = None;
        for slot in 0..node.inputs().len().min(2) {
            let w = if slot == wslot || op == "MatMul" {
                weight_at(g, id, slot)
            } else {
                None
            };
            match w {
                Some((value, source, transpose)) => {
                    let rank = if transpose.is_some() {
                        2
                    } else {
                        rank_of(value)
                    };
                    let axis = (self.config.per_channel && axis < rank).then_some(axis);
                    if slot == wslot {
                        weight_index = Some(plan.weights.len());
                    }
                    plan.weights.push(WeightUse {
                        node: id,
                        slot,
                        value,
                        source,
                        transpose,
                        spec: self.weight_spec(axis),
                    });
                }
                None => act(plan, node.input(slot)),
            }
        }
        if !self.config.exclude_output_ops.iter().any(|o| o == op) {
            for o in node.outputs().iter().take(1).flatten() {
                act(plan, Some(*o));
            }
        }
        let Some(bias) = node.input(2) else { return };
        if op == "MatMul" {
            return;
        }
        let beta = node.attr_float("beta").unwrap_or(1.0);
        match (constant(g, bias), weight_index, node.input(0)) {
            (Some((src, t)), Some(w), Some(input))
                if t.dtype().is_float() && beta == 1.0 && plan.is_marked(input) =>
            {
                plan.biases.push(BiasUse {
                    node: id,
                    value: bias,
                    source: src,
                    input,
                    weight: w,
                })
            }
            _ => outcome.skip(
                node.name(),
                "bias left float (not a constant, beta != 1, or weight not constant)",
            ),
        }
    }
}
