//! Soak: mixed load (every algorithm, the memory store and Redis, the decision API
//! and the protected API) for a while, against two real servers: no errors, resident
//! memory flat after warm-up, no file-descriptor growth.
//!
//! CI runs it for `TOLLGATE_SOAK_SECS` seconds (default 15); `bench/soak.sh` runs
//! the same test for 10 minutes and prints its figures.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::scratch_file;
use crate::running::{Server, start};

const ALGORITHMS: [&str; 6] = [
    "fixed_window",
    "sliding_window_log",
    "sliding_window_counter",
    "token_bucket",
    "gcra",
    "leaky_bucket",
];

/// Distinct keys per policy: enough that keys go idle, expire and come back.
const KEYS: u64 = 20_000;

/// Requests in flight per server.
const IN_FLIGHT: usize = 16;

/// Six policies, one per algorithm, and `store` (a TOML `[store]` table's body).
fn config(store: &str) -> String {
    let mut text = format!("[store]\n{store}\n[protect]\npolicies = [\"gcra\"]\n");
    for algorithm in ALGORITHMS {
        // Short periods, so states fill up, go back to fresh and are dropped (memory)
        // or expire (Redis) many times during the run.
        text.push_str(&format!(
            "\n[[policy]]\nname = \"{algorithm}\"\nalgorithm = \"{algorithm}\"\nlimit = 5\nperiod = \"2s\"\nkey = \"header:x-api-key\"\n"
        ));
    }
    text
}

/// Resident memory (kB) and open file descriptors of a process.
fn rss_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
    /// Anything but 200 and 429, or no answer at all.
    errors: AtomicU64,
}

/// One load task: a mix of decisions, peeks and protected requests with keys from
/// a pool, over keep-alive connections, until `stop`.
async fn drive(base: String, seed: u64, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let client = reqwest::Client::new();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while !stop.load(Ordering::Relaxed) {
        // xorshift: a cheap, reproducible spread of keys and kinds.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = format!("soak-{}", x % KEYS);
        let algorithm = ALGORITHMS[(x >> 32) as usize % ALGORITHMS.len()];
        let request = match (x >> 40) % 10 {
            0 => client
                .get(format!("{base}/"))
                .header("x-api-key", key.as_str()),
            1 => client
                .post(format!("{base}/v1/peek"))
                .body(json!({"policy": algorithm, "key": key}).to_string()),
            2 => client.post(format!("{base}/v1/check")).body(
                json!({"checks": [
                    {"policy": algorithm, "key": key},
                    {"policy": "gcra", "key": "soak-shared"},
                ]})
                .to_string(),
            ),
            _ => client.post(format!("{base}/v1/check")).body(
                json!({"policy": algorithm, "key": key, "cost": 1 + (x >> 50) % 3}).to_string(),
            ),
        };
        tally.requests.fetch_add(1, Ordering::Relaxed);
        let status = match request
            .header("content-type", "application/json")
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status().as_u16();
                // Read the whole body: a connection goes back to the pool only then.
                if response.bytes().await.is_err() {
                    0
                } else {
                    status
                }
            }
            Err(_) => 0,
        };
        match status {
            200 => tally.allowed.fetch_add(1, Ordering::Relaxed),
            429 => tally.denied.fetch_add(1, Ordering::Relaxed),
            _ => tally.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

struct Sample {
    at: Duration,
    rss_kb: u64,
    fds: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_keeps_memory_and_descriptors_flat_with_no_errors() {
    let seconds: u64 = std::env::var("TOLLGATE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let run = Duration::from_secs(seconds);
    // Warm-up: the first fifth (at least 3 s), while pools, maps and allocator
    // arenas grow to their working size.
    let warm_up = (run / 5).max(Duration::from_secs(3));

    let redis = std::env::var("TOLLGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let memory = scratch_file("soak-memory.toml", config("").as_bytes());
    // Decide with Redis or fail (a fallback would hide errors); the timeout is long
    // because this is not a latency test and the machine may be busy.
    let shared = scratch_file(
        "soak-redis.toml",
        config(&format!(
            "url = \"{redis}\"\non_error = \"deny\"\ntimeout = \"2s\"\nkey_prefix = \"tgsoak:{}:\"\n",
            std::process::id()
        ))
        .as_bytes(),
    );
    let mut servers: Vec<(&str, Server)> = vec![
        (
            "memory",
            start(&["--config", memory.to_str().expect("utf-8 path")], &[]),
        ),
        (
            "redis",
            start(&["--config", shared.to_str().expect("utf-8 path")], &[]),
        ),
    ];

    let stop = Arc::new(AtomicBool::new(false));
    let mut tallies = BTreeMap::new();
    let mut tasks = Vec::new();
    for (name, server) in &servers {
        let tally = Arc::new(Tally::default());
        tallies.insert(*name, tally.clone());
        for i in 0..IN_FLIGHT {
            tasks.push(tokio::spawn(drive(
                server.base.clone(),
                i as u64 + 1,
                tally.clone(),
                stop.clone(),
            )));
        }
    }

    let started = Instant::now();
    let mut samples: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    while started.elapsed() < run {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (name, server) in &servers {
            let (rss_kb, fds) = rss_and_fds(server.child.id());
            samples.entry(name).or_default().push(Sample {
                at: started.elapsed(),
                rss_kb,
                fds,
            });
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("a load task");
    }

    for (name, server) in &mut servers {
        let tally = &tallies[name];
        let requests = tally.requests.load(Ordering::Relaxed);
        let errors = tally.errors.load(Ordering::Relaxed);
        let allowed = tally.allowed.load(Ordering::Relaxed);
        let denied = tally.denied.load(Ordering::Relaxed);
        let series = &samples[name];
        let after_warm_up: Vec<&Sample> = series.iter().filter(|s| s.at >= warm_up).collect();
        let first = after_warm_up.first().expect("samples after warm-up");
        let last = after_warm_up.last().expect("samples after warm-up");
        let middle = after_warm_up[after_warm_up.len() / 2];
        let peak = after_warm_up.iter().map(|s| s.rss_kb).max().unwrap_or(0);
        let max_fds = after_warm_up.iter().map(|s| s.fds).max().unwrap_or(0);
        println!(
            "soak {name}: {seconds} s, {requests} requests ({allowed} allowed, {denied} denied, \
             {errors} errors); RSS after warm-up {} kB, half-way {} kB, at the end {} kB, \
             peak {peak} kB; fds after warm-up {}, at the end {}, most {max_fds}",
            first.rss_kb, middle.rss_kb, last.rss_kb, first.fds, last.fds
        );
        assert!(
            matches!(server.child.try_wait(), Ok(None)),
            "the {name} server died"
        );
        assert!(
            requests > 1000,
            "{name}: only {requests} requests in {seconds} s"
        );
        assert!(
            allowed > 0 && denied > 0,
            "{name}: the mix must both admit and deny"
        );
        assert_eq!(errors, 0, "{name}: {errors} of {requests} requests failed");
        // Flat: after warm-up, resident memory grows by at most a tenth plus 4 MiB
        // (allocator noise), and the descriptors (listener, store connections, the
        // load's keep-alive connections) by at most a few.
        assert!(
            last.rss_kb <= first.rss_kb + first.rss_kb / 10 + 4096,
            "{name}: RSS grew from {} kB to {} kB after warm-up",
            first.rss_kb,
            last.rss_kb
        );
        assert!(
            last.fds <= first.fds + 4,
            "{name}: descriptors grew from {} to {}",
            first.fds,
            last.fds
        );
    }
}
