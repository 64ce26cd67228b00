//! [`RateLimit`]: the service that decides, delays, answers 429 or passes on.

use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use smallvec::SmallVec;
use tollgate::{Check, Nanos, Store, Verdict};
use tower_service::Service;

use crate::layer::{Mode, Shared};
use crate::response::{self, Denied, RATELIMIT, RATELIMIT_POLICY};

/// The response body of a rate-limited service: the inner service's body when it
/// answered, or the layer's own (a 429, 400 or 503 problem+json).
///
/// It is a [`http_body::Body`] whenever the inner body is one with `Bytes` data,
/// so axum's `Router::layer`, hyper's `serve_connection` and tonic-style services
/// accept it without conversion.
pub type RateLimitBody<B> = Either<B, Full<Bytes>>;

/// The future a [`RateLimit`] service returns.
pub type ResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<RateLimitBody<B>>, E>> + Send + 'static>>;

/// Rate-limits the requests to `I` with the policies of a
/// [`RateLimitLayer`](crate::RateLimitLayer).
///
/// Each request is checked against every policy under its key, all or nothing.
/// Admitted requests (after their `leaky_bucket` delay, if any) go to the inner
/// service; every answer carries the `RateLimit-Policy` and `RateLimit` fields.
/// Denied requests get a 429 without reaching the inner service.
pub struct RateLimit<S, I> {
    inner: I,
    shared: Arc<Shared<S>>,
}

impl<S, I: Clone> Clone for RateLimit<S, I> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, I: fmt::Debug> fmt::Debug for RateLimit<S, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("layer", &self.shared)
            .finish()
    }
}

impl<S, I> RateLimit<S, I> {
    pub(crate) fn from_shared(inner: I, shared: Arc<Shared<S>>) -> Self {
        RateLimit { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut I {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> I {
        self.inner
    }
}

impl<S, I, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, I>
where
    S: Store + 'static,
    I: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    I::Future: Send + 'static,
    I::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<RateLimitBody<ResBody>>;
    type Error = I::Error;
    type Future = ResponseFuture<ResBody, I::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The instance that was polled ready serves this request; its clone stays.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(handle(Arc::clone(&self.shared), inner, req))
    }
}

/// What the layer does instead of a verdict when the store failed.
// A short-lived stack value: boxing the verdict would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
enum Fallback {
    Decided(Verdict),
    Pass,
    Unavailable,
}

async fn handle<S, I, ReqBody, ResBody>(
    shared: Arc<Shared<S>>,
    mut inner: I,
    req: Request<ReqBody>,
) -> Result<Response<RateLimitBody<ResBody>>, I::Error>
where
    S: Store,
    I: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let (parts, body) = req.into_parts();
    let mut client_keys: SmallVec<[String; 2]> = SmallVec::new();
    for key in shared.keys.iter() {
        match key.extract(&parts) {
            Ok(k) if k.len() <= shared.max_key_len => client_keys.push(k),
            Ok(k) => {
                let detail = format!(
                    "the rate-limit key is {} bytes long; at most {} are accepted",
                    k.len(),
                    shared.max_key_len
                );
                return Ok(own(response::plain_problem(
                    StatusCode::BAD_REQUEST,
                    &detail,
                )));
            }
            Err(missing) => {
                let detail = missing.to_string();
                return Ok(own(response::plain_problem(
                    StatusCode::BAD_REQUEST,
                    &detail,
                )));
            }
        }
    }
    let cost = shared.cost.as_ref().map_or(NonZeroU32::MIN, |f| f(&parts));
    let req = Request::from_parts(parts, body);

    let store_keys: SmallVec<[String; 4]> = shared
        .policies
        .iter()
        .map(|p| {
            let client = client_keys.get(p.key).map_or("", String::as_str);
            let mut k = String::with_capacity(p.name.len() + 1 + client.len());
            k.push_str(&p.name);
            k.push(':');
            k.push_str(client);
            k
        })
        .collect();
    let checks: SmallVec<[Check<'_>; 4]> = shared
        .policies
        .iter()
        .zip(&store_keys)
        .map(|(p, k)| Check::new(k, &p.policy).cost(cost))
        .collect();

    // With count_if, look first and count after the response.
    let consume_now = shared.count_if.is_none();
    let first = if consume_now {
        shared.store.check(&checks).await
    } else {
        shared.store.peek(&checks).await
    };
    let verdict = match first {
        Ok(verdict) => verdict,
        Err(error) => match fallback(&shared, &error, &store_keys, cost, consume_now) {
            Fallback::Decided(verdict) => verdict,
            Fallback::Pass => {
                let response = inner.call(req).await?;
                return Ok(response.map(Either::Left));
            }
            Fallback::Unavailable => {
                return Ok(own(response::plain_problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the rate limiter cannot decide now; try again shortly",
                )));
            }
        },
    };

    if !verdict.allowed() {
        return Ok(denied(&shared, &verdict, cost));
    }
    let delay = verdict.decision.delay;
    if delay > Nanos::ZERO {
        // A timer, not a thread: the task is parked until the queue's turn comes.
        tokio::time::sleep(delay.into()).await;
    }

    let mut response = inner.call(req).await?;

    let verdict = match &shared.count_if {
        None => Some(verdict),
        Some(counts) if counts(response.status()) => match shared.store.check(&checks).await {
            Ok(verdict) => Some(verdict),
            Err(error) => match fallback(&shared, &error, &store_keys, cost, true) {
                Fallback::Decided(verdict) => Some(verdict),
                Fallback::Pass | Fallback::Unavailable => None,
            },
        },
        Some(_) => Some(uncounted(verdict, cost)),
    };
    if let Some(verdict) = verdict {
        write_fields(&shared, response.headers_mut(), &verdict);
    }
    Ok(response.map(Either::Left))
}

/// The fields of a response that was not counted. The peek answered what would
/// remain had the request been counted; nothing was, so each policy holds `cost`
/// more (exact for every algorithm: `remaining` falls by exactly the cost on an
/// admission). `reset_after` stays the peek's, an upper bound.
fn uncounted(mut verdict: Verdict, cost: NonZeroU32) -> Verdict {
    for d in verdict
        .decisions
        .iter_mut()
        .chain(Some(&mut verdict.decision))
    {
        d.remaining = d.remaining.saturating_add(u64::from(cost.get()));
    }
    verdict
}

fn own<B>(response: Response<Full<Bytes>>) -> Response<RateLimitBody<B>> {
    response.map(Either::Right)
}

fn fallback<S, E: std::error::Error>(
    shared: &Shared<S>,
    error: &E,
    keys: &[String],
    cost: NonZeroU32,
    consume: bool,
) -> Fallback {
    match &shared.on_error {
        Mode::Deny => {
            tracing::warn!(%error, on_error = "deny", "rate-limit store failed; answering 503");
            Fallback::Unavailable
        }
        Mode::Allow => {
            tracing::warn!(%error, on_error = "allow", "rate-limit store failed; letting the request through");
            Fallback::Pass
        }
        Mode::Local { store, .. } => {
            tracing::warn!(%error, on_error = "local", "rate-limit store failed; deciding locally");
            let checks: SmallVec<[Check<'_>; 4]> = shared
                .policies
                .iter()
                .zip(keys)
                .map(|(p, k)| Check::new(k, &p.local).cost(cost))
                .collect();
            match store.decide(&checks, consume) {
                Ok(verdict) => Fallback::Decided(verdict),
                Err(local) => {
                    tracing::warn!(%local, "local rate limiter failed too; answering 503");
                    Fallback::Unavailable
                }
            }
        }
    }
}

fn denied<S, B>(
    shared: &Shared<S>,
    verdict: &Verdict,
    cost: NonZeroU32,
) -> Response<RateLimitBody<B>> {
    let names: SmallVec<[&str; 4]> = shared.policies.iter().map(|p| &*p.name).collect();
    let retry_after = response::retry_after(verdict);
    let denied = Denied {
        verdict,
        names: &names,
        retry_after,
        cost: cost.get(),
    };
    let mut response = match &shared.deny {
        Some(f) => f(&denied),
        None => response::too_many_requests(&denied),
    };
    write_fields(shared, response.headers_mut(), verdict);
    if let Some(secs) = retry_after {
        response::set_retry_after(response.headers_mut(), secs);
    }
    own(response)
}

/// Appends `RateLimit-Policy` and `RateLimit` (appended, so an outer layer's items
/// and ours form one list, as the draft allows), and the legacy fields if asked.
fn write_fields<S>(shared: &Shared<S>, headers: &mut HeaderMap, verdict: &Verdict) {
    if let Some(policy) = &shared.policy_header {
        headers.append(RATELIMIT_POLICY, policy.clone());
    }
    let items = shared
        .policies
        .iter()
        .zip(&verdict.decisions)
        .map(|(p, d)| (&*p.name, d));
    if let Some(value) = response::ratelimit_field(items) {
        headers.append(RATELIMIT, value);
    }
    if shared.legacy_headers {
        response::legacy_fields(headers, &verdict.decision);
    }
}
