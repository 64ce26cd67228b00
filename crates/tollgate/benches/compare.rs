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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use dashmap::DashMap;
use governor::{Quota, RateLimiter};
use tollgate::{Algorithm, DirectLimiter, MemoryStore};

mod common;

use common::{fill_key, keys_and_order, live_policy, nz, policy};

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
