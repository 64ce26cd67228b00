//! Counting only some responses: failed logins.

use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;
use http::StatusCode;
use tollgate::{Algorithm, ManualClock, MemoryStore, Nanos, Store};
use tollgate_tower::RateLimitLayer;

use crate::common::{Waiting, get_with, policy, redis_at, serve};

async fn login(headers: HeaderMap) -> StatusCode {
    match headers.get("x-password").and_then(|v| v.to_str().ok()) {
        Some("right") => StatusCode::OK,
        _ => StatusCode::UNAUTHORIZED,
    }
}

/// Two failed logins per minute: successes are free, failures count, and once
/// the failures are used up even the right password waits.
async fn only_failures_count<S: Store + 'static>(store: S) {
    let layer = RateLimitLayer::builder(store)
        .policy(
            "logins",
            policy(Algorithm::Gcra, 2, Duration::from_secs(60)),
        )
        .count_if(|status| status == StatusCode::UNAUTHORIZED)
        .build()
        .expect("a valid layer");
    let app = Router::new().route("/login", get(login)).layer(layer);
    let addr = serve(app).await;
    let right = [("x-password", "right")];
    let wrong = [("x-password", "wrong")];

    for _ in 0..5 {
        let ok = get_with(addr, "/login", &right).await;
        assert_eq!(ok.status, StatusCode::OK);
        // Not counted: both units remain. `t` is the peek's, an upper bound.
        assert_eq!(ok.header("ratelimit"), Some(r#""logins";r=2;t=30"#));
    }
    let first = get_with(addr, "/login", &wrong).await;
    assert_eq!(first.status, StatusCode::UNAUTHORIZED);
    assert_eq!(first.header("ratelimit"), Some(r#""logins";r=1;t=30"#));
    assert_eq!(
        get_with(addr, "/login", &wrong).await.status,
        StatusCode::UNAUTHORIZED
    );
    let blocked = get_with(addr, "/login", &right).await;
    assert_eq!(blocked.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(blocked.header("retry-after"), Some("30"));
}

#[tokio::test]
async fn only_failures_count_memory() {
    let clock = ManualClock::new(Nanos::from_secs(1_000_000));
    only_failures_count(MemoryStore::with_clock(clock)).await;
}

#[tokio::test]
async fn only_failures_count_waiting_store() {
    let clock = ManualClock::new(Nanos::from_secs(1_000_000));
    only_failures_count(Waiting(MemoryStore::with_clock(clock))).await;
}

#[tokio::test]
async fn only_failures_count_redis() {
    let clock = ManualClock::new(Nanos::from_secs(1_000_000));
    only_failures_count(redis_at("count_if", clock).await).await;
}
