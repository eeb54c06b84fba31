//! onnxq: ONNX in, smaller and faster ONNX out.
pub mod adapter;
pub mod calib;
pub mod cli;
pub mod error;
pub mod eval;
pub mod io;
pub mod ir;
pub mod llm;
pub mod pass;
pub(crate) mod proto;
pub mod quant;
pub mod rewrite;
pub mod runtime;
pub mod tensorfile;
pub mod transforms;
pub mod verify;

pub use error::{Error, Result};
pub use io::{load, save, SaveOptions};
pub use ir::Model;
