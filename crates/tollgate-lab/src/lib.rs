//! The tollgate lab: every algorithm on the same traffic, in virtual time, with
//! charts and tables that show how they differ.
//!
//! A [`Scenario`] is deterministic traffic (virtual time, seeded random numbers);
//! [`run`] offers it to each of tollgate's six algorithms under one limit and
//! measures what each admitted; [`write()`] puts the result in a folder: `index.html`
//! (one page, charts inline, no scripts), `report.md`, one SVG chart per scenario,
//! `report.json` with every figure, and `timings.json` with the machine-dependent
//! ones.
//!
//! The lab never re-implements an algorithm: decisions come from a
//! [`tollgate::MemoryStore`] on a [`tollgate::ManualClock`], or from the pure
//! functions behind [`tollgate::State`] — or, in live mode ([`run_live`]), from
//! running tollgate servers: each request a real `POST /v1/check` sent in real
//! time, measured the same way and set beside the simulator's prediction for the
//! same traffic. A live report says so on every page and is not reproducible.
//!
//! ```
//! use tollgate::Algorithm;
//! use tollgate_lab::{LabConfig, Scenario};
//!
//! let lab = tollgate_lab::run(&LabConfig::default(), &[Scenario::BoundaryAttack]);
//! let attack = lab.report.scenario("boundary_attack").expect("was run");
//! let fixed = attack.result(Algorithm::FixedWindow).expect("every algorithm runs");
//! assert_eq!(fixed.burst_factor, 2.0); // 2L within a moment
//! let log = attack.result(Algorithm::SlidingWindowLog).expect("every algorithm runs");
//! assert_eq!(log.burst_factor, 1.0);
//! ```

mod chart;
mod config;
mod live;
mod measure;
mod render;
mod report;
mod rng;
mod scenario;
mod sim;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use tollgate::{Algorithm, Policy};

pub use config::{
    ConfigError, LabConfig, MAX_LIMIT, MAX_NODES, MAX_PERIOD, MIN_PERIOD, human_duration,
};
pub use live::{
    Answer, DEFAULT_IN_FLIGHT, Failure, LiveError, LiveOptions, MAX_BEHIND, MAX_IN_FLIGHT,
    MAX_LIVE_DURATION, MAX_LIVE_REQUESTS, Record, Target, TargetError, live_traffic, runs_live,
    size as live_size,
};
pub use measure::max_in_window;
pub use render::highlights;
pub use report::{
    AlgorithmResult, ConfigReport, FailureCount, GroupResult, LiveReport, LiveScenario, Report,
    ScenarioResult, Timing, Timings,
};
pub use rng::SplitMix64;
pub use scenario::{Arrival, HOG, Mode, Scenario, Traffic};
pub use sim::{Outcome, Run};

/// A finished lab run.
#[derive(Clone, Debug)]
pub struct Lab {
    /// Every reproducible figure.
    pub report: Report,
    /// How long the decisions took here and now.
    pub timings: Timings,
    /// Decisions in which a store disagreed with the pure functions, over the whole
    /// run (0 unless tollgate has a bug).
    pub disagreements: u64,
    /// Live mode only: every request sent and its answer, in the order sent
    /// ([`write()`] puts them in `requests.csv`); empty for a simulated run.
    pub requests: Vec<Record>,
}

/// The policy every algorithm runs under: `L` per `W`, burst `L`.
pub fn policy(config: &LabConfig, algorithm: Algorithm) -> Policy {
    match Policy::new(algorithm, config.limit(), config.period()) {
        Ok(policy) => policy,
        // LabConfig's ranges (limit 1..=10000, period 100ms..=1d) are all valid.
        Err(e) => unreachable!("a LabConfig makes a valid policy: {e}"),
    }
}

/// Runs `traffic` through `policy`: one [`Outcome`] per arrival, and what the run
/// measured on the side (state bytes, disagreements with the pure functions, time).
pub fn simulate(traffic: &Traffic, policy: &Policy) -> Run {
    sim::run(traffic, policy)
}

/// Runs `scenarios` (in the order of [`Scenario::ALL`], each once) for every
/// algorithm under `config`.
pub fn run(config: &LabConfig, scenarios: &[Scenario]) -> Lab {
    let mut results = Vec::new();
    let mut timings = Timings {
        note: "wall-clock time per decision on the machine that ran the lab, in this run: \
               machine-dependent, not reproducible"
            .to_owned(),
        entries: Vec::new(),
    };
    let mut disagreements = 0;
    for scenario in Scenario::ALL {
        if !scenarios.contains(&scenario) {
            continue;
        }
        let traffic = scenario.traffic(config);
        let runs: Vec<Run> = Algorithm::ALL
            .iter()
            .map(|&a| sim::run(&traffic, &policy(config, a)))
            .collect();
        let bucket = config.bucket().as_u64();
        let buckets = measure::buckets_needed(&traffic, &runs, bucket);
        let mut algorithm_results = Vec::new();
        for (&algorithm, run) in Algorithm::ALL.iter().zip(&runs) {
            disagreements += run.disagreements;
            let decisions = traffic.arrivals.len() as u64;
            timings.entries.push(Timing {
                scenario: scenario.name().to_owned(),
                algorithm: algorithm.name().to_owned(),
                decisions,
                ns_per_decision: (run.elapsed_ns as f64 / decisions.max(1) as f64 * 10.0).round()
                    / 10.0,
            });
            algorithm_results.push(measure::measure(config, &traffic, algorithm, run, buckets));
        }
        results.push(ScenarioResult {
            name: scenario.name().to_owned(),
            title: scenario.title().to_owned(),
            description: scenario.description(config),
            duration_ns: traffic.duration.as_u64(),
            offered: traffic.arrivals.len() as u64,
            first_arrival_ns: traffic.arrivals.first().map_or(0, |a| a.at.as_u64()),
            chart: format!("{}.svg", scenario.name()),
            charted: match traffic.charted {
                None => "all clients".to_owned(),
                Some(HOG) => "the hog (client 9)".to_owned(),
                Some(c) => format!("client {c}"),
            },
            offered_series: measure::offered_series(&traffic, bucket, buckets),
            results: algorithm_results,
            live: None,
        });
    }
    let report = Report {
        lab: "tollgate lab".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        config: config_report(config),
        scenarios: results,
        live: None,
    };
    Lab {
        report,
        timings,
        disagreements,
        requests: Vec::new(),
    }
}

/// The configuration as the report states it.
fn config_report(config: &LabConfig) -> ConfigReport {
    let l = config.limit();
    ConfigReport {
        limit: l,
        period_ns: config.period().as_u64(),
        period: human_duration(config.period()),
        burst: l,
        emission_interval_ns: config.period().as_u64().div_ceil(u64::from(l)),
        nodes: config.nodes(),
        seed: config.seed(),
        bucket_ns: config.bucket().as_u64(),
    }
}

/// Runs `scenarios` live against running tollgate servers: every request a real
/// `POST /v1/check`, sent in real time (see the `live` module's rules: time, keys,
/// figures). The report has the same shape as [`run`]'s, with
/// [`Report::live`] and each [`ScenarioResult::live`] set, and [`Lab::requests`]
/// holds every request.
pub fn run_live(
    config: &LabConfig,
    scenarios: &[Scenario],
    options: &LiveOptions,
) -> Result<Lab, LiveError> {
    live::run(config, scenarios, options)
}

/// What [`write()`] puts in the folder besides the figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOptions {
    /// Write `timings.json` and the nanoseconds-per-decision column. Off, every
    /// file of the folder is byte-identical from run to run.
    pub timings: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions { timings: true }
    }
}

/// Why writing the report failed.
#[derive(Debug)]
pub enum WriteError {
    /// A file or the folder could not be written.
    Io {
        /// The path that failed.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// A chart could not be drawn.
    Chart {
        /// The scenario whose chart failed.
        scenario: String,
        /// What went wrong.
        message: String,
    },
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Io { path, source } => {
                let text = source.to_string();
                let mut chars = text.chars();
                let lower: String = chars
                    .next()
                    .map(|c| c.to_lowercase().chain(chars).collect())
                    .unwrap_or_default();
                write!(f, "cannot write {:?}: {lower}", path.display().to_string())
            }
            WriteError::Chart { scenario, message } => {
                write!(f, "cannot draw the chart of {scenario:?}: {message}")
            }
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WriteError::Io { source, .. } => Some(source),
            WriteError::Chart { .. } => None,
        }
    }
}

/// Writes `lab` into the folder `out` (created if missing): `index.html`,
/// `report.md`, `report.json`, one `<scenario>.svg` per scenario and, with
/// [`WriteOptions::timings`], `timings.json`; a live run adds `requests.csv`, one
/// line per request sent. Returns the files written.
pub fn write(lab: &Lab, out: &Path, options: WriteOptions) -> Result<Vec<PathBuf>, WriteError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteError::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let timings = options.timings.then_some(&lab.timings);
    let mut files: Vec<(String, String)> = Vec::new();
    let mut charts = Vec::new();
    for scenario in &lab.report.scenarios {
        let svg =
            chart::draw(&lab.report.config, scenario).map_err(|message| WriteError::Chart {
                scenario: scenario.name.clone(),
                message,
            })?;
        charts.push(svg.clone());
        files.push((scenario.chart.clone(), svg));
    }
    let json = serde_json::to_string_pretty(&lab.report).map_err(|e| WriteError::Io {
        path: out.join("report.json"),
        source: io::Error::other(e),
    })?;
    files.push(("report.json".to_owned(), json + "\n"));
    if let Some(t) = timings {
        let json = serde_json::to_string_pretty(t).map_err(|e| WriteError::Io {
            path: out.join("timings.json"),
            source: io::Error::other(e),
        })?;
        files.push(("timings.json".to_owned(), json + "\n"));
    }
    if let Some(live) = &lab.report.live {
        files.push((
            "requests.csv".to_owned(),
            live::csv(&lab.requests, &live.targets),
        ));
    }
    files.push((
        "report.md".to_owned(),
        render::markdown(&lab.report, timings),
    ));
    files.push((
        "index.html".to_owned(),
        render::html(&lab.report, timings, &charts),
    ));
    let mut written = Vec::new();
    for (name, text) in files {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(io_err(&path))?;
        written.push(path);
    }
    Ok(written)
}
