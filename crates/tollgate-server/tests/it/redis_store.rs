//! The server on Redis: presets, a fleet of two processes, the on_error modes with
//! Redis stopped mid-run, and shutdown under load.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{PrivateRedis, write_config};
use crate::running::{client, metrics_text, start};

fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn unique(name: &str) -> String {
    format!(
        "tgsrv:{name}:{}:{}:",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    )
}

async fn check(base: &str, body: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{base}/v1/check"))
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_limit_through_redis() {
    let conf = write_config(
        "fleet",
        &format!(
            "[store]\nurl = \"{}\"\nkey_prefix = \"{}\"\ntimeout = \"2s\"\n[[policy]]\nname = \"api\"\nalgorithm = \"sliding_window_log\"\nlimit = 20\nperiod = \"1m\"\n",
            redis_url(),
            unique("fleet")
        ),
    );
    let a = start(&["--config", conf.to_str().expect("path")], &[]);
    let b = start(&["--config", conf.to_str().expect("path")], &[]);
    let mut tasks = Vec::new();
    for i in 0..120 {
        let base = if i % 2 == 0 {
            a.base.clone()
        } else {
            b.base.clone()
        };
        tasks.push(tokio::spawn(async move {
            check(&base, r#"{"policy":"api","key":"shared"}"#).await
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        let (st, body) = t.await.expect("task");
        assert!(st == 200 || st == 429, "{st}: {body}");
        admitted += usize::from(st == 200);
    }
    assert_eq!(admitted, 20, "two servers, one limit");
}

#[tokio::test]
async fn redis_presets_behave_as_documented() {
    let url = redis_url();
    let host_port = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .to_owned();
    let (host, port) = host_port.split_once(':').unwrap_or((&host_port, "6379"));
    for (preset, limit) in [("redis_token_bucket", 1), ("sliding_window", 5)] {
        let prefix = unique(preset);
        let s = start(
            &[],
            &[
                ("RATE_LIMITER_ALGORITHM", preset),
                ("REDIS_HOST", host),
                ("REDIS_PORT", port),
                ("TOLLGATE_KEY_PREFIX", &prefix),
            ],
        );
        let mut statuses = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..limit + 2 {
            let base = s.base.clone();
            tasks.push(tokio::spawn(async move {
                client()
                    .get(format!("{base}/"))
                    .header("user-agent", "preset-test")
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }));
        }
        for t in tasks {
            statuses.push(t.await.expect("task").expect("GET /"));
        }
        let ok = statuses.iter().filter(|&&s| s == 200).count();
        assert_eq!(ok, limit, "{preset}: {statuses:?}");
        assert_eq!(
            statuses.iter().filter(|&&s| s == 429).count(),
            2,
            "{preset}: {statuses:?}"
        );
    }

    // leaking_bucket_queue: 1 per 5 s, 5 waiting. Seven at once: two are refused at
    // once, the first is served at once and the second 5 s later (the other three
    // would follow at 10, 15 and 20 s; the test stops there).
    let prefix = unique("leaky");
    let s = start(
        &[],
        &[
            ("RATE_LIMITER_ALGORITHM", "leaking_bucket_queue"),
            ("REDIS_HOST", host),
            ("REDIS_PORT", port),
            ("TOLLGATE_KEY_PREFIX", &prefix),
        ],
    );
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..7 {
        let base = s.base.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Ok(r) = client().get(format!("{base}/")).send().await {
                let _ = tx.send((r.status().as_u16(), started.elapsed()));
            }
        });
    }
    let mut answers = Vec::new();
    while answers.iter().filter(|(st, _)| *st == 200).count() < 2 {
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an answer within 10 s");
        answers.push(got.expect("answers"));
    }
    let served: Vec<Duration> = answers
        .iter()
        .filter(|(st, _)| *st == 200)
        .map(|(_, t)| *t)
        .collect();
    let refused: Vec<Duration> = answers
        .iter()
        .filter(|(st, _)| *st == 429)
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(refused.len(), 2, "{answers:?}");
    assert!(
        refused.iter().all(|t| *t < Duration::from_secs(2)),
        "refusals are immediate: {answers:?}"
    );
    assert!(served[0] < Duration::from_secs(2), "{answers:?}");
    assert!(
        served[1] >= Duration::from_millis(4_500) && served[1] < Duration::from_secs(8),
        "the second leaves 5 s later: {answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_modes_while_redis_is_down_and_recovery_without_restart() {
    let mut redis = PrivateRedis::start();
    let port = redis.port;
    let mut servers = Vec::new();
    for mode in ["deny", "allow", "local"] {
        let conf = write_config(
            &format!("onerror-{mode}"),
            &format!(
                "[store]\nurl = \"redis://127.0.0.1:{port}/0\"\non_error = \"{mode}\"\ntimeout = \"200ms\"\nnodes = 2\n[[policy]]\nname = \"api\"\nalgorithm = \"gcra\"\nlimit = 4\nperiod = \"1m\"\n"
            ),
        );
        servers.push((
            mode,
            start(&["--config", conf.to_str().expect("path")], &[]),
        ));
    }
    for (mode, s) in &servers {
        let (st, _) = check(&s.base, r#"{"policy":"api","key":"k"}"#).await;
        assert_eq!(st, 200, "{mode}: before the outage");
    }
    redis.kill();
    for (mode, s) in &servers {
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let (st, body) = check(&s.base, r#"{"policy":"api","key":"k"}"#).await;
            statuses.push(st);
            match *mode {
                "deny" => assert_eq!(body["status"], 503, "{body}"),
                "allow" => assert_eq!(body["fallback"], "allow", "{body}"),
                _ => assert_eq!(body["fallback"], "local", "{body}"),
            }
        }
        match *mode {
            "deny" => assert_eq!(statuses, [503, 503, 503, 503]),
            "allow" => assert_eq!(statuses, [200, 200, 200, 200]),
            // This node's share: limit 4 / 2 nodes.
            _ => assert_eq!(statuses, [200, 200, 429, 429]),
        }
        let r = client()
            .get(format!("{}/readyz", s.base))
            .send()
            .await
            .expect("readyz");
        assert_eq!(r.status(), 503, "{mode}: not ready while the store is down");
        let metrics = metrics_text(&s.base).await;
        assert!(
            metrics.contains("tollgate_fallback_active 1"),
            "{mode}: {metrics}"
        );
    }
    redis.restart();
    for (mode, s) in &servers {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (st, body) = check(&s.base, r#"{"policy":"api","key":"k2"}"#).await;
            if st == 200 && body.get("fallback").is_none() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{mode}: no recovery: {st} {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = client()
            .get(format!("{}/readyz", s.base))
            .send()
            .await
            .expect("readyz");
        assert_eq!(r.status(), 200, "{mode}: ready again");
        let metrics = metrics_text(&s.base).await;
        assert!(
            metrics.contains("tollgate_fallback_active 0"),
            "{mode}: {metrics}"
        );
        // The server writes the line before it answers, but the test reads its
        // stderr on another thread: wait for the line a moment.
        let mut log: Vec<String> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !log.iter().any(|l| l.contains("answers again")) {
            let left = deadline.saturating_duration_since(Instant::now());
            match s.log.recv_timeout(left) {
                Ok(line) => log.push(line),
                Err(_) => break,
            }
        }
        assert!(
            log.iter().any(|l| l.contains("store failed")),
            "{mode}: a log line says the fallback started: {log:?}"
        );
        assert!(
            log.iter().any(|l| l.contains("answers again")),
            "{mode}: and that it stopped: {log:?}"
        );
    }
}

/// A hung Redis (frozen: connected, never answering) under `on_error = "local"`:
/// after `breaker_failures` decisions in a row that waited out the timeout, the
/// fallback answers at once (no request waits for Redis), `/metrics` counts the
/// decisions held back, and once Redis answers again a probe closes the breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_opens_the_breaker_and_the_fallback_answers_at_once() {
    let redis = PrivateRedis::start();
    let port = redis.port;
    let conf = write_config(
        "breaker",
        &format!(
            "[store]\nurl = \"redis://127.0.0.1:{port}/0\"\non_error = \"local\"\ntimeout = \"300ms\"\nbreaker_failures = 2\nbreaker_cooldown = \"800ms\"\n[[policy]]\nname = \"api\"\nalgorithm = \"gcra\"\nlimit = 1000\nperiod = \"1m\"\n"
        ),
    );
    let s = start(&["--config", conf.to_str().expect("path")], &[]);
    let body = r#"{"policy":"api","key":"k"}"#;
    let (st, v) = check(&s.base, body).await;
    assert_eq!((st, v.get("fallback")), (200, None), "before: {v}");

    redis.signal("STOP");
    for i in 0..2 {
        let started = Instant::now();
        let (st, v) = check(&s.base, body).await;
        assert_eq!((st, &v["fallback"]), (200, &Value::from("local")), "{v}");
        assert!(
            started.elapsed() >= Duration::from_millis(290),
            "failure {i} waited out the timeout: {:?}",
            started.elapsed()
        );
    }
    for _ in 0..10 {
        let started = Instant::now();
        let (st, v) = check(&s.base, body).await;
        assert_eq!((st, &v["fallback"]), (200, &Value::from("local")), "{v}");
        assert!(
            started.elapsed() < Duration::from_millis(150),
            "an open breaker answers at once, not after the timeout: {:?}",
            started.elapsed()
        );
    }
    let metrics = metrics_text(&s.base).await;
    let held: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_store_short_circuited_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no short-circuit counter: {metrics}"));
    assert!(held >= 10, "{metrics}");
    assert!(metrics.contains("tollgate_fallback_active 1"), "{metrics}");

    redis.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, v) = check(&s.base, body).await;
        if st == 200 && v.get("fallback").is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {st} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = metrics_text(&s.base).await;
    assert!(metrics.contains("tollgate_fallback_active 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_request_in_flight() {
    // A leaky bucket holds requests: 10 per second, 8 waiting, so 8 requests at once
    // are answered over 0.7 s. SIGTERM comes while they wait.
    let conf = write_config(
        "sigterm",
        "[[policy]]\nname = \"queue\"\nalgorithm = \"leaky_bucket\"\nlimit = 10\nperiod = \"1s\"\nburst = 8\nkey = \"global\"\n",
    );
    let mut s = start(&["--config", conf.to_str().expect("path")], &[]);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let base = s.base.clone();
        tasks.push(tokio::spawn(async move {
            client()
                .get(format!("{base}/"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let pid = s.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(killed.success());
    for t in tasks {
        assert_eq!(
            t.await
                .expect("task")
                .expect("an answer, not a dropped connection"),
            200
        );
    }
    let status = s.child.wait().expect("exit");
    assert_eq!(status.code(), Some(0));
    // New connections are refused once it has stopped.
    assert!(client().get(format!("{}/", s.base)).send().await.is_err());
    let log: Vec<String> = s.log.try_iter().collect();
    assert!(log.iter().any(|l| l.contains("shutdown signal")), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_starts_while_redis_is_down_and_uses_it_once_up() {
    let port = crate::harness::free_port();
    let conf = write_config(
        "late-redis",
        &format!(
            "[store]\nurl = \"redis://127.0.0.1:{port}/0\"\non_error = \"local\"\ntimeout = \"200ms\"\n[[policy]]\nname = \"api\"\nalgorithm = \"gcra\"\nlimit = 3\nperiod = \"1m\"\n"
        ),
    );
    let s = start(&["--config", conf.to_str().expect("path")], &[]);
    let r = client()
        .get(format!("{}/readyz", s.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 503, "not ready without its store");
    let (st, body) = check(&s.base, r#"{"policy":"api","key":"k"}"#).await;
    assert_eq!(
        (st, body["fallback"].as_str()),
        (200, Some("local")),
        "{body}"
    );
    let _redis = PrivateRedis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, body) = check(&s.base, r#"{"policy":"api","key":"k2"}"#).await;
        if st == 200 && body.get("fallback").is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "never used Redis: {st} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = client()
        .get(format!("{}/readyz", s.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 200);
}
