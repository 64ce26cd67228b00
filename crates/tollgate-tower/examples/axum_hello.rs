//! An axum hello-world behind tollgate, with the seed service's two stacked
//! policies: per client (peer IP and user agent) 1 request per 15 s, and 15 per
//! 15 s for everyone together.
//!
//! ```text
//! cargo run -p tollgate-tower --example axum_hello
//! curl -i http://127.0.0.1:3000/     # 200, with RateLimit-Policy and RateLimit
//! curl -i http://127.0.0.1:3000/     # 429, Retry-After and a problem+json body
//! ```
//!
//! `PORT` sets the port (default 3000).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tollgate::{Algorithm, MemoryStore, Policy};
use tollgate_tower::{Key, RateLimitLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let per_client = Policy::new(Algorithm::TokenBucket, 1, Duration::from_secs(15))?;
    let global = Policy::new(Algorithm::TokenBucket, 15, Duration::from_secs(15))?;
    let layer = RateLimitLayer::builder(MemoryStore::new())
        .key(Key::client())
        .policy("per-client", per_client)
        .policy_keyed("global", global, Key::global())
        .build()?;

    let app = Router::new()
        .route("/", get(|| async { "hello from behind tollgate\n" }))
        .layer(layer);

    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| format!("invalid PORT {p:?}: expected a port number"))?,
        Err(_) => 3000,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
