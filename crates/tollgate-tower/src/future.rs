//! [`ResponseFuture`] and [`RateLimitBody`]: what a [`RateLimit`](crate::RateLimit)
//! service returns.

use std::fmt;
use std::future::{Future, Ready};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Response;
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;

use crate::decide::Fields;

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
    pub(crate) fn inner(future: F, fields: Option<Fields>) -> Self {
        ResponseFuture {
            kind: Kind::Inner { future, fields },
        }
    }

    pub(crate) fn ready(response: Response<Full<Bytes>>) -> Self {
        ResponseFuture {
            kind: Kind::Ready {
                ready: std::future::ready(Ok(own(response))),
            },
        }
    }

    pub(crate) fn boxed(
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

/// The layer's own response, in the layer's body type.
pub(crate) fn own<B>(response: Response<Full<Bytes>>) -> Response<RateLimitBody<B>> {
    response.map(Either::Right)
}
