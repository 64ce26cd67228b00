//! The command line around `serve`: usage errors, `--help`, `--version`,
//! `check-config`. The server itself is tested over HTTP in `http.rs`.

use crate::common::tollgate;

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

#[test]
fn check_config_prints_the_effective_configuration() {
    let good = crate::common::scratch_file(
        "good.toml",
        b"[store]\ntimeout = \"20ms\"\n[[policy]]\nname = \"api\"\nalgorithm = \"gcra\"\nlimit = 10\nperiod = \"1s\"\nburst = 20\n",
    );
    let run = tollgate(&["check-config", good.to_str().expect("path")], "");
    assert_eq!(run.status, 0, "{run:?}");
    for line in [
        "listen = \"127.0.0.1:8000\"",
        "timeout = \"20ms\"",
        "name = \"api\"",
        "algorithm = \"gcra\"",
        "burst = 20",
        "policies = [\"api\"]",
    ] {
        assert!(run.stdout.contains(line), "{line:?} in {run:?}");
    }
    // The environment applies as it does for `serve`: the effective configuration.
    let run = crate::common::command(&["check-config", good.to_str().expect("path")])
        .env("TOLLGATE_LISTEN", "127.0.0.1:9123")
        .env("TOLLGATE_KEY_PREFIX", "from-env:")
        .output()
        .expect("run tollgate");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert!(stdout.contains("listen = \"127.0.0.1:9123\""), "{stdout}");
    assert!(stdout.contains("key_prefix = \"from-env:\""), "{stdout}");
    assert!(stdout.contains("timeout = \"20ms\""), "{stdout}");
    let run = crate::common::command(&["check-config", good.to_str().expect("path")])
        .env("TOLLGATE_WORKERS", "many")
        .output()
        .expect("run tollgate");
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("TOLLGATE_WORKERS"),
        "{run:?}"
    );
    let bad = crate::common::scratch_file("bad.toml", b"[store]\nnodes = 0\n");
    let run = tollgate(&["check-config", bad.to_str().expect("path")], "");
    assert_eq!(run.status, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("bad.toml:2: store.nodes: 0 is out of range"),
        "{run:?}"
    );
    let missing = good.with_file_name("missing.toml");
    let run = tollgate(&["check-config", missing.to_str().expect("path")], "");
    assert_eq!(run.status, 2, "{run:?}");
    assert!(
        run.stderr.contains("cannot read the configuration file"),
        "{run:?}"
    );
}
