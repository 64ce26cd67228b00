//! [`RateLimit`]: the service that decides, delays, answers 429 or passes on.

use std::fmt;
use std::future::{Future, Ready};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use smallvec::SmallVec;
use tollgate::{Check, Decision, Nanos, Store, Verdict};
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

pin_project! {
    /// The future a [`RateLimit`] service returns.
    ///
    /// When the store answers at once (the memory store always does), the decision
    /// is made inside `call` and this future is the inner service's own future,
    /// adding the fields when it completes: no boxing of the inner call and no
    /// clone of the inner service. A store that must wait (a network round trip),
    /// a `leaky_bucket` delay and `count_if` take a boxed path.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

type BoxedResponse<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<RateLimitBody<B>>, E>> + Send + 'static>>;

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Inner {
            #[pin]
            future: F,
            fields: Option<Fields>,
        },
        Ready {
            ready: Ready<Result<Response<RateLimitBody<B>>, E>>,
        },
        Boxed {
            future: BoxedResponse<B, E>,
        },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    fn inner(future: F, fields: Option<Fields>) -> Self {
        ResponseFuture {
            kind: Kind::Inner { future, fields },
        }
    }

    fn ready(response: Response<Full<Bytes>>) -> Self {
        ResponseFuture {
            kind: Kind::Ready {
                ready: std::future::ready(Ok(own(response))),
            },
        }
    }

    fn boxed(
        future: impl Future<Output = Result<Response<RateLimitBody<B>>, E>> + Send + 'static,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Boxed {
                future: Box::pin(future),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<RateLimitBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future, fields } => {
                let mut response = ready!(future.poll(cx))?;
                if let Some(fields) = fields.take() {
                    fields.write(response.headers_mut());
                }
                Poll::Ready(Ok(response.map(Either::Left)))
            }
            KindProj::Ready { ready } => Pin::new(ready).poll(cx),
            KindProj::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

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
    type Future = ResponseFuture<I::Future, ResBody, I::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let (parts, body) = req.into_parts();
        let prepared = match prepare(&shared, &parts) {
            Ok(prepared) => prepared,
            Err(detail) => {
                return ResponseFuture::ready(response::plain_problem(
                    StatusCode::BAD_REQUEST,
                    &detail,
                ));
            }
        };
        let req = Request::from_parts(parts, body);
        if shared.count_if.is_some() {
            let inner = self.take_ready();
            return ResponseFuture::boxed(count_after(shared, inner, req, prepared));
        }

        // Ask the store, and look once whether it has answered already (the memory
        // store always has; a networked store has not). Polling with a waker that
        // does nothing is allowed: a pending future keeps the waker of its latest
        // poll, which will be the response future's. Only inside a runtime: a
        // networked store's first poll may need its reactor, and `call` may be made
        // outside one (its future then runs inside).
        let mut decision: Pin<Box<dyn Future<Output = Decided> + Send>> =
            Box::pin(decide_owned(Arc::clone(&shared), prepared));
        let now = if tokio::runtime::Handle::try_current().is_ok() {
            decision
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
        } else {
            Poll::Pending
        };
        match now {
            Poll::Ready(Decided::Admit { fields, delay }) if delay == Nanos::ZERO => {
                ResponseFuture::inner(self.inner.call(req), Some(fields))
            }
            Poll::Ready(Decided::Refuse(refusal)) => ResponseFuture::ready(refusal),
            Poll::Ready(Decided::Pass) => ResponseFuture::inner(self.inner.call(req), None),
            Poll::Ready(Decided::Admit { fields, delay }) => {
                let inner = self.take_ready();
                ResponseFuture::boxed(delayed(inner, req, fields, delay))
            }
            Poll::Pending => {
                let inner = self.take_ready();
                ResponseFuture::boxed(decided_later(decision, inner, req))
            }
        }
    }
}

impl<S, I: Clone> RateLimit<S, I> {
    /// The inner service that was polled ready, leaving a clone in its place, for
    /// a response future that calls it later.
    fn take_ready(&mut self) -> I {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

/// A request's store keys (`"<policy>:<client>"`, one per policy) and cost.
struct Prepared {
    keys: SmallVec<[String; 2]>,
    cost: NonZeroU32,
}

/// Finds the request's keys and cost, or says why the request has no usable key.
fn prepare<S>(shared: &Shared<S>, parts: &Parts) -> Result<Prepared, String> {
    let cost = shared.cost.as_ref().map_or(NonZeroU32::MIN, |f| f(parts));
    if let ([policy], [key]) = (&*shared.policies, &*shared.keys) {
        // One policy: extract straight into its store key, one allocation.
        let mut k = String::with_capacity(policy.name.len() + 48);
        k.push_str(&policy.name);
        k.push(':');
        key.extract_into(parts, &mut k)
            .map_err(|missing| missing.to_string())?;
        check_len(k.len() - policy.name.len() - 1, shared.max_key_len)?;
        let mut keys = SmallVec::new();
        keys.push(k);
        return Ok(Prepared { keys, cost });
    }
    let mut clients: SmallVec<[String; 2]> = SmallVec::new();
    for key in shared.keys.iter() {
        let mut client = String::new();
        key.extract_into(parts, &mut client)
            .map_err(|missing| missing.to_string())?;
        check_len(client.len(), shared.max_key_len)?;
        clients.push(client);
    }
    let keys = shared
        .policies
        .iter()
        .map(|p| {
            let client = clients.get(p.key).map_or("", String::as_str);
            let mut k = String::with_capacity(p.name.len() + 1 + client.len());
            k.push_str(&p.name);
            k.push(':');
            k.push_str(client);
            k
        })
        .collect();
    Ok(Prepared { keys, cost })
}

fn check_len(len: usize, max: usize) -> Result<(), String> {
    if len > max {
        return Err(format!(
            "the rate-limit key is {len} bytes long; at most {max} are accepted"
        ));
    }
    Ok(())
}

async fn decide_owned<S: Store>(shared: Arc<Shared<S>>, prepared: Prepared) -> Decided {
    decide(&shared, &prepared, true).await
}

/// Admitted with a `leaky_bucket` delay: wait it out, then call the inner service.
async fn delayed<I, ReqBody, ResBody>(
    mut inner: I,
    req: Request<ReqBody>,
    fields: Fields,
    delay: Nanos,
) -> Result<Response<RateLimitBody<ResBody>>, I::Error>
where
    I: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    // A timer, not a thread: the task is parked until the queue's turn comes.
    tokio::time::sleep(delay.into()).await;
    let mut response = inner.call(req).await?;
    fields.write(response.headers_mut());
    Ok(response.map(Either::Left))
}

/// The store had not answered inside `call`: wait for it, then as `call` does.
async fn decided_later<I, ReqBody, ResBody>(
    decision: Pin<Box<dyn Future<Output = Decided> + Send>>,
    mut inner: I,
    req: Request<ReqBody>,
) -> Result<Response<RateLimitBody<ResBody>>, I::Error>
where
    I: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let (fields, delay) = match decision.await {
        Decided::Admit { fields, delay } => (Some(fields), delay),
        Decided::Refuse(refusal) => return Ok(own(refusal)),
        Decided::Pass => (None, Nanos::ZERO),
    };
    if delay > Nanos::ZERO {
        tokio::time::sleep(delay.into()).await;
    }
    let mut response = inner.call(req).await?;
    if let Some(fields) = fields {
        fields.write(response.headers_mut());
    }
    Ok(response.map(Either::Left))
}

/// The `count_if` flow: peek, call the inner service, and consume only when the
/// response's status says so.
async fn count_after<S, I, ReqBody, ResBody>(
    shared: Arc<Shared<S>>,
    mut inner: I,
    req: Request<ReqBody>,
    prepared: Prepared,
) -> Result<Response<RateLimitBody<ResBody>>, I::Error>
where
    S: Store,
    I: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let uncounted_fields = match decide(&shared, &prepared, false).await {
        Decided::Admit { fields, .. } => fields,
        Decided::Refuse(response) => return Ok(own(response)),
        Decided::Pass => return Ok(inner.call(req).await?.map(Either::Left)),
    };
    let mut response = inner.call(req).await?;
    let counts = shared
        .count_if
        .as_ref()
        .is_some_and(|counts| counts(response.status()));
    if !counts {
        uncounted_fields.write(response.headers_mut());
        return Ok(response.map(Either::Left));
    }
    let checks = checks(&shared, &prepared, false);
    let verdict = match shared.store.check(&checks).await {
        Ok(verdict) => Some(verdict),
        Err(error) => match fallback(&shared, &error, &prepared, true) {
            Fallback::Decided(verdict) => Some(verdict),
            Fallback::Pass | Fallback::Unavailable => None,
        },
    };
    if let Some(verdict) = verdict {
        Fields::new(&shared, &verdict).write(response.headers_mut());
    }
    Ok(response.map(Either::Left))
}

/// What the store (or the failure mode) decided.
// A short-lived value: boxing the verdict would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
enum Decided {
    /// Every policy admits.
    Admit {
        /// The fields for the response. For a peek (`count_if`), what remains if
        /// this request is not counted.
        fields: Fields,
        /// The `leaky_bucket` wait before the inner service is called.
        delay: Nanos,
    },
    /// A 429 or a 503, ready to send.
    Refuse(Response<Full<Bytes>>),
    /// The store failed and the mode is `allow`.
    Pass,
}

async fn decide<S: Store>(shared: &Shared<S>, prepared: &Prepared, consume: bool) -> Decided {
    let checks = checks(shared, prepared, false);
    let result = if consume {
        shared.store.check(&checks).await
    } else {
        shared.store.peek(&checks).await
    };
    let mut verdict = match result {
        Ok(verdict) => verdict,
        Err(error) => match fallback(shared, &error, prepared, consume) {
            Fallback::Decided(verdict) => verdict,
            Fallback::Pass => return Decided::Pass,
            Fallback::Unavailable => {
                return Decided::Refuse(response::plain_problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the rate limiter cannot decide now; try again shortly",
                ));
            }
        },
    };
    if verdict.allowed() {
        if !consume {
            uncount(&mut verdict, prepared.cost);
        }
        Decided::Admit {
            fields: Fields::new(shared, &verdict),
            delay: verdict.decision.delay,
        }
    } else {
        Decided::Refuse(denied(shared, &verdict, prepared.cost))
    }
}

/// One check per policy: with the shared store's policies, or the local share.
fn checks<'a, S>(
    shared: &'a Shared<S>,
    prepared: &'a Prepared,
    local: bool,
) -> SmallVec<[Check<'a>; 4]> {
    shared
        .policies
        .iter()
        .zip(&prepared.keys)
        .map(|(p, k)| {
            let policy = if local { &p.local } else { &p.policy };
            Check::new(k, policy).cost(prepared.cost)
        })
        .collect()
}

/// What the layer does instead of a verdict when the store failed.
// A short-lived value: boxing the verdict would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
enum Fallback {
    Decided(Verdict),
    Pass,
    Unavailable,
}

fn fallback<S, E: std::error::Error>(
    shared: &Shared<S>,
    error: &E,
    prepared: &Prepared,
    consume: bool,
) -> Fallback {
    match &shared.on_error {
        Mode::Deny => {
            tracing::warn!(%error, on_error = "deny", consume, "rate-limit store failed");
            Fallback::Unavailable
        }
        Mode::Allow => {
            tracing::warn!(%error, on_error = "allow", consume, "rate-limit store failed");
            Fallback::Pass
        }
        Mode::Local { store, .. } => {
            tracing::warn!(%error, on_error = "local", consume, "rate-limit store failed");
            match store.decide(&checks(shared, prepared, true), consume) {
                Ok(verdict) => Fallback::Decided(verdict),
                Err(local) => {
                    tracing::warn!(%local, "the local rate limiter failed too");
                    Fallback::Unavailable
                }
            }
        }
    }
}

/// The fields of a response that was not counted. The peek answered what would
/// remain had the request been counted; nothing was, so each policy holds `cost`
/// more (exact for every algorithm: `remaining` falls by exactly the cost on an
/// admission). `reset_after` stays the peek's, an upper bound.
fn uncount(verdict: &mut Verdict, cost: NonZeroU32) {
    for d in verdict
        .decisions
        .iter_mut()
        .chain(Some(&mut verdict.decision))
    {
        d.remaining = d.remaining.saturating_add(u64::from(cost.get()));
    }
}

fn own<B>(response: Response<Full<Bytes>>) -> Response<RateLimitBody<B>> {
    response.map(Either::Right)
}

fn denied<S>(shared: &Shared<S>, verdict: &Verdict, cost: NonZeroU32) -> Response<Full<Bytes>> {
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
    Fields::new(shared, verdict).write(response.headers_mut());
    if let Some(secs) = retry_after {
        response::set_retry_after(response.headers_mut(), secs);
    }
    response
}

/// The fields one response gets, computed from a verdict so that neither the
/// verdict nor the layer need be kept while the inner service runs.
struct Fields {
    policy: Option<HeaderValue>,
    ratelimit: Option<HeaderValue>,
    legacy: Option<Decision>,
}

impl Fields {
    fn new<S>(shared: &Shared<S>, verdict: &Verdict) -> Self {
        let items = shared
            .policies
            .iter()
            .zip(&verdict.decisions)
            .map(|(p, d)| (&*p.name, d));
        Fields {
            policy: shared.policy_header.clone(),
            ratelimit: response::ratelimit_field(items),
            legacy: shared.legacy_headers.then_some(verdict.decision),
        }
    }

    /// Appends `RateLimit-Policy` and `RateLimit` (appended, so an outer layer's
    /// items and ours form one list, as the draft allows), and the legacy fields
    /// if asked for.
    fn write(self, headers: &mut HeaderMap) {
        if let Some(policy) = self.policy {
            headers.append(RATELIMIT_POLICY, policy);
        }
        if let Some(value) = self.ratelimit {
            headers.append(RATELIMIT, value);
        }
        if let Some(decision) = &self.legacy {
            response::legacy_fields(headers, decision);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use tollgate::{Algorithm, ManualClock, MemoryStore, Policy};
    use tower::{Service, ServiceExt};

    use super::*;
    use crate::RateLimitLayer;

    /// `call` made outside a runtime, its future run inside one: the store is not
    /// polled in `call` (a networked store might need its reactor there).
    #[test]
    fn call_outside_a_runtime() {
        let policy = Policy::new(Algorithm::Gcra, 1, Duration::from_secs(10)).expect("policy");
        let layer = RateLimitLayer::builder(MemoryStore::with_clock(ManualClock::default()))
            .policy("p", policy)
            .key(crate::Key::global())
            .build()
            .expect("layer");
        let mut service = tower_layer::Layer::layer(
            &layer,
            tower::service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hi"))))
            }),
        );
        let first = service.call(Request::new(()));
        let second = service.call(Request::new(()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let first = rt.block_on(first).expect("infallible");
        let second = rt.block_on(second).expect("infallible");
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
        // And inside a runtime, the same answers by the ready path.
        let third = rt.block_on(async { service.ready().await?.call(Request::new(())).await });
        assert_eq!(
            third.expect("infallible").status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
}
