//! Redis throughput, measured in one run: tollgate's store at 64 checks in flight
//! (one key, and 100,000 keys in random order) beside `redis-benchmark` running a
//! minimal GCRA script (`benches/gcra_min.lua`: TIME, GET, SET PX) and tollgate's
//! own script (64 connections of 16 pipelined calls, and for tollgate's script also
//! 4 of 16: as many calls in flight as the store; and the library's `_n` function
//! with 16 checks per call, as the store sends the one-check calls it has in flight
//! together, counted in checks), and beside bare EVALSHA calls through redis-rs and
//! fred (how the client crate was chosen). Only the ratios of one run mean anything. Beside each rate it
//! prints the CPU time per call of the client (this process, or redis-benchmark)
//! and of Redis (from `INFO cpu`): on a shared machine these say more than the
//! rates.
//!
//! ```text
//! cargo bench -p tollgate-redis --bench throughput
//! ```
//!
//! Environment: `TOLLGATE_BENCH_REDIS_URL` (default `redis://127.0.0.1:6379`),
//! `TOLLGATE_BENCH_N` checks per measurement (default 200000), `TOLLGATE_BENCH_ROUNDS`
//! (default 3), `TOLLGATE_BENCH_CONNECTIONS` (default 2), `TOLLGATE_BENCH_WORKERS`
//! (default 1: one thread with a current-thread runtime, as each of the server's
//! workers, and as redis-benchmark's one event loop; 2 or more: tokio's
//! work-stealing runtime with that many threads). `TOLLGATE_BENCH_ONLY=store` runs
//! the store alone once (for `perf` and `valgrind`).

use std::future::Future;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::{Builder, ClientLike, Config, LuaInterface};
use tollgate::{Algorithm, Check, Policy, Store};
use tollgate_redis::RedisStore;

const IN_FLIGHT: usize = 64;
const KEYS: usize = 100_000;

const MIN_SCRIPT: &str = include_str!("gcra_min.lua");

/// The store's one-check argument for the benched policy (GCRA, 1e9 per second:
/// T = 1 ns, tau = 1 s, burst 1e9; cost 1; no least TTL).
const GCRA_SPEC: &str = "sg 1 1000000000 1000000000 1 0";

/// Checks per call in the redis-benchmark row of the `_n` function.
const PER_CALL: usize = 16;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// Runs redis-benchmark with `clients` connections, each keeping `pipeline` calls in
/// flight, and returns its requests per second.
fn redis_benchmark(
    host: &str,
    port: &str,
    n: usize,
    (clients, pipeline): (usize, usize),
    args: &[String],
) -> f64 {
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            host,
            "-p",
            port,
            "-c",
            &clients.to_string(),
            "-n",
            &n.to_string(),
        ])
        .args([
            "-P",
            &pipeline.to_string(),
            "-r",
            &KEYS.to_string(),
            "--csv",
        ])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-benchmark ({e}): install Redis's tools"));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .last()
        .and_then(|l| l.split(',').nth(1))
        .and_then(|f| f.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("unexpected redis-benchmark output: {text}"))
}

/// Calls per second of `call` at `IN_FLIGHT` tasks in flight, each task walking
/// `keys` from its own offset: the one driver every subject is measured with.
async fn rate<F, Fut>(keys: Arc<Vec<String>>, n: usize, call: F) -> f64
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..IN_FLIGHT {
        let keys = keys.clone();
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = task;
            for _ in 0..n / IN_FLIGHT {
                call(keys[i % keys.len()].clone()).await;
                i += IN_FLIGHT;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    (n / IN_FLIGHT * IN_FLIGHT) as f64 / started.elapsed().as_secs_f64()
}

/// The store deciding one GCRA check per call.
async fn store_rate(store: &RedisStore, keys: Arc<Vec<String>>, n: usize) -> f64 {
    let policy =
        Policy::new(Algorithm::Gcra, 1_000_000_000, Duration::from_secs(1)).expect("policy");
    let store = store.clone();
    rate(keys, n, move |key| {
        let store = store.clone();
        async move {
            store
                .check(&[Check::new(&key, &policy)])
                .await
                .expect("check");
        }
    })
    .await
}

/// Bare EVALSHA of the minimal script through redis-rs's multiplexed connection.
async fn redis_rs_rate(
    conn: &redis::aio::ConnectionManager,
    sha: &str,
    keys: Arc<Vec<String>>,
    n: usize,
) -> f64 {
    let (conn, sha) = (conn.clone(), sha.to_owned());
    rate(keys, n, move |key| {
        let (mut conn, sha) = (conn.clone(), sha.clone());
        async move {
            let _: i64 = redis::cmd("EVALSHA")
                .arg(&sha)
                .arg(1)
                .arg(&key)
                .arg(1)
                .arg(1_000_000)
                .query_async(&mut conn)
                .await
                .expect("EVALSHA");
        }
    })
    .await
}

/// Bare FCALL of tollgate's one-check function through redis-rs, with the arguments
/// the store sends: what the store costs beyond the client crate.
async fn redis_rs_fcall_rate(
    conn: &redis::aio::ConnectionManager,
    function: &str,
    keys: Arc<Vec<String>>,
    n: usize,
) -> f64 {
    let (conn, function) = (conn.clone(), function.to_owned());
    rate(keys, n, move |key| {
        let (mut conn, function) = (conn.clone(), function.clone());
        async move {
            let _: i64 = redis::cmd("FCALL")
                .arg(&function)
                .arg(1)
                .arg(format!("tgbench:{{{key}}}s:g"))
                .arg(GCRA_SPEC)
                .query_async(&mut conn)
                .await
                .expect("FCALL");
        }
    })
    .await
}

/// The minimal script's EVALSHA through fred.
async fn fred_rate(
    client: &fred::clients::Client,
    sha: &str,
    keys: Arc<Vec<String>>,
    n: usize,
) -> f64 {
    let (client, sha) = (client.clone(), sha.to_owned());
    rate(keys, n, move |key| {
        let (client, sha) = (client.clone(), sha.clone());
        async move {
            let _: i64 = client
                .evalsha(sha.as_str(), vec![key], vec![1_i64, 1_000_000])
                .await
                .expect("EVALSHA");
        }
    })
    .await
}

/// CPU time this process has used (user + system) and its waited-for children have
/// used, in seconds, from /proc.
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 to 17 (utime, stime, cutime, cstime) are the 12th to 15th after the ')'.
    (
        (ticks(11) + ticks(12)) / 100.0,
        (ticks(13) + ticks(14)) / 100.0,
    )
}

/// CPU time Redis has used (user + system), in seconds, from INFO.
async fn redis_cpu(conn: &redis::aio::ConnectionManager) -> f64 {
    let mut conn = conn.clone();
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_sys" || *k == "used_cpu_user")
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

/// The name of the `tollgate_…` library in a FUNCTION LIST answer.
fn function_name(libraries: &[redis::Value]) -> String {
    let text = format!("{libraries:?}");
    let start = text
        .find("tollgate_")
        .expect("the store's library is loaded");
    text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: run
    // only when asked to bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let url: String = env(
        "TOLLGATE_BENCH_REDIS_URL",
        "redis://127.0.0.1:6379".to_owned(),
    );
    let n: usize = env("TOLLGATE_BENCH_N", 200_000);
    let rounds: usize = env("TOLLGATE_BENCH_ROUNDS", 3);
    let connections: usize = env("TOLLGATE_BENCH_CONNECTIONS", 2);
    let hostport = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379");
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "6379"));

    let workers: usize = env("TOLLGATE_BENCH_WORKERS", 1);
    let rt = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
    .expect("runtime");
    rt.block_on(async {
        let client = redis::Client::open(url.as_str()).expect("url");
        let conn = client.get_connection_manager().await.expect("a Redis to bench against");
        let mut load = conn.clone();
        let min_sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(MIN_SCRIPT).query_async(&mut load).await.expect("SCRIPT LOAD");
        let fred = Builder::from_config(Config::from_url(&url).expect("url")).build().expect("fred client");
        fred.init().await.expect("fred connects");
        let store = RedisStore::builder(url.clone())
            .key_prefix("tgbench:")
            .timeout(Duration::from_secs(10))
            .connections(connections)
            .connect()
            .await
            .expect("store");
        // The store loaded its function library; a check of one policy calls its
        // function `<library>_1`.
        let libraries: Vec<redis::Value> = redis::cmd("FUNCTION").arg("LIST").arg("LIBRARYNAME").arg("tollgate_*").query_async(&mut load).await.expect("FUNCTION LIST");
        let tg_function = format!("{}_1", function_name(&libraries));
        let tg_many = format!("{}_n", function_name(&libraries));
        // The store sends the one-check calls in flight together as one call of
        // `<library>_n`; redis-benchmark does the same with 16 checks per call.
        let rb_many = |clients_pipeline: (usize, usize)| {
            let mut args = vec!["FCALL".to_owned(), tg_many.clone(), PER_CALL.to_string()];
            args.extend((0..PER_CALL).map(|_| "tgbench:{__rand_int__}s:g".to_owned()));
            args.push("t".to_owned());
            args.extend((0..PER_CALL).map(|_| GCRA_SPEC.to_owned()));
            // Checks per second.
            redis_benchmark(host, port, n / PER_CALL, clients_pipeline, &args) * PER_CALL as f64
        };

        let mut next = xorshift(0xbe_0c4);
        let many: Arc<Vec<String>> = Arc::new((0..KEYS).map(|_| format!("g:{}", next() % 1_000_000_000)).collect());
        let raw_many: Arc<Vec<String>> = Arc::new((0..KEYS).map(|_| format!("tgbench:raw:{}", next() % 1_000_000_000)).collect());
        let one: Arc<Vec<String>> = Arc::new(vec!["g:hot".to_owned()]);

        // redis-benchmark with IN_FLIGHT connections (with -P 16, 16 times the calls
        // in flight of the store), or with as many calls in flight as the store.
        let rb = |(clients, pipeline): (usize, usize), sha: &str, tollgate: bool, many: bool| {
            let key = |kind: &str| {
                if many { format!("tgbench:{{__rand_int__}}{kind}:g") } else { format!("tgbench:{{hot}}{kind}:g") }
            };
            let args: Vec<String> = if tollgate {
                vec!["FCALL".to_owned(), sha.to_owned(), "1".to_owned(), key("s"), GCRA_SPEC.to_owned()]
            } else {
                vec!["EVALSHA".to_owned(), sha.to_owned(), "1".to_owned(), key("s"), "1".to_owned(), "1000000".to_owned()]
            };
            redis_benchmark(host, port, n, (clients, pipeline), &args)
        };

        let names = [
            "redis-benchmark, minimal gcra script, -P 16, 100k keys",
            "redis-benchmark, minimal gcra script, -P 1, 100k keys",
            "redis-benchmark, tollgate's script, -P 16, 100k keys",
            "redis-benchmark, minimal gcra script, -P 16, one key",
            "redis-benchmark, tollgate's script, -P 16, one key",
            "redis-benchmark, tollgate's script, -c 4 -P 16 (64 in flight), 100k keys",
            "redis-benchmark, tollgate's script, -c 4 -P 16 (64 in flight), one key",
            "tollgate store, 64 in flight, 100k keys",
            "tollgate store, 64 in flight, one key",
            "redis-rs EVALSHA minimal script, 64 in flight, 100k keys",
            "fred EVALSHA minimal script, 64 in flight, 100k keys",
            "redis-rs FCALL tollgate's function, 64 in flight, 100k keys",
            "redis-benchmark, tollgate's _n, 16 checks a call, -c 4 (64 in flight), 100k keys",
            "redis-benchmark, tollgate's _n, 16 checks a call, -c 64 -P 4, 100k keys",
        ];
        // Client CPU (this process, or redis-benchmark) and Redis CPU, summed over rounds.
        let mut cpu: Vec<(f64, f64)> = vec![(0.0, 0.0); names.len()];
        let mut results: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
        if std::env::var("TOLLGATE_BENCH_ONLY").as_deref() == Ok("store") {
            // For profiling the store alone: `perf record` this.
            let (c, r) = (cpu_seconds().0, redis_cpu(&conn).await);
            let rate = store_rate(&store, many.clone(), n).await;
            let (c, r) = (cpu_seconds().0 - c, redis_cpu(&conn).await - r);
            println!(
                "{rate:.0} /s  tollgate store, 64 in flight, 100k keys  (client CPU {:.2} us, Redis CPU {:.2} us per call)",
                c / n as f64 * 1e6,
                r / n as f64 * 1e6
            );
            return;
        }
        for round in 0..rounds {
            eprintln!("round {}/{rounds}", round + 1);
            for (i, subject) in names.iter().enumerate() {
                let (c, r) = (cpu_seconds(), redis_cpu(&conn).await);
                let got = match i {
                    0 => rb((IN_FLIGHT, 16), &min_sha, false, true),
                    1 => rb((IN_FLIGHT, 1), &min_sha, false, true),
                    2 => rb((IN_FLIGHT, 16), &tg_function, true, true),
                    3 => rb((IN_FLIGHT, 16), &min_sha, false, false),
                    4 => rb((IN_FLIGHT, 16), &tg_function, true, false),
                    5 => rb((IN_FLIGHT / 16, 16), &tg_function, true, true),
                    6 => rb((IN_FLIGHT / 16, 16), &tg_function, true, false),
                    7 => store_rate(&store, many.clone(), n).await,
                    8 => store_rate(&store, one.clone(), n).await,
                    9 => redis_rs_rate(&conn, &min_sha, raw_many.clone(), n).await,
                    10 => fred_rate(&fred, &min_sha, raw_many.clone(), n).await,
                    11 => redis_rs_fcall_rate(&conn, &tg_function, many.clone(), n).await,
                    12 => rb_many((IN_FLIGHT / PER_CALL, 1)),
                    13 => rb_many((IN_FLIGHT, 4)),
                    _ => unreachable!("{subject}"),
                };
                let (c2, r2) = (cpu_seconds(), redis_cpu(&conn).await);
                // redis-benchmark is a waited-for child; the others run in this process.
                let client = if !(7..12).contains(&i) { c2.1 - c.1 } else { c2.0 - c.0 };
                cpu[i].0 += client;
                cpu[i].1 += r2 - r;
                results[i].push(got);
            }
        }
        let m: Vec<f64> = results.iter_mut().map(|r| median(r)).collect();
        let runtime = if workers <= 1 { "current-thread runtime".to_owned() } else { format!("work-stealing runtime, {workers} threads") };
        println!("median of {rounds} rounds, {n} calls each, {IN_FLIGHT} in flight ({connections} store connections, {runtime})");
        println!("{:>12}     {:>7} {:>7}  (CPU us per call)", "calls", "client", "Redis");
        for (i, (name, rate)) in names.iter().zip(&m).enumerate() {
            let per_call = |t: f64| t / (rounds * n) as f64 * 1e6;
            println!(
                "{rate:>12.0} /s  {:>7.2} {:>7.2}  {name}",
                per_call(cpu[i].0),
                per_call(cpu[i].1)
            );
        }
        println!();
        println!("ratios (same run):");
        println!("  store 100k keys / redis-benchmark minimal -P 16:             {:.2}", m[7] / m[0]);
        println!("  store 100k keys / redis-benchmark minimal -P 1:              {:.2}", m[7] / m[1]);
        println!("  store 100k keys / redis-benchmark tollgate's -P 16:          {:.2}", m[7] / m[2]);
        println!("  store 100k keys / redis-benchmark tollgate's, 64 in flight:  {:.2}", m[7] / m[5]);
        println!("  store one key   / redis-benchmark minimal one key -P 16:     {:.2}", m[8] / m[3]);
        println!("  store one key   / redis-benchmark tollgate's one key -P 16:  {:.2}", m[8] / m[4]);
        println!("  store one key   / redis-benchmark tollgate's, 64 in flight:  {:.2}", m[8] / m[6]);
        println!("  store 100k keys / redis-rs bare FCALL of the same:           {:.2}", m[7] / m[11]);
        println!("  store 100k keys / redis-benchmark tollgate's _n, 64 in flight: {:.2}", m[7] / m[12]);
        println!("  store 100k keys / redis-benchmark tollgate's _n, -c 64 -P 4: {:.2}", m[7] / m[13]);
        println!("  redis-rs / fred (bare EVALSHA):                              {:.2}", m[9] / m[10]);
        let _ = fred.quit().await;
    });
}
