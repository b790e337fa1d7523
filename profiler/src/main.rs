//! The `parkscope` command: argument parsing and wiring only; the work lives in the library.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    // The daemon reports attach/leave and findings at info level; one-shot commands stay quiet.
    let default_level = if matches!(args.command, cli::Command::Daemon(_)) {
        "info"
    } else {
        "warn"
    };
    cli::init_logging(args.verbose, args.log_json, default_level);
    let code = match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("parkscope: {err}");
            err.exit_code()
        }
    };
    std::process::exit(code);
}
