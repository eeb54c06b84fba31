//! `onnxq llm add-kv-cache|rope`: LLM fix-ups on a decoder export.
use std::path::PathBuf;

use crate::error::Result;
use crate::transforms::llm::{add_kv_cache, extend_rope, KvCacheOptions, RopeScaling};

#[derive(clap::Args, Debug)]
pub struct LlmArgs {
    #[command(subcommand)]
    pub command: LlmCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum LlmCommand {
    /// Give a decoder exported without a KV cache past_key_values.{i}.key/value inputs
    /// and present.{i}.key/value outputs (decomposed attention or opset-23 Attention).
    AddKvCache(AddKvCacheArgs),
    /// Recompute the rotary cos/sin caches (or inv_freq) for a longer context.
    Rope(RopeArgs),
}

#[derive(clap::Args, Debug)]
pub struct AddKvCacheArgs {
    pub model: PathBuf,
    pub output: PathBuf,
    /// Past key input name; {i} is the layer.
    #[arg(long, default_value = "past_key_values.{i}.key")]
    pub past_key: String,
    #[arg(long, default_value = "past_key_values.{i}.value")]
    pub past_value: String,
    #[arg(long, default_value = "present.{i}.key")]
    pub present_key: String,
    #[arg(long, default_value = "present.{i}.value")]
    pub present_value: String,
}

#[derive(clap::Args, Debug)]
pub struct RopeArgs {
    pub model: PathBuf,
    pub output: PathBuf,
    /// Positions the caches cover after the rewrite.
    #[arg(long, value_name = "N")]
    pub max_length: usize,
    /// Frequency scaling: linear:F or ntk:F.
    #[arg(long, value_name = "KIND:F")]
    pub scaling: Option<RopeScaling>,
}

pub fn run(args: &LlmArgs) -> Result<i32> {
    match &args.command {
        LlmCommand::AddKvCache(a) => {
            let mut model = crate::io::load(&a.model)?;
            let opts = KvCacheOptions {
                past_key: a.past_key.clone(),
                past_value: a.past_value.clone(),
                present_key: a.present_key.clone(),
                present_value: a.present_value.clone(),
            };
            let report = add_kv_cache(&mut model.graph, &opts)?;
            crate::io::save(&model, &a.output, &Default::default())?;
            eprintln!(
                "added a KV cache to {} layers ({:?} attention); wrote {}",
                report.layers,
                report.attention,
                a.output.display()
            );
            Ok(0)
        }
        LlmCommand::Rope(a) => {
            let mut model = crate::io::load(&a.model)?;
            let scaling = a.scaling.unwrap_or(RopeScaling::None);
            let report = extend_rope(&mut model.graph, a.max_length, scaling)?;
            crate::io::save(&model, &a.output, &Default::default())?;
            eprintln!(
                "rotary tables {} rewritten for {} positions (was {}, theta {:.1}); wrote {}",
                report.tables.join(", "),
                a.max_length,
                report
                    .old_max
                    .map_or("computed from positions".to_string(), |m| m.to_string()),
                report.theta,
                a.output.display()
            );
            Ok(0)
        }
    }
}
