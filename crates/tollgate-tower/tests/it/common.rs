//! A real server on a real socket, and a real HTTP client.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate::{Algorithm, Policy};

/// A test app: `GET /` answers "hello".
pub fn hello() -> Router {
    Router::new().route("/", routing::get(|| async { "hello" }))
}

/// Serves `app` on `bind` (port 0) with axum's `ConnectInfo<SocketAddr>`; the
/// server task ends with the test's runtime.
pub async fn serve_on(bind: &str, app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    addr
}

/// Serves `app` on 127.0.0.1.
pub async fn serve(app: Router) -> SocketAddr {
    serve_on("127.0.0.1:0", app).await
}

/// Serves `app` without `ConnectInfo`: the layer cannot know the peer.
pub async fn serve_without_peer(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service()).await;
    });
    addr
}

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// One header as text; `None` when absent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

/// `GET http://addr/path` with `headers`, over a fresh client.
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let host = match addr {
        SocketAddr::V4(a) => format!("{a}"),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    let mut req = Request::get(format!("http://{host}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::new()).expect("a valid request");
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("an answer within 10 s")
        .expect("an HTTP answer");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).expect("a UTF-8 body"),
    }
}

/// `GET http://addr/`.
pub async fn get(addr: SocketAddr) -> Reply {
    get_with(addr, "/", &[]).await
}

/// A policy, or the test stops.
pub fn policy(algorithm: Algorithm, limit: u32, period: Duration) -> Policy {
    Policy::new(algorithm, limit, period).expect("a valid policy")
}

/// A store that answers only after yielding to the runtime once, as a networked
/// store does: it drives the layer's path for decisions that are not ready at
/// once. Decisions are the wrapped store's.
#[derive(Debug)]
pub struct Waiting<S>(pub S);

impl<S: tollgate::Store> tollgate::Store for Waiting<S> {
    type Error = S::Error;

    async fn check(&self, checks: &[tollgate::Check<'_>]) -> Result<tollgate::Verdict, S::Error> {
        tokio::task::yield_now().await;
        self.0.check(checks).await
    }

    async fn peek(&self, checks: &[tollgate::Check<'_>]) -> Result<tollgate::Verdict, S::Error> {
        tokio::task::yield_now().await;
        self.0.peek(checks).await
    }

    async fn reset(&self, key: &str) -> Result<(), S::Error> {
        tokio::task::yield_now().await;
        self.0.reset(key).await
    }
}

/// The Redis the Redis-store variants use: `TOLLGATE_TEST_REDIS_URL`, else the
/// local default (the Redis store's own tests read the same variable).
pub fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A key prefix no other test or run uses.
fn redis_prefix(test: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "tgtower:{test}:{}:{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn connect(
    builder: tollgate_redis::RedisStoreBuilder,
    url: &str,
) -> tollgate_redis::RedisStore {
    builder.connect().await.unwrap_or_else(|e| {
        panic!(
            "no Redis answers at {url} ({e}). The Redis-store variants need a real Redis: \
             start one with `redis-server --save '' --appendonly no` (or `bash .ci/run`, \
             which starts it), or point TOLLGATE_TEST_REDIS_URL at one"
        )
    })
}

/// A Redis store deciding at the instants of `clock`, so time is the test's.
pub async fn redis_at(test: &str, clock: tollgate::ManualClock) -> tollgate_redis::RedisStore {
    let url = redis_url();
    let builder = tollgate_redis::RedisStore::builder(url.clone())
        .key_prefix(redis_prefix(test))
        .timeout(Duration::from_secs(5))
        .caller_clock(clock)
        .caller_clock_ttl(Duration::from_secs(300));
    connect(builder, &url).await
}

/// A Redis store on Redis `TIME`.
pub async fn redis_time(test: &str) -> tollgate_redis::RedisStore {
    let url = redis_url();
    let builder = tollgate_redis::RedisStore::builder(url.clone())
        .key_prefix(redis_prefix(test))
        .timeout(Duration::from_secs(5));
    connect(builder, &url).await
}
