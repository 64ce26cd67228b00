//! Per-rule metrics, as envoyproxy/ratelimit keeps them: hits, over limit, near
//! limit (above 80% of the limit), within limit, and shadow-mode overrides;
//! labelled by domain and rule (the rule's path, with the request's values only
//! where `detailed_metric` asks for them, so label values stay bounded).
//!
//! A reload that removes rules removes their series too ([`EnvoyMetrics::retain`]):
//! `/metrics` shows the rules in force, not every rule ever loaded.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::config::RuleSet;

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

/// What made a series: a configured rule, or a request (a `detailed_metric` rule's
/// values, under the rule `owner`; or a descriptor's own limit, with no owner).
#[derive(Clone, Debug)]
enum Origin {
    Configured,
    Request { owner: Option<String> },
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
    /// Every rule series made, and what made it, for [`EnvoyMetrics::retain`].
    series: Arc<Mutex<HashMap<RuleLabels, Origin>>>,
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

    /// The counters of the configured rule `rule` in `domain`, made now (so a
    /// request counts without allocating); a rule reloaded under the same name keeps
    /// counting on the same ones.
    pub fn rule(&self, domain: &str, rule: &str) -> RuleCounters {
        self.counters(domain, rule, Origin::Configured)
    }

    /// The counters of a series a request makes: `stat` under the rule `owner`
    /// (`detailed_metric`), or a descriptor's own limit (`owner` None). They go when
    /// a reload removes their owner, or their domain.
    pub fn request_rule(&self, domain: &str, owner: Option<&str>, stat: &str) -> RuleCounters {
        let owner = owner.map(str::to_owned);
        self.counters(domain, stat, Origin::Request { owner })
    }

    fn counters(&self, domain: &str, rule: &str, origin: Origin) -> RuleCounters {
        let labels = RuleLabels {
            domain: domain.to_owned(),
            rule: rule.to_owned(),
        };
        // Made under the lock, so that `retain` cannot remove a series between its
        // making and its record.
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let counters = RuleCounters {
            total_hits: self.total_hits.get_or_create_owned(&labels),
            over_limit: self.over_limit.get_or_create_owned(&labels),
            near_limit: self.near_limit.get_or_create_owned(&labels),
            within_limit: self.within_limit.get_or_create_owned(&labels),
            shadow_mode: self.shadow_mode.get_or_create_owned(&labels),
        };
        match series.get_mut(&labels) {
            // A configured rule's series stays configured.
            Some(Origin::Configured) => {}
            Some(made) => {
                if matches!(origin, Origin::Configured) {
                    *made = origin;
                }
            }
            None => {
                series.insert(labels, origin);
            }
        }
        counters
    }

    /// Removes the series of rules that `rules` (the set now in force) no longer has:
    /// configured rules it does not hold, and series made by requests whose domain
    /// or owning rule it does not hold. A request still running on the previous set
    /// counts on counters no longer shown.
    pub fn retain(&self, rules: &RuleSet) {
        let configured: HashSet<(&str, &str)> = rules.rule_stats().into_iter().collect();
        let domains: HashSet<&str> = rules.domain_names().into_iter().collect();
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        series.retain(|labels, origin| {
            let here = (labels.domain.as_str(), labels.rule.as_str());
            let keep = configured.contains(&here)
                || match origin {
                    Origin::Configured => false,
                    Origin::Request { owner } => {
                        domains.contains(here.0)
                            && owner
                                .as_deref()
                                .is_none_or(|o| configured.contains(&(here.0, o)))
                    }
                };
            if !keep {
                for family in [
                    &self.total_hits,
                    &self.over_limit,
                    &self.near_limit,
                    &self.within_limit,
                    &self.shadow_mode,
                ] {
                    family.remove(labels);
                }
            }
            keep
        });
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
