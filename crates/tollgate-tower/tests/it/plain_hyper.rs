//! The layer under plain hyper (no axum): the peer comes from a `SocketAddr`
//! request extension the server inserts per connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tollgate::{Algorithm, ManualClock, MemoryStore, Nanos};
use tollgate_tower::RateLimitLayer;
use tower::ServiceBuilder;

use crate::common::{get, policy};

async fn hello(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
}

#[tokio::test]
async fn plain_hyper_server() {
    let clock = ManualClock::new(Nanos::from_secs(1_000_000));
    let layer = RateLimitLayer::builder(MemoryStore::with_clock(clock))
        .policy("p", policy(Algorithm::Gcra, 1, Duration::from_secs(5)))
        .build()
        .expect("a valid layer");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let service = ServiceBuilder::new()
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert::<SocketAddr>(peer);
                    req
                })
                .layer(layer.clone())
                .service_fn(hello);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                    .await;
            });
        }
    });

    let ok = get(addr).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body, "hello");
    assert_eq!(ok.header("ratelimit"), Some(r#""p";r=0;t=5"#));
    let denied = get(addr).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.header("retry-after"), Some("5"));
}
