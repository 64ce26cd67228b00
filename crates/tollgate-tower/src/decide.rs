//! Deciding one request: its keys and cost, the store's verdict (or the failure
//! mode's), and the fields and refusals made from it.

use std::any::Any;
use std::cell::RefCell;
use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use smallvec::{SmallVec, smallvec};
use tollgate::{
    Check, Clock, Decision, ManualClock, MemoryStore, Nanos, Store, SystemClock, Verdict,
};

use crate::key::Missing;
use crate::layer::{Mode, Shared};
use crate::response::{self, Denied, RATELIMIT, RATELIMIT_POLICY};

/// A request's store keys (`"<policy>:<client>"`, one per policy) and cost.
pub(crate) struct Prepared {
    pub(crate) keys: SmallVec<[String; 2]>,
    pub(crate) cost: NonZeroU32,
}

/// Finds the request's keys and cost, or says why the request has no usable key.
pub(crate) fn prepare<S>(shared: &Shared<S>, parts: &Parts) -> Result<Prepared, String> {
    let cost = shared.cost.as_ref().map_or(NonZeroU32::MIN, |f| f(parts));
    let mut keys = SmallVec::new();
    fill_keys(shared, parts, &mut keys)?;
    Ok(Prepared { keys, cost })
}

/// Writes the request's store keys into `keys`, one per policy, reusing the
/// strings it holds. Each distinct extractor runs once, in the order the policies
/// first use it (the order of [`Shared::keys`]), so the first missing key is the
/// one reported.
pub(crate) fn fill_keys<S>(
    shared: &Shared<S>,
    parts: &Parts,
    keys: &mut SmallVec<[String; 2]>,
) -> Result<(), String> {
    let policies = &shared.policies;
    keys.truncate(policies.len());
    while keys.len() < policies.len() {
        keys.push(String::with_capacity(64));
    }
    if let ([p], [key], [k]) = (&**policies, &*shared.keys, &mut keys[..]) {
        // One policy: extract straight into its store key.
        k.clear();
        k.push_str(&p.name);
        k.push(':');
        key.extract_into(parts, k)
            .map_err(|missing| missing.to_string())?;
        return check_len(k.len() - p.name.len() - 1, shared.max_key_len);
    }
    for (i, p) in policies.iter().enumerate() {
        let (done, rest) = keys.split_at_mut(i);
        let Some(k) = rest.first_mut() else {
            break;
        };
        k.clear();
        k.push_str(&p.name);
        k.push(':');
        // A policy before this one with the same extractor has its client key.
        let earlier = policies[..i]
            .iter()
            .zip(done.iter())
            .find(|(q, _)| q.key == p.key);
        match earlier {
            Some((q, done)) => k.push_str(done.get(q.name.len() + 1..).unwrap_or("")),
            None => {
                let key = shared
                    .keys
                    .get(p.key)
                    .ok_or_else(|| Missing::Custom.to_string())?;
                key.extract_into(parts, k)
                    .map_err(|missing| missing.to_string())?;
                check_len(k.len() - p.name.len() - 1, shared.max_key_len)?;
            }
        }
    }
    Ok(())
}

fn check_len(len: usize, max: usize) -> Result<(), String> {
    if len > max {
        return Err(format!(
            "the rate-limit key is {len} bytes long; at most {max} are accepted"
        ));
    }
    Ok(())
}

pub(crate) async fn decide_owned<S: Store>(shared: Arc<Shared<S>>, prepared: Prepared) -> Decided {
    decide(&shared, &prepared, true).await
}

/// What the store (or the failure mode) decided.
pub(crate) enum Decided {
    /// Every policy admits.
    Admit {
        /// The fields for the response. For a peek (`count_if`), what remains if
        /// this request is not counted.
        fields: Fields,
        /// The `leaky_bucket` wait before the inner service is called.
        delay: Nanos,
    },
    /// A 429, 400 or 503, ready to send (boxed: a refusal is rare, and an
    /// admission, moved on every request, is then the size of its fields).
    Refuse(Box<Response<Full<Bytes>>>),
    /// The store failed and the mode is `allow`.
    Pass,
}

pub(crate) async fn decide<S: Store>(
    shared: &Shared<S>,
    prepared: &Prepared,
    consume: bool,
) -> Decided {
    let checks = checks(shared, prepared, false);
    let result = if consume {
        shared.store.check(&checks).await
    } else {
        shared.store.peek(&checks).await
    };
    judge(shared, result, prepared, consume)
}

/// The decision from the store's answer (or, when it failed, the failure mode's).
fn judge<S, E: std::error::Error>(
    shared: &Shared<S>,
    result: Result<Verdict, E>,
    prepared: &Prepared,
    consume: bool,
) -> Decided {
    let mut verdict = match result {
        Ok(verdict) => verdict,
        Err(error) => match fallback(shared, &error, prepared, consume) {
            Fallback::Decided(verdict) => verdict,
            Fallback::Pass => return Decided::Pass,
            Fallback::Unavailable => {
                return Decided::Refuse(Box::new(response::plain_problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the rate limiter cannot decide now; try again shortly",
                )));
            }
        },
    };
    if verdict.allowed() {
        if !consume {
            uncount(&mut verdict, prepared.cost);
        }
        Decided::Admit {
            fields: Fields::new(shared, &verdict.decisions, &verdict.decision),
            delay: verdict.decision.delay,
        }
    } else {
        Decided::Refuse(Box::new(denied(shared, &verdict, prepared.cost)))
    }
}

/// Decides a request (consuming) inside `Service::call`, without a future, when
/// the store is the in-process [`MemoryStore`] (on the system clock or a
/// [`ManualClock`]): its `Store::check` is `ready(check_all(..))`, so calling
/// `check_all` here decides exactly as awaiting the store would. `None` for any
/// other store, which goes through [`decide`].
pub(crate) fn at_once<S: Store + 'static>(shared: &Shared<S>, parts: &Parts) -> Option<Decided> {
    let store: &dyn Any = &*shared.store;
    if let Some(memory) = store.downcast_ref::<MemoryStore<SystemClock>>() {
        return Some(decide_in_memory(shared, memory, parts));
    }
    if let Some(memory) = store.downcast_ref::<MemoryStore<ManualClock>>() {
        return Some(decide_in_memory(shared, memory, parts));
    }
    None
}

thread_local! {
    /// The store keys of a request deciding in memory, reused from request to
    /// request on this thread: the memory store only borrows them.
    static SCRATCH: RefCell<SmallVec<[String; 2]>> = const { RefCell::new(SmallVec::new_const()) };
}

/// Scratch keys grown beyond this many bytes in all are dropped rather than kept
/// for the thread.
const SCRATCH_KEEP: usize = 4096;

fn decide_in_memory<S, C: Clock>(
    shared: &Shared<S>,
    memory: &MemoryStore<C>,
    parts: &Parts,
) -> Decided {
    let decided = SCRATCH.try_with(|scratch| {
        // Busy only if a key or cost function decides a request itself.
        let mut scratch = scratch.try_borrow_mut().ok()?;
        let decided = decide_with_keys(shared, memory, parts, &mut scratch);
        if scratch.iter().map(String::capacity).sum::<usize>() > SCRATCH_KEEP {
            *scratch = SmallVec::new();
        }
        Some(decided)
    });
    match decided {
        Ok(Some(decided)) => decided,
        _ => decide_with_keys(shared, memory, parts, &mut SmallVec::new()),
    }
}

fn decide_with_keys<S, C: Clock>(
    shared: &Shared<S>,
    memory: &MemoryStore<C>,
    parts: &Parts,
    keys: &mut SmallVec<[String; 2]>,
) -> Decided {
    let cost = shared.cost.as_ref().map_or(NonZeroU32::MIN, |f| f(parts));
    if let Err(detail) = fill_keys(shared, parts, keys) {
        return bad_request(&detail);
    }
    match (&*shared.policies, &keys[..]) {
        // One policy: the memory store's single check, what its `check_all`
        // does for a stack of one.
        ([policy], [k]) => {
            let d = memory.check_n(k, &policy.policy, cost);
            if d.allowed {
                Decided::Admit {
                    fields: Fields::new(shared, std::slice::from_ref(&d), &d),
                    delay: d.delay,
                }
            } else {
                let verdict = Verdict::from_decisions(smallvec![d]);
                Decided::Refuse(Box::new(denied(shared, &verdict, cost)))
            }
        }
        _ => {
            let prepared = Prepared {
                keys: std::mem::take(keys),
                cost,
            };
            let result = memory.check_all(&checks(shared, &prepared, false));
            let decided = judge(shared, result, &prepared, true);
            *keys = prepared.keys;
            decided
        }
    }
}

/// The `400` of a request without a usable key.
fn bad_request(detail: &str) -> Decided {
    Decided::Refuse(Box::new(response::plain_problem(
        StatusCode::BAD_REQUEST,
        detail,
    )))
}

/// One check per policy: with the shared store's policies, or the local share.
pub(crate) fn checks<'a, S>(
    shared: &'a Shared<S>,
    prepared: &'a Prepared,
    local: bool,
) -> SmallVec<[Check<'a>; 4]> {
    let mut checks = SmallVec::new();
    for (p, k) in shared.policies.iter().zip(&prepared.keys) {
        let policy = if local { &p.local } else { &p.policy };
        checks.push(Check::new(k, policy).cost(prepared.cost));
    }
    checks
}

/// What the layer does instead of a verdict when the store failed.
// A short-lived value: boxing the verdict would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Fallback {
    Decided(Verdict),
    Pass,
    Unavailable,
}

pub(crate) fn fallback<S, E: std::error::Error>(
    shared: &Shared<S>,
    error: &E,
    prepared: &Prepared,
    consume: bool,
) -> Fallback {
    match &shared.on_error {
        Mode::Deny => {
            tracing::warn!(%error, on_error = "deny", consume, "rate-limit store failed");
            Fallback::Unavailable
        }
        Mode::Allow => {
            tracing::warn!(%error, on_error = "allow", consume, "rate-limit store failed");
            Fallback::Pass
        }
        Mode::Local { store, .. } => {
            tracing::warn!(%error, on_error = "local", consume, "rate-limit store failed");
            match store.decide(&checks(shared, prepared, true), consume) {
                Ok(verdict) => Fallback::Decided(verdict),
                Err(local) => {
                    tracing::warn!(%local, "the local rate limiter failed too");
                    Fallback::Unavailable
                }
            }
        }
    }
}

/// The fields of a response that was not counted. The peek answered what would
/// remain had the request been counted; nothing was, so each policy holds `cost`
/// more (exact for every algorithm: `remaining` falls by exactly the cost on an
/// admission). `reset_after` stays the peek's, an upper bound.
fn uncount(verdict: &mut Verdict, cost: NonZeroU32) {
    for d in verdict
        .decisions
        .iter_mut()
        .chain(Some(&mut verdict.decision))
    {
        d.remaining = d.remaining.saturating_add(u64::from(cost.get()));
    }
}

fn denied<S>(shared: &Shared<S>, verdict: &Verdict, cost: NonZeroU32) -> Response<Full<Bytes>> {
    let names: SmallVec<[&str; 4]> = shared.policies.iter().map(|p| &*p.name).collect();
    let retry_after = response::retry_after(verdict);
    let denied = Denied {
        verdict,
        names: &names,
        retry_after,
        cost: cost.get(),
    };
    let mut response = match &shared.deny {
        Some(f) => f(&denied),
        None => response::too_many_requests(&denied),
    };
    Fields::new(shared, &verdict.decisions, &verdict.decision).write(response.headers_mut());
    if let Some(secs) = retry_after {
        response::set_retry_after(response.headers_mut(), secs);
    }
    response
}

/// The fields one response gets, computed from a verdict so that neither the
/// verdict nor the layer need be kept while the inner service runs.
pub(crate) struct Fields {
    policy: Option<HeaderValue>,
    ratelimit: Option<HeaderValue>,
    /// The reported decision's limit, remaining and reset (what the legacy fields
    /// show), not the whole decision: the fields are moved on every request.
    legacy: Option<[u64; 3]>,
}

impl Fields {
    /// From one decision per policy (in the layer's order) and the one reported
    /// (the verdict's, for the legacy fields).
    pub(crate) fn new<S>(shared: &Shared<S>, decisions: &[Decision], reported: &Decision) -> Self {
        let items = shared
            .policies
            .iter()
            .zip(decisions)
            .map(|(p, d)| (&*p.name, d));
        Fields {
            policy: shared.policy_header.clone(),
            ratelimit: response::ratelimit_field(items),
            legacy: shared.legacy_headers.then(|| {
                [
                    u64::from(reported.limit),
                    reported.remaining,
                    response::item_reset(reported),
                ]
            }),
        }
    }

    /// Appends `RateLimit-Policy` and `RateLimit` (appended, so an outer layer's
    /// items and ours form one list, as the draft allows), and the legacy fields
    /// if asked for.
    pub(crate) fn write(self, headers: &mut HeaderMap) {
        if let Some(policy) = self.policy {
            headers.append(RATELIMIT_POLICY, policy);
        }
        if let Some(value) = self.ratelimit {
            headers.append(RATELIMIT, value);
        }
        if let Some([limit, remaining, reset]) = self.legacy {
            response::legacy_fields(headers, limit, remaining, reset);
        }
    }
}
