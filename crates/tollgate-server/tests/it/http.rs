//! The server end to end: the real binary on a real socket.

use serde_json::{Value, json};

use crate::running::{client, start};

async fn post(base: &str, path: &str, body: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = client()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, headers, body)
}

#[tokio::test]
async fn the_default_preset_protects_slash_like_the_seed() {
    let s = start(&[], &[]);
    let c = client();
    let r = c
        .get(format!("{}/", s.base))
        .header("user-agent", "curl/8")
        .send()
        .await
        .expect("GET /");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["ratelimit-policy"],
        "\"per-client\";q=1;w=15, \"global\";q=15;w=15"
    );
    let body: Value = r.json().await.expect("json");
    let msg = body["message"].as_str().expect("message");
    assert!(msg.starts_with("RATE LIMITING API 20"), "{msg}");
    assert_eq!(
        msg.len(),
        "RATE LIMITING API 2026-11-27 15:44:21".len(),
        "{msg}"
    );

    let r = c
        .get(format!("{}/", s.base))
        .header("user-agent", "curl/8")
        .send()
        .await
        .expect("GET /");
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.headers()["retry-after"], "15");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["message"], "Rate limit exceeded. Try again later.");

    // Another client (another user agent) has its own per-client budget.
    let r = c
        .get(format!("{}/", s.base))
        .header("user-agent", "other/1")
        .send()
        .await
        .expect("GET /");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn check_peek_and_stacks() {
    let dir = std::env::temp_dir().join(format!("srv-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let conf = dir.join("api.toml");
    std::fs::write(
        &conf,
        r#"
[server]
admin_token = "t0ken"
max_key_len = 32
[[policy]]
name = "api"
algorithm = "gcra"
limit = 2
period = "10s"
[[policy]]
name = "hour"
algorithm = "fixed_window"
limit = 3
period = "1h"
[protect]
policies = []
"#,
    )
    .expect("write config");
    let s = start(&["--config", conf.to_str().expect("path")], &[]);
    let b = &s.base;

    let (st, _, body) = post(b, "/v1/check", r#"{"policy":"api","key":"alice"}"#).await;
    assert_eq!(st, 200);
    assert_eq!(
        body,
        json!({"allowed": true, "policy": "api", "limit": 2, "remaining": 1, "reset_after_ms": 5000, "retry_after_ms": null, "delay_ms": 0})
    );
    let (st, _, body) = post(b, "/v1/peek", r#"{"policy":"api","key":"alice"}"#).await;
    assert_eq!(
        (st, body["remaining"].clone()),
        (200, json!(0)),
        "peek answers as if admitted"
    );
    let (st, _, body) = post(b, "/v1/check", r#"{"policy":"api","key":"alice"}"#).await;
    assert_eq!(
        (st, body["remaining"].clone()),
        (200, json!(0)),
        "the peek consumed nothing"
    );
    let (st, h, body) = post(b, "/v1/check", r#"{"policy":"api","key":"alice"}"#).await;
    assert_eq!(st, 429);
    assert_eq!(body["allowed"], false);
    assert_eq!(body["reason"], "limited");
    assert!(
        body["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 4_000 && ms <= 5_000),
        "{body}"
    );
    assert_eq!(h["retry-after"], "5");

    // Stacked: all or nothing.
    let stack = r#"{"checks":[{"policy":"hour","key":"bob"},{"policy":"api","key":"alice"}]}"#;
    let (st, _, body) = post(b, "/v1/check", stack).await;
    assert_eq!(st, 429);
    assert_eq!(body["policy"], "api");
    assert_eq!(body["decisions"][0]["allowed"], true);
    assert_eq!(
        body["decisions"][0]["remaining"], 3,
        "hour consumed nothing"
    );

    // Reset needs the token.
    let r = client()
        .post(format!("{b}/v1/reset"))
        .body(r#"{"key":"alice"}"#)
        .send()
        .await
        .expect("reset");
    assert_eq!(r.status(), 401);
    let r = client()
        .post(format!("{b}/v1/reset"))
        .bearer_auth("nope")
        .body(r#"{"key":"alice"}"#)
        .send()
        .await
        .expect("reset");
    assert_eq!(r.status(), 403);
    let r = client()
        .post(format!("{b}/v1/reset"))
        .bearer_auth("t0ken")
        .body(r#"{"key":"alice","policy":"api"}"#)
        .send()
        .await
        .expect("reset");
    assert_eq!(r.status(), 200);
    let (st, _, _) = post(b, "/v1/check", r#"{"policy":"api","key":"alice"}"#).await;
    assert_eq!(st, 200, "reset forgot alice");

    let r = client()
        .get(format!("{b}/v1/policies"))
        .send()
        .await
        .expect("policies");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["policies"][0]["name"], "api");
    assert_eq!(body["policies"][1]["period"], "1h");
    for path in ["/healthz", "/readyz"] {
        let r = client()
            .get(format!("{b}{path}"))
            .send()
            .await
            .expect("health");
        assert_eq!(r.status(), 200, "{path}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_input_is_a_4xx_that_names_the_field() {
    let s = start(&[], &[]);
    let b = &s.base;
    let long = "k".repeat(300);
    let cases = [
        (r#"{"policy":"global","key":"k""#.to_owned(), 400, "(body)"),
        (r#"[1,2]"#.to_owned(), 400, "(body)"),
        (r#"{"policy":"nope","key":"k"}"#.to_owned(), 400, "policy"),
        (
            r#"{"policy":"global","key":"k","cost":0}"#.to_owned(),
            400,
            "cost",
        ),
        (
            r#"{"policy":"global","key":"k","cost":-3}"#.to_owned(),
            400,
            "cost",
        ),
        (
            r#"{"key":"k","algorithm":"gcra","limit":5,"period":"abc"}"#.to_owned(),
            400,
            "period",
        ),
        (
            r#"{"key":"k","algorithm":"wat","limit":5,"period":"1s"}"#.to_owned(),
            400,
            "algorithm",
        ),
        (r#"{"policy":"global"}"#.to_owned(), 400, "key"),
        (
            format!(r#"{{"policy":"global","key":"{long}"}}"#),
            400,
            "key",
        ),
        (
            r#"{"checks":[{"policy":"global","key":"a"},{"policy":"global","key":"a"}]}"#
                .to_owned(),
            400,
            "checks[1].key",
        ),
        (r#"{"checks":[]}"#.to_owned(), 400, "checks"),
        (
            r#"{"policy":"global","key":"k","colour":"red"}"#.to_owned(),
            400,
            "colour",
        ),
    ];
    for (body, status, field) in cases {
        let (st, h, json) = post(b, "/v1/check", &body).await;
        assert_eq!(st, status, "{body}: {json}");
        assert_eq!(h["content-type"], "application/problem+json", "{body}");
        assert_eq!(json["field"], field, "{body}: {json}");
        assert!(
            json["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{body}"
        );
    }
    let r = client()
        .post(format!("{b}/v1/reset"))
        .body(r#"{"key":"k"}"#)
        .send()
        .await
        .expect("reset");
    assert_eq!(r.status(), 404, "reset is off without an admin token");
    let big = format!(r#"{{"policy":"global","key":"{}"}}"#, "x".repeat(100_000));
    let (st, _, _) = post(b, "/v1/check", &big).await;
    assert_eq!(st, 413, "bodies over the limit are refused");
}

#[test]
fn invalid_configuration_stops_start_up_naming_file_line_and_field() {
    let dir = std::env::temp_dir().join(format!("srv-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let conf = dir.join("bad.toml");
    std::fs::write(
        &conf,
        "[[policy]]\nname = \"a\"\nalgorithm = \"gcra\"\nlimit = 5\nperiod = \"15 sec\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(crate::running::BIN)
        .args(["--config", conf.to_str().expect("path")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:5: policy[0].period:"), "{err}");
    assert!(err.contains("15 sec"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn metrics_and_openapi() {
    let s = start(&[], &[]);
    let b = &s.base;
    for _ in 0..3 {
        let _ = post(b, "/v1/check", r#"{"policy":"per-client","key":"m"}"#).await;
    }
    let _ = client().get(format!("{b}/")).send().await.expect("GET /");
    let r = client()
        .get(format!("{b}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("text");
    for line in [
        "tollgate_decisions_total{policy=\"per-client\",outcome=\"allowed\"} 2",
        "tollgate_decisions_total{policy=\"per-client\",outcome=\"denied\"} 2",
        "tollgate_store_errors_total 0",
        "tollgate_fallback_active 0",
        "tollgate_keys_held 3",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    assert!(
        text.contains("tollgate_store_latency_seconds_bucket"),
        "{text}"
    );
    let r = client()
        .get(format!("{b}/openapi.json"))
        .send()
        .await
        .expect("openapi");
    let doc: Value = r.json().await.expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/check",
        "/v1/peek",
        "/v1/reset",
        "/v1/policies",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} undocumented");
    }
}

#[tokio::test]
async fn the_protected_api_proxies_to_an_upstream() {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, Uri};
    // The upstream echoes what it received.
    async fn echo(
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::response::Response {
        let mut seen: serde_json::Map<String, Value> = serde_json::Map::new();
        for (k, v) in &headers {
            seen.insert(
                k.as_str().to_owned(),
                Value::String(v.to_str().unwrap_or("").to_owned()),
            );
        }
        let mut r = axum::response::IntoResponse::into_response(axum::Json(json!({
            "method": method.as_str(),
            "uri": uri.to_string(),
            "headers": seen,
            "body": String::from_utf8_lossy(&body),
        })));
        r.headers_mut()
            .insert("x-upstream", axum::http::HeaderValue::from_static("yes"));
        r.headers_mut().insert(
            "connection",
            axum::http::HeaderValue::from_static("keep-alive, x-secret"),
        );
        r.headers_mut()
            .insert("x-secret", axum::http::HeaderValue::from_static("hop"));
        r
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let up = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, axum::Router::new().fallback(echo)).await;
    });
    let dir = std::env::temp_dir().join(format!("srv-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let conf = dir.join("proxy.toml");
    std::fs::write(
        &conf,
        format!("[[policy]]\nname = \"per-ip\"\nalgorithm = \"gcra\"\nlimit = 2\nperiod = \"1m\"\nkey = \"ip\"\n[protect]\nupstream = \"http://{up}\"\n"),
    )
    .expect("write");
    let s = start(&["--config", conf.to_str().expect("path")], &[]);
    let r = client()
        .put(format!("{}/items/7?colour=red&size=2", s.base))
        .header("x-api-key", "abc")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "hop")
        .body("payload")
        .send()
        .await
        .expect("proxied");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-upstream"], "yes");
    assert!(
        r.headers().get("x-secret").is_none(),
        "hop-by-hop headers named by Connection do not pass back"
    );
    assert!(r.headers().get("ratelimit").is_some());
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["method"], "PUT");
    assert_eq!(body["uri"], "/items/7?colour=red&size=2");
    assert_eq!(body["body"], "payload");
    assert_eq!(body["headers"]["x-api-key"], "abc");
    assert!(body["headers"].get("x-drop-me").is_none(), "{body}");
    assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1");
    let _ = client()
        .get(format!("{}/x", s.base))
        .send()
        .await
        .expect("second");
    let r = client()
        .get(format!("{}/x", s.base))
        .send()
        .await
        .expect("third");
    assert_eq!(r.status(), 429, "the limit applies before the upstream");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The serving line's `workers=` field.
fn workers_of(serving: &str) -> Option<usize> {
    serving
        .split("workers=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::test]
async fn workers_default_to_two_per_core_and_each_serves_its_connections() {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let s = start(&[], &[]);
    assert_eq!(workers_of(&s.serving), Some(2 * cores), "{}", s.serving);
    drop(s);

    let s = start(&[], &[("TOLLGATE_WORKERS", "3")]);
    assert_eq!(workers_of(&s.serving), Some(3), "{}", s.serving);
    // Nine connections, handed to the three workers in turn, each used for
    // several requests at once with the others.
    let mut tasks = Vec::new();
    for c in 0..9 {
        let base = s.base.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("a client");
            let mut statuses = Vec::new();
            for i in 0..5 {
                let r = client
                    .post(format!("{base}/v1/peek"))
                    .json(&json!({"policy": "per-client", "key": format!("w{c}-{i}")}))
                    .send()
                    .await
                    .expect("an answer");
                statuses.push(r.status().as_u16());
            }
            statuses
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), [200; 5]);
    }
}
