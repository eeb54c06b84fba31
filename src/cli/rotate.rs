//! `onnxq rotate`: QuaRot on a decoder, written as a float model.
use std::path::PathBuf;

use super::pipeline::{self, PipelineArgs};
use crate::error::Result;
use crate::pass::recipe::Recipe;

#[derive(clap::Args, Debug)]
pub struct RotateArgs {
    /// Decoder to read (float weights, RMS norms).
    pub input: PathBuf,
    /// Rotated float model to write.
    pub output: PathBuf,
    /// Leave out the online Hadamard rotation before each down_proj.
    #[arg(long)]
    pub no_online_hadamard: bool,
    /// --seed picks the rotation's random signs.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

pub fn run(args: &RotateArgs) -> Result<i32> {
    let text = format!(
        "[recipe]\nname = \"quarot\"\ndescription = \"QuaRot rotation (float)\"\n\n\
         [[pass]]\nname = \"quarot\"\nonline-hadamard = {}\n",
        !args.no_online_hadamard
    );
    let recipe = Recipe::parse("rotate", &text)?;
    pipeline::run(&recipe, &args.input, &args.output, &args.pipeline)
}
