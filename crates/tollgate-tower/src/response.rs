//! What the layer writes: the `RateLimit-Policy` and `RateLimit` fields of
//! draft-ietf-httpapi-ratelimit-headers-10, `Retry-After`, the legacy
//! `X-RateLimit-*` fields, and the problem+json bodies of its own answers.

use std::fmt::Write as _;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use tollgate::{Decision, DenyReason, Policy, Verdict};

/// `RateLimit-Policy`: the policies, stable from response to response.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: each policy's remaining quota and reset, for this request's key.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// Legacy `X-RateLimit-Limit` (the reported policy's limit).
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// Legacy `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// Legacy `X-RateLimit-Reset`, in seconds from now.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The seed service's text for a denied request, kept for its clients.
pub const SEED_MESSAGE: &str = "Rate limit exceeded. Try again later.";

/// The problem type draft-ietf-httpapi-ratelimit-headers-10 defines for a request
/// over quota.
pub const QUOTA_EXCEEDED_TYPE: &str =
    "https://iana.org/assignments/http-problem-types#quota-exceeded";

const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// Whole seconds, rounded up.
fn secs_ceil(n: tollgate::Nanos) -> u64 {
    n.as_secs_ceil()
}

/// The `t` of one policy's `RateLimit` item: seconds until additional quota is
/// made available. For a policy that denied, that is when this same request would
/// pass (its `retry_after`); for one that admits, when its state is fresh again
/// (its `reset_after`). Rounded up.
pub(crate) fn item_reset(d: &Decision) -> u64 {
    match (d.allowed, d.retry_after) {
        (false, Some(retry)) => secs_ceil(retry),
        _ => secs_ceil(d.reset_after),
    }
}

/// `Retry-After` for a denied verdict: the largest `t` among the policies that
/// denied, so it never points earlier than any of them. `None` when a cost can
/// never be admitted (waiting would not help).
pub(crate) fn retry_after(verdict: &Verdict) -> Option<u64> {
    if verdict.decision.reason == Some(DenyReason::CostExceedsCapacity) {
        return None;
    }
    verdict
        .decisions
        .iter()
        .filter(|d| !d.allowed && d.reason != Some(DenyReason::CostExceedsCapacity))
        .map(item_reset)
        .max()
}

/// `"per-client";q=1;w=15, "global";q=15;w=15`: `q` is the limit, `w` the period
/// in whole seconds rounded up.
pub(crate) fn policy_field<'a>(
    policies: impl Iterator<Item = (&'a str, &'a Policy)>,
) -> Option<HeaderValue> {
    let mut out = String::new();
    for (i, (name, policy)) in policies.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let w = secs_ceil(policy.period()).max(1);
        let _ = write!(out, "\"{name}\";q={};w={w}", policy.limit());
    }
    HeaderValue::try_from(out).ok()
}

/// `"per-client";r=0;t=12, "global";r=14;t=1`: one item per policy, in order.
///
/// Written without `core::fmt`, which costs more than the rest of the field, into
/// a buffer of the exact length (so that the value takes it over without another
/// allocation): this runs on every response.
pub(crate) fn ratelimit_field<'a>(
    items: impl Iterator<Item = (&'a str, &'a Decision)> + Clone,
) -> Option<HeaderValue> {
    // `"` name `";r=` digits `;t=` digits, and `, ` between items.
    let len: usize = items
        .clone()
        .enumerate()
        .map(|(i, (name, d))| {
            let comma = if i > 0 { 2 } else { 0 };
            comma + name.len() + 8 + decimal_len(d.remaining) + decimal_len(item_reset(d))
        })
        .sum();
    let mut out = Vec::with_capacity(len);
    for (i, (name, d)) in items.enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\";r=");
        push_u64(&mut out, d.remaining);
        out.extend_from_slice(b";t=");
        push_u64(&mut out, item_reset(d));
    }
    HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
}

/// How many decimal digits `n` has.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// `"00" "01" .. "99"`: two decimal digits at a time.
const PAIRS: [u8; 200] = {
    let mut table = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        // `i` is below 100, so both digits fit a byte.
        table[2 * i] = b'0' + (i / 10) as u8;
        table[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    table
};

/// Appends `n` in decimal.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    while n >= 100 {
        // Below 100, so the cast keeps it whole.
        let pair = 2 * (n % 100) as usize;
        n /= 100;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = 2 * n as usize;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        digits[at] = b'0' + n as u8;
    }
    out.extend_from_slice(&digits[at..]);
}

/// The legacy fields, from the reported decision.
pub(crate) fn legacy_fields(headers: &mut HeaderMap, d: &Decision) {
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(d.limit));
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(d.remaining));
    headers.insert(X_RATELIMIT_RESET, HeaderValue::from(item_reset(d)));
}

/// A denied request, as a custom denial body sees it.
#[derive(Debug)]
pub struct Denied<'a> {
    pub(crate) verdict: &'a Verdict,
    pub(crate) names: &'a [&'a str],
    pub(crate) retry_after: Option<u64>,
    pub(crate) cost: u32,
}

impl<'a> Denied<'a> {
    /// The store's verdict: one decision per policy, in the layer's order.
    pub fn verdict(&self) -> &'a Verdict {
        self.verdict
    }

    /// The name of the policy whose decision is reported (the one that makes the
    /// client wait longest).
    pub fn policy(&self) -> &'a str {
        self.names.get(self.verdict.index).copied().unwrap_or("")
    }

    /// The names of every policy that denied.
    pub fn violated_policies(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.names
            .iter()
            .zip(&self.verdict.decisions)
            .filter(|(_, d)| !d.allowed)
            .map(|(name, _)| *name)
    }

    /// The `Retry-After` the layer sends, in seconds; `None` when the cost can never
    /// be admitted.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after
    }

    /// What the request cost.
    pub fn cost(&self) -> u32 {
        self.cost
    }
}

/// The default 429 body: a problem+json with the draft's `quota-exceeded` type,
/// the violated policies, and the seed's `message`.
pub(crate) fn too_many_requests(denied: &Denied<'_>) -> Response<Full<Bytes>> {
    let policy = denied.policy();
    let detail = match (denied.verdict.decision.reason, denied.retry_after) {
        (Some(DenyReason::CostExceedsCapacity), _) => format!(
            "the request costs {} units; policy {policy:?} never admits more than {} at once",
            denied.cost, denied.verdict.decision.limit
        ),
        (_, Some(secs)) => format!("policy {policy:?} is exhausted: retry in {secs} s"),
        (_, None) => format!("policy {policy:?} is exhausted"),
    };
    let violated: Vec<&str> = denied.violated_policies().collect();
    let body = serde_json::json!({
        "type": QUOTA_EXCEEDED_TYPE,
        "title": "Too Many Requests",
        "status": 429,
        "detail": detail,
        "violated-policies": violated,
        "message": SEED_MESSAGE,
    });
    problem(StatusCode::TOO_MANY_REQUESTS, &body)
}

/// A problem+json response with `about:blank` type.
pub(crate) fn plain_problem(status: StatusCode, detail: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "detail": detail,
    });
    problem(status, &body)
}

fn problem(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, PROBLEM_JSON);
    response
}

/// Sets `Retry-After` unless the response has one.
pub(crate) fn set_retry_after(headers: &mut HeaderMap, secs: u64) {
    if !headers.contains_key(RETRY_AFTER) {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;
    use tollgate::{Algorithm, Nanos};

    fn decision(allowed: bool, remaining: u64, reset_ms: u64, retry_ms: Option<u64>) -> Decision {
        Decision {
            allowed,
            limit: 1,
            remaining,
            reset_after: Nanos::from_millis(reset_ms),
            retry_after: retry_ms.map(Nanos::from_millis),
            delay: Nanos::ZERO,
            reason: (!allowed).then_some(DenyReason::Limited),
        }
    }

    #[test]
    fn policy_field_rounds_the_window_up() {
        let a = Policy::new(Algorithm::Gcra, 1, Duration::from_secs(15)).unwrap();
        let b = Policy::new(Algorithm::Gcra, 15, Duration::from_millis(1500)).unwrap();
        let c = Policy::new(Algorithm::Gcra, 3, Duration::from_millis(10)).unwrap();
        let v = policy_field([("per-client", &a), ("global", &b), ("fast", &c)].into_iter());
        assert_eq!(
            v.unwrap(),
            r#""per-client";q=1;w=15, "global";q=15;w=2, "fast";q=3;w=1"#
        );
    }

    #[test]
    fn ratelimit_field_one_item_per_policy() {
        let denied = decision(false, 0, 14_000, Some(11_200));
        let admits = decision(true, 14, 1_000, None);
        let v = ratelimit_field([("per-client", &denied), ("global", &admits)].into_iter());
        assert_eq!(v.unwrap(), r#""per-client";r=0;t=12, "global";r=14;t=1"#);
    }

    #[test]
    fn decimal_digits() {
        for n in [0, 7, 10, 99, 1_000_000_007, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn decimal_digits_at_every_length() {
        let mut n = 1u64;
        for _ in 0..20 {
            for m in [n - 1, n, n + 1, n.saturating_mul(9)] {
                let mut out = Vec::new();
                push_u64(&mut out, m);
                assert_eq!(out, m.to_string().into_bytes());
                assert_eq!(decimal_len(m), out.len());
            }
            n = n.saturating_mul(10);
        }
    }

    #[test]
    fn retry_after_is_the_largest_denied_t() {
        let d1 = decision(false, 0, 5_000, Some(2_001));
        let d2 = decision(false, 0, 9_000, Some(999));
        let ok = decision(true, 3, 60_000, None);
        let verdict = Verdict::from_decisions([d1, d2, ok].into_iter().collect());
        assert_eq!(retry_after(&verdict), Some(3));
    }
}
