//! Passes: named, configured rewrites of a model, composed by recipes and run by
//! the manager, which checks the model after each one.
pub mod check;
pub mod manager;
pub mod pipeline;
pub mod recipe;
pub mod registry;

pub use crate::rewrite::pass::{
    LayerError, Pass, PassCx, PassOutcome, PrecisionRow, Skip, PASS_KEY,
};
pub use check::CheckLevel;
pub use manager::{run_pipeline, run_pipeline_with, RunOptions};
pub use pipeline::{Done, Pipeline, Step, WeightAlgorithm, WeightFormat, WeightOnly};
