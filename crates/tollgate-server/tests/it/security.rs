//! Security defaults, each checked against the real binary: where it listens, the
//! admin token, forwarded headers, what reaches Redis's Lua, and what the logs print.

use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::scratch_file;
use crate::running::{Server, client, start};

/// The address of this machine other than loopback that a packet to a public
/// address would leave from, if there is one (a UDP "connect" sends nothing).
fn outward_address() -> Option<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

fn port(s: &Server) -> u16 {
    s.base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port in the base URL")
}

fn reaches(ip: IpAddr, port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(2)).is_ok()
}

#[test]
fn it_listens_on_loopback_unless_told_otherwise() {
    let default = start(&[], &[]);
    assert!(
        default.base.starts_with("http://127.0.0.1:"),
        "the default listener is {}",
        default.base
    );
    assert!(reaches(IpAddr::from([127, 0, 0, 1]), port(&default)));

    let everywhere = start(&[], &[("TOLLGATE_LISTEN", "0.0.0.0:0")]);
    assert!(
        everywhere.base.starts_with("http://0.0.0.0:"),
        "TOLLGATE_LISTEN=0.0.0.0:0 listens on {}",
        everywhere.base
    );
    // Seen from this machine's outward address: the default server is not there,
    // the one told to listen everywhere is (so the first check can fail).
    if let Some(ip) = outward_address() {
        assert!(
            !reaches(ip, port(&default)),
            "the default server answers on {ip}"
        );
        assert!(
            reaches(ip, port(&everywhere)),
            "the 0.0.0.0 server does not answer on {ip}"
        );
    }
}

async fn reset(base: &str, authorization: Option<&str>, key: &str) -> (u16, Value) {
    let mut request = client()
        .post(format!("{base}/v1/reset"))
        .header("content-type", "application/json")
        .body(json!({ "key": key, "policy": "per-ip" }).to_string());
    if let Some(a) = authorization {
        request = request.header("authorization", a);
    }
    let r = request.send().await.expect("POST /v1/reset");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn check(base: &str, key: &str) -> u16 {
    client()
        .post(format!("{base}/v1/check"))
        .header("content-type", "application/json")
        .body(json!({ "policy": "per-ip", "key": key }).to_string())
        .send()
        .await
        .expect("POST /v1/check")
        .status()
        .as_u16()
}

const ONE_PER_HOUR: &str = r#"
[[policy]]
name = "per-ip"
algorithm = "fixed_window"
limit = 1
period = "1h"
key = "ip"
"#;

#[tokio::test]
async fn reset_is_off_without_a_token_and_needs_the_exact_token_with_one() {
    let config = scratch_file("one-per-hour.toml", ONE_PER_HOUR.as_bytes());
    let config = config.to_str().expect("utf-8 path");

    for env in [vec![], vec![("TOLLGATE_ADMIN_TOKEN", "")]] {
        let off = start(&["--config", config], &env);
        for auth in [None, Some("Bearer "), Some("Bearer anything")] {
            let (status, body) = reset(&off.base, auth, "k").await;
            assert_eq!(status, 404, "reset without a configured token: {body}");
            assert!(body["detail"].to_string().contains("admin_token"), "{body}");
        }
    }

    let token = "Adm1n-t0ken-for-the-security-test";
    let on = start(&["--config", config], &[("TOLLGATE_ADMIN_TOKEN", token)]);
    assert_eq!(check(&on.base, "k").await, 200);
    assert_eq!(check(&on.base, "k").await, 429);

    let (status, _) = reset(&on.base, None, "k").await;
    assert_eq!(status, 401, "no Authorization header");
    let first_byte = format!("Bearer B{}", &token[1..]);
    let last_byte = format!("Bearer {}X", &token[..token.len() - 1]);
    let prefix = format!("Bearer {}", &token[..token.len() - 1]);
    let longer = format!("Bearer {token}-");
    let other_scheme = format!("Basic {token}");
    for wrong in [&first_byte, &last_byte, &prefix, &longer] {
        let (status, body) = reset(&on.base, Some(wrong), "k").await;
        assert_eq!(status, 403, "{wrong:?}: {body}");
    }
    let (status, _) = reset(&on.base, Some(&other_scheme), "k").await;
    assert_eq!(
        status, 401,
        "a token under another scheme is no bearer token"
    );
    // Nothing above reset the key.
    assert_eq!(check(&on.base, "k").await, 429);

    let (status, body) = reset(&on.base, Some(&format!("Bearer {token}")), "k").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(check(&on.base, "k").await, 200, "the key was really reset");
}

async fn get_with(base: &str, headers: &[(&str, String)]) -> u16 {
    let mut request = client().get(format!("{base}/"));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.expect("GET /").status().as_u16()
}

#[tokio::test]
async fn forwarded_headers_count_only_from_a_trusted_proxy() {
    let untrusted = scratch_file("xff-untrusted.toml", ONE_PER_HOUR.as_bytes());
    let trusted = scratch_file(
        "xff-trusted.toml",
        format!("[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n{ONE_PER_HOUR}").as_bytes(),
    );

    // By default no proxy is trusted: whatever a client claims, every request from
    // 127.0.0.1 is 127.0.0.1's, and the second one is denied.
    let s = start(&["--config", untrusted.to_str().expect("utf-8")], &[]);
    let claims = |i: u8| {
        vec![
            ("x-forwarded-for", format!("203.0.113.{i}")),
            ("forwarded", format!("for=198.51.100.{i}")),
        ]
    };
    assert_eq!(get_with(&s.base, &claims(1)).await, 200);
    for i in 2..6 {
        assert_eq!(get_with(&s.base, &claims(i)).await, 429, "claim {i}");
    }
    assert_eq!(get_with(&s.base, &[]).await, 429);

    // With 127.0.0.1 trusted, each claimed client has its own budget.
    let s = start(&["--config", trusted.to_str().expect("utf-8")], &[]);
    for i in 1..6 {
        assert_eq!(get_with(&s.base, &claims(i)).await, 200, "claim {i}");
    }
    assert_eq!(get_with(&s.base, &claims(1)).await, 429);
}

fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn redis_cli(args: &[&str]) -> String {
    let url = redis_url();
    let out = Command::new("redis-cli")
        .args(["-u", &url, "--raw"])
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8 from redis-cli")
}

/// The texts of the loaded Functions libraries whose names start with `tollgate_`,
/// read from `FUNCTION LIST WITHCODE` (each starts with its `#!lua` line).
fn tollgate_libraries() -> Vec<String> {
    let out = redis_cli(&["FUNCTION", "LIST", "LIBRARYNAME", "tollgate_*", "WITHCODE"]);
    let mut libraries = Vec::new();
    let mut current: Option<String> = None;
    for line in out.lines() {
        // The code is the last field of a library; the next library's fields follow.
        if line == "library_name" {
            libraries.extend(current.take());
        }
        if line.starts_with("#!lua name=tollgate_") {
            libraries.extend(current.take());
            current = Some(String::new());
        }
        if let Some(code) = current.as_mut() {
            code.push_str(line);
            code.push('\n');
        }
    }
    libraries.extend(current);
    libraries
}

#[tokio::test]
async fn keys_reach_redis_as_arguments_never_as_script_text() {
    let run = format!("sec{}", std::process::id());
    let prefix = format!("tgsec:{run}:");
    let s = start(
        &[],
        &[
            ("TOLLGATE_STORE_URL", &redis_url()),
            ("TOLLGATE_KEY_PREFIX", &prefix),
        ],
    );
    let pwned = format!("tgsec:{run}:pwned");
    let hostile = [
        format!("a') redis.call('SET', '{pwned}', '1') --"),
        format!("]] redis.call('SET', '{pwned}', '1') --[["),
        format!("\"; redis.call(\"SET\", \"{pwned}\", \"1\"); --"),
        format!("{{slot}} \n return redis.call('SET', '{pwned}', '1')"),
        "%s%d\\0\u{7f}".to_owned(),
    ];
    let c = client();
    for key in &hostile {
        for (round, expected) in [(1, 200), (2, 200), (3, 429)] {
            let r = c
                .post(format!("{}/v1/check", s.base))
                .header("content-type", "application/json")
                .body(
                    json!({"key": key, "algorithm": "gcra", "limit": 2, "period": "1h"})
                        .to_string(),
                )
                .send()
                .await
                .expect("POST /v1/check");
            assert_eq!(
                r.status().as_u16(),
                expected,
                "request {round} for key {key:?}: each hostile key is one literal key"
            );
        }
    }
    assert_eq!(redis_cli(&["EXISTS", &pwned]).trim(), "0");

    // The function Redis runs is the repository's file, with only its name filled in.
    let file = include_str!("../../../tollgate-redis/lua/tollgate.lua");
    let libraries = tollgate_libraries();
    assert!(!libraries.is_empty(), "no tollgate library is loaded");
    let current: Vec<&String> = libraries
        .iter()
        .filter(|code| {
            let name = code
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("#!lua name="))
                .unwrap_or_default();
            code.trim_end() == file.replace("__NAME__", name).trim_end()
        })
        .collect();
    assert_eq!(current.len(), 1, "exactly this build's library is loaded");
    for code in &libraries {
        assert!(!code.contains(&pwned), "a key reached a library's text");
    }
}

/// A server whose whole log (from its first line) goes to a file.
struct Logged {
    child: std::process::Child,
    base: String,
    log: std::path::PathBuf,
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_logged(name: &str, args: &[&str], env: &[(&str, &str)]) -> Logged {
    let log = scratch_file(name, b"");
    let file = std::fs::File::create(&log).expect("create the log file");
    let mut command = Command::new(crate::running::BIN);
    command.args(["serve", "--port", "0"]).args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("TOLLGATE_") || name.starts_with("REDIS_") {
            command.env_remove(name);
        }
    }
    let mut server = Logged {
        child: command
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the tollgate binary"),
        base: String::new(),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(&server.log).unwrap_or_default();
        if let Some(addr) = text
            .split("listen=")
            .nth(1)
            .and_then(|a| a.split_whitespace().next())
        {
            server.base = format!("http://{addr}");
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not start:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the server with SIGTERM (so it logs its shutdown) and returns its log.
fn logs_until_exit(mut s: Logged) -> String {
    let _ = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && matches!(s.child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::read_to_string(&s.log).expect("read the log")
}

#[tokio::test]
async fn logs_never_print_the_admin_token_an_api_key_or_a_password() {
    let token = "TOKEN-kx81-never-in-logs";
    let wrong_token = "WRONG-token-zq55-never-in-logs";
    let api_key = "APIKEY-7f3a9c-never-in-logs";
    let password = "PASSWORD-b2d4-never-in-logs";
    let config = scratch_file(
        "logs.toml",
        br#"
[[policy]]
name = "per-key"
algorithm = "token_bucket"
limit = 2
period = "1h"
key = "header:x-api-key"
"#,
    );
    let config = config.to_str().expect("utf-8 path");

    // A closed port: the Redis store fails, so its error paths log too.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let servers = [
        start_logged(
            "logs-memory.log",
            &["--config", config],
            &[("TOLLGATE_ADMIN_TOKEN", token), ("TOLLGATE_LOG", "trace")],
        ),
        start_logged(
            "logs-redis.log",
            &["--config", config],
            &[
                ("TOLLGATE_ADMIN_TOKEN", token),
                ("TOLLGATE_LOG", "trace"),
                (
                    "TOLLGATE_STORE_URL",
                    &format!("redis://:{password}@127.0.0.1:{closed}/0"),
                ),
            ],
        ),
    ];
    let c = client();
    for s in &servers {
        for _ in 0..4 {
            let r = c
                .get(format!("{}/", s.base))
                .header("x-api-key", api_key)
                .send()
                .await
                .expect("GET /");
            assert!(
                [200, 429, 503].contains(&r.status().as_u16()),
                "{}",
                r.status()
            );
        }
        let long_key = format!("{api_key}{}", "x".repeat(10_000));
        let r = c
            .post(format!("{}/v1/check", s.base))
            .body(json!({"policy": "per-key", "key": long_key}).to_string())
            .send()
            .await
            .expect("a long key");
        assert_eq!(r.status(), 400);
        for given in [wrong_token, token] {
            let r = c
                .post(format!("{}/v1/reset", s.base))
                .header("authorization", format!("Bearer {given}"))
                .body(json!({"key": api_key}).to_string())
                .send()
                .await
                .expect("POST /v1/reset");
            assert!(r.status().is_client_error() || r.status().is_success() || r.status() == 503);
        }
    }
    for (i, s) in servers.into_iter().enumerate() {
        let logs = logs_until_exit(s);
        // The start-up line (with the store and the policies) and the shutdown are
        // there, and for the Redis server its failures: the checks below read real
        // output.
        assert!(
            logs.contains("tollgate is serving"),
            "server {i} logged:\n{logs}"
        );
        assert!(
            logs.contains("tollgate stopped"),
            "server {i} logged:\n{logs}"
        );
        if i == 1 {
            assert!(
                logs.contains(&format!("127.0.0.1:{closed}")),
                "server {i} logged:\n{logs}"
            );
        }
        for secret in [token, wrong_token, api_key, password] {
            assert!(
                !logs.contains(secret),
                "server {i} logged {secret:?}:\n{logs}"
            );
        }
    }
}
