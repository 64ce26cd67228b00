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

fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, Problem> {
    let bytes =
        body.map_err(|e| Problem::status(e.status(), format!("cannot read the body: {e}")))?;
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
    body: Result<Bytes, BytesRejection>,
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
    decide(state, body, true)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/peek`.
pub async fn peek(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    decide(state, body, false)
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
    let body = read_body(body)?;
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
    let limit = state.config.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(length) = declared.filter(|&n| n > limit as u64) {
        return Problem::status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is {length} bytes long: at most {limit} are accepted"),
        )
        .into_response();
    }
    match tokio::time::timeout(BODY_READ_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::status(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request was not complete within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        )
        .into_response(),
    }
}
