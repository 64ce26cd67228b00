//! `tollgate lab`: runs the lab's scenarios for every algorithm and writes the report
//! folder (see the `tollgate_lab` crate for what is in it).
//!
//! This module only turns flags into a [`LabConfig`] and a list of scenarios, with
//! error messages that name the flag (`--limit 0: ...`, exit status 2), and prints
//! a short summary; the lab itself is `tollgate_lab`.

use std::fmt;
use std::io::{self, Write};
use std::time::Instant;

use tollgate::{Nanos, parse_duration};
use tollgate_lab::{
    ConfigError, DEFAULT_IN_FLIGHT, LabConfig, LiveError, LiveOptions, MAX_IN_FLIGHT, MAX_LIMIT,
    MAX_LIVE_DURATION, MAX_LIVE_REQUESTS, MAX_NODES, MAX_PERIOD, MIN_PERIOD, Scenario, Target,
    WriteError, WriteOptions, human_duration,
};

use crate::cli::LabArgs;

/// Why `tollgate lab` stopped.
#[derive(Debug)]
pub enum LabError {
    /// A flag's value cannot be used.
    Flag {
        /// The flag, e.g. `--limit`.
        flag: &'static str,
        /// The value as shown: bare when a plain whole number, quoted otherwise.
        value: String,
        /// What is wrong with it.
        message: String,
        /// How to fix it, when that can be guessed.
        hint: Option<String>,
    },
    /// The live run could not be made.
    Live(LiveError),
    /// A live run got no decision at all (the report was written).
    NoDecisions {
        /// The targets.
        targets: String,
        /// Requests sent, every one failed.
        failed: u64,
    },
    /// Writing the report failed.
    Write(WriteError),
    /// Writing to stdout failed.
    Stdout(io::Error),
}

impl LabError {
    /// 2 for bad flags, 1 when writing failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            LabError::Flag { .. } => 2,
            LabError::Live(e) if e.is_caller_error() => 2,
            LabError::Live(_)
            | LabError::NoDecisions { .. }
            | LabError::Write(_)
            | LabError::Stdout(_) => 1,
        }
    }

    /// A suggestion to print after the message, if there is one.
    pub fn hint(&self) -> Option<&str> {
        match self {
            LabError::Flag { hint, .. } => hint.as_deref(),
            LabError::Live(LiveError::TooBig { .. }) => {
                Some("run fewer scenarios (--scenario), a smaller --limit or a shorter --period")
            }
            LabError::Live(LiveError::Unreachable { .. }) => {
                Some("start one with `tollgate serve`, or check the host and port")
            }
            LabError::Live(_)
            | LabError::NoDecisions { .. }
            | LabError::Write(_)
            | LabError::Stdout(_) => None,
        }
    }

    fn flag(flag: &'static str, text: &str, message: impl Into<String>) -> Self {
        LabError::Flag {
            flag,
            value: show(text),
            message: message.into(),
            hint: None,
        }
    }

    fn hinted(mut self, new: impl Into<String>) -> Self {
        if let LabError::Flag { hint, .. } = &mut self {
            *hint = Some(new.into());
        }
        self
    }
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabError::Flag {
                flag,
                value,
                message,
                ..
            } => write!(f, "{flag} {value}: {message}"),
            LabError::Live(e) => write!(f, "{e}"),
            LabError::NoDecisions { targets, failed } => write!(
                f,
                "no decision from {targets}: all {failed} requests failed (the report says how)"
            ),
            LabError::Write(e) => write!(f, "{e}"),
            LabError::Stdout(e) => write!(f, "cannot write to stdout: {e}"),
        }
    }
}

impl std::error::Error for LabError {}

/// A flag's value in a message: bare when it is a plain whole number, quoted
/// otherwise (as `simulate` shows them).
fn show(text: &str) -> String {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.to_owned()
    } else {
        format!("{text:?}")
    }
}

/// A whole number written with ASCII digits only.
fn whole(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A whole number flag in `1..=max`.
fn ranged(flag: &'static str, text: &str, max: u32) -> Result<u32, LabError> {
    let expected = format!("expected a whole number from 1 to {max}");
    match whole(text) {
        Some(n) if (1..=u64::from(max)).contains(&n) => Ok(n as u32),
        Some(_) => Err(LabError::flag(
            flag,
            text,
            format!("out of range: {expected}"),
        )),
        None if whole(text.trim()).is_some() => {
            Err(LabError::flag(flag, text, expected).hinted("remove the spaces around the number"))
        }
        None => Err(LabError::flag(flag, text, expected)),
    }
}

/// The configuration and scenarios the flags ask for.
pub fn config_from_args(args: &LabArgs) -> Result<(LabConfig, Vec<Scenario>), LabError> {
    let default = LabConfig::default();
    let limit = match &args.limit {
        Some(text) => ranged("--limit", text, MAX_LIMIT)?,
        None => default.limit(),
    };
    let period = match &args.period {
        Some(text) => period(text)?,
        // Live runs are real time: 1s keeps a scenario to seconds.
        None if !args.target.is_empty() => LIVE_PERIOD,
        None => default.period(),
    };
    let nodes = match &args.nodes {
        Some(text) => ranged("--nodes", text, MAX_NODES)?,
        None => default.nodes(),
    };
    let seed = match &args.seed {
        Some(text) => whole(text).ok_or_else(|| {
            LabError::flag(
                "--seed",
                text,
                "expected a whole number from 0 to 18446744073709551615",
            )
        })?,
        None => default.seed(),
    };
    // Each value was checked against the lab's ranges above; should they ever
    // disagree, the message still names the flag.
    let config = LabConfig::new(limit, period, nodes, seed).map_err(|e| {
        let (flag, value) = match e {
            ConfigError::Limit(l) => ("--limit", l.to_string()),
            ConfigError::Period(p) => ("--period", format!("{:?}", human_duration(p))),
            ConfigError::Nodes(n) => ("--nodes", n.to_string()),
        };
        LabError::Flag {
            flag,
            value,
            message: e.to_string(),
            hint: None,
        }
    })?;
    let mut scenarios = Vec::new();
    for name in &args.scenario {
        let scenario = Scenario::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
            let err = LabError::flag(
                "--scenario",
                name,
                format!("unknown scenario: expected one of {}", names.join(", ")),
            );
            match suggest(name) {
                Some(s) => err.hinted(format!("did you mean {:?}?", s.name())),
                None => err.hinted("tollgate lab --list describes them"),
            }
        })?;
        if !scenarios.contains(&scenario) {
            scenarios.push(scenario);
        }
    }
    if !args.target.is_empty()
        && let Some(s) = scenarios.iter().find(|s| !tollgate_lab::runs_live(**s))
    {
        return Err(LabError::flag(
            "--scenario",
            s.name(),
            "cannot run live: the server decides atomically, so there is no \
                 read-then-write to replay",
        )
        .hinted("run it without --target to see it simulated"));
    }
    if scenarios.is_empty() {
        scenarios = Scenario::ALL.to_vec();
    }
    Ok((config, scenarios))
}

/// The period of a live run when `--period` is not given.
const LIVE_PERIOD: Nanos = Nanos::from_secs(1);

/// The live run's targets and in-flight bound, when `--target` was given.
pub fn live_from_args(args: &LabArgs) -> Result<Option<LiveOptions>, LabError> {
    if args.target.is_empty() {
        if let Some(text) = &args.in_flight {
            return Err(LabError::flag(
                "--in-flight",
                text,
                "only a live run has requests in flight",
            )
            .hinted("add --target URL, or leave --in-flight out"));
        }
        return Ok(None);
    }
    let mut targets = Vec::new();
    for text in &args.target {
        let target = Target::parse(text).map_err(|e| {
            let err = LabError::flag("--target", text, e.to_string());
            if text.contains("://") {
                err
            } else {
                err.hinted(format!(
                    "write it as a URL, e.g. \"http://{}\"",
                    text.trim()
                ))
            }
        })?;
        targets.push(target);
    }
    let in_flight = match &args.in_flight {
        Some(text) => ranged("--in-flight", text, MAX_IN_FLIGHT as u32)? as usize,
        None => DEFAULT_IN_FLIGHT,
    };
    Ok(Some(LiveOptions { targets, in_flight }))
}

/// The one scenario whose name contains what was typed (after normalising case and
/// separators), if exactly one does.
fn suggest(text: &str) -> Option<Scenario> {
    let norm: String = text
        .trim()
        .chars()
        .map(|c| match c {
            '-' | ' ' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    if norm.is_empty() {
        return None;
    }
    if let Some(s) = Scenario::from_name(&norm) {
        return Some(s);
    }
    let mut found = Scenario::ALL
        .into_iter()
        .filter(|s| s.name().contains(&norm));
    match (found.next(), found.next()) {
        (Some(s), None) => Some(s),
        _ => None,
    }
}

fn period(text: &str) -> Result<Nanos, LabError> {
    let range = format!(
        "from {} to {}",
        human_duration(MIN_PERIOD),
        human_duration(MAX_PERIOD)
    );
    let p = parse_duration(text).map_err(|_| {
        // A period is always shown quoted, as `simulate` shows it.
        let err = LabError::Flag {
            flag: "--period",
            value: format!("{text:?}"),
            message: "invalid duration: expected a whole number followed by a unit: ms, s, \
                      m or h (also ns, us, d), e.g. 500ms, 15s, 1m"
                .to_owned(),
            hint: None,
        };
        if whole(text.trim()).is_some() {
            err.hinted(format!("add a unit, e.g. \"{}s\"", text.trim()))
        } else {
            err
        }
    })?;
    if p < MIN_PERIOD || p > MAX_PERIOD {
        return Err(LabError::Flag {
            flag: "--period",
            value: format!("{text:?}"),
            message: format!("out of range: the lab runs periods {range}"),
            hint: None,
        });
    }
    Ok(p)
}

/// Runs `tollgate lab` as the binary does: lists the scenarios, or runs them and
/// writes the report folder, printing a summary to stdout.
///
/// When stdout's reader goes away early (`tollgate lab --list | head -1`), the run
/// ends quietly, as `simulate` does.
pub fn main(args: &LabArgs) -> Result<(), LabError> {
    match run(args) {
        Err(LabError::Stdout(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn run(args: &LabArgs) -> Result<(), LabError> {
    let (config, scenarios) = config_from_args(args)?;
    let mut stdout = io::stdout().lock();
    if args.list {
        for s in Scenario::ALL {
            writeln!(stdout, "{:<16} {}", s.name(), s.title()).map_err(LabError::Stdout)?;
        }
        return Ok(());
    }
    let live = live_from_args(args)?;
    if let Some(options) = &live {
        // A live run takes real time: say how long before it starts.
        let (requests, duration) = tollgate_lab::live_size(&config, &scenarios);
        let fits = requests <= MAX_LIVE_REQUESTS && duration <= MAX_LIVE_DURATION;
        let targets: Vec<&str> = options.targets.iter().map(|t| t.as_str()).collect();
        if fits {
            let _ = writeln!(
                io::stderr().lock(),
                "tollgate lab: live against {}: {requests} requests over at most {:.0} s",
                targets.join(", "),
                duration.as_u64() as f64 / 1e9
            );
        }
    }
    let started = Instant::now();
    let lab = match &live {
        Some(options) => {
            tollgate_lab::run_live(&config, &scenarios, options).map_err(LabError::Live)?
        }
        None => tollgate_lab::run(&config, &scenarios),
    };
    let files = tollgate_lab::write(
        &lab,
        &args.out,
        WriteOptions {
            timings: !args.no_timings,
        },
    )
    .map_err(LabError::Write)?;
    let seconds = started.elapsed().as_secs_f64();
    let report = &lab.report;
    writeln!(
        stdout,
        "tollgate lab{}: {} scenario(s) x 6 algorithms, {} per {}, fleets of {}, seed {}, in {seconds:.2} s",
        if report.live.is_some() { " (live)" } else { "" },
        report.scenarios.len(),
        config.limit(),
        human_duration(config.period()),
        config.nodes(),
        config.seed(),
    )
    .map_err(LabError::Stdout)?;
    if let Some(live) = &report.live {
        writeln!(
            stdout,
            "live against {}: {} requests sent, {} failed; not reproducible",
            live.targets.join(", "),
            live.requests,
            live.failed
        )
        .map_err(LabError::Stdout)?;
        for skipped in &live.skipped {
            writeln!(stdout, "not run live: {skipped}").map_err(LabError::Stdout)?;
        }
    }
    for line in tollgate_lab::highlights(report) {
        writeln!(stdout, "- {line}").map_err(LabError::Stdout)?;
    }
    writeln!(
        stdout,
        "wrote {} files to {}; open {} in a browser",
        files.len(),
        args.out.display(),
        args.out.join("index.html").display()
    )
    .map_err(LabError::Stdout)?;
    if let Some(live) = &report.live
        && live.requests > 0
        && live.failed == live.requests
    {
        return Err(LabError::NoDecisions {
            targets: live.targets.join(", "),
            failed: live.failed,
        });
    }
    Ok(())
}
