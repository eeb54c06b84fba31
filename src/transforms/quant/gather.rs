//! Quantized embedding tables: Gather on a constant [vocab, hidden] float table
//! becomes com.microsoft GatherBlockQuantized with uint8-packed data (the layout
//! onnxruntime-genai uses), blocks along the hidden axis.
use serde::Deserialize;

use super::kernels::{float_tensor, read_f32};
use super::weight_only::validate;
use crate::error::{Error, Result};
use crate::ir::{Attribute, DType, Graph, Model, NodeSpec, Tensor};
use crate::pass::{Pass, PassCx, PassOutcome, PASS_KEY};
use crate::rewrite::matchers::{constant, not_constant_reason, ConstSource};

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
            super::weight_only::Format::Matmulnbits,
            Default::default(),
        )?;
        Ok(GatherBlockQuantized { config })
    }

    fn run_graph(&self, g: &mut Graph, outcome: &mut PassOutcome) -> Result<()> {
        for id in g.node_ids() {
            if !g.contains_node(id) || !g.node(id).is("", "Gather") {
                continue;
            }
            let node = g.node(id);
            let name = node.name().to_string();
            if node.attr_int("axis").unwrap_or(0) != 0 {
                outcome.skip(&name, "Gather axis is not 0");
                continue;
            }
            let (Some(data), Some(indices)) = (node.input(0), node.input(1)) else {
                continue;
            };
            let Some((source, table)) = constant(g, data) else {
                outcome.skip(&name, not_constant_reason(g, data));
                continue;
            };
            if table.dims.len() != 2
                || !matches!(table.dtype(), DType::F32 | DType::F16 | DType::BF16)
            {
                outcome.skip(
                    &name,
                    format!("table '{}' is not a 2-D float tensor", table.name()),
                );
                continue;
            }
            let (vocab, hidden) = (table.dims[0] as usize, table.dims[1] as usize);
            if hidden % self.config.block_size != 0 {
                outcome.skip(
                    &name,
                    format!(
                        "hidden size {hidden} is not a multiple of block size {}",
                        self.config.block_size
                    ),
                );
                continue;
            }
            let table = table.clone();
            let w = read_f32(&table)?;
            let qp = crate::quant::nbits::QuantParams {
                bits: self.config.bits,
                block_size: self.config.block_size,
                symmetric: self.config.symmetric,
            };
            let q = crate::quant::nbits::quantize_rows(&w, vocab, hidden, &qp)
                .map_err(|e| Error::tensor(table.name(), e.to_string()))?;
            let base = g.value_name(data).to_string();
            let kb = (hidden / self.config.block_size) as i64;
            let row_bytes = (hidden * self.config.bits as usize / 8) as i64;
            let dname = g.fresh_name(&format!("{base}_Q{}", self.config.bits));
            let dq = g.add_initializer(
                Tensor::from_raw(
                    dname,
                    DType::U8,
                    vec![vocab as i64, row_bytes],
                    bytes::Bytes::from(q.packed.clone()),
                )
                .stored_like(&table),
            )?;
            let sname = g.fresh_name(&format!("{base}_scales"));
            let sc = g.add_initializer(
                float_tensor(&sname, table.dtype(), vec![vocab as i64, kb], &q.scales)
                    .stored_like(&table),
            )?;
            let zp = match &q.zero_points {
                Some(z) => {
                    let zname = g.fresh_name(&format!("{base}_zero_points"));
                    let per_row = (z.len() / vocab) as i64;
                    Some(
                        g.add_initializer(
                            Tensor::from_raw(
                                zname,
                                DType::U8,
                                vec![vocab as i64, per_row],
                                bytes::Bytes::from(z.clone()),
                            )
                            .stored_like(&table),
                        )?,
                    )
                }
                None => None,
            };
            let mut inputs = vec![Some(dq), Some(indices), Some(sc)];
            if zp.is_some() {
                inputs.push(zp);
            }
            let spec = NodeSpec::new("com.microsoft", "GatherBlockQuantized")
                .name(g.fresh_node_name(&format!("{name}_Q{}", self.config.bits)))
                .inputs(inputs)
                .attr(Attribute::int("bits", self.config.bits as i64))
                .attr(Attribute::int("block_size", self.config.block_size as i64))
                .attr(Attribute::int("gather_axis", 0))
                .attr(Attribute::int("quantize_axis", 1))
                .meta(PASS_KEY, "gather-block-quantized");
            g.swap_node(id, spec)?;
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
                    "'{base}' is also read by other nodes (tied lm_head?); the float table stays for them"
                ));
            }
            outcome.count("embeddings quantized", 1);
            outcome.changed = true;
        }
        Ok(())
    }
}

impl Pass for GatherBlockQuantized {
    fn name(&self) -> &'static str {
        "gather-block-quantized"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassCx) -> Result<PassOutcome> {
        super::run_contrib_rewrite(model, self.name(), &mut |g, o| self.run_graph(g, o))
    }
}
