//! Live mode: a scenario's requests sent, in real time, to running tollgate servers
//! through `POST /v1/check`, and the answers measured as the simulator's are.
//!
//! - **Time.** A live run is not compressed: it runs the scenario at the configured
//!   period `W` in wall-clock time (the command line defaults to `W = 1s` in live
//!   mode, so a scenario of 3 to 30 periods takes 3 to 30 seconds). Each scenario's
//!   time 0 is the next multiple of `W` in Unix time on the lab's clock, which is
//!   where the server's fixed windows start when the two clocks agree (one host,
//!   or hosts kept in step by NTP to well under `W / 10`).
//! - **Requests.** Each arrival becomes one request per algorithm, all six sent
//!   together at the arrival's instant, with the inline policy (the algorithm, `L`,
//!   `W`, burst `L`) and the key `lab-<tag>-<scenario>-c<client>`; `<tag>` is unique
//!   to the run (milliseconds since the Unix epoch and the process id), so runs
//!   never share state. `fleet_naive`'s keys add `-n<node>`: each node counts apart,
//!   as N servers with their own memory would. Requests go round-robin over the
//!   targets (a fleet scenario's node `n` to target `n mod targets`).
//! - **Figures.** Measured on the instants the requests were sent (from the
//!   scenario's time 0) and the answers (`allowed`, `delay_ms`); failed requests are
//!   offered and not admitted, and counted apart. Beside them, the simulator's
//!   prediction for the same traffic. `state_bytes_per_key` is the prediction's (a
//!   server's memory is not visible over HTTP); the timings are round trips.
//! - **Bounds.** At most [`MAX_LIVE_REQUESTS`] requests and [`MAX_LIVE_DURATION`]
//!   per run, checked before anything is sent; a bounded number in flight; a
//!   request that cannot be sent within [`MAX_BEHIND`] of its instant is counted
//!   as not sent, and one unanswered after 5 s as a timeout, so a stalled server
//!   cannot stretch a run. Every target must answer `GET /healthz` first.
//!
//! `race_nonatomic` does not run live: the server only decides atomically, so the
//! read-then-write pattern has nothing to replay against. `boundary_attack` sends
//! its first half `W / 10` before the window edge instead of `W / 10000`, so that
//! the time a batch takes to cross the network cannot carry it over the edge.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tollgate::{Algorithm, Nanos};

use crate::config::{LabConfig, human_duration};
use crate::report::{
    AlgorithmResult, FailureCount, LiveReport, LiveScenario, Report, ScenarioResult, Timing,
    Timings,
};
use crate::scenario::{Arrival, HOG, Mode, Scenario, Traffic};
use crate::sim::{self, Outcome, Run};
use crate::{Lab, measure, policy};

/// The most requests a live run sends (every scenario, every algorithm): a bound
/// on what one command can ask of a server.
pub const MAX_LIVE_REQUESTS: u64 = 500_000;
/// The longest a live run may last, scenario durations added up.
pub const MAX_LIVE_DURATION: Nanos = Nanos::from_secs(600);
/// Requests in flight at once unless told otherwise.
pub const DEFAULT_IN_FLIGHT: usize = 64;
/// The most requests in flight the lab allows.
pub const MAX_IN_FLIGHT: usize = 1024;
/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The furthest behind its instant a request may be sent; later ones are counted
/// as [`Failure::Late`] and not sent, so a server that stops answering cannot
/// stretch a run beyond its scenarios' durations by more than this and a timeout.
pub const MAX_BEHIND: Duration = Duration::from_secs(2);
/// How long the first contact with each target may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);
/// The least time between deciding a scenario's start and that start.
const LEAD: Duration = Duration::from_millis(50);

/// A server to send the requests to: an `http://` URL.
#[derive(Clone, Debug)]
pub struct Target {
    shown: String,
    check: reqwest::Url,
    health: reqwest::Url,
}

/// Why a `--target` is not a URL the lab can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetError {
    /// Not a URL at all.
    Invalid {
        /// What was given.
        text: String,
        /// What the URL parser said.
        message: String,
    },
    /// A URL, but not `http://` (the lab speaks plain HTTP only).
    Scheme {
        /// What was given.
        text: String,
        /// Its scheme.
        scheme: String,
    },
    /// A URL with a query or a fragment, which the lab could not append a path to.
    Extra {
        /// What was given.
        text: String,
    },
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::Invalid { text, message } => {
                write!(f, "invalid URL {text:?}: {message}")
            }
            TargetError::Scheme { text, scheme } => write!(
                f,
                "unsupported URL {text:?}: the lab speaks plain HTTP, not {scheme:?}"
            ),
            TargetError::Extra { text } => write!(
                f,
                "unsupported URL {text:?}: expected a server's base URL, without a query or fragment"
            ),
        }
    }
}

impl std::error::Error for TargetError {}

impl Target {
    /// The server at `text` (`http://HOST:PORT`, optionally with a base path).
    pub fn parse(text: &str) -> Result<Target, TargetError> {
        let url = reqwest::Url::parse(text.trim()).map_err(|e| TargetError::Invalid {
            text: text.to_owned(),
            message: e.to_string(),
        })?;
        if url.scheme() != "http" {
            return Err(TargetError::Scheme {
                text: text.to_owned(),
                scheme: url.scheme().to_owned(),
            });
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(TargetError::Invalid {
                text: text.to_owned(),
                message: "empty host".to_owned(),
            });
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(TargetError::Extra {
                text: text.to_owned(),
            });
        }
        let base = url.as_str().trim_end_matches('/').to_owned();
        let join = |path: &str| {
            reqwest::Url::parse(&format!("{base}{path}")).map_err(|e| TargetError::Invalid {
                text: text.to_owned(),
                message: e.to_string(),
            })
        };
        Ok(Target {
            check: join("/v1/check")?,
            health: join("/healthz")?,
            shown: base,
        })
    }

    /// The base URL, as the report shows it.
    pub fn as_str(&self) -> &str {
        &self.shown
    }
}

/// Where and how to send a live run's requests.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    /// The servers, used round-robin; at least one.
    pub targets: Vec<Target>,
    /// The most requests in flight at once (1 to [`MAX_IN_FLIGHT`]).
    pub in_flight: usize,
}

/// Why a live run could not be made.
#[derive(Debug)]
pub enum LiveError {
    /// No target was given.
    NoTargets,
    /// The in-flight bound is 0 or above [`MAX_IN_FLIGHT`].
    InFlight(usize),
    /// The scenario cannot be replayed against a server (and no other was asked
    /// for).
    NotLive(Scenario),
    /// The run would send more than [`MAX_LIVE_REQUESTS`] requests or last longer
    /// than [`MAX_LIVE_DURATION`].
    TooBig {
        /// Requests it would send.
        requests: u64,
        /// How long it would last.
        duration: Nanos,
    },
    /// A target did not answer `GET /healthz` before the run.
    Unreachable {
        /// The target.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The async runtime could not start.
    Runtime(std::io::Error),
}

impl LiveError {
    /// True when the request itself is wrong (the command line's exit status 2);
    /// false when the world is (a server, the runtime: exit status 1).
    pub fn is_caller_error(&self) -> bool {
        matches!(
            self,
            LiveError::NoTargets
                | LiveError::InFlight(_)
                | LiveError::NotLive(_)
                | LiveError::TooBig { .. }
        )
    }
}

impl fmt::Display for LiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LiveError::NoTargets => write!(f, "a live run needs at least one target"),
            LiveError::InFlight(n) => write!(
                f,
                "{n} requests in flight is out of range: expected 1 to {MAX_IN_FLIGHT}"
            ),
            LiveError::NotLive(s) => write!(
                f,
                "{} cannot run live: the server decides atomically, so there is no \
                 read-then-write to replay (the simulated lab shows it)",
                s.name()
            ),
            LiveError::TooBig { requests, duration } => write!(
                f,
                "the live run would send {requests} requests over {:.0} s: at most {} \
                 requests and {} s are allowed",
                duration.as_u64() as f64 / 1e9,
                MAX_LIVE_REQUESTS,
                MAX_LIVE_DURATION.as_u64() / 1_000_000_000
            ),
            LiveError::Unreachable { url, message } => {
                write!(f, "cannot reach the tollgate server at {url}: {message}")
            }
            LiveError::Runtime(e) => write!(f, "cannot start the async runtime: {e}"),
        }
    }
}

impl std::error::Error for LiveError {}

/// True when `scenario` can be replayed against a server (all but
/// `race_nonatomic`).
pub const fn runs_live(scenario: Scenario) -> bool {
    !matches!(scenario, Scenario::RaceNonAtomic)
}

/// The traffic a live run sends for `scenario`: the simulated lab's, except that
/// `boundary_attack`'s first half comes `W / 10` before the edge.
pub fn live_traffic(scenario: Scenario, config: &LabConfig) -> Traffic {
    let mut traffic = scenario.traffic(config);
    if scenario == Scenario::BoundaryAttack {
        let w = config.period().as_u64();
        let edge = Nanos::new(2 * w);
        let before = Nanos::new(2 * w - w / 10);
        for a in &mut traffic.arrivals {
            if a.at < edge {
                a.at = before;
            }
        }
    }
    traffic
}

/// One request of a live run and its answer.
#[derive(Clone, Debug)]
pub struct Record {
    /// The scenario's name.
    pub scenario: &'static str,
    /// The algorithm of the inline policy.
    pub algorithm: Algorithm,
    /// The key sent.
    pub key: String,
    /// The target it went to (an index into [`LiveOptions::targets`]).
    pub target: usize,
    /// When it was due, from the scenario's time 0, nanoseconds.
    pub scheduled_ns: u64,
    /// When it was sent, from the scenario's time 0, nanoseconds.
    pub sent_ns: u64,
    /// When its answer was read (or it failed), from the scenario's time 0.
    pub received_ns: u64,
    /// The answer.
    pub answer: Answer,
}

/// What came back for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A decision: 200 or 429 with its body.
    Decided {
        /// `allowed`.
        allowed: bool,
        /// `delay_ms`, in nanoseconds.
        delay: Nanos,
    },
    /// No decision.
    Failed(Failure),
}

/// How a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be made.
    Connect,
    /// No answer within the timeout.
    Timeout,
    /// A status other than 200 or 429.
    Status(u16),
    /// A 200 or 429 whose body is not a decision.
    Body,
    /// Anything else (the connection dropped mid-request, ...).
    Other,
    /// Never sent: no slot in flight came free within [`MAX_BEHIND`] of its
    /// instant (the servers answer too slowly or not at all).
    Late,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect => write!(f, "connect"),
            Failure::Timeout => write!(f, "timeout"),
            Failure::Status(s) => write!(f, "http-{s}"),
            Failure::Body => write!(f, "bad-body"),
            Failure::Other => write!(f, "other"),
            Failure::Late => write!(f, "not-sent-late"),
        }
    }
}

/// The requests `scenarios` would send live under `config`, and how long the run
/// lasts at most (each scenario's duration and a wait for a window edge).
pub fn size(config: &LabConfig, scenarios: &[Scenario]) -> (u64, Nanos) {
    let mut requests = 0u64;
    let mut duration = Nanos::ZERO;
    for &s in scenarios.iter().filter(|&&s| runs_live(s)) {
        let t = live_traffic(s, config);
        requests += t.arrivals.len() as u64 * Algorithm::ALL.len() as u64;
        // Each scenario waits for a window edge first: up to one period.
        duration = duration
            .saturating_add(t.duration)
            .saturating_add(config.period());
    }
    (requests, duration)
}

/// Runs `scenarios` live (in the order of [`Scenario::ALL`]) against
/// `options.targets`; those that cannot run live are skipped, and listed in
/// [`LiveReport::skipped`]. Fails before sending anything when the run is too big,
/// none of the scenarios can run live, or a target does not answer; afterwards, a
/// failed request is counted, never fatal.
pub fn run(
    config: &LabConfig,
    scenarios: &[Scenario],
    options: &LiveOptions,
) -> Result<Lab, LiveError> {
    if options.targets.is_empty() {
        return Err(LiveError::NoTargets);
    }
    if options.in_flight == 0 || options.in_flight > MAX_IN_FLIGHT {
        return Err(LiveError::InFlight(options.in_flight));
    }
    if let Some(&s) = scenarios
        .first()
        .filter(|_| !scenarios.iter().any(|&s| runs_live(s)))
    {
        return Err(LiveError::NotLive(s));
    }
    let (requests, duration) = size(config, scenarios);
    if requests > MAX_LIVE_REQUESTS || duration > MAX_LIVE_DURATION {
        return Err(LiveError::TooBig { requests, duration });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(LiveError::Runtime)?;
    runtime.block_on(run_async(config, scenarios, options))
}

fn http_client(in_flight: usize) -> Result<reqwest::Client, LiveError> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(in_flight)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| LiveError::Runtime(std::io::Error::other(innermost(&e))))
}

/// The innermost cause of `e`, lowercase: "connection refused (os error 111)"
/// rather than reqwest's "error sending request for url (...)".
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_lowercase().chain(chars).collect())
        .unwrap_or_default()
}

async fn health(client: &reqwest::Client, target: &Target) -> Result<(), LiveError> {
    let unreachable = |message: String| LiveError::Unreachable {
        url: target.shown.clone(),
        message,
    };
    let response = client
        .get(target.health.clone())
        .timeout(HEALTH_TIMEOUT)
        .send()
        .await
        .map_err(|e| unreachable(innermost(&e)))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(unreachable(format!(
            "GET /healthz answered {status}: is it a tollgate server?"
        )))
    }
}

/// Opens connections to every target before the first scenario (as many as may be
/// in flight, up to 32 each), so the first requests do not pay for them.
async fn warm(client: &reqwest::Client, options: &LiveOptions) {
    let mut calls = Vec::new();
    for target in &options.targets {
        for _ in 0..options.in_flight.min(32) {
            let request = client.get(target.health.clone()).timeout(HEALTH_TIMEOUT);
            calls.push(tokio::spawn(async move {
                // A failure here shows up again, counted, in the run itself.
                if let Ok(response) = request.send().await {
                    let _ = response.bytes().await;
                }
            }));
        }
    }
    for call in calls {
        let _ = call.await;
    }
}

async fn run_async(
    config: &LabConfig,
    scenarios: &[Scenario],
    options: &LiveOptions,
) -> Result<Lab, LiveError> {
    let client = http_client(options.in_flight)?;
    for target in &options.targets {
        health(&client, target).await?;
    }
    warm(&client, options).await;
    let wall = std::time::Instant::now();
    let unix_ms = unix_now().as_u64() / 1_000_000;
    let tag = format!("{unix_ms}-{}", std::process::id());
    let semaphore = Arc::new(Semaphore::new(options.in_flight));
    let mut results = Vec::new();
    let mut timings = Timings {
        note: "live: the mean round trip of POST /v1/check from the lab to the server and \
               back, network included, in this run: machine-dependent, not reproducible"
            .to_owned(),
        entries: Vec::new(),
    };
    let mut all_records = Vec::new();
    for scenario in Scenario::ALL {
        if !scenarios.contains(&scenario) || !runs_live(scenario) {
            continue;
        }
        let traffic = live_traffic(scenario, config);
        let sent = Sender {
            client: &client,
            targets: &options.targets,
            semaphore: &semaphore,
            tag: &tag,
            config,
        };
        let (records, start_unix_ns) = sent.scenario(scenario, &traffic).await;
        let result = measure_scenario(
            config,
            scenario,
            &traffic,
            &records,
            start_unix_ns,
            &mut timings,
        );
        results.push(result);
        all_records.extend(records);
    }
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for r in &all_records {
        if let Answer::Failed(f) = r.answer {
            *failures.entry(f.to_string()).or_default() += 1;
        }
    }
    let skipped = Scenario::ALL
        .iter()
        .filter(|s| !runs_live(**s) && scenarios.contains(s))
        .map(|s| {
            format!(
                "{}: the server decides atomically, so the non-atomic pattern has nothing \
                 to replay against (the simulated lab shows it)",
                s.name()
            )
        })
        .collect();
    let report = Report {
        lab: "tollgate lab (live)".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        config: crate::config_report(config),
        scenarios: results,
        live: Some(LiveReport {
            note: "live: every request was a real POST /v1/check, sent in real time; the \
                   figures depend on the network, the machines and the moment, and are \
                   not reproducible"
                .to_owned(),
            targets: options
                .targets
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect(),
            tag,
            in_flight: options.in_flight,
            requests: all_records.len() as u64,
            failed: failures.values().sum(),
            failures: failures
                .into_iter()
                .map(|(kind, count)| FailureCount { kind, count })
                .collect(),
            skipped,
            wall_seconds: (wall.elapsed().as_secs_f64() * 100.0).round() / 100.0,
        }),
    };
    Ok(Lab {
        report,
        timings,
        disagreements: 0,
        requests: all_records,
    })
}

fn unix_now() -> Nanos {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Nanos::new(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
}

/// What every request of a run shares.
struct Sender<'a> {
    client: &'a reqwest::Client,
    targets: &'a [Target],
    semaphore: &'a Arc<Semaphore>,
    tag: &'a str,
    config: &'a LabConfig,
}

/// What one spawned request brings back.
struct Sent {
    sent: Duration,
    received: Duration,
    answer: Answer,
}

#[derive(Deserialize)]
struct Wire {
    allowed: bool,
    #[serde(default)]
    delay_ms: u64,
}

impl Sender<'_> {
    /// Sends `traffic` for every algorithm, from the next multiple of `W` in Unix
    /// time; returns the records (arrival by arrival, algorithms in the order of
    /// [`Algorithm::ALL`]) and that start.
    async fn scenario(&self, scenario: Scenario, traffic: &Traffic) -> (Vec<Record>, u64) {
        let w = self.config.period().as_u64();
        let now_unix = unix_now().as_u64();
        let now = Instant::now();
        let lead = LEAD.as_nanos() as u64;
        let start_unix = (now_unix + lead).div_ceil(w).saturating_mul(w);
        let start = now + Duration::from_nanos(start_unix - now_unix);
        let period = human_duration(self.config.period());
        let limit = self.config.limit();
        let mut jobs = Vec::with_capacity(traffic.arrivals.len() * Algorithm::ALL.len());
        let mut meta = Vec::with_capacity(jobs.capacity());
        let fleet = matches!(scenario, Scenario::FleetNaive | Scenario::FleetShared);
        for (i, a) in traffic.arrivals.iter().enumerate() {
            tokio::time::sleep_until(start + Duration::from_nanos(a.at.as_u64())).await;
            let key = key(self.tag, scenario, traffic, a);
            // Every algorithm's request for this arrival goes to the same target, so
            // each key's requests take turns over the targets.
            let target = if fleet { a.node as usize } else { i } % self.targets.len();
            for &algorithm in &Algorithm::ALL {
                let body = serde_json::json!({
                    "key": key,
                    "algorithm": algorithm.name(),
                    "limit": limit,
                    "period": period,
                    "burst": limit,
                })
                .to_string();
                let due = start + Duration::from_nanos(a.at.as_u64());
                meta.push((algorithm, key.clone(), target, a.at.as_u64()));
                let permit = tokio::time::timeout_at(
                    due + MAX_BEHIND,
                    Arc::clone(self.semaphore).acquire_owned(),
                )
                .await;
                let Ok(permit) = permit else {
                    let now = Instant::now().saturating_duration_since(start);
                    jobs.push(tokio::spawn(async move {
                        Sent {
                            sent: now,
                            received: now,
                            answer: Answer::Failed(Failure::Late),
                        }
                    }));
                    continue;
                };
                let client = self.client.clone();
                let url = self.targets[target].check.clone();
                jobs.push(tokio::spawn(async move {
                    // Held until the answer is read; the semaphore is never closed.
                    let _permit = permit;
                    let sent = Instant::now().saturating_duration_since(start);
                    let answer = send(&client, url, body).await;
                    let received = Instant::now().saturating_duration_since(start);
                    Sent {
                        sent,
                        received,
                        answer,
                    }
                }));
            }
        }
        let mut records = Vec::with_capacity(jobs.len());
        for (job, (algorithm, key, target, scheduled_ns)) in jobs.into_iter().zip(meta) {
            let sent = job.await.unwrap_or(Sent {
                sent: Duration::from_nanos(scheduled_ns),
                received: Duration::from_nanos(scheduled_ns),
                answer: Answer::Failed(Failure::Other),
            });
            records.push(Record {
                scenario: scenario.name(),
                algorithm,
                key,
                target,
                scheduled_ns,
                sent_ns: nanos(sent.sent),
                received_ns: nanos(sent.received),
                answer: sent.answer,
            });
        }
        (records, start_unix)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The key of `a`'s client in this run.
fn key(tag: &str, scenario: Scenario, traffic: &Traffic, a: &Arrival) -> String {
    let mut key = format!("lab-{tag}-{}-c{}", scenario.name(), a.client);
    if traffic.mode == Mode::PerNode {
        key.push_str(&format!("-n{}", a.node));
    }
    key
}

async fn send(client: &reqwest::Client, url: reqwest::Url, body: String) -> Answer {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let response = match response {
        Ok(r) => r,
        Err(e) => return Answer::Failed(failure(&e)),
    };
    let status = response.status().as_u16();
    if status != 200 && status != 429 {
        return Answer::Failed(Failure::Status(status));
    }
    let bytes = match response.bytes().await {
        Ok(b) => b,
        Err(e) => return Answer::Failed(failure(&e)),
    };
    match serde_json::from_slice::<Wire>(&bytes) {
        Ok(w) => Answer::Decided {
            allowed: w.allowed,
            delay: Nanos::from_millis(w.delay_ms),
        },
        Err(_) => Answer::Failed(Failure::Body),
    }
}

fn failure(e: &reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::Timeout
    } else if e.is_connect() {
        Failure::Connect
    } else {
        Failure::Other
    }
}

/// The nearest-rank `q`-quantile of `sorted`; 0 when empty.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The scenario's figures from its records: per algorithm, the traffic as it was
/// sent and the answers; beside them, the simulator's prediction for the traffic
/// as scheduled.
fn measure_scenario(
    config: &LabConfig,
    scenario: Scenario,
    traffic: &Traffic,
    records: &[Record],
    start_unix_ns: u64,
    timings: &mut Timings,
) -> ScenarioResult {
    let n = Algorithm::ALL.len();
    let bucket = config.bucket().as_u64();
    let predicted_runs: Vec<Run> = Algorithm::ALL
        .iter()
        .map(|&a| sim::run(traffic, &policy(config, a)))
        .collect();
    // Per algorithm: the traffic as sent, and the answers as outcomes.
    let mut sent_traffic = Vec::with_capacity(n);
    let mut live_runs = Vec::with_capacity(n);
    for (k, predicted) in predicted_runs.iter().enumerate() {
        let mut t = traffic.clone();
        let mut outcomes = Vec::with_capacity(t.arrivals.len());
        for (i, a) in t.arrivals.iter_mut().enumerate() {
            let Some(r) = records.get(i * n + k) else {
                outcomes.push(Outcome {
                    allowed: false,
                    delay: Nanos::ZERO,
                });
                continue;
            };
            a.at = Nanos::new(r.sent_ns);
            outcomes.push(match r.answer {
                Answer::Decided { allowed, delay } => Outcome { allowed, delay },
                Answer::Failed(_) => Outcome {
                    allowed: false,
                    delay: Nanos::ZERO,
                },
            });
        }
        sent_traffic.push(t);
        live_runs.push(Run {
            outcomes,
            peak_state_bytes: predicted.peak_state_bytes,
            disagreements: 0,
            elapsed_ns: 0,
        });
    }
    let mut buckets = measure::buckets_needed(traffic, &predicted_runs, bucket);
    for (t, run) in sent_traffic.iter().zip(&live_runs) {
        buckets = buckets.max(measure::buckets_needed(
            t,
            std::slice::from_ref(run),
            bucket,
        ));
    }
    let mut results = Vec::with_capacity(n);
    let mut predicted = Vec::with_capacity(n);
    for (k, &algorithm) in Algorithm::ALL.iter().enumerate() {
        predicted.push(measure::measure(
            config,
            traffic,
            algorithm,
            &predicted_runs[k],
            buckets,
        ));
        let mut result: AlgorithmResult =
            measure::measure(config, &sent_traffic[k], algorithm, &live_runs[k], buckets);
        let mine = || records.iter().skip(k).step_by(n);
        let failed = mine()
            .filter(|r| matches!(r.answer, Answer::Failed(_)))
            .count() as u64;
        result.failed = Some(failed);
        // The first answered denial, from the first request sent (a failed
        // request is not a denial).
        let origin = mine().map(|r| r.sent_ns).min().unwrap_or(0);
        result.first_denial_ns = mine()
            .filter(|r| matches!(r.answer, Answer::Decided { allowed: false, .. }))
            .map(|r| r.sent_ns - origin.min(r.sent_ns))
            .min();
        let trips: Vec<u64> = mine()
            .filter(|r| matches!(r.answer, Answer::Decided { .. }))
            .map(|r| r.received_ns.saturating_sub(r.sent_ns))
            .collect();
        let sum: u128 = trips.iter().map(|&t| u128::from(t)).sum();
        timings.entries.push(Timing {
            scenario: scenario.name().to_owned(),
            algorithm: algorithm.name().to_owned(),
            decisions: trips.len() as u64,
            ns_per_decision: if trips.is_empty() {
                0.0
            } else {
                (sum as f64 / trips.len() as f64).round()
            },
        });
        results.push(result);
    }
    let mut trips: Vec<u64> = records
        .iter()
        .map(|r| r.received_ns.saturating_sub(r.sent_ns))
        .collect();
    trips.sort_unstable();
    let description = if scenario == Scenario::BoundaryAttack {
        format!(
            "{} Live: the first half is sent W/10 before the edge rather than W/10000, so \
             that the time a batch takes to cross the network cannot carry it over the edge.",
            scenario.description(config)
        )
    } else {
        scenario.description(config)
    };
    ScenarioResult {
        name: scenario.name().to_owned(),
        title: format!("{} (live)", scenario.title()),
        description,
        duration_ns: traffic.duration.as_u64(),
        offered: traffic.arrivals.len() as u64,
        first_arrival_ns: traffic.arrivals.first().map_or(0, |a| a.at.as_u64()),
        chart: format!("{}.svg", scenario.name()),
        charted: match traffic.charted {
            None => "all clients".to_owned(),
            Some(HOG) => "the hog (client 9)".to_owned(),
            Some(c) => format!("client {c}"),
        },
        offered_series: measure::offered_series(traffic, bucket, buckets),
        results,
        live: Some(LiveScenario {
            predicted,
            failed: records
                .iter()
                .filter(|r| matches!(r.answer, Answer::Failed(_)))
                .count() as u64,
            max_round_trip_ns: trips.last().copied().unwrap_or(0),
            p99_round_trip_ns: quantile(&trips, 0.99),
            max_lateness_ns: records
                .iter()
                .map(|r| r.sent_ns.saturating_sub(r.scheduled_ns))
                .max()
                .unwrap_or(0),
            start_unix_ns,
        }),
    }
}

/// `requests.csv`: one line per request, in the order sent.
pub fn csv(records: &[Record], targets: &[String]) -> String {
    let mut out = String::from(
        "scenario,algorithm,key,target,scheduled_ns,sent_ns,received_ns,outcome,allowed,delay_ms\n",
    );
    for r in records {
        let (outcome, allowed, delay) = match r.answer {
            Answer::Decided { allowed, delay } => (
                "decided".to_owned(),
                allowed.to_string(),
                delay.as_millis_ceil().to_string(),
            ),
            Answer::Failed(f) => (f.to_string(), String::new(), String::new()),
        };
        let target = targets.get(r.target).map_or("", String::as_str);
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            r.scenario,
            r.algorithm.name(),
            r.key,
            target,
            r.scheduled_ns,
            r.sent_ns,
            r.received_ns,
            outcome,
            allowed,
            delay
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("http://127.0.0.1:8000/").expect("valid");
        assert_eq!(t.as_str(), "http://127.0.0.1:8000");
        assert_eq!(t.check.as_str(), "http://127.0.0.1:8000/v1/check");
        let t = Target::parse("http://h:1/base").expect("valid");
        assert_eq!(t.health.as_str(), "http://h:1/base/healthz");
        assert!(matches!(
            Target::parse("not a url"),
            Err(TargetError::Invalid { .. })
        ));
        assert!(matches!(
            Target::parse("https://h:1"),
            Err(TargetError::Scheme { .. })
        ));
        assert!(matches!(
            Target::parse("http://h:1/?a=b"),
            Err(TargetError::Extra { .. })
        ));
        assert!(matches!(
            Target::parse("http://h:99999"),
            Err(TargetError::Invalid { .. })
        ));
    }

    #[test]
    fn the_live_boundary_attack_keeps_its_halves_apart_by_a_tenth_of_a_period() {
        let config = LabConfig::new(10, Nanos::from_secs(1), 4, 1).expect("valid");
        let t = live_traffic(Scenario::BoundaryAttack, &config);
        let before = t.arrivals.iter().filter(|a| a.at.as_u64() == 1_900_000_000);
        assert_eq!(before.count(), 10);
        let at_edge = t.arrivals.iter().filter(|a| a.at.as_u64() == 2_000_000_000);
        assert_eq!(at_edge.count(), 10);
    }

    /// Records for `traffic` as if every request were sent on time and answered
    /// 1 ms later with `answer(arrival, algorithm)`.
    fn records(traffic: &Traffic, answer: impl Fn(usize, usize) -> Answer) -> Vec<Record> {
        let mut out = Vec::new();
        for (i, a) in traffic.arrivals.iter().enumerate() {
            for (k, &algorithm) in Algorithm::ALL.iter().enumerate() {
                out.push(Record {
                    scenario: "burst",
                    algorithm,
                    key: "k".to_owned(),
                    target: 0,
                    scheduled_ns: a.at.as_u64(),
                    sent_ns: a.at.as_u64(),
                    received_ns: a.at.as_u64() + 1_000_000,
                    answer: answer(i, k),
                });
            }
        }
        out
    }

    #[test]
    fn failed_requests_are_offered_not_admitted_and_never_a_denial() {
        let config = LabConfig::new(10, Nanos::from_secs(1), 4, 1).expect("valid");
        let traffic = live_traffic(Scenario::Burst, &config);
        // The first 5 requests fail; of the rest, 10 are admitted.
        let recs = records(&traffic, |i, _| match i {
            0..5 => Answer::Failed(Failure::Connect),
            5..15 => Answer::Decided {
                allowed: true,
                delay: Nanos::ZERO,
            },
            _ => Answer::Decided {
                allowed: false,
                delay: Nanos::ZERO,
            },
        });
        let mut timings = Timings::default();
        let s = measure_scenario(&config, Scenario::Burst, &traffic, &recs, 0, &mut timings);
        let live = s.live.as_ref().expect("live figures");
        assert_eq!(live.failed, 5 * 6);
        assert_eq!(live.max_round_trip_ns, 1_000_000);
        assert_eq!(live.predicted.len(), 6);
        for r in &s.results {
            assert_eq!((r.offered, r.admitted, r.failed), (30, 10, Some(5)));
            // Every request was sent at once: the first denial is at 0.
            assert_eq!(r.first_denial_ns, Some(0));
        }
        for p in &live.predicted {
            assert_eq!((p.offered, p.admitted), (30, 10));
        }
        assert_eq!(timings.entries.len(), 6);
        assert!(timings.entries.iter().all(|t| t.decisions == 25));
        assert!(s.title.ends_with("(live)"));
        let text = csv(&recs, &["http://h:1".to_owned()]);
        assert_eq!(text.lines().count(), 1 + 30 * 6);
        assert!(
            text.lines()
                .nth(1)
                .is_some_and(|l| l.ends_with(",http://h:1,500000000,500000000,501000000,connect,,"))
        );
    }

    #[test]
    fn runs_that_are_too_big_or_not_live_are_refused_before_sending() {
        let options = LiveOptions {
            targets: vec![Target::parse("http://127.0.0.1:1").expect("valid")],
            in_flight: 8,
        };
        let config = LabConfig::new(10_000, Nanos::from_secs(10), 64, 1).expect("valid");
        let e = run(&config, &[Scenario::Hog], &options).expect_err("too big");
        assert!(matches!(e, LiveError::TooBig { .. }), "{e}");
        assert!(e.is_caller_error());
        let config = LabConfig::new(10, Nanos::from_secs(1), 4, 1).expect("valid");
        let e = run(&config, &[Scenario::RaceNonAtomic], &options).expect_err("not live");
        assert!(matches!(e, LiveError::NotLive(_)), "{e}");
        let e = run(&config, &[Scenario::Burst], &options).expect_err("nothing listens");
        assert!(matches!(e, LiveError::Unreachable { .. }), "{e}");
        assert!(!e.is_caller_error());
        assert!(e.to_string().contains("http://127.0.0.1:1"), "{e}");
    }
}
