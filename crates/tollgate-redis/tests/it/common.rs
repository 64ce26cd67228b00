//! Helpers shared by the Redis tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tollgate::{Clock, Nanos};
use tollgate_redis::RedisStore;

/// The Redis the tests use.
pub fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A key prefix no other test (or run) uses, so tests run in parallel.
pub fn prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "tgtest:{test}:{}:{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn no_redis(url: &str, e: impl std::fmt::Display) -> ! {
    panic!(
        "no Redis answers at {url} ({e}). These tests need a real Redis: start one with \
         `redis-server --save '' --appendonly no` (or `bash .ci/run`, which starts it), \
         or point TOLLGATE_TEST_REDIS_URL at one"
    )
}

/// A store on Redis `TIME`.
pub async fn store(test: &str) -> RedisStore {
    let url = redis_url();
    RedisStore::builder(url.clone())
        .key_prefix(prefix(test))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| no_redis(&url, e))
}

/// A store deciding at the instants of `clock`.
pub async fn caller_store(url: &str, test: &str, clock: impl Clock + 'static) -> RedisStore {
    RedisStore::builder(url.to_owned())
        .key_prefix(prefix(test))
        .timeout(Duration::from_secs(5))
        .caller_clock(clock)
        .caller_clock_ttl(Duration::from_secs(120))
        .connect()
        .await
        .unwrap_or_else(|e| no_redis(url, e))
}

/// A plain connection for looking at what the store wrote.
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap_or_else(|e| no_redis(url, e));
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| no_redis(url, e))
}

/// A realistic instant: late 2025 in Unix nanoseconds, plus `offset`.
pub fn epoch(offset: u64) -> Nanos {
    Nanos::new(1_764_000_000_123_456_789 + offset)
}

/// A small xorshift generator for fixed pseudo-random sequences.
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// fixed_window's windows are aligned to the clock (`[kW, (k+1)W)`): its count starts
/// again, and its key expires, when a window ends. A real-time test whose counts must
/// not straddle that end calls this first: when less than `margin` is left of the
/// current window on Redis's clock, it sleeps into the next window.
pub async fn early_in_window(
    conn: &mut redis::aio::MultiplexedConnection,
    w: Duration,
    margin: Duration,
) {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    let now = Duration::from_secs(secs) + Duration::from_micros(micros);
    let into = Duration::from_micros((now.as_micros() % w.as_micros()) as u64);
    let left = w.saturating_sub(into);
    if left < margin {
        tokio::time::sleep(left + Duration::from_millis(20)).await;
    }
}
