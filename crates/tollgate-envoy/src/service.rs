//! [`RateLimiter`]: `ShouldRateLimit` over a tollgate store.
//!
//! For each descriptor of a request the domain's tree gives a rule (or none: OK, no
//! limit, as envoyproxy/ratelimit answers an unknown descriptor). Rules named in
//! another matched rule's `replaces` are dropped. `unlimited` rules answer OK with
//! `limit_remaining` 2^32 - 1 and touch no store; `requests_per_unit: 0` rules are
//! always over the limit. The rest go to the store as one stacked check, so the
//! request consumes from every limit or from none; rules in `shadow_mode` go as a
//! second stack, so a shadow rule over its limit cannot stop the enforced ones from
//! counting a request that is answered OK.
//!
//! A store key is `<rule's policy part>:<the descriptor's values>`: the policy part
//! (`envoy/<domain>/<key>=<value>/<key>/<algorithm>`, escaped) names the rule and its
//! algorithm, the client part the values, joined by `/` (each value with `%` and `/`
//! escaped as `%25` and `%2F`), which the Redis store also uses as the hash tag. A
//! rule naming one of the server's policies (`policy: NAME`) has the policy part
//! `NAME`, so the descriptor `(api_key, alice)` and the HTTP API's
//! `{"policy": "NAME", "key": "alice"}` count on one counter.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tollgate::{Check, Decision, MAX_STACK, Nanos, Store};
use tonic::{Request, Response, Status};

use crate::config::{Limit, LoadOptions, Rule, RuleSet, Unit, escape_value, override_rule};
use crate::metrics::{EnvoyMetrics, RuleCounters};
use crate::proto::rate_limit_response::{Code, DescriptorStatus, RateLimit};
use crate::proto::rate_limit_service_server::RateLimitService;
use crate::proto::{Duration as ProtoDuration, RateLimitRequest, RateLimitResponse};

/// The longest store key a descriptor may make, in bytes.
pub const MAX_KEY_LEN: usize = 8 * 1024;

/// The Envoy rate limit service over the store `S`.
#[derive(Debug)]
pub struct RateLimiter<S> {
    store: Arc<S>,
    rules: Arc<ArcSwap<RuleSet>>,
    metrics: EnvoyMetrics,
    shadow_mode: bool,
    options: LoadOptions,
}

impl<S> Clone for RateLimiter<S> {
    fn clone(&self) -> Self {
        RateLimiter {
            store: Arc::clone(&self.store),
            rules: Arc::clone(&self.rules),
            metrics: self.metrics.clone(),
            shadow_mode: self.shadow_mode,
            options: self.options.clone(),
        }
    }
}

/// One limit of a request bound for the store.
struct Pending {
    rule: Arc<Rule>,
    key: String,
    cost: NonZeroU32,
    /// The descriptors (indexes) this limit answers: more than one when a request
    /// names the same descriptor twice (their costs add up).
    descriptors: Vec<usize>,
    /// The request's values, for `detailed_metric`.
    detail: Option<String>,
}

impl<S: Store + 'static> RateLimiter<S> {
    /// A service deciding with `store` by the rules `rules` holds at each call.
    pub fn new(store: Arc<S>, rules: Arc<ArcSwap<RuleSet>>, metrics: EnvoyMetrics) -> Self {
        RateLimiter {
            store,
            rules,
            metrics,
            shadow_mode: false,
            options: LoadOptions::default(),
        }
    }

    /// The store's bounds, for the limits that requests carry themselves
    /// (`RateLimitDescriptor.limit`); the files were checked against them at load.
    pub fn options(mut self, options: LoadOptions) -> Self {
        self.options = options;
        self
    }

    /// Global shadow mode: decide and count as usual, but always answer OK overall.
    pub fn shadow_mode(mut self, on: bool) -> Self {
        self.shadow_mode = on;
        self
    }

    /// Decides a request.
    pub async fn decide(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        if request.domain.is_empty() {
            return Err(Status::invalid_argument("the request names no domain"));
        }
        if request.descriptors.is_empty() {
            return Err(Status::invalid_argument("the request has no descriptors"));
        }
        let set = self.rules.load_full();
        let mut statuses = vec![
            DescriptorStatus {
                code: Code::Ok as i32,
                ..DescriptorStatus::default()
            };
            request.descriptors.len()
        ];
        let Some(domain) = set.domain(&request.domain) else {
            return Ok(response(Code::Ok, statuses));
        };
        let mut matched: Vec<(usize, Arc<Rule>)> = Vec::new();
        for (i, d) in request.descriptors.iter().enumerate() {
            if d.entries.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "descriptors[{i}] has no entries"
                )));
            }
            if let Some(o) = &d.limit {
                let keys = d.entries.iter().map(|e| e.key.as_str());
                let rule = override_rule(
                    &request.domain,
                    keys,
                    o.requests_per_unit,
                    o.unit,
                    &self.options,
                    &self.metrics,
                )
                .map_err(|e| Status::invalid_argument(format!("descriptors[{i}].limit: {e}")))?;
                matched.push((i, Arc::new(rule)));
                continue;
            }
            let entries = d.entries.iter().map(|e| (e.key.as_str(), e.value.as_str()));
            if let Some(rule) = domain.find(entries) {
                matched.push((i, Arc::clone(rule)));
            }
        }
        if matched.iter().any(|(_, r)| !r.replaces.is_empty()) {
            let replaced: Vec<Arc<Rule>> = matched
                .iter()
                .filter(|(_, r)| !r.replaces.is_empty())
                .map(|(_, r)| Arc::clone(r))
                .collect();
            matched.retain(|(_, r)| {
                r.name.is_empty() || !replaced.iter().any(|by| by.replaces.contains(&r.name))
            });
        }

        let mut enforced: Vec<Pending> = Vec::new();
        let mut shadowed: Vec<Pending> = Vec::new();
        let mut over = false;
        for (i, rule) in matched {
            let d = &request.descriptors[i];
            let hits = d
                .hits_addend
                .as_ref()
                .map_or(u64::from(request.hits_addend), |h| h.value)
                .max(1);
            let cost = u32::try_from(hits)
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "descriptors[{i}].hits_addend {hits} is more than 2^32 - 1"
                    ))
                })?;
            let detail = rule.detailed_metric.then(|| {
                let mut stat = String::new();
                for e in &d.entries {
                    if !stat.is_empty() {
                        stat.push('.');
                    }
                    stat.push_str(&e.key);
                    stat.push('_');
                    stat.push_str(&e.value);
                }
                stat
            });
            let counters = || match &detail {
                Some(stat) => self
                    .metrics
                    .request_rule(&rule.domain, Some(&rule.stat), stat),
                None => rule.counters.clone(),
            };
            match &rule.limit {
                Limit::Unlimited => {
                    let c = counters();
                    c.total_hits.inc_by(u64::from(cost.get()));
                    c.within_limit.inc_by(u64::from(cost.get()));
                    statuses[i].limit_remaining = u32::MAX;
                }
                Limit::Blocked { unit } => {
                    let c = counters();
                    let hits = u64::from(cost.get());
                    c.total_hits.inc_by(hits);
                    c.over_limit.inc_by(hits);
                    let status = &mut statuses[i];
                    status.current_limit = Some(current_limit(&rule));
                    status.duration_until_reset =
                        Some(proto_duration(until_window_end(unit.seconds())));
                    if rule.shadow_mode {
                        c.shadow_mode.inc_by(hits);
                    } else {
                        status.code = Code::OverLimit as i32;
                        over = true;
                        if self.shadow_mode {
                            c.shadow_mode.inc_by(hits);
                        }
                    }
                }
                Limit::Policy { .. } => {
                    let mut key = String::with_capacity(rule.store_policy.len() + 32);
                    key.push_str(&rule.store_policy);
                    key.push(':');
                    for (n, e) in d.entries.iter().enumerate() {
                        if n > 0 {
                            key.push('/');
                        }
                        escape_value(&e.value, &mut key);
                    }
                    if key.len() > MAX_KEY_LEN {
                        return Err(Status::invalid_argument(format!(
                            "descriptors[{i}] is {} bytes long: at most {MAX_KEY_LEN} are accepted",
                            key.len()
                        )));
                    }
                    let list = if rule.shadow_mode {
                        &mut shadowed
                    } else {
                        &mut enforced
                    };
                    if let Some(p) = list.iter_mut().find(|p| p.key == key) {
                        p.cost = p.cost.checked_add(cost.get()).ok_or_else(|| {
                            Status::invalid_argument(
                                "the request's hits_addend add up past 2^32 - 1",
                            )
                        })?;
                        p.descriptors.push(i);
                    } else {
                        list.push(Pending {
                            rule,
                            key,
                            cost,
                            descriptors: vec![i],
                            detail,
                        });
                    }
                }
            }
        }
        for (list, shadow) in [(&enforced, false), (&shadowed, true)] {
            if list.is_empty() {
                continue;
            }
            over |= self.stack(list, shadow, &mut statuses).await?;
        }
        let code = if over && !self.shadow_mode {
            Code::OverLimit
        } else {
            Code::Ok
        };
        Ok(response(code, statuses))
    }

    /// Decides one stack; returns true when an enforced limit was over.
    async fn stack(
        &self,
        list: &[Pending],
        shadow: bool,
        statuses: &mut [DescriptorStatus],
    ) -> Result<bool, Status> {
        if list.len() > MAX_STACK {
            return Err(Status::invalid_argument(format!(
                "the request matches {} rate limits: at most {MAX_STACK} are decided together",
                list.len()
            )));
        }
        let mut checks = Vec::with_capacity(list.len());
        for p in list {
            if let Limit::Policy { policy, .. } = &p.rule.limit {
                checks.push(Check::new(&p.key, policy).cost(p.cost));
            }
        }
        let verdict = self
            .store
            .check(&checks)
            .await
            .map_err(|e| Status::unavailable(format!("the rate limit store failed: {e}")))?;
        let consumed = verdict.allowed();
        let mut over = false;
        for (p, d) in list.iter().zip(verdict.decisions.iter()) {
            let detailed;
            let counters = match &p.detail {
                Some(stat) => {
                    detailed = self
                        .metrics
                        .request_rule(&p.rule.domain, Some(&p.rule.stat), stat);
                    &detailed
                }
                None => &p.rule.counters,
            };
            count(counters, d, p.cost.get(), consumed);
            let is_over = !d.allowed;
            if is_over && (shadow || self.shadow_mode) {
                counters.shadow_mode.inc_by(u64::from(p.cost.get()));
            }
            over |= is_over && !shadow;
            let reset = if is_over {
                d.retry_after.unwrap_or(d.reset_after)
            } else {
                d.reset_after
            };
            for &i in &p.descriptors {
                let status = &mut statuses[i];
                status.code = if is_over && !shadow {
                    Code::OverLimit as i32
                } else {
                    Code::Ok as i32
                };
                status.current_limit = Some(current_limit(&p.rule));
                status.limit_remaining = u32::try_from(d.remaining).unwrap_or(u32::MAX);
                status.duration_until_reset = Some(proto_duration(reset));
            }
        }
        Ok(over)
    }
}

/// Counts one limit's decision: hits, over, within, near (above 80% of the limit
/// after this request, as envoyproxy/ratelimit counts it).
fn count(c: &RuleCounters, d: &Decision, cost: u32, consumed: bool) {
    let hits = u64::from(cost);
    c.total_hits.inc_by(hits);
    if !d.allowed {
        c.over_limit.inc_by(hits);
        return;
    }
    if !consumed {
        return;
    }
    c.within_limit.inc_by(hits);
    let limit = u64::from(d.limit);
    let used = limit.saturating_sub(d.remaining);
    let threshold = limit * 8 / 10;
    if used > threshold {
        c.near_limit.inc_by(hits.min(used - threshold));
    }
}

fn current_limit(rule: &Rule) -> RateLimit {
    let unit = match &rule.limit {
        Limit::Policy { unit, .. } => unit.map_or(0, Unit::proto),
        Limit::Blocked { unit } => unit.proto(),
        Limit::Unlimited => 0,
    };
    RateLimit {
        name: rule.name.clone(),
        requests_per_unit: rule.requests_per_unit,
        unit,
    }
}

fn response(code: Code, statuses: Vec<DescriptorStatus>) -> RateLimitResponse {
    RateLimitResponse {
        overall_code: code as i32,
        statuses,
        ..RateLimitResponse::default()
    }
}

fn proto_duration(d: Nanos) -> ProtoDuration {
    let ns = d.as_u64();
    ProtoDuration {
        seconds: i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX),
        // Below 10^9, so it fits.
        nanos: (ns % 1_000_000_000) as i32,
    }
}

/// Time until the current clock-aligned window of `seconds` ends.
fn until_window_end(seconds: u64) -> Nanos {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let w = seconds.saturating_mul(1_000_000_000).max(1);
    Nanos::new(w - now % w)
}

#[tonic::async_trait]
impl<S: Store + 'static> RateLimitService for RateLimiter<S> {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.decide(request.get_ref()).await.map(Response::new)
    }
}
