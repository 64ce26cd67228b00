//! The fields on every response, and the 429.

use std::num::NonZeroU32;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use tollgate::{Algorithm, ManualClock, MemoryStore, Nanos, Store};
use tollgate_tower::{Key, RateLimitLayer};

use crate::common::{Waiting, get, get_with, hello, policy, redis_at, serve};

fn clock() -> ManualClock {
    ManualClock::new(Nanos::from_secs(1_000_000))
}

/// The seed's preset: per-client 1 per 15 s, global 15 per 15 s.
async fn headers_and_429<S: Store + 'static>(store: S) {
    let layer = RateLimitLayer::builder(store)
        .policy(
            "per-client",
            policy(Algorithm::TokenBucket, 1, Duration::from_secs(15)),
        )
        .policy_keyed(
            "global",
            policy(Algorithm::TokenBucket, 15, Duration::from_secs(15)),
            Key::global(),
        )
        .key(Key::peer_ip())
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;

    let ok = get(addr).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body, "hello");
    assert_eq!(
        ok.header("ratelimit-policy"),
        Some(r#""per-client";q=1;w=15, "global";q=15;w=15"#)
    );
    assert_eq!(
        ok.header("ratelimit"),
        Some(r#""per-client";r=0;t=15, "global";r=14;t=1"#)
    );
    assert_eq!(ok.header("retry-after"), None);
    assert_eq!(
        ok.header("x-ratelimit-limit"),
        None,
        "legacy fields are off by default"
    );

    let denied = get(addr).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        denied.header("ratelimit-policy"),
        Some(r#""per-client";q=1;w=15, "global";q=15;w=15"#)
    );
    // The global policy would have admitted: it reports what it holds, unconsumed.
    assert_eq!(
        denied.header("ratelimit"),
        Some(r#""per-client";r=0;t=15, "global";r=14;t=1"#)
    );
    assert_eq!(denied.header("retry-after"), Some("15"));
    assert_eq!(
        denied.header("content-type"),
        Some("application/problem+json")
    );
    let body = denied.json();
    assert_eq!(
        body["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(body["title"], "Too Many Requests");
    assert_eq!(body["status"], 429);
    assert_eq!(
        body["detail"],
        "policy \"per-client\" is exhausted: retry in 15 s"
    );
    assert_eq!(body["message"], "Rate limit exceeded. Try again later.");
    assert_eq!(body["violated-policies"], serde_json::json!(["per-client"]));
}

#[tokio::test]
async fn headers_and_429_memory() {
    headers_and_429(MemoryStore::with_clock(clock())).await;
}

#[tokio::test]
async fn headers_and_429_redis() {
    headers_and_429(redis_at("headers_and_429", clock()).await).await;
}

#[tokio::test]
async fn headers_and_429_waiting_store() {
    headers_and_429(Waiting(MemoryStore::with_clock(clock()))).await;
}

/// `Retry-After` and `t` are whole seconds rounded up, and equal for the policy that
/// denied; at the announced second the request passes.
async fn retry_after_rounds_up<S: Store + 'static>(store: S, clock: ManualClock) {
    let layer = RateLimitLayer::builder(store)
        .policy("p", policy(Algorithm::Gcra, 1, Duration::from_secs(15)))
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;

    assert_eq!(get(addr).await.status, StatusCode::OK);
    clock.advance(Duration::from_millis(2_500));
    let denied = get(addr).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.header("retry-after"), Some("13"));
    assert_eq!(denied.header("ratelimit"), Some(r#""p";r=0;t=13"#));

    clock.advance(Duration::from_millis(12_499));
    let denied = get(addr).await;
    assert_eq!(
        denied.header("retry-after"),
        Some("1"),
        "1 ms left rounds up to 1 s"
    );

    clock.advance(Duration::from_millis(1));
    let ok = get(addr).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.header("ratelimit"), Some(r#""p";r=0;t=15"#));
}

#[tokio::test]
async fn retry_after_rounds_up_memory() {
    let clock = clock();
    retry_after_rounds_up(MemoryStore::with_clock(clock.clone()), clock).await;
}

#[tokio::test]
async fn retry_after_rounds_up_redis() {
    let clock = clock();
    let store = redis_at("retry_after_rounds_up", clock.clone()).await;
    retry_after_rounds_up(store, clock).await;
}

/// A denial's `Retry-After` is never earlier than the `t` of any policy that denied.
async fn retry_after_covers_every_denial<S: Store + 'static>(store: S) {
    let layer = RateLimitLayer::builder(store)
        .policy(
            "short",
            policy(Algorithm::FixedWindow, 1, Duration::from_secs(2)),
        )
        .policy("long", policy(Algorithm::Gcra, 1, Duration::from_secs(30)))
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;
    assert_eq!(get(addr).await.status, StatusCode::OK);
    let denied = get(addr).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.header("retry-after"), Some("30"));
    let body = denied.json();
    assert_eq!(
        body["violated-policies"],
        serde_json::json!(["short", "long"])
    );
    let field = denied.header("ratelimit").expect("a RateLimit field");
    assert!(field.ends_with(r#""long";r=0;t=30"#), "{field}");
}

#[tokio::test]
async fn retry_after_covers_every_denial_memory() {
    retry_after_covers_every_denial(MemoryStore::with_clock(clock())).await;
}

#[tokio::test]
async fn retry_after_covers_every_denial_redis() {
    retry_after_covers_every_denial(redis_at("retry_after_covers", clock()).await).await;
}

/// The legacy fields carry the reported policy, when asked for.
async fn legacy_headers<S: Store + 'static>(store: S) {
    let layer = RateLimitLayer::builder(store)
        .policy(
            "p",
            policy(Algorithm::FixedWindow, 2, Duration::from_secs(60)),
        )
        .legacy_headers(true)
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;
    let ok = get(addr).await;
    assert_eq!(ok.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(ok.header("x-ratelimit-remaining"), Some("1"));
    let reset: u64 = ok
        .header("x-ratelimit-reset")
        .expect("a reset")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&reset), "{reset}");
    assert_eq!(get(addr).await.header("x-ratelimit-remaining"), Some("0"));
    let denied = get(addr).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.header("x-ratelimit-remaining"), Some("0"));
}

#[tokio::test]
async fn legacy_headers_memory() {
    legacy_headers(MemoryStore::with_clock(clock())).await;
}

#[tokio::test]
async fn legacy_headers_redis() {
    legacy_headers(redis_at("legacy_headers", clock()).await).await;
}

/// A cost larger than the bucket is a 429 without `Retry-After`: waiting would not
/// help. Smaller costs are charged in full.
async fn cost_from_the_request<S: Store + 'static>(store: S) {
    let layer = RateLimitLayer::builder(store)
        .policy("p", policy(Algorithm::Gcra, 4, Duration::from_secs(60)))
        .cost(|parts| {
            parts
                .headers
                .get("x-cost")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(NonZeroU32::MIN)
        })
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;

    let ok = get_with(addr, "/", &[("x-cost", "3")]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.header("ratelimit"), Some(r#""p";r=1;t=45"#));

    let never = get_with(addr, "/", &[("x-cost", "5")]).await;
    assert_eq!(never.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(never.header("retry-after"), None);
    let detail = never.json()["detail"]
        .as_str()
        .expect("a detail")
        .to_owned();
    assert!(detail.contains("costs 5"), "{detail}");
}

#[tokio::test]
async fn cost_from_the_request_memory() {
    cost_from_the_request(MemoryStore::with_clock(clock())).await;
}

#[tokio::test]
async fn cost_from_the_request_redis() {
    cost_from_the_request(redis_at("cost_from_the_request", clock()).await).await;
}

#[tokio::test]
async fn cost_from_the_request_waiting_store() {
    cost_from_the_request(Waiting(MemoryStore::with_clock(clock()))).await;
}

/// A custom denial keeps the layer's fields and `Retry-After`.
#[tokio::test]
async fn custom_denial_body() {
    let layer = RateLimitLayer::builder(MemoryStore::with_clock(clock()))
        .policy("p", policy(Algorithm::Gcra, 1, Duration::from_secs(10)))
        .deny_response(|denied| {
            let text = format!(
                "slow down: {} for {} s",
                denied.policy(),
                denied.retry_after_secs().unwrap_or(0)
            );
            let mut r = Response::new(Full::new(Bytes::from(text)));
            *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            r
        })
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;
    get(addr).await;
    let denied = get(addr).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.body, "slow down: p for 10 s");
    assert_eq!(denied.header("retry-after"), Some("10"));
    assert_eq!(denied.header("ratelimit"), Some(r#""p";r=0;t=10"#));
}

/// Two nested layers: their items form one list, split over two field lines.
#[tokio::test]
async fn nested_layers_append_their_items() {
    let store = std::sync::Arc::new(MemoryStore::with_clock(clock()));
    let inner = RateLimitLayer::builder_shared(store.clone())
        .policy("route", policy(Algorithm::Gcra, 5, Duration::from_secs(5)))
        .build()
        .expect("a valid layer");
    let outer = RateLimitLayer::builder_shared(store)
        .policy("app", policy(Algorithm::Gcra, 50, Duration::from_secs(5)))
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(inner).layer(outer)).await;
    let ok = get(addr).await;
    let items: Vec<&str> = ok
        .headers
        .get_all("ratelimit")
        .iter()
        .map(|v| v.to_str().expect("ASCII"))
        .collect();
    assert_eq!(items, [r#""route";r=4;t=1"#, r#""app";r=49;t=1"#]);
}
