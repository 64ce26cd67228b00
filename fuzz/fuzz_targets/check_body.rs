//! `POST /v1/check` and `POST /v1/peek` through the server's own router, in process,
//! on a memory store: any body is answered 200, 429 or a 4xx problem+json that
//! names the field; never a 5xx, never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tollgate::MemoryStore;
use tollgate_server::app::{AppState, app};
use tollgate_server::backend::Backend;
use tollgate_server::config;
use tower::ServiceExt;

const CONFIG: &str = r#"
[server]
max_body_bytes = 4096
max_key_len = 64

[[policy]]
name = "api"
algorithm = "gcra"
limit = 10
period = "1s"

[[policy]]
name = "log"
algorithm = "sliding_window_log"
limit = 3
period = "1m"
"#;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: Router,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let config = config::from_text("fuzz.toml", CONFIG).expect("the fuzz configuration");
        let backend = Backend::memory(MemoryStore::builder().max_keys(10_000).build());
        let state = Arc::new(AppState::new(config, backend));
        let router = app(state).expect("the router");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        Fixture { runtime, router }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let path = if first & 1 == 0 {
        "/v1/check"
    } else {
        "/v1/peek"
    };
    let request = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a request");
    let (status, bytes) = f.runtime.block_on(async {
        let response = f.router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        (status, bytes)
    });
    assert!(
        status == StatusCode::OK
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_client_error(),
        "status {status} for {:?}",
        String::from_utf8_lossy(body)
    );
    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
        let problem: serde_json::Value =
            serde_json::from_slice(&bytes).expect("a problem+json body");
        assert!(problem.get("detail").is_some(), "{problem}");
    }
});
