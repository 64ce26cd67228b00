//! What the layer writes: the `RateLimit-Policy` and `RateLimit` fields of
//! draft-ietf-httpapi-ratelimit-headers-10, `Retry-After`, the legacy
//! `X-RateLimit-*` fields, and the problem+json bodies of its own answers.

use std::cell::RefCell;
use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};
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
/// Written without `core::fmt`, which costs more than the rest of the field: back
/// to front into a buffer on the stack (on the heap only for a stack of many or
/// long names), so each number's digits go straight to their place, then copied
/// once into the value. This runs on every response.
pub(crate) fn ratelimit_field<'a, I>(items: I) -> Option<HeaderValue>
where
    I: DoubleEndedIterator<Item = (&'a str, &'a Decision)> + Clone,
{
    let most: usize = items.clone().map(|(name, _)| item_max(name)).sum();
    if most <= FIELD_STACK {
        let mut stack = [0u8; FIELD_STACK];
        let start = write_items(&mut stack, items)?;
        return header_value(stack.get(start..)?);
    }
    let mut heap = vec![0u8; most];
    let start = write_items(&mut heap, items)?;
    header_value(heap.get(start..)?)
}

thread_local! {
    /// Where this thread's `RateLimit` values live: each value is a slice of one
    /// shared buffer (a reference count, no allocation of its own), and the buffer
    /// is reused from its start once every value cut from it has been dropped (as
    /// a server's responses are, once written).
    static FIELD_ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// The size of [`FIELD_ARENA`]'s buffer: a response still held keeps at most
/// this much alive.
const FIELD_ARENA_SIZE: usize = 2048;

/// A header value holding a copy of `bytes`, cut from this thread's
/// [`FIELD_ARENA`] (a `malloc` and a `free` per response cost more than the rest
/// of the field). The value is validated as `HeaderValue::from_bytes` does.
fn header_value(bytes: &[u8]) -> Option<HeaderValue> {
    let copy = FIELD_ARENA
        .try_with(|arena| {
            let mut arena = arena.try_borrow_mut().ok()?;
            if arena.capacity() < bytes.len() {
                // Reclaims the buffer if no value cut from it is alive, else
                // starts a new one (the old one lives on with its values).
                arena.reserve(FIELD_ARENA_SIZE.max(bytes.len()));
            }
            arena.extend_from_slice(bytes);
            Some(arena.split().freeze())
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| Bytes::copy_from_slice(bytes));
    HeaderValue::from_maybe_shared(copy).ok()
}

/// The stack buffer of [`ratelimit_field`]: one item with a name of up to 64
/// bytes (the longest a layer accepts) and two 20-digit numbers fits.
const FIELD_STACK: usize = 160;

/// The longest one `RateLimit` item can be: `, "` name `";r=` 20 digits `;t=` 20
/// digits.
fn item_max(name: &str) -> usize {
    3 + name.len() + 4 + 20 + 3 + 20
}

/// Writes the items so that they end at the end of `out`; returns where they
/// start, or `None` if `out` is too short (callers make room with [`item_max`]).
fn write_items<'a>(
    out: &mut [u8],
    items: impl DoubleEndedIterator<Item = (&'a str, &'a Decision)>,
) -> Option<usize> {
    let mut w = Backwards { at: out.len(), out };
    let mut items = items.rev().peekable();
    while let Some((name, d)) = items.next() {
        w.number(item_reset(d))?;
        w.put(b";t=")?;
        w.number(d.remaining)?;
        w.put(b"\";r=")?;
        w.put(name.as_bytes())?;
        w.put(b"\"")?;
        if items.peek().is_some() {
            w.put(b", ")?;
        }
    }
    Some(w.at)
}

/// Writes a byte buffer from its end towards its start.
struct Backwards<'b> {
    out: &'b mut [u8],
    /// Where the bytes written so far start.
    at: usize,
}

impl Backwards<'_> {
    /// Puts `bytes` before what is written.
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) -> Option<()> {
        let start = self.at.checked_sub(bytes.len())?;
        self.out.get_mut(start..self.at)?.copy_from_slice(bytes);
        self.at = start;
        Some(())
    }

    /// Puts `n` in decimal before what is written, two digits at a time.
    #[inline(always)]
    fn number(&mut self, mut n: u64) -> Option<()> {
        while n >= 100 {
            // Below 100, so the cast keeps it whole.
            let pair = 2 * (n % 100) as usize;
            n /= 100;
            self.put(PAIRS.get(pair..pair + 2)?)?;
        }
        if n >= 10 {
            let pair = 2 * n as usize;
            self.put(PAIRS.get(pair..pair + 2)?)
        } else {
            // A single digit.
            self.put(&[b'0' + n as u8])
        }
    }
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

/// The legacy fields, from the reported decision's limit, remaining and reset
/// ([`item_reset`]).
pub(crate) fn legacy_fields(headers: &mut HeaderMap, limit: u64, remaining: u64, reset: u64) {
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(limit));
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(remaining));
    headers.insert(X_RATELIMIT_RESET, HeaderValue::from(reset));
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

    fn decimal(n: u64) -> String {
        let mut buf = [0u8; 20];
        let mut w = Backwards {
            at: 20,
            out: &mut buf,
        };
        w.number(n).unwrap();
        let start = w.at;
        String::from_utf8(buf[start..].to_vec()).unwrap()
    }

    #[test]
    fn decimal_digits() {
        for n in [0, 7, 10, 99, 1_000_000_007, u64::MAX] {
            assert_eq!(decimal(n), n.to_string());
        }
    }

    #[test]
    fn decimal_digits_at_every_length() {
        let mut n = 1u64;
        for _ in 0..20 {
            for m in [n - 1, n, n + 1, n.saturating_mul(9)] {
                assert_eq!(decimal(m), m.to_string());
            }
            n = n.saturating_mul(10);
        }
    }

    #[test]
    fn ratelimit_field_longer_than_the_stack_buffer() {
        // Names of 64 bytes and the largest numbers: one item fits the stack, the
        // second spills to the heap, the rest follow there; and a first item that
        // does not fit at all.
        let d = Decision {
            remaining: u64::MAX,
            reset_after: Nanos::MAX,
            ..decision(true, 0, 0, None)
        };
        let long = "n".repeat(64);
        let huge = "h".repeat(300);
        for names in [
            vec![long.as_str()],
            vec![long.as_str(), "b", long.as_str(), "d"],
            vec![huge.as_str(), "x"],
        ] {
            let v = ratelimit_field(names.iter().map(|n| (*n, &d))).unwrap();
            let reset = item_reset(&d);
            let want: Vec<String> = names
                .iter()
                .map(|n| format!("\"{n}\";r={};t={reset}", u64::MAX))
                .collect();
            assert_eq!(v, want.join(", ").as_str());
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
