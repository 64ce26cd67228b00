//! Key floods: distinct keys at full speed (random client IPs through a trusted
//! proxy's `X-Forwarded-For`, random API keys in a header and in `POST /v1/check`)
//! against the real server, on the memory store and on Redis.
//!
//! The memory bound. A memory-store key is one 64-byte table entry (`memory.rs`:
//! the key inline up to 46 bytes for the bucket family, the state beside it) plus
//! one hashbrown control byte. A table that only grows doubles when 7/8 full, so it
//! has fewer than `16n/7` buckets for `n` keys: 149 bytes a key. Churn costs room
//! too: a key dropped from a full table leaves a tombstone, and hashbrown rehashes
//! in place only while the table is at most half full, so a shard held at its
//! share by eviction may double once more: up to `65 * 32/7 = 298` bytes a key.
//! `max_keys` caps the keys, so the server's resident memory stays under
//! `idle RSS + max_keys * 298 B * 2 + 8 MiB`: the factor 2 for the allocator
//! (tables freed as they grow, pages not handed back at once), the 8 MiB for what a
//! flood grows besides keys (64 connections' buffers, allocator pages). The tests
//! assert the peak (`VmHWM`) against that bound.
//!
//! The memory floods run four times (`TOLLGATE_FLOOD_PHASES`, at least 4): the
//! first fills the store to its cap, the second and third let the tables reach the
//! size their churn keeps and each worker thread's allocator heap its working size
//! (the server has several worker threads, each with its own heap: with four, the
//! peak still rose by about 2 MiB at the third flood, then stayed flat over four
//! more), and the last (as many new keys again) must not raise the peak.
//!
//! Knobs (for `bench/flood.sh`): `TOLLGATE_FLOOD_KEYS` (requests of each memory
//! flood, default 20,000: 30,000 distinct keys), `TOLLGATE_FLOOD_MAX_KEYS` (default
//! 10,000), `TOLLGATE_FLOOD_FALLBACK_KEYS` (each flood of the local fallback, default
//! 15,000), `TOLLGATE_FLOOD_REDIS_KEYS` (requests of the Redis flood, default
//! 20,000), `TOLLGATE_FLOOD_CONNS` (connections, default 64).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{HttpConn, PrivateRedis, RedisConn, Rng, knob, rss_kib, write_config};
use crate::running::{Server, start};

/// Bytes one memory-store key may take, from the layout (see the module docs).
const BYTES_PER_KEY: u64 = 298;
/// Room for the allocator.
const SLACK: u64 = 2;

/// What a flood did.
#[derive(Debug, Default)]
struct Flood {
    requests: u64,
    keys: u64,
    by_status: std::collections::BTreeMap<u16, u64>,
    errors: u64,
    secs: f64,
}

/// The flood's request number `i`: even numbers are `GET /` from a random client IP
/// (through the trusted proxy 127.0.0.1) with a random API key (two new keys), odd
/// numbers `POST /v1/check` with a random key under `policy` (one new key).
fn request(
    i: u64,
    tag: &str,
    policy: &str,
) -> (&'static str, &'static str, Vec<(String, String)>, Vec<u8>) {
    let mut rng = Rng(i.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5bd1_e995);
    let r = rng.next_u64();
    if i.is_multiple_of(2) {
        let ip = std::net::Ipv4Addr::from((r >> 32) as u32 | 0x0100_0000);
        (
            "GET",
            "/",
            vec![
                ("x-forwarded-for".to_owned(), ip.to_string()),
                ("x-api-key".to_owned(), format!("{tag}{r:016x}")),
            ],
            Vec::new(),
        )
    } else {
        (
            "POST",
            "/v1/check",
            Vec::new(),
            format!(r#"{{"policy":"{policy}","key":"{tag}{r:016x}"}}"#).into_bytes(),
        )
    }
}

/// Sends `requests` flood requests over `conns` keep-alive connections.
async fn flood(base: &str, requests: u64, conns: u64, tag: &str, policy: &str) -> Flood {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let next = next.clone();
        let base = base.to_owned();
        let tag = tag.to_owned();
        let policy = policy.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut out = Flood::default();
            let mut conn = HttpConn::connect(&base).await.expect("connect");
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return out;
                }
                let (method, path, headers, body) = request(i, &tag, &policy);
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                match conn.request(method, path, &headers, &body).await {
                    Ok(a) => *out.by_status.entry(a.status).or_default() += 1,
                    Err(_) => {
                        out.errors += 1;
                        conn = HttpConn::connect(&base).await.expect("reconnect");
                    }
                }
                out.requests += 1;
                out.keys += if i.is_multiple_of(2) { 2 } else { 1 };
            }
        }));
    }
    let mut total = Flood::default();
    for t in tasks {
        let f = t.await.expect("flood task");
        total.requests += f.requests;
        total.keys += f.keys;
        total.errors += f.errors;
        for (s, n) in f.by_status {
            *total.by_status.entry(s).or_default() += n;
        }
    }
    total.secs = started.elapsed().as_secs_f64();
    total
}

async fn check(base: &str, policy: &str, key: &str) -> u16 {
    let mut c = HttpConn::connect(base).await.expect("connect");
    c.request(
        "POST",
        "/v1/check",
        &[],
        format!(r#"{{"policy":"{policy}","key":"{key}"}}"#).as_bytes(),
    )
    .await
    .expect("check")
    .status
}

async fn metrics(base: &str) -> String {
    let mut c = HttpConn::connect(base).await.expect("connect");
    let a = c
        .request("GET", "/metrics", &[], b"")
        .await
        .expect("metrics");
    String::from_utf8(a.body).expect("utf-8 metrics")
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

/// Opens the flood's connections once and sends a few requests on each, so the idle
/// figure holds the connections' buffers (the bound is about keys, not sockets).
async fn warm(base: &str, conns: u64) {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let base = base.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut c = HttpConn::connect(&base).await.expect("connect");
            for _ in 0..20 {
                c.request("GET", "/healthz", &[], b"")
                    .await
                    .expect("healthz");
            }
        }));
    }
    for t in tasks {
        t.await.expect("warm");
    }
}

fn memory_config(max_keys: u64) -> String {
    format!(
        r#"
[server]
trusted_proxies = ["127.0.0.1/32"]

[store]
url = "memory://"
max_keys = {max_keys}

[[policy]]
name = "per-ip"
algorithm = "gcra"
limit = 10
period = "1h"
key = "ip"

[[policy]]
name = "api"
algorithm = "gcra"
limit = 10
period = "1h"
key = "header:x-api-key"
"#
    )
}

fn alive(s: &mut Server) {
    assert!(
        s.child.try_wait().expect("poll").is_none(),
        "the server exited"
    );
}

/// Memory after each of several equal floods of new keys.
struct Phases {
    idle: u64,
    /// The peak RSS after each flood, KiB.
    peaks: Vec<u64>,
    after: u64,
    floods: Vec<Flood>,
}

impl Phases {
    fn requests(&self) -> u64 {
        self.floods.iter().map(|f| f.requests).sum()
    }
    fn keys(&self) -> u64 {
        self.floods.iter().map(|f| f.keys).sum()
    }
    fn secs(&self) -> f64 {
        self.floods.iter().map(|f| f.secs).sum()
    }
    fn last(&self) -> u64 {
        self.peaks.last().copied().unwrap_or(self.idle)
    }
    /// The peak once the store has settled: after the third flood (the first fills
    /// the tables, the next two let them and the workers' heaps reach the size their
    /// churn keeps).
    fn settled(&self) -> u64 {
        self.peaks[2.min(self.peaks.len() - 1)]
    }
    /// How much the floods after the store settled may raise the peak: half of what
    /// one flood's new keys would take if the store kept them ([`BYTES_PER_KEY`]
    /// each). Memory that followed the traffic would rise by at least twice this at
    /// every flood; the allocator's steps are smaller (its heaps grew +1.3 to +2.1
    /// MiB at one flood of ten after the third, then stayed flat).
    fn allowance_kib(&self) -> u64 {
        let per_flood = self.floods.last().map_or(0, |f| f.keys);
        per_flood * BYTES_PER_KEY / 2 / 1024
    }
    fn statuses(&self) -> String {
        let mut all = std::collections::BTreeMap::new();
        for f in &self.floods {
            for (s, n) in &f.by_status {
                *all.entry(*s).or_insert(0u64) += n;
            }
        }
        format!("{all:?}")
    }
}

/// `phases` floods of `requests` new-key requests each. Once the store is at its
/// cap, further floods must not raise the peak: the cap, not the traffic, decides
/// the memory.
async fn phases(s: &mut Server, phases: u64, requests: u64, conns: u64, policy: &str) -> Phases {
    let pid = s.child.id();
    warm(&s.base, conns).await;
    let (idle, _) = rss_kib(pid);
    let mut m = Phases {
        idle,
        peaks: Vec::new(),
        after: idle,
        floods: Vec::new(),
    };
    for phase in 0..phases.max(3) {
        let f = flood(&s.base, requests, conns, &format!("p{phase}-"), policy).await;
        assert_eq!(f.errors, 0, "connections failed: {f:?}");
        assert!(f.by_status.keys().all(|s| *s == 200 || *s == 429), "{f:?}");
        let (after, peak) = rss_kib(pid);
        m.after = after;
        m.peaks.push(peak);
        m.floods.push(f);
    }
    alive(s);
    m
}

/// What the server holds besides keys and may grow under a flood: the connections'
/// buffers and the allocator's pages (measured at 2 to 8 MiB with 64 connections).
const OVERHEAD_KIB: u64 = 8 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_flood_stays_under_the_bound_derived_from_max_keys() {
    let requests = knob("TOLLGATE_FLOOD_KEYS", 20_000);
    let max_keys = knob("TOLLGATE_FLOOD_MAX_KEYS", 10_000);
    let conns = knob("TOLLGATE_FLOOD_CONNS", 64);
    let conf = write_config("flood-memory", &memory_config(max_keys));
    let mut s = start(&["--config", conf.to_str().expect("path")], &[]);

    // A key at its limit before the flood: still limited after it.
    for i in 0..10 {
        assert_eq!(
            check(&s.base, "api", "known-client").await,
            200,
            "request {i}"
        );
    }
    assert_eq!(check(&s.base, "api", "known-client").await, 429);

    let m = phases(
        &mut s,
        knob("TOLLGATE_FLOOD_PHASES", 4).max(4),
        requests,
        conns,
        "api",
    )
    .await;
    let bound_kib = m.idle + max_keys * BYTES_PER_KEY * SLACK / 1024 + OVERHEAD_KIB;
    let text = metrics(&s.base).await;
    let held = metric(&text, "tollgate_keys_held ").expect("keys_held") as u64;
    println!(
        "FLOOD|memory|requests={}|keys={}|secs={:.1}|rate={:.0}/s|max_keys={max_keys}|held={held}|idle_kib={}|peaks_kib={:?}|after_kib={}|bound_kib={bound_kib}|per_cap_key_b={:.0}|statuses={}",
        m.requests(),
        m.keys(),
        m.secs(),
        m.requests() as f64 / m.secs(),
        m.idle,
        m.peaks,
        m.after,
        (m.last().saturating_sub(m.idle) * 1024) as f64 / max_keys as f64,
        m.statuses(),
    );
    // Every key is new, so every request is admitted (a random IP or key drawn twice
    // is the only way to a 429).
    for f in &m.floods {
        let ok = f.by_status.get(&200).copied().unwrap_or(0);
        assert!(ok * 1000 >= f.requests * 999, "{f:?}");
    }
    assert!(
        held <= max_keys,
        "keys held {held} over max_keys {max_keys}"
    );
    assert!(
        m.last() <= bound_kib,
        "peak RSS {} KiB over the bound {bound_kib} KiB (idle {} KiB + {max_keys} keys x {BYTES_PER_KEY} B x {SLACK} + {OVERHEAD_KIB} KiB)",
        m.last(),
        m.idle
    );
    assert!(
        m.last() <= m.settled() + m.allowance_kib(),
        "the peak kept rising with the traffic ({:?} KiB after each flood, {} KiB allowed after the third): memory follows the traffic, not the cap",
        m.peaks,
        m.allowance_kib()
    );
    // Still deciding correctly: the exhausted key is refused, a new key admitted.
    assert_eq!(check(&s.base, "api", "known-client").await, 429);
    assert_eq!(check(&s.base, "api", "a-new-client").await, 200);
}

/// Regression: inline policies in `POST /v1/check` named a metrics label set each
/// (`inline-gcra-<limit>-<period>-<burst>`), so a flood of distinct inline limits
/// grew `/metrics` and the process without bound. They share one label now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_inline_policies_do_not_grow_the_metrics() {
    let conf = write_config("flood-inline", &memory_config(1000));
    let s = start(&["--config", conf.to_str().expect("path")], &[]);
    let mut c = HttpConn::connect(&s.base).await.expect("connect");
    for limit in 1..=2_000u32 {
        let body = format!(r#"{{"key":"k","algorithm":"gcra","limit":{limit},"period":"1h"}}"#);
        let a = c
            .request("POST", "/v1/check", &[], body.as_bytes())
            .await
            .expect("check");
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    }
    let text = metrics(&s.base).await;
    let series = text
        .lines()
        .filter(|l| l.starts_with("tollgate_decisions_total{"))
        .count();
    assert!(
        series <= 6,
        "decision series: {series} (one per configured policy and outcome, one for inline):\n{}",
        &text[..text.len().min(2000)]
    );
    assert!(
        text.contains(r#"tollgate_decisions_total{policy="inline",outcome="allowed"} 2000"#),
        "{}",
        &text[..text.len().min(2000)]
    );
}

/// Regression: with a Redis store and `on_error = "local"`, the local limiters that
/// decide while Redis is down were built with the default cap (a million keys), not
/// `max_keys`, so a key flood during an outage grew memory with every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_fallback_is_capped_by_max_keys() {
    let requests = knob("TOLLGATE_FLOOD_FALLBACK_KEYS", 15_000);
    let max_keys = 500u64;
    let conns = knob("TOLLGATE_FLOOD_CONNS", 64);
    // Nothing listens on this port: every decision falls back to the local limiters
    // after the (short) store timeout.
    let port = crate::harness::free_port();
    let conf = write_config(
        "flood-fallback",
        &format!(
            r#"
[server]
trusted_proxies = ["127.0.0.1/32"]

[store]
url = "redis://127.0.0.1:{port}/0"
on_error = "local"
timeout = "20ms"
max_keys = {max_keys}

[[policy]]
name = "per-ip"
algorithm = "gcra"
limit = 10
period = "1h"
key = "ip"

[[policy]]
name = "api"
algorithm = "gcra"
limit = 10
period = "1h"
key = "header:x-api-key"
"#
        ),
    );
    let mut s = start(&["--config", conf.to_str().expect("path")], &[]);
    let m = phases(&mut s, 4, requests, conns, "api").await;
    println!(
        "FLOOD|local-fallback|requests={}|keys={}|secs={:.1}|max_keys={max_keys}|idle_kib={}|peaks_kib={:?}|statuses={}",
        m.requests(),
        m.keys(),
        m.secs(),
        m.idle,
        m.peaks,
        m.statuses()
    );
    // One local limiter (the decision API and the protected API share it), capped.
    let bound_kib = m.idle + max_keys * BYTES_PER_KEY * SLACK / 1024 + OVERHEAD_KIB;
    assert!(
        m.last() <= bound_kib,
        "peak {} KiB over {bound_kib} KiB",
        m.last()
    );
    assert!(
        m.last() <= m.settled() + m.allowance_kib(),
        "the peak kept rising ({:?} KiB after each flood, {} KiB allowed after the third): the local limiters hold more than max_keys",
        m.peaks,
        m.allowance_kib()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flood_every_key_has_a_ttl_and_the_keys_go_after_the_period() {
    let requests = knob("TOLLGATE_FLOOD_REDIS_KEYS", 20_000);
    let conns = knob("TOLLGATE_FLOOD_CONNS", 64);
    let redis = PrivateRedis::start();
    let prefix = "flood:";
    let conf = write_config(
        "flood-redis",
        &format!(
            r#"
[server]
trusted_proxies = ["127.0.0.1/32"]

[store]
url = "redis://127.0.0.1:{}/0"
key_prefix = "{prefix}"
on_error = "deny"
timeout = "2s"

[[policy]]
name = "per-ip"
algorithm = "gcra"
limit = 10
period = "3s"
key = "ip"

[[policy]]
name = "api"
algorithm = "sliding_window_log"
limit = 10
period = "3s"
key = "header:x-api-key"
"#,
            redis.port
        ),
    );
    let mut s = start(&["--config", conf.to_str().expect("path")], &[]);
    let pid = s.child.id();
    warm(&s.base, conns).await;
    let (idle, _) = rss_kib(pid);
    let f = flood(&s.base, requests, conns, "r", "api").await;
    let flood_end = Instant::now();
    let (_, peak) = rss_kib(pid);
    alive(&mut s);
    assert_eq!(f.errors, 0, "{f:?}");
    assert!(f.by_status.keys().all(|s| *s == 200 || *s == 429), "{f:?}");

    let mut r = RedisConn::connect(redis.port).await.expect("redis");
    let keys = r.scan(&format!("{prefix}*")).await.expect("scan");
    let mut without_ttl = Vec::new();
    for chunk in keys.chunks(1000) {
        let cmds: Vec<Vec<String>> = chunk
            .iter()
            .map(|k| vec!["PTTL".to_owned(), k.clone()])
            .collect();
        let ttls = r.pipeline(&cmds).await.expect("pttl");
        for (k, t) in chunk.iter().zip(ttls) {
            // -2: it expired between SCAN and PTTL; 0: it expires this millisecond;
            // -1: no TTL (a leak).
            if t.int() == -1 {
                without_ttl.push(k.clone());
            }
        }
    }
    let info = r.cmd(&["INFO", "memory"]).await.expect("info").text();
    let redis_peak = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory_peak:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    // The log keys of sliding_window_log come in pairs with their state keys.
    let scanned = keys.len();
    let deadline = flood_end + Duration::from_secs(20);
    let left = loop {
        let n = r.cmd(&["DBSIZE"]).await.expect("dbsize").int();
        if n == 0 || Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let drained = flood_end.elapsed().as_secs_f64();
    println!(
        "FLOOD|redis|requests={}|keys={}|secs={:.1}|rate={:.0}/s|redis_keys_scanned={scanned}|without_ttl={}|dbsize_after={left}|drained_after_s={drained:.1}|redis_used_memory_peak={redis_peak}|server_idle_kib={idle}|server_peak_kib={peak}|statuses={:?}",
        f.requests,
        f.keys,
        f.secs,
        f.requests as f64 / f.secs,
        without_ttl.len(),
        f.by_status
    );
    // Keys of the flood's first seconds may be gone already; the last seconds' are
    // there.
    assert!(scanned >= 1000, "only {scanned} keys right after the flood");
    assert!(
        without_ttl.is_empty(),
        "keys without a TTL: {:?}",
        &without_ttl[..without_ttl.len().min(10)]
    );
    assert_eq!(left, 0, "keys left 20 s after a flood of 3 s policies");
    // The server holds no per-key state with Redis: its memory does not follow the keys.
    assert!(
        peak <= idle + 32 * 1024,
        "server peak RSS {peak} KiB, idle {idle} KiB"
    );
}
