//! The server side of `benches/wrk.sh`: an axum hello-world, with or without the
//! rate-limit layer.
//!
//! ```text
//! bench_server plain 3101    # no layer
//! bench_server noop 3103     # a layer that does nothing (what any axum layer costs)
//! bench_server layer 3102    # the layer: one GCRA policy keyed by the x-key header
//! bench_server outer 3104    # the same layer around the whole router
//! ```
//!
//! `noop` and `layer` go through `Router::layer`, as the README shows; `outer` wraps
//! the router itself (`layer.layer(router)`, served with
//! `axum::ServiceExt::into_make_service_with_connect_info`), which spares the
//! per-route boxing `Router::layer` adds to every request.
//!
//! The policy admits a billion requests per second, so nothing is denied: the
//! benchmark measures the cost of deciding and writing the headers, not of 429s.
//! `THREADS` sets the runtime's worker threads (default 1, leaving a core to wrk).
//! Every mode runs the same runtime, listener and connection settings.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use axum::routing::get;
use tollgate::{Algorithm, MemoryStore, Policy};
use tollgate_tower::{Key, RateLimitLayer};
use tower::{Layer, ServiceBuilder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "layer".to_owned());
    let port: u16 = args.next().as_deref().unwrap_or("3102").parse()?;
    let threads: usize = std::env::var("THREADS").as_deref().unwrap_or("1").parse()?;

    let app = Router::new().route("/", get(|| async { "Hello, World!" }));
    let policy = Policy::new(Algorithm::Gcra, 1_000_000_000, Duration::from_secs(1))?;
    let layer = RateLimitLayer::builder(MemoryStore::new())
        .key(Key::header("x-key"))
        .policy("bench", policy)
        .build()?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        match mode.as_str() {
            "plain" | "noop" | "layer" => {
                let app = match mode.as_str() {
                    "noop" => app.layer(tower::util::MapRequestLayer::new(|r: Request| r)),
                    "layer" => app.layer(layer),
                    _ => app,
                };
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .await?;
            }
            "outer" => {
                // axum::serve wants axum's `Response` (a boxed body), as a route's
                // answer is made by `Router::layer`.
                let service = ServiceBuilder::new()
                    .map_response(IntoResponse::into_response)
                    .service(layer.layer(app.with_state(())));
                axum::serve(
                    listener,
                    axum::ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(
                        service,
                    ),
                )
                .await?;
            }
            other => {
                return Err(format!(
                    "unknown mode {other:?}: expected plain, noop, layer or outer"
                )
                .into());
            }
        }
        Ok(())
    })
}
