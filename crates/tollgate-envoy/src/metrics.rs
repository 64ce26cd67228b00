//! Per-rule metrics, as envoyproxy/ratelimit keeps them: hits, over limit, near
//! limit (above 80% of the limit), within limit, and shadow-mode overrides;
//! labelled by domain and rule (the rule's path, with the request's values only
//! where `detailed_metric` asks for them, so label values stay bounded).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    domain: String,
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoadLabels {
    outcome: String,
}

/// One rule's counters.
#[derive(Clone, Debug, Default)]
pub struct RuleCounters {
    /// Hits (the cost of every request that matched the rule).
    pub total_hits: Counter,
    /// Hits of requests over the limit.
    pub over_limit: Counter,
    /// Hits admitted above 80% of the limit.
    pub near_limit: Counter,
    /// Hits admitted.
    pub within_limit: Counter,
    /// Hits over the limit answered OK because the rule (or the service) is in
    /// shadow mode.
    pub shadow_mode: Counter,
}

/// The Envoy service's metrics.
#[derive(Clone, Debug, Default)]
pub struct EnvoyMetrics {
    total_hits: Family<RuleLabels, Counter>,
    over_limit: Family<RuleLabels, Counter>,
    near_limit: Family<RuleLabels, Counter>,
    within_limit: Family<RuleLabels, Counter>,
    shadow_mode: Family<RuleLabels, Counter>,
    loads: Family<LoadLabels, Counter>,
}

impl EnvoyMetrics {
    /// Metrics not yet registered anywhere.
    pub fn new() -> EnvoyMetrics {
        EnvoyMetrics::default()
    }

    /// Registers every metric into `registry` (names start with `envoy_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "envoy_total_hits",
            "Hits matched to each Envoy rate limit rule",
            self.total_hits.clone(),
        );
        registry.register(
            "envoy_over_limit",
            "Hits over each Envoy rule's limit",
            self.over_limit.clone(),
        );
        registry.register(
            "envoy_near_limit",
            "Hits admitted above 80% of each Envoy rule's limit",
            self.near_limit.clone(),
        );
        registry.register(
            "envoy_within_limit",
            "Hits admitted by each Envoy rule",
            self.within_limit.clone(),
        );
        registry.register(
            "envoy_shadow_mode",
            "Hits over an Envoy rule's limit answered OK by shadow mode",
            self.shadow_mode.clone(),
        );
        registry.register(
            "envoy_config_loads",
            "Loads of the Envoy rate limit configuration directory, by outcome (ok, error)",
            self.loads.clone(),
        );
    }

    /// The counters of `rule` in `domain`, made now (so a request counts without
    /// allocating); a rule reloaded under the same name keeps counting on the same ones.
    pub fn rule(&self, domain: &str, rule: &str) -> RuleCounters {
        let labels = RuleLabels {
            domain: domain.to_owned(),
            rule: rule.to_owned(),
        };
        RuleCounters {
            total_hits: self.total_hits.get_or_create_owned(&labels),
            over_limit: self.over_limit.get_or_create_owned(&labels),
            near_limit: self.near_limit.get_or_create_owned(&labels),
            within_limit: self.within_limit.get_or_create_owned(&labels),
            shadow_mode: self.shadow_mode.get_or_create_owned(&labels),
        }
    }

    /// Counts a load of the configuration.
    pub fn load(&self, ok: bool) {
        self.loads
            .get_or_create(&LoadLabels {
                outcome: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
    }
}
