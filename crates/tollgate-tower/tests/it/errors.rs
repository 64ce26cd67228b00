//! What happens when the store fails: deny, allow, or decide locally.

use std::time::Duration;

use http::StatusCode;
use tollgate::{Algorithm, Check, ManualClock, MemoryStore, Nanos, Store, Verdict};
use tollgate_tower::{OnError, RateLimitLayer};

use crate::common::{Waiting, get, hello, policy, serve};

/// A store that is always down. Not a model of any real store: only a failure.
#[derive(Debug)]
struct FailingStore;

#[derive(Debug)]
struct Down;

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("store unreachable (transient)")
    }
}

impl std::error::Error for Down {}

impl Store for FailingStore {
    type Error = Down;

    fn check(&self, _: &[Check<'_>]) -> impl Future<Output = Result<Verdict, Down>> + Send {
        std::future::ready(Err(Down))
    }

    fn peek(&self, _: &[Check<'_>]) -> impl Future<Output = Result<Verdict, Down>> + Send {
        std::future::ready(Err(Down))
    }

    fn reset(&self, _: &str) -> impl Future<Output = Result<(), Down>> + Send {
        std::future::ready(Err(Down))
    }
}

fn local() -> MemoryStore<ManualClock> {
    MemoryStore::with_clock(ManualClock::new(Nanos::from_secs(1_000_000)))
}

fn two_per_minute() -> tollgate::Policy {
    policy(Algorithm::Gcra, 2, Duration::from_secs(60))
}

#[tokio::test]
async fn store_error_deny_is_503() {
    let layer = RateLimitLayer::builder(FailingStore)
        .policy("p", two_per_minute())
        .on_error(OnError::deny())
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;
    let reply = get(addr).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let body = reply.json();
    assert_eq!(body["status"], 503);
    assert!(
        !reply.body.contains("unreachable"),
        "internal detail stays out of the body: {}",
        reply.body
    );
}

#[tokio::test]
async fn store_error_deny_is_the_default() {
    let layer = RateLimitLayer::builder(FailingStore)
        .policy("p", two_per_minute())
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;
    assert_eq!(get(addr).await.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn store_error_allow_passes_without_fields() {
    let layer = RateLimitLayer::builder(FailingStore)
        .policy("p", two_per_minute())
        .on_error(OnError::allow())
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;
    for _ in 0..5 {
        let reply = get(addr).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "hello");
        assert_eq!(reply.header("ratelimit"), None);
    }
}

#[tokio::test]
async fn store_error_local_decides_in_process() {
    let layer = RateLimitLayer::builder(FailingStore)
        .policy("p", two_per_minute())
        .on_error(OnError::local(local()))
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;
    assert_eq!(get(addr).await.status, StatusCode::OK);
    let second = get(addr).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.header("ratelimit"), Some(r#""p";r=0;t=60"#));
    let denied = get(addr).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.header("retry-after"), Some("30"));
}

/// With a fleet of n nodes, each node's local share is limit / n.
#[tokio::test]
async fn store_error_local_shares_the_limit() {
    let layer = RateLimitLayer::builder(FailingStore)
        .policy("p", policy(Algorithm::Gcra, 4, Duration::from_secs(60)))
        .on_error(OnError::local(local()).nodes(2))
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;
    assert_eq!(get(addr).await.status, StatusCode::OK);
    assert_eq!(get(addr).await.status, StatusCode::OK);
    assert_eq!(get(addr).await.status, StatusCode::TOO_MANY_REQUESTS);
}

/// The same modes when the failure comes after a wait, as a network error does.
#[tokio::test]
async fn store_error_after_a_wait() {
    let deny = RateLimitLayer::builder(Waiting(FailingStore))
        .policy("p", two_per_minute())
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(deny)).await;
    assert_eq!(get(addr).await.status, StatusCode::SERVICE_UNAVAILABLE);

    let allow = RateLimitLayer::builder(Waiting(FailingStore))
        .policy("p", two_per_minute())
        .on_error(OnError::allow())
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(allow)).await;
    assert_eq!(get(addr).await.status, StatusCode::OK);

    let local = RateLimitLayer::builder(Waiting(FailingStore))
        .policy("p", two_per_minute())
        .on_error(OnError::local(local()))
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(local)).await;
    assert_eq!(get(addr).await.status, StatusCode::OK);
    assert_eq!(get(addr).await.status, StatusCode::OK);
    assert_eq!(get(addr).await.status, StatusCode::TOO_MANY_REQUESTS);
}
