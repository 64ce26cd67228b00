//! No immortal keys: everything the store writes has a time-to-live, and an idle key
//! is gone once it would be fresh again.

use std::time::Duration;

use tollgate::{Algorithm, Check, Policy, Store};

use crate::common::{early_in_window, prefix, raw, redis_url};

async fn keys_under(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("SCAN");
        found.extend(batch);
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

#[tokio::test]
async fn every_key_written_has_a_ttl_and_idle_keys_expire() {
    let url = redis_url();
    let prefix = prefix("ttl");
    let redis = tollgate_redis::RedisStore::builder(url.clone())
        .key_prefix(prefix.clone())
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("a Redis at TOLLGATE_TEST_REDIS_URL");
    let mut conn = raw(&url).await;
    // A long window, and a start well before its end, so that no fixed_window key
    // expires (legitimately, its window over) between its write and its PTTL.
    let w = Duration::from_secs(600);
    early_in_window(&mut conn, w, Duration::from_secs(60)).await;
    let policies: Vec<Policy> = Algorithm::ALL
        .into_iter()
        .map(|a| Policy::new(a, 2, w).expect("policy"))
        .collect();
    let mut tasks = Vec::new();
    for client in 0..200 {
        let redis = redis.clone();
        let policies = policies.clone();
        tasks.push(tokio::spawn(async move {
            for p in &policies {
                let key = format!(
                    "{}:10.0.{}.{}",
                    p.algorithm().name(),
                    client / 256,
                    client % 256
                );
                for _ in 0..3 {
                    redis.check(&[Check::new(&key, p)]).await.expect("check");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let keys = keys_under(&mut conn, &prefix).await;
    // 200 clients x 6 algorithms state keys, plus 200 log keys.
    assert_eq!(keys.len(), 200 * 6 + 200, "keys written: {}", keys.len());
    for key in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        // At most 2W (sliding_window_counter keeps the previous window's count).
        assert!(
            ttl > 0 && ttl <= 2 * w.as_millis() as i64 + 2,
            "{key} has PTTL {ttl}"
        );
    }

    // Idle keys go once their state is fresh again: within 2W for
    // sliding_window_counter, W for the others.
    let prefix = crate::common::prefix("ttl-expiry");
    let redis = tollgate_redis::RedisStore::builder(url.clone())
        .key_prefix(prefix.clone())
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("a Redis at TOLLGATE_TEST_REDIS_URL");
    // Counted after each algorithm's writes, so that a loaded machine, slow to make
    // all 120 calls, cannot let the first keys expire before they are counted (W is
    // 3 s; each count follows its 20 calls at once).
    let w = Duration::from_secs(3);
    for a in Algorithm::ALL {
        let p = Policy::new(a, 2, w).expect("policy");
        if a == Algorithm::FixedWindow {
            early_in_window(&mut conn, w, Duration::from_secs(1)).await;
        }
        for client in 0..20 {
            let key = format!("{}:{client}", a.name());
            redis.check(&[Check::new(&key, &p)]).await.expect("check");
        }
        let per_key = if a == Algorithm::SlidingWindowLog {
            2
        } else {
            1
        };
        // Keys end with `:<policy>`, here the algorithm's name.
        let suffix = format!(":{}", a.name());
        let mine = keys_under(&mut conn, &prefix)
            .await
            .into_iter()
            .filter(|k| k.ends_with(&suffix))
            .count();
        assert_eq!(
            mine,
            20 * per_key,
            "{} keys just after its 20 calls",
            a.name()
        );
    }
    tokio::time::sleep(2 * w + Duration::from_millis(200)).await;
    let left = keys_under(&mut conn, &prefix).await;
    assert!(
        left.is_empty(),
        "{} keys outlived their state: {:?}",
        left.len(),
        &left[..left.len().min(5)]
    );
}

#[tokio::test]
async fn denials_and_peeks_write_nothing() {
    let url = redis_url();
    let prefix = prefix("ttl-deny");
    let redis = tollgate_redis::RedisStore::builder(url.clone())
        .key_prefix(prefix.clone())
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("a Redis at TOLLGATE_TEST_REDIS_URL");
    let mut conn = raw(&url).await;
    for a in Algorithm::ALL {
        let p = Policy::new(a, 1, Duration::from_secs(60)).expect("policy");
        let key = format!("{}:peeked", a.name());
        let v = redis.peek(&[Check::new(&key, &p)]).await.expect("peek");
        assert!(v.allowed());
        let never = Check::new(&key, &p).cost(std::num::NonZeroU32::new(5).expect("5"));
        let v = redis.check(&[never]).await.expect("check");
        assert!(!v.allowed());
    }
    assert!(keys_under(&mut conn, &prefix).await.is_empty());
}
