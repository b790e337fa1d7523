//! The `parkscope` command: argument parsing and wiring only; the work lives in the library.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose);
    let code = match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("parkscope: {err}");
            err.exit_code()
        }
    };
    std::process::exit(code);
}
