//! tower and axum middleware for tollgate.
//!
//! [`RateLimitLayer`] wraps any service from `http::Request<B>` to
//! `http::Response<B2>` (axum routers and handlers, hyper services, tonic-style
//! services) and rate-limits it with one or more tollgate policies over any
//! [`tollgate::Store`]: the in-process `MemoryStore`, or the Redis store for a
//! fleet. The layer does not know which.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tollgate::{Algorithm, MemoryStore, Policy};
//! use tollgate_tower::{Key, RateLimitLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let per_client = Policy::new(Algorithm::Gcra, 10, Duration::from_secs(1))?;
//! let global = Policy::new(Algorithm::Gcra, 1000, Duration::from_secs(1))?;
//! let layer = RateLimitLayer::builder(MemoryStore::new())
//!     .policy("per-client", per_client)                   // keyed by peer IP
//!     .policy_keyed("global", global, Key::global())      // one count for all
//!     .build()?;
//!
//! let app = Router::new().route("/", get(|| async { "hello" })).layer(layer);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! # What a client sees
//!
//! Every response carries the fields of draft-ietf-httpapi-ratelimit-headers-10,
//! one item per policy, in the order the policies were added:
//!
//! ```text
//! RateLimit-Policy: "per-client";q=10;w=1, "global";q=1000;w=1
//! RateLimit: "per-client";r=9;t=1, "global";r=999;t=1
//! ```
//!
//! `q` is the policy's limit and `w` its period in whole seconds (rounded up); `r`
//! is what remains for this client, and `t` the seconds (rounded up) until more
//! quota is available: for a policy that denied, until this same request would
//! pass; for one that admits, until its state is fresh again.
//!
//! A denied request is answered `429 Too Many Requests` with `Retry-After` (the
//! largest `t` of the policies that denied) and an `application/problem+json`
//! body using the draft's `quota-exceeded` problem type, the `violated-policies`
//! member, and the seed service's `"message": "Rate limit exceeded. Try again
//! later."`. A request whose cost can never be admitted gets the 429 without
//! `Retry-After`. [`RateLimitBuilder::deny_response`] replaces the body.
//!
//! # Keys
//!
//! The store sees `"<policy name>:<client key>"`; [`Key`] says where the client
//! key comes from (peer IP, client IP behind trusted proxies with IPv6 grouped by
//! /64, a header, the seed's `<ip>_<user agent>`, one global key, any closure). A
//! request without a key is answered `400` (problem+json naming what is missing)
//! unless the key has a [`fallback`](Key::fallback); one longer than
//! [`max_key_len`](RateLimitBuilder::max_key_len) (256 bytes by default) gets `400`
//! too.
//!
//! # Stacked policies, delays, failures
//!
//! All the layer's policies are checked in one stacked check: all or nothing, as
//! `ALGORITHMS.md` says. A `leaky_bucket` admission with a `delay` waits on a tokio
//! timer inside the response future (no thread is held) before the inner service
//! is called. When the store fails, [`OnError`] says what happens: `deny` (503,
//! the default), `allow`, or `local` (an in-process limiter decides, with
//! `limit / nodes` when the fleet has `nodes` nodes). Failures are logged with
//! `tracing` at `warn`.
//!
//! # Counting only some responses
//!
//! [`RateLimitBuilder::count_if`] counts a request only when the inner service's
//! status satisfies a predicate (only `401`s, to throttle failed logins). It peeks
//! first (a request the policies would deny gets the 429), and consumes after the
//! response: requests in flight together are not counted against each other, so
//! this mode is not atomic.
//!
//! # Bodies and futures
//!
//! The layer's response body is [`RateLimitBody<B>`](RateLimitBody), an
//! `http_body_util::Either` of the inner body and the layer's own `Full<Bytes>`:
//! no conversion is asked of the inner service's body type. When the store
//! answers at once (the memory store always does), the decision is made inside
//! `Service::call` and the [`ResponseFuture`] is the inner service's own future;
//! a store that must wait, a delay or `count_if` take a boxed future. The memory
//! store (on the system clock or a `ManualClock`) is asked directly, without a
//! future, with the store keys built in per-thread strings reused from request to
//! request.
//!
//! # Requirements
//!
//! The response future runs on tokio (for the `leaky_bucket` timer). With the
//! `axum` feature (on by default) the peer address is read from axum's
//! `ConnectInfo<SocketAddr>`; with or without it, from a `SocketAddr` or `IpAddr`
//! request extension.

mod decide;
mod error;
mod forwarded;
mod future;
mod key;
mod layer;
mod response;
mod service;

pub use error::BuildError;
pub use forwarded::ProxyHeader;
pub use future::{RateLimitBody, ResponseFuture};
pub use ipnet::IpNet;
pub use key::{ClientIp, DEFAULT_IPV6_PREFIX, Key, MAX_AGENT_LEN};
pub use layer::{DEFAULT_MAX_KEY_LEN, OnError, RateLimitBuilder, RateLimitLayer};
pub use response::{
    Denied, QUOTA_EXCEEDED_TYPE, RATELIMIT, RATELIMIT_POLICY, SEED_MESSAGE, X_RATELIMIT_LIMIT,
    X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
};
pub use service::RateLimit;
