//! onnxq: ONNX in, smaller and faster ONNX out.
//!
//! In a build script or a program, [`Pipeline`] runs a recipe on a model file:
//!
//! ```
//! # fn main() -> onnxq::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let input = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/mlp.onnx");
//! let output = dir.path().join("mlp.int4.onnx");
//! onnxq::Pipeline::from_recipe("int4-rtn")?
//!     .option("bits", 8)?
//!     .run_cached(input.as_ref(), &output, &dir.path().join("cache"))?;
//! # Ok(())
//! # }
//! ```
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
pub use pass::{Done, Pipeline, WeightOnly};
