//! The conformance suite: the Redis store decides exactly as the memory store (which
//! its own suite holds to the pure algorithm functions) on random traces, replayed in
//! caller-clock mode so both see the same instants.

use std::num::NonZeroU32;
use std::time::Duration;

use tollgate::{Algorithm, Check, ManualClock, MemoryStore, Nanos, Policy, Store};
use tollgate_redis::{MAX_DURATION, RedisError};

use crate::common::{caller_store, epoch, redis_url, xorshift};

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

/// Periods worth testing: round ones, ones that do not divide a second or that a
/// second does not divide, days, and the longest the store takes.
const PERIODS: [u64; 12] = [
    1,
    7 * MS,
    333 * MS + 7,
    S,
    S + 1,
    15 * S,
    60 * S + 123,
    3_600 * S,
    86_400 * S,
    30 * 86_400 * S,
    (1 << 52) / 4_000,
    1 << 52,
];

pub fn random_policy(next: &mut impl FnMut() -> u64) -> Policy {
    loop {
        let algorithm = Algorithm::ALL[(next() % 6) as usize];
        let limit = match next() % 8 {
            0 => 1,
            1 => 2,
            2 => 3,
            3 => 7,
            4 => 10,
            5 => 100,
            6 => 1 + (next() % 5_000) as u32,
            _ => u32::MAX - (next() % 3) as u32,
        };
        let period = match next() % 14 {
            12 => 1 + next() % (1 << 40),
            13 => 1 + next() % (1 << 52),
            i => PERIODS[i as usize],
        };
        let Ok(mut p) = Policy::new(algorithm, limit, Nanos::new(period)) else {
            continue;
        };
        if algorithm.is_bucket() && next().is_multiple_of(3) {
            let burst = match next() % 3 {
                0 => 1,
                1 => limit.saturating_mul(2),
                _ => 1 + (next() % 50) as u32,
            };
            match p.with_burst(burst) {
                Ok(b) => p = b,
                Err(_) => continue,
            }
        }
        if p.period() <= MAX_DURATION && (!algorithm.is_bucket() || p.tolerance() <= MAX_DURATION) {
            return p;
        }
    }
}

pub fn random_step(next: &mut impl FnMut() -> u64, p: &Policy) -> u64 {
    let t = p.emission_interval().as_u64().max(1);
    let w = p.period().as_u64();
    match next() % 10 {
        0 | 1 => 0,
        2 => 1 + next() % 1_000,
        3 => next() % t.saturating_mul(2).max(1),
        4 => t,
        5 => next() % w.max(1),
        6 => w.saturating_sub(1 + next() % 3),
        7 => w,
        8 => w.saturating_mul(1 + next() % 3),
        _ => next() % (10 * MS),
    }
}

/// Replays `traces` random traces of `ops` operations through the Redis store at
/// `url` and the memory store, and asserts identical verdicts.
///
/// With `one_policy_per_key`, each key is always checked under the same policy, as
/// front ends do (`<policy>:<client>`). A cluster needs it: a stack split over slots
/// gives back what an earlier slot consumed, but a key whose state was under another
/// algorithm family before that consumption comes back fresh, not as it was.
pub async fn replay(
    url: &str,
    test: &str,
    seed: u64,
    traces: usize,
    ops: usize,
    one_policy_per_key: bool,
) {
    let mut next = xorshift(seed);
    for trace in 0..traces {
        let clock = ManualClock::new(epoch(next() % (1 << 40)));
        let memory = MemoryStore::with_clock(clock.clone());
        let redis = caller_store(url, test, clock.clone()).await;
        let policies: Vec<Policy> = (0..4).map(|_| random_policy(&mut next)).collect();
        let keys = ["a:x", "b:x", "c:x", "g:global", "solo", "b:y"];
        for op in 0..ops {
            let n = 1 + (next() % 3) as usize;
            let mut stack: Vec<(usize, usize, u32)> = Vec::new();
            while stack.len() < n {
                let k = (next() % keys.len() as u64) as usize;
                if stack.iter().any(|s| s.0 == k) {
                    continue;
                }
                let p = if one_policy_per_key {
                    k % policies.len()
                } else {
                    (next() % policies.len() as u64) as usize
                };
                let limit = policies[p].limit().max(policies[p].burst());
                let cost = match next() % 10 {
                    0 => limit.saturating_add(1),
                    1 => 1 + (next() % u64::from(limit)) as u32,
                    _ => 1,
                };
                stack.push((k, p, cost));
            }
            let checks: Vec<Check<'_>> = stack
                .iter()
                .map(|&(k, p, c)| {
                    Check::new(keys[k], &policies[p])
                        .cost(NonZeroU32::new(c).unwrap_or(NonZeroU32::MIN))
                })
                .collect();
            let peek = next().is_multiple_of(5);
            let (want, got) = if peek {
                (memory.peek(&checks).await, redis.peek(&checks).await)
            } else {
                (memory.check(&checks).await, redis.check(&checks).await)
            };
            let want = want.expect("the memory store decides");
            let got = got.unwrap_or_else(|e| panic!("trace {trace} op {op}: redis failed: {e}"));
            assert_eq!(
                got,
                want,
                "trace {trace} op {op} at t={} ({}): {:?}",
                clock.now_for_tests(),
                if peek { "peek" } else { "check" },
                stack
                    .iter()
                    .map(|&(k, p, c)| (keys[k], policies[p], c))
                    .collect::<Vec<_>>()
            );
            let step = random_step(&mut next, &policies[stack[0].1]);
            clock.advance(Nanos::new(step));
        }
    }
}

trait NowForTests {
    fn now_for_tests(&self) -> u64;
}

impl NowForTests for ManualClock {
    fn now_for_tests(&self) -> u64 {
        tollgate::Clock::now(self).as_u64()
    }
}

#[tokio::test]
async fn redis_decides_as_the_memory_store_on_random_traces() {
    // TOLLGATE_CONFORMANCE_TRACES=2000 runs a longer search.
    let traces = std::env::var("TOLLGATE_CONFORMANCE_TRACES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    replay(&redis_url(), "conformance", 0x5eed_0001, traces, 150, false).await;
}

#[tokio::test]
async fn redis_decides_as_the_memory_store_on_one_hot_key() {
    // One policy, one key, many requests: long runs of denials and refills.
    let url = redis_url();
    for (i, algorithm) in Algorithm::ALL.into_iter().enumerate() {
        let clock = ManualClock::new(epoch(i as u64 * 977));
        let memory = MemoryStore::with_clock(clock.clone());
        let redis = caller_store(&url, "hot", clock.clone()).await;
        let p = Policy::new(algorithm, 5, Duration::from_millis(100)).expect("policy");
        let mut next = xorshift(42 + i as u64);
        for op in 0..400 {
            let check = [Check::new("hot:key", &p)];
            let want = memory.check(&check).await.expect("memory");
            let got = redis.check(&check).await.expect("redis");
            assert_eq!(got, want, "{algorithm:?} op {op}");
            clock.advance(Nanos::new(next() % (15 * MS)));
        }
    }
}

#[tokio::test]
async fn exact_arithmetic_on_awkward_numbers() {
    // Products of counts and periods far beyond 2^53, periods that do not divide
    // a second, and instants in the 2^60s: where doubles would round.
    let url = redis_url();
    let clock = ManualClock::new(epoch(0));
    let memory = MemoryStore::with_clock(clock.clone());
    let redis = caller_store(&url, "awkward", clock.clone()).await;
    let policies = [
        Policy::new(
            Algorithm::SlidingWindowCounter,
            u32::MAX,
            Nanos::new((1 << 52) - 3),
        ),
        Policy::new(
            Algorithm::SlidingWindowCounter,
            3,
            Nanos::new((1 << 52) - 1),
        ),
        Policy::new(Algorithm::FixedWindow, 3, Nanos::new((1 << 51) + 12_345)),
        Policy::new(Algorithm::Gcra, 3, Nanos::new((1 << 52) - 1)),
        Policy::new(Algorithm::SlidingWindowLog, 2, Nanos::new(999_999_999_999)),
        Policy::new(Algorithm::LeakyBucket, 7, Nanos::new(10_000_000_001)),
    ];
    let mut next = xorshift(7);
    for (i, p) in policies.iter().enumerate() {
        let p = p.as_ref().unwrap_or_else(|e| panic!("policy {i}: {e}"));
        let key = format!("p{i}:k");
        for op in 0..200 {
            let cost = NonZeroU32::new(1 + (next() % 3) as u32).unwrap_or(NonZeroU32::MIN);
            let check = [Check::new(&key, p).cost(cost)];
            let want = memory.check(&check).await.expect("memory");
            let got = redis.check(&check).await.expect("redis");
            assert_eq!(got, want, "policy {i} op {op}");
            let step = match next() % 4 {
                0 => p.period().as_u64() / 3 + next() % 1_000,
                1 => p.emission_interval().as_u64(),
                2 => next() % (1 << 45),
                _ => 0,
            };
            clock.advance(Nanos::new(step));
        }
    }
    // And far in the future: instants above 2^62 ns.
    clock.set(Nanos::new((1 << 62) + 987_654_321));
    for (i, p) in policies.iter().enumerate() {
        let p = p.as_ref().expect("policy");
        let key = format!("q{i}:k");
        for _ in 0..4 {
            let check = [Check::new(&key, p)];
            assert_eq!(
                redis.check(&check).await.expect("redis"),
                memory.check(&check).await.expect("memory"),
                "policy {i} after 2^62"
            );
            clock.advance(Nanos::new(p.emission_interval().as_u64() / 2 + 1));
        }
    }
}

#[tokio::test]
async fn policies_too_long_for_the_store_are_refused_by_name() {
    let url = redis_url();
    let redis = caller_store(&url, "too-long", ManualClock::new(epoch(0))).await;
    let p = Policy::new(
        Algorithm::FixedWindow,
        10,
        Duration::from_secs(365 * 86_400),
    )
    .expect("policy");
    match redis.check(&[Check::new("k", &p)]).await {
        Err(e @ RedisError::PolicyTooLong { .. }) => {
            assert!(e.is_caller_error());
            assert!(e.to_string().contains("2^52"), "{e}");
        }
        other => panic!("expected PolicyTooLong, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_stacks_are_refused_before_redis_is_asked() {
    let url = redis_url();
    let redis = caller_store(&url, "bad-stacks", ManualClock::new(epoch(0))).await;
    let p = Policy::new(Algorithm::Gcra, 10, Duration::from_secs(1)).expect("policy");
    let empty: [Check<'_>; 0] = [];
    assert!(matches!(
        redis.check(&empty).await,
        Err(RedisError::Check(tollgate::CheckError::Empty))
    ));
    let twice = [Check::new("k", &p), Check::new("k", &p)];
    assert!(matches!(
        redis.check(&twice).await,
        Err(RedisError::Check(tollgate::CheckError::DuplicateKey(_)))
    ));
    let many: Vec<String> = (0..17).map(|i| format!("k{i}")).collect();
    let many: Vec<Check<'_>> = many.iter().map(|k| Check::new(k, &p)).collect();
    assert!(matches!(
        redis.check(&many).await,
        Err(RedisError::Check(tollgate::CheckError::TooMany(17)))
    ));
}

#[tokio::test]
async fn reset_forgets_every_algorithm() {
    let url = redis_url();
    let clock = ManualClock::new(epoch(5));
    let redis = caller_store(&url, "reset", clock.clone()).await;
    for algorithm in Algorithm::ALL {
        let p = Policy::new(algorithm, 1, Duration::from_secs(60)).expect("policy");
        let key = format!("{}:k", algorithm.name());
        let check = [Check::new(&key, &p)];
        assert!(redis.check(&check).await.expect("first").allowed());
        assert!(
            !redis.check(&check).await.expect("second").allowed(),
            "{algorithm:?}"
        );
        redis.reset(&key).await.expect("reset");
        assert!(
            redis.check(&check).await.expect("after reset").allowed(),
            "{algorithm:?}"
        );
    }
}
