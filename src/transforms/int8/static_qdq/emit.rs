//! Writing the plan into the graph: QuantizeLinear/DequantizeLinear pairs on
//! activations, quantized weights and int32 biases behind DequantizeLinear.
use super::*;

/// Scale/zero point initializers of one quantized tensor.
#[derive(Clone, Copy)]
pub(super) struct ParamVals {
    pub(super) scale: ValueId,
    pub(super) zero_point: ValueId,
}

pub(super) fn apply(
    pass: &StaticQdq,
    g: &mut Graph,
    plan: &Plan,
    params: &HashMap<ValueId, ScaleZp>,
    domain: &str,
    outcome: &mut PassOutcome,
) -> Result<()> {
    // Relu/Clip folding: the producer takes over the activation's output value.
    let mut remap: HashMap<NodeId, NodeId> = HashMap::new();
    for &(relu, producer) in &plan.merges {
        let p = g.node(producer).clone();
        let mut spec = NodeSpec::new(p.domain(), &p.op_type)
            .name(p.name().to_string())
            .inputs(p.inputs().to_vec())
            .meta(PASS_KEY, NAME);
        spec.attributes = p.attributes.clone();
        let new = g.swap_node(relu, spec)?;
        g.remove_node(producer)?;
        remap.insert(producer, new);
        outcome.count("activations folded", 1);
    }
    let outputs = pass.config.quantize_outputs;
    let root_of = |mut v: ValueId| {
        while let Some(Mark::Shared(up)) = plan.marks.get(&v) {
            v = *up;
        }
        v
    };
    let mut made: HashMap<ValueId, ParamVals> = HashMap::new();
    // Activations with their own range, then those sharing one (in plan order, so a
    // provider is always done first).
    for &v in &plan.order {
        let Mark::Act = plan.marks[&v] else { continue };
        let Some(p) = params.get(&v) else { continue };
        let base = g.value_name(v).to_string();
        let pv = ParamVals {
            scale: add_named(g, &format!("{base}_scale"), scale_tensor(&[*p], vec![]))?,
            zero_point: add_named(
                g,
                &format!("{base}_zero_point"),
                pass.type_of(plan, v).zero_point(*p),
            )?,
        };
        made.insert(v, pv);
        let d = pass
            .override_domain(pass.type_of(plan, v))
            .unwrap_or(domain);
        insert_qdq(g, v, pv, d, outputs, &plan.members, &mut remap)?;
        outcome.count("activations quantized", 1);
    }
    for &v in &plan.order {
        let Mark::Shared(_) = plan.marks[&v] else {
            continue;
        };
        let Some(&pv) = made.get(&root_of(v)) else {
            continue;
        };
        made.insert(v, pv);
        let d = pass
            .override_domain(pass.type_of(plan, root_of(v)))
            .unwrap_or(domain);
        insert_qdq(g, v, pv, d, outputs, &plan.members, &mut remap)?;
        outcome.count("activations quantized", 1);
    }
    let node_of = |old: NodeId| remap.get(&old).copied().unwrap_or(old);
    // Parameters nobody reads (graph outputs without consumers) go again.
    for pv in made.values() {
        if g.value(pv.scale).uses().is_empty() && g.initializer(pv.scale).is_some() {
            g.remove_initializer(pv.scale)?;
            g.remove_initializer(pv.zero_point)?;
        }
    }
    // Weights: parameters first, enlarged for int32 biases, then codes.
    let mut wparams: Vec<Option<Vec<ScaleZp>>> = vec![None; plan.weights.len()];
    let mut wdata: Vec<Option<(Vec<f32>, Vec<usize>)>> = vec![None; plan.weights.len()];
    for (i, w) in plan.weights.iter().enumerate() {
        let (vals, dims) = read_weight(g, w)?;
        let p = int8::weight_params(&vals, &dims, &w.spec)
            .map_err(|e| Error::tensor(g.value_name(w.value), e.to_string()))?;
        wparams[i] = Some(p);
        wdata[i] = Some((vals, dims));
    }
    let mut bias_inputs = Vec::new();
    for b in &plan.biases {
        let Some(&in_p) = params.get(&root_of(b.input)) else {
            continue;
        };
        let Some(Some(wp)) = wparams.get_mut(b.weight) else {
            continue;
        };
        let spec = plan.weights[b.weight].spec;
        let symmetric_int =
            matches!(spec.qtype, QType::I8 | QType::I16) && wp.iter().all(|p| p.zero_point == 0);
        let bias =
            crate::transforms::common::nbits::read_f32(constant(g, b.value).expect("constant").1)?;
        if symmetric_int && int8::adjust_scales_for_bias(&bias, in_p.scale, wp) {
            outcome.count("weight scales enlarged for int32 biases", 1);
        }
        bias_inputs.push((b, in_p, bias));
    }
    // A weight read by several nodes with the same settings is quantized once.
    let mut shared: HashMap<(ValueId, bool, WeightSpec), ParamVals> = HashMap::new();
    let mut dq_of: HashMap<(ValueId, bool, WeightSpec), ValueId> = HashMap::new();
    for (i, w) in plan.weights.iter().enumerate() {
        let key = (w.value, w.transpose.is_some(), w.spec);
        let consumer = node_of(w.node);
        if !g.contains_node(consumer) {
            continue;
        }
        let dq = match dq_of.get(&key) {
            Some(&dq) => dq,
            None => {
                let (vals, dims) = wdata[i].take().expect("read once per use");
                let p = wparams[i].clone().expect("computed");
                let q = int8::quantize_with(&vals, &dims, &p, w.spec.axis, w.spec.qtype)
                    .map_err(|e| Error::tensor(g.value_name(w.value), e.to_string()))?;
                let original = constant(g, w.value).expect("constant").1.clone();
                let base = if w.transpose.is_some() {
                    format!("{}_Transposed", g.value_name(w.value))
                } else {
                    g.value_name(w.value).to_string()
                };
                let pdims = if w.spec.axis.is_some() {
                    vec![p.len() as i64]
                } else {
                    vec![]
                };
                let data = codes_tensor(
                    "",
                    w.spec.qtype,
                    dims.iter().map(|&d| d as i64).collect(),
                    &q,
                )
                .stored_like(&original);
                outcome.count("weight bytes before", original.stored_len() as u64);
                outcome.count("weight bytes after", data.stored_len() as u64);
                let data = add_named(g, &format!("{base}_quantized"), data)?;
                let pv = ParamVals {
                    scale: add_named(g, &format!("{base}_scale"), scale_tensor(&p, pdims.clone()))?,
                    zero_point: add_named(
                        g,
                        &format!("{base}_zero_point"),
                        zp_tensor(&p, w.spec.qtype, pdims),
                    )?,
                };
                let dq = add_dq(
                    g,
                    data,
                    pv,
                    &format!("{base}_DequantizeLinear"),
                    w.spec.axis,
                    domain,
                    consumer,
                )?;
                shared.insert(key, pv);
                dq_of.insert(key, dq);
                outcome.count("weights quantized", 1);
                dq
            }
        };
        g.set_input(consumer, w.slot, Some(dq));
        if let Some(t) = w.transpose {
            if g.contains_node(t)
                && g.node(t)
                    .outputs()
                    .iter()
                    .flatten()
                    .all(|&o| g.value(o).uses().is_empty() && !g.is_graph_output(o))
            {
                g.remove_node(t)?;
            }
        }
        drop_if_unused(g, w.value, w.source);
    }
    for (b, in_p, bias) in bias_inputs {
        let w = &plan.weights[b.weight];
        let key = (w.value, w.transpose.is_some(), w.spec);
        let Some(&wp) = shared.get(&key) else {
            continue;
        };
        let wscales = g
            .initializer(wp.scale)
            .map(|t| t.to_f32())
            .transpose()?
            .unwrap_or_default();
        let wparams: Vec<ScaleZp> = wscales
            .iter()
            .map(|&s| ScaleZp {
                scale: s,
                zero_point: 0,
            })
            .collect();
        let (codes, scales) = int8::quantize_bias(&bias, in_p.scale, &wparams);
        let base = g.value_name(b.value).to_string();
        let t = constant(g, b.value).expect("constant").1.clone();
        let per_channel = scales.len() > 1;
        let sdims = if per_channel {
            vec![scales.len() as i64]
        } else {
            vec![]
        };
        let data = Tensor::from_raw(
            "",
            DType::I32,
            t.dims.clone(),
            bytes::Bytes::from(
                codes
                    .iter()
                    .flat_map(|c| c.to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
        )
        .stored_like(&t);
        let data = add_named(g, &format!("{base}_quantized"), data)?;
        let pv = ParamVals {
            scale: add_named(
                g,
                &format!("{base}_quantized_scale"),
                Tensor::from_f32("", sdims.clone(), &scales),
            )?,
            zero_point: add_named(
                g,
                &format!("{base}_quantized_zero_point"),
                Tensor::from_raw(
                    "",
                    DType::I32,
                    sdims,
                    bytes::Bytes::from(vec![0u8; 4 * if per_channel { scales.len() } else { 1 }]),
                ),
            )?,
        };
        let consumer = node_of(b.node);
        let dq = add_dq(
            g,
            data,
            pv,
            &format!("{base}_DequantizeLinear"),
            per_channel.then_some(0),
            domain,
            consumer,
        )?;
        g.set_input(consumer, 2, Some(dq));
        drop_if_unused(g, b.value, b.source);
        outcome.count("biases quantized", 1);
    }
    Ok(())
}

/// Reads the tensor a weight use sees (transposed through its Transpose node).
pub(super) fn read_weight(g: &Graph, w: &WeightUse) -> Result<(Vec<f32>, Vec<usize>)> {
    let t = constant(g, w.value).expect("constant").1;
    let vals = crate::transforms::common::nbits::read_f32(t)?;
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    if w.transpose.is_some() {
        let (r, c) = (dims[0], dims[1]);
        return Ok((crate::quant::transpose(&vals, r, c), vec![c, r]));
    }
    Ok((vals, dims))
}

pub(super) fn add_dq(
    g: &mut Graph,
    data: ValueId,
    pv: ParamVals,
    name: &str,
    axis: Option<usize>,
    domain: &str,
    before: NodeId,
) -> Result<ValueId> {
    let out = g.fresh_name(&format!("{}_Output", name));
    let mut spec = NodeSpec::new(domain, "DequantizeLinear")
        .name(g.fresh_node_name(name))
        .inputs([Some(data), Some(pv.scale), Some(pv.zero_point)])
        .output(out)
        .meta(PASS_KEY, NAME);
    if let Some(a) = axis {
        spec = spec.attr(Attribute::int("axis", a as i64));
    }
    let id = g.add_node(spec)?;
    g.place_before(id, before);
    Ok(g.node(id).output(0).expect("one output"))
}

/// `v → Q → DQ`, readers of `v` reading the DQ output instead: all of them when a
/// quantized node (`members`) produces `v`, else only the quantized ones. A graph output keeps its
/// float value unless `outputs` is set: then its producer writes a new value and
/// the DQ takes over the output's name (the producer's id moves, recorded in
/// `remap`). Without quantized consumers nothing is inserted.
pub(super) fn insert_qdq(
    g: &mut Graph,
    v: ValueId,
    pv: ParamVals,
    domain: &str,
    outputs: bool,
    members: &BTreeSet<NodeId>,
    remap: &mut HashMap<NodeId, NodeId>,
) -> Result<()> {
    let base = g.value_name(v).to_string();
    if outputs && g.is_graph_output(v) {
        if let Some(p) = g.producer(v).filter(|&p| g.node(p).outputs().len() == 1) {
            let node = g.node(p).clone();
            let mut spec = NodeSpec::new(node.domain(), &node.op_type)
                .name(node.name().to_string())
                .inputs(node.inputs().to_vec())
                .output(g.fresh_name(&format!("{base}_QuantizeLinear_Input")))
                .meta(PASS_KEY, NAME);
            spec.attributes = node.attributes.clone();
            let new = g.add_node(spec)?;
            g.place_before(new, p);
            let raw = g.node(new).output(0).expect("one output");
            let q = g.add_node(
                NodeSpec::new(domain, "QuantizeLinear")
                    .name(g.fresh_node_name(&format!("{base}_QuantizeLinear")))
                    .inputs([Some(raw), Some(pv.scale), Some(pv.zero_point)])
                    .output(g.fresh_name(&format!("{base}_QuantizeLinear_Output")))
                    .meta(PASS_KEY, NAME),
            )?;
            g.place_before(q, p);
            let qo = g.node(q).output(0).expect("one output");
            g.swap_node(
                p,
                NodeSpec::new(domain, "DequantizeLinear")
                    .name(g.fresh_node_name(&format!("{base}_DequantizeLinear")))
                    .inputs([Some(qo), Some(pv.scale), Some(pv.zero_point)])
                    .meta(PASS_KEY, NAME),
            )?;
            for old in remap.values_mut().filter(|n| **n == p) {
                *old = new;
            }
            remap.insert(p, new);
            return Ok(());
        }
    }
    let member = |n: NodeId| {
        members.contains(&n)
            || remap
                .iter()
                .any(|(old, new)| *new == n && members.contains(old))
    };
    // The output of a quantized op is quantized for every reader (as onnxruntime);
    // anything else only for the quantized readers, so a node left float reads float.
    let all = g.producer(v).is_some_and(member);
    let users: Vec<(NodeId, usize)> = g
        .value(v)
        .uses()
        .iter()
        .filter_map(|u| match u {
            crate::ir::Use::Input(n, s) if all || member(*n) => Some((*n, *s)),
            _ => None,
        })
        .collect();
    if users.is_empty() {
        return Ok(());
    }
    let first = g
        .node_ids()
        .into_iter()
        .find(|n| users.iter().any(|(u, _)| u == n))
        .unwrap_or(users[0].0);
    let q = g.add_node(
        NodeSpec::new(domain, "QuantizeLinear")
            .name(g.fresh_node_name(&format!("{base}_QuantizeLinear")))
            .inputs([Some(v), Some(pv.scale), Some(pv.zero_point)])
            .output(g.fresh_name(&format!("{base}_QuantizeLinear_Output")))
            .meta(PASS_KEY, NAME),
    )?;
    g.place_before(q, first);
    let qo = g.node(q).output(0).expect("one output");
    let dq = g.add_node(
        NodeSpec::new(domain, "DequantizeLinear")
            .name(g.fresh_node_name(&format!("{base}_DequantizeLinear")))
            .inputs([Some(qo), Some(pv.scale), Some(pv.zero_point)])
            .output(g.fresh_name(&format!("{base}_DequantizeLinear_Output")))
            .meta(PASS_KEY, NAME),
    )?;
    g.place_before(dq, first);
    let dqo = g.node(dq).output(0).expect("one output");
    for (n, s) in users {
        g.set_input(n, s, Some(dqo));
    }
    Ok(())
}
