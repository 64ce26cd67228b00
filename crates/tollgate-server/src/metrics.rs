//! `/metrics`: Prometheus text, with the prometheus-client crate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    policy: String,
    outcome: String,
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    latency: Histogram,
    errors: Counter,
    short_circuited: Counter,
    fallback: Gauge,
    keys: Gauge,
    connections: Gauge,
    connections_refused: Counter,
    failing: AtomicBool,
    /// The counters of the configured policies, made once so that counting a
    /// decision allocates nothing.
    known: HashMap<String, [Counter; 2]>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tollgate");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions by policy (the reported one of a stack) and outcome (allowed, denied)",
            decisions.clone(),
        );
        // 50 us to about 1.6 s.
        let latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "store_latency_seconds",
            "Time the store took to answer a decision",
            latency.clone(),
        );
        let errors = Counter::default();
        registry.register(
            "store_errors",
            "Store calls that failed or timed out",
            errors.clone(),
        );
        let short_circuited = Counter::default();
        registry.register(
            "store_short_circuited",
            "Decisions answered by on_error without a store call: the Redis store's circuit breaker was open after failures in a row",
            short_circuited.clone(),
        );
        let fallback = Gauge::default();
        registry.register(
            "fallback_active",
            "1 while the store fails and on_error answers instead",
            fallback.clone(),
        );
        let keys = Gauge::default();
        registry.register(
            "keys_held",
            "Keys the in-memory store holds (0 for Redis)",
            keys.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open (HTTP and gRPC), at most server.max_connections",
            connections.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Client connections closed as soon as accepted: their client had server.max_connections_per_client open",
            connections_refused.clone(),
        );
        Metrics {
            registry,
            connections,
            connections_refused,
            decisions,
            latency,
            errors,
            short_circuited,
            fallback,
            keys,
            failing: AtomicBool::new(false),
            known: HashMap::new(),
        }
    }

    /// The registry, for other parts of the server to register their metrics in
    /// (the Envoy service's per-rule counters).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Makes the counters of these policies ahead of time.
    pub fn prepare<'a>(&mut self, policies: impl IntoIterator<Item = &'a str>) {
        for policy in policies {
            let make = |outcome: &str| {
                self.decisions.get_or_create_owned(&DecisionLabels {
                    policy: policy.to_owned(),
                    outcome: outcome.to_owned(),
                })
            };
            let counters = [make("allowed"), make("denied")];
            self.known.insert(policy.to_owned(), counters);
        }
    }

    /// Counts a decision.
    pub fn decision(&self, policy: &str, allowed: bool) {
        if let Some(counters) = self.known.get(policy) {
            counters[usize::from(!allowed)].inc();
            return;
        }
        self.decisions
            .get_or_create(&DecisionLabels {
                policy: policy.to_owned(),
                outcome: if allowed { "allowed" } else { "denied" }.to_owned(),
            })
            .inc();
    }

    /// Records one store call's time and outcome; returns true when this call
    /// changed whether the store is failing (for a log line).
    pub fn store_call(&self, took: Duration, ok: bool) -> bool {
        self.latency.observe(took.as_secs_f64());
        if !ok {
            self.errors.inc();
        }
        let changed = self.failing.swap(!ok, Ordering::Relaxed) == ok;
        self.fallback.set(i64::from(!ok));
        changed
    }

    /// Records a decision the store's circuit breaker held back (no call, so no
    /// latency and no store error); returns true when the store was not already
    /// failing (for a log line).
    pub fn store_short_circuited(&self) -> bool {
        self.short_circuited.inc();
        self.fallback.set(1);
        !self.failing.swap(true, Ordering::Relaxed)
    }

    /// The gauge of open client connections, for the accept loops to move.
    pub fn connections_gauge(&self) -> Gauge {
        self.connections.clone()
    }

    /// The counter of connections refused under `max_connections_per_client`.
    pub fn connections_refused(&self) -> Counter {
        self.connections_refused.clone()
    }

    /// The text exposition, with `keys` as the current key count.
    pub fn render(&self, keys: Option<usize>) -> String {
        self.keys
            .set(keys.map_or(0, |k| i64::try_from(k).unwrap_or(i64::MAX)));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
