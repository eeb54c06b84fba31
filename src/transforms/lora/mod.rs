//! LoRA on an ONNX decoder: PEFT modules are placed on the graph's linear layers
//! through the decoder map (never by node names), then either injected as a
//! switchable branch y += (x·A)·B with A and B graph inputs (ONNX Runtime's adapter
//! convention, as Olive's ExtractAdapters names them) or merged into the weights.
//!
//! The LoRA scale is folded into B in the adapter values: one set of graph inputs
//! then serves adapters with different alphas and ranks.
mod extract;
mod inject;
mod merge;
mod place;

pub use extract::extract;
pub use inject::{adapter_params, inject, strip_branches, InjectReport};
pub use merge::merge;
pub use place::{place, PlacedPart, Placement};
