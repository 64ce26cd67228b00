//! The server side of `benches/wrk.sh`: an axum hello-world, with or without the
//! rate-limit layer.
//!
//! ```text
//! bench_server plain 3101    # no layer
//! bench_server noop 3103     # a layer that does nothing (what any axum layer costs)
//! bench_server layer 3102    # the layer: one GCRA policy keyed by the x-key header
//! ```
//!
//! The policy admits a billion requests per second, so nothing is denied: the
//! benchmark measures the cost of deciding and writing the headers, not of 429s.
//! `THREADS` sets the runtime's worker threads (default 1, leaving a core to wrk).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tollgate::{Algorithm, MemoryStore, Policy};
use tollgate_tower::{Key, RateLimitLayer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "layer".to_owned());
    let port: u16 = args.next().as_deref().unwrap_or("3102").parse()?;
    let threads: usize = std::env::var("THREADS").as_deref().unwrap_or("1").parse()?;

    let app = Router::new().route("/", get(|| async { "Hello, World!" }));
    let app = match mode.as_str() {
        "plain" => app,
        "noop" => app.layer(tower::util::MapRequestLayer::new(
            |r: axum::extract::Request| r,
        )),
        "layer" => {
            let policy = Policy::new(Algorithm::Gcra, 1_000_000_000, Duration::from_secs(1))?;
            let layer = RateLimitLayer::builder(MemoryStore::new())
                .key(Key::header("x-key"))
                .policy("bench", policy)
                .build()?;
            app.layer(layer)
        }
        other => {
            return Err(format!("unknown mode {other:?}: expected plain, noop or layer").into());
        }
    };

    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await?;
            Ok(())
        })
}
