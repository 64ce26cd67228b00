//! `tollgate`: the rate limit server (`serve`, the default), the deterministic
//! simulator (`simulate`) and the lab (`lab`).
//!
//! Exit status: 0 on success (and when stdout's reader goes away early), 1 when
//! reading the input or writing the output failed, 2 on bad flags or bad input.

mod cli;
mod lab;
mod records;
mod serve;
mod simulate;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version land here too, with status 0.
            let code = u8::try_from(err.exit_code()).unwrap_or(2);
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    match cli.into_command() {
        Command::Serve(args) => {
            // Best effort: nothing useful to do if stderr is closed.
            let _ = serve::run(&args, io::stderr().lock());
            ExitCode::SUCCESS
        }
        Command::Simulate(args) => match simulate::main(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) if err.is_broken_pipe() => ExitCode::SUCCESS,
            Err(err) => {
                let mut stderr = io::stderr().lock();
                let _ = writeln!(stderr, "error: {err}");
                if let Some(hint) = err.hint() {
                    let _ = writeln!(stderr, "hint: {hint}");
                }
                ExitCode::from(err.exit_code())
            }
        },
        Command::Lab(args) => match lab::main(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                let mut stderr = io::stderr().lock();
                let _ = writeln!(stderr, "error: {err}");
                if let Some(hint) = err.hint() {
                    let _ = writeln!(stderr, "hint: {hint}");
                }
                ExitCode::from(err.exit_code())
            }
        },
    }
}
