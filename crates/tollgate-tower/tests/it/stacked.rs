//! Several policies on one layer: all or nothing.

use std::time::Duration;

use http::StatusCode;
use tollgate::{Algorithm, ManualClock, MemoryStore, Nanos, Store};
use tollgate_tower::{Key, RateLimitLayer};

use crate::common::{Waiting, get_with, hello, policy, redis_at, serve};

/// Per-client 2 per minute under `x-client`, global 3 per minute. A request denied
/// by one policy consumes from none: neither the global count nor the other
/// client's.
async fn stacked_all_or_nothing<S: Store + 'static>(store: S) {
    let layer = RateLimitLayer::builder(store)
        .key(Key::header("x-client"))
        .policy(
            "per-client",
            policy(Algorithm::FixedWindow, 2, Duration::from_secs(60)),
        )
        .policy_keyed(
            "global",
            policy(Algorithm::FixedWindow, 3, Duration::from_secs(60)),
            Key::global(),
        )
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;
    let a = [("x-client", "a")];
    let b = [("x-client", "b")];

    assert_eq!(get_with(addr, "/", &a).await.status, StatusCode::OK);
    let second = get_with(addr, "/", &a).await;
    assert_eq!(second.status, StatusCode::OK);
    let field = second.header("ratelimit").expect("RateLimit");
    assert!(field.starts_with(r#""per-client";r=0;"#), "{field}");
    assert!(field.contains(r#""global";r=1;"#), "{field}");

    // a is over its own limit: denied, and the global count is not touched.
    for _ in 0..3 {
        let denied = get_with(addr, "/", &a).await;
        assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            denied.json()["violated-policies"],
            serde_json::json!(["per-client"])
        );
        let field = denied.header("ratelimit").expect("RateLimit");
        assert!(field.contains(r#""global";r=1;"#), "{field}");
    }

    // So b still gets the last global unit...
    let ok = get_with(addr, "/", &b).await;
    assert_eq!(ok.status, StatusCode::OK);
    let field = ok.header("ratelimit").expect("RateLimit");
    assert!(field.starts_with(r#""per-client";r=1;"#), "{field}");
    assert!(field.contains(r#""global";r=0;"#), "{field}");

    // ...and then the global policy denies b, whose own count stays at 1 left.
    let denied = get_with(addr, "/", &b).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        denied.json()["violated-policies"],
        serde_json::json!(["global"])
    );
    let field = denied.header("ratelimit").expect("RateLimit");
    assert!(field.starts_with(r#""per-client";r=1;"#), "{field}");
}

#[tokio::test]
async fn stacked_all_or_nothing_memory() {
    let clock = ManualClock::new(Nanos::from_secs(1_000_020));
    stacked_all_or_nothing(MemoryStore::with_clock(clock)).await;
}

#[tokio::test]
async fn stacked_all_or_nothing_waiting_store() {
    let clock = ManualClock::new(Nanos::from_secs(1_000_020));
    stacked_all_or_nothing(Waiting(MemoryStore::with_clock(clock))).await;
}

#[tokio::test]
async fn stacked_all_or_nothing_redis() {
    let clock = ManualClock::new(Nanos::from_secs(1_000_020));
    stacked_all_or_nothing(redis_at("stacked", clock).await).await;
}
