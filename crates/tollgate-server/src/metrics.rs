//! `/metrics`: Prometheus text, with the prometheus-client crate.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

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
    known: PolicyCounters,
}

/// The decision counters made ahead of time, by policy; replaced whole when the
/// Envoy rules are reloaded. Cheap to clone; clones share the counters.
#[derive(Clone, Debug)]
pub struct PolicyCounters {
    decisions: Family<DecisionLabels, Counter>,
    known: Arc<ArcSwap<HashMap<String, [Counter; 2]>>>,
}

/// The policy names of the Envoy rules (`envoy/<domain>/<path>/<algorithm>`).
const ENVOY: &str = "envoy/";

impl PolicyCounters {
    fn counters(&self, policy: &str) -> [Counter; 2] {
        let make = |outcome: &str| {
            self.decisions.get_or_create_owned(&DecisionLabels {
                policy: policy.to_owned(),
                outcome: outcome.to_owned(),
            })
        };
        [make("allowed"), make("denied")]
    }

    /// Makes the counters of `policies` too.
    fn add<'a>(&self, policies: impl IntoIterator<Item = &'a str>) {
        let mut known = HashMap::clone(&self.known.load());
        for policy in policies {
            let counters = self.counters(policy);
            known.insert(policy.to_owned(), counters);
        }
        self.known.store(Arc::new(known));
    }

    /// The Envoy rules now in force have these policies: the counters of Envoy
    /// policies no longer among them go, with their series; the new ones are made.
    /// (A kept policy keeps its counts.)
    pub fn replace_envoy<'a>(&self, policies: impl IntoIterator<Item = &'a str>) {
        let old = self.known.load_full();
        let mut known: HashMap<String, [Counter; 2]> = old
            .iter()
            .filter(|(policy, _)| !policy.starts_with(ENVOY))
            .map(|(policy, counters)| (policy.clone(), counters.clone()))
            .collect();
        for policy in policies {
            let counters = match old.get(policy) {
                Some(counters) => counters.clone(),
                None => self.counters(policy),
            };
            known.insert(policy.to_owned(), counters);
        }
        for policy in old.keys() {
            if policy.starts_with(ENVOY) && !known.contains_key(policy) {
                for outcome in ["allowed", "denied"] {
                    self.decisions.remove(&DecisionLabels {
                        policy: policy.clone(),
                        outcome: outcome.to_owned(),
                    });
                }
            }
        }
        self.known.store(Arc::new(known));
    }
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
        let known = PolicyCounters {
            decisions: decisions.clone(),
            known: Arc::new(ArcSwap::from_pointee(HashMap::new())),
        };
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
            known,
        }
    }

    /// The registry, for other parts of the server to register their metrics in
    /// (the Envoy service's per-rule counters).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Makes the counters of these policies ahead of time.
    pub fn prepare<'a>(&mut self, policies: impl IntoIterator<Item = &'a str>) {
        self.known.add(policies);
    }

    /// The counters made ahead of time, for whoever replaces the Envoy policies'.
    pub fn policy_counters(&self) -> PolicyCounters {
        self.known.clone()
    }

    /// Counts a decision.
    pub fn decision(&self, policy: &str, allowed: bool) {
        if let Some(counters) = self.known.known.load().get(policy) {
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
