//! `onnxq completions SHELL` and `onnxq man`: generated from the argument
//! definitions, so they never drift from `--help`.
use std::path::PathBuf;

use clap::CommandFactory;

use crate::error::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write onnxq.1 and one onnxq-<command>.1 per subcommand into this directory
    /// (default: print onnxq.1 on stdout).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn completions(args: &CompletionsArgs) -> Result<i32> {
    let mut cmd = super::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "onnxq", &mut std::io::stdout());
    Ok(super::exit::SUCCESS)
}

pub fn man(args: &ManArgs) -> Result<i32> {
    let cmd = super::Cli::command();
    match &args.out {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .map_err(|e| Error::invalid(format!("man page: {e}")))?;
            print!("{}", String::from_utf8_lossy(&out));
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            clap_mangen::generate_to(cmd, dir).map_err(|e| Error::io(dir, e))?;
        }
    }
    Ok(super::exit::SUCCESS)
}
