//! LoRA adapters as files: PEFT's directory layout (adapter_config.json +
//! adapter_model.safetensors) in, ONNX Runtime's `.onnx_adapter` out. No graph here:
//! which MatMul a module lands on is `transforms::lora`'s job.
//!
//! Layering: uses only error and ir (dtypes); sits beside io.
pub mod onnx_adapter;
pub mod peft;

pub use onnx_adapter::{write_onnx_adapter, AdapterParam};
pub use peft::{LoraModule, PeftAdapter, PeftConfig};
