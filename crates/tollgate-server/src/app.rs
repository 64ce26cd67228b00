//! [`app`]: the whole HTTP surface as one axum `Router`, so tests can serve it on
//! an ephemeral port; [`AppState`]: what the handlers share.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tollgate::MemoryStore;
use tollgate_tower::{BuildError, ClientIp, Key, OnError, RateLimitLayer};

use crate::backend::Backend;
use crate::config::{Config, KeySource, NamedPolicy, OnErrorMode};
use crate::{api, proxy};

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The effective configuration.
    pub config: Config,
    /// The configured store, shared with the protected API's layer.
    pub backend: Arc<Backend>,
    /// The local limiter for `on_error = "local"`, one for the decision API and the
    /// protected API: a key decided through both while the store is down gets this
    /// node's share once, not once per API.
    pub local: Arc<MemoryStore>,
}

impl AppState {
    /// State for `config` over `backend`.
    pub fn new(config: Config, backend: Backend) -> AppState {
        AppState {
            local: Arc::new(local_store(&config)),
            config,
            backend: Arc::new(backend),
        }
    }

    /// The configured policy named `name`.
    pub fn named(&self, name: &str) -> Option<&NamedPolicy> {
        self.config.policies.iter().find(|p| p.name == name)
    }

    /// The configured policies' names, for error messages.
    pub fn policy_names(&self) -> String {
        self.config
            .policies
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A local limiter for `on_error = "local"`, capped like the memory store: it
/// holds the keys seen while the shared store is down, and a key flood during an
/// outage must not grow it past `max_keys`.
fn local_store(config: &Config) -> MemoryStore {
    MemoryStore::builder()
        .max_keys(config.store.max_keys)
        .build()
}

fn key_for(source: &KeySource, proxies: &ClientIp) -> Key {
    match source {
        KeySource::Client => Key::client_with(proxies.clone()),
        KeySource::Ip => Key::client_ip(proxies.clone()),
        KeySource::Header(h) => Key::header(h),
        KeySource::Global => Key::global(),
    }
}

/// The router: the decision API, health, and every other path as the protected
/// API (checked against `[protect]` policies, then the demo handler).
pub fn app(state: Arc<AppState>) -> Result<Router, BuildError> {
    let api = Router::new()
        .route("/v1/check", post(api::check))
        .route("/v1/peek", post(api::peek))
        .route("/v1/reset", post(api::reset))
        .route("/v1/policies", get(api::policies))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/openapi.json", get(api::openapi))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::guard,
        ))
        .with_state(state.clone());

    let config = &state.config;
    let mut protected = match &config.protect.upstream {
        Some(upstream) => Router::new()
            .fallback(proxy::forward)
            .with_state(Arc::new(proxy::Proxy::new(upstream))),
        None => Router::new().route("/", get(demo_root)).fallback(not_found),
    };
    if !config.protect.policies.is_empty() {
        let proxies = ClientIp::new().trust(config.trusted_proxies.iter().copied());
        let on_error = match config.store.on_error {
            OnErrorMode::Deny => OnError::deny(),
            OnErrorMode::Allow => OnError::allow(),
            OnErrorMode::Local => {
                OnError::local_shared(state.local.clone()).nodes(config.store.nodes)
            }
        };
        let mut builder = RateLimitLayer::builder_shared(state.backend.clone())
            .on_error(on_error)
            .max_key_len(config.max_key_len);
        for name in &config.protect.policies {
            if let Some(p) = state.named(name) {
                builder = builder.policy_keyed(p.name.clone(), p.policy, key_for(&p.key, &proxies));
            }
        }
        protected = protected.layer(builder.build()?);
    }
    Ok(api.fallback_service(protected))
}

/// The router of `server.admin_listen`: health and metrics alone, for probes and
/// scrapers (no decision API, no protected API: every other path is a 404).
pub fn admin(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::guard,
        ))
        .with_state(state)
}

/// `GET /` of the protected API: the seed's answer.
async fn demo_root() -> Response {
    let now = jiff::ZonedDateTime::now()
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();
    axum::Json(json!({ "message": format!("RATE LIMITING API {now}") })).into_response()
}

/// Any other path of the protected API, once admitted (and of the admin listener).
async fn not_found(method: Method, uri: Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({ "detail": "Not Found", "method": method.as_str(), "path": uri.path() })),
    )
        .into_response()
}
