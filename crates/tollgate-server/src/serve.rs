//! `tollgate serve`: a placeholder until the HTTP server arrives.
//!
//! It says what the server will do, that the flags it was given are not used yet,
//! and where to go meanwhile; then the process exits with status 0.

use std::io::{self, Write};

use crate::cli::ServeArgs;

/// Writes the placeholder message for `args` to `out` (stderr in the binary).
pub fn run(args: &ServeArgs, mut out: impl Write) -> io::Result<()> {
    writeln!(
        out,
        "tollgate serve: the HTTP server arrives in a later release; nothing is served yet.\n\
         When it arrives, it will listen on 127.0.0.1:8000 with the in-memory store and the\n\
         seed-compatible preset: per-client token_bucket 1 per 15s, global token_bucket 15 per 15s."
    )?;
    if let Some(port) = args.port {
        writeln!(out, "note: --port {port} is accepted but not used yet.")?;
    }
    if let Some(config) = &args.config {
        writeln!(
            out,
            "note: --config {:?} is accepted but not read yet.",
            config.display().to_string()
        )?;
    }
    writeln!(
        out,
        "Meanwhile, replay traffic through any algorithm with the simulator: tollgate simulate --help"
    )?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_plan_and_the_ignored_flags() {
        let mut out = Vec::new();
        let args = ServeArgs {
            port: Some(9000),
            config: Some("tollgate.toml".into()),
        };
        run(&args, &mut out).expect("writing to a Vec cannot fail");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("later release"), "{text}");
        assert!(text.contains("127.0.0.1:8000"), "{text}");
        assert!(text.contains("--port 9000"), "{text}");
        assert!(text.contains("--config \"tollgate.toml\""), "{text}");
        assert!(text.contains("tollgate simulate --help"), "{text}");
    }

    #[test]
    fn says_nothing_of_flags_not_given() {
        let mut out = Vec::new();
        run(&ServeArgs::default(), &mut out).expect("writing to a Vec cannot fail");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(!text.contains("--port"), "{text}");
        assert!(!text.contains("--config"), "{text}");
    }
}
