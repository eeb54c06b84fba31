//! onnxq: ONNX in, smaller and faster ONNX out.
pub mod cli;
pub mod error;
pub mod io;
pub mod ir;
pub(crate) mod proto;

pub use error::{Error, Result};
pub use io::{load, save, SaveOptions};
pub use ir::Model;
