//! `leaky_bucket` admissions wait their turn inside the response future.

use std::time::{Duration, Instant};

use http::StatusCode;
use tollgate::{Algorithm, MemoryStore, Store};
use tollgate_tower::{Key, RateLimitLayer};

use crate::common::{Waiting, get, hello, policy, redis_time, serve};

/// Limit 10 per second, burst 10: five requests sent together leave 100 ms apart.
/// Real clock (the delay is real time); the tolerance allows for a loaded machine.
async fn leaky_bucket_spaces_requests<S: Store + 'static>(store: S) {
    let leaky = policy(Algorithm::LeakyBucket, 10, Duration::from_secs(1))
        .with_burst(10)
        .expect("a valid burst");
    let layer = RateLimitLayer::builder(store)
        .policy("queue", leaky)
        .key(Key::global())
        .build()
        .expect("a valid layer");
    let addr = serve(hello().layer(layer)).await;

    let start = Instant::now();
    let requests: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(async move {
                let reply = get(addr).await;
                (reply.status, start.elapsed())
            })
        })
        .collect();
    let mut done = Vec::new();
    for r in requests {
        let (status, at) = r.await.expect("the request task");
        assert_eq!(status, StatusCode::OK);
        done.push(at);
    }
    done.sort();
    // Without the delay all five would finish within a few milliseconds; the
    // bounds are wide because CI shares a 2-core machine with other tests.
    assert!(done[0] < Duration::from_millis(150), "{done:?}");
    for pair in done.windows(2) {
        let gap = pair[1].saturating_sub(pair[0]);
        assert!(
            gap >= Duration::from_millis(50) && gap <= Duration::from_millis(250),
            "gaps should be ~100 ms: {done:?}"
        );
    }
    let total = done[4].saturating_sub(done[0]);
    assert!(
        total >= Duration::from_millis(350) && total <= Duration::from_millis(800),
        "{done:?}"
    );
}

#[tokio::test]
async fn leaky_bucket_spaces_requests_memory() {
    leaky_bucket_spaces_requests(MemoryStore::new()).await;
}

/// On Redis `TIME`: the delays come from the Redis server's clock.
#[tokio::test]
async fn leaky_bucket_spaces_requests_redis() {
    leaky_bucket_spaces_requests(redis_time("leaky").await).await;
}

#[tokio::test]
async fn leaky_bucket_spaces_requests_waiting_store() {
    leaky_bucket_spaces_requests(Waiting(MemoryStore::new())).await;
}

/// The wait holds no thread: on a one-thread runtime, other requests are served
/// while a delayed one waits.
#[tokio::test(flavor = "current_thread")]
async fn delay_holds_no_thread() {
    let leaky = policy(Algorithm::LeakyBucket, 2, Duration::from_secs(1))
        .with_burst(4)
        .expect("a valid burst");
    let slow = RateLimitLayer::builder(MemoryStore::new())
        .policy("queue", leaky)
        .key(Key::global())
        .build()
        .expect("a valid layer");
    let slow_addr = serve(hello().layer(slow)).await;
    let fast_addr = serve(hello()).await;

    let start = Instant::now();
    get(slow_addr).await; // served at once, the next one waits 500 ms
    let delayed = tokio::spawn(async move { get(slow_addr).await.status });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fast = get(fast_addr).await;
    assert_eq!(fast.status, StatusCode::OK);
    assert!(start.elapsed() < Duration::from_millis(400), "not blocked");
    assert_eq!(delayed.await.expect("the delayed request"), StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(450));
}
