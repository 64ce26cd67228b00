//! The default clock: Redis `TIME`, read inside the script. Short real-time tests.

use std::time::Duration;

use tollgate::{Algorithm, Check, Policy, Store};

use crate::common::{early_in_window, raw, redis_url, store};

#[tokio::test]
async fn every_algorithm_limits_and_recovers_on_redis_time() {
    let redis = store("time-mode").await;
    let mut conn = raw(&redis_url()).await;
    for algorithm in Algorithm::ALL {
        let p = Policy::new(algorithm, 3, Duration::from_millis(300)).expect("policy");
        let key = format!("{}:client", algorithm.name());
        let check = [Check::new(&key, &p)];
        if algorithm == Algorithm::FixedWindow {
            // The four calls in one (clock-aligned) window.
            early_in_window(
                &mut conn,
                Duration::from_millis(300),
                Duration::from_millis(150),
            )
            .await;
        }
        let mut admitted = 0;
        for _ in 0..3 {
            let v = redis.check(&check).await.expect("check");
            admitted += usize::from(v.allowed());
        }
        assert_eq!(admitted, 3, "{algorithm:?}: a fresh key admits its limit");
        let denied = redis.check(&check).await.expect("check");
        assert!(!denied.allowed(), "{algorithm:?}: the fourth is denied");
        let retry = denied
            .decision
            .retry_after
            .expect("a denial says when to retry");
        // sliding_window_counter may make a client wait into the next window.
        let longest = if algorithm == Algorithm::SlidingWindowCounter {
            600_000_000
        } else {
            300_000_000
        };
        assert!(
            retry.as_u64() > 0 && retry.as_u64() <= longest,
            "{algorithm:?}: retry_after {retry:?} within the period"
        );
        tokio::time::sleep(Duration::from_nanos(retry.as_u64()) + Duration::from_millis(5)).await;
        let again = redis.check(&check).await.expect("check");
        assert!(
            again.allowed(),
            "{algorithm:?}: admitted again after retry_after"
        );
    }
}

#[tokio::test]
async fn leaky_bucket_spaces_admissions_on_redis_time() {
    let redis = store("time-leaky").await;
    // T = 100 ms, up to 5 waiting.
    let p = Policy::new(Algorithm::LeakyBucket, 10, Duration::from_secs(1))
        .and_then(|p| p.with_burst(5))
        .expect("policy");
    let check = [Check::new("leaky:client", &p)];
    let mut delays = Vec::new();
    for _ in 0..5 {
        let v = redis.check(&check).await.expect("check");
        assert!(v.allowed());
        delays.push(v.decision.delay.as_u64());
    }
    assert_eq!(delays[0], 0, "the first request waits for nothing");
    for pair in delays.windows(2) {
        // Each waits about T longer than the one before (less the time between calls).
        let step = pair[1].saturating_sub(pair[0]);
        assert!(
            (50_000_000..=100_000_000).contains(&step),
            "delays {delays:?} are not spaced by about 100 ms"
        );
    }
    let full = redis.check(&check).await.expect("check");
    assert!(!full.allowed(), "the queue holds 5");
}
