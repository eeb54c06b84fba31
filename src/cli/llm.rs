//! `onnxq llm add-kv-cache|rope|genai`: LLM fix-ups on a decoder export.
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::transforms::llm::{
    add_kv_cache, convert_rotary, extend_rope, genai_config, to_genai, GenaiConfig, KvCacheOptions,
    RopeScaling, RotaryForm, SpecialTokens,
};

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
    /// Recompute the rotary cos/sin caches (or inv_freq) for a longer context, and/or
    /// convert the rotary between fused RotaryEmbedding and the decomposed form.
    Rope(RopeArgs),
    /// Write the form onnxruntime-genai runs into OUT_DIR: model.onnx with
    /// GroupQueryAttention (rotary inside) and (Skip)SimplifiedLayerNormalization, a KV
    /// cache added when missing; genai_config.json; the tokenizer files. Quantized
    /// weights stay quantized. Nothing is written when a layer does not convert.
    Genai(GenaiArgs),
}

#[derive(clap::Args, Debug)]
pub struct GenaiArgs {
    pub model: PathBuf,
    pub out_dir: PathBuf,
    /// Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json, and
    /// generation_config.json / config.json when present): copied next to the model,
    /// and the source of the bos/eos/pad ids.
    #[arg(long, value_name = "DIR")]
    pub tokenizer: PathBuf,
    /// Positions genai may generate to (rotary caches, context_length). Default:
    /// config.json's max_position_embeddings, else the model's own rotary caches,
    /// else 4096.
    #[arg(long, value_name = "N")]
    pub context_length: Option<usize>,
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
    /// Positions the caches cover after the rewrite (needed unless --rotary is given).
    #[arg(long, value_name = "N", required_unless_present = "rotary")]
    pub max_length: Option<usize>,
    /// Frequency scaling: linear:F, ntk:F, or yarn:F[,original=N,beta_fast=X,beta_slow=X,
    /// attention=X] (defaults: the caches' rows, 32, 1, 0.1·ln F + 1; caches only).
    #[arg(long, value_name = "KIND:F")]
    pub scaling: Option<RopeScaling>,
    /// Convert every layer's rotary: decomposed (Slice/Neg/Concat/Mul/Add), fused
    /// (ONNX RotaryEmbedding, opset 23) or com.microsoft (RotaryEmbedding with
    /// caches, --max-length rows when computed from inv_freq). Done before the
    /// tables are recomputed.
    #[arg(long, value_name = "FORM")]
    pub rotary: Option<RotaryForm>,
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
        LlmCommand::Genai(a) => genai(a),
        LlmCommand::Rope(a) => {
            let mut model = crate::io::load(&a.model)?;
            if a.scaling.is_some() && a.max_length.is_none() {
                return Err(Error::invalid("--scaling needs --max-length"));
            }
            if let Some(form) = a.rotary {
                let r = convert_rotary(&mut model, form, a.max_length)?;
                eprintln!(
                    "rotary: {} rotations converted to {form:?}{}",
                    r.converted,
                    r.cache_rows
                        .map_or(String::new(), |n| format!(" (caches of {n} rows)"))
                );
            }
            if let Some(max_length) = a.max_length {
                let scaling = a.scaling.unwrap_or(RopeScaling::None);
                let report = extend_rope(&mut model.graph, max_length, scaling)?;
                eprintln!(
                    "rotary tables {} rewritten for {} positions (was {}, theta {:.1})",
                    report.tables.join(", "),
                    max_length,
                    report
                        .old_max
                        .map_or("computed from positions".to_string(), |m| m.to_string()),
                    report.theta,
                );
            }
            crate::io::save(&model, &a.output, &Default::default())?;
            eprintln!("wrote {}", a.output.display());
            Ok(0)
        }
    }
}

/// Converts, builds the config and reads the tokenizer files before anything is
/// written, so an error leaves OUT_DIR untouched.
fn genai(a: &GenaiArgs) -> Result<i32> {
    let tokens = SpecialTokens::from_dir(&a.tokenizer)?;
    let mut model = crate::io::load(&a.model)?;
    let cfg = GenaiConfig {
        context_length: a.context_length.or(tokens.max_positions),
    };
    let report = to_genai(&mut model, &cfg)?;
    let config = genai_config(&report.map, &tokens, report.context_length, "model.onnx")?;
    let config = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::invalid(format!("genai_config.json: {e}")))?;
    let files = SpecialTokens::files(&a.tokenizer)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            Ok((p, bytes))
        })
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(&a.out_dir).map_err(|e| Error::io(&a.out_dir, e))?;
    crate::io::save(&model, &a.out_dir.join("model.onnx"), &Default::default())?;
    write_atomic(&a.out_dir.join("genai_config.json"), config.as_bytes())?;
    for (src, bytes) in &files {
        let name = src.file_name().expect("a file in the tokenizer folder");
        write_atomic(&a.out_dir.join(name), bytes)?;
    }
    eprintln!(
        "genai form: {} layers, {} attention nodes fused into GroupQueryAttention, {} norms \
         ({} skip){}; context length {}; wrote model.onnx, genai_config.json and {} tokenizer \
         files to {}",
        report.layers,
        report.attention_fused,
        report.norms,
        report.skip_norms,
        if report.added_kv_cache {
            ", KV cache added"
        } else {
            ""
        },
        report.context_length,
        files.len(),
        a.out_dir.display()
    );
    Ok(0)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = crate::io::AtomicFile::create(path)?;
    f.write_all(bytes)?;
    f.commit()
}
