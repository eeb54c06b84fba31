//! `onnxq apply`: run a recipe (a shipped name or a TOML file) on a model.
use std::path::PathBuf;

use super::pipeline::{self, PipelineArgs};
use crate::error::Result;
use crate::pass::recipe::Recipe;

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// A shipped recipe (int4-rtn, int4-hqq, int4-rtn-qdq, bnb4-nf4) or a recipe file.
    pub recipe: String,
    /// Model to read.
    pub input: PathBuf,
    /// Model to write.
    pub output: PathBuf,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

pub fn run(args: &ApplyArgs) -> Result<i32> {
    // Validated completely before the model is loaded.
    let recipe = Recipe::load(&args.recipe).map_err(crate::Error::into_usage)?;
    pipeline::run(&recipe, &args.input, &args.output, &args.pipeline)
}
