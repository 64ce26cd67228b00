//! `tollgate simulate`: replay a CSV trace of requests through one policy on a manual
//! clock, and write every decision as CSV.
//!
//! The decisions come from the same code as everywhere else: a
//! [`tollgate::MemoryStore`] reading a [`tollgate::ManualClock`] that starts at
//! `time_ms = 0` (instant 0 ns) and is moved to each row's time before its check. The
//! run is deterministic: the same trace and flags always give the same output.
//!
//! Input, CSV with a header: `time_ms,key,cost`.
//!
//! - `time_ms`: a whole number of milliseconds, from 0 to [`MAX_TIME_MS`], never
//!   smaller than the previous row's.
//! - `key`: any string, the empty string included (a key is a name, nothing more).
//!   A key holding a comma, a quote or a line break is quoted as CSV quotes it.
//! - `cost`: a whole number from 1 to 4294967295. A cost the policy can never admit
//!   is not an error: it is denied, with an empty `retry_after_ms`.
//!
//! Blank lines are skipped, a UTF-8 byte order mark before the header is ignored,
//! and CRLF line ends are accepted (see [`crate::records`] for the CSV dialect).
//! Nothing is trimmed: `0, alice,1` is the key `" alice"`, and `0,alice, 1` is an
//! invalid cost (the message says to remove the space).
//!
//! Output, CSV with a header, one row per input row in the same order:
//! `time_ms,key,cost,allowed,remaining,retry_after_ms,delay_ms`. `time_ms` and `cost`
//! are the numbers read (so `007` comes out as `7`), `key` is quoted only where CSV
//! needs it, durations are milliseconds rounded up ([`Nanos::as_millis_ceil`]), and
//! `retry_after_ms` is empty when allowed or when the cost can never be admitted.
//!
//! The input is read one row at a time and the output written through the caller's
//! writer as it goes, so a trace of any length runs in memory proportional to the
//! keys' states, not to the trace.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::num::NonZeroU32;
use std::path::Path;

use csv::ByteRecord;
use tollgate::{
    Algorithm, MAX_PERIOD, ManualClock, MemoryStore, Nanos, Policy, PolicyError, parse_duration,
};

use crate::cli::SimulateArgs;
use crate::records::{ReadError, Records, io_error};

/// The input's header, column by column.
pub const INPUT_HEADER: [&str; 3] = ["time_ms", "key", "cost"];

/// The output's header line.
pub const OUTPUT_HEADER: &str = "time_ms,key,cost,allowed,remaining,retry_after_ms,delay_ms";

/// The latest `time_ms` a trace may use: 2^62 ns in milliseconds, about 146 years.
/// With periods also capped at 2^62 ns ([`tollgate::MAX_PERIOD`]), every instant a
/// decision computes stays inside `u64`.
pub const MAX_TIME_MS: u64 = MAX_PERIOD.as_u64() / 1_000_000;

/// The store's key cap in the simulator: in effect none. A cap would evict live keys
/// once reached, and a simulation must not depend on the store's housekeeping. Keys
/// whose state is fresh again are still dropped, which changes no decision.
const NO_KEY_CAP: usize = usize::MAX >> 2;

/// Why a simulation stopped.
#[derive(Debug)]
pub enum SimError {
    /// A flag's value cannot be used.
    Flag {
        /// The flag, e.g. `--limit`.
        flag: &'static str,
        /// The value as shown in the message: bare when it is a plain whole number,
        /// quoted otherwise.
        value: String,
        /// What is wrong with it.
        message: String,
        /// How to fix it, when that can be guessed.
        hint: Option<String>,
    },
    /// The input is malformed.
    Input {
        /// The line (from 1) where the offending CSV record starts.
        line: u64,
        /// What is wrong.
        message: String,
        /// How to fix it, when that can be guessed.
        hint: Option<String>,
    },
    /// Reading the input failed.
    Read(io::Error),
    /// Writing the output failed.
    Write(io::Error),
}

impl SimError {
    /// The process exit status for this error: 2 for bad flags or bad input, 1 when
    /// reading or writing failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            SimError::Flag { .. } | SimError::Input { .. } => 2,
            SimError::Read(_) | SimError::Write(_) => 1,
        }
    }

    /// True when the output's reader went away (`tollgate simulate ... | head`): not
    /// a failure, the run just stops quietly.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, SimError::Write(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }

    /// A suggestion to print after the message, if there is one.
    pub fn hint(&self) -> Option<&str> {
        match self {
            SimError::Flag { hint, .. } | SimError::Input { hint, .. } => hint.as_deref(),
            SimError::Read(_) | SimError::Write(_) => None,
        }
    }

    fn input(line: u64, message: impl Into<String>) -> Self {
        SimError::Input {
            line,
            message: message.into(),
            hint: None,
        }
    }

    fn flag(flag: &'static str, value: String, message: impl Into<String>) -> Self {
        SimError::Flag {
            flag,
            value,
            message: message.into(),
            hint: None,
        }
    }

    /// The same error with `new` as its hint, when there is one.
    fn with_hint(mut self, new: Option<impl Into<String>>) -> Self {
        if let SimError::Flag { hint, .. } | SimError::Input { hint, .. } = &mut self {
            *hint = new.map(Into::into);
        }
        self
    }
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::Flag {
                flag,
                value,
                message,
                ..
            } => write!(f, "{flag} {value}: {message}"),
            SimError::Input { line, message, .. } => write!(f, "line {line}: {message}"),
            SimError::Read(e) => write!(f, "cannot read the input: {}", lower_io(e)),
            SimError::Write(e) => write!(f, "cannot write the output: {}", lower_io(e)),
        }
    }
}

impl std::error::Error for SimError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SimError::Read(e) | SimError::Write(e) => Some(e),
            SimError::Flag { .. } | SimError::Input { .. } => None,
        }
    }
}

/// Runs `tollgate simulate` as the binary does: builds the policy from `args`, reads
/// the trace from `--input` or stdin, writes the decisions to stdout. A warning (a
/// `--burst` the algorithm ignores) goes to stderr.
pub fn main(args: &SimulateArgs) -> Result<(), SimError> {
    let policy = policy_from_args(args)?;
    if args.burst.is_some() && !policy.algorithm().is_bucket() {
        // Best effort: a closed stderr must not stop the run.
        let _ = writeln!(
            io::stderr(),
            "warning: --burst is ignored by {}: only token_bucket, gcra and leaky_bucket use it",
            policy.algorithm()
        );
    }
    let output = io::stdout().lock();
    match args.input.as_deref() {
        Some(path) if path != Path::new("-") => run(&policy, open_input(path)?, output),
        _ => run(&policy, io::stdin().lock(), output),
    }
    .map(|_rows| ())
}

/// Opens `--input`, refusing a directory up front (reading one fails only later,
/// with a less helpful message).
fn open_input(path: &Path) -> Result<File, SimError> {
    let shown = format!("{:?}", path.display().to_string());
    let bad = |e: io::Error| SimError::flag("--input", shown.clone(), lower_io(&e));
    let file = File::open(path).map_err(bad)?;
    if file.metadata().map_err(bad)?.is_dir() {
        return Err(SimError::flag(
            "--input",
            shown,
            "is a directory: expected a CSV file",
        ));
    }
    Ok(file)
}

/// Builds the policy that `--algorithm`, `--limit`, `--period` and `--burst` describe;
/// `--burst` defaults to the limit.
pub fn policy_from_args(args: &SimulateArgs) -> Result<Policy, SimError> {
    let algorithm = parse_algorithm(&args.algorithm)?;
    let limit = parse_positive_flag(
        "--limit",
        &args.limit,
        "a policy must admit at least 1 unit per period",
    )?;
    let period = parse_period(&args.period)?;
    // The limit is at least 1 here, so only the period can be wrong.
    let policy = Policy::new(algorithm, limit, period).map_err(|e| {
        let message = match e {
            PolicyError::ZeroPeriod => "the period must be longer than zero".to_owned(),
            PolicyError::PeriodTooLong(_) => {
                "too long: the longest period is 2^62 ns (about 146 years)".to_owned()
            }
            other => other.to_string(),
        };
        period_error(&args.period, message)
    })?;
    let Some(burst_text) = &args.burst else {
        return Ok(policy);
    };
    let burst = parse_positive_flag("--burst", burst_text, "the burst must be at least 1")?;
    policy.with_burst(burst).map_err(|e| {
        let message = match e {
            PolicyError::BurstTooLong { emission, .. } => format!(
                "too large: the burst times the emission interval ({} ns per unit) exceeds 2^62 ns (about 146 years)",
                emission.as_u64()
            ),
            other => other.to_string(),
        };
        SimError::flag("--burst", show_flag_value(burst_text), message)
            .with_hint(Some("use a smaller burst or a shorter period"))
    })
}

fn parse_algorithm(text: &str) -> Result<Algorithm, SimError> {
    text.parse::<Algorithm>().map_err(|_| {
        SimError::flag(
            "--algorithm",
            format!("{text:?}"),
            "unknown algorithm: expected fixed_window, sliding_window_log, \
             sliding_window_counter, token_bucket, gcra or leaky_bucket",
        )
        .with_hint(suggest_algorithm(text).map(|a| format!("did you mean {:?}?", a.name())))
    })
}

/// The algorithm a mistyped name most likely meant: the same name with other case or
/// separators, one of the seed service's `RATE_LIMITER_ALGORITHM` names, or the only
/// algorithm whose name contains what was typed.
fn suggest_algorithm(text: &str) -> Option<Algorithm> {
    let norm: String = text
        .trim()
        .chars()
        .map(|c| match c {
            '-' | ' ' | '.' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    if norm.is_empty() {
        return None;
    }
    if let Ok(a) = norm.parse::<Algorithm>() {
        return Some(a);
    }
    let seed = match norm.as_str() {
        "in_memory_token_bucket" | "redis_token_bucket" | "tokenbucket" => {
            Some(Algorithm::TokenBucket)
        }
        "sliding_window" | "slidingwindow" => Some(Algorithm::SlidingWindowLog),
        "leaking_bucket" | "leaking_bucket_queue" | "leakybucket" => Some(Algorithm::LeakyBucket),
        "fixedwindow" => Some(Algorithm::FixedWindow),
        _ => None,
    };
    if seed.is_some() {
        return seed;
    }
    let mut containing = Algorithm::ALL
        .into_iter()
        .filter(|a| a.name().contains(&norm));
    match (containing.next(), containing.next()) {
        (Some(a), None) => Some(a),
        _ => None,
    }
}

/// How a flag's value appears in a message: bare when it is a plain whole number
/// (`--limit 0`), quoted otherwise (`--limit "abc"`).
fn show_flag_value(text: &str) -> String {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.to_owned()
    } else {
        format!("{text:?}")
    }
}

/// A flag holding a whole number from 1 to `u32::MAX`; `zero` says what a 0 breaks.
fn parse_positive_flag(flag: &'static str, text: &str, zero: &str) -> Result<u32, SimError> {
    parse_positive(text).map(NonZeroU32::get).map_err(|e| {
        let message = match e {
            NumError::Zero => zero,
            NumError::TooLarge => "too large: expected a whole number from 1 to 4294967295",
            NumError::NotANumber | NumError::Spaces | NumError::Fraction => {
                "expected a whole number >= 1"
            }
        };
        SimError::flag(flag, show_flag_value(text), message).with_hint(e.hint())
    })
}

fn period_error(text: &str, message: impl Into<String>) -> SimError {
    SimError::flag("--period", format!("{text:?}"), message)
}

fn parse_period(text: &str) -> Result<Nanos, SimError> {
    parse_duration(text).map_err(|_| {
        period_error(
            text,
            "invalid duration: expected a whole number followed by a unit: ms, s, m or h \
             (also ns, us, d), e.g. 500ms, 15s, 1m",
        )
        .with_hint(period_hint(text))
    })
}

/// A guess at the period that was meant: `15` -> `15s`, `15 sec` -> `15s`,
/// `1.5s` -> a smaller unit.
fn period_hint(text: &str) -> Option<String> {
    let s = text.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return None;
    }
    if unit.is_empty() {
        return Some(format!("add a unit, e.g. \"{number}s\" or \"{number}ms\""));
    }
    if unit.starts_with('.') {
        return Some(
            "the number must be whole: use a smaller unit, e.g. \"1500ms\" for 1.5 seconds"
                .to_owned(),
        );
    }
    let unit = match unit.trim().to_ascii_lowercase().as_str() {
        "ns" | "nanos" | "nanosecond" | "nanoseconds" => "ns",
        "us" | "micros" | "microsecond" | "microseconds" => "us",
        "ms" | "msec" | "msecs" | "millis" | "millisecond" | "milliseconds" => "ms",
        "s" | "sec" | "secs" | "second" | "seconds" => "s",
        "m" | "min" | "mins" | "minute" | "minutes" => "m",
        "h" | "hr" | "hrs" | "hour" | "hours" => "h",
        "d" | "day" | "days" => "d",
        _ => return None,
    };
    Some(format!("did you mean \"{number}{unit}\"?"))
}

/// Why a field is not the number wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NumError {
    /// Not a whole number at all (or empty, or negative).
    NotANumber,
    /// A number with spaces around it.
    Spaces,
    /// A decimal point.
    Fraction,
    /// Digits only, but more than the type holds.
    TooLarge,
    /// 0 where at least 1 is needed.
    Zero,
}

impl NumError {
    fn hint(self) -> Option<&'static str> {
        match self {
            NumError::Spaces => Some("remove the spaces around the number"),
            NumError::Fraction => Some("use a whole number, without a decimal point"),
            NumError::NotANumber | NumError::TooLarge | NumError::Zero => None,
        }
    }
}

/// A whole number written with ASCII digits only (no sign, no spaces).
fn parse_whole(text: &str) -> Result<u64, NumError> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if digits(text) {
        return text.parse().map_err(|_| NumError::TooLarge);
    }
    let trimmed = text.trim();
    if trimmed != text && parse_whole(trimmed).is_ok() {
        return Err(NumError::Spaces);
    }
    match trimmed.split_once('.') {
        Some((int, frac)) if (int.is_empty() || digits(int)) && digits(frac) => {
            Err(NumError::Fraction)
        }
        _ => Err(NumError::NotANumber),
    }
}

/// A whole number from 1 to `u32::MAX`.
fn parse_positive(text: &str) -> Result<NonZeroU32, NumError> {
    let n = u32::try_from(parse_whole(text)?).map_err(|_| NumError::TooLarge)?;
    NonZeroU32::new(n).ok_or(NumError::Zero)
}

/// Replays the trace read from `input` through `policy` and writes one output row per
/// input row to `output`; returns the number of rows. Both are buffered here.
///
/// `output` is flushed before returning, also when the run stops on an error, so the
/// rows written before a bad line are not lost.
pub fn run(policy: &Policy, input: impl Read, output: impl Write) -> Result<u64, SimError> {
    let mut output = csv::Writer::from_writer(output);
    let result = replay(policy, Records::new(input), &mut output);
    let flushed = output.flush().map_err(SimError::Write);
    let rows = result?;
    flushed?;
    Ok(rows)
}

fn replay(
    policy: &Policy,
    mut input: Records<impl Read>,
    output: &mut csv::Writer<impl Write>,
) -> Result<u64, SimError> {
    let write_error = |e| SimError::Write(io_error(e));
    let mut record = ByteRecord::new();

    let Some(line) = read_record(&mut input, &mut record)? else {
        return Err(SimError::input(
            1,
            "the input is empty: expected the header time_ms,key,cost",
        ));
    };
    check_header(&record, line)?;
    output
        .write_record(OUTPUT_HEADER.split(','))
        .map_err(write_error)?;

    let clock = ManualClock::new(Nanos::ZERO);
    let store = MemoryStore::builder()
        .shards(1)
        .max_keys(NO_KEY_CAP)
        .build_with_clock(clock.clone());
    // The previous row's time and line.
    let mut previous: Option<(u64, u64)> = None;
    let mut rows = 0u64;
    while let Some(line) = read_record(&mut input, &mut record)? {
        let row = parse_row(&record, line)?;
        if let Some((prev_time, prev_line)) = previous
            && row.time_ms < prev_time
        {
            return Err(SimError::input(
                line,
                format!(
                    "time_ms {} is earlier than time_ms {prev_time} on line {prev_line}: \
                         times must not go backwards",
                    row.time_ms
                ),
            )
            .with_hint(Some("sort the trace by time_ms")));
        }
        previous = Some((row.time_ms, line));

        clock.set(Nanos::from_millis(row.time_ms));
        let decision = store.check_n(row.key, policy, row.cost);
        let retry = decision.retry_after.map(|r| r.as_millis_ceil().to_string());
        output
            .write_record([
                row.time_ms.to_string().as_str(),
                row.key,
                &row.cost.to_string(),
                if decision.allowed { "true" } else { "false" },
                &decision.remaining.to_string(),
                retry.as_deref().unwrap_or(""),
                &decision.delay.as_millis_ceil().to_string(),
            ])
            .map_err(write_error)?;
        rows += 1;
    }
    Ok(rows)
}

/// One parsed input row.
#[derive(Debug)]
struct Row<'a> {
    time_ms: u64,
    key: &'a str,
    cost: NonZeroU32,
}

/// Reads the next record; returns the line where it starts, or `None` at the end.
fn read_record(
    input: &mut Records<impl Read>,
    record: &mut ByteRecord,
) -> Result<Option<u64>, SimError> {
    input.read(record).map_err(|e| match e {
        ReadError::Io(io) => SimError::Read(io),
        ReadError::UnclosedQuote { line } => SimError::input(
            line,
            "a quoted field is never closed",
        )
        .with_hint(Some(
            "end the key with a closing quote, and double any quote inside it: \"say \"\"hi\"\"\"",
        )),
    })
}

/// The record's fields, with invalid UTF-8 replaced, for checks and messages.
fn lossy_fields(record: &ByteRecord) -> Vec<String> {
    record
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect()
}

fn check_header(record: &ByteRecord, line: u64) -> Result<(), SimError> {
    let mut fields = lossy_fields(record);
    // The csv crate skips a byte order mark only when its first read got all of it.
    if let Some(first) = fields.first_mut()
        && let Some(rest) = first.strip_prefix('\u{feff}')
    {
        *first = rest.to_owned();
    }
    if fields == INPUT_HEADER {
        return Ok(());
    }
    let normalized: Vec<String> = fields
        .iter()
        .map(|f| f.trim().to_ascii_lowercase())
        .collect();
    let hint = if normalized == INPUT_HEADER {
        "write the header exactly as time_ms,key,cost: lowercase, without spaces"
    } else if fields
        .first()
        .is_some_and(|f| parse_whole(f.trim()).is_ok())
    {
        "the first line must be the header time_ms,key,cost; this one looks like a data row"
    } else if normalized.len() == 3
        && INPUT_HEADER
            .iter()
            .all(|h| normalized.iter().any(|f| f == h))
    {
        "the columns must come in the order time_ms,key,cost"
    } else {
        "the first line must be the header time_ms,key,cost"
    };
    Err(SimError::input(
        line,
        format!(
            "invalid header {:?}: expected \"time_ms,key,cost\"",
            fields.join(",")
        ),
    )
    .with_hint(Some(hint)))
}

fn parse_row(record: &ByteRecord, line: u64) -> Result<Row<'_>, SimError> {
    let (Some(time), Some(key), Some(cost), None) =
        (record.get(0), record.get(1), record.get(2), record.get(3))
    else {
        let found = record.len();
        let what = if found < 3 {
            "missing column"
        } else {
            "too many columns"
        };
        let err = SimError::input(
            line,
            format!(
                "{what}: expected 3 columns (time_ms,key,cost), found {found}: {:?}",
                lossy_fields(record).join(",")
            ),
        );
        return Err(err
            .with_hint((found > 3).then_some("quote a key that holds a comma, e.g. 0,\"a,b\",1")));
    };
    let time_ms = parse_time(time, line)?;
    let key = std::str::from_utf8(key).map_err(|_| {
        SimError::input(
            line,
            format!(
                "invalid key {:?}: not valid UTF-8",
                String::from_utf8_lossy(key)
            ),
        )
    })?;
    let cost = parse_cost(cost, line)?;
    Ok(Row { time_ms, key, cost })
}

fn parse_time(field: &[u8], line: u64) -> Result<u64, SimError> {
    let text = String::from_utf8_lossy(field);
    match parse_whole(&text) {
        Ok(t) if t <= MAX_TIME_MS => Ok(t),
        Ok(_) | Err(NumError::TooLarge) => Err(SimError::input(
            line,
            format!("invalid time_ms {text:?}: the latest time is {MAX_TIME_MS} (about 146 years)"),
        )),
        Err(e) => Err(SimError::input(
            line,
            format!("invalid time_ms {text:?}: expected a whole number of milliseconds >= 0"),
        )
        .with_hint(e.hint())),
    }
}

fn parse_cost(field: &[u8], line: u64) -> Result<NonZeroU32, SimError> {
    let text = String::from_utf8_lossy(field);
    parse_positive(&text).map_err(|e| {
        let expected = match e {
            NumError::TooLarge => "from 1 to 4294967295",
            NumError::NotANumber | NumError::Spaces | NumError::Fraction | NumError::Zero => ">= 1",
        };
        SimError::input(
            line,
            format!("invalid cost {text:?}: expected a whole number {expected}"),
        )
        .with_hint(e.hint())
    })
}

/// `text` with its first letter in lowercase (error messages start lowercase).
fn lower(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// An I/O error's message, starting lowercase.
fn lower_io(e: &io::Error) -> String {
    lower(&e.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policy(algorithm: Algorithm, limit: u32, period_ms: u64) -> Policy {
        Policy::new(algorithm, limit, Duration::from_millis(period_ms)).expect("valid policy")
    }

    fn simulate(policy: &Policy, input: &str) -> Result<String, SimError> {
        let mut out = Vec::new();
        run(policy, input.as_bytes(), &mut out)?;
        Ok(String::from_utf8(out).expect("utf-8"))
    }

    fn args(algorithm: &str, limit: &str, period: &str, burst: Option<&str>) -> SimulateArgs {
        SimulateArgs {
            algorithm: algorithm.to_owned(),
            limit: limit.to_owned(),
            period: period.to_owned(),
            burst: burst.map(str::to_owned),
            input: None,
        }
    }

    fn flag_error(a: &SimulateArgs) -> String {
        policy_from_args(a).expect_err("bad flags").to_string()
    }

    #[test]
    fn gcra_two_per_second() {
        let p = policy(Algorithm::Gcra, 2, 1000);
        let out = simulate(
            &p,
            "time_ms,key,cost\n0,a,1\n0,a,1\n0,a,1\n500,a,1\n500,b,3\n",
        )
        .expect("runs");
        assert_eq!(
            out,
            "time_ms,key,cost,allowed,remaining,retry_after_ms,delay_ms\n\
             0,a,1,true,1,,0\n\
             0,a,1,true,0,,0\n\
             0,a,1,false,0,500,0\n\
             500,a,1,true,0,,0\n\
             500,b,3,false,2,,0\n"
        );
    }

    #[test]
    fn header_only_gives_header_only() {
        let p = policy(Algorithm::FixedWindow, 1, 1000);
        assert_eq!(
            simulate(&p, "time_ms,key,cost\n").expect("runs"),
            format!("{OUTPUT_HEADER}\n")
        );
    }

    #[test]
    fn bom_crlf_blank_lines_and_quoted_keys() {
        let p = policy(Algorithm::FixedWindow, 5, 1000);
        let out = simulate(
            &p,
            "\u{feff}time_ms,key,cost\r\n\r\n0,\"a,b\",1\r\n1,,2\r\n2,\"say \"\"hi\"\"\",1\r\n",
        )
        .expect("runs");
        assert_eq!(
            out,
            "time_ms,key,cost,allowed,remaining,retry_after_ms,delay_ms\n\
             0,\"a,b\",1,true,4,,0\n\
             1,,2,true,3,,0\n\
             2,\"say \"\"hi\"\"\",1,true,4,,0\n"
        );
    }

    #[test]
    fn errors_name_the_line_and_keep_earlier_rows() {
        let p = policy(Algorithm::Gcra, 2, 1000);
        let mut out = Vec::new();
        let err = run(
            &p,
            "time_ms,key,cost\n0,a,1\n\n5,a,abc\n".as_bytes(),
            &mut out,
        )
        .expect_err("bad cost");
        assert_eq!(
            err.to_string(),
            "line 4: invalid cost \"abc\": expected a whole number >= 1"
        );
        assert_eq!(err.exit_code(), 2);
        let out = String::from_utf8(out).expect("utf-8");
        assert_eq!(out.lines().count(), 2, "{out}");
    }

    #[test]
    fn input_errors() {
        let p = policy(Algorithm::Gcra, 2, 1000);
        let cases = [
            ("", "line 1: the input is empty"),
            (
                "time,key,cost\n",
                "line 1: invalid header \"time,key,cost\"",
            ),
            ("time_ms,key,cost\n0,a\n", "line 2: missing column"),
            ("time_ms,key,cost\n0,a,1,2\n", "line 2: too many columns"),
            ("time_ms,key,cost\nx,a,1\n", "line 2: invalid time_ms \"x\""),
            (
                "time_ms,key,cost\n-1,a,1\n",
                "line 2: invalid time_ms \"-1\"",
            ),
            ("time_ms,key,cost\n0,a,0\n", "line 2: invalid cost \"0\""),
            ("time_ms,key,cost\n0,a,-1\n", "line 2: invalid cost \"-1\""),
            (
                "time_ms,key,cost\n0,a,4294967296\n",
                "line 2: invalid cost \"4294967296\": expected a whole number from 1 to 4294967295",
            ),
            (
                "time_ms,key,cost\n5,a,1\n4,a,1\n",
                "line 3: time_ms 4 is earlier than time_ms 5 on line 2",
            ),
            (
                "time_ms,key,cost\n99999999999999999999,a,1\n",
                "line 2: invalid time_ms \"99999999999999999999\": the latest time is",
            ),
        ];
        for (input, expected) in cases {
            let mut out = Vec::new();
            let err = run(&p, input.as_bytes(), &mut out).expect_err(input);
            assert!(err.to_string().starts_with(expected), "{input:?}: {err}");
            assert_eq!(err.exit_code(), 2);
        }
    }

    /// The line named is the one where the bad record starts, whatever blank lines,
    /// line breaks inside quoted keys and line ends come before it.
    #[test]
    fn error_lines_count_every_line_break() {
        let p = policy(Algorithm::Gcra, 2, 1000);
        let cases = [
            ("time_ms,key,cost\n\n\n0,a,x\n", "line 4: invalid cost"),
            ("time_ms,key,cost\n0,a,1\n\n0,a,x", "line 4: invalid cost"),
            (
                "\u{feff}time_ms,key,cost\r\n\r\n0,\"a\r\n\r\nb\",1\r\n\r\n0,c,x\r\n",
                "line 7: invalid cost",
            ),
            (
                "time_ms,key,cost\n0,\"a\n\nb\",x\n0,a,1\n",
                "line 2: invalid cost \"x\"",
            ),
            ("\n\ntime,key,cost\n", "line 3: invalid header"),
            (
                "time_ms,key,cost\n\n0,\"a\n\n",
                "line 3: a quoted field is never closed",
            ),
            (
                "time_ms,key,cost\n\n0,\"a\n\nb",
                "line 3: a quoted field is never closed",
            ),
            (
                "time_ms,key,cost\n1,a,1\n\n\"0\",\"b\n\",1\n",
                "line 4: time_ms 0 is earlier than time_ms 1 on line 2",
            ),
        ];
        for (input, expected) in cases {
            let err = run(&p, input.as_bytes(), &mut Vec::new()).expect_err(input);
            assert!(err.to_string().starts_with(expected), "{input:?}: {err}");
            assert_eq!(err.exit_code(), 2);
        }
    }

    /// A byte order mark split over reads, which the csv crate does not skip, is
    /// skipped all the same.
    #[test]
    fn a_byte_order_mark_over_two_reads() {
        let p = policy(Algorithm::Gcra, 2, 1000);
        let input = (&b"\xef"[..]).chain(&b"\xbb\xbftime_ms,key,cost\r\n0,a,1"[..]);
        let mut out = Vec::new();
        assert_eq!(run(&p, input, &mut out).expect("runs"), 1);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            format!("{OUTPUT_HEADER}\n0,a,1,true,1,,0\n")
        );
    }

    #[test]
    fn a_key_must_be_utf8() {
        let p = policy(Algorithm::Gcra, 2, 1000);
        let err =
            run(&p, &b"time_ms,key,cost\n0,\xff,1\n"[..], &mut Vec::new()).expect_err("bad key");
        assert!(err.to_string().starts_with("line 2: invalid key"), "{err}");
    }

    #[test]
    fn hints() {
        let p = policy(Algorithm::Gcra, 2, 1000);
        let hint = |input: &str| {
            run(&p, input.as_bytes(), &mut Vec::new())
                .expect_err(input)
                .hint()
                .map(str::to_owned)
        };
        assert!(hint("time_ms, key, cost\n").is_some_and(|h| h.contains("without spaces")));
        assert!(hint("0,a,1\n").is_some_and(|h| h.contains("data row")));
        assert!(hint("key,time_ms,cost\n").is_some_and(|h| h.contains("order")));
        assert!(hint("time_ms,key,cost\n0,a, 1\n").is_some_and(|h| h.contains("spaces")));
        assert!(hint("time_ms,key,cost\n0,a,1.5\n").is_some_and(|h| h.contains("whole")));
    }

    #[test]
    fn flag_errors() {
        assert!(
            flag_error(&args("foo", "1", "1s", None))
                .starts_with("--algorithm \"foo\": unknown algorithm")
        );
        assert!(flag_error(&args("gcra", "0", "1s", None)).starts_with("--limit 0: "));
        assert!(flag_error(&args("gcra", "abc", "1s", None)).starts_with("--limit \"abc\": "));
        assert!(flag_error(&args("gcra", "-3", "1s", None)).starts_with("--limit \"-3\": "));
        assert!(
            flag_error(&args("gcra", "4294967296", "1s", None))
                .starts_with("--limit 4294967296: too large")
        );
        assert!(flag_error(&args("gcra", "1", "abc", None)).starts_with("--period \"abc\": "));
        assert!(
            flag_error(&args("gcra", "1", "0s", None))
                .starts_with("--period \"0s\": the period must be longer than zero")
        );
        assert!(flag_error(&args("gcra", "1", "1s", Some("0"))).starts_with("--burst 0: "));
        assert!(
            flag_error(&args("gcra", "1", "1000h", Some("2000")))
                .starts_with("--burst 2000: too large")
        );
    }

    #[test]
    fn algorithm_suggestions() {
        assert_eq!(
            suggest_algorithm("token-bucket"),
            Some(Algorithm::TokenBucket)
        );
        assert_eq!(suggest_algorithm("GCRA"), Some(Algorithm::Gcra));
        assert_eq!(
            suggest_algorithm("sliding_window"),
            Some(Algorithm::SlidingWindowLog)
        );
        assert_eq!(
            suggest_algorithm("leaking_bucket_queue"),
            Some(Algorithm::LeakyBucket)
        );
        assert_eq!(
            suggest_algorithm("counter"),
            Some(Algorithm::SlidingWindowCounter)
        );
        assert_eq!(suggest_algorithm("bucket"), None);
        assert_eq!(suggest_algorithm("foo"), None);
        assert_eq!(suggest_algorithm(""), None);
    }

    #[test]
    fn period_hints() {
        assert_eq!(
            period_hint("15").as_deref(),
            Some("add a unit, e.g. \"15s\" or \"15ms\"")
        );
        assert_eq!(
            period_hint("15 sec").as_deref(),
            Some("did you mean \"15s\"?")
        );
        assert_eq!(
            period_hint("2minutes").as_deref(),
            Some("did you mean \"2m\"?")
        );
        assert!(period_hint("1.5s").is_some_and(|h| h.contains("1500ms")));
        assert_eq!(period_hint("abc"), None);
    }

    #[test]
    fn whole_numbers() {
        assert_eq!(parse_whole("0"), Ok(0));
        assert_eq!(parse_whole("007"), Ok(7));
        assert_eq!(parse_whole("+7"), Err(NumError::NotANumber));
        assert_eq!(parse_whole(" 7"), Err(NumError::Spaces));
        assert_eq!(parse_whole("-7"), Err(NumError::NotANumber));
        assert_eq!(parse_whole("7.5"), Err(NumError::Fraction));
        assert_eq!(parse_whole(""), Err(NumError::NotANumber));
        assert_eq!(parse_whole("18446744073709551616"), Err(NumError::TooLarge));
    }

    #[test]
    fn burst_defaults_to_the_limit() {
        let p = policy_from_args(&args("token_bucket", "3", "1s", None)).expect("valid");
        assert_eq!(p.burst(), 3);
        let p = policy_from_args(&args("token_bucket", "3", "1s", Some("7"))).expect("valid");
        assert_eq!(p.burst(), 7);
    }

    /// A writer that fails like a closed pipe.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    /// A reader that fails after the header.
    struct FailingInput(bool);

    impl io::Read for FailingInput {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if std::mem::replace(&mut self.0, true) {
                return Err(io::Error::other("disk on fire"));
            }
            let header = b"time_ms,key,cost\n";
            let n = header.len().min(buf.len());
            buf[..n].copy_from_slice(&header[..n]);
            Ok(n)
        }
    }

    #[test]
    fn a_failing_input_is_a_read_error() {
        let p = policy(Algorithm::Gcra, 2, 1000);
        let mut out = Vec::new();
        let err = run(&p, FailingInput(false), &mut out).expect_err("fails");
        assert_eq!(err.to_string(), "cannot read the input: disk on fire");
        assert_eq!(err.exit_code(), 1);
        assert!(!err.is_broken_pipe());
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            format!("{OUTPUT_HEADER}\n")
        );
    }

    #[test]
    fn a_closed_pipe_is_reported_as_such() {
        let p = policy(Algorithm::Gcra, 2, 1000);
        let err = run(&p, "time_ms,key,cost\n0,a,1\n".as_bytes(), ClosedPipe).expect_err("closed");
        assert!(err.is_broken_pipe());
    }
}
