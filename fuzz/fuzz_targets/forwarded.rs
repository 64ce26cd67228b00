//! The key extractors' header parsing through the middleware: a trusted peer
//! forwarding `X-Forwarded-For` or `Forwarded` lines of any bytes, plus a
//! `User-Agent` and an `X-Api-Key`. Every request is answered (200 or 429 when a
//! key was found, 400 when none was); the layer never panics.
#![no_main]

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

use axum::body::Body;
use http::{HeaderValue, Request, Response, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use tollgate::{Algorithm, MemoryStore, Nanos, Policy};
use tollgate_tower::{ClientIp, IpNet, Key, ProxyHeader, RateLimitLayer};
use tower::{Layer, Service, ServiceExt};

type Svc = tower::util::BoxCloneSyncService<
    Request<Body>,
    Response<tollgate_tower::RateLimitBody<Body>>,
    Infallible,
>;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    services: [Svc; 4],
}

fn layer(header: ProxyHeader, key: fn(ClientIp) -> Key) -> Svc {
    let trusted: [IpNet; 2] = [
        "10.0.0.0/8".parse().expect("a range"),
        "fd00::/8".parse().expect("a range"),
    ];
    let ip = ClientIp::new()
        .trust(trusted)
        .header(header)
        .ipv6_prefix(56);
    let policy = Policy::new(Algorithm::Gcra, 1_000, Nanos::new(1_000_000_000)).expect("a policy");
    let layer = RateLimitLayer::builder(MemoryStore::builder().max_keys(10_000).build())
        .policy_keyed("ip", policy, key(ip))
        .policy_keyed(
            "api",
            policy,
            Key::header("x-api-key").fallback("anonymous"),
        )
        .max_key_len(128)
        .build()
        .expect("a layer");
    let inner = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    });
    tower::util::BoxCloneSyncService::new(layer.layer(inner))
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| Fixture {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime"),
        services: [
            layer(ProxyHeader::XForwardedFor, Key::client_ip),
            layer(ProxyHeader::Forwarded, Key::client_ip),
            layer(ProxyHeader::XForwardedFor, Key::client_with),
            layer(ProxyHeader::Forwarded, Key::client_with),
        ],
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let mut service = f.services[usize::from(first & 3)].clone();
    let peer = match (first >> 2) & 3 {
        0 => IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        1 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
        2 => IpAddr::V6(Ipv4Addr::new(10, 9, 9, 9).to_ipv6_mapped()),
        _ => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
    };
    let name = if first & 0x10 == 0 {
        header::HeaderName::from_static("x-forwarded-for")
    } else {
        header::FORWARDED
    };
    let mut request = Request::get("/").body(Body::empty()).expect("a request");
    // Lines separated by 0xff: forwarding lines, then a user agent and an API key.
    for (i, line) in rest.split(|&b| b == 0xff).enumerate() {
        let Ok(value) = HeaderValue::from_bytes(line) else {
            continue;
        };
        let headers = request.headers_mut();
        match i {
            0..=3 => {
                headers.append(name.clone(), value);
            }
            4 => {
                headers.insert(header::USER_AGENT, value);
            }
            _ => {
                headers.append("x-api-key", value);
            }
        }
    }
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(SocketAddr::new(peer, 4000)));
    let status = f.runtime.block_on(async {
        let svc = service.ready().await.expect("ready");
        svc.call(request).await.expect("infallible").status()
    });
    assert!(
        matches!(
            status,
            StatusCode::OK | StatusCode::TOO_MANY_REQUESTS | StatusCode::BAD_REQUEST
        ),
        "status {status}"
    );
});
