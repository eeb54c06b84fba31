//! `onnxq lora inject|merge|extract|pack`: PEFT LoRA adapters on an ONNX decoder.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::adapter::{write_onnx_adapter, PeftAdapter};
use crate::error::{Error, Result};
use crate::ir::Model;
use crate::llm::DecoderMap;
use crate::transforms::lora;

#[derive(clap::Args, Debug)]
pub struct LoraArgs {
    #[command(subcommand)]
    pub command: LoraCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum LoraCommand {
    /// Add a switchable LoRA branch to every adapted layer (A, B as graph inputs
    /// with empty defaults) and write the adapter as ONNX Runtime's .onnx_adapter.
    Inject(InjectArgs),
    /// Fold an adapter into the weights (float, or MatMulNBits re-quantized with
    /// its own bits, block size and symmetry).
    Merge(MergeArgs),
    /// Turn LoRA branches with constant A/B weights into graph inputs (empty
    /// defaults) and write their values as an .onnx_adapter (Olive's ExtractAdapters).
    Extract(ExtractArgs),
    /// Write the .onnx_adapter file of a PEFT adapter for an already injected model.
    Pack(PackArgs),
}

#[derive(clap::Args, Debug)]
pub struct Placing {
    /// PEFT adapter directory (adapter_config.json, adapter_model.safetensors).
    #[arg(long, value_name = "PEFT_DIR")]
    pub adapter: PathBuf,
    /// JSON object {"module name": "node name"} for layers the decoder map does not find.
    #[arg(long, value_name = "FILE")]
    pub mapping: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    pub model: PathBuf,
    pub output: PathBuf,
    #[command(flatten)]
    pub placing: Placing,
    /// Where the adapter goes (default: OUT with extension .onnx_adapter).
    #[arg(long, value_name = "FILE")]
    pub adapter_out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    pub model: PathBuf,
    pub output: PathBuf,
    #[command(flatten)]
    pub placing: Placing,
}

#[derive(clap::Args, Debug)]
pub struct ExtractArgs {
    pub model: PathBuf,
    pub output: PathBuf,
    /// Where the adapter goes (default: OUT with extension .onnx_adapter).
    #[arg(long, value_name = "FILE")]
    pub adapter_out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct PackArgs {
    pub peft_dir: PathBuf,
    pub output: PathBuf,
    /// The model the adapter is for (the base or the injected one).
    #[arg(long, value_name = "MODEL")]
    pub model: PathBuf,
    #[arg(long, value_name = "FILE")]
    pub mapping: Option<PathBuf>,
}

fn read_mapping(path: Option<&Path>) -> Result<BTreeMap<String, String>> {
    let Some(path) = path else {
        return Ok(BTreeMap::new());
    };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::Invalid(format!(
            "{}: a mapping file is a JSON object {{\"module\": \"node\"}}: {e}",
            path.display()
        ))
    })
}

fn placements(
    model: &Model,
    adapter: &PeftAdapter,
    mapping: Option<&Path>,
) -> Result<Vec<lora::Placement>> {
    let mapping = read_mapping(mapping)?;
    let map = DecoderMap::build(&model.graph);
    // Without a decoder map only the mapping file can place modules; say why then.
    let map = match map {
        Ok(m) => Some(m),
        Err(e) if !mapping.is_empty() => {
            eprintln!("note: no decoder map ({e}); placing by the mapping file only");
            None
        }
        Err(e) => return Err(e),
    };
    lora::place(&model.graph, map.as_ref(), adapter, &mapping)
}

pub fn run(args: &LoraArgs) -> Result<i32> {
    match &args.command {
        LoraCommand::Inject(a) => {
            let mut model = crate::io::load(&a.model)?;
            let adapter = PeftAdapter::load(&a.placing.adapter)?;
            let placed = placements(&model, &adapter, a.placing.mapping.as_deref())?;
            let params = lora::adapter_params(&adapter, &placed)?;
            let report = lora::inject(&mut model.graph, &placed)?;
            crate::io::save(&model, &a.output, &Default::default())?;
            let adapter_out = a
                .adapter_out
                .clone()
                .unwrap_or_else(|| a.output.with_extension("onnx_adapter"));
            write_onnx_adapter(&adapter_out, &params)?;
            eprintln!(
                "injected LoRA on {} layers ({} modules); wrote {} and {}",
                report.inputs.len(),
                adapter.modules.len(),
                a.output.display(),
                adapter_out.display()
            );
            Ok(0)
        }
        LoraCommand::Merge(a) => {
            let mut model = crate::io::load(&a.model)?;
            let adapter = PeftAdapter::load(&a.placing.adapter)?;
            let placed = placements(&model, &adapter, a.placing.mapping.as_deref())?;
            let n = lora::merge(&mut model.graph, &adapter, &placed)?;
            crate::io::save(&model, &a.output, &Default::default())?;
            eprintln!("merged LoRA into {n} layers; wrote {}", a.output.display());
            Ok(0)
        }
        LoraCommand::Extract(a) => {
            let mut model = crate::io::load(&a.model)?;
            let params = lora::extract(&mut model.graph)?;
            if params.is_empty() {
                return Err(Error::Invalid(format!(
                    "{}: no LoRA branch with constant weights (an Add of a linear layer and \
                     MatMul(MatMul(x, A), B) on the layer's input, A and B initializers)",
                    a.model.display()
                )));
            }
            crate::io::save(&model, &a.output, &Default::default())?;
            let adapter_out = a
                .adapter_out
                .clone()
                .unwrap_or_else(|| a.output.with_extension("onnx_adapter"));
            write_onnx_adapter(&adapter_out, &params)?;
            eprintln!(
                "extracted LoRA from {} layers; wrote {} and {}",
                params.len() / 2,
                a.output.display(),
                adapter_out.display()
            );
            Ok(0)
        }
        LoraCommand::Pack(a) => {
            let model = crate::io::load(&a.model)?;
            let mut base = model.clone();
            lora::strip_branches(&mut base.graph)?;
            let adapter = PeftAdapter::load(&a.peft_dir)?;
            let placed = placements(&base, &adapter, a.mapping.as_deref())?;
            let params = lora::adapter_params(&adapter, &placed)?;
            // An injected model must declare exactly these inputs, or ONNX Runtime
            // would reject the adapter at run time.
            let injected = placed
                .iter()
                .any(|p| model.graph.find(&p.a_name()).is_some());
            if injected {
                for p in &params {
                    if !model
                        .graph
                        .find(&p.name)
                        .is_some_and(|v| model.graph.is_graph_input(v))
                    {
                        return Err(Error::Invalid(format!(
                            "{}: no graph input '{}' for the adapter's parameter",
                            a.model.display(),
                            p.name
                        )));
                    }
                }
            }
            write_onnx_adapter(&a.output, &params)?;
            eprintln!("wrote {} ({} parameters)", a.output.display(), params.len());
            Ok(0)
        }
    }
}
