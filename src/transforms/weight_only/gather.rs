//! Quantized embedding tables: Gather on a constant [vocab, hidden] float table
//! becomes com.microsoft GatherBlockQuantized with uint8-packed data (the layout
//! onnxruntime-genai uses), blocks along the hidden axis.
//!
//! Tied tables: when the weight-only pass already quantized the table for a lm_head
//! that reads it transposed (MatMul(h, Transpose(table)) or Gemm transB=1), with the
//! same bits and block size, the Gather reads that MatMulNBits' B through a Reshape
//! ([vocab, k_blocks, blob] → [vocab, k_blocks·blob], same bytes) and its scales and
//! zero points as they are: the table is stored once. A hidden size that is not a
//! whole number of blocks is padded in the blocks and sliced off the output.
use serde::Deserialize;

use super::matmul_nbits::validate;
use crate::error::{Error, Result};
use crate::ir::{float_bytes, scale_dtype};
use crate::ir::{Attribute, DType, Graph, Model, NodeId, NodeSpec, Tensor, Use, ValueId};
use crate::rewrite::matchers::{constant, not_constant_reason, ConstSource};
use crate::rewrite::{Pass, PassCx, PassOutcome, PASS_KEY};
use crate::transforms::common::nbits::{self as kernels, new_tensor};
use crate::transforms::common::select::{annotation, Precision};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct GatherConfig {
    pub bits: u8,
    pub block_size: usize,
    pub symmetric: bool,
}

impl Default for GatherConfig {
    fn default() -> Self {
        GatherConfig {
            bits: 4,
            block_size: 32,
            symmetric: true,
        }
    }
}

pub const GATHER_KEYS: &[&str] = &["bits", "block-size", "symmetric"];

pub struct GatherBlockQuantized {
    config: GatherConfig,
}

impl GatherBlockQuantized {
    pub fn new(config: GatherConfig) -> Result<Self> {
        if config.bits != 4 && config.bits != 8 {
            return Err(Error::invalid(format!(
                "GatherBlockQuantized: bits={} (valid: 4, 8)",
                config.bits
            )));
        }
        validate(
            config.bits,
            config.block_size,
            kernels::Format::Matmulnbits,
            Default::default(),
        )?;
        Ok(GatherBlockQuantized { config })
    }

    fn run_graph(&self, g: &mut Graph, opset: i64, outcome: &mut PassOutcome) -> Result<()> {
        // In a decoder, a table whose rows are not hidden-size vectors is no embedding:
        // rotary cos/sin caches are gathered by position and lose far more at 4 bits.
        let hidden = crate::llm::DecoderMap::build(g).ok().map(|m| m.hidden_size);
        for id in g.node_ids() {
            if !g.contains_node(id) || !g.node(id).is("", "Gather") {
                continue;
            }
            if let Some(hidden) = hidden {
                let rows = g
                    .node(id)
                    .input(0)
                    .and_then(|d| constant(g, d))
                    .and_then(|(_, t)| t.dims.get(1).copied());
                if rows.is_some_and(|r| r != hidden as i64) {
                    let name = g.node(id).name().to_string();
                    outcome.skip(
                        &name,
                        format!(
                            "rows of {} values are not the decoder's hidden size {hidden} \
                             (a rotary cos/sin cache or another position table stays float)",
                            rows.unwrap_or(0)
                        ),
                    );
                    continue;
                }
            }
            // The precision mixed-precision chose for this table, if any.
            match annotation(g.node(id)) {
                Some(Precision::Float) => {
                    let name = g.node(id).name().to_string();
                    outcome.skip(&name, "left float by mixed-precision");
                }
                Some(Precision::Nbits { bits, block_size }) => {
                    GatherBlockQuantized::new(GatherConfig {
                        bits,
                        block_size,
                        symmetric: self.config.symmetric,
                    })?
                    .rewrite(g, id, opset, outcome)?;
                }
                None => self.rewrite(g, id, opset, outcome)?,
            }
        }
        Ok(())
    }

    /// Rewrites Gather `id` on a constant [vocab, hidden] float table into
    /// GatherBlockQuantized (sharing a tied lm_head's quantized rows when there is
    /// one), or records why it stays.
    pub fn rewrite(
        &self,
        g: &mut Graph,
        id: NodeId,
        opset: i64,
        outcome: &mut PassOutcome,
    ) -> Result<()> {
        let node = g.node(id);
        let name = node.name().to_string();
        if node.attr_int("axis").unwrap_or(0) != 0 {
            outcome.skip(&name, "Gather axis is not 0");
            return Ok(());
        }
        let (Some(data), Some(indices)) = (node.input(0), node.input(1)) else {
            return Ok(());
        };
        let Some((source, table)) = constant(g, data) else {
            outcome.skip(&name, not_constant_reason(g, data));
            return Ok(());
        };
        if table.dims.len() != 2 || !matches!(table.dtype(), DType::F32 | DType::F16 | DType::BF16)
        {
            outcome.skip(
                &name,
                format!("table '{}' is not a 2-D float tensor", table.name()),
            );
            return Ok(());
        }
        let (vocab, hidden) = (table.dims[0] as usize, table.dims[1] as usize);
        let base = g.value_name(data).to_string();
        let shared = match self.shared_rows(g, &base, vocab, hidden, table.dtype(), opset) {
            Ok(s) => s,
            Err(why) => {
                outcome
                    .notes
                    .push(format!("'{base}' is not shared with its lm_head: {why}"));
                None
            }
        };
        if let Some(shared) = shared {
            self.emit_shared(g, id, indices, &shared, hidden, outcome)?;
        } else {
            if hidden % self.config.block_size != 0 && opset < 10 {
                outcome.skip(
                    &name,
                    format!(
                        "hidden size {hidden} is not a multiple of block size {} and \
                         slicing the padding off needs opset 10 (the model has {opset})",
                        self.config.block_size
                    ),
                );
                return Ok(());
            }
            let table = table.clone();
            self.emit_own(g, id, indices, &table, &base, outcome)?;
        }
        if g.value(data).uses().is_empty() && !g.is_graph_output(data) {
            match source {
                ConstSource::Initializer(v) => {
                    let _ = g.remove_initializer(v);
                }
                ConstSource::ConstantNode(n) => {
                    let _ = g.remove_node(n);
                }
            }
        } else {
            outcome.notes.push(format!(
                "'{base}' is also read by other nodes; the float table stays for them"
            ));
        }
        outcome.count("embeddings quantized", 1);
        outcome.changed = true;
        Ok(())
    }

    /// Quantizes the table itself (a slice of rows at a time, see
    /// [`kernels::quantize_weight`]): GatherBlockQuantized over new initializers.
    fn emit_own(
        &self,
        g: &mut Graph,
        id: NodeId,
        indices: ValueId,
        table: &Tensor,
        base: &str,
        outcome: &mut PassOutcome,
    ) -> Result<()> {
        let (vocab, hidden) = (table.dims[0] as usize, table.dims[1] as usize);
        let (bits, block_size) = (self.config.bits, self.config.block_size);
        // The table is [vocab, hidden]: rows of K, as a weight read transposed.
        let q = kernels::quantize_weight(
            table,
            true,
            &kernels::Params {
                bits,
                block_size,
                symmetric: self.config.symmetric,
                algorithm: kernels::Algorithm::Rtn,
            },
        )?
        .q;
        let kb = hidden.div_ceil(block_size) as i64;
        let row_bytes = kb * (block_size * bits as usize / 8) as i64;
        let dname = g.fresh_name(&format!("{base}_Q{bits}"));
        let dq = g.add_initializer(
            new_tensor(&dname, DType::U8, vec![vocab as i64, row_bytes], q.packed)
                .stored_like(table),
        )?;
        let sname = g.fresh_name(&format!("{base}_scales"));
        let sc = g.add_initializer(
            new_tensor(
                &sname,
                scale_dtype(table.dtype()),
                vec![vocab as i64, kb],
                float_bytes(table.dtype(), &q.scales),
            )
            .stored_like(table),
        )?;
        let zp = match q.zero_points {
            Some(z) => {
                let zname = g.fresh_name(&format!("{base}_zero_points"));
                let per_row = (z.len() / vocab) as i64;
                Some(
                    g.add_initializer(
                        new_tensor(&zname, DType::U8, vec![vocab as i64, per_row], z)
                            .stored_like(table),
                    )?,
                )
            }
            None => None,
        };
        self.emit_gather(
            g,
            id,
            [dq, indices, sc],
            zp,
            (bits, block_size),
            hidden,
            outcome,
        )?;
        Ok(())
    }

    /// Replaces Gather `id` by GatherBlockQuantized(data, indices, scales[, zero
    /// points]); when `hidden` is not a whole number of blocks the table is padded,
    /// and a Slice cuts the output back to `hidden`. Returns the new first node.
    #[allow(clippy::too_many_arguments)]
    fn emit_gather(
        &self,
        g: &mut Graph,
        id: NodeId,
        [data, indices, scales]: [ValueId; 3],
        zero_points: Option<ValueId>,
        (bits, block_size): (u8, usize),
        hidden: usize,
        outcome: &mut PassOutcome,
    ) -> Result<NodeId> {
        let name = g.node(id).name().to_string();
        let mut inputs = vec![Some(data), Some(indices), Some(scales)];
        if zero_points.is_some() {
            inputs.push(zero_points);
        }
        let spec = self.gather_spec(
            g.fresh_node_name(&format!("{name}_Q{bits}")),
            inputs,
            bits,
            block_size,
        );
        let padded = hidden.div_ceil(block_size) * block_size;
        if padded == hidden {
            return g.swap_node(id, spec);
        }
        let out = g.node(id).output(0).expect("Gather has an output");
        let padded_name = g.fresh_name(&format!("{}_padded", g.value_name(out)));
        let gbq = g.add_node(spec.output(padded_name))?;
        let gbq_out = g.node(gbq).output(0).expect("one output");
        let mut slice_inputs = vec![Some(gbq_out)];
        for (what, v) in [("starts", 0), ("ends", hidden as i64), ("axes", -1)] {
            let n = g.fresh_name(&format!("{name}_Slice_{what}"));
            slice_inputs.push(Some(g.add_initializer(Tensor::from_i64(
                n,
                vec![1],
                &[v],
            ))?));
        }
        let slice = g.swap_node(
            id,
            NodeSpec::new("", "Slice")
                .name(g.fresh_node_name(&format!("{name}_Slice")))
                .inputs(slice_inputs)
                .meta(PASS_KEY, "gather-block-quantized"),
        )?;
        g.place_before(gbq, slice);
        outcome.notes.push(format!(
            "'{name}': hidden size {hidden} is padded to {padded} in the quantized \
             blocks; the padding is sliced off"
        ));
        Ok(gbq)
    }

    fn gather_spec(
        &self,
        name: String,
        inputs: Vec<Option<ValueId>>,
        bits: u8,
        block_size: usize,
    ) -> NodeSpec {
        NodeSpec::new("com.microsoft", "GatherBlockQuantized")
            .name(name)
            .inputs(inputs)
            .attr(Attribute::int("bits", bits as i64))
            .attr(Attribute::int("block_size", block_size as i64))
            .attr(Attribute::int("gather_axis", 0))
            .attr(Attribute::int("quantize_axis", 1))
            .meta(PASS_KEY, "gather-block-quantized")
    }

    /// The quantized rows of `table` a MatMulNBits of this graph already holds (a
    /// tied lm_head, quantized by the weight-only pass from the same tensor read
    /// transposed). `Err` says why an existing one cannot be shared.
    fn shared_rows(
        &self,
        g: &Graph,
        table: &str,
        vocab: usize,
        hidden: usize,
        dtype: DType,
        opset: i64,
    ) -> std::result::Result<Option<SharedRows>, String> {
        for (b, t) in g.initializers() {
            if t.quantized_rows_source() != Some(table) {
                continue;
            }
            for u in g.value(b).uses() {
                let Use::Input(n, 1) = *u else { continue };
                let node = g.node(n);
                if !node.is("com.microsoft", "MatMulNBits") {
                    continue;
                }
                let attr = |k: &str| node.attr_int(k).unwrap_or(-1);
                let (bits, block) = (attr("bits"), attr("block_size"));
                if attr("K") != hidden as i64 || attr("N") != vocab as i64 {
                    continue;
                }
                if bits != self.config.bits as i64 || block != self.config.block_size as i64 {
                    return Err(format!(
                        "'{}' quantizes it with bits {bits}, block size {block}; \
                         the embedding asks for bits {}, block size {}",
                        node.name(),
                        self.config.bits,
                        self.config.block_size
                    ));
                }
                if node.input(4).is_some() {
                    return Err(format!("'{}' has a g_idx (act-order) input", node.name()));
                }
                let block = block as usize;
                let kb = hidden.div_ceil(block);
                let blob = block * bits as usize / 8;
                if t.dtype() != DType::U8 || t.dims != [vocab as i64, kb as i64, blob as i64] {
                    continue;
                }
                let Some(scales) = node.input(2) else {
                    continue;
                };
                if g.initializer(scales).map(|s| s.dtype()) != Some(dtype) {
                    return Err(format!(
                        "the scales of '{}' are not {dtype} like the table",
                        node.name()
                    ));
                }
                let zero_points = node.input(3);
                if let Some(z) = zero_points {
                    if g.initializer(z).map(|z| z.dtype()) != Some(DType::U8) {
                        return Err(format!(
                            "the zero points of '{}' are not uint8 constants",
                            node.name()
                        ));
                    }
                }
                if kb * block != hidden && opset < 10 {
                    return Err(format!(
                        "hidden size {hidden} is not a multiple of block size {block} \
                         and slicing the padding off needs opset 10 (the model has {opset})"
                    ));
                }
                return Ok(Some(SharedRows {
                    node: node.name().to_string(),
                    data: b,
                    scales,
                    zero_points,
                    bits: bits as u8,
                    block_size: block,
                    row_bytes: kb * blob,
                }));
            }
        }
        Ok(None)
    }

    /// GatherBlockQuantized over the lm_head's own initializers: B reshaped from
    /// [vocab, k_blocks, blob] to [vocab, k_blocks·blob] (same bytes), its scales and
    /// zero points as they are; a padded last block is sliced off the output.
    fn emit_shared(
        &self,
        g: &mut Graph,
        id: NodeId,
        indices: ValueId,
        s: &SharedRows,
        hidden: usize,
        outcome: &mut PassOutcome,
    ) -> Result<()> {
        let name = g.node(id).name().to_string();
        let b_name = g.value_name(s.data).to_string();
        let vocab = g.initializer(s.data).map_or(0, |t| t.dims[0]);
        let shape_name = g.fresh_name(&format!("{b_name}_rows_shape"));
        let shape = g.add_initializer(Tensor::from_i64(
            shape_name,
            vec![2],
            &[vocab, s.row_bytes as i64],
        ))?;
        let rows_name = g.fresh_name(&format!("{b_name}_rows"));
        let reshape = g.add_node(
            NodeSpec::new("", "Reshape")
                .name(g.fresh_node_name(&format!("{name}_Reshape")))
                .inputs([Some(s.data), Some(shape)])
                .output(rows_name)
                .meta(PASS_KEY, "gather-block-quantized"),
        )?;
        let rows = g.node(reshape).output(0).expect("one output");
        let first = self.emit_gather(
            g,
            id,
            [rows, indices, s.scales],
            s.zero_points,
            (s.bits, s.block_size),
            hidden,
            outcome,
        )?;
        g.place_before(reshape, first);
        outcome.count("embeddings sharing the lm_head weight", 1);
        outcome.notes.push(format!(
            "'{name}' reads the quantized weight of '{}' (tied embedding stored once{})",
            s.node,
            if s.zero_points.is_some() {
                ", with its zero points"
            } else {
                ""
            }
        ));
        Ok(())
    }
}

/// A tied lm_head's quantized table (see [`GatherBlockQuantized::shared_rows`]).
struct SharedRows {
    node: String,
    data: ValueId,
    scales: ValueId,
    zero_points: Option<ValueId>,
    bits: u8,
    block_size: usize,
    row_bytes: usize,
}

impl Pass for GatherBlockQuantized {
    fn name(&self) -> &'static str {
        "gather-block-quantized"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassCx) -> Result<PassOutcome> {
        let opset = model.opset("").unwrap_or(1);
        crate::transforms::common::run_contrib_rewrite(model, self.name(), &mut |g, o| {
            self.run_graph(g, opset, o)
        })
    }
}
