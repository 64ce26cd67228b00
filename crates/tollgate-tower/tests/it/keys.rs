//! Which client a request counts against: peers, trusted proxies, IPv6 prefixes,
//! headers, and requests without a usable key.

use std::time::Duration;

use http::StatusCode;
use tollgate::{Algorithm, ManualClock, MemoryStore, Nanos, Store};
use tollgate_tower::{ClientIp, IpNet, Key, ProxyHeader, RateLimitLayer};

use crate::common::{get, get_with, hello, policy, redis_at, serve, serve_on, serve_without_peer};

fn one_per_minute() -> tollgate::Policy {
    policy(Algorithm::Gcra, 1, Duration::from_secs(60))
}

fn clock() -> ManualClock {
    ManualClock::new(Nanos::from_secs(1_000_000))
}

fn store() -> MemoryStore<ManualClock> {
    MemoryStore::with_clock(clock())
}

fn net(s: &str) -> IpNet {
    s.parse().expect("a CIDR")
}

/// By default no proxy is trusted: a client cannot pick its key with a header.
async fn untrusted_forwarding_headers_are_ignored<S: Store + 'static>(store: S) {
    let layer = RateLimitLayer::builder(store)
        .policy("p", one_per_minute())
        .key(Key::peer_ip())
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;
    let first = get_with(addr, "/", &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_eq!(first.status, StatusCode::OK);
    let second = get_with(addr, "/", &[("x-forwarded-for", "198.51.100.2")]).await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    let third = get_with(addr, "/", &[("forwarded", "for=198.51.100.3")]).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn untrusted_forwarding_headers_are_ignored_memory() {
    untrusted_forwarding_headers_are_ignored(store()).await;
}

#[tokio::test]
async fn untrusted_forwarding_headers_are_ignored_redis() {
    untrusted_forwarding_headers_are_ignored(
        redis_at("untrusted_forwarding_headers_are_ignored", clock()).await,
    )
    .await;
}

/// Behind a trusted proxy (the loopback peer), `X-Forwarded-For` names the client;
/// entries a client forged to the left of the untrusted hop do not matter.
async fn trusted_x_forwarded_for<S: Store + 'static>(store: S) {
    let ip = ClientIp::new().trust([net("127.0.0.0/8"), net("10.0.0.0/8")]);
    let layer = RateLimitLayer::builder(store)
        .policy("p", one_per_minute())
        .key(Key::client_ip(ip))
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;
    let a = [("x-forwarded-for", "198.51.100.1")];
    let b = [("x-forwarded-for", "198.51.100.2, 10.1.2.3")];
    let a_forged = [("x-forwarded-for", "203.0.113.9, 198.51.100.1")];
    assert_eq!(get_with(addr, "/", &a).await.status, StatusCode::OK);
    assert_eq!(get_with(addr, "/", &b).await.status, StatusCode::OK);
    assert_eq!(
        get_with(addr, "/", &a_forged).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // No header from the trusted proxy: the proxy itself is the client.
    assert_eq!(get(addr).await.status, StatusCode::OK);
    assert_eq!(get(addr).await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn trusted_x_forwarded_for_memory() {
    trusted_x_forwarded_for(store()).await;
}

#[tokio::test]
async fn trusted_x_forwarded_for_redis() {
    trusted_x_forwarded_for(redis_at("trusted_x_forwarded_for", clock()).await).await;
}

/// RFC 7239 `Forwarded`, when the layer is told to read it (and then only it).
async fn trusted_forwarded<S: Store + 'static>(store: S) {
    let ip = ClientIp::new()
        .trust([net("127.0.0.1/32")])
        .header(ProxyHeader::Forwarded);
    let layer = RateLimitLayer::builder(store)
        .policy("p", one_per_minute())
        .key(Key::client_ip(ip))
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;
    let a = [("forwarded", "for=198.51.100.1;proto=https")];
    let b = [("forwarded", r#"for="[2001:db8::1]:4711""#)];
    assert_eq!(get_with(addr, "/", &a).await.status, StatusCode::OK);
    assert_eq!(get_with(addr, "/", &b).await.status, StatusCode::OK);
    assert_eq!(
        get_with(addr, "/", &a).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // X-Forwarded-For is not read in this mode: this is the proxy's own key.
    let xff = [("x-forwarded-for", "198.51.100.7")];
    assert_eq!(get_with(addr, "/", &xff).await.status, StatusCode::OK);
    assert_eq!(
        get_with(addr, "/", &xff).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn trusted_forwarded_memory() {
    trusted_forwarded(store()).await;
}

#[tokio::test]
async fn trusted_forwarded_redis() {
    trusted_forwarded(redis_at("trusted_forwarded", clock()).await).await;
}

/// An IPv6 peer over a real IPv6 socket, grouped by /64: `::1` is `::/64`, and
/// clients forwarded from one /64 share a count while another /64 has its own.
async fn ipv6_grouped_by_prefix<S: Store + 'static>(store: S) {
    let ip = ClientIp::new().trust([net("::1/128")]);
    let layer = RateLimitLayer::builder(store)
        .policy("p", one_per_minute())
        .key(Key::client_ip(ip))
        .build()
        .expect("a valid layer");
    let addr = serve_on("[::1]:0", hello().layer(layer)).await;
    assert!(addr.is_ipv6());

    let same_64_a = [("x-forwarded-for", "2001:db8:1:2::a")];
    let same_64_b = [("x-forwarded-for", "2001:db8:1:2:ffff:ffff:ffff:ffff")];
    let other_64 = [("x-forwarded-for", "2001:db8:1:3::a")];
    assert_eq!(get_with(addr, "/", &same_64_a).await.status, StatusCode::OK);
    assert_eq!(
        get_with(addr, "/", &same_64_b).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(get_with(addr, "/", &other_64).await.status, StatusCode::OK);
    // The IPv6 peer itself (no header), then again: one count for ::/64.
    assert_eq!(get(addr).await.status, StatusCode::OK);
    assert_eq!(get(addr).await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn ipv6_grouped_by_prefix_memory() {
    ipv6_grouped_by_prefix(store()).await;
}

#[tokio::test]
async fn ipv6_grouped_by_prefix_redis() {
    ipv6_grouped_by_prefix(redis_at("ipv6_grouped_by_prefix", clock()).await).await;
}

/// A configured prefix of /128 keys each address alone.
#[tokio::test]
async fn ipv6_prefix_128_keys_each_address() {
    let ip = ClientIp::new().trust([net("::1/128")]).ipv6_prefix(128);
    let layer = RateLimitLayer::builder(store())
        .policy("p", one_per_minute())
        .key(Key::client_ip(ip))
        .build()
        .expect("a valid layer");
    let addr = serve_on("[::1]:0", hello().layer(layer)).await;
    let a = [("x-forwarded-for", "2001:db8:1:2::a")];
    let b = [("x-forwarded-for", "2001:db8:1:2::b")];
    assert_eq!(get_with(addr, "/", &a).await.status, StatusCode::OK);
    assert_eq!(get_with(addr, "/", &b).await.status, StatusCode::OK);
}

/// A header key: each API key has its own count; a request without one is a 400
/// naming the header, never a panic.
async fn header_key_and_missing_key<S: Store + 'static>(store: S) {
    let layer = RateLimitLayer::builder(store)
        .policy("p", one_per_minute())
        .key(Key::header("x-api-key"))
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;
    let alice = [("x-api-key", "alice")];
    let bob = [("x-api-key", "bob")];
    assert_eq!(get_with(addr, "/", &alice).await.status, StatusCode::OK);
    assert_eq!(get_with(addr, "/", &bob).await.status, StatusCode::OK);
    assert_eq!(
        get_with(addr, "/", &alice).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    let missing = get(addr).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        missing.header("content-type"),
        Some("application/problem+json")
    );
    let body = missing.json();
    assert_eq!(body["status"], 400);
    let detail = body["detail"].as_str().expect("a detail");
    assert!(detail.contains("\"x-api-key\""), "{detail}");
}

#[tokio::test]
async fn header_key_and_missing_key_memory() {
    header_key_and_missing_key(store()).await;
}

#[tokio::test]
async fn header_key_and_missing_key_redis() {
    header_key_and_missing_key(redis_at("header_key_and_missing_key", clock()).await).await;
}

/// Keys longer than the cap are refused with 400 before reaching the store.
async fn key_too_long<S: Store + 'static>(store: S) {
    let layer = RateLimitLayer::builder(store)
        .policy("p", one_per_minute())
        .key(Key::header("x-api-key"))
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;
    let at_cap = "k".repeat(256);
    let over = "k".repeat(257);
    let ok = get_with(addr, "/", &[("x-api-key", &at_cap)]).await;
    assert_eq!(ok.status, StatusCode::OK);
    let long = get_with(addr, "/", &[("x-api-key", &over)]).await;
    assert_eq!(long.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        long.json()["detail"],
        "the rate-limit key is 257 bytes long; at most 256 are accepted"
    );
}

#[tokio::test]
async fn key_too_long_memory() {
    key_too_long(store()).await;
}

#[tokio::test]
async fn key_too_long_redis() {
    key_too_long(redis_at("key_too_long", clock()).await).await;
}

/// Served without `ConnectInfo`, the peer is unknown: 400 saying how to fix it, or
/// the fallback key when one is set.
#[tokio::test]
async fn unknown_peer_is_a_400_or_the_fallback() {
    let layer = RateLimitLayer::builder(store())
        .policy("p", one_per_minute())
        .build()
        .expect("a valid layer");
    let addr = serve_without_peer(hello().layer(layer)).await;
    let reply = get(addr).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let detail = reply.json()["detail"]
        .as_str()
        .expect("a detail")
        .to_owned();
    assert!(
        detail.contains("into_make_service_with_connect_info"),
        "{detail}"
    );

    let layer = RateLimitLayer::builder(store())
        .policy("p", one_per_minute())
        .key(Key::peer_ip().fallback("unknown-peer"))
        .build()
        .expect("a valid layer");
    let addr = serve_without_peer(hello().layer(layer)).await;
    assert_eq!(get(addr).await.status, StatusCode::OK);
    assert_eq!(get(addr).await.status, StatusCode::TOO_MANY_REQUESTS);
}

/// The seed's `client` key: one peer with two user agents is two clients.
#[tokio::test]
async fn client_key_separates_user_agents() {
    let layer = RateLimitLayer::builder(store())
        .policy("per-client", one_per_minute())
        .key(Key::client())
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;
    let curl = [("user-agent", "curl/8")];
    let wget = [("user-agent", "wget/1")];
    assert_eq!(get_with(addr, "/", &curl).await.status, StatusCode::OK);
    assert_eq!(get_with(addr, "/", &wget).await.status, StatusCode::OK);
    assert_eq!(
        get_with(addr, "/", &curl).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// A closure key: here the query string.
#[tokio::test]
async fn closure_key() {
    let layer = RateLimitLayer::builder(store())
        .policy("p", one_per_minute())
        .key(Key::from_fn(|parts| parts.uri.query().map(str::to_owned)))
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;
    assert_eq!(get_with(addr, "/?a", &[]).await.status, StatusCode::OK);
    assert_eq!(get_with(addr, "/?b", &[]).await.status, StatusCode::OK);
    assert_eq!(
        get_with(addr, "/?a", &[]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        get_with(addr, "/", &[]).await.status,
        StatusCode::BAD_REQUEST
    );
}

/// Regression: the layer's default key (peer IP) was extracted even when every
/// policy had its own key, so a server without `ConnectInfo` refused requests
/// that no policy needed the peer for.
#[tokio::test]
async fn unused_default_key_is_not_extracted() {
    let layer = RateLimitLayer::builder(store())
        .policy_keyed("global", one_per_minute(), Key::global())
        .build()
        .expect("a valid layer");
    let addr = serve_without_peer(hello().layer(layer)).await;
    assert_eq!(get(addr).await.status, StatusCode::OK);
    assert_eq!(get(addr).await.status, StatusCode::TOO_MANY_REQUESTS);
}
