//! The layer's cost per request in process, without sockets: an axum hello-world
//! router called directly, with and without the layer, interleaved in rounds;
//! prints nanoseconds per request and the median difference and ratio.
//!
//! ```text
//! cargo bench -p tollgate-tower --bench inprocess
//! ```
//!
//! The HTTP figure (`benches/wrk.sh`) is the one the issue asks for; this one
//! isolates the layer from the network stack, to see where its time goes.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use http::Request;
use tollgate::{Algorithm, MemoryStore, Policy};
use tollgate_tower::{Key, RateLimitLayer};
use tower::{Service, ServiceExt};

const REQUESTS: u32 = 200_000;
const ROUNDS: usize = 7;

async fn ns_per_request(app: &mut Router, keys: &[String]) -> f64 {
    let peer: SocketAddr = ([127, 0, 0, 1], 40_000).into();
    let start = Instant::now();
    for i in 0..REQUESTS {
        let key = &keys[i as usize % keys.len()];
        let mut req = Request::get("/")
            .header("x-key", key.as_str())
            .body(Body::empty())
            .expect("a valid request");
        req.extensions_mut().insert(ConnectInfo(peer));
        let ready = <Router as ServiceExt<Request<Body>>>::ready(app)
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let plain = Router::new().route("/", get(|| async { "Hello, World!" }));
    let policy = Policy::new(Algorithm::Gcra, 1_000_000_000, Duration::from_secs(1))?;
    let layer = RateLimitLayer::builder(MemoryStore::new())
        .key(Key::header("x-key"))
        .policy("bench", policy)
        .build()?;
    let layered = plain.clone().layer(layer);

    let one = vec!["hot-key".to_owned()];
    // 100k keys in a fixed scrambled order (multiplication by an odd constant
    // permutes 0..2^17; the first 100k of it are kept).
    let many: Vec<String> = (0u32..1 << 17)
        .map(|i| i.wrapping_mul(0x9E37_79B1) & ((1 << 17) - 1))
        .filter(|&i| i < 100_000)
        .map(|i| format!("key-{i}"))
        .collect();

    let mut results: Vec<(&str, Vec<f64>)> =
        vec![("plain", vec![]), ("one-key", vec![]), ("100k", vec![])];
    for _ in 0..ROUNDS {
        results[0]
            .1
            .push(ns_per_request(&mut plain.clone(), &one).await);
        results[1]
            .1
            .push(ns_per_request(&mut layered.clone(), &one).await);
        results[2]
            .1
            .push(ns_per_request(&mut layered.clone(), &many).await);
    }
    let base = median(results[0].1.clone());
    for (name, v) in &results {
        let m = median(v.clone());
        println!(
            "{name:8} median {m:7.0} ns/request   +{:5.0} ns   x{:.3}",
            m - base,
            m / base
        );
    }
    Ok(())
}
