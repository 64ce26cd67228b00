//! Tollgate against governor, and against a bare `DashMap<String, AtomicU64>`, in one
//! bench binary so every run measures the reference beside the subject.
//!
//! ```text
//! cargo bench -p tollgate --bench compare
//! ```
//!
//! Bench ids (`group/subject`):
//! - `single_key_allowed/*`, `single_key_denied/*`: one key, no map (tollgate's
//!   `DirectLimiter` with gcra, governor's direct `check()`), and tollgate's
//!   `MemoryStore` on one hot key.
//! - `keyed_100k_1t/*`, `keyed_100k_2t/*`: 100,000 distinct `String` keys visited in a
//!   fixed random order (seed below) on 1 and 2 threads, each key built into a
//!   `String` buffer just before its check (see `fill_key`); for 2 threads the time is
//!   wall time per check, so it falls as the threads scale. Tollgate runs every
//!   algorithm; governor runs `check_key`; `dashmap_floor` is the bare map get plus
//!   `fetch_add`, the least any keyed limiter can cost.
//!
//! In the keyed groups nothing is denied and no key goes fresh during the run (see
//! `live_policy`), so every check finds its key: the steady state, as governor
//! (which never drops a key) is always in.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use dashmap::DashMap;
use governor::{Quota, RateLimiter};
use tollgate::{Algorithm, DirectLimiter, MemoryStore, Policy};

const KEYS: usize = 100_000;
const SEED: u64 = 0x5eed_7011_6a7e;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key of client `i`: `client-00012345-api`, 19 bytes, written into `buf`.
///
/// Each check builds its key, as a server builds it from the request, so the key is
/// in cache and the bench measures the limiter's table, not the bench's own
/// 100,000-string `Vec` (fetching a random `String` from it costs two cache misses,
/// more than a whole check of the limiter under test).
fn fill_key(buf: &mut String, i: u32) {
    let mut bytes = *b"client-00000000-api";
    let mut n = i;
    for d in bytes[7..15].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    buf.clear();
    buf.push_str(std::str::from_utf8(&bytes).unwrap_or_default());
}

/// The 100,000 keys, and a fixed random visiting order.
fn keys_and_order() -> (Vec<String>, Vec<u32>) {
    let keys: Vec<String> = (0..KEYS as u32)
        .map(|i| {
            let mut k = String::new();
            fill_key(&mut k, i);
            k
        })
        .collect();
    let mut order: Vec<u32> = (0..KEYS as u32).collect();
    let mut s = SEED;
    for i in (1..order.len()).rev() {
        let j = (splitmix(&mut s) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    (keys, order)
}

fn policy(algorithm: Algorithm, limit: u32, period: Duration) -> Policy {
    match Policy::new(algorithm, limit, period) {
        Ok(p) => p,
        Err(e) => panic!("bench policy: {e}"),
    }
}

/// A policy under which every key stays live (never fresh again) for the whole
/// run and nothing is denied, so every check finds its key and the keyed benches
/// measure the steady state: the bucket family earns back one unit per second with a
/// burst of 10^9; the windows admit 10^9 per hour.
fn live_policy(algorithm: Algorithm) -> Policy {
    let p = if algorithm.is_bucket() {
        policy(algorithm, 1_000_000, Duration::from_secs(1_000_000))
    } else {
        policy(algorithm, 1_000_000_000, Duration::from_secs(3600))
    };
    match p.with_burst(1_000_000_000) {
        Ok(p) => p,
        Err(e) => panic!("bench policy: {e}"),
    }
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

fn single_key(c: &mut Criterion) {
    // Allowed: a limit no benchmark can reach.
    let mut g = c.benchmark_group("single_key_allowed");
    let high = policy(
        Algorithm::Gcra,
        1_000_000_000,
        Duration::from_nanos(1_000_000_000),
    );
    let direct = DirectLimiter::new(high);
    g.bench_function("tollgate_direct_gcra", |b| {
        b.iter(|| black_box(direct.check().allowed))
    });
    let gov = RateLimiter::direct(Quota::per_second(nz(1_000_000_000)));
    g.bench_function("governor_direct", |b| {
        b.iter(|| black_box(gov.check().is_ok()))
    });
    let store = MemoryStore::new();
    g.bench_function("tollgate_store_gcra", |b| {
        b.iter(|| black_box(store.check_one(black_box("hot-key"), &high).allowed))
    });
    g.finish();

    // Denied: one per hour, used up before measuring.
    let mut g = c.benchmark_group("single_key_denied");
    let low = policy(Algorithm::Gcra, 1, Duration::from_secs(3600));
    let direct = DirectLimiter::new(low);
    let _ = direct.check();
    g.bench_function("tollgate_direct_gcra", |b| {
        b.iter(|| black_box(direct.check().allowed))
    });
    let gov = RateLimiter::direct(Quota::per_hour(nz(1)));
    let _ = gov.check();
    g.bench_function("governor_direct", |b| {
        b.iter(|| black_box(gov.check().is_ok()))
    });
    let store = MemoryStore::new();
    let _ = store.check_one("hot-key", &low);
    g.bench_function("tollgate_store_gcra", |b| {
        b.iter(|| black_box(store.check_one(black_box("hot-key"), &low).allowed))
    });
    g.finish();
}

/// Runs `op` over the keys in order on `threads` threads; returns wall time for
/// `iters` operations in all. Each thread builds each key into its own buffer.
fn run_threads(
    threads: usize,
    iters: u64,
    order: &[u32],
    op: &(dyn Fn(&String) + Sync),
) -> Duration {
    let per_thread = iters.div_ceil(threads as u64);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut key = String::with_capacity(32);
                let offset = t * order.len() / threads;
                for i in 0..per_thread as usize {
                    fill_key(&mut key, order[(offset + i) % order.len()]);
                    op(&key);
                }
            });
        }
    });
    start.elapsed()
}

fn keyed(c: &mut Criterion) {
    let (keys, order) = keys_and_order();
    for threads in [1usize, 2] {
        let mut g = c.benchmark_group(format!("keyed_100k_{threads}t"));
        for algorithm in Algorithm::ALL {
            let p = live_policy(algorithm);
            let store = MemoryStore::new();
            for k in &keys {
                store.check_one(k, &p);
            }
            let op = |k: &String| {
                black_box(store.check_one(k, &p).allowed);
            };
            g.bench_function(format!("tollgate_{}", algorithm.name()), |b| {
                b.iter_custom(|iters| run_threads(threads, iters, &order, &op))
            });
        }

        let gov = RateLimiter::keyed(Quota::per_second(nz(1_000_000_000)));
        for k in &keys {
            let _ = gov.check_key(k);
        }
        let op = |k: &String| {
            black_box(gov.check_key(k).is_ok());
        };
        g.bench_function("governor_check_key", |b| {
            b.iter_custom(|iters| run_threads(threads, iters, &order, &op))
        });

        let floor: DashMap<String, AtomicU64> = keys
            .iter()
            .map(|k| (k.clone(), AtomicU64::new(0)))
            .collect();
        let op = |k: &String| {
            if let Some(v) = floor.get(k.as_str()) {
                black_box(v.fetch_add(1, Ordering::AcqRel));
            }
        };
        g.bench_function("dashmap_floor", |b| {
            b.iter_custom(|iters| run_threads(threads, iters, &order, &op))
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = single_key, keyed
}
criterion_main!(benches);
