//! Redis chaos under continuous load against two server nodes per `on_error` mode:
//! Redis killed (`kill -9`) and restarted on its port, `FUNCTION FLUSH` and
//! `SCRIPT FLUSH`, `CLIENT PAUSE` longer than the store timeout, `DEBUG SLEEP`, and on
//! a replicated cluster a master killed until its replica takes over.
//!
//! Each scenario starts its own Redis (never the shared one on 6379) and six
//! `tollgate serve` processes: two for each of `deny`, `allow` and `local`, each
//! pair under its own key prefix, all on the same Redis, so one fault hits the three
//! modes at once. Load: for each mode, six keep-alive connections (one per node and
//! key) at a steady pace, each key asked about 25 times as often as the policy
//! admits: `POST /v1/check` for two keys, and `GET /` of the protected API with
//! `x-key: p0` for a third. The policy is `fixed_window`, `L` = 20 per 1 s,
//! `nodes = 2`.
//!
//! Every answer is kept: status, whether it was a fallback, and the window it was
//! decided in (the answer's `reset_after_ms` added to the time it came back names
//! the end of the window, as Redis `TIME`, the local limiter and the test read one
//! clock). The protected API's body says neither: an answer sent and back within one
//! window counts in it, one sent in a window and back in the next counts only in
//! the check of the two windows together, and a window in which the mode fell back
//! anywhere counts as fallen back. What each mode promises, per key and window:
//!
//! - every answer is 200 or 429, plus deny's specified 503; no connection dropped,
//!   both nodes alive;
//! - `deny`: at most `L` admitted. Only Redis admits, and a call that ran in Redis
//!   but timed out in the node was answered 503: it consumed, it admitted nobody, so
//!   it can only lower the count. A Redis that loses its state (killed and restarted
//!   empty; a failover whose replica had not received the last writes) starts the
//!   window afresh: `L` more per loss in the windows the loss spans.
//! - `local`: deny's figure plus, in a window where a node fell back, each node's
//!   share `L / nodes`: `L + nodes * (L / nodes)`.
//! - `allow`: admits everything while Redis fails; the overshoot is reported only.
//!
//! After the faults every mode must recover by itself: the nodes decide from Redis
//! again (no fallback field), and a fresh key under `sliding_window_log` 10 per
//! minute, asked 30 times at once over both nodes, admits exactly 10.
//!
//! Knobs (for `bench/chaos.sh`): `TOLLGATE_CHAOS_ROUNDS` (faults per scenario,
//! default 2), `TOLLGATE_CHAOS_PACE_MS` (each connection's pause between requests,
//! default 10).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Mutex;

use crate::harness::{
    HttpConn, PrivateRedis, RedisConn, ReplicatedCluster, cli, cluster_healthy, knob,
    master_of_slot, write_config,
};
use crate::running::{Server, start};

/// The load policy's limit per window, its window, and the fleet size.
const L: u64 = 20;
const W_MS: u64 = 1000;
const NODES: u64 = 2;
/// The store timeout the nodes run with: well above a loaded machine's latency,
/// well below the pauses.
const TIMEOUT_MS: u64 = 250;
const KEYS: [&str; 2] = ["k0", "k1"];
/// The protected API's load key (`GET /` with `x-key`), counted as key index 2.
const PROTECTED_KEY: &str = "p0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Deny,
    Allow,
    Local,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Deny, Mode::Allow, Mode::Local];

    fn name(self) -> &'static str {
        match self {
            Mode::Deny => "deny",
            Mode::Allow => "allow",
            Mode::Local => "local",
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One answer of the load.
#[derive(Clone, Debug)]
struct Rec {
    /// When it came back (Unix ms).
    at: u64,
    key: usize,
    status: u16,
    fallback: Option<String>,
    /// The window the decision fell in (for the protected API, the window the
    /// request was sent in).
    window: u64,
    /// The same, or for the protected API the window its answer came back in: a
    /// decision between the two.
    window_end: u64,
    detail: String,
}

/// A span of time in which Redis may have lost its state (Unix ms).
#[derive(Clone, Copy, Debug)]
struct Loss {
    from: u64,
    to: u64,
}

/// Two nodes of one mode.
struct Pair {
    mode: Mode,
    nodes: Vec<Server>,
    /// The nodes' configuration, removed once they are gone.
    _conf: crate::harness::ConfigFile,
}

fn config(url: &str, mode: Mode) -> String {
    format!(
        r#"
[store]
url = "{url}"
on_error = "{}"
timeout = "{TIMEOUT_MS}ms"
nodes = {NODES}
key_prefix = "chaos-{}:"

[[policy]]
name = "api"
algorithm = "fixed_window"
limit = {L}
period = "1s"
key = "header:x-key"

[[policy]]
name = "exact"
algorithm = "sliding_window_log"
limit = 10
period = "1m"

[protect]
policies = ["api"]
"#,
        mode.name(),
        mode.name()
    )
}

fn start_pairs(url: &str, scenario: &str) -> Vec<Pair> {
    Mode::ALL
        .iter()
        .map(|&mode| {
            let conf = write_config(
                &format!("chaos-{scenario}-{}", mode.name()),
                &config(url, mode),
            );
            let nodes = (0..NODES)
                .map(|_| start(&["--config", conf.to_str().expect("path")], &[]))
                .collect();
            Pair {
                mode,
                nodes,
                _conf: conf,
            }
        })
        .collect()
}

/// The load: one task per (mode, node, key), each on its own keep-alive connection.
struct Load {
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<BTreeMap<Mode, Vec<Rec>>>>,
    errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn window_of(received_ms: u64, body: &serde_json::Value) -> u64 {
    match body["reset_after_ms"].as_u64() {
        // reset_after = end of the window - decision instant; the answer came back
        // within the timeout of that instant, far less than half a window.
        Some(reset) => (received_ms + reset + W_MS / 2) / W_MS - 1,
        None => received_ms / W_MS,
    }
}

fn start_load(pairs: &[Pair]) -> Load {
    let pace = Duration::from_millis(knob("TOLLGATE_CHAOS_PACE_MS", 10));
    let stop = Arc::new(AtomicBool::new(false));
    let records = Arc::new(Mutex::new(BTreeMap::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for pair in pairs {
        for node in &pair.nodes {
            for (key, name) in KEYS.iter().chain([&PROTECTED_KEY]).enumerate() {
                // Keys 0 and 1 through the decision API, key 2 through the protected
                // API (which says nothing of fallbacks or windows in its body).
                let protected = key == KEYS.len();
                let (stop, records, errors) = (stop.clone(), records.clone(), errors.clone());
                let base = node.base.clone();
                let mode = pair.mode;
                tasks.push(tokio::spawn(async move {
                    let body = format!(r#"{{"policy":"api","key":"{name}"}}"#);
                    let mut conn = HttpConn::connect(&base).await.expect("connect");
                    let mut mine = Vec::new();
                    let mut tick = tokio::time::interval(pace);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let sent_at = now_ms();
                        let sent = if protected {
                            conn.request("GET", "/", &[("x-key", name)], b"").await
                        } else {
                            conn.request("POST", "/v1/check", &[], body.as_bytes())
                                .await
                        };
                        match sent {
                            Ok(a) => {
                                let received = now_ms();
                                let v = a.json();
                                mine.push(Rec {
                                    at: received,
                                    key,
                                    status: a.status,
                                    fallback: v["fallback"].as_str().map(str::to_owned),
                                    window: if protected {
                                        sent_at / W_MS
                                    } else {
                                        window_of(received, &v)
                                    },
                                    window_end: if protected {
                                        received / W_MS
                                    } else {
                                        window_of(received, &v)
                                    },
                                    detail: v["detail"].as_str().unwrap_or("").to_owned(),
                                });
                            }
                            Err(e) => {
                                errors.lock().await.push(format!("{base}: {e}"));
                                match HttpConn::connect(&base).await {
                                    Ok(c) => conn = c,
                                    Err(e) => {
                                        errors.lock().await.push(format!("{base}: reconnect: {e}"));
                                        tokio::time::sleep(Duration::from_millis(100)).await;
                                    }
                                }
                            }
                        }
                    }
                    records
                        .lock()
                        .await
                        .entry(mode)
                        .or_insert_with(Vec::new)
                        .extend(mine);
                }));
            }
        }
    }
    Load {
        stop,
        records,
        errors,
        tasks,
    }
}

impl Load {
    async fn finish(self) -> (BTreeMap<Mode, Vec<Rec>>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load task");
        }
        let records = std::mem::take(&mut *self.records.lock().await);
        let errors = std::mem::take(&mut *self.errors.lock().await);
        (records, errors)
    }
}

/// The figures of one mode in one scenario.
#[derive(Debug, Default)]
struct Figures {
    requests: usize,
    admitted: u64,
    /// `L` times the windows the load touched, per key, summed.
    policy_allows: u64,
    /// What the mode promises over the same windows.
    promise: u64,
    /// Admitted beyond `L`, summed over windows.
    overshoot: u64,
    /// The worst window: admitted - L.
    worst: u64,
    /// Admitted protected-API answers sent in one window and back in the next:
    /// left out of `overshoot`, held by the two windows' check.
    straddling: u64,
    /// Windows over the mode's promise.
    broken: Vec<String>,
    by_status: BTreeMap<u16, usize>,
    fallbacks: usize,
    /// The last fallback or 503 answer (Unix ms).
    last_fallback: Option<u64>,
    five_xx_other: Vec<String>,
}

fn figures(mode: Mode, recs: &[Rec], losses: &[Loss]) -> Figures {
    let mut f = Figures {
        requests: recs.len(),
        ..Figures::default()
    };
    // (key, window) -> (admitted, fell back)
    let mut windows: BTreeMap<(usize, u64), (u64, bool)> = BTreeMap::new();
    for r in recs {
        *f.by_status.entry(r.status).or_default() += 1;
        let w = windows.entry((r.key, r.window)).or_default();
        if r.fallback.is_some() || r.status == 503 {
            f.fallbacks += 1;
            f.last_fallback = f.last_fallback.max(Some(r.at));
            w.1 = true;
        }
        if r.status == 200 {
            w.0 += 1;
            f.admitted += 1;
        }
        let deny_503 = mode == Mode::Deny
            && r.status == 503
            && (r.detail.contains("on_error = deny") || r.detail.contains("cannot decide now"));
        if r.status >= 500 && !deny_503 {
            f.five_xx_other.push(format!("{} {}", r.status, r.detail));
        }
        if ![200, 429, 503].contains(&r.status) && r.status < 500 {
            f.five_xx_other
                .push(format!("unexpected {} {}", r.status, r.detail));
        }
    }
    // A window in which any answer of this mode fell back (the protected API does
    // not say so itself).
    let fell_back_any: std::collections::BTreeSet<u64> = windows
        .iter()
        .filter(|(_, (_, fb))| *fb)
        .map(|((_, w), _)| *w)
        .collect();
    let promise_of = |window: u64, fell_back: bool| {
        let start = window * W_MS;
        let end = start + W_MS;
        let lost = losses
            .iter()
            .filter(|l| l.from < end && l.to + W_MS > start)
            .count() as u64;
        match mode {
            Mode::Deny => L * (1 + lost),
            Mode::Local => L * (1 + lost) + if fell_back { NODES * (L / NODES) } else { 0 },
            Mode::Allow => u64::MAX,
        }
    };
    // The protected key's answers whose request and answer fell in two windows:
    // (first window) -> count, decided in that window or the next.
    let mut straddling: BTreeMap<u64, u64> = BTreeMap::new();
    for r in recs {
        if r.status == 200 && r.window_end != r.window {
            f.straddling += 1;
            if r.window_end == r.window + 1 {
                *straddling.entry(r.window).or_default() += 1;
            }
            // Counted in its send window above, out of the checks below.
            if let Some(w) = windows.get_mut(&(r.key, r.window)) {
                w.0 -= 1;
            }
        }
    }
    for (&(key, window), &(admitted, fell_back)) in &windows {
        let protected = key == KEYS.len();
        let fell_back = fell_back || (protected && fell_back_any.contains(&window));
        let promise = promise_of(window, fell_back);
        // Over L, from the answers whose window is known (not the straddling ones).
        f.policy_allows += L;
        f.promise = f.promise.saturating_add(promise);
        f.overshoot += admitted.saturating_sub(L);
        f.worst = f.worst.max(admitted.saturating_sub(L));
        if admitted > promise {
            f.broken.push(format!(
                "key {key} window {window}: {admitted} admitted, promised {promise} (fallback {fell_back})"
            ));
        }
        if protected {
            // An answer sent in this window and back in the next was decided in one
            // of the two: the pair holds it.
            let (next, next_fb) = windows
                .get(&(key, window + 1))
                .copied()
                .unwrap_or((0, false));
            let next_fb = next_fb || fell_back_any.contains(&(window + 1));
            let both = promise.saturating_add(promise_of(window + 1, next_fb));
            let pair = admitted + next + straddling.get(&window).copied().unwrap_or(0);
            if pair > both {
                f.broken.push(format!(
                    "protected key, windows {window} and {}: {pair} admitted, promised {both}",
                    window + 1
                ));
            }
        }
    }
    f
}

/// Waits until both nodes of a pair decide from Redis again, then asks a fresh key
/// 30 times at once over both nodes under `exact` (10 per minute): exactly 10 must
/// pass. A stray timeout on a loaded machine spoils an attempt (a fallback answer or
/// a 503), so up to three fresh keys are tried. Returns the seconds it took.
async fn recovers(pair: &Pair, scenario: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let key = format!(
            "exact-{scenario}-{}-{attempt}-{}",
            pair.mode.name(),
            now_ms()
        );
        // First: every node answers from Redis (its own probe key).
        let mut from_redis = true;
        for (n, node) in pair.nodes.iter().enumerate() {
            let mut c = HttpConn::connect(&node.base).await.expect("connect");
            let body = format!(r#"{{"policy":"api","key":"probe-{n}-{}"}}"#, now_ms());
            let a = c
                .request("POST", "/v1/check", &[], body.as_bytes())
                .await
                .expect("probe");
            from_redis &= a.status == 200 && a.json().get("fallback").is_none();
        }
        if from_redis {
            let mut tasks = Vec::new();
            for i in 0..30 {
                let base = pair.nodes[i % pair.nodes.len()].base.clone();
                let body = format!(r#"{{"policy":"exact","key":"{key}"}}"#);
                tasks.push(tokio::spawn(async move {
                    let mut c = HttpConn::connect(&base).await.expect("connect");
                    let a = c
                        .request("POST", "/v1/check", &[], body.as_bytes())
                        .await
                        .expect("check");
                    (a.status, a.json().get("fallback").is_some())
                }));
            }
            let mut answers = Vec::new();
            for t in tasks {
                answers.push(t.await.expect("task"));
            }
            let clean = answers
                .iter()
                .all(|(s, fb)| (*s == 200 || *s == 429) && !fb);
            let admitted = answers.iter().filter(|(s, _)| *s == 200).count();
            if clean {
                assert_eq!(
                    admitted,
                    10,
                    "{scenario}/{}: after recovery the fleet must hold the limit exactly: {answers:?}",
                    pair.mode.name()
                );
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{scenario}/{}: no recovery within 30 s",
            pair.mode.name()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks and reports one scenario: the load's records, the nodes, recovery.
async fn verdict(
    scenario: &str,
    faults: usize,
    pairs: &mut [Pair],
    records: BTreeMap<Mode, Vec<Rec>>,
    errors: Vec<String>,
    losses: &[Loss],
    fault_end: u64,
) {
    assert!(
        errors.is_empty(),
        "{scenario}: connections failed: {errors:?}"
    );
    for pair in pairs.iter_mut() {
        for node in &mut pair.nodes {
            assert!(
                node.child.try_wait().expect("poll").is_none(),
                "{scenario}/{}: a node exited",
                pair.mode.name()
            );
        }
    }
    let mut failures = Vec::new();
    for pair in pairs.iter() {
        let recs = records.get(&pair.mode).map(Vec::as_slice).unwrap_or(&[]);
        let f = figures(pair.mode, recs, losses);
        recovers(pair, scenario).await;
        // Fallback answers stopped this long after the last fault ended.
        let recovered = f
            .last_fallback
            .map_or(0.0, |t| t.saturating_sub(fault_end) as f64 / 1000.0);
        println!(
            "CHAOS|{scenario}|{}|faults={faults}|requests={}|admitted={}|policy_allows={}|promise={}|overshoot={}|worst_window_over={}|fallback_answers={}|503={}|other_5xx={}|recovered_s={recovered:.1}|straddling={}|statuses={:?}",
            pair.mode.name(),
            f.requests,
            f.admitted,
            f.policy_allows,
            if pair.mode == Mode::Allow {
                "none".to_owned()
            } else {
                f.promise.to_string()
            },
            f.overshoot,
            f.worst,
            f.fallbacks,
            f.by_status.get(&503).copied().unwrap_or(0),
            f.five_xx_other.len(),
            f.straddling,
            f.by_status
        );
        assert!(
            f.requests > 0,
            "{scenario}/{}: no load answered",
            pair.mode.name()
        );
        if !f.five_xx_other.is_empty() {
            failures.push(format!(
                "{}: answers outside 200/429 (and deny's 503): {:?}",
                pair.mode.name(),
                &f.five_xx_other[..f.five_xx_other.len().min(5)]
            ));
        }
        if !f.broken.is_empty() {
            failures.push(format!(
                "{}: over the promise: {:?}",
                pair.mode.name(),
                &f.broken[..f.broken.len().min(5)]
            ));
        }
    }
    assert!(failures.is_empty(), "{scenario}: {failures:#?}");
}

/// Load for `before`, then `inject` (returns the faults made and the state losses),
/// then load for `after`, then the verdict.
async fn run<F, Fut>(scenario: &str, url: &str, inject: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = (usize, Vec<Loss>, u64)>,
{
    let mut pairs = start_pairs(url, scenario);
    let load = start_load(&pairs);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (faults, losses, fault_end) = inject().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (records, errors) = load.finish().await;
    verdict(
        scenario, faults, &mut pairs, records, errors, &losses, fault_end,
    )
    .await;
}

fn rounds() -> usize {
    knob("TOLLGATE_CHAOS_ROUNDS", 2) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load() {
    let redis = Arc::new(std::sync::Mutex::new(PrivateRedis::start()));
    let port = redis.lock().expect("redis").port;
    let url = format!("redis://127.0.0.1:{port}/0");
    // The test keeps one handle, so Redis outlives the fault injection.
    let injector = redis.clone();
    run("restart", &url, || async move {
        let redis = injector;
        let mut losses = Vec::new();
        for _ in 0..rounds() {
            let from = now_ms();
            let r = redis.clone();
            tokio::task::spawn_blocking(move || {
                let mut r = r.lock().expect("redis");
                r.kill();
                std::thread::sleep(Duration::from_millis(400));
                r.restart();
            })
            .await
            .expect("restart");
            losses.push(Loss { from, to: now_ms() });
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        let end = losses.last().map_or(0, |l| l.to);
        (losses.len(), losses, end)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_flush_and_script_flush_under_load() {
    let redis = PrivateRedis::start();
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let port = redis.port;
    run("flush", &url, || async move {
        let mut r = RedisConn::connect(port).await.expect("redis");
        let mut faults = 0;
        for _ in 0..rounds() * 8 {
            for cmd in [["FUNCTION", "FLUSH"], ["SCRIPT", "FLUSH"]] {
                let a = r.cmd(&cmd).await.expect("flush");
                assert_eq!(a.text(), "OK", "{cmd:?}");
                faults += 1;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (faults, Vec::new(), now_ms())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pause_longer_than_the_timeout_under_load() {
    let redis = PrivateRedis::start();
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let port = redis.port;
    run("client-pause", &url, || async move {
        let mut r = RedisConn::connect(port).await.expect("redis");
        let pause_ms = (TIMEOUT_MS * 4).to_string();
        let mut end = 0;
        for _ in 0..rounds() {
            end = now_ms() + TIMEOUT_MS * 4;
            let a = r
                .cmd(&["CLIENT", "PAUSE", &pause_ms, "ALL"])
                .await
                .expect("pause");
            assert_eq!(a.text(), "OK");
            tokio::time::sleep(Duration::from_millis(TIMEOUT_MS * 4 + 1500)).await;
        }
        (rounds(), Vec::new(), end)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_sleep_under_load() {
    let redis = PrivateRedis::start();
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let port = redis.port;
    run("debug-sleep", &url, || async move {
        let mut r = RedisConn::connect(port).await.expect("redis");
        let mut end = 0;
        for _ in 0..rounds() {
            let a = r.cmd(&["DEBUG", "SLEEP", "1"]).await.expect("debug sleep");
            end = now_ms();
            assert_eq!(a.text(), "OK");
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        (rounds(), Vec::new(), end)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_killed_and_replica_promoted_under_load() {
    let cluster = Arc::new(std::sync::Mutex::new(ReplicatedCluster::start()));
    let url = cluster.lock().expect("cluster").url();
    let injector = cluster.clone();
    run("failover", &url, || async move {
        let cluster = injector;
        let mut losses = Vec::new();
        for round in 0..rounds() {
            let c = cluster.clone();
            let loss = tokio::task::spawn_blocking(move || {
                let mut c = c.lock().expect("cluster");
                let any = c.alive()[0];
                // The load's keys hash on their client part (the hash tag): kill the
                // master of the first key's slot.
                let slot: u16 = cli(any, &["CLUSTER", "KEYSLOT", KEYS[0]])
                    .trim()
                    .parse()
                    .expect("a slot");
                let victim = master_of_slot(any, slot).expect("a master for the slot");
                let from = now_ms();
                c.kill(victim);
                let survivors = c.alive();
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let promoted = master_of_slot(survivors[0], slot);
                    if promoted.is_some_and(|p| p != victim) && cluster_healthy(&survivors) {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no replica took over slot {slot} from {victim}: {}",
                        cli(survivors[0], &["CLUSTER", "NODES"])
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                let loss = Loss { from, to: now_ms() };
                // Back as a replica, ready for the next round.
                if round + 1 < rounds() {
                    c.restart(victim);
                }
                loss
            })
            .await
            .expect("failover");
            println!(
                "CHAOS|failover|promoted after {:.1} s",
                (loss.to - loss.from) as f64 / 1000.0
            );
            losses.push(loss);
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        let end = losses.last().map_or(0, |l| l.to);
        (losses.len(), losses, end)
    })
    .await;
}

/// Regression: with `on_error = "local"`, the decision API and the protected API had
/// a local limiter each, so a key decided through both while Redis was down got
/// this node's share twice (`limit / nodes` from each). They share one now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_share_is_one_budget_for_both_apis() {
    // Nothing listens on this port: every decision falls back.
    let port = crate::harness::free_port();
    let conf = write_config(
        "chaos-local-share",
        &format!(
            r#"
[store]
url = "redis://127.0.0.1:{port}/0"
on_error = "local"
timeout = "50ms"
nodes = 2

[[policy]]
name = "api"
algorithm = "gcra"
limit = 4
period = "1m"
key = "header:x-key"
"#
        ),
    );
    let s = start(&["--config", conf.to_str().expect("path")], &[]);
    let mut c = HttpConn::connect(&s.base).await.expect("connect");
    let mut admitted = 0;
    for _ in 0..4 {
        let a = c
            .request(
                "POST",
                "/v1/check",
                &[],
                br#"{"policy":"api","key":"alice"}"#,
            )
            .await
            .expect("check");
        assert_eq!(a.json()["fallback"], "local", "{:?}", a.json());
        admitted += usize::from(a.status == 200);
        let a = c
            .request("GET", "/", &[("x-key", "alice")], b"")
            .await
            .expect("GET /");
        assert!(a.status == 200 || a.status == 429, "{a:?}");
        admitted += usize::from(a.status == 200);
    }
    // This node's share of 4 per minute over 2 nodes: 2, whichever API asks.
    assert_eq!(admitted, 2);
}
