//! [`Backend`]: the store the server was configured with (memory or Redis) behind
//! one type, so the decision API and the protected API share it.

use std::future::Future;

use tollgate::{Check, CheckError, MemoryStore, Store, Verdict};
use tollgate_redis::{RedisError, RedisStore};

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
