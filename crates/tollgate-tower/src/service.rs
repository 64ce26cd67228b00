//! [`RateLimit`]: the service that decides, delays, answers 429 or passes on.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use http::{Request, Response, StatusCode};
use http_body_util::Either;
use tollgate::{Nanos, Store};
use tower_service::Service;

use crate::decide::{self, Decided, Fallback, Fields, Prepared};
use crate::future::{RateLimitBody, ResponseFuture, own};
use crate::layer::Shared;
use crate::response;

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
        let (parts, body) = req.into_parts();
        if self.shared.count_if.is_none()
            && let Some(decided) = decide::at_once(&self.shared, &parts)
        {
            // The memory store: decided already, no future to keep.
            return self.answer(decided, Request::from_parts(parts, body));
        }
        let shared = Arc::clone(&self.shared);
        let prepared = match decide::prepare(&shared, &parts) {
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

        // Ask the store, and look once whether it has answered already (a store
        // that answers at once has; a networked store has not). Polling with a
        // waker that does nothing is allowed: a pending future keeps the waker of
        // its latest poll, which will be the response future's. Only inside a
        // runtime: a networked store's first poll may need its reactor, and `call`
        // may be made outside one (its future then runs inside).
        let mut decision: Pin<Box<dyn Future<Output = Decided> + Send>> =
            Box::pin(decide::decide_owned(Arc::clone(&shared), prepared));
        let now = if tokio::runtime::Handle::try_current().is_ok() {
            decision
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
        } else {
            Poll::Pending
        };
        match now {
            Poll::Ready(decided) => self.answer(decided, req),
            Poll::Pending => {
                let inner = self.take_ready();
                ResponseFuture::boxed(decided_later(decision, inner, req))
            }
        }
    }
}

impl<S, I: Clone> RateLimit<S, I> {
    /// The response future for a request decided inside `call`.
    #[inline(always)]
    fn answer<ReqBody, ResBody>(
        &mut self,
        decided: Decided,
        req: Request<ReqBody>,
    ) -> ResponseFuture<I::Future, ResBody, I::Error>
    where
        I: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
        I::Future: Send + 'static,
        I::Error: Send + 'static,
        ReqBody: Send + 'static,
        ResBody: Send + 'static,
    {
        match decided {
            Decided::Admit { fields, delay } if delay == Nanos::ZERO => {
                ResponseFuture::inner(self.inner.call(req), Some(fields))
            }
            Decided::Refuse(refusal) => ResponseFuture::ready(*refusal),
            Decided::Pass => ResponseFuture::inner(self.inner.call(req), None),
            Decided::Admit { fields, delay } => {
                let inner = self.take_ready();
                ResponseFuture::boxed(delayed(inner, req, fields, delay))
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
        Decided::Refuse(refusal) => return Ok(own(*refusal)),
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
    let uncounted_fields = match decide::decide(&shared, &prepared, false).await {
        Decided::Admit { fields, .. } => fields,
        Decided::Refuse(response) => return Ok(own(*response)),
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
    let checks = decide::checks(&shared, &prepared, false);
    let verdict = match shared.store.check(&checks).await {
        Ok(verdict) => Some(verdict),
        Err(error) => match decide::fallback(&shared, &error, &prepared, true) {
            Fallback::Decided(verdict) => Some(verdict),
            Fallback::Pass | Fallback::Unavailable => None,
        },
    };
    if let Some(verdict) = verdict {
        Fields::new(&shared, &verdict.decisions, &verdict.decision).write(response.headers_mut());
    }
    Ok(response.map(Either::Left))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;

    use tollgate::{Algorithm, Check, CheckError, ManualClock, MemoryStore, Policy, Verdict};
    use tower::{Service, ServiceExt};

    use super::*;
    use crate::RateLimitLayer;

    /// `call` made outside a runtime, its future run inside one. The memory store
    /// decides inside `call` (it needs no runtime); see the next test for a store
    /// that is not polled in `call` there.
    /// A service answering "hi" behind a layer over `store`: one GCRA policy of one
    /// request per 10 s, one global key.
    fn one_a_time<S: Store + 'static>(
        store: S,
    ) -> impl Service<
        Request<()>,
        Response = Response<crate::RateLimitBody<Full<Bytes>>>,
        Error = Infallible,
    > {
        let policy = Policy::new(Algorithm::Gcra, 1, Duration::from_secs(10)).expect("policy");
        let layer = RateLimitLayer::builder(store)
            .policy("p", policy)
            .key(crate::Key::global())
            .build()
            .expect("layer");
        tower_layer::Layer::layer(
            &layer,
            tower::service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hi"))))
            }),
        )
    }

    #[test]
    fn call_outside_a_runtime() {
        let mut service = one_a_time(MemoryStore::with_clock(ManualClock::default()));
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

    /// A store other than the memory store, answering at once too.
    struct Other(MemoryStore<ManualClock>);

    impl Store for Other {
        type Error = CheckError;

        fn check(
            &self,
            checks: &[Check<'_>],
        ) -> impl Future<Output = Result<Verdict, CheckError>> + Send {
            self.0.check(checks)
        }

        fn peek(
            &self,
            checks: &[Check<'_>],
        ) -> impl Future<Output = Result<Verdict, CheckError>> + Send {
            self.0.peek(checks)
        }

        fn reset(&self, key: &str) -> impl Future<Output = Result<(), CheckError>> + Send {
            self.0.reset(key)
        }
    }

    /// `call` made outside a runtime with a store that is not the memory store: the
    /// store is not polled in `call` (a networked store might need its reactor
    /// there) but in the future, inside the runtime.
    #[test]
    fn call_outside_a_runtime_other_store() {
        let mut service = one_a_time(Other(MemoryStore::with_clock(ManualClock::default())));
        let first = service.call(Request::new(()));
        let second = service.call(Request::new(()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        // Polled in the other order: the store decides when polled, not in `call`.
        let second = rt.block_on(second).expect("infallible");
        let first = rt.block_on(first).expect("infallible");
        assert_eq!(second.status(), StatusCode::OK);
        assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    }
}
