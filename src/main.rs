//! The `upgate` binary: argv to [`upgate::cli::Cli`], run it, print any error with its causes.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = upgate::cli::Cli::parse();
    match upgate::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("upgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
