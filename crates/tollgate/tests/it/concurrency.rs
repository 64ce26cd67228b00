//! Real threads on one store: exact counts under contention, and bounded memory while
//! a million keys pass through.

use std::fmt::Write as _;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use tollgate::{
    Algorithm, Check, Clock, DirectLimiter, ManualClock, MemoryStore, Nanos, Policy, SystemClock,
};

const THREADS: usize = 8;
/// 1,000,000.25 s: a quarter of a second into a 1 s window, 2800.25 s into an hour.
const START: Nanos = Nanos::from_millis(1_000_000_250);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

fn policy(algorithm: Algorithm, limit: u32, period: impl Into<Nanos>) -> Policy {
    Policy::new(algorithm, limit, period).expect("valid policy")
}

/// Runs `test` on its own thread and fails if it has not finished after `limit`: a
/// deadlock or a livelock fails the test instead of hanging the run.
fn within(limit: Duration, test: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    let handle = thread::spawn(move || {
        test();
        let _ = done.send(());
    });
    match finished.recv_timeout(limit) {
        Ok(()) | Err(RecvTimeoutError::Disconnected) => {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(RecvTimeoutError::Timeout) => {
            panic!("not finished after {limit:?}: a deadlock or a livelock")
        }
    }
}

/// `THREADS` threads each make `attempts` calls of `attempt(thread, attempt number)`;
/// returns how many were admitted.
fn hammer(attempts: usize, attempt: impl Fn(usize, usize) -> bool + Sync) -> u64 {
    let admitted = AtomicU64::new(0);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (admitted, attempt) = (&admitted, &attempt);
            s.spawn(move || {
                let mine = (0..attempts).filter(|&j| attempt(t, j)).count() as u64;
                admitted.fetch_add(mine, Ordering::Relaxed);
            });
        }
    });
    admitted.into_inner()
}

/// A manual clock that every call moves on by one nanosecond, so that threads read
/// slightly different instants (and some read an older one than a state holds).
fn tick(clock: &ManualClock) {
    clock.advance(Nanos::new(1));
}

#[test]
fn one_key_admits_exactly_the_limit() {
    within(Duration::from_secs(60), || {
        for algorithm in Algorithm::ALL {
            let clock = ManualClock::new(START);
            let store = MemoryStore::with_clock(clock.clone());
            let p = policy(algorithm, 1000, HOUR);
            let admitted = hammer(400, |_, _| {
                tick(&clock);
                store.check_one("hot", &p).allowed
            });
            assert_eq!(admitted, 1000, "{algorithm}");
            assert!(!store.peek_n("hot", &p, NonZeroU32::MIN).allowed);

            // At cost 3, 333 requests fit in 1000.
            let three = NonZeroU32::new(3).expect("non-zero");
            let admitted = hammer(400, |_, _| {
                tick(&clock);
                store.check_n("hot3", &p, three).allowed
            });
            assert_eq!(admitted, 333, "{algorithm} at cost 3");
            assert_eq!(store.len(), 2);
        }
    });
}

#[test]
fn one_key_on_the_system_clock_admits_exactly_the_limit() {
    // The bucket family only: a window aligned to the system clock could end during
    // the test. At 1000 a day one unit comes back every 86.4 s.
    within(Duration::from_secs(60), || {
        for algorithm in [
            Algorithm::TokenBucket,
            Algorithm::Gcra,
            Algorithm::LeakyBucket,
        ] {
            let store = MemoryStore::new();
            let p = policy(algorithm, 1000, DAY);
            let admitted = hammer(400, |_, _| store.check_one("hot", &p).allowed);
            assert_eq!(admitted, 1000, "{algorithm}");
        }
    });
}

#[test]
fn new_keys_raced_by_many_threads_admit_exactly_the_limit() {
    // Every thread meets every key while it is still new, in its own order.
    within(Duration::from_secs(60), || {
        for algorithm in Algorithm::ALL {
            let clock = ManualClock::new(START);
            let store = MemoryStore::with_clock(clock.clone());
            let p = policy(algorithm, 10, HOUR);
            let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
            let per_key: Vec<AtomicU64> = keys.iter().map(|_| AtomicU64::new(0)).collect();
            hammer(400, |t, j| {
                tick(&clock);
                let i = (j + t * 13) % keys.len();
                let allowed = store.check_one(&keys[i], &p).allowed;
                if allowed {
                    per_key[i].fetch_add(1, Ordering::Relaxed);
                }
                allowed
            });
            for (key, n) in keys.iter().zip(&per_key) {
                // 32 attempts a key.
                assert_eq!(n.load(Ordering::Relaxed), 10, "{algorithm}: {key}");
            }
            assert_eq!(store.len(), 100);
        }
    });
}

/// `clients` clients share `THREADS` threads; each request is checked against its
/// client's policy and the global one.
fn stacked_run(
    client_alg: Algorithm,
    global_alg: Algorithm,
    client_limit: u32,
    global_limit: u32,
    clients: usize,
) -> (u64, Vec<u64>) {
    let clock = ManualClock::new(START);
    let store = MemoryStore::with_clock(clock.clone());
    let client = policy(client_alg, client_limit, HOUR);
    let global = policy(global_alg, global_limit, HOUR);
    let keys: Vec<String> = (0..clients).map(|c| format!("client:{c}")).collect();
    let per_client: Vec<AtomicU64> = keys.iter().map(|_| AtomicU64::new(0)).collect();
    let total = hammer(300, |t, _| {
        tick(&clock);
        let c = t % clients;
        let checks = [Check::new(&keys[c], &client), Check::new("global", &global)];
        let verdict = store.check_all(&checks).expect("a valid stack");
        if verdict.allowed() {
            per_client[c].fetch_add(1, Ordering::Relaxed);
        }
        verdict.allowed()
    });
    let per_client = per_client
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect();
    (total, per_client)
}

#[test]
fn stacked_checks_admit_exactly_the_tighter_limit() {
    within(Duration::from_secs(60), || {
        let mut pairs: Vec<(Algorithm, Algorithm)> = Algorithm::ALL.map(|a| (a, a)).to_vec();
        pairs.extend([
            (Algorithm::FixedWindow, Algorithm::Gcra),
            (Algorithm::Gcra, Algorithm::SlidingWindowLog),
            (Algorithm::TokenBucket, Algorithm::SlidingWindowCounter),
            (Algorithm::SlidingWindowLog, Algorithm::LeakyBucket),
        ]);
        for (client_alg, global_alg) in pairs {
            let pair = format!("{client_alg} per client + {global_alg} global");
            // 4 clients x 600 attempts at 300 each: the global 500 binds.
            let (total, per_client) = stacked_run(client_alg, global_alg, 300, 500, 4);
            assert_eq!(total, 500, "{pair}: {per_client:?}");
            assert_eq!(per_client.iter().sum::<u64>(), 500, "{pair}");
            assert!(
                per_client.iter().all(|&n| n <= 300),
                "{pair}: {per_client:?}"
            );

            // 2 clients x 1200 attempts at 200 each: the clients bind.
            let (total, per_client) = stacked_run(client_alg, global_alg, 200, 500, 2);
            assert_eq!(per_client, [200, 200], "{pair}");
            assert_eq!(total, 400, "{pair}");
        }
    });
}

#[test]
fn direct_limiter_admits_exactly_the_limit() {
    within(Duration::from_secs(60), || {
        for algorithm in Algorithm::ALL {
            let clock = ManualClock::new(START);
            let limiter = DirectLimiter::with_clock(policy(algorithm, 1000, HOUR), clock.clone());
            let admitted = hammer(400, |_, _| {
                tick(&clock);
                limiter.check().allowed
            });
            assert_eq!(admitted, 1000, "{algorithm}");
            assert!(!limiter.peek_n(NonZeroU32::MIN).allowed);

            limiter.reset();
            let admitted = hammer(400, |_, _| {
                tick(&clock);
                limiter
                    .check_n(NonZeroU32::new(7).expect("non-zero"))
                    .allowed
            });
            assert_eq!(admitted, 142, "{algorithm} at cost 7 after a reset");
        }
        for algorithm in [
            Algorithm::TokenBucket,
            Algorithm::Gcra,
            Algorithm::LeakyBucket,
        ] {
            let limiter = DirectLimiter::new(policy(algorithm, 1000, DAY));
            let admitted = hammer(400, |_, _| limiter.check().allowed);
            assert_eq!(admitted, 1000, "{algorithm} on the system clock");
        }
    });
}

#[test]
fn a_million_keys_pass_through_a_store_capped_at_ten_thousand() {
    const KEYS: usize = 1_000_000;
    const WORKERS: usize = 2;
    const CAP: usize = 10_000;
    within(Duration::from_secs(120), || {
        let store = MemoryStore::builder().max_keys(CAP).build();
        // Three keys in four stay live for minutes and must be evicted; the fourth is
        // fresh again after 1 us and is swept.
        let long = policy(Algorithm::Gcra, 10, HOUR);
        let short = policy(Algorithm::Gcra, 1000, Duration::from_millis(1));
        let done = AtomicBool::new(false);
        let started = Instant::now();
        let (most, samples, admitted) = thread::scope(|s| {
            let sampler = s.spawn(|| {
                let (mut most, mut samples) = (0, 0u64);
                while !done.load(Ordering::Acquire) {
                    most = most.max(store.len());
                    samples += 1;
                    thread::sleep(Duration::from_micros(200));
                }
                (most, samples)
            });
            let workers: Vec<_> = (0..WORKERS)
                .map(|w| {
                    let (store, long, short) = (&store, &long, &short);
                    s.spawn(move || {
                        let mut key = String::with_capacity(16);
                        let mut admitted = 0u64;
                        for i in (w..KEYS).step_by(WORKERS) {
                            key.clear();
                            let _ = write!(key, "key-{i}");
                            let p = if i % 4 == 0 { short } else { long };
                            admitted += u64::from(store.check_one(&key, p).allowed);
                        }
                        admitted
                    })
                })
                .collect();
            let admitted: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
            done.store(true, Ordering::Release);
            let (most, samples) = sampler.join().expect("sampler");
            (most, samples, admitted)
        });
        let elapsed = started.elapsed();
        let stats = store.stats();
        eprintln!(
            "{KEYS} keys through a store capped at {CAP}: {elapsed:?}, {samples} samples, \
             most held {most}, {stats:?}"
        );
        assert_eq!(admitted, KEYS as u64, "every key was new");
        assert!(samples > 0);
        assert!(most <= CAP, "{most} keys held at once");
        assert!(stats.keys <= CAP, "{stats:?}");
        assert!(stats.keys >= CAP / 2, "the cap is used: {stats:?}");
        assert!(stats.evicted > 0, "{stats:?}");
        assert!(stats.expired > 0, "{stats:?}");
        assert_eq!(
            stats.keys as u64 + stats.evicted + stats.expired,
            KEYS as u64,
            "every key that left was counted: {stats:?}"
        );
    });
}

#[test]
fn stacks_sweeps_removals_and_evictions_together_never_deadlock() {
    within(Duration::from_secs(60), || {
        // 64 shards of 4 keys: evictions all the time.
        let clock = ManualClock::new(START);
        let store = MemoryStore::builder()
            .max_keys(256)
            .build_with_clock(clock.clone());
        let policies: Vec<Policy> = Algorithm::ALL
            .iter()
            .map(|&a| policy(a, 3, Duration::from_millis(1)))
            .collect();
        let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
        let done = AtomicBool::new(false);
        let most = thread::scope(|s| {
            let janitor = s.spawn(|| {
                let mut most = 0;
                let mut n = 0usize;
                while !done.load(Ordering::Acquire) {
                    most = most.max(store.len());
                    match n % 3 {
                        0 => {
                            store.sweep();
                        }
                        1 => store.remove(&keys[n % keys.len()]),
                        _ => most = most.max(store.stats().keys),
                    }
                    n += 1;
                    thread::yield_now();
                }
                most
            });
            let workers: Vec<_> = (0..4)
                .map(|w| {
                    let (store, clock, policies, keys) = (&store, &clock, &policies, &keys);
                    s.spawn(move || {
                        // A small xorshift: each worker its own sequence.
                        let mut next = crate::xorshift(0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1));
                        for _ in 0..20_000 {
                            clock.advance(Nanos::new(1000));
                            let a = next() % keys.len();
                            let b = (a + 1 + next() % 997) % keys.len();
                            let c = (b + 1 + next() % 3) % keys.len();
                            let checks = [
                                Check::new(&keys[a], &policies[next() % 6]),
                                Check::new(&keys[b], &policies[next() % 6]),
                                Check::new(&keys[c], &policies[next() % 6]),
                            ];
                            let distinct = a != b && b != c && a != c;
                            match next() % 4 {
                                0 => {
                                    let r = store.peek_all(&checks);
                                    assert_eq!(r.is_ok(), distinct, "{r:?}");
                                }
                                1 => {
                                    store.check_one(&keys[a], &policies[next() % 6]);
                                }
                                _ => {
                                    let r = store.check_all(&checks);
                                    assert_eq!(r.is_ok(), distinct, "{r:?}");
                                }
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().expect("worker");
            }
            done.store(true, Ordering::Release);
            janitor.join().expect("janitor")
        });
        assert!(most <= 256, "{most} keys held at once");
        assert!(store.len() <= 256);
        let stats = store.stats();
        assert!(stats.evicted > 0 && stats.expired > 0, "{stats:?}");
    });
}

#[test]
fn clocks_are_shareable_between_threads() {
    // The store's clock is read from every thread; both clocks are Send + Sync.
    fn assert_clock<C: Clock + Clone + 'static>() {}
    assert_clock::<ManualClock>();
    fn assert_shared<T: Send + Sync>() {}
    assert_shared::<MemoryStore<SystemClock>>();
    assert_shared::<MemoryStore<ManualClock>>();
    assert_shared::<DirectLimiter<SystemClock>>();
}
