//! `MemoryStore` and `DirectLimiter` on a manual clock: keys, sweeping, the cap,
//! stacked checks and the `Store` trait.

use std::collections::HashSet;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use proptest::prelude::*;
use tollgate::{
    Algorithm, Check, CheckError, Decision, DenyReason, DirectLimiter, MAX_STACK, ManualClock,
    MemoryStore, Nanos, Policy, Store, Verdict,
};

/// 1,000,000.25 s: a quarter of a second into a 1 s window, 2800.25 s into an hour.
const START: Nanos = Nanos::from_millis(1_000_000_250);
const HOUR: Duration = Duration::from_secs(3600);

fn clock() -> ManualClock {
    ManualClock::new(START)
}

fn store() -> MemoryStore<ManualClock> {
    MemoryStore::with_clock(clock())
}

fn policy(algorithm: Algorithm, limit: u32, period: impl Into<Nanos>) -> Policy {
    Policy::new(algorithm, limit, period).expect("valid policy")
}

fn cost(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero cost")
}

/// Polls a future once: the memory store's futures are ready at once.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a memory store future was not ready on its first poll"),
    }
}

/// True when `key` holds state under `policy`: a policy of limit 1, checked once, is
/// denied while its key is held and admitted once the key was dropped.
fn held<C: tollgate::Clock>(store: &MemoryStore<C>, key: &str, policy: &Policy) -> bool {
    !store.peek_n(key, policy, NonZeroU32::MIN).allowed
}

fn check_stack<C: tollgate::Clock>(
    store: &MemoryStore<C>,
    checks: &[(&str, &Policy)],
) -> Result<Verdict, CheckError> {
    let checks: Vec<Check<'_>> = checks.iter().map(|&(k, p)| Check::new(k, p)).collect();
    store.check_all(&checks)
}

#[test]
fn keys_are_independent() {
    for algorithm in Algorithm::ALL {
        let store = store();
        let p = policy(algorithm, 3, HOUR);
        for i in 0..3 {
            let d = store.check_one("alice", &p);
            assert!(d.allowed, "{algorithm}: alice request {i}");
            assert_eq!(d.remaining, 2 - i, "{algorithm}");
        }
        assert!(!store.check_one("alice", &p).allowed, "{algorithm}");
        for i in 0..3 {
            let d = store.check_one("bob", &p);
            assert!(d.allowed, "{algorithm}: bob is not alice");
            assert_eq!(d.remaining, 2 - i, "{algorithm}");
        }
        assert!(!store.check_one("bob", &p).allowed, "{algorithm}");
        assert_eq!(store.len(), 2, "{algorithm}");
    }
}

#[test]
fn one_store_serves_different_policies_for_different_keys() {
    let store = store();
    let alice = policy(Algorithm::Gcra, 2, Duration::from_secs(1));
    let bob = policy(Algorithm::FixedWindow, 5, Duration::from_secs(60));
    let carol = policy(Algorithm::SlidingWindowLog, 1, HOUR);
    let admitted =
        |key: &str, p: &Policy| (0..10).filter(|_| store.check_one(key, p).allowed).count();
    assert_eq!(admitted("alice", &alice), 2);
    assert_eq!(admitted("bob", &bob), 5);
    assert_eq!(admitted("carol", &carol), 1);
    assert_eq!(store.len(), 3);

    // After one second alice has her 2 back; bob and carol stay used up.
    store.clock().advance(Duration::from_secs(1));
    assert_eq!(admitted("alice", &alice), 2);
    assert_eq!(admitted("bob", &bob), 0);
    assert_eq!(admitted("carol", &carol), 0);
    let d = store.check_one("carol", &carol);
    assert_eq!(d.limit, 1);
    assert_eq!(
        d.retry_after,
        Some(Nanos::from_secs(3599)),
        "carol's log entry leaves an hour after it was made"
    );
}

#[test]
fn peek_consumes_nothing_and_adds_no_key() {
    for algorithm in Algorithm::ALL {
        let store = store();
        let p = policy(algorithm, 3, HOUR);
        let first = store.peek_n("k", &p, NonZeroU32::MIN);
        assert!(first.allowed, "{algorithm}");
        assert_eq!(first.remaining, 2, "{algorithm}: as if it had consumed");
        let stacked = store
            .peek_all(&[Check::new("k", &p), Check::new("other", &p)])
            .expect("valid stack");
        assert!(stacked.allowed(), "{algorithm}");
        assert_eq!(store.len(), 0, "{algorithm}: a peek adds no key");

        assert!(store.check_one("k", &p).allowed, "{algorithm}");
        assert_eq!(store.len(), 1, "{algorithm}");
        for _ in 0..10 {
            let d = store.peek_n("k", &p, NonZeroU32::MIN);
            assert!(d.allowed, "{algorithm}");
            assert_eq!(d.remaining, 1, "{algorithm}: peeks consume nothing");
            let v = store
                .peek_all(&[Check::new("k", &p), Check::new("other", &p)])
                .expect("valid stack");
            assert!(v.allowed(), "{algorithm}");
        }
        assert_eq!(store.len(), 1, "{algorithm}");
        // Peeking at a cost that does not fit now answers as a check would.
        let d = store.peek_n("k", &p, cost(3));
        assert!(!d.allowed, "{algorithm}");
        assert_eq!(d.reason, Some(DenyReason::Limited), "{algorithm}");
        assert_eq!(store.check_n("k", &p, cost(2)).remaining, 0, "{algorithm}");
    }
}

#[test]
fn denials_add_no_key() {
    for algorithm in Algorithm::ALL {
        let store = store();
        let p = policy(algorithm, 3, HOUR);

        let d = store.check_n("new", &p, cost(4));
        assert!(!d.allowed, "{algorithm}");
        assert_eq!(
            d.reason,
            Some(DenyReason::CostExceedsCapacity),
            "{algorithm}"
        );
        assert_eq!(d.retry_after, None, "{algorithm}");
        assert_eq!(
            store.len(),
            0,
            "{algorithm}: cost_exceeds_capacity adds no key"
        );

        // A stack denied by one held key adds none of its new keys.
        for _ in 0..3 {
            assert!(store.check_one("full", &p).allowed, "{algorithm}");
        }
        assert_eq!(store.len(), 1, "{algorithm}");
        let v = check_stack(&store, &[("new", &p), ("full", &p), ("new2", &p)]).expect("valid");
        assert!(!v.allowed(), "{algorithm}");
        assert_eq!(v.index, 1, "{algorithm}");
        assert_eq!(store.len(), 1, "{algorithm}: a denied stack adds no key");

        // A stack denied for a cost that can never fit adds none either.
        let checks = [Check::new("new", &p), Check::new("new2", &p).cost(cost(9))];
        let v = store.check_all(&checks).expect("valid");
        assert!(!v.allowed(), "{algorithm}");
        assert_eq!(v.decision.reason, Some(DenyReason::CostExceedsCapacity));
        assert_eq!(store.len(), 1, "{algorithm}");
        assert_eq!(store.stats().evicted, 0);
        assert_eq!(store.stats().expired, 0);
    }
}

#[test]
fn fresh_keys_are_swept_for_every_algorithm() {
    for algorithm in Algorithm::ALL {
        let store = store();
        let p = policy(algorithm, 3, Duration::from_secs(10));
        let mut reset_after = Nanos::ZERO;
        for i in 0..10 {
            let d = store.check_one(&format!("k{i}"), &p);
            assert!(d.allowed);
            reset_after = d.reset_after;
        }
        assert!(reset_after > Nanos::ZERO, "{algorithm}");
        assert_eq!(store.len(), 10);
        assert_eq!(store.sweep(), 0, "{algorithm}: nothing is fresh yet");

        // One nanosecond before the state is fresh, it is kept...
        store
            .clock()
            .advance(reset_after.saturating_sub(Nanos::new(1)));
        assert_eq!(store.sweep(), 0, "{algorithm}: still live");
        assert_eq!(store.len(), 10, "{algorithm}");
        // ... and once it is fresh, it goes.
        store.clock().advance(Nanos::new(1));
        assert_eq!(store.sweep(), 10, "{algorithm}");
        assert_eq!(store.len(), 0, "{algorithm}");
        assert!(store.is_empty());
        let stats = store.stats();
        assert_eq!(
            (stats.keys, stats.expired, stats.evicted),
            (0, 10, 0),
            "{algorithm}"
        );

        // A swept key starts fresh.
        assert_eq!(store.check_one("k0", &p).remaining, 2, "{algorithm}");
    }
}

#[test]
fn keys_are_swept_as_new_keys_arrive() {
    for algorithm in Algorithm::ALL {
        let store = store();
        let p = policy(algorithm, 5, Duration::from_secs(1));
        let mut inserted = 0u64;
        let mut most = 0;
        for round in 0..40 {
            for i in 0..500 {
                assert!(store.check_one(&format!("r{round}-{i}"), &p).allowed);
                inserted += 1;
            }
            most = most.max(store.len());
            // Every key of this round is fresh two windows later.
            store.clock().advance(Duration::from_millis(2001));
        }
        let stats = store.stats();
        // 64 shards, each swept whenever it has doubled since its last sweep (and
        // reaches 64 keys). A sweep keeps the keys used since the previous sweep
        // (second chance), so up to ~64 survive and the next sweep comes at 128:
        // no shard outgrows 128 keys when a round adds ~8 to each.
        assert!(
            most <= 64 * 128,
            "{algorithm}: {most} keys held of {inserted}"
        );
        assert!(stats.expired > 0, "{algorithm}");
        assert_eq!(stats.evicted, 0, "{algorithm}");
        assert_eq!(
            stats.keys as u64 + stats.expired,
            inserted,
            "{algorithm}: every key dropped was counted"
        );
    }
}

#[test]
fn the_cap_holds_while_live_keys_pour_in() {
    let store = MemoryStore::builder()
        .max_keys(1000)
        .build_with_clock(clock());
    assert_eq!(store.stats().max_keys, 1000);
    let p = policy(Algorithm::Gcra, 1, HOUR);
    for i in 0..20_000u32 {
        assert!(store.check_one(&format!("k{i}"), &p).allowed);
        // Distinct expiries, none of them close.
        store.clock().advance(Duration::from_micros(1));
        if i % 16 == 0 {
            assert!(store.len() <= 1000, "{} keys after {i}", store.len());
        }
    }
    let stats = store.stats();
    assert!(stats.keys <= 1000, "{stats:?}");
    assert!(stats.keys >= 800, "the cap is used: {stats:?}");
    assert!(stats.evicted > 0, "{stats:?}");
    assert_eq!(stats.expired, 0, "{stats:?}");
    assert_eq!(stats.keys as u64 + stats.evicted, 20_000, "{stats:?}");
}

/// Regression: each shard was allowed `max_keys / shards` rounded up, so 64 shards
/// held up to 128 keys under `max_keys(100)`.
#[test]
fn the_cap_holds_when_shards_do_not_divide_it() {
    for max_keys in [1, 2, 3, 63, 100, 1000, 1001] {
        let store = MemoryStore::builder()
            .max_keys(max_keys)
            .build_with_clock(clock());
        let p = policy(Algorithm::FixedWindow, 1, HOUR);
        for i in 0..(max_keys * 20).max(5000) {
            store.check_one(&format!("k{i}"), &p);
            if i % 8 == 0 {
                assert!(
                    store.len() <= max_keys,
                    "max_keys {max_keys}: {}",
                    store.len()
                );
            }
        }
        assert!(
            store.len() <= max_keys,
            "max_keys {max_keys}: {}",
            store.len()
        );
        assert!(store.stats().evicted > 0);
    }
}

#[test]
fn eviction_takes_the_keys_closest_to_fresh() {
    // 8 shards of 125 keys: 400 long-lived keys (about 50 a shard) and a flood of
    // short-lived ones. Every eviction must take short-lived keys.
    let store = MemoryStore::builder()
        .max_keys(1000)
        .shards(8)
        .build_with_clock(clock());
    let long = policy(Algorithm::Gcra, 1, HOUR);
    let short = policy(Algorithm::Gcra, 1, Duration::from_secs(60));
    for i in 0..400 {
        assert!(store.check_one(&format!("long{i}"), &long).allowed);
    }
    for i in 0..5000 {
        assert!(store.check_one(&format!("short{i}"), &short).allowed);
        store.clock().advance(Duration::from_micros(1));
    }
    let stats = store.stats();
    assert!(stats.keys <= 1000, "{stats:?}");
    assert!(stats.evicted > 0, "{stats:?}");
    for i in 0..400 {
        assert!(
            held(&store, &format!("long{i}"), &long),
            "long{i} was evicted"
        );
    }
    // The newest short keys are the furthest from fresh of their kind: kept too.
    assert!(held(&store, "short4999", &short));
    assert!(
        !held(&store, "short0", &short),
        "the oldest short key goes first"
    );
}

#[test]
fn a_full_shard_evicts_its_eighth_closest_to_fresh() {
    // One shard of 80 keys; key i is fresh again after i + 1 seconds.
    let store = MemoryStore::builder()
        .max_keys(80)
        .shards(1)
        .build_with_clock(clock());
    let policies: Vec<Policy> = (0..80)
        .map(|i| policy(Algorithm::Gcra, 1, Duration::from_secs(i + 1)))
        .collect();
    // Insert in a scrambled order, so no table order can pass for the right one.
    for i in (0..80).map(|i| (i * 37) % 80) {
        assert!(store.check_one(&format!("k{i}"), &policies[i]).allowed);
    }
    assert_eq!(store.len(), 80);
    assert_eq!(store.stats().evicted, 0);

    assert!(store.check_one("newcomer", &policies[79]).allowed);
    let evicted = store.stats().evicted;
    assert!((10..=11).contains(&evicted), "an eighth of 80: {evicted}");
    assert_eq!(store.len() as u64, 81 - evicted);
    for (i, p) in policies.iter().enumerate() {
        let key = format!("k{i}");
        assert_eq!(
            held(&store, &key, p),
            i as u64 >= evicted,
            "{key} (fresh after {} s)",
            i + 1
        );
    }
    // An evicted key that comes back starts fresh.
    let d = store.check_one("k0", &policies[0]);
    assert!(d.allowed);
    assert_eq!(store.stats().expired, 0);
}

/// Regression: with equal expiries (one policy, one instant, or one fixed window)
/// every key tied with the threshold was evicted: the whole shard, not an eighth.
#[test]
fn a_full_shard_of_equal_expiries_evicts_an_eighth_not_all() {
    for algorithm in Algorithm::ALL {
        let store = MemoryStore::builder()
            .max_keys(80)
            .shards(1)
            .build_with_clock(clock());
        let p = policy(algorithm, 1, HOUR);
        for i in 0..80 {
            assert!(store.check_one(&format!("k{i}"), &p).allowed);
        }
        assert!(store.check_one("newcomer", &p).allowed);
        let evicted = store.stats().evicted;
        assert!(
            (10..=11).contains(&evicted),
            "{algorithm}: evicted {evicted} of 80"
        );
        assert_eq!(store.len() as u64, 81 - evicted, "{algorithm}");
        let kept = (0..80)
            .filter(|i| held(&store, &format!("k{i}"), &p))
            .count() as u64;
        assert_eq!(kept, 80 - evicted, "{algorithm}");
    }
}

#[test]
fn remove_forgets_a_key() {
    for algorithm in Algorithm::ALL {
        let store = store();
        let p = policy(algorithm, 2, HOUR);
        for key in ["a", "b"] {
            assert!(store.check_n(key, &p, cost(2)).allowed);
            assert!(!store.check_one(key, &p).allowed);
        }
        assert_eq!(store.len(), 2);
        store.remove("a");
        store.remove("never-seen");
        assert_eq!(store.len(), 1, "{algorithm}");
        let d = store.check_one("a", &p);
        assert!(d.allowed, "{algorithm}: a starts fresh");
        assert_eq!(d.remaining, 1, "{algorithm}");
        assert!(
            !store.check_one("b", &p).allowed,
            "{algorithm}: b is untouched"
        );
        // Removal is neither an expiry nor an eviction.
        assert_eq!(store.stats().expired + store.stats().evicted, 0);
    }
}

#[test]
fn a_key_used_with_the_other_family_starts_fresh() {
    let buckets = [
        Algorithm::TokenBucket,
        Algorithm::Gcra,
        Algorithm::LeakyBucket,
    ];
    let windows = [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindowLog,
        Algorithm::SlidingWindowCounter,
    ];
    for (old, new) in buckets
        .iter()
        .flat_map(|&b| windows.iter().flat_map(move |&w| [(b, w), (w, b)]))
    {
        let store = store();
        let before = policy(old, 2, HOUR);
        let after = policy(new, 3, HOUR);
        assert!(store.check_n("k", &before, cost(2)).allowed);
        assert!(!store.check_one("k", &before).allowed);

        // A peek and a denial under the other family leave the old state alone.
        assert_eq!(store.peek_n("k", &after, NonZeroU32::MIN).remaining, 2);
        assert!(!store.check_n("k", &after, cost(4)).allowed);
        assert!(!store.check_one("k", &before).allowed, "{old} -> {new}");

        let d = store.check_one("k", &after);
        assert!(d.allowed, "{old} -> {new}");
        assert_eq!(d.remaining, 2, "{old} -> {new}: fresh");
        assert_eq!(store.len(), 1);
        // And back: fresh again, the other family's state is gone.
        let d = store.check_one("k", &before);
        assert!(d.allowed, "{new} -> {old}");
        assert_eq!(d.remaining, 1, "{new} -> {old}");
    }

    // Within the bucket family the state is one instant, shared.
    let store = store();
    let gcra = policy(Algorithm::Gcra, 2, HOUR);
    let tb = policy(Algorithm::TokenBucket, 2, HOUR);
    assert!(store.check_n("k", &gcra, cost(2)).allowed);
    assert!(
        !store.check_one("k", &tb).allowed,
        "token_bucket reads gcra's TAT"
    );
}

#[test]
fn stacked_checks_are_all_or_nothing() {
    for client_alg in Algorithm::ALL {
        for global_alg in Algorithm::ALL {
            let store = store();
            let client = policy(client_alg, 2, HOUR);
            let global = policy(global_alg, 3, HOUR);
            let ask = |c: &str| {
                check_stack(&store, &[(c, &client), ("global", &global)]).expect("valid stack")
            };
            let pair = format!("{client_alg} + {global_alg}");

            assert!(ask("c1").allowed(), "{pair}");
            assert!(ask("c1").allowed(), "{pair}");
            let v = ask("c1");
            assert!(!v.allowed(), "{pair}: c1 is used up");
            assert_eq!(v.index, 0, "{pair}");
            assert!(v.decisions[1].allowed, "{pair}: global would have admitted");
            assert_eq!(
                v.decisions[1].remaining, 1,
                "{pair}: global consumed nothing"
            );
            assert_eq!(
                store.peek_n("global", &global, NonZeroU32::MIN).remaining,
                0
            );

            assert!(ask("c2").allowed(), "{pair}: global's last unit");
            let v = ask("c2");
            assert!(!v.allowed(), "{pair}: global is used up");
            assert_eq!(v.index, 1, "{pair}");
            assert!(v.decisions[0].allowed, "{pair}");
            assert_eq!(v.decisions[0].remaining, 1, "{pair}: c2 consumed nothing");
            assert_eq!(
                store.peek_n("c2", &client, NonZeroU32::MIN).remaining,
                0,
                "{pair}: c2 still has 1, so after one more it would have 0"
            );
            let v = ask("c3");
            assert!(!v.allowed(), "{pair}");
            assert_eq!(store.len(), 3, "{pair}: c3 was never added");
        }
    }
}

#[test]
fn stacked_checks_refuse_bad_stacks() {
    let store = store();
    let gcra = policy(Algorithm::Gcra, 5, HOUR);
    let tb = policy(Algorithm::TokenBucket, 5, HOUR);
    let fixed = policy(Algorithm::FixedWindow, 5, HOUR);
    let log = policy(Algorithm::SlidingWindowLog, 5, HOUR);

    assert_eq!(store.check_all(&[]), Err(CheckError::Empty));
    assert_eq!(store.peek_all(&[]), Err(CheckError::Empty));

    let keys: Vec<String> = (0..=MAX_STACK).map(|i| format!("k{i}")).collect();
    let checks: Vec<Check<'_>> = keys.iter().map(|k| Check::new(k, &gcra)).collect();
    assert_eq!(
        store.check_all(&checks),
        Err(CheckError::TooMany(MAX_STACK + 1))
    );
    assert_eq!(
        store.peek_all(&checks),
        Err(CheckError::TooMany(MAX_STACK + 1))
    );
    assert_eq!(store.len(), 0);
    let v = store
        .check_all(&checks[..MAX_STACK])
        .expect("16 checks are fine");
    assert!(v.allowed());
    assert_eq!(v.decisions.len(), MAX_STACK);
    assert_eq!(store.len(), MAX_STACK);

    let dup = |a: &Policy, b: &Policy| check_stack(&store, &[("x", a), ("other", &gcra), ("x", b)]);
    let expected = Err(CheckError::DuplicateKey("x".to_owned()));
    assert_eq!(dup(&gcra, &gcra), expected);
    assert_eq!(dup(&gcra, &tb), expected, "one bucket family, one state");
    assert_eq!(dup(&fixed, &fixed), expected);
    assert_eq!(dup(&fixed, &log), expected, "one window slot");
    let err = dup(&gcra, &gcra).expect_err("duplicate");
    assert!(err.to_string().contains("\"x\""), "{err}");
    assert_eq!(store.len(), MAX_STACK, "a refused stack adds no key");
}

/// Regression: one key under a bucket policy and a window policy in one stack
/// looped for ever (each insertion replaced the other's slot, then the commit of the
/// one shared cell always lost to itself). A key holds one state: refused.
#[test]
fn one_key_in_both_families_in_one_stack_is_refused() {
    let store = store();
    let gcra = policy(Algorithm::Gcra, 5, HOUR);
    let fixed = policy(Algorithm::FixedWindow, 5, HOUR);
    for (a, b) in [(&gcra, &fixed), (&fixed, &gcra)] {
        let expected = Err(CheckError::DuplicateKey("x".to_owned()));
        assert_eq!(check_stack(&store, &[("x", a), ("x", b)]), expected);
        assert!(store.check_one("x", a).allowed);
        assert_eq!(check_stack(&store, &[("x", a), ("x", b)]), expected);
        assert_eq!(
            store.peek_all(&[Check::new("x", a), Check::new("x", b)]),
            expected
        );
        store.remove("x");
    }
}

/// Regression: a stack adding two keys to one shard added the first, then made room
/// for the second, which swept or evicted the first (a fresh slot is the closest to
/// fresh), and the check failed with `CheckError::Internal`.
#[test]
fn a_stack_adding_keys_to_a_full_shard_keeps_them_all() {
    let p = policy(Algorithm::Gcra, 1, HOUR);
    let w = policy(Algorithm::SlidingWindowLog, 1, HOUR);
    // At the sweep threshold (64 keys in one shard).
    let store = MemoryStore::builder().shards(1).build_with_clock(clock());
    for i in 0..63 {
        assert!(store.check_one(&format!("k{i}"), &p).allowed);
    }
    let v = check_stack(&store, &[("new1", &p), ("new2", &w), ("new3", &p)]).expect("no error");
    assert!(v.allowed());
    assert_eq!(store.len(), 66);
    for key in ["new1", "new3"] {
        assert!(held(&store, key, &p), "{key}");
    }
    assert!(held(&store, "new2", &w));

    // At the cap.
    let store = MemoryStore::builder()
        .shards(1)
        .max_keys(16)
        .build_with_clock(clock());
    for round in 0..20 {
        let keys: Vec<String> = (0..3).map(|i| format!("r{round}-{i}")).collect();
        let v = check_stack(&store, &[(&keys[0], &p), (&keys[1], &w), (&keys[2], &p)])
            .expect("no error");
        assert!(v.allowed(), "round {round}");
        assert!(store.len() <= 16, "round {round}: {}", store.len());
        assert!(held(&store, &keys[0], &p) && held(&store, &keys[1], &w));
        assert!(held(&store, &keys[2], &p));
    }
    assert!(store.stats().evicted > 0);
}

/// Regression: making room for a stack's new key could evict one of the stack's
/// held keys (the closest to fresh), which then came back fresh: its consumption was
/// forgotten and its shard went one key past its share.
#[test]
fn making_room_for_a_stack_spares_the_stacks_own_keys() {
    let store = MemoryStore::builder()
        .max_keys(8)
        .shards(1)
        .build_with_clock(clock());
    let short = policy(Algorithm::Gcra, 2, Duration::from_secs(10));
    let long = policy(Algorithm::Gcra, 1, HOUR);
    assert!(store.check_one("a", &short).allowed);
    for i in 0..7 {
        assert!(store.check_one(&format!("k{i}"), &long).allowed);
    }
    assert_eq!(store.len(), 8);
    // "a" is the closest to fresh, but it is in the stack.
    let v = check_stack(&store, &[("a", &short), ("new", &long)]).expect("valid");
    assert!(v.allowed());
    assert_eq!(v.decisions[0].remaining, 0);
    assert!(store.len() <= 8, "{}", store.len());
    assert!(
        !store.check_one("a", &short).allowed,
        "a's two units are used"
    );
    assert!(held(&store, "new", &long));
}

#[test]
fn random_stacks_never_exceed_the_cap() {
    // 64 shards of 4 keys, six algorithms, keys held and new, stacks of three.
    let store = MemoryStore::builder()
        .max_keys(256)
        .build_with_clock(clock());
    let policies: Vec<Policy> = Algorithm::ALL
        .iter()
        .map(|&a| policy(a, 3, Duration::from_millis(1)))
        .collect();
    let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    let mut next = crate::xorshift(0x9E37_79B9_7F4A_7C15);
    for step in 0..20_000 {
        store.clock().advance(Nanos::new(1000));
        let [a, b, c] = [next() % 1000, next() % 1000, next() % 1000];
        let checks = [
            Check::new(&keys[a], &policies[next() % 6]),
            Check::new(&keys[b], &policies[next() % 6]),
            Check::new(&keys[c], &policies[next() % 6]),
        ];
        let distinct = a != b && b != c && a != c;
        let result = match next() % 3 {
            0 => store.peek_all(&checks),
            _ => store.check_all(&checks),
        };
        assert_eq!(result.is_ok(), distinct, "step {step}: {result:?}");
        assert!(store.len() <= 256, "step {step}: {} keys", store.len());
    }
    let stats = store.stats();
    assert!(stats.evicted > 0 && stats.expired > 0, "{stats:?}");
}

#[test]
fn a_verdict_reports_the_policy_with_least_remaining_when_admitted() {
    let store = store();
    let a = policy(Algorithm::Gcra, 10, HOUR);
    let b = policy(Algorithm::FixedWindow, 3, HOUR);
    let c = policy(Algorithm::SlidingWindowLog, 5, HOUR);
    let v = check_stack(&store, &[("a", &a), ("b", &b), ("c", &c)]).expect("valid");
    assert!(v.allowed());
    assert_eq!(v.index, 1);
    assert_eq!(v.decision, v.decisions[1]);
    let remaining: Vec<u64> = v.decisions.iter().map(|d| d.remaining).collect();
    assert_eq!(remaining, [9, 2, 4]);
    assert_eq!(v.decision.limit, 3);
}

#[test]
fn a_verdict_reports_the_longest_retry_when_denied() {
    let store = store();
    let ten = policy(Algorithm::Gcra, 1, Duration::from_secs(10));
    let minute = policy(Algorithm::FixedWindow, 1, Duration::from_secs(60));
    let fresh = policy(Algorithm::SlidingWindowLog, 5, HOUR);
    assert!(store.check_one("ten", &ten).allowed);
    assert!(store.check_one("minute", &minute).allowed);

    let v = check_stack(
        &store,
        &[("ten", &ten), ("fresh", &fresh), ("minute", &minute)],
    )
    .expect("valid");
    assert!(!v.allowed());
    assert_eq!(v.index, 2, "the minute's wait is the longer");
    assert_eq!(v.decision, v.decisions[2]);
    // 1,000,000.25 s is 40.25 s into its minute.
    assert_eq!(v.decision.retry_after, Some(Nanos::from_millis(19_750)));
    assert_eq!(v.decisions[0].retry_after, Some(Nanos::from_secs(10)));
    let d = v.decisions[1];
    assert!(d.allowed, "fresh would have admitted");
    assert_eq!(
        (d.remaining, d.reset_after),
        (5, Nanos::ZERO),
        "what it holds now"
    );
    assert_eq!(store.len(), 2);

    // A cost that can never be admitted counts as the longest wait of all.
    let checks = [
        Check::new("minute", &minute),
        Check::new("fresh", &fresh).cost(cost(6)),
        Check::new("ten", &ten),
    ];
    let v = store.check_all(&checks).expect("valid");
    assert_eq!(v.index, 1);
    assert_eq!(v.decision.reason, Some(DenyReason::CostExceedsCapacity));
    assert_eq!(v.decision.retry_after, None);
}

#[test]
fn a_verdict_carries_the_largest_delay() {
    let store = store();
    // T = 100 ms, burst 10.
    let queue = policy(Algorithm::LeakyBucket, 10, Duration::from_secs(1));
    let pair = policy(Algorithm::Gcra, 2, HOUR);
    for _ in 0..3 {
        assert!(store.check_one("queue", &queue).allowed);
    }
    let v = check_stack(&store, &[("queue", &queue), ("pair", &pair)]).expect("valid");
    assert!(v.allowed());
    assert_eq!(v.index, 1, "pair has 1 left, queue 6");
    assert_eq!(v.decisions[0].delay, Nanos::from_millis(300));
    assert_eq!(
        v.decision.delay,
        Nanos::from_millis(300),
        "the largest delay applies"
    );
    assert_eq!(v.decision.remaining, 1);

    // Denied: nothing waits, and the queue was not lengthened.
    assert!(store.check_one("pair", &pair).allowed);
    let v = check_stack(&store, &[("queue", &queue), ("pair", &pair)]).expect("valid");
    assert!(!v.allowed());
    assert_eq!(v.index, 1);
    assert_eq!(v.decision.delay, Nanos::ZERO);
    assert!(v.decisions.iter().all(|d| d.delay == Nanos::ZERO));
    assert_eq!(
        store.check_one("queue", &queue).delay,
        Nanos::from_millis(400),
        "the queue holds 4, not 5"
    );
}

/// Drives the store through the trait only, as a generic caller would.
fn through_the_trait<S: Store>(store: &S, p: &Policy) -> (Verdict, Verdict, Verdict) {
    let checks = [Check::new("t", p), Check::new("u", p)];
    let peeked = ready(store.peek(&checks)).expect("valid");
    let first = ready(store.check(&checks)).expect("valid");
    let second = ready(store.check(&checks)).expect("valid");
    assert!(ready(store.check(&[])).is_err());
    ready(store.reset("t")).expect("reset never fails in memory");
    (peeked, first, second)
}

fn assert_send<T: Send>(_: &T) {}

#[test]
fn the_store_trait_answers_with_ready_futures() {
    for algorithm in Algorithm::ALL {
        let store = store();
        let p = policy(algorithm, 1, HOUR);
        let (peeked, first, second) = through_the_trait(&store, &p);
        assert!(peeked.allowed() && first.allowed(), "{algorithm}");
        assert_eq!(peeked.decision, first.decision, "{algorithm}");
        assert!(!second.allowed(), "{algorithm}");
        assert_eq!(store.len(), 1, "{algorithm}: t was reset");
        assert!(store.check_one("t", &p).allowed, "{algorithm}");
        assert!(!store.check_one("u", &p).allowed, "{algorithm}");

        let checks = [Check::new("v", &p)];
        let future = Store::check(&store, &checks);
        assert_send(&future);
        assert!(ready(future).expect("valid").allowed());
        assert_eq!(
            ready(Store::peek(&store, &[])),
            Err(CheckError::Empty),
            "{algorithm}"
        );
    }
}

#[test]
fn direct_limiter_runs_every_algorithm() {
    for algorithm in Algorithm::ALL {
        let clock = clock();
        let p = policy(algorithm, 4, Duration::from_secs(1));
        let limiter = DirectLimiter::with_clock(p, clock.clone());
        assert_eq!(limiter.policy(), &p);

        let peeked = limiter.peek_n(NonZeroU32::MIN);
        assert!(peeked.allowed && peeked.remaining == 3, "{algorithm}");
        for i in 0..4 {
            let d = limiter.check();
            assert!(d.allowed, "{algorithm}: request {i}");
            assert_eq!(d.remaining, 3 - i, "{algorithm}");
            assert_eq!(d.limit, 4, "{algorithm}");
        }
        let denied = limiter.check();
        assert!(!denied.allowed, "{algorithm}");
        assert_eq!(denied.reason, Some(DenyReason::Limited), "{algorithm}");
        assert!(
            denied.retry_after.is_some_and(|r| r > Nanos::ZERO),
            "{algorithm}"
        );
        assert_eq!(limiter.peek_n(NonZeroU32::MIN), denied, "{algorithm}");

        let too_big = limiter.check_n(cost(5));
        assert_eq!(
            too_big.reason,
            Some(DenyReason::CostExceedsCapacity),
            "{algorithm}"
        );
        assert_eq!(too_big.retry_after, None, "{algorithm}");

        limiter.reset();
        assert_eq!(
            limiter.peek_n(cost(2)).remaining,
            2,
            "{algorithm}: fresh after reset"
        );
        assert_eq!(limiter.peek_n(cost(4)).remaining, 0, "{algorithm}");
        let d: Decision = limiter.check_n(cost(3));
        assert!(d.allowed && d.remaining == 1, "{algorithm}");
        assert!(!limiter.check_n(cost(2)).allowed, "{algorithm}");
        assert!(limiter.check_n(NonZeroU32::MIN).allowed, "{algorithm}");
        assert!(!limiter.check().allowed, "{algorithm}");

        // Two periods later every algorithm is full again.
        clock.advance(Duration::from_secs(2));
        assert!(limiter.check_n(cost(4)).allowed, "{algorithm}");
        assert!(!limiter.check().allowed, "{algorithm}");
    }
}

#[test]
fn direct_leaky_bucket_spaces_requests_out() {
    let clock = clock();
    let p = policy(Algorithm::LeakyBucket, 10, Duration::from_secs(1))
        .with_burst(3)
        .expect("valid burst");
    let limiter = DirectLimiter::with_clock(p, clock.clone());
    let delays: Vec<Nanos> = (0..3).map(|_| limiter.check().delay).collect();
    assert_eq!(
        delays,
        [
            Nanos::ZERO,
            Nanos::from_millis(100),
            Nanos::from_millis(200)
        ]
    );
    let d = limiter.check();
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Some(Nanos::from_millis(100)));
    clock.advance(Duration::from_millis(100));
    assert_eq!(limiter.check().delay, Nanos::from_millis(200));
}

#[test]
fn direct_limiter_matches_a_store_key() {
    // The same requests at the same instants: the same decisions.
    for algorithm in Algorithm::ALL {
        let clock = clock();
        let p = policy(algorithm, 5, Duration::from_secs(2));
        let limiter = DirectLimiter::with_clock(p, clock.clone());
        let store = MemoryStore::with_clock(clock.clone());
        let mut seen = HashSet::new();
        for step in 0..200u64 {
            let c = cost((step % 3 + 1) as u32);
            let a = limiter.check_n(c);
            let b = store.check_n("k", &p, c);
            assert_eq!(a, b, "{algorithm} step {step}");
            seen.insert(a.allowed);
            clock.advance(Duration::from_millis(37 + step % 211));
        }
        assert_eq!(seen.len(), 2, "{algorithm}: both answers came up");
    }
}

/// One step of a random trace through the store: which key, which of two policies,
/// how far the clock moves first, the cost, and whether it consumes.
#[derive(Clone, Copy, Debug)]
struct StoreStep {
    key: usize,
    policy: usize,
    delta: u64,
    cost: u32,
    consume: bool,
}

fn small_policy() -> impl Strategy<Value = Policy> {
    (
        proptest::sample::select(Algorithm::ALL.to_vec()),
        1..=6u32,
        1..=300u64,
        1..=6u32,
    )
        .prop_map(|(a, l, w, b)| {
            Policy::new(a, l, Nanos::new(w))
                .and_then(|p| p.with_burst(b))
                .expect("valid policy")
        })
}

proptest! {
    /// The store's entries (keys inline, window states inline, the log in its own table, a key
    /// switching algorithm) decide exactly as the pure functions on a `State` per
    /// key: same decisions, field by field, on random traces over three keys and two
    /// policies.
    #[test]
    fn the_store_decides_as_the_pure_functions(
        policies in proptest::collection::vec(small_policy(), 2),
        steps in proptest::collection::vec(
            (0..3usize, 0..2usize, 0..120u64, 1..=8u32, proptest::bool::weighted(0.8))
                .prop_map(|(key, policy, delta, cost, consume)| StoreStep {
                    key, policy, delta, cost, consume,
                }),
            1..80,
        ),
    ) {
        let clock = ManualClock::new(Nanos::new(1_000));
        let store = MemoryStore::with_clock(clock.clone());
        // A long key exercises the heap-held key path.
        let keys = ["a", "a key longer than forty-six bytes, so it lives on the heap", "c"];
        let mut model: Vec<Option<tollgate::State>> = vec![None, None, None];
        for step in steps {
            clock.advance(Nanos::new(step.delta));
            let p = &policies[step.policy];
            let now = tollgate::Clock::now(&clock);
            let state = model[step.key].get_or_insert_with(|| tollgate::State::fresh(p.algorithm()));
            let expected = state.check(p, now, cost(step.cost), step.consume);
            let got = if step.consume {
                store.check_n(keys[step.key], p, cost(step.cost))
            } else {
                store.peek_n(keys[step.key], p, cost(step.cost))
            };
            prop_assert_eq!(got, expected, "{:?} with {:?}", step, p);
        }
    }
}
