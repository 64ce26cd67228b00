//! [`Backend`]: the store the server was configured with (memory or Redis) behind
//! one type, so the decision API and the protected API share it; [`Guarded`]: the
//! same store with `on_error` applied, for the Envoy rate limit service.

use std::future::Future;
use std::sync::Arc;

use tollgate::{Check, CheckError, Decision, MemoryStore, Nanos, Policy, Store, Verdict};
use tollgate_redis::{RedisError, RedisStore};

use crate::api::local_share;
use crate::config::OnErrorMode;

/// The configured store, measured.
#[derive(Debug)]
pub struct Backend {
    store: Inner,
    /// The server's metrics; every store call is counted here.
    pub metrics: crate::metrics::Metrics,
}

#[derive(Debug)]
enum Inner {
    /// `memory://`.
    Memory(MemoryStore),
    /// `redis://`, `rediss://`, `redis+cluster://`.
    Redis(RedisStore),
}

/// What the backend can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A malformed check (the caller's fault).
    #[error(transparent)]
    Check(#[from] CheckError),
    /// The Redis store failed or refused.
    #[error(transparent)]
    Redis(#[from] RedisError),
}

impl BackendError {
    /// True when the request is at fault (answered 4xx, never a fallback).
    pub fn is_caller_error(&self) -> bool {
        match self {
            BackendError::Check(_) => true,
            BackendError::Redis(e) => e.is_caller_error(),
        }
    }
}

impl Backend {
    /// The in-memory store.
    pub fn memory(store: MemoryStore) -> Backend {
        Backend {
            store: Inner::Memory(store),
            metrics: crate::metrics::Metrics::new(),
        }
    }

    /// The Redis store.
    pub fn redis(store: RedisStore) -> Backend {
        Backend {
            store: Inner::Redis(store),
            metrics: crate::metrics::Metrics::new(),
        }
    }

    /// Is the store reachable?
    pub async fn ready(&self) -> Result<(), BackendError> {
        match &self.store {
            Inner::Memory(_) => Ok(()),
            Inner::Redis(r) => r.ping().await.map_err(BackendError::from),
        }
    }

    /// Readies the calling thread's connection to the store (see
    /// [`RedisStore::warm_up`]): a worker does it as it starts, so its first
    /// request does not spend the store timeout connecting.
    pub async fn warm_up(&self) -> Result<(), BackendError> {
        match &self.store {
            Inner::Memory(_) => Ok(()),
            Inner::Redis(r) => r.warm_up().await.map_err(BackendError::from),
        }
    }

    /// Keys held, for the memory store.
    pub fn keys_held(&self) -> Option<usize> {
        match &self.store {
            Inner::Memory(m) => Some(m.len()),
            Inner::Redis(_) => None,
        }
    }

    async fn decide(&self, checks: &[Check<'_>], consume: bool) -> Result<Verdict, BackendError> {
        let started = std::time::Instant::now();
        let result = match (&self.store, consume) {
            (Inner::Memory(m), true) => m.check_all(checks).map_err(BackendError::from),
            (Inner::Memory(m), false) => m.peek_all(checks).map_err(BackendError::from),
            (Inner::Redis(r), true) => r.check(checks).await.map_err(BackendError::from),
            (Inner::Redis(r), false) => r.peek(checks).await.map_err(BackendError::from),
        };
        match &result {
            Ok(v) => {
                if self.metrics.store_call(started.elapsed(), true) {
                    tracing::info!("the rate limit store answers again; the fallback is off");
                }
                let key = checks.get(v.index).map_or("", |c| c.key);
                let policy = metrics_label(key.split_once(':').map_or(key, |(p, _)| p));
                if consume {
                    self.metrics.decision(policy, v.allowed());
                }
            }
            Err(e) if e.is_caller_error() => {}
            Err(BackendError::Redis(e @ RedisError::CircuitOpen { .. })) => {
                if self.metrics.store_short_circuited() {
                    tracing::warn!(error = %e, "the rate limit store failed; on_error answers until it recovers");
                }
            }
            Err(e) => {
                if self.metrics.store_call(started.elapsed(), false) {
                    tracing::warn!(error = %e, "the rate limit store failed; on_error answers until it recovers");
                }
            }
        }
        result
    }
}

/// The metrics label of a policy name. Inline policies of the decision API are
/// named after their numbers (`inline-gcra-10-1s-10`), which any client picks: one
/// label each would let a flood of distinct inline policies grow the metrics (and
/// the process) without bound, so they share the label `inline`.
fn metrics_label(policy: &str) -> &str {
    if policy.starts_with(crate::api::INLINE_PREFIX) {
        "inline"
    } else {
        policy
    }
}

impl Store for Backend {
    type Error = BackendError;

    fn check(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Verdict, Self::Error>> + Send {
        self.decide(checks, true)
    }

    fn peek(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Verdict, Self::Error>> + Send {
        self.decide(checks, false)
    }

    async fn reset(&self, key: &str) -> Result<(), Self::Error> {
        match &self.store {
            Inner::Memory(m) => {
                m.remove(key);
                Ok(())
            }
            Inner::Redis(r) => r.reset(key).await.map_err(BackendError::from),
        }
    }
}

/// How long a client is told to wait when `on_error = "deny"` refuses it: short, so
/// callers come back soon after the store does.
pub const DENY_RETRY_AFTER: Nanos = Nanos::from_secs(1);

/// [`Backend`] with the server's `on_error` applied: the store the Envoy rate limit
/// service (`ShouldRateLimit`) decides with, so a store failure is answered as the
/// HTTP APIs answer it rather than as a gRPC error.
///
/// A verdict or a caller error (a malformed check) of the backend passes through
/// unchanged. When the store fails or exceeds `timeout`:
///
/// - `local` decides with the server's local limiter (the one
///   [`AppState::local`](crate::app::AppState::local) holds, shared with the decision
///   API and the protected routes, so a key gets this node's share once), each
///   policy replaced by its [`local_share`] (`limit / nodes`, `burst / nodes`);
/// - `allow` admits every check: each decision allowed, with the policy's limit (its
///   [`Policy::capacity`], as decisions report it) as `limit` and as `remaining`,
///   nothing to reset and no retry;
/// - `deny` refuses every check: each decision denied with `remaining` 0,
///   `retry_after` [`DENY_RETRY_AFTER`] and no reason, so the service answers
///   OVER_LIMIT. It does not answer a gRPC error (UNAVAILABLE): Envoy would then
///   follow its own `failure_mode_deny`, false by default, and let every request
///   through, which is not what `deny` asks for.
///
/// The store metrics and the "fallback active" log line and gauge come from
/// [`Backend`]'s own call, as for the HTTP APIs; the fallback adds none.
#[derive(Clone, Debug)]
pub struct Guarded {
    backend: Arc<Backend>,
    local: Arc<MemoryStore>,
    mode: OnErrorMode,
    nodes: u32,
}

impl Guarded {
    /// `backend` with `mode` applied; `local` is the local limiter of `on_error =
    /// "local"` and `nodes` the fleet size it shares each limit by (0 counts as 1).
    pub fn new(
        backend: Arc<Backend>,
        local: Arc<MemoryStore>,
        mode: OnErrorMode,
        nodes: u32,
    ) -> Guarded {
        Guarded {
            backend,
            local,
            mode,
            nodes: nodes.max(1),
        }
    }

    async fn decide(&self, checks: &[Check<'_>], consume: bool) -> Result<Verdict, BackendError> {
        let result = if consume {
            self.backend.check(checks).await
        } else {
            self.backend.peek(checks).await
        };
        match result {
            Err(e) if !e.is_caller_error() => self.fallback(checks, consume),
            passed => passed,
        }
    }

    /// The verdict of `on_error` for `checks`, the store having failed.
    #[cold]
    fn fallback(&self, checks: &[Check<'_>], consume: bool) -> Result<Verdict, BackendError> {
        match self.mode {
            OnErrorMode::Local => {
                let shares: Vec<Policy> = checks
                    .iter()
                    .map(|c| local_share(c.policy, self.nodes))
                    .collect();
                let local: Vec<Check<'_>> = checks
                    .iter()
                    .zip(&shares)
                    .map(|(c, p)| Check::new(c.key, p).cost(c.cost))
                    .collect();
                let verdict = if consume {
                    self.local.check_all(&local)
                } else {
                    self.local.peek_all(&local)
                };
                verdict.map_err(BackendError::from)
            }
            OnErrorMode::Allow => Ok(Verdict::from_decisions(
                checks.iter().map(|c| admit(c.policy)).collect(),
            )),
            OnErrorMode::Deny => Ok(Verdict::from_decisions(
                checks.iter().map(|c| refuse(c.policy)).collect(),
            )),
        }
    }
}

/// `on_error = "allow"`'s decision for a check of `policy`.
fn admit(policy: &Policy) -> Decision {
    let limit = policy.capacity();
    Decision {
        allowed: true,
        limit,
        remaining: u64::from(limit),
        reset_after: Nanos::ZERO,
        retry_after: None,
        delay: Nanos::ZERO,
        reason: None,
    }
}

/// `on_error = "deny"`'s decision for a check of `policy`.
fn refuse(policy: &Policy) -> Decision {
    Decision {
        allowed: false,
        limit: policy.capacity(),
        remaining: 0,
        reset_after: DENY_RETRY_AFTER,
        retry_after: Some(DENY_RETRY_AFTER),
        delay: Nanos::ZERO,
        reason: None,
    }
}

impl Store for Guarded {
    type Error = BackendError;

    fn check(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Verdict, Self::Error>> + Send {
        self.decide(checks, true)
    }

    fn peek(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Verdict, Self::Error>> + Send {
        self.decide(checks, false)
    }

    /// The backend's reset, as the decision API's: the local limiter keeps what it
    /// holds (it only decides while the store is down).
    fn reset(&self, key: &str) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.backend.reset(key)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use super::*;

    /// A backend whose store always fails: Redis on a port where nothing listens.
    async fn down() -> Arc<Backend> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let store = RedisStore::builder(format!("redis://127.0.0.1:{port}"))
            .timeout(Duration::from_millis(200))
            .connect_timeout(Duration::from_millis(200))
            .lazy(true)
            .connect()
            .await
            .expect("a lazy store connects without a server");
        Arc::new(Backend::redis(store))
    }

    fn policy(limit: u32) -> Policy {
        Policy::new(
            tollgate::Algorithm::FixedWindow,
            limit,
            Nanos::from_secs(60),
        )
        .expect("a policy")
    }

    #[tokio::test]
    async fn a_failed_store_follows_each_mode() {
        let backend = down().await;
        let local = Arc::new(MemoryStore::new());
        let (a, b) = (policy(4), policy(10));
        let stack = [Check::new("a:k", &a), Check::new("b:k", &b)];

        let allow = Guarded::new(backend.clone(), local.clone(), OnErrorMode::Allow, 2);
        for _ in 0..6 {
            let v = allow.check(&stack).await.expect("a verdict");
            assert!(v.allowed());
            assert_eq!(
                v.decisions
                    .iter()
                    .map(|d| (d.limit, d.remaining, d.retry_after))
                    .collect::<Vec<_>>(),
                [(4, 4, None), (10, 10, None)]
            );
        }

        let deny = Guarded::new(backend.clone(), local.clone(), OnErrorMode::Deny, 2);
        let v = deny.check(&stack).await.expect("a verdict");
        assert!(!v.allowed());
        for d in &v.decisions {
            assert_eq!(
                (d.allowed, d.remaining, d.retry_after, d.reason),
                (false, 0, Some(DENY_RETRY_AFTER), None)
            );
        }
        assert_eq!(v.decision.retry_after, Some(DENY_RETRY_AFTER));

        // 4 / 2 nodes for `a`: two admitted, then denied; a peek consumes nothing.
        let guarded = Guarded::new(backend.clone(), local.clone(), OnErrorMode::Local, 2);
        let peek = guarded.peek(&stack).await.expect("a verdict");
        assert_eq!((peek.allowed(), peek.decision.remaining), (true, 1));
        let mut allowed = Vec::new();
        for _ in 0..3 {
            let v = guarded.check(&stack).await.expect("a verdict");
            allowed.push(v.allowed());
            assert_eq!(v.decisions[0].limit, 2, "this node's share of 4");
        }
        assert_eq!(allowed, [true, true, false]);
        // The allow and deny calls above took nothing from the local limiter.
        assert_eq!(local.len(), 2);
    }

    #[tokio::test]
    async fn a_caller_error_is_not_a_store_failure() {
        let backend = down().await;
        let local = Arc::new(MemoryStore::new());
        let allow = Guarded::new(backend, local, OnErrorMode::Allow, 1);
        let err = allow
            .check(&[])
            .await
            .expect_err("an empty stack is refused");
        assert!(err.is_caller_error(), "{err}");
        let p = policy(3);
        let too_costly = [Check::new("k", &p).cost(NonZeroU32::new(4).expect("4"))];
        let v = allow.check(&too_costly).await.expect("a verdict");
        assert!(v.allowed(), "the store is down: allow admits");
    }
}
