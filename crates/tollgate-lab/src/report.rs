//! [`Report`]: every figure of a lab run, as `report.json` holds it, and
//! [`Timings`], the machine-dependent figures kept apart from it.
//!
//! Everything in a [`Report`] follows from the [`crate::LabConfig`] alone, so the
//! same configuration gives a byte-identical `report.json`. How long the decisions
//! took depends on the machine and the moment, so it lives in [`Timings`]
//! (`timings.json`, and a marked column of the tables) and never in the report.

use serde::Serialize;

/// Every figure of a lab run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `tollgate lab`.
    pub lab: String,
    /// The version of tollgate-lab that made the report.
    pub version: String,
    /// What every scenario shared.
    pub config: ConfigReport,
    /// One entry per scenario run, in the order of [`crate::Scenario::ALL`].
    pub scenarios: Vec<ScenarioResult>,
    /// Live mode only: where the requests went and how many failed. A live report
    /// is a measurement, not a reproducible figure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveReport>,
}

/// What a live run (`tollgate lab --target URL`) adds to the report.
#[derive(Clone, Debug, Serialize)]
pub struct LiveReport {
    /// A reminder that the figures were measured, not computed.
    pub note: String,
    /// The servers the requests were sent to, round-robin.
    pub targets: Vec<String>,
    /// The tag every key of this run starts with (`lab-<tag>-...`), so runs never
    /// share a key.
    pub tag: String,
    /// The most requests in flight at once.
    pub in_flight: usize,
    /// Requests sent, over every scenario and algorithm.
    pub requests: u64,
    /// Requests that got no decision (no connection, a timeout, a status other than
    /// 200 or 429, an unreadable body).
    pub failed: u64,
    /// The failed requests by kind (`connect`, `timeout`, `http-503`, ...).
    pub failures: Vec<FailureCount>,
    /// Scenarios asked for that cannot run live, with the reason.
    pub skipped: Vec<String>,
    /// Wall-clock seconds the live run took, waiting for window edges included.
    pub wall_seconds: f64,
}

/// How many requests failed one way.
#[derive(Clone, Debug, Serialize)]
pub struct FailureCount {
    /// The kind of failure.
    pub kind: String,
    /// How many requests failed that way.
    pub count: u64,
}

/// What a live run adds to one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct LiveScenario {
    /// The simulator's figures for the same traffic, as scheduled: what the live
    /// system should have admitted, in the order of [`tollgate::Algorithm::ALL`].
    pub predicted: Vec<AlgorithmResult>,
    /// Requests of this scenario that got no decision.
    pub failed: u64,
    /// The longest round trip (request sent to answer read), nanoseconds: the
    /// server decided each request within its round trip.
    pub max_round_trip_ns: u64,
    /// The 99th percentile round trip (nearest rank), nanoseconds.
    pub p99_round_trip_ns: u64,
    /// The latest a request left after its scheduled instant, nanoseconds.
    pub max_lateness_ns: u64,
    /// The Unix time, in nanoseconds, that the scenario's time 0 was mapped to: a
    /// multiple of `W` on the lab's clock, so fixed windows start there.
    pub start_unix_ns: u64,
}

/// The configuration, as the report states it.
#[derive(Clone, Debug, Serialize)]
pub struct ConfigReport {
    /// `L`, units per period.
    pub limit: u32,
    /// `W` in nanoseconds.
    pub period_ns: u64,
    /// `W` as written on the command line (`10s`).
    pub period: String,
    /// `B`, the bucket family's burst: `L`.
    pub burst: u32,
    /// `T = ceil(W / L)` in nanoseconds.
    pub emission_interval_ns: u64,
    /// Nodes in the fleet scenarios.
    pub nodes: u32,
    /// The seed of the random traffic.
    pub seed: u64,
    /// Width of a chart bucket (`W / 10`) in nanoseconds.
    pub bucket_ns: u64,
}

/// One scenario, every algorithm.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    /// The scenario's name (`--scenario`).
    pub name: String,
    /// Its title.
    pub title: String,
    /// What the traffic is and what to look for.
    pub description: String,
    /// How long it lasts, in nanoseconds.
    pub duration_ns: u64,
    /// Requests offered (the same for every algorithm).
    pub offered: u64,
    /// When the first request arrives, from the start, in nanoseconds (the ideal
    /// line of the charts starts there).
    pub first_arrival_ns: u64,
    /// The chart's file name.
    pub chart: String,
    /// Whose requests the series count: `all clients` or one client.
    pub charted: String,
    /// Offered requests per chart bucket.
    pub offered_series: Vec<u64>,
    /// One entry per algorithm, in the order of [`tollgate::Algorithm::ALL`].
    pub results: Vec<AlgorithmResult>,
    /// Live mode only: the prediction and the network's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveScenario>,
}

/// One algorithm on one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct AlgorithmResult {
    /// The algorithm's name.
    pub algorithm: String,
    /// Requests offered.
    pub offered: u64,
    /// Requests admitted.
    pub admitted: u64,
    /// `admitted / offered`.
    pub admitted_ratio: f64,
    /// Admitted per period on average: `admitted * W / duration`.
    pub admitted_per_period: f64,
    /// The most requests of one client served within any interval `[s, s + W)`,
    /// over every node.
    pub max_in_window: u64,
    /// `max_in_window / L`: 1.0 means never above the limit.
    pub burst_factor: f64,
    /// From the first request to the first denial, in nanoseconds; `None` when
    /// nothing was denied.
    pub first_denial_ns: Option<u64>,
    /// `leaky_bucket` only: the mean delay of the admitted requests, nanoseconds.
    pub delay_mean_ns: Option<u64>,
    /// `leaky_bucket` only: the 99th percentile delay (nearest rank), nanoseconds.
    pub delay_p99_ns: Option<u64>,
    /// The smallest gap between two served requests of one client, nanoseconds
    /// (`leaky_bucket`'s is `T` or more); `None` with fewer than two.
    pub min_spacing_ns: Option<u64>,
    /// The most bytes one key's state took: the algorithm's state, and the sliding
    /// log's entries on the heap. (The memory store adds a 64-byte table entry per
    /// key, holding the key when it is short.)
    pub state_bytes_per_key: u64,
    /// Offered and admitted per client group (one group, `all`, in most scenarios).
    pub groups: Vec<GroupResult>,
    /// Admitted requests per chart bucket, by the instant they were served.
    pub admitted_series: Vec<u64>,
    /// Live mode only: requests that got no decision (counted as offered, not
    /// admitted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<u64>,
}

/// One group of clients' share.
#[derive(Clone, Debug, Serialize)]
pub struct GroupResult {
    /// The group's name.
    pub group: String,
    /// Requests its clients offered.
    pub offered: u64,
    /// Requests admitted.
    pub admitted: u64,
    /// `admitted / offered`.
    pub admitted_ratio: f64,
}

/// How long the decisions took, on this machine, in this run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    /// A reminder that these figures are not reproducible.
    pub note: String,
    /// One entry per scenario and algorithm.
    pub entries: Vec<Timing>,
}

/// One scenario and algorithm's decision time.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    /// The scenario's name.
    pub scenario: String,
    /// The algorithm's name.
    pub algorithm: String,
    /// Decisions made.
    pub decisions: u64,
    /// Wall-clock nanoseconds per decision, including setting the manual clock and
    /// recording the outcome.
    pub ns_per_decision: f64,
}

impl Timings {
    /// The nanoseconds per decision of `algorithm` on `scenario`, if measured.
    pub fn get(&self, scenario: &str, algorithm: &str) -> Option<f64> {
        self.entries
            .iter()
            .find(|t| t.scenario == scenario && t.algorithm == algorithm)
            .map(|t| t.ns_per_decision)
    }
}

impl Report {
    /// The scenario called `name`, if it was run.
    pub fn scenario(&self, name: &str) -> Option<&ScenarioResult> {
        self.scenarios.iter().find(|s| s.name == name)
    }
}

impl ScenarioResult {
    /// The result of `algorithm`, if it was run.
    pub fn result(&self, algorithm: tollgate::Algorithm) -> Option<&AlgorithmResult> {
        self.results
            .iter()
            .find(|r| r.algorithm == algorithm.name())
    }
}
