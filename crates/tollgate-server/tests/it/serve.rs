//! `tollgate` with no subcommand, `tollgate serve`, and `--help`.

use crate::common::tollgate;

fn assert_placeholder(args: &[&str]) -> String {
    let run = tollgate(args, "");
    assert_eq!(run.status, 0, "{run:?}");
    assert_eq!(run.stdout, "", "{run:?}");
    for needle in [
        "later release",
        "127.0.0.1:8000",
        "in-memory store",
        "preset",
        "tollgate simulate --help",
    ] {
        assert!(run.stderr.contains(needle), "{needle:?} in {run:?}");
    }
    run.stderr
}

#[test]
fn no_arguments_runs_serve() {
    let stderr = assert_placeholder(&[]);
    assert!(!stderr.contains("--port"), "{stderr}");
}

#[test]
fn serve_explains_itself() {
    assert_placeholder(&["serve"]);
}

#[test]
fn serve_accepts_and_ignores_port_and_config() {
    let stderr = assert_placeholder(&["serve", "--port", "9000", "--config", "tollgate.toml"]);
    assert!(
        stderr.contains("--port 9000 is accepted but not used yet"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--config \"tollgate.toml\" is accepted but not read yet"),
        "{stderr}"
    );
    // The same flags without the subcommand mean serve too.
    let stderr = assert_placeholder(&["--port", "9000"]);
    assert!(stderr.contains("--port 9000"), "{stderr}");
}

#[test]
fn a_bad_port_is_a_usage_error() {
    let run = tollgate(&["serve", "--port", "http"], "");
    assert_eq!(run.status, 2, "{run:?}");
    assert!(run.stderr.contains("--port"), "{run:?}");
}

#[test]
fn help_works() {
    let run = tollgate(&["--help"], "");
    assert_eq!(run.status, 0, "{run:?}");
    for needle in ["serve", "simulate", "Usage:"] {
        assert!(run.stdout.contains(needle), "{needle:?} in {run:?}");
    }
    let run = tollgate(&["simulate", "--help"], "");
    assert_eq!(run.status, 0, "{run:?}");
    for needle in [
        "--algorithm",
        "--limit",
        "--period",
        "--burst",
        "--input",
        "time_ms,key,cost,allowed,remaining,retry_after_ms,delay_ms",
    ] {
        assert!(run.stdout.contains(needle), "{needle:?} in {run:?}");
    }
    let run = tollgate(&["help", "simulate"], "");
    assert_eq!(run.status, 0, "{run:?}");
    assert!(run.stdout.contains("--algorithm"), "{run:?}");
}

#[test]
fn version_works() {
    let run = tollgate(&["--version"], "");
    assert_eq!(run.status, 0, "{run:?}");
    assert!(run.stdout.starts_with("tollgate "), "{run:?}");
}

#[test]
fn an_unknown_subcommand_is_a_usage_error() {
    let run = tollgate(&["frobnicate"], "");
    assert_eq!(run.status, 2, "{run:?}");
}
