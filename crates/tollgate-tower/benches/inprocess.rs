//! The layer's cost per request in process, without sockets: an axum hello-world
//! router called directly, with and without the layer, interleaved in rounds;
//! prints the median nanoseconds per request and the difference to the plain
//! router.
//!
//! ```text
//! cargo bench -p tollgate-tower --bench inprocess
//! cargo bench -p tollgate-tower --bench inprocess -- one-key   # one scenario, one round (for a profiler)
//! ```
//!
//! The HTTP figure (`benches/wrk.sh`) is the one the issue asks for; this one
//! isolates the layer from the network stack, with two references: a layer that
//! does nothing (what axum's `Router::layer` itself costs) and the rate-limit
//! layer over a store that admits without looking (the layer without the store).
//! `stacked` is the layer with two policies (per `x-key` and global), one hot key;
//! `peer-ip` the layer keyed by the peer's IPv4 address (the default key);
//! `outer` the one-key layer around the whole router instead of through
//! `Router::layer` (served with `axum::ServiceExt::into_make_service..`, it spares
//! the per-route boxing that `Router::layer` adds: compare with `noop-layer`).

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use http::Request;
use tollgate::{
    Algorithm, Check, CheckError, Decision, MemoryStore, Nanos, Policy, Store, Verdict,
};
use tollgate_tower::{Key, RateLimit, RateLimitLayer};
use tower::Layer;
use tower::{Service, ServiceExt};

const REQUESTS: u32 = 200_000;
const ROUNDS: usize = 7;

/// What a scenario calls: a router (plain, or with layers inside), or the layer
/// around a router.
#[derive(Clone)]
enum App {
    Router(Router),
    Outer(RateLimit<MemoryStore, Router>),
}

impl App {
    async fn ns_per_request(&self, keys: &[String]) -> f64 {
        match self.clone() {
            App::Router(mut app) => ns_per_request(&mut app, keys).await,
            App::Outer(mut app) => ns_per_request(&mut app, keys).await,
        }
    }
}

async fn ns_per_request<S>(app: &mut S, keys: &[String]) -> f64
where
    S: Service<Request<Body>, Error = Infallible>,
{
    let peer: SocketAddr = ([203, 0, 113, 77], 40_000).into();
    let start = Instant::now();
    for i in 0..REQUESTS {
        let key = &keys[i as usize % keys.len()];
        let mut req = Request::get("/")
            .header("x-key", key.as_str())
            .body(Body::empty())
            .expect("a valid request");
        req.extensions_mut().insert(ConnectInfo(peer));
        let ready = ServiceExt::<Request<Body>>::ready(app)
            .await
            .expect("a router is always ready");
        black_box(ready.call(req).await.expect("infallible"));
    }
    start.elapsed().as_nanos() as f64 / f64::from(REQUESTS)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A store that admits everything without keeping state.
struct AdmitAll;

impl Store for AdmitAll {
    type Error = CheckError;

    fn check(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Verdict, CheckError>> + Send {
        let admit = Decision {
            allowed: true,
            limit: 1,
            remaining: 1,
            reset_after: Nanos::new(1),
            retry_after: None,
            delay: Nanos::ZERO,
            reason: None,
        };
        let decisions = checks.iter().map(|_| admit).collect();
        std::future::ready(Ok(Verdict::from_decisions(decisions)))
    }

    fn peek(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Verdict, CheckError>> + Send {
        self.check(checks)
    }

    fn reset(&self, _: &str) -> impl Future<Output = Result<(), CheckError>> + Send {
        std::future::ready(Ok(()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `with_state(())` turns the handlers into routes once, as `axum::serve` does
    // (through `into_make_service`); a router called without it rebuilds each route,
    // and applies its layers again, on every request.
    let hello = || Router::new().route("/", get(|| async { "Hello, World!" }));
    let plain = hello().with_state(());
    let policy = Policy::new(Algorithm::Gcra, 1_000_000_000, Duration::from_secs(1))?;
    let layer = |store| {
        RateLimitLayer::builder(store)
            .key(Key::header("x-key"))
            .policy("bench", policy)
            .build()
    };
    let layered = hello().layer(layer(MemoryStore::new())?).with_state(());
    let outer = App::Outer(layer(MemoryStore::new())?.layer(hello().with_state(())));
    let noop = hello()
        .layer(tower::util::MapRequestLayer::new(|r: Request<Body>| r))
        .with_state(());
    // Two stacked policies, as a per-client limit under a global one.
    let stacked = hello()
        .layer(
            RateLimitLayer::builder(MemoryStore::new())
                .key(Key::header("x-key"))
                .policy("bench", policy)
                .policy_keyed("global", policy, Key::global())
                .build()?,
        )
        .with_state(());
    let by_peer = hello()
        .layer(
            RateLimitLayer::builder(MemoryStore::new())
                .key(Key::peer_ip())
                .policy("bench", policy)
                .build()?,
        )
        .with_state(());
    let admit_all = hello()
        .layer(
            RateLimitLayer::builder(AdmitAll)
                .key(Key::header("x-key"))
                .policy("bench", policy)
                .build()?,
        )
        .with_state(());

    let one = vec!["hot-key".to_owned()];
    // 100k keys in a fixed scrambled order (multiplication by an odd constant
    // permutes 0..2^17; the values below 100k are kept).
    let many: Vec<String> = (0u32..1 << 17)
        .map(|i| i.wrapping_mul(0x9E37_79B1) & ((1 << 17) - 1))
        .filter(|&i| i < 100_000)
        .map(|i| format!("key-{i}"))
        .collect();

    let [plain, noop, admit_all, layered, stacked, by_peer] =
        [plain, noop, admit_all, layered, stacked, by_peer].map(App::Router);
    let scenarios: [(&str, &App, &[String]); 8] = [
        ("plain", &plain, &one),
        ("noop-layer", &noop, &one),
        ("admit-all", &admit_all, &one),
        ("one-key", &layered, &one),
        ("100k-keys", &layered, &many),
        ("stacked", &stacked, &one),
        ("peer-ip", &by_peer, &one),
        ("outer", &outer, &one),
    ];
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !only.is_empty() {
        for (name, app, keys) in scenarios.iter().filter(|s| only.iter().any(|o| o == s.0)) {
            let ns = app.ns_per_request(keys).await;
            println!("{name:10} {ns:6.0} ns/request");
        }
        return Ok(());
    }
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len()];
    for _ in 0..ROUNDS {
        for (i, (_, app, keys)) in scenarios.iter().enumerate() {
            results[i].push(app.ns_per_request(keys).await);
        }
    }
    let base = median(results[0].clone());
    println!("{REQUESTS} requests x {ROUNDS} rounds, median per scenario");
    for ((name, _, _), v) in scenarios.iter().zip(results) {
        let m = median(v);
        println!(
            "{name:10} {m:6.0} ns/request  {:+5.0} ns  x{:.3}",
            m - base,
            m / base
        );
    }
    Ok(())
}
