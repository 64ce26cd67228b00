//! The reverse proxy: an admitted protected request goes to `upstream` with its
//! method, path, query, headers and body; hop-by-hop headers do not pass, either way.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

/// The upstream and a pooled HTTP/1 client.
#[derive(Debug, Clone)]
pub struct Proxy {
    upstream: String,
    client: Client<HttpConnector, Body>,
}

impl Proxy {
    /// A proxy to `upstream` (`http://host:port`, no trailing slash).
    pub fn new(upstream: &str) -> Proxy {
        Proxy {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

/// Headers that describe one connection, not the message (RFC 9110, 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn bad_gateway(detail: String) -> Response {
    let mut r = (
        StatusCode::BAD_GATEWAY,
        axum::Json(
            json!({"type": "about:blank", "title": "Bad Gateway", "status": 502, "detail": detail}),
        ),
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

/// Forwards one request.
pub async fn forward(State(proxy): State<Arc<Proxy>>, req: Request<Body>) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = match format!("{}{path}", proxy.upstream).parse() {
        Ok(uri) => uri,
        Err(e) => return bad_gateway(format!("cannot build the upstream URL: {e}")),
    };
    parts.uri = uri;
    strip_hop_by_hop(&mut parts.headers);
    if let Some(host) = parts.headers.remove(header::HOST) {
        parts
            .headers
            .insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    if let Some(ip) = peer {
        let chain = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(before) => format!("{before}, {ip}"),
            None => ip.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&chain) {
            parts
                .headers
                .insert(HeaderName::from_static("x-forwarded-for"), v);
        }
    }
    parts.headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    match proxy.client.request(Request::from_parts(parts, body)).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => bad_gateway(format!("the upstream did not answer: {e}")),
    }
}
