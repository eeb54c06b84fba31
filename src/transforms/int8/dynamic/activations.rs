//! Activations quantized at run time: DynamicQuantizeLinear (onnxruntime's
//! per-tensor form) or per-token absmax rows, and the rescaling of integer products
//! back to float.
use super::*;

/// Whether the only reader of `node`'s output is an Add of a constant (either
/// side: ONNX Runtime puts constants second first): the bias it folds into
/// MatMulIntegerToFloat.
pub(super) fn feeds_constant_add(g: &Graph, node: NodeId) -> bool {
    let Some(out) = g.node(node).output(0) else {
        return false;
    };
    match g.value(out).uses() {
        [crate::ir::Use::Input(user, slot)] => {
            let add = g.node(*user);
            add.op_type == "Add"
                && add
                    .input(1 - slot.min(&1))
                    .is_some_and(|b| constant(g, b).is_some())
        }
        _ => false,
    }
}

/// Places `int_node` before `anchor` and adds Cast(int32 → float32) and the Mul of
/// the two scales; returns the spec of the final Mul (no outputs yet: the caller
/// swaps it in for the original node or gives it a new output).
///
/// `Mul(Cast, Mul(A_scale, W_scale))` is what ONNX Runtime fuses into
/// MatMulIntegerToFloat (u8·s8 GEMM and scaling in one kernel). With per-row A
/// scales that kernel (1.32) adds a fused constant bias *before* scaling by them,
/// multiplying the bias by each row's scale; `split` writes
/// `Mul(Mul(Cast, W_scale), A_scale)` instead, which it does not fuse.
#[allow(clippy::too_many_arguments)]
pub(super) fn rescale(
    g: &mut Graph,
    anchor: NodeId,
    int_node: NodeId,
    name: &str,
    int_out: &str,
    ascale: ValueId,
    wscale: ValueId,
    split: bool,
) -> Result<NodeSpec> {
    g.place_before(int_node, anchor);
    let int_val = g.node(int_node).output(0).expect("one output");
    let cast = g.add_node(
        NodeSpec::new("", "Cast")
            .name(g.fresh_node_name(&format!("{int_out}_cast")))
            .input(int_val)
            .output(g.fresh_name(&format!("{int_out}_cast_output")))
            .attr(Attribute::int("to", DType::F32.code() as i64))
            .meta(PASS_KEY, NAME),
    )?;
    g.place_before(cast, anchor);
    let c = g.node(cast).output(0).expect("one output");
    let (x, y, mul_name, mul_out) = if split {
        (
            c,
            wscale,
            "quant_weight_scale_mul",
            format!("{int_out}_column_scaled"),
        )
    } else {
        (
            ascale,
            wscale,
            "quant_scales_mul",
            format!("{name}_quant_scales_mul:0"),
        )
    };
    let first = g.add_node(
        NodeSpec::new("", "Mul")
            .name(g.fresh_node_name(&format!("{name}_{mul_name}")))
            .inputs([Some(x), Some(y)])
            .output(g.fresh_name(&mul_out))
            .meta(PASS_KEY, NAME),
    )?;
    g.place_before(first, anchor);
    let f = g.node(first).output(0).expect("one output");
    let inputs = if split { [f, ascale] } else { [c, f] };
    Ok(NodeSpec::new("", "Mul")
        .name(g.fresh_node_name(&format!("{name}_quant_output_scale_mul")))
        .inputs(inputs.map(Some))
        .meta(PASS_KEY, NAME))
}

/// The DynamicQuantizeLinear of activation `a` (one per value), placed before `user`.
pub(super) fn dynamic_quantize(
    g: &mut Graph,
    a: ValueId,
    user: NodeId,
    st: &mut State,
) -> Result<(ValueId, ValueId, ValueId)> {
    if let Some(&q) = st.activations.get(&a) {
        return Ok(q);
    }
    let base = g.value_name(a).to_string();
    let id = g.add_node(
        NodeSpec::new("", "DynamicQuantizeLinear")
            .name(g.fresh_node_name(&format!("{base}_QuantizeLinear")))
            .input(a)
            .output(g.fresh_name(&format!("{base}_quantized")))
            .output(g.fresh_name(&format!("{base}_scale")))
            .output(g.fresh_name(&format!("{base}_zero_point")))
            .meta(PASS_KEY, NAME),
    )?;
    g.place_before(id, user);
    let n = g.node(id);
    let q = (
        n.output(0).expect("output"),
        n.output(1).expect("output"),
        n.output(2).expect("output"),
    );
    st.activations.insert(a, q);
    Ok(q)
}

/// The per-token quantization of activation `a` (one per value), placed before
/// `user`: row scales s = max(absmax over the last axis, ε) / 127 and codes
/// Round(a / s + 128) as uint8 with zero point 128, i.e. symmetric int8 values in
/// the u8·s8 form ONNX Runtime's integer GEMM is fast at (int8 A ran ~12x slower
/// there on SmolLM2). |a / s| <= 127 up to one rounding, so the Cast never
/// saturates; 128 is even, so ties still round to even (the add itself rounds a / s
/// to 2⁻¹⁶, which moves only values that close to a half).
pub(super) fn token_quantize(
    g: &mut Graph,
    a: ValueId,
    user: NodeId,
    st: &mut State,
) -> Result<(ValueId, ValueId, ValueId)> {
    if let Some(&q) = st.tokens.get(&a) {
        return Ok(q);
    }
    let c = match st.token_consts {
        Some(c) => c,
        None => {
            let f = |v: f32| Tensor::from_f32("", vec![], &[v]);
            let c = TokenConsts {
                eps: add_named(g, "token_absmax_floor", f(1e-30))?,
                q127: add_named(g, "token_int8_max", f(127.0))?,
                zp_f: add_named(g, "token_zero_point_float", f(128.0))?,
                zp: add_named(
                    g,
                    "token_zero_point",
                    codes_tensor("", QType::U8, vec![], &[128]),
                )?,
                axes: if st.opset >= 18 {
                    Some(add_named(
                        g,
                        "token_reduce_axes",
                        Tensor::from_i64("", vec![1], &[-1]),
                    )?)
                } else {
                    None
                },
            };
            st.token_consts = Some(c);
            c
        }
    };
    let TokenConsts {
        eps,
        q127,
        zp_f,
        zp,
        axes,
    } = c;
    let base = g.value_name(a).to_string();
    let step = |g: &mut Graph, spec: NodeSpec, suffix: &str| -> Result<ValueId> {
        let id = g.add_node(
            spec.name(g.fresh_node_name(&format!("{base}_{suffix}")))
                .output(g.fresh_name(&format!("{base}_{suffix}")))
                .meta(PASS_KEY, NAME),
        )?;
        g.place_before(id, user);
        Ok(g.node(id).output(0).expect("one output"))
    };
    let abs = step(g, NodeSpec::new("", "Abs").input(a), "abs")?;
    let reduce = NodeSpec::new("", "ReduceMax").attr(Attribute::int("keepdims", 1));
    let reduce = match axes {
        Some(axes) => reduce.inputs([Some(abs), Some(axes)]),
        None => reduce.input(abs).attr(Attribute::ints("axes", vec![-1])),
    };
    let absmax = step(g, reduce, "absmax")?;
    let binary = |g: &mut Graph, op: &str, x: ValueId, y: ValueId, suffix: &str| {
        step(g, NodeSpec::new("", op).inputs([Some(x), Some(y)]), suffix)
    };
    let floored = binary(g, "Max", absmax, eps, "absmax_floored")?;
    let scale = binary(g, "Div", floored, q127, "token_scale")?;
    let scaled = binary(g, "Div", a, scale, "scaled")?;
    let shifted = binary(g, "Add", scaled, zp_f, "shifted")?;
    let rounded = step(g, NodeSpec::new("", "Round").input(shifted), "rounded")?;
    let codes = step(
        g,
        NodeSpec::new("", "Cast")
            .input(rounded)
            .attr(Attribute::int("to", DType::U8.code() as i64)),
        "quantized",
    )?;
    st.tokens.insert(a, (codes, scale, zp));
    Ok((codes, scale, zp))
}

/// The bias of a Conv shaped [1, M, 1, ...] so it broadcasts over the output.
pub(super) fn broadcast_bias(
    g: &mut Graph,
    b: ValueId,
    rank: usize,
    anchor: NodeId,
) -> Result<ValueId> {
    let mut shape = vec![1i64; rank.max(2)];
    shape[1] = -1;
    let base = g.value_name(b).to_string();
    if let Some((_, t)) = constant(g, b) {
        if t.dims.len() == 1 {
            let mut dims = vec![1i64; rank.max(2)];
            dims[1] = t.dims[0];
            let mut r = t.clone();
            r.dims = dims;
            return add_named(g, &format!("{base}_reshaped"), r);
        }
    }
    let s = add_named(
        g,
        &format!("{base}_reshape_shape"),
        Tensor::from_i64("", vec![shape.len() as i64], &shape),
    )?;
    let id = g.add_node(
        NodeSpec::new("", "Reshape")
            .name(g.fresh_node_name(&format!("{base}_Reshape")))
            .inputs([Some(b), Some(s)])
            .output(g.fresh_name(&format!("{base}_reshaped")))
            .meta(PASS_KEY, NAME),
    )?;
    g.place_before(id, anchor);
    Ok(g.node(id).output(0).expect("one output"))
}
