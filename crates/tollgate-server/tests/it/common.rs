//! Running the real binary.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// The header every simulation prints first.
pub const HEADER: &str = "time_ms,key,cost,allowed,remaining,retry_after_ms,delay_ms\n";

/// What one run of the binary produced.
#[derive(Debug)]
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A `tollgate` command, not yet started.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(args);
    cmd
}

/// Runs `tollgate args...` with `stdin` as its standard input.
pub fn tollgate(args: &[&str], stdin: &str) -> Run {
    let mut child = command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tollgate");
    let mut input = child.stdin.take().expect("stdin is piped");
    let stdin = stdin.to_owned();
    // A separate thread, so a large input cannot deadlock against a full stdout pipe.
    // The binary may stop reading early (on an error): a failed write is fine.
    let writer = thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let output = child.wait_with_output().expect("wait for tollgate");
    writer.join().expect("stdin writer");
    Run {
        status: output
            .status
            .code()
            .expect("exited, not killed by a signal"),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

/// `tollgate simulate` with `flags`, reading `trace` on stdin.
pub fn simulate(flags: &[&str], trace: &str) -> Run {
    let mut args = vec!["simulate"];
    args.extend_from_slice(flags);
    tollgate(&args, trace)
}

/// Runs a simulation that must succeed and returns its stdout.
pub fn simulate_ok(flags: &[&str], trace: &str) -> String {
    let run = simulate(flags, trace);
    assert_eq!(run.status, 0, "{run:?}");
    assert_eq!(run.stderr, "", "{run:?}");
    run.stdout
}

/// A fresh file path under Cargo's scratch directory for integration tests.
pub fn scratch_file(name: &str, contents: &[u8]) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tollgate-server-it");
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    let path = dir.join(format!(
        "{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, contents).expect("write scratch file");
    path
}

/// The header followed by `rows` (each ending in a newline).
pub fn expected(rows: &[&str]) -> String {
    let mut out = HEADER.to_owned();
    for row in rows {
        out.push_str(row);
        out.push('\n');
    }
    out
}
