//! The Envoy rate limit service (gRPC `ShouldRateLimit`) of `tollgate serve`: the real
//! binary, a tonic client, configuration files in envoyproxy/ratelimit's format.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tollgate_envoy::proto::rate_limit_descriptor::Entry;
use tollgate_envoy::proto::rate_limit_response::Code;
use tollgate_envoy::proto::rate_limit_service_client::RateLimitServiceClient;
use tollgate_envoy::proto::{
    RateLimitDescriptor, RateLimitRequest, RateLimitResponse, UInt64Value,
};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::running::{Server, client, metrics_text, start};

fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A name no other run (or test) uses.
fn unique(name: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{name}_{}_{}_{}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh directory holding `files`, and a TOML configuration that serves them.
fn setup(name: &str, files: &[(&str, &str)], store: &str) -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("tollgate-envoy-it")
        .join(unique(name));
    let dir = root.join("ratelimit");
    std::fs::create_dir_all(&dir).expect("create the config dir");
    for (file, text) in files {
        std::fs::write(dir.join(file), text).expect("write a config file");
    }
    let toml = root.join("tollgate.toml");
    std::fs::write(
        &toml,
        format!(
            "[store]\n{store}\n[envoy]\nlisten = \"127.0.0.1:0\"\nconfig_dir = \"{}\"\nreload_interval = \"50ms\"\n",
            dir.display()
        ),
    )
    .expect("write tollgate.toml");
    (dir, toml)
}

/// A server on the memory store whose one domain (returned) has one rule, `k`, at
/// 1,000 a day: room for any test's calls.
fn roomy_memory_server(name: &str) -> (String, Server) {
    let domain = unique(name);
    let file = format!(
        "domain: {domain}\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: day\n      requests_per_unit: 1000\n"
    );
    let (_dir, toml) = setup(name, &[("rules.yaml", &file)], "url = \"memory://\"");
    (domain, serve(&toml, &[]))
}

fn serve(toml: &Path, env: &[(&str, &str)]) -> Server {
    start(&["--config", toml.to_str().expect("UTF-8 path")], env)
}

async fn connect(server: &Server) -> RateLimitServiceClient<Channel> {
    let url = server.grpc.clone().expect("the server logs grpc_listen=");
    RateLimitServiceClient::connect(url)
        .await
        .expect("connect over gRPC")
}

fn request(domain: &str, descriptors: &[&[(&str, &str)]], hits: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors: descriptors
            .iter()
            .map(|d| RateLimitDescriptor {
                entries: d
                    .iter()
                    .map(|(k, v)| Entry {
                        key: (*k).to_owned(),
                        value: (*v).to_owned(),
                    })
                    .collect(),
                ..RateLimitDescriptor::default()
            })
            .collect(),
        hits_addend: hits,
    }
}

async fn ask(
    c: &mut RateLimitServiceClient<Channel>,
    domain: &str,
    descriptors: &[&[(&str, &str)]],
) -> RateLimitResponse {
    c.should_rate_limit(request(domain, descriptors, 0))
        .await
        .expect("ShouldRateLimit answers")
        .into_inner()
}

/// How many of `n` calls are answered OK overall.
async fn admitted(
    c: &mut RateLimitServiceClient<Channel>,
    n: usize,
    domain: &str,
    descriptors: &[&[(&str, &str)]],
) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if ask(c, domain, descriptors).await.overall_code == Code::Ok as i32 {
            ok += 1;
        }
    }
    ok
}

fn code(r: &RateLimitResponse, i: usize) -> Code {
    Code::try_from(r.statuses[i].code).expect("a known code")
}

/// Waits, if needed, so the next `margin` does not cross a boundary of the
/// clock-aligned windows of `unit_secs` (the fixed windows envoyproxy/ratelimit uses).
async fn clear_of_boundary(unit_secs: u64, margin: Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    let into =
        Duration::from_nanos((now.as_nanos() % (u128::from(unit_secs) * 1_000_000_000)) as u64);
    let left = Duration::from_secs(unit_secs) - into;
    if left < margin {
        tokio::time::sleep(left + Duration::from_millis(200)).await;
    }
}

/// A file in the style of envoyproxy/ratelimit's README examples, for `domain`.
fn example(domain: &str) -> String {
    format!(
        r#"# Per-caller limits of a messaging API
domain: {domain}
descriptors:
  # 5 an hour per number for promotions, nested under the message type
  - key: message_type
    value: promo
    descriptors:
      - key: to_number
        rate_limit:
          unit: hour
          requests_per_unit: 5

  # 10 an hour per number, whatever the message
  - key: to_number
    rate_limit:
      unit: hour
      requests_per_unit: 10

  # one address is blocked
  - key: remote_address
    value: 203.0.113.9
    rate_limit:
      unit: second
      requests_per_unit: 0

  # internal callers are not limited
  - key: caller
    value: internal
    rate_limit:
      unlimited: true

  # a named per-user limit, and a route that replaces it
  - key: route
    value: reads
    descriptors:
      - key: user
        rate_limit:
          name: reads_per_user
          unit: hour
          requests_per_unit: 2
  - key: route
    value: export
    descriptors:
      - key: user
        rate_limit:
          replaces:
            - name: reads_per_user
          unit: hour
          requests_per_unit: 4

  # soft launch
  - key: beta
    shadow_mode: true
    rate_limit:
      unit: hour
      requests_per_unit: 1

  # tollgate's extension: a token bucket's burst, and an exact sliding window
  - key: plan
    value: burst
    rate_limit:
      unit: hour
      requests_per_unit: 1
      algorithm: gcra
      burst: 3
  - key: plan
    value: exact
    rate_limit:
      unit: hour
      requests_per_unit: 2
      algorithm: sliding_window_log
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn should_rate_limit_over_grpc_as_envoyproxy_ratelimit_documents() {
    let domain = unique("msg");
    let (_dir, toml) = setup(
        "basic",
        &[("messaging.yaml", &example(&domain))],
        "url = \"memory://\"",
    );
    let server = serve(&toml, &[]);
    let mut c = connect(&server).await;
    let d = domain.as_str();
    clear_of_boundary(3600, Duration::from_secs(60)).await;

    // Over the limit after requests_per_unit, with the statuses' fields.
    let number: &[(&str, &str)] = &[("to_number", "5550001")];
    for i in 0..10u32 {
        let r = ask(&mut c, d, &[number]).await;
        assert_eq!(r.overall_code, Code::Ok as i32, "call {i}");
        let s = &r.statuses[0];
        let limit = s.current_limit.as_ref().expect("current_limit");
        assert_eq!(
            (limit.requests_per_unit, limit.unit),
            (10, 3),
            "10 per HOUR"
        );
        assert_eq!(s.limit_remaining, 9 - i);
        let reset = s.duration_until_reset.expect("duration_until_reset");
        assert!(reset.seconds > 0 && reset.seconds <= 3600, "{reset:?}");
    }
    let r = ask(&mut c, d, &[number]).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(
        (code(&r, 0), r.statuses[0].limit_remaining),
        (Code::OverLimit, 0)
    );

    // hits_addend is the cost; 0 means 1.
    let other: &[(&str, &str)] = &[("to_number", "5550002")];
    let r = c
        .should_rate_limit(request(d, &[other], 8))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!((code(&r, 0), r.statuses[0].limit_remaining), (Code::Ok, 2));
    let r = c
        .should_rate_limit(request(d, &[other], 3))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(code(&r, 0), Code::OverLimit, "8 + 3 > 10");
    let mut per_descriptor = request(d, &[other], 9);
    per_descriptor.descriptors[0].hits_addend = Some(UInt64Value { value: 2 });
    let r = c
        .should_rate_limit(per_descriptor)
        .await
        .expect("answer")
        .into_inner();
    assert_eq!((code(&r, 0), r.statuses[0].limit_remaining), (Code::Ok, 0));

    // Nested descriptors, decided together: the denied call takes nothing.
    let promo: &[(&str, &str)] = &[("message_type", "promo"), ("to_number", "5550003")];
    let plain: &[(&str, &str)] = &[("to_number", "5550003")];
    assert_eq!(admitted(&mut c, 6, d, &[promo, plain]).await, 5);
    let r = ask(&mut c, d, &[promo, plain]).await;
    assert_eq!((code(&r, 0), code(&r, 1)), (Code::OverLimit, Code::Ok));
    assert_eq!(r.statuses[1].limit_remaining, 5);
    assert_eq!(admitted(&mut c, 6, d, &[plain]).await, 5);

    // requests_per_unit 0 blocks; unlimited is OK with 2^32 - 1 remaining.
    let r = ask(&mut c, d, &[&[("remote_address", "203.0.113.9")]]).await;
    assert_eq!(code(&r, 0), Code::OverLimit);
    for _ in 0..20 {
        let r = ask(&mut c, d, &[&[("caller", "internal")]]).await;
        assert_eq!(
            (code(&r, 0), r.statuses[0].limit_remaining),
            (Code::Ok, u32::MAX)
        );
    }

    // Unknown descriptors, values and domains are allowed with no limit.
    for (dom, desc) in [
        (d, [("remote_address", "203.0.113.10")]),
        (d, [("nobody", "knows")]),
        ("no_such_domain", [("to_number", "5550001")]),
    ] {
        let r = ask(&mut c, dom, &[&desc]).await;
        assert_eq!(r.overall_code, Code::Ok as i32, "{dom} {desc:?}");
        assert_eq!(r.statuses[0].current_limit, None);
    }

    // replaces: the export route's limit replaces the per-user reads limit.
    let reads: &[(&str, &str)] = &[("route", "reads"), ("user", "ann")];
    let export: &[(&str, &str)] = &[("route", "export"), ("user", "ann")];
    assert_eq!(admitted(&mut c, 5, d, &[reads, export]).await, 4);
    assert_eq!(admitted(&mut c, 3, d, &[reads]).await, 2, "reads untouched");
    let r = ask(&mut c, d, &[reads]).await;
    let name = r.statuses[0].current_limit.as_ref().map(|l| l.name.clone());
    assert_eq!(name.as_deref(), Some("reads_per_user"));

    // Shadow mode: over its limit, still OK.
    for _ in 0..3 {
        let r = ask(&mut c, d, &[&[("beta", "tester")]]).await;
        assert_eq!((r.overall_code, code(&r, 0)), (Code::Ok as i32, Code::Ok));
    }

    // The algorithm extension: gcra with a burst of 3, an exact sliding window.
    assert_eq!(admitted(&mut c, 5, d, &[&[("plan", "burst")]]).await, 3);
    let r = ask(&mut c, d, &[&[("plan", "burst")]]).await;
    let retry = r.statuses[0].duration_until_reset.expect("retry");
    assert!(
        (3590..=3600).contains(&retry.seconds),
        "one token an hour: {retry:?}"
    );
    assert_eq!(admitted(&mut c, 4, d, &[&[("plan", "exact")]]).await, 2);

    // Malformed calls are INVALID_ARGUMENT.
    let e = c
        .should_rate_limit(request("", &[number], 0))
        .await
        .expect_err("no domain");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // The metrics, per rule, beside the server's own.
    let text = metrics_text(&server.base).await;
    let line = |name: &str, rule: &str| {
        let head = format!("tollgate_{name}_total{{domain=\"{domain}\",rule=\"{rule}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(head.as_str()))
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert_eq!(line("envoy_shadow_mode", "beta"), Some(2), "{text}");
    assert_eq!(
        line("envoy_over_limit", "to_number"),
        Some(1 + 3 + 1),
        "{text}"
    );
    assert_eq!(
        line("envoy_near_limit", "remote_address_203.0.113.9"),
        Some(0),
        "{text}"
    );
    assert!(
        line("envoy_near_limit", "to_number").is_some_and(|n| n >= 2),
        "hits above 8 of 10: {text}"
    );
    assert!(
        text.contains("tollgate_envoy_config_loads_total{outcome=\"ok\"} 1"),
        "{text}"
    );
    // gRPC decisions go through the server's store and its metrics.
    assert!(
        text.contains(&format!("policy=\"envoy/{domain}/to_number/fixed_window\"")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_serving_and_global_shadow_mode_answers_ok() {
    let domain = unique("shadow");
    let file = format!(
        "domain: {domain}\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: day\n      requests_per_unit: 2\n"
    );
    let (_dir, toml) = setup("shadow", &[("s.yaml", &file)], "url = \"memory://\"");
    let server = serve(&toml, &[("TOLLGATE_ENVOY_SHADOW_MODE", "true")]);
    let url = server.grpc.clone().expect("grpc");
    let channel = Channel::from_shared(url)
        .expect("a URL")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    for service in ["", "envoy.service.ratelimit.v3.RateLimitService"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("health answers")
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let mut c = connect(&server).await;
    clear_of_boundary(86_400, Duration::from_secs(30)).await;
    for i in 0..4 {
        let r = ask(&mut c, &domain, &[&[("k", "v")]]).await;
        assert_eq!(r.overall_code, Code::Ok as i32, "call {i}");
        let want = if i < 2 { Code::Ok } else { Code::OverLimit };
        assert_eq!(code(&r, 0), want, "the status still says, call {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_stops_start_up_naming_the_file_and_field() {
    let (dir, toml) = setup(
        "invalid",
        &[(
            "bad.yaml",
            "domain: x\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 1\n",
        )],
        "url = \"memory://\"",
    );
    let out = std::process::Command::new(crate::running::BIN)
        .args(["serve", "--port", "0", "--config"])
        .arg(&toml)
        .env_remove("TOLLGATE_CONFIG")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: descriptors[0].rate_limit.unit: unknown unit \"fortnight\"",
            dir.join("bad.yaml").display()
        )),
        "{err}"
    );
    // check-config reports the same; fixed, it shows the section and the domains.
    let out = std::process::Command::new(crate::running::BIN)
        .arg("check-config")
        .arg(&toml)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    std::fs::write(
        dir.join("bad.yaml"),
        "domain: x\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: week\n      requests_per_unit: 1\n",
    )
    .expect("fix");
    let out = std::process::Command::new(crate::running::BIN)
        .arg("check-config")
        .arg(&toml)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("[envoy]\nlisten = \"127.0.0.1:0\""), "{text}");
    assert!(text.contains("# domain \"x\": 1 rate limits"), "{text}");
    // On Redis, a year is longer than the store holds: named at start-up.
    std::fs::write(
        dir.join("bad.yaml"),
        "domain: x\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: year\n      requests_per_unit: 1\n",
    )
    .expect("year");
    let out = std::process::Command::new(crate::running::BIN)
        .args(["serve", "--port", "0", "--config"])
        .arg(&toml)
        .env("TOLLGATE_STORE_URL", redis_url())
        .env_remove("TOLLGATE_CONFIG")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("rule \"k\": a year is longer than the store holds"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_fails_no_call_and_applies_the_new_limits() {
    let domain = unique("reload");
    let file = |limit: u32| {
        format!(
            "domain: {domain}\ndescriptors:\n  - key: user\n    rate_limit:\n      unit: hour\n      requests_per_unit: {limit}\n  - key: load\n    rate_limit:\n      unit: hour\n      requests_per_unit: 1000000\n"
        )
    };
    let (dir, toml) = setup("reload", &[("live.yaml", &file(3))], "url = \"memory://\"");
    let server = serve(&toml, &[]);
    clear_of_boundary(3600, Duration::from_secs(60)).await;
    let mut c = connect(&server).await;
    assert_eq!(
        admitted(&mut c, 5, &domain, &[&[("user", "before")]]).await,
        3
    );

    // Load: four callers, each on its own connection, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 0..4 {
        let mut c = connect(&server).await;
        let (stop, calls, domain) = (Arc::clone(&stop), Arc::clone(&calls), domain.clone());
        tasks.push(tokio::spawn(async move {
            let value = format!("caller{n}");
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .should_rate_limit(request(&domain, &[&[("load", &value)]], 0))
                    .await
                    .map_err(|e| format!("a call failed during the reload: {e}"))?
                    .into_inner();
                if r.overall_code != Code::Ok as i32 {
                    return Err(format!("a call was refused during the reload: {r:?}"));
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // An invalid file: reported, the previous limits stay.
    let tmp = dir.join(".live.yaml.tmp");
    std::fs::write(&tmp, "domain: [unclosed\n").expect("write");
    std::fs::rename(&tmp, dir.join("live.yaml")).expect("swap");
    let mut log = Vec::new();
    wait_for_log(&server, &mut log, "invalid Envoy rate limit configuration");
    assert_eq!(
        admitted(&mut c, 5, &domain, &[&[("user", "during")]]).await,
        3
    );
    // The new limits, swapped in atomically.
    std::fs::write(&tmp, file(7)).expect("write");
    std::fs::rename(&tmp, dir.join("live.yaml")).expect("swap");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = ask(&mut c, &domain, &[&[("user", "probe")]]).await;
        let limit = r.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.requests_per_unit);
        if limit == Some(7) {
            break;
        }
        assert!(Instant::now() < deadline, "the new file was never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        admitted(&mut c, 9, &domain, &[&[("user", "after")]]).await,
        7
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("task").expect("every call answered OK");
    }
    assert!(calls.load(Ordering::Relaxed) > 20, "the load ran");
    wait_for_log(&server, &mut log, "Envoy rate limit configuration reloaded");
    let invalid = log
        .iter()
        .find(|l| l.contains("invalid Envoy rate limit configuration"))
        .expect("logged");
    assert!(invalid.contains("live.yaml"), "{invalid}");
}

/// Reads the server's log into `log` until a line holds `needle` (10 s at most).
fn wait_for_log(server: &Server, log: &mut Vec<String>, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.iter().any(|l| l.contains(needle)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.log.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => panic!("no log line holds {needle:?}: {}", log.join("\n")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_redis_hold_one_limit_exactly() {
    let domain = unique("fleet");
    let file = format!(
        "domain: {domain}\ndescriptors:\n  - key: api_key\n    rate_limit:\n      unit: hour\n      requests_per_unit: 40\n  - key: smooth\n    rate_limit:\n      unit: hour\n      requests_per_unit: 25\n      algorithm: sliding_window_counter\n"
    );
    let store = format!("url = \"{}\"\ntimeout = \"2s\"", redis_url());
    let (_dir, toml) = setup("fleet", &[("fleet.yaml", &file)], &store);
    let a = serve(&toml, &[]);
    let b = serve(&toml, &[]);
    clear_of_boundary(3600, Duration::from_secs(60)).await;
    for (key, limit) in [("api_key", 40), ("smooth", 25)] {
        let ok = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for n in 0..8 {
            let mut c = connect(if n % 2 == 0 { &a } else { &b }).await;
            let (ok, domain) = (Arc::clone(&ok), domain.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..15 {
                    let r = c
                        .should_rate_limit(request(&domain, &[&[(key, "shared")]], 0))
                        .await
                        .expect("answer")
                        .into_inner();
                    if r.overall_code == Code::Ok as i32 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(
            ok.load(Ordering::Relaxed),
            limit,
            "{key}: 120 calls over two nodes"
        );
    }
}

/// A private redis-server on a free port; dropping it stops it.
struct PrivateRedis {
    child: std::process::Child,
    port: u16,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let redis = PrivateRedis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn cli(&self, args: &[&str]) {
        let status = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli on PATH");
        assert!(status.success(), "redis-cli {args:?}");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_grpc_call_in_flight() {
    let redis = PrivateRedis::start();
    let domain = unique("term");
    let file = format!(
        "domain: {domain}\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: day\n      requests_per_unit: 100\n"
    );
    let store = format!(
        "url = \"redis://127.0.0.1:{}\"\ntimeout = \"5s\"",
        redis.port
    );
    let (_dir, toml) = setup("term", &[("t.yaml", &file)], &store);
    let mut server = serve(&toml, &[]);
    let mut c = connect(&server).await;
    assert_eq!(admitted(&mut c, 1, &domain, &[&[("k", "warm")]]).await, 1);
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(connect(&server).await);
    }
    // Redis holds every command for a while: the calls below wait in the server.
    redis.cli(&["CLIENT", "PAUSE", "2000", "ALL"]);
    let mut tasks = Vec::new();
    for (n, mut c) in clients.into_iter().enumerate() {
        let domain = domain.clone();
        tasks.push(tokio::spawn(async move {
            let value = format!("v{n}");
            c.should_rate_limit(request(&domain, &[&[("k", &value)]], 0))
                .await
                .map(|r| r.into_inner().overall_code)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(killed.success());
    for t in tasks {
        let answer = t.await.expect("task");
        assert_eq!(
            answer.map_err(|e| e.to_string()),
            Ok(Code::Ok as i32),
            "an answer, not a dropped call"
        );
    }
    let status = server.child.wait().expect("exit");
    assert_eq!(status.code(), Some(0));
    let url = server.grpc.clone().expect("grpc");
    assert!(
        RateLimitServiceClient::connect(url).await.is_err(),
        "no new connections once stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_grpc_share_a_counter_through_a_named_policy() {
    let domain = unique("shared");
    let file = format!(
        "domain: {domain}\ndescriptors:\n  - key: api_key\n    rate_limit:\n      policy: api\n  - key: own\n    rate_limit:\n      unit: hour\n      requests_per_unit: 5\n      algorithm: gcra\n"
    );
    let policy = "[[policy]]\nname = \"api\"\nalgorithm = \"gcra\"\nlimit = 5\nperiod = \"1h\"\n";
    for store in [
        "url = \"memory://\"".to_owned(),
        format!("url = \"{}\"\ntimeout = \"2s\"", redis_url()),
    ] {
        let (_dir, toml) = setup(
            "shared",
            &[("s.yaml", &file)],
            &format!("{store}\n{policy}"),
        );
        let server = serve(&toml, &[]);
        let mut c = connect(&server).await;
        let key = unique("alice");
        let http = |expect: u16| {
            let (base, key, store) = (server.base.clone(), key.clone(), store.clone());
            async move {
                let r = client()
                    .post(format!("{base}/v1/check"))
                    .body(format!("{{\"policy\":\"api\",\"key\":\"{key}\"}}"))
                    .send()
                    .await
                    .expect("HTTP answers");
                assert_eq!(r.status().as_u16(), expect, "{store}");
            }
        };
        for _ in 0..3 {
            http(200).await;
        }
        let r = ask(&mut c, &domain, &[&[("api_key", &key)]]).await;
        let limit = r.statuses[0].current_limit.as_ref().expect("limit");
        assert_eq!((limit.requests_per_unit, limit.unit), (5, 3), "5 per HOUR");
        assert_eq!(
            r.statuses[0].limit_remaining, 1,
            "3 were taken over HTTP: {store}"
        );
        assert_eq!(
            admitted(&mut c, 2, &domain, &[&[("api_key", &key)]]).await,
            1
        );
        http(429).await;
        // A rule with the same numbers of its own counts apart.
        assert_eq!(admitted(&mut c, 6, &domain, &[&[("own", &key)]]).await, 5);
    }
}

/// One raw HTTP/2 call to `ShouldRateLimit` with `body` as sent bytes; the
/// answer's `grpc-status` (from the trailers, or the headers of a trailers-only
/// answer).
async fn raw_call(server: &Server, body: Vec<u8>, encoding: Option<&str>) -> String {
    use http_body_util::{BodyExt, Full};
    let url = server.grpc.clone().expect("grpc");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<bytes::Bytes>>();
    let mut request = http::Request::post(format!(
        "{url}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers");
    if let Some(e) = encoding {
        request = request.header("grpc-encoding", e);
    }
    let request = request
        .body(Full::new(bytes::Bytes::from(body)))
        .expect("a request");
    let response = client.request(request).await.expect("an HTTP/2 answer");
    assert_eq!(response.status(), 200, "gRPC errors travel as grpc-status");
    let in_headers = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().expect("ASCII").to_owned());
    let collected = response.into_body().collect().await.expect("the body");
    let in_trailers = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().expect("ASCII").to_owned());
    in_headers
        .or(in_trailers)
        .expect("a grpc-status in the headers or the trailers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_invalid_calls_get_grpc_errors_and_the_service_goes_on() {
    use prost::Message;
    let (domain, server) = roomy_memory_server("malformed");

    // No domain: INVALID_ARGUMENT, through the generated client.
    let mut c = connect(&server).await;
    let err = c
        .should_rate_limit(request("", &[&[("k", "v")]], 0))
        .await
        .expect_err("a request naming no domain is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    let good = request(&domain, &[&[("k", "v")]], 0).encode_to_vec();
    let frame = |flag: u8, len: usize, payload: &[u8]| {
        let mut b = vec![flag];
        b.extend_from_slice(&u32::try_from(len).expect("small").to_be_bytes());
        b.extend_from_slice(payload);
        b
    };
    // A well-formed raw call is OK (grpc-status 0).
    assert_eq!(
        raw_call(&server, frame(0, good.len(), &good), None).await,
        "0"
    );
    // Cut short: INTERNAL (13). No message at all: INTERNAL.
    assert_eq!(
        raw_call(&server, frame(0, good.len() + 10, &good), None).await,
        "13"
    );
    assert_eq!(raw_call(&server, Vec::new(), None).await, "13");
    // Two messages in a unary call, a compressed flag with no encoding named:
    // UNIMPLEMENTED (12).
    let mut two = frame(0, good.len(), &good);
    two.extend(frame(0, good.len(), &good));
    assert_eq!(raw_call(&server, two, None).await, "12");
    assert_eq!(
        raw_call(&server, frame(1, good.len(), &good), None).await,
        "12"
    );
    // Not protobuf: INTERNAL.
    assert_eq!(
        raw_call(&server, frame(0, 3, b"\xff\xff\xff"), None).await,
        "13"
    );
    // A compression this server does not speak: the generated service's
    // UNIMPLEMENTED.
    assert_eq!(
        raw_call(&server, frame(1, good.len(), &good), Some("gzip")).await,
        "12"
    );

    // And the service still decides.
    let r = ask(&mut c, &domain, &[&[("k", "v")]]).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses[0].limit_remaining, 1000 - 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_decides_while_redis_is_down_and_redis_again_once_it_is_back() {
    let mut redis = crate::harness::PrivateRedis::start();
    let domain = unique("onerror");
    // gcra, 4 an hour with a burst of 4: nothing refills while the test runs, and
    // this node's local share is 4 / 2 nodes = 2.
    let file = format!(
        "domain: {domain}\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: hour\n      requests_per_unit: 4\n      algorithm: gcra\n"
    );
    let mut servers = Vec::new();
    for mode in ["deny", "allow", "local"] {
        let store = format!(
            "url = \"redis://127.0.0.1:{}\"\non_error = \"{mode}\"\ntimeout = \"200ms\"\nnodes = 2",
            redis.port
        );
        let (_dir, toml) = setup(&format!("onerror-{mode}"), &[("o.yaml", &file)], &store);
        let server = serve(&toml, &[]);
        let c = connect(&server).await;
        servers.push((mode, server, c));
    }
    // The three servers share one Redis: each counts on keys of its own.
    let d = domain.as_str();
    for (mode, _, c) in &mut servers {
        assert_eq!(
            admitted(c, 5, d, &[&[("k", &format!("before-{mode}"))]]).await,
            4,
            "{mode}: Redis decides, the whole limit"
        );
    }

    redis.kill();
    for (mode, server, c) in &mut servers {
        let mut codes = Vec::new();
        for _ in 0..4 {
            let r = ask(c, d, &[&[("k", &format!("down-{mode}"))]]).await;
            assert_eq!(r.overall_code, r.statuses[0].code, "{mode}");
            codes.push(code(&r, 0));
            let s = &r.statuses[0];
            let limit = s.current_limit.as_ref().map(|l| l.requests_per_unit);
            assert_eq!(limit, Some(4), "{mode}: the rule's limit");
            match *mode {
                "deny" => {
                    assert_eq!(s.limit_remaining, 0, "{mode}");
                    let reset = s.duration_until_reset.expect("duration_until_reset");
                    assert_eq!((reset.seconds, reset.nanos), (1, 0), "{mode}: retry soon");
                }
                "allow" => assert_eq!(s.limit_remaining, 4, "{mode}: nothing counted"),
                _ => {}
            }
        }
        let (ok, over) = (Code::Ok, Code::OverLimit);
        match *mode {
            "deny" => assert_eq!(
                codes,
                [over, over, over, over],
                "whatever failure_mode_deny"
            ),
            "allow" => assert_eq!(codes, [ok, ok, ok, ok]),
            _ => assert_eq!(codes, [ok, ok, over, over], "this node's share: 4 / 2"),
        }
        let metrics = metrics_text(&server.base).await;
        assert!(
            metrics.contains("tollgate_fallback_active 1"),
            "{mode}: {metrics}"
        );
    }

    redis.restart();
    for (mode, _, c) in &mut servers {
        // A fresh key each try: Redis answers 3 left of 4 after the first call; the
        // fallbacks answer OVER_LIMIT (deny), 4 (allow) or 1 (local).
        let deadline = Instant::now() + Duration::from_secs(10);
        for n in 0.. {
            let r = ask(c, d, &[&[("k", &format!("probe{n}-{mode}"))]]).await;
            if r.overall_code == Code::Ok as i32 && r.statuses[0].limit_remaining == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "{mode}: no recovery: {r:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            admitted(c, 5, d, &[&[("k", &format!("after-{mode}"))]]).await,
            4,
            "{mode}: Redis decides again, the whole limit"
        );
    }
}

/// A gRPC peer that vanished (connected, HTTP/2 started, then silent: it never
/// answers a PING) is pinged after `GRPC_KEEPALIVE` (10 s) of silence and closed when
/// the PING goes unanswered another 10 s: it does not hold its connection for ever.
/// A live client answers the PINGs and keeps its connection (tonic's, here, idle
/// just as long, then still served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_grpc_peer_is_pinged_and_closed_and_a_live_one_kept() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (domain, server) = roomy_memory_server("keepalive");
    let url = server.grpc.clone().expect("grpc");
    let addr = url.trim_start_matches("http://").to_owned();
    let mut live = connect(&server).await;
    let r = ask(&mut live, &domain, &[&[("k", "v")]]).await;
    assert_eq!(r.overall_code, Code::Ok as i32);

    let mut silent = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    // The client preface and an empty SETTINGS frame; nothing more, ever.
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(40), silent.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the silent peer was still connected after 40 s"),
        }
    }
    let closed_after = started.elapsed();
    // Frames: 3-byte length, type, flags, 4-byte stream id, payload.
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= got.len() {
        let len =
            usize::from(got[at]) << 16 | usize::from(got[at + 1]) << 8 | usize::from(got[at + 2]);
        types.push(got[at + 3]);
        at += 9 + len;
    }
    assert!(
        types.contains(&0x6),
        "a PING was sent: frame types {types:?}"
    );
    assert!(
        closed_after >= Duration::from_secs(15) && closed_after < Duration::from_secs(35),
        "closed after {closed_after:?}: expected the interval plus the timeout, 20 s"
    );
    // The live client was as idle and answered its PINGs: its connection is still
    // open (tonic would reconnect unseen, so count the server's connections: the
    // live one and this request's own).
    let metrics = metrics_text(&server.base).await;
    assert!(
        metrics.contains("tollgate_connections_open 2"),
        "the live gRPC connection and this one: {metrics}"
    );
    let r = ask(&mut live, &domain, &[&[("k", "v")]]).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
}

/// A reload that removes a rule removes its series from `/metrics`: the Envoy
/// service's per-rule counters and the server's decisions of its policy. The kept
/// rule keeps its counts, and a rule the reload adds is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_removes_the_metrics_of_the_rules_it_removes() {
    let domain = unique("series");
    let rule = |key: &str| {
        format!("  - key: {key}\n    rate_limit:\n      unit: hour\n      requests_per_unit: 100\n")
    };
    let file = |keys: &[&str]| {
        let rules: String = keys.iter().map(|k| rule(k)).collect();
        format!("domain: {domain}\ndescriptors:\n{rules}")
    };
    let (dir, toml) = setup(
        "series",
        &[("live.yaml", &file(&["kept", "gone"]))],
        "url = \"memory://\"",
    );
    let server = serve(&toml, &[]);
    let mut c = connect(&server).await;
    for key in ["kept", "gone", "kept"] {
        let r = ask(&mut c, &domain, &[&[(key, "v")]]).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
    }
    let hits = |text: &str, key: &str| {
        let labels = format!("{{domain=\"{domain}\",rule=\"{key}\"}}");
        text.lines()
            .find(|l| l.starts_with("tollgate_envoy_total_hits_total") && l.contains(&labels))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let decided = |text: &str, key: &str| {
        let policy = format!("policy=\"envoy/{domain}/{key}/fixed_window\"");
        text.lines()
            .find(|l| {
                l.starts_with("tollgate_decisions_total")
                    && l.contains(&policy)
                    && l.contains("outcome=\"allowed\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let text = metrics_text(&server.base).await;
    assert_eq!(hits(&text, "kept"), Some(2), "{text}");
    assert_eq!(hits(&text, "gone"), Some(1), "{text}");
    assert_eq!(decided(&text, "kept"), Some(2), "{text}");
    assert_eq!(decided(&text, "gone"), Some(1), "{text}");

    let tmp = dir.join(".live.yaml.tmp");
    std::fs::write(&tmp, file(&["kept", "new"])).expect("write");
    std::fs::rename(&tmp, dir.join("live.yaml")).expect("swap");
    let mut log = Vec::new();
    wait_for_log(&server, &mut log, "Envoy rate limit configuration reloaded");
    for key in ["kept", "new"] {
        let r = ask(&mut c, &domain, &[&[(key, "v")]]).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
    }
    let text = metrics_text(&server.base).await;
    assert_eq!(
        hits(&text, "gone"),
        None,
        "the removed rule's series: {text}"
    );
    assert_eq!(
        decided(&text, "gone"),
        None,
        "its policy's decisions: {text}"
    );
    assert_eq!(hits(&text, "kept"), Some(3), "{text}");
    assert_eq!(decided(&text, "kept"), Some(3), "{text}");
    assert_eq!(hits(&text, "new"), Some(1), "{text}");
    assert_eq!(decided(&text, "new"), Some(1), "{text}");
}
