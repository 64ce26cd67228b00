//! The gRPC listener's services: `envoy.service.ratelimit.v3.RateLimitService` and
//! the standard gRPC health service, told apart by path ([`GrpcRoutes`]).
//!
//! `ShouldRateLimit`, the one call Envoy makes for every request it forwards, is
//! answered by [`unary`]: the request's one length-prefixed message is read and
//! decoded with prost, [`RateLimiter::decide`] decides it, and the answer goes back
//! as one message and the `grpc-status` trailer. Every other path (the health
//! service, an unknown method, a request this path does not take) goes to tonic's
//! generated services. The short path skips tonic's streaming codec and its
//! per-call buffers, which cost more than the decision; it answers exactly what
//! the generated service does for a well-formed call, and a gRPC error for a
//! malformed one.

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, header};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prost::Message;
use tollgate_envoy::RateLimiter;
use tollgate_envoy::proto::RateLimitRequest;
use tollgate_envoy::proto::rate_limit_service_server::RateLimitServiceServer;
use tonic::Status;

use crate::backend::Guarded;

/// The path of `ShouldRateLimit`.
pub const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// The largest request message accepted, as tonic's default: 4 MiB.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// An answer of the gRPC listener.
pub type GrpcResponse = http::Response<tonic::body::Body>;

/// A generated gRPC service as hyper serves it (the health service's type).
pub trait GrpcService:
    tonic::codegen::Service<
        http::Request<Incoming>,
        Response = GrpcResponse,
        Error = Infallible,
        Future = tonic::codegen::BoxFuture<GrpcResponse, Infallible>,
    > + Send
    + 'static
{
}

impl<T> GrpcService for T where
    T: tonic::codegen::Service<
            http::Request<Incoming>,
            Response = GrpcResponse,
            Error = Infallible,
            Future = tonic::codegen::BoxFuture<GrpcResponse, Infallible>,
        > + Send
        + 'static
{
}

/// The gRPC listener's services.
#[derive(Clone)]
pub struct GrpcRoutes<H> {
    limiter: Arc<RateLimiter<Guarded>>,
    ratelimit: RateLimitServiceServer<RateLimiter<Guarded>>,
    health: H,
}

impl<H> GrpcRoutes<H> {
    /// Routes to `limiter` and to the health service `health`.
    pub fn new(limiter: RateLimiter<Guarded>, health: H) -> GrpcRoutes<H> {
        let limiter = Arc::new(limiter);
        GrpcRoutes {
            ratelimit: RateLimitServiceServer::from_arc(Arc::clone(&limiter)),
            limiter,
            health,
        }
    }
}

impl<H> fmt::Debug for GrpcRoutes<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GrpcRoutes")
    }
}

impl<H: GrpcService> tonic::codegen::Service<http::Request<Incoming>> for GrpcRoutes<H> {
    type Response = GrpcResponse;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<GrpcResponse, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both generated services and the short path are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Incoming>) -> Self::Future {
        let path = request.uri().path();
        if path == SHOULD_RATE_LIMIT && takes(request.headers()) {
            let limiter = Arc::clone(&self.limiter);
            Box::pin(async move { Ok(unary(&limiter, request.into_body()).await) })
        } else if path.starts_with("/grpc.health.v1.Health/") {
            self.health.call(request)
        } else {
            // Any other path, this service's or not: the generated service answers
            // an unknown method with UNIMPLEMENTED.
            self.ratelimit.call(request)
        }
    }
}

/// Does the short path take a request with these headers? A gRPC content type and
/// no compression (`grpc-encoding` absent or `identity`); anything else goes to the
/// generated service, which answers it as tonic does.
fn takes(headers: &HeaderMap) -> bool {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let plain = headers
        .get("grpc-encoding")
        .is_none_or(|v| v.as_bytes() == b"identity");
    grpc && plain
}

/// `ShouldRateLimit`: one message in, one decision out.
pub async fn unary<B>(limiter: &RateLimiter<Guarded>, body: B) -> GrpcResponse
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limited = http_body_util::Limited::new(body, MAX_MESSAGE_BYTES + 5);
    let bytes = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Status::resource_exhausted(format!(
                "the request message is over {MAX_MESSAGE_BYTES} bytes"
            ))
            .into_http();
        }
        Err(e) => return Status::internal(format!("cannot read the request: {e}")).into_http(),
    };
    let request = match message(&bytes).and_then(|m| {
        RateLimitRequest::decode(m)
            .map_err(|e| Status::internal(format!("cannot decode the request message: {e}")))
    }) {
        Ok(r) => r,
        Err(status) => return status.into_http(),
    };
    match limiter.decide(&request).await {
        Ok(answer) => {
            let len = answer.encoded_len();
            let mut out = BytesMut::with_capacity(5 + len);
            out.put_u8(0);
            // A decision's message is a few hundred bytes at most: far below 4 GiB.
            out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
            answer.encode_raw(&mut out);
            let mut response = http::Response::new(tonic::body::Body::new(Unary {
                data: Some(out.freeze()),
                trailers: Some(ok_trailers()),
            }));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            response
        }
        Err(status) => status.into_http(),
    }
}

/// The one message of a unary request body: a flag byte (0, uncompressed), a
/// 4-byte big-endian length, and that many bytes, and nothing after them.
fn message(body: &Bytes) -> Result<Bytes, Status> {
    let Some((&flag, rest)) = body.split_first() else {
        return Err(Status::internal("the request has no message"));
    };
    if flag != 0 {
        return Err(Status::unimplemented(
            "the request message is compressed, but no grpc-encoding was named",
        ));
    }
    let Some(len) = rest
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
    else {
        return Err(Status::internal(
            "the request's message header is cut short",
        ));
    };
    let len = len as usize;
    match body.len().checked_sub(5) {
        Some(n) if n == len => Ok(body.slice(5..)),
        Some(n) if n < len => Err(Status::internal(format!(
            "the request message is cut short: {n} of {len} bytes"
        ))),
        _ => Err(Status::unimplemented(
            "ShouldRateLimit is unary: the request holds more than one message",
        )),
    }
}

fn ok_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers
}

/// A unary answer's body: one data frame, then the trailers.
struct Unary {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Unary {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(flag: u8, len: u32, payload: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(flag);
        b.put_u32(len);
        b.put_slice(payload);
        b.freeze()
    }

    #[test]
    fn one_whole_message_is_taken() {
        let m = message(&framed(0, 3, b"abc")).expect("a message");
        assert_eq!(&m[..], b"abc");
        let empty = message(&framed(0, 0, b"")).expect("an empty message");
        assert!(empty.is_empty());
    }

    #[test]
    fn malformed_frames_are_grpc_errors() {
        let code = |b: Bytes| message(&b).map(|_| ()).map_err(|s| s.code());
        assert_eq!(code(Bytes::new()), Err(tonic::Code::Internal));
        assert_eq!(
            code(Bytes::from_static(&[0, 0, 0])),
            Err(tonic::Code::Internal)
        );
        assert_eq!(code(framed(1, 3, b"abc")), Err(tonic::Code::Unimplemented));
        assert_eq!(code(framed(0, 9, b"abc")), Err(tonic::Code::Internal));
        assert_eq!(code(framed(0, 2, b"abc")), Err(tonic::Code::Unimplemented));
    }

    #[test]
    fn only_plain_grpc_requests_take_the_short_path() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(takes(&headers(&[("content-type", "application/grpc")])));
        assert!(takes(&headers(&[(
            "content-type",
            "application/grpc+proto"
        )])));
        assert!(takes(&headers(&[
            ("content-type", "application/grpc"),
            ("grpc-encoding", "identity")
        ])));
        assert!(!takes(&headers(&[
            ("content-type", "application/grpc"),
            ("grpc-encoding", "gzip")
        ])));
        assert!(!takes(&headers(&[("content-type", "application/json")])));
        assert!(!takes(&headers(&[])));
    }
}
