//! Calls made together go to a single Redis as one batch: each still gets its own
//! answer, one-check calls go as one function call and still decide exactly as the
//! memory store, a check that fails in such a call fails alone, and a batch that
//! never went out (its runtime shut down) fails its calls without blocking later
//! ones.

use std::future::Future;
use std::num::NonZeroU32;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tollgate::{Algorithm, Check, ManualClock, MemoryStore, Nanos, Policy, Store};
use tollgate_redis::RedisError;

use crate::common::{caller_store, epoch, raw, store, xorshift};
use crate::conformance::{random_policy, random_step};
use crate::faults::Server;

/// How many `FCALL`s the Redis at `url` has run (from `INFO commandstats`).
async fn fcalls(url: &str) -> u64 {
    let mut conn = raw(url).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_fcall:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a count of calls"))
}

#[tokio::test(flavor = "current_thread")]
async fn one_checks_in_flight_together_go_as_one_call_and_decide_as_the_memory_store() {
    // A private Redis, so that its count of FCALLs is this test's alone.
    let server = Server::start();
    let url = server.url();
    let mut next = xorshift(0x5eed_0b47);
    let clock = ManualClock::new(epoch(next() % (1 << 40)));
    let memory = MemoryStore::with_clock(clock.clone());
    let redis = caller_store(&url, "batched-ones", clock.clone()).await;
    // 48 keys, each under its own random policy (every algorithm, both key
    // shapes: sliding_window_log's calls carry two keys), checked together.
    let mut policies: Vec<Policy> = (0..42).map(|_| random_policy(&mut next)).collect();
    for a in Algorithm::ALL {
        policies.push(Policy::new(a, 3, Duration::from_millis(50)).expect("policy"));
    }
    let keys: Vec<String> = (0..policies.len())
        .map(|i| format!("p{i}:client"))
        .collect();
    let before = fcalls(&url).await;
    let mut checks_made = 0_u64;
    for round in 0..40 {
        // One call per key at this instant, all in flight at once (keys distinct,
        // so their order does not matter); about one in five a peek.
        let plan: Vec<(usize, u32, bool)> = (0..keys.len())
            .map(|i| {
                let p = &policies[i];
                let cost = match next() % 8 {
                    0 => p.limit().max(p.burst()).saturating_add(1),
                    1 => 1 + (next() % 3) as u32,
                    _ => 1,
                };
                (i, cost, next().is_multiple_of(5))
            })
            .collect();
        let tasks: Vec<_> = plan
            .iter()
            .map(|&(i, cost, peek)| {
                let redis = redis.clone();
                let (key, policy) = (keys[i].clone(), policies[i]);
                tokio::spawn(async move {
                    let check =
                        [Check::new(&key, &policy).cost(NonZeroU32::new(cost).expect("cost"))];
                    if peek {
                        redis.peek(&check).await
                    } else {
                        redis.check(&check).await
                    }
                })
            })
            .collect();
        let mut got = Vec::with_capacity(tasks.len());
        for t in tasks {
            got.push(t.await.expect("task"));
        }
        checks_made += plan.len() as u64;
        for (&(i, cost, peek), got) in plan.iter().zip(got) {
            let check =
                [Check::new(&keys[i], &policies[i]).cost(NonZeroU32::new(cost).expect("cost"))];
            let want = if peek {
                memory.peek(&check).await
            } else {
                memory.check(&check).await
            }
            .expect("the memory store decides");
            let got = got.unwrap_or_else(|e| panic!("round {round} key {i}: {e}"));
            assert_eq!(
                got, want,
                "round {round}, key {i} ({:?}, cost {cost}, peek {peek})",
                policies[i]
            );
        }
        let which = (next() % policies.len() as u64) as usize;
        let step = random_step(&mut next, &policies[which]);
        clock.advance(Nanos::new(step % (2 * 1_000_000_000)));
    }
    // 1,920 checks went out in a few calls per round, not one call each.
    let calls = fcalls(&url).await - before;
    assert!(
        calls * 8 <= checks_made,
        "{calls} FCALLs for {checks_made} checks: the checks were not sent together"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_check_that_fails_in_a_shared_call_fails_alone() {
    let server = Server::start();
    let url = server.url();
    let redis = tollgate_redis::RedisStore::builder(url.clone())
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("store");
    let policy = Policy::new(Algorithm::Gcra, 10, Duration::from_secs(60)).expect("policy");
    let log =
        Policy::new(Algorithm::SlidingWindowLog, 10, Duration::from_secs(60)).expect("policy");
    // Key 7's state key holds a list, which no check can read.
    let (state_key, _) = redis.redis_keys("api:client7");
    let mut conn = raw(&url).await;
    let _: i64 = redis::cmd("LPUSH")
        .arg(&state_key)
        .arg("not a state")
        .query_async(&mut conn)
        .await
        .expect("LPUSH");
    let before = fcalls(&url).await;
    let keys: Vec<String> = (0..20).map(|i| format!("api:client{i}")).collect();
    let tasks: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let redis = redis.clone();
            // Every third a sliding_window_log check: two keys in the shared call.
            let p = if i % 3 == 0 { log } else { policy };
            let key = key.clone();
            tokio::spawn(async move { redis.check(&[Check::new(&key, &p)]).await })
        })
        .collect();
    let mut got = Vec::with_capacity(tasks.len());
    for t in tasks {
        got.push(t.await.expect("task"));
    }
    for (i, got) in got.into_iter().enumerate() {
        if i == 7 {
            match got {
                Err(RedisError::Server(e)) => {
                    assert!(e.to_string().contains("WRONGTYPE"), "{e}")
                }
                other => panic!("key 7: {other:?}"),
            }
        } else {
            let v = got.unwrap_or_else(|e| panic!("key {i}: {e}"));
            assert!(v.allowed(), "key {i}");
            assert_eq!(v.decisions[0].remaining, 9, "key {i}");
        }
    }
    let calls = fcalls(&url).await - before;
    assert!(calls < 5, "{calls} FCALLs for 20 checks sent together");
}

#[tokio::test(flavor = "current_thread")]
async fn calls_in_flight_together_each_get_their_own_decision() {
    let store = store("batching").await;
    let policy = Policy::new(Algorithm::Gcra, 3, Duration::from_secs(3600)).expect("policy");
    // 100 keys, 5 checks each, all in flight at once (several batches): exactly 3
    // admitted per key, whatever batch each check went out in.
    let mut tasks = Vec::new();
    for round in 0..5 {
        for k in 0..100 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("k{k}");
                let v = store
                    .check(&[Check::new(&key, &policy)])
                    .await
                    .expect("check");
                (k, round, v.allowed())
            }));
        }
    }
    let mut admitted = [0; 100];
    for t in tasks {
        let (k, _, allowed) = t.await.expect("task");
        admitted[k] += usize::from(allowed);
    }
    assert!(admitted.iter().all(|&a| a == 3), "{admitted:?}");
}

#[test]
fn a_batch_dropped_unsent_fails_its_calls_and_later_calls_are_served() {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    };
    // The store's connections live on `main`; a call is made on `short`, which
    // shuts down before the batch it started runs.
    let main = runtime();
    let store = main.block_on(store("batching-dropped"));
    let policy = Policy::new(Algorithm::Gcra, 10, Duration::from_secs(60)).expect("policy");
    let short = runtime();
    let mut call = {
        let store = store.clone();
        let _inside = short.enter();
        let mut call = Box::pin(async move {
            store
                .check(&[Check::new("a", &policy)])
                .await
                .map(|v| v.allowed())
        });
        let mut cx = Context::from_waker(Waker::noop());
        assert!(call.as_mut().poll(&mut cx).is_pending());
        call
    };
    drop(short);
    // The queued call fails at once (its batch is gone), not after the timeout.
    let mut cx = Context::from_waker(Waker::noop());
    match call.as_mut().poll(&mut cx) {
        Poll::Ready(Err(e)) => assert!(e.is_transient(), "{e}"),
        other => panic!("the call went on: {other:?}"),
    }
    // Later calls start a new batch and are decided.
    let v = main
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                store.check(&[Check::new("b", &policy)]),
            )
            .await
        })
        .expect("answered in time")
        .expect("check");
    assert!(v.allowed());
}
