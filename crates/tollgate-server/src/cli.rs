//! The command line: clap types for `tollgate` and its subcommands.
//!
//! Values that need a precise error message (`--algorithm`, `--limit`, `--period`,
//! `--burst`) are taken as text here and checked by the subcommand itself, so the
//! message names the flag and the value the way the rest of tollgate does
//! (`error: --limit 0: ...`), rather than in clap's own words.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// `tollgate`: the rate limit server, the simulator and the lab.
#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Rate limiting with one exact meaning per algorithm",
    long_about = "Rate limiting with one exact meaning per algorithm.\n\n\
        With no subcommand, tollgate runs `serve`.",
    args_conflicts_with_subcommands = true,
    after_help = "Exit status: 0 on success, 1 when reading or writing failed, 2 on bad flags or bad input."
)]
pub struct Cli {
    /// What to do; `serve` when none is given.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The flags of `serve`, so that `tollgate --port 9000` means `tollgate serve --port 9000`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl Cli {
    /// The subcommand to run: the one given, or `serve` with the top-level flags.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP rate limit server (the default): the decision API, health,
    /// metrics, and every other path as the protected API.
    #[command(long_about = SERVE_LONG_ABOUT)]
    Serve(ServeArgs),
    /// Check a configuration file and print the effective configuration.
    CheckConfig(CheckConfigArgs),
    /// Replay a CSV trace of requests through one policy on a manual clock.
    #[command(long_about = SIMULATE_LONG_ABOUT)]
    Simulate(SimulateArgs),
    /// Run every algorithm on the same scenarios in virtual time; write charts and tables.
    #[command(long_about = LAB_LONG_ABOUT)]
    Lab(LabArgs),
}

const LAB_LONG_ABOUT: &str = "\
Run every algorithm on the same scenarios in virtual time; write charts and tables.

Each scenario (steady overload, a burst, the boundary attack, Poisson traffic, on/off
traffic, a hog among clients, a fleet with and without a shared store, simultaneous
requests decided non-atomically and atomically) is offered to all six algorithms under
one limit. Deterministic: the same flags give the same report.json.

Writes into --out (default lab-report/): index.html (one page, charts inline, opens
offline), report.md, one SVG chart per scenario, report.json (every figure) and
timings.json (nanoseconds per decision on this machine; --no-timings leaves it out, and
then every file is the same from run to run).

Live mode (--target URL): the same scenarios replayed in real time against running
tollgate servers, each request a POST /v1/check with an inline policy and a key
tagged for the run; --period defaults to 1s, so a scenario takes 3 to 30 seconds.
The report has the same files plus requests.csv (every request and its answer),
the simulator's prediction beside each measured figure, and says LIVE: it is a
measurement, not reproducible. race_nonatomic does not run live (the server decides
atomically). Failed requests are counted and reported; a target that does not
answer GET /healthz first stops the run (exit status 1).

Bad flags stop the run with a message naming the flag, exit status 2.

Examples:
  tollgate lab
  tollgate lab --scenario boundary_attack --limit 10 --period 1s --out /tmp/lab
  tollgate lab --list
  tollgate lab --target http://127.0.0.1:8000 --scenario boundary_attack --limit 20";

const SERVE_LONG_ABOUT: &str = "\
Run the HTTP rate limit server (the default command).

Listens on 127.0.0.1:8000 with the in-memory store and the seed-compatible preset
(per-client token_bucket 1 per 15s, global token_bucket 15 per 15s) unless told
otherwise. Configuration comes from a TOML file (--config or TOLLGATE_CONFIG), then
the environment (RATE_LIMITER_ALGORITHM, REDIS_HOST, REDIS_PORT, REDIS_DB, PORT,
TOLLGATE_LISTEN, TOLLGATE_STORE_URL, TOLLGATE_KEY_PREFIX, TOLLGATE_ADMIN_TOKEN), then
flags; each overrides the one before. Invalid configuration stops start-up with a
message naming the file, line and field (exit status 2).

Routes: POST /v1/check, POST /v1/peek, POST /v1/reset, GET /v1/policies,
GET /healthz, GET /readyz, GET /metrics, GET /openapi.json; anything else is the
protected API. SIGTERM or SIGINT stops accepting connections, answers the requests
in flight, and exits 0.";

const SIMULATE_LONG_ABOUT: &str = "\
Replay a CSV trace of requests through one policy on a manual clock.

Deterministic: the clock starts at time_ms 0 and moves to each row's time, so the
same trace and flags always give the same output.

Input (--input FILE, or stdin when --input is absent or `-`): CSV with the header
`time_ms,key,cost`, one request per row. time_ms is a whole number of milliseconds,
never smaller than the row before; key is any string (empty too; quote it if it holds
a comma); cost is a whole number >= 1.

Output (stdout): CSV with the header
`time_ms,key,cost,allowed,remaining,retry_after_ms,delay_ms`, one row per input row,
in order. allowed is true or false; durations are milliseconds rounded up;
retry_after_ms is empty when allowed or when the cost can never be admitted.

Bad input stops the run with a message naming the line or the flag, exit status 2.

Example:
  printf 'time_ms,key,cost\\n0,alice,1\\n0,alice,1\\n0,alice,1\\n' \\
    | tollgate simulate --algorithm gcra --limit 2 --period 1s";

/// Flags of `tollgate serve`. They override the configuration file and the
/// environment.
#[derive(Clone, Debug, Default, Args)]
pub struct ServeArgs {
    /// Port to listen on (default 8000; 0 picks a free one). Overrides PORT and
    /// server.listen's port.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,

    /// TOML configuration file (or TOLLGATE_CONFIG).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log as JSON lines instead of text (TOLLGATE_LOG sets the level, default info).
    #[arg(long)]
    pub log_json: bool,
}

/// Flags of `tollgate check-config`.
#[derive(Clone, Debug, Args)]
pub struct CheckConfigArgs {
    /// The TOML configuration file to check.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Flags of `tollgate simulate`.
#[derive(Clone, Debug, Args)]
pub struct SimulateArgs {
    /// fixed_window, sliding_window_log, sliding_window_counter, token_bucket, gcra or
    /// leaky_bucket.
    #[arg(long, value_name = "ALGORITHM")]
    pub algorithm: String,

    /// Units admitted per period: a whole number >= 1.
    #[arg(long, value_name = "L", allow_hyphen_values = true)]
    pub limit: String,

    /// The period: a whole number and a unit, e.g. 500ms, 15s, 1m, 1h.
    #[arg(long, value_name = "PERIOD", allow_hyphen_values = true)]
    pub period: String,

    /// Bucket capacity for token_bucket, gcra and leaky_bucket (default: the limit).
    /// The window algorithms ignore it.
    #[arg(long, value_name = "B", allow_hyphen_values = true)]
    pub burst: Option<String>,

    /// The trace to replay; `-` or absent reads stdin.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
}

/// Flags of `tollgate lab`.
#[derive(Clone, Debug, Args)]
pub struct LabArgs {
    /// The folder to write the report into (created if missing).
    #[arg(long, value_name = "DIR", default_value = "lab-report")]
    pub out: PathBuf,

    /// Run only this scenario (repeat for several); `--list` names them.
    #[arg(long, value_name = "NAME")]
    pub scenario: Vec<String>,

    /// List the scenarios and exit.
    #[arg(long)]
    pub list: bool,

    /// Units admitted per period by every algorithm: a whole number from 1 to 10000
    /// (default 100). The bucket family's burst is the same.
    #[arg(long, value_name = "L", allow_hyphen_values = true)]
    pub limit: Option<String>,

    /// The period: a whole number and a unit, from 100ms to 1d (default 10s).
    #[arg(long, value_name = "PERIOD", allow_hyphen_values = true)]
    pub period: Option<String>,

    /// Nodes in the fleet scenarios: 1 to 64 (default 4).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub nodes: Option<String>,

    /// Seed of the random traffic: a whole number (default 1).
    #[arg(long, value_name = "SEED", allow_hyphen_values = true)]
    pub seed: Option<String>,

    /// Leave out timings.json and the nanoseconds-per-decision column, the only
    /// figures that change from run to run.
    #[arg(long)]
    pub no_timings: bool,

    /// Live mode: send every request of the scenarios, in real time, to the tollgate
    /// server at this http:// URL (repeat for several, used round-robin) through
    /// POST /v1/check, instead of deciding in process. --period defaults to 1s then.
    #[arg(long, value_name = "URL")]
    pub target: Vec<String>,

    /// Live mode: the most requests in flight at once, 1 to 1024 (default 64).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub in_flight: Option<String>,
}
