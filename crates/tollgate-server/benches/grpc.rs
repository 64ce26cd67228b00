//! `ShouldRateLimit` over gRPC against `POST /v1/check` over HTTP/1, on one real
//! `tollgate` server (the release binary), memory store then Redis.
//!
//! ```sh
//! cargo bench -p tollgate-server --bench grpc
//! BENCH_SECS=5 BENCH_ROUNDS=3 BENCH_IN_FLIGHT=64 BENCH_CONNECTIONS=4 cargo bench -p tollgate-server --bench grpc
//! ```
//!
//! Each round drives gRPC then HTTP for `BENCH_SECS` seconds with `BENCH_IN_FLIGHT`
//! calls in flight: gRPC over `BENCH_CONNECTIONS` HTTP/2 connections (the generated
//! tonic client over hyper-util's HTTP/2 client; `BENCH_GRPC_CLIENT=channel` for
//! tonic's `Channel`, whose buffer task costs the load generator more), HTTP over a
//! keep-alive pool (hyper-util). Load generator and server share the machine, so
//! the server's CPU time per call is printed too: it does not depend on the client. Both decide the same thing: one fixed-window
//! check under a limit no call reaches, on one of 1,000 keys. The figure is the ratio
//! of the medians over the rounds, from one run on one machine (these machines are
//! shared and noisy: compare within a run, never across runs). A call that fails
//! stops the bench. Redis is `TOLLGATE_TEST_REDIS_URL` or `redis://127.0.0.1:6379`;
//! without one the Redis half is skipped, saying so.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tollgate_envoy::proto::rate_limit_descriptor::Entry;
use tollgate_envoy::proto::rate_limit_service_client::RateLimitServiceClient;
use tollgate_envoy::proto::{RateLimitDescriptor, RateLimitRequest};
use tonic::transport::{Channel, Endpoint};

const KEYS: usize = 1000;

// The server's allocator, so the load generator spends no more than it must.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The server's CPU time so far (user + system), from /proc.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command's closing parenthesis; utime and stime are the
    // 14th and 15th fields of the line, in clock ticks (100 a second on Linux).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

struct Server {
    child: Child,
    http: String,
    grpc: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn start(store: &str, tag: &str) -> Server {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("grpc-bench-{}-{tag}", std::process::id()));
    let dir = root.join("ratelimit");
    std::fs::create_dir_all(&dir).expect("bench dir");
    std::fs::write(
        dir.join("bench.yaml"),
        "domain: bench\ndescriptors:\n  - key: client\n    rate_limit:\n      unit: second\n      requests_per_unit: 4000000000\n",
    )
    .expect("yaml");
    let toml = root.join("tollgate.toml");
    std::fs::write(
        &toml,
        format!(
            "[store]\n{store}\n[[policy]]\nname = \"bench\"\nalgorithm = \"fixed_window\"\nlimit = 4000000000\nperiod = \"1s\"\nkey = \"global\"\n[envoy]\nlisten = \"127.0.0.1:0\"\nconfig_dir = \"{}\"\n",
            dir.display()
        ),
    )
    .expect("toml");
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--port", "0", "--config"])
        .arg(&toml)
        .env("NO_COLOR", "1")
        .env("TOLLGATE_LOG", "warn,tollgate_server=info")
        .env_remove("TOLLGATE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tollgate");
    // Killed and reaped on drop, also if it never serves.
    let mut server = Server {
        child,
        http: String::new(),
        grpc: String::new(),
    };
    let stderr = server.child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines
            .next()
            .expect("the server exited before serving")
            .expect("read the log");
        let field = |name: &str| {
            line.split(name)
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .map(str::to_owned)
        };
        if let (Some(http), Some(grpc)) = (field(" listen="), field("grpc_listen=")) {
            // Keep draining the log so the server never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            server.http = format!("http://{http}");
            server.grpc = format!("http://{grpc}");
            return server;
        }
    }
}

async fn drive_grpc(url: &str, in_flight: usize, connections: usize, secs: u64) -> (f64, u64) {
    let requests: Arc<Vec<RateLimitRequest>> = Arc::new(
        (0..KEYS)
            .map(|k| RateLimitRequest {
                domain: "bench".to_owned(),
                descriptors: vec![RateLimitDescriptor {
                    entries: vec![Entry {
                        key: "client".to_owned(),
                        value: format!("k{k}"),
                    }],
                    ..RateLimitDescriptor::default()
                }],
                hits_addend: 1,
            })
            .collect(),
    );
    if std::env::var("BENCH_GRPC_CLIENT").as_deref() == Ok("channel") {
        // tonic's own Channel (a buffer task in front of each connection).
        let mut channels = Vec::new();
        for _ in 0..connections {
            let channel: Channel = Endpoint::from_shared(url.to_owned())
                .expect("url")
                .tcp_nodelay(true)
                .connect()
                .await
                .expect("connect");
            channels.push(channel);
        }
        return run(in_flight, secs, move |task, n| {
            let mut client = RateLimitServiceClient::new(channels[task % channels.len()].clone());
            let request = requests[(task * 7919 + n) % KEYS].clone();
            async move {
                let r = client.should_rate_limit(request).await.expect("gRPC call");
                assert_eq!(r.get_ref().overall_code, 1, "OK");
            }
        })
        .await;
    }
    // The generated client over hyper's HTTP/2 client: one connection per client,
    // multiplexed, no buffer task, as a proxy's rate limit client would be.
    let origin: hyper::Uri = url.parse().expect("uri");
    let mut clients = Vec::new();
    for _ in 0..connections {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, tonic::body::Body> =
            Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector);
        clients.push(client);
    }
    run(in_flight, secs, move |task, n| {
        let mut client = RateLimitServiceClient::with_origin(
            clients[task % clients.len()].clone(),
            origin.clone(),
        );
        let request = requests[(task * 7919 + n) % KEYS].clone();
        async move {
            let r = client.should_rate_limit(request).await.expect("gRPC call");
            assert_eq!(r.get_ref().overall_code, 1, "OK");
        }
    })
    .await
}

async fn drive_http(base: &str, in_flight: usize, secs: u64) -> (f64, u64) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(in_flight)
        .build_http();
    let uri: hyper::Uri = format!("{base}/v1/check").parse().expect("uri");
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..KEYS)
            .map(|k| Bytes::from(format!("{{\"policy\":\"bench\",\"key\":\"k{k}\"}}")))
            .collect(),
    );
    run(in_flight, secs, move |task, n| {
        let client = client.clone();
        let request = hyper::Request::post(uri.clone())
            .header("content-type", "application/json")
            .body(Full::new(bodies[(task * 7919 + n) % KEYS].clone()))
            .expect("request");
        async move {
            let r = client.request(request).await.expect("HTTP call");
            assert_eq!(r.status(), 200);
            r.into_body().collect().await.expect("body");
        }
    })
    .await
}

/// `in_flight` tasks each calling `call(task, n)` in a loop for `secs`; calls per
/// second, and calls (the warm-up's included, as the server's CPU time counts them).
async fn run<F, Fut>(in_flight: usize, secs: u64, call: F) -> (f64, u64)
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Warm up: connections made, pools full.
    for t in 0..in_flight {
        call(t, 0).await;
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..in_flight {
        let (call, done, stop) = (Arc::clone(&call), Arc::clone(&done), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                call(t, n).await;
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let count = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    for t in tasks {
        t.await.expect("a call failed");
    }
    let total = done.load(Ordering::Relaxed) + in_flight as u64;
    (count as f64 / elapsed.as_secs_f64(), total)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn redis_up(url: &str) -> bool {
    let hostport = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .to_owned();
    std::net::TcpStream::connect(hostport).is_ok()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: then skip.
    if !std::env::args().any(|a| a == "--bench") {
        println!("grpc bench: run with `cargo bench -p tollgate-server --bench grpc`");
        return;
    }
    let secs = env_number("BENCH_SECS", 5);
    let rounds = env_number("BENCH_ROUNDS", 3) as usize;
    let in_flight = env_number("BENCH_IN_FLIGHT", 64) as usize;
    let connections = env_number("BENCH_CONNECTIONS", 4) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let redis = std::env::var("TOLLGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let mut stores = vec![("memory", "url = \"memory://\"".to_owned())];
    if redis_up(&redis) {
        stores.push((
            "redis",
            format!(
                "url = \"{redis}\"\ntimeout = \"1s\"\nkey_prefix = \"grpcbench{}:\"",
                std::process::id()
            ),
        ));
    } else {
        println!("no Redis at {redis}: the Redis half is skipped");
    }
    println!(
        "{in_flight} calls in flight, gRPC over {connections} HTTP/2 connections, HTTP/1 keep-alive; {rounds} rounds of {secs} s each, alternating"
    );
    for (name, store) in stores {
        let server = start(&store, name);
        let (mut grpc, mut http, mut ratios, mut cpu_ratios) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        runtime.block_on(async {
            let pid = server.child.id();
            for round in 1..=rounds {
                let before = cpu_time(pid);
                let (g, g_calls) = drive_grpc(&server.grpc, in_flight, connections, secs).await;
                let middle = cpu_time(pid);
                let (h, h_calls) = drive_http(&server.http, in_flight, secs).await;
                let after = cpu_time(pid);
                let per_call = |a: Option<Duration>, b: Option<Duration>, calls: u64| match (a, b) {
                    (Some(a), Some(b)) if calls > 0 => {
                        Some((b - a).as_secs_f64() * 1e6 / calls as f64)
                    }
                    _ => None,
                };
                let (g_cpu, h_cpu) = (
                    per_call(before, middle, g_calls),
                    per_call(middle, after, h_calls),
                );
                let show = |c: Option<f64>| c.map_or("    ?".to_owned(), |c| format!("{c:5.1}"));
                println!(
                    "{name:6} round {round}: gRPC ShouldRateLimit {g:7.0}/s ({} us server CPU/call)   HTTP /v1/check {h:7.0}/s ({} us server CPU/call)   ratio {:.2}",
                    show(g_cpu),
                    show(h_cpu),
                    g / h
                );
                grpc.push(g);
                http.push(h);
                ratios.push(g / h);
                if let (Some(g), Some(h)) = (g_cpu, h_cpu) {
                    // Calls per server CPU-second, gRPC over HTTP.
                    cpu_ratios.push(h / g);
                }
            }
        });
        let (g, h) = (median(&mut grpc), median(&mut http));
        println!(
            "{name:6} medians: gRPC ShouldRateLimit {g:7.0}/s   HTTP /v1/check {h:7.0}/s   throughput ratio gRPC/HTTP (median of the rounds' ratios) {:.2}",
            median(&mut ratios)
        );
        if !cpu_ratios.is_empty() {
            println!(
                "{name:6} calls per server CPU-second, gRPC/HTTP (median of the rounds): {:.2}",
                median(&mut cpu_ratios)
            );
        }
        drop(server);
    }
}
