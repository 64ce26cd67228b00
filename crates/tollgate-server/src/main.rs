//! `tollgate`: the rate limit server (`serve`, the default), `check-config`, the
//! deterministic simulator (`simulate`) and the lab (`lab`).
//!
//! Exit status: 0 on success (and when stdout's reader goes away early), 1 when
//! reading the input or writing the output failed, 2 on bad flags or bad input.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

use tollgate_server::cli::{Cli, Command};
use tollgate_server::{config, lab, serve, simulate};

// mimalloc: the server allocates and frees small buffers on every request, where
// glibc's allocator took about 5% of a request's CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Serve(args) => match serve::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                let _ = writeln!(io::stderr().lock(), "error: {err}");
                ExitCode::from(err.exit_code())
            }
        },
        // The file as `serve --config FILE` would run it: the environment applied.
        Command::CheckConfig(args) => match serve::configuration(&config::Flags {
            config: Some(args.file.clone()),
            port: None,
        }) {
            Ok(config) => {
                let mut stdout = io::stdout().lock();
                let _ = write!(stdout, "{}", config::render(&config));
                let mut stderr = io::stderr().lock();
                let _ = writeln!(stderr, "{}: valid", args.file.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                let _ = writeln!(io::stderr().lock(), "error: {err}");
                ExitCode::from(err.exit_code())
            }
        },
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
