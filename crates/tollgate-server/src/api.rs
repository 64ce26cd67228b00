//! The decision API: `POST /v1/check`, `POST /v1/peek`, `POST /v1/reset`,
//! `GET /v1/policies`, `GET /healthz`, `GET /readyz`.
//!
//! Bodies are read as JSON values and checked field by field, so a bad request is
//! answered with a 4xx `application/problem+json` that names the field.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tollgate::{Algorithm, Check, Decision, Nanos, Policy, Store, Verdict, parse_duration};

use crate::app::AppState;
use crate::config::{OnErrorMode, format_duration};

/// An error answered to the client: a status and a problem+json body.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    detail: String,
    field: Option<String>,
}

impl Problem {
    fn bad(field: impl Into<String>, detail: impl Into<String>) -> Problem {
        Problem {
            status: StatusCode::BAD_REQUEST,
            detail: detail.into(),
            field: Some(field.into()),
        }
    }

    fn status(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            detail: detail.into(),
            field: None,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let (Some(field), Some(map)) = (self.field, body.as_object_mut()) {
            map.insert("field".to_owned(), Value::String(field));
        }
        let mut response = (self.status, Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

/// The start of an inline policy's name (`inline-gcra-10-1s-10`).
pub const INLINE_PREFIX: &str = "inline-";

/// One requested check, resolved: the store key, the policy and its name, the cost.
struct Wanted {
    name: String,
    key: String,
    policy: Policy,
    cost: NonZeroU32,
}

/// A body the router's extractor could not read, as the client is told.
fn rejected(e: &BytesRejection, limit: usize) -> Problem {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        over_limit(limit)
    } else {
        Problem::status(e.status(), format!("cannot read the body: {e}"))
    }
}

/// 413: a body that turned out longer than `max_body_bytes` as it was read.
fn over_limit(limit: usize) -> Problem {
    Problem::status(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is longer than {limit} bytes: at most {limit} are accepted"),
    )
}

fn read_body(body: Result<Bytes, Problem>) -> Result<Map<String, Value>, Problem> {
    let bytes = body?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Problem::bad("(body)", format!("the body is not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(Problem::bad("(body)", "the body must be a JSON object")),
    }
}

fn field_str<'a>(
    map: &'a Map<String, Value>,
    name: &str,
    at: &str,
) -> Result<Option<&'a str>, Problem> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Problem::bad(
            format!("{at}{name}"),
            format!("{name} must be a string, not {other}"),
        )),
    }
}

fn field_u32(
    map: &Map<String, Value>,
    name: &str,
    at: &str,
) -> Result<Option<NonZeroU32>, Problem> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .and_then(NonZeroU32::new)
            .map(Some)
            .ok_or_else(|| {
                Problem::bad(
                    format!("{at}{name}"),
                    format!("{name} must be a whole number from 1 to 4294967295, not {v}"),
                )
            }),
    }
}

fn resolve(state: &AppState, map: &Map<String, Value>, at: &str) -> Result<Wanted, Problem> {
    const KNOWN: [&str; 7] = [
        "policy",
        "key",
        "cost",
        "algorithm",
        "limit",
        "period",
        "burst",
    ];
    if let Some(unknown) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(Problem::bad(
            format!("{at}{unknown}"),
            format!(
                "unknown field {unknown:?}: expected policy, key, cost, or algorithm, limit, period and burst for an inline policy"
            ),
        ));
    }
    let key = field_str(map, "key", at)?
        .ok_or_else(|| Problem::bad(format!("{at}key"), "key is missing"))?;
    if key.len() > state.config.max_key_len {
        return Err(Problem::bad(
            format!("{at}key"),
            format!(
                "key is {} bytes long: at most {} are accepted",
                key.len(),
                state.config.max_key_len
            ),
        ));
    }
    let cost = field_u32(map, "cost", at)?.unwrap_or(NonZeroU32::MIN);
    let inline = ["algorithm", "limit", "period", "burst"]
        .iter()
        .any(|f| map.contains_key(*f));
    match (field_str(map, "policy", at)?, inline) {
        (Some(_), true) => Err(Problem::bad(
            format!("{at}policy"),
            "give either a named policy or an inline one (algorithm, limit, period), not both",
        )),
        (Some(name), false) => {
            let named = state.named(name).ok_or_else(|| {
                Problem::bad(
                    format!("{at}policy"),
                    format!(
                        "unknown policy {name:?}; configured: {}",
                        state.policy_names()
                    ),
                )
            })?;
            Ok(Wanted {
                name: named.name.clone(),
                key: format!("{}:{key}", named.name),
                policy: named.policy,
                cost,
            })
        }
        (None, false) => Err(Problem::bad(
            format!("{at}policy"),
            "policy is missing: name a configured policy, or give algorithm, limit and period",
        )),
        (None, true) => {
            let algorithm = field_str(map, "algorithm", at)?
                .ok_or_else(|| Problem::bad(format!("{at}algorithm"), "algorithm is missing"))?;
            let algorithm: Algorithm = algorithm.parse().map_err(|_| {
                Problem::bad(
                    format!("{at}algorithm"),
                    format!("unknown algorithm {algorithm:?}: expected fixed_window, sliding_window_log, sliding_window_counter, token_bucket, gcra or leaky_bucket"),
                )
            })?;
            let limit = field_u32(map, "limit", at)?
                .ok_or_else(|| Problem::bad(format!("{at}limit"), "limit is missing"))?;
            let period = field_str(map, "period", at)?
                .ok_or_else(|| Problem::bad(format!("{at}period"), "period is missing"))?;
            let period = parse_duration(period)
                .map_err(|e| Problem::bad(format!("{at}period"), e.to_string()))?;
            let mut policy = Policy::new(algorithm, limit.get(), period)
                .map_err(|e| Problem::bad(format!("{at}period"), e.to_string()))?;
            if let Some(burst) = field_u32(map, "burst", at)? {
                policy = policy
                    .with_burst(burst.get())
                    .map_err(|e| Problem::bad(format!("{at}burst"), e.to_string()))?;
            }
            let name = format!(
                "{INLINE_PREFIX}{}-{}-{}-{}",
                algorithm.name(),
                policy.limit(),
                format_duration(policy.period().as_u64()),
                policy.burst()
            );
            Ok(Wanted {
                key: format!("{name}:{key}"),
                name,
                policy,
                cost,
            })
        }
    }
}

fn wanted(state: &AppState, body: &Map<String, Value>) -> Result<Vec<Wanted>, Problem> {
    match body.get("checks") {
        None => resolve(state, body, ""),
        Some(Value::Array(items)) => {
            if body.len() > 1 {
                return Err(Problem::bad(
                    "checks",
                    "a body with checks holds nothing else",
                ));
            }
            if items.is_empty() || items.len() > tollgate::MAX_STACK {
                return Err(Problem::bad(
                    "checks",
                    format!(
                        "checks holds {} items: 1 to {} are accepted",
                        items.len(),
                        tollgate::MAX_STACK
                    ),
                ));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let at = format!("checks[{i}].");
                let map = item.as_object().ok_or_else(|| {
                    Problem::bad(format!("checks[{i}]"), "each check is a JSON object")
                })?;
                let w = resolve(state, map, &at)?;
                if out.iter().any(|o: &Wanted| o.key == w.key) {
                    return Err(Problem::bad(
                        format!("checks[{i}].key"),
                        "the same policy and key appear twice in one request",
                    ));
                }
                out.push(w);
            }
            return Ok(out);
        }
        Some(_) => Err(Problem::bad("checks", "checks must be an array of checks")),
    }
    .map(|w| vec![w])
}

fn ms(n: Nanos) -> u64 {
    n.as_millis_ceil()
}

/// A decision as the API answers it.
#[derive(serde::Serialize)]
struct DecisionOut<'a> {
    allowed: bool,
    policy: &'a str,
    limit: u32,
    remaining: u64,
    reset_after_ms: u64,
    retry_after_ms: Option<u64>,
    delay_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decisions: Option<Vec<DecisionOut<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback: Option<&'static str>,
}

fn decision_out<'a>(name: &'a str, d: &Decision) -> DecisionOut<'a> {
    DecisionOut {
        allowed: d.allowed,
        policy: name,
        limit: d.limit,
        remaining: d.remaining,
        reset_after_ms: ms(d.reset_after),
        retry_after_ms: d.retry_after.map(ms),
        delay_ms: ms(d.delay),
        reason: d.reason.map(|r| r.name()),
        decisions: None,
        fallback: None,
    }
}

fn verdict_response(
    wanted: &[Wanted],
    verdict: &Verdict,
    fallback: Option<&'static str>,
) -> Response {
    let mut body = decision_out(&wanted[verdict.index].name, &verdict.decision);
    if wanted.len() > 1 {
        body.decisions = Some(
            wanted
                .iter()
                .zip(&verdict.decisions)
                .map(|(w, d)| decision_out(&w.name, d))
                .collect(),
        );
    }
    body.fallback = fallback;
    let status = if verdict.allowed() {
        StatusCode::OK
    } else {
        StatusCode::TOO_MANY_REQUESTS
    };
    let mut response = (status, Json(body)).into_response();
    if let Some(secs) = verdict.decision.retry_after.filter(|_| !verdict.allowed()) {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(secs.as_secs_ceil().max(1)),
        );
    }
    response
}

/// The common request, `{"policy": "...", "key": "...", "cost": n}`, read straight
/// into borrowed fields. Anything else (or anything wrong) goes the slow way, which
/// names the field at fault.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Simple<'a> {
    #[serde(borrow)]
    policy: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
    #[serde(default)]
    cost: Option<u32>,
}

fn simple(state: &AppState, bytes: &[u8]) -> Option<Wanted> {
    let s: Simple<'_> = serde_json::from_slice(bytes).ok()?;
    let cost = match s.cost {
        None => NonZeroU32::MIN,
        Some(c) => NonZeroU32::new(c)?,
    };
    if s.key.len() > state.config.max_key_len {
        return None;
    }
    let named = state.named(&s.policy)?;
    Some(Wanted {
        name: named.name.clone(),
        key: format!("{}:{}", named.name, s.key),
        policy: named.policy,
        cost,
    })
}

async fn decide(
    state: Arc<AppState>,
    body: Result<Bytes, Problem>,
    consume: bool,
) -> Result<Response, Problem> {
    let fast = match &body {
        Ok(bytes) => simple(&state, bytes),
        Err(_) => None,
    };
    let wanted = match fast {
        Some(w) => vec![w],
        None => wanted(&state, &read_body(body)?)?,
    };
    let checks: Vec<Check<'_>> = wanted
        .iter()
        .map(|w| Check::new(&w.key, &w.policy).cost(w.cost))
        .collect();
    let result = if consume {
        state.backend.check(&checks).await
    } else {
        state.backend.peek(&checks).await
    };
    match result {
        Ok(verdict) => Ok(verdict_response(&wanted, &verdict, None)),
        Err(e) if e.is_caller_error() => Err(Problem::bad("(request)", e.to_string())),
        Err(_) => match state.config.store.on_error {
            OnErrorMode::Deny => Err(Problem::status(
                StatusCode::SERVICE_UNAVAILABLE,
                "the rate limit store is unavailable; on_error = deny",
            )),
            OnErrorMode::Allow => {
                let mut body =
                    json!({"allowed": true, "policy": wanted[0].name, "fallback": "allow"});
                if let Some(map) = body.as_object_mut() {
                    map.insert(
                        "detail".to_owned(),
                        Value::String(
                            "the rate limit store is unavailable; on_error = allow".to_owned(),
                        ),
                    );
                }
                Ok((StatusCode::OK, Json(body)).into_response())
            }
            OnErrorMode::Local => {
                let nodes = state.config.store.nodes.max(1);
                let shares: Vec<Policy> = wanted
                    .iter()
                    .map(|w| local_share(&w.policy, nodes))
                    .collect();
                let checks: Vec<Check<'_>> = wanted
                    .iter()
                    .zip(&shares)
                    .map(|(w, p)| Check::new(&w.key, p).cost(w.cost))
                    .collect();
                let verdict = if consume {
                    state.local.check_all(&checks)
                } else {
                    state.local.peek_all(&checks)
                }
                .map_err(|e| Problem::bad("(request)", e.to_string()))?;
                Ok(verdict_response(&wanted, &verdict, Some("local")))
            }
        },
    }
}

/// `limit / nodes` (at least 1), burst likewise: this node's share of a policy.
pub fn local_share(p: &Policy, nodes: u32) -> Policy {
    let limit = (p.limit() / nodes).max(1);
    let burst = (p.burst() / nodes).max(1);
    Policy::new(p.algorithm(), limit, p.period())
        .and_then(|q| q.with_burst(burst))
        .unwrap_or(*p)
}

/// `POST /v1/check`.
pub async fn check(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let limit = state.config.max_body_bytes;
    decide(state, body.map_err(|e| rejected(&e, limit)), true)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/peek`.
pub async fn peek(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let limit = state.config.max_body_bytes;
    decide(state, body.map_err(|e| rejected(&e, limit)), false)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The decision API's hot routes, `POST /v1/check` and `POST /v1/peek`, as the
/// connection serves them without the router: `Some(consume)` for those two,
/// `None` for everything else (the router's).
pub fn direct_route<B>(request: &http::Request<B>) -> Option<bool> {
    if request.method() != http::Method::POST {
        return None;
    }
    match request.uri().path() {
        "/v1/check" => Some(true),
        "/v1/peek" => Some(false),
        _ => None,
    }
}

/// `POST /v1/check` (`consume`) or `POST /v1/peek` served straight from the
/// connection, with the same answers as the router's [`check`] and [`peek`] behind
/// [`guard`]: a declared body over `max_body_bytes` is 413 at once, a body read
/// past it is 413, a body not in within [`BODY_READ_TIMEOUT`] is 408. It skips the
/// router's path match, middleware and extensions, which cost more than the
/// decision on this path that nearly every request of the API takes.
pub async fn direct<B>(state: Arc<AppState>, request: http::Request<B>, consume: bool) -> Response
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limit = state.config.max_body_bytes;
    if let Some(problem) = declared_too_long(request.headers(), limit) {
        return problem.into_response();
    }
    let body = http_body_util::Limited::new(request.into_body(), limit);
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, http_body_util::BodyExt::collect(body));
    let body = match read.await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(over_limit(limit)),
        Ok(Err(e)) => Err(Problem::status(
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {e}"),
        )),
        Err(_) => return timed_out().into_response(),
    };
    decide(state, body, consume)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/reset`: `{"key": "alice"}` forgets alice under every configured
/// policy, `{"key": "alice", "policy": "api"}` under one.
pub async fn reset(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    reset_inner(state, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn reset_inner(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let Some(token) = state.config.admin_token.as_deref() else {
        return Err(Problem::status(
            StatusCode::NOT_FOUND,
            "reset is off: set server.admin_token (or TOLLGATE_ADMIN_TOKEN) to turn it on",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => {
            let mut r = Problem::status(
                StatusCode::UNAUTHORIZED,
                "Authorization: Bearer <admin token> is required",
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return Ok(r);
        }
        Some(t) if !constant_time_eq(t.as_bytes(), token.as_bytes()) => {
            return Err(Problem::status(
                StatusCode::FORBIDDEN,
                "the admin token is wrong",
            ));
        }
        Some(_) => {}
    }
    let body = read_body(body.map_err(|e| rejected(&e, state.config.max_body_bytes)))?;
    if let Some(unknown) = body
        .keys()
        .find(|k| !["key", "policy"].contains(&k.as_str()))
    {
        return Err(Problem::bad(
            unknown.clone(),
            format!("unknown field {unknown:?}: expected key and policy"),
        ));
    }
    let key = field_str(&body, "key", "")?.ok_or_else(|| Problem::bad("key", "key is missing"))?;
    let names: Vec<String> = match field_str(&body, "policy", "")? {
        Some(name) => vec![
            state
                .named(name)
                .ok_or_else(|| {
                    Problem::bad(
                        "policy",
                        format!(
                            "unknown policy {name:?}; configured: {}",
                            state.policy_names()
                        ),
                    )
                })?
                .name
                .clone(),
        ],
        None => state
            .config
            .policies
            .iter()
            .map(|p| p.name.clone())
            .collect(),
    };
    for name in &names {
        state
            .backend
            .reset(&format!("{name}:{key}"))
            .await
            .map_err(|e| {
                Problem::status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the store could not reset: {e}"),
                )
            })?;
    }
    Ok((
        StatusCode::OK,
        Json(json!({"reset": true, "key": key, "policies": names})),
    )
        .into_response())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /v1/policies`.
pub async fn policies(State(state): State<Arc<AppState>>) -> Response {
    let list: Vec<Value> = state
        .config
        .policies
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "algorithm": p.policy.algorithm().name(),
                "limit": p.policy.limit(),
                "period": format_duration(p.policy.period().as_u64()),
                "period_ms": p.policy.period().as_millis_ceil(),
                "burst": p.policy.burst(),
                "key": match &p.key {
                    crate::config::KeySource::Client => "client".to_owned(),
                    crate::config::KeySource::Ip => "ip".to_owned(),
                    crate::config::KeySource::Global => "global".to_owned(),
                    crate::config::KeySource::Header(h) => format!("header:{h}"),
                },
                "protects": state.config.protect.policies.contains(&p.name),
            })
        })
        .collect();
    Json(json!({ "policies": list })).into_response()
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.backend.metrics.render(state.backend.keys_held());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /openapi.json`: the API description.
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

/// `GET /healthz`: the process answers.
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: the store answers.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.backend.ready().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => Problem::status(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store is not reachable: {e}"),
        )
        .into_response(),
    }
}

/// How long the decision API waits for a request's body (and its answer) before
/// answering 408. The header read timeout (`serve.rs`) ends once the headers are
/// in; without this, a client announcing a body and sending it a byte at a time,
/// or never, would hold its connection forever.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Middleware of the decision API: a `Content-Length` over `max_body_bytes` is
/// answered 413 at once (not after reading that much), and a request whose body
/// has not arrived within [`BODY_READ_TIMEOUT`] is answered 408.
pub async fn guard(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(problem) = declared_too_long(request.headers(), state.config.max_body_bytes) {
        return problem.into_response();
    }
    match tokio::time::timeout(BODY_READ_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => timed_out().into_response(),
    }
}

/// 413 when the request's `Content-Length` is over `limit`.
fn declared_too_long(headers: &HeaderMap, limit: usize) -> Option<Problem> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    declared.filter(|&n| n > limit as u64).map(|length| {
        Problem::status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is {length} bytes long: at most {limit} are accepted"),
        )
    })
}

/// 408: the request did not arrive within [`BODY_READ_TIMEOUT`].
fn timed_out() -> Problem {
    Problem::status(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request was not complete within {} s",
            BODY_READ_TIMEOUT.as_secs()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use http_body_util::{BodyExt, Full};
    use hyper::service::Service as _;
    use hyper_util::service::TowerToHyperService;
    use tollgate::MemoryStore;

    const CONFIG: &str = r#"
[server]
max_body_bytes = 256
max_key_len = 16

[[policy]]
name = "wide"
algorithm = "gcra"
limit = 1000000000
period = "1s"

[[policy]]
name = "one"
algorithm = "token_bucket"
limit = 1
period = "1000h"
"#;

    fn state() -> Arc<AppState> {
        let config = crate::config::from_text("direct.toml", CONFIG).expect("the configuration");
        Arc::new(AppState::new(config, Backend::memory(MemoryStore::new())))
    }

    /// Status, the headers a client reads, and the body.
    async fn answer(response: Response) -> (StatusCode, Vec<(String, String)>, Bytes) {
        let status = response.status();
        let headers = [header::CONTENT_TYPE, header::RETRY_AFTER]
            .iter()
            .filter_map(|h| {
                let v = response.headers().get(h)?;
                Some((
                    h.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                ))
            })
            .collect();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        (status, headers, body)
    }

    fn request(path: &str, body: &[u8], declared: Option<&str>) -> http::Request<Full<Bytes>> {
        let mut builder =
            http::Request::post(path).header(header::CONTENT_TYPE, "application/json");
        if let Some(length) = declared {
            builder = builder.header(header::CONTENT_LENGTH, length);
        }
        builder
            .body(Full::new(Bytes::copy_from_slice(body)))
            .expect("a request")
    }

    /// The workers' direct path answers every body exactly as the router (with its
    /// guard, body limit and handlers) does: same status, headers and body, in the
    /// same sequence of decisions on two stores.
    #[tokio::test]
    async fn direct_answers_as_the_router_does() {
        let (routed, direct_state) = (state(), state());
        let router =
            TowerToHyperService::new(crate::app::app(Arc::clone(&routed)).expect("the router"));
        let long = format!(r#"{{"policy":"wide","key":"{}"}}"#, "k".repeat(300));
        let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
            (
                "/v1/check",
                br#"{"policy":"wide","key":"a"}"#.to_vec(),
                None,
            ),
            ("/v1/peek", br#"{"policy":"wide","key":"a"}"#.to_vec(), None),
            ("/v1/check", br#"{"policy":"one","key":"a"}"#.to_vec(), None),
            ("/v1/check", br#"{"policy":"one","key":"a"}"#.to_vec(), None),
            ("/v1/peek", br#"{"policy":"one","key":"a"}"#.to_vec(), None),
            (
                "/v1/check",
                br#"{"policy":"one","key":"b","cost":2}"#.to_vec(),
                None,
            ),
            (
                "/v1/check",
                br#"{"policy":"wide","key":"a","cost":0}"#.to_vec(),
                None,
            ),
            (
                "/v1/check",
                br#"{"policy":"nope","key":"a"}"#.to_vec(),
                None,
            ),
            (
                "/v1/check",
                br#"{"policy":"wide","key":"0123456789abcdefg"}"#.to_vec(),
                None,
            ),
            ("/v1/check", br#"{"policy":"wide"}"#.to_vec(), None),
            (
                "/v1/check",
                br#"{"policy":"wide","key":"a","extra":1}"#.to_vec(),
                None,
            ),
            ("/v1/check", b"not json".to_vec(), None),
            ("/v1/check", b"[1,2]".to_vec(), None),
            ("/v1/check", b"".to_vec(), None),
            (
                "/v1/check",
                br#"{"checks":[{"policy":"wide","key":"s"},{"policy":"one","key":"s"}]}"#.to_vec(),
                None,
            ),
            (
                "/v1/check",
                br#"{"checks":[{"policy":"wide","key":"s"},{"policy":"one","key":"s"}]}"#.to_vec(),
                None,
            ),
            (
                "/v1/check",
                br#"{"algorithm":"sliding_window_counter","limit":5,"period":"1000h","key":"i"}"#
                    .to_vec(),
                None,
            ),
            ("/v1/check", long.into_bytes(), None),
            (
                "/v1/check",
                br#"{"policy":"wide","key":"a"}"#.to_vec(),
                Some("100000"),
            ),
        ];
        for (path, body, declared) in cases {
            let consume = path == "/v1/check";
            let want = router
                .call(request(path, &body, declared))
                .await
                .expect("infallible");
            let got = direct(
                Arc::clone(&direct_state),
                request(path, &body, declared),
                consume,
            )
            .await;
            let (want, got) = (answer(want).await, answer(got).await);
            let case = format!("{path} {}", String::from_utf8_lossy(&body));
            assert_eq!(
                (got.0, &got.1),
                (want.0, &want.1),
                "{case}: direct (left) and router (right) differ"
            );
            assert_eq!(
                timeless(&got.2),
                timeless(&want.2),
                "{case}: direct (left) and router (right) differ"
            );
        }
    }

    /// A body with its durations rounded to the minute: the two stores decide a
    /// moment apart, and a window's `reset_after_ms` counts down meanwhile.
    fn timeless(body: &[u8]) -> Value {
        fn round(v: &mut Value) {
            match v {
                Value::Object(map) => {
                    for (k, v) in map.iter_mut() {
                        match (k.ends_with("_ms"), v.as_u64()) {
                            (true, Some(ms)) => *v = Value::from(ms.div_ceil(60_000)),
                            _ => round(v),
                        }
                    }
                }
                Value::Array(items) => items.iter_mut().for_each(round),
                _ => {}
            }
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(mut v) => {
                round(&mut v);
                v
            }
            Err(_) => Value::String(String::from_utf8_lossy(body).into_owned()),
        }
    }

    #[test]
    fn direct_route_takes_only_post_check_and_peek() {
        let route = |method: &str, uri: &str| {
            let r = http::Request::builder()
                .method(method)
                .uri(uri)
                .body(())
                .expect("a request");
            direct_route(&r)
        };
        assert_eq!(route("POST", "/v1/check"), Some(true));
        assert_eq!(route("POST", "/v1/check?x=1"), Some(true));
        assert_eq!(route("POST", "/v1/peek"), Some(false));
        assert_eq!(route("GET", "/v1/check"), None);
        assert_eq!(route("POST", "/v1/check/"), None);
        assert_eq!(route("POST", "/v1/reset"), None);
        assert_eq!(route("POST", "/"), None);
    }
}
