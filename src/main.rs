use clap::Parser;

fn main() {
    let cli = onnxq::cli::Cli::parse();
    match onnxq::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            std::process::exit(onnxq::cli::exit::code_for(&e));
        }
    }
}
