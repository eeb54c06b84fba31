//! A PEFT LoRA adapter directory: `adapter_config.json` (rank, alpha, targets and
//! their per-module overrides) and `adapter_model.safetensors` holding, per adapted
//! module, `<module>.lora_A.weight` [r, in] and `<module>.lora_B.weight` [out, r]
//! (nn.Linear layout, whatever `fan_in_fan_out` says about the base weight).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ir::DType;

/// The fields of adapter_config.json that decide the update.
#[derive(Deserialize, Clone, Debug)]
pub struct PeftConfig {
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub peft_type: Option<String>,
}

/// A list of module-name suffixes, or one regular expression (kept as text: the
/// tensors present decide which modules are adapted).
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    Pattern(String),
}

/// PEFT's key matching for rank_pattern/alpha_pattern: the key names the module
/// itself or a trailing part of its dotted path.
fn pattern_matches(key: &str, module: &str) -> bool {
    module == key || module.ends_with(&format!(".{key}"))
}

impl PeftConfig {
    /// rank_pattern, then r.
    pub fn rank_of(&self, module: &str) -> usize {
        self.rank_pattern
            .iter()
            .find(|(k, _)| pattern_matches(k, module))
            .map_or(self.r, |(_, &r)| r)
    }

    /// scale = alpha / r, or alpha / sqrt(r) with rsLoRA, alpha from alpha_pattern
    /// when a key matches.
    pub fn scale_of(&self, module: &str) -> f64 {
        let r = self.rank_of(module) as f64;
        let alpha = self
            .alpha_pattern
            .iter()
            .find(|(k, _)| pattern_matches(k, module))
            .map_or(self.lora_alpha, |(_, &a)| a);
        if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }
}

/// One adapted linear layer, A and B as f32 whatever the file stored.
#[derive(Clone, Debug)]
pub struct LoraModule {
    /// The module path without PEFT's `base_model.model.` prefix
    /// (`model.layers.0.self_attn.q_proj`).
    pub name: String,
    pub rank: usize,
    /// in_features (K) and out_features (N).
    pub k: usize,
    pub n: usize,
    /// [rank, K], row-major.
    pub a: Vec<f32>,
    /// [N, rank], row-major.
    pub b: Vec<f32>,
    pub scale: f32,
    /// The type the adapter was stored in.
    pub stored: DType,
}

impl LoraModule {
    /// The output head (`lm_head`, PEFT's name for it in target_modules).
    pub fn is_lm_head(&self) -> bool {
        self.name == "lm_head" || self.name.ends_with(".lm_head")
    }

    /// The layer index and the projection name (`q_proj`) when the name has
    /// `layers.N.` in it.
    pub fn layer_and_proj(&self) -> Option<(usize, &str)> {
        let parts: Vec<&str> = self.name.split('.').collect();
        let i = parts.iter().position(|p| *p == "layers" || *p == "h")?;
        let layer = parts.get(i + 1)?.parse().ok()?;
        Some((layer, parts.last()?))
    }
}

#[derive(Clone, Debug)]
pub struct PeftAdapter {
    pub dir: PathBuf,
    pub config: PeftConfig,
    /// Sorted by module name.
    pub modules: Vec<LoraModule>,
}

fn adapter_err(dir: &Path, reason: impl Into<String>) -> Error {
    Error::Invalid(format!("adapter {}: {}", dir.display(), reason.into()))
}

fn to_f32(dir: &Path, name: &str, view: &safetensors::tensor::TensorView) -> Result<Vec<f32>> {
    let d = view.data();
    let (vals, unit): (Vec<f32>, usize) = match view.dtype() {
        Dtype::F32 => (
            d.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            4,
        ),
        Dtype::F16 => (
            d.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            2,
        ),
        Dtype::BF16 => (
            d.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            2,
        ),
        other => {
            return Err(adapter_err(
                dir,
                format!(
                "tensor '{name}' is {other:?}; LoRA weights must be float32, float16 or bfloat16"
            ),
            ))
        }
    };
    if vals.len() * unit != d.len() {
        return Err(adapter_err(
            dir,
            format!("tensor '{name}' has a truncated payload"),
        ));
    }
    Ok(vals)
}

fn dtype_of(d: Dtype) -> DType {
    match d {
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        _ => DType::F32,
    }
}

impl PeftAdapter {
    /// Reads `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
    pub fn load(dir: &Path) -> Result<PeftAdapter> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let config: PeftConfig = serde_json::from_str(&text)
            .map_err(|e| adapter_err(dir, format!("adapter_config.json: {e}")))?;
        if let Some(t) = &config.peft_type {
            if t != "LORA" {
                return Err(adapter_err(
                    dir,
                    format!("peft_type is {t}; only LORA adapters are supported"),
                ));
            }
        }
        let st_path = dir.join("adapter_model.safetensors");
        let bytes = std::fs::read(&st_path).map_err(|e| Error::io(&st_path, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| adapter_err(dir, format!("adapter_model.safetensors: {e}")))?;
        let mut pairs: BTreeMap<String, [Option<String>; 2]> = BTreeMap::new();
        for name in st.names() {
            let (module, which) = if let Some(m) = name.strip_suffix(".lora_A.weight") {
                (m, 0)
            } else if let Some(m) = name.strip_suffix(".lora_B.weight") {
                (m, 1)
            } else {
                continue;
            };
            pairs.entry(module.to_string()).or_default()[which] = Some(name.to_string());
        }
        if pairs.is_empty() {
            return Err(adapter_err(
                dir,
                "adapter_model.safetensors holds no '*.lora_A.weight' / '*.lora_B.weight' tensors",
            ));
        }
        let mut modules = Vec::new();
        for (module, [a_name, b_name]) in pairs {
            let (Some(a_name), Some(b_name)) = (a_name, b_name) else {
                return Err(adapter_err(
                    dir,
                    format!("module '{module}' has only one of lora_A / lora_B"),
                ));
            };
            let get = |n: &str| {
                st.tensor(n)
                    .map_err(|e| adapter_err(dir, format!("tensor '{n}': {e}")))
            };
            let (a, b) = (get(&a_name)?, get(&b_name)?);
            let (&[r, k], &[n, rb]) = (a.shape(), b.shape()) else {
                return Err(adapter_err(
                    dir,
                    format!(
                        "module '{module}': lora_A {:?} and lora_B {:?} must be 2-D",
                        a.shape(),
                        b.shape()
                    ),
                ));
            };
            let name = module
                .strip_prefix("base_model.model.")
                .unwrap_or(&module)
                .to_string();
            if r != rb {
                return Err(adapter_err(
                    dir,
                    format!("module '{name}': lora_A is [{r}, {k}] but lora_B is [{n}, {rb}] (ranks differ)"),
                ));
            }
            let want = config.rank_of(&name);
            if want != r {
                return Err(adapter_err(
                    dir,
                    format!("module '{name}': config says rank {want}, the tensors have rank {r}"),
                ));
            }
            modules.push(LoraModule {
                scale: config.scale_of(&name) as f32,
                a: to_f32(dir, &a_name, &a)?,
                b: to_f32(dir, &b_name, &b)?,
                stored: dtype_of(a.dtype()),
                name,
                rank: r,
                k,
                n,
            });
        }
        Ok(PeftAdapter {
            dir: dir.to_path_buf(),
            config,
            modules,
        })
    }
}
