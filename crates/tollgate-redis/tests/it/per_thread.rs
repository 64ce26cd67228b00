//! `connection_per_thread`: each thread that calls the store gets one connection of
//! its own, made on its first call; the threads still share one exact limit; a
//! thread's connection closes when the thread exits, and every one when the store
//! is dropped. Each test runs its own `redis-server`, so the connections it counts
//! are the store's alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::{Algorithm, Check, Policy, Store};
use tollgate_redis::RedisStore;

use crate::common::{prefix, raw};
use crate::faults::Server;

/// Clients connected to the private Redis, the one asking excluded.
async fn clients(url: &str) -> usize {
    let mut conn = raw(url).await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .expect("CLIENT LIST");
    list.lines().count() - 1
}

/// Waits (up to 5 s) until `clients` is `want`; returns what it last saw.
async fn settle(url: &str, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = clients(url).await;
        if n == want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn threads_get_a_connection_each_share_one_exact_limit_and_close_theirs_on_exit() {
    let redis = Server::start();
    let url = redis.url();
    let main = runtime();
    let store = main.block_on(async {
        RedisStore::builder(url.clone())
            .key_prefix(prefix("per-thread"))
            .timeout(Duration::from_secs(5))
            .connection_per_thread(true)
            .connect()
            .await
            .expect("the private redis-server")
    });
    // Connecting loaded the function through this thread's connection.
    assert_eq!(main.block_on(clients(&url)), 1);

    // Three threads, each with its own runtime, 50 checks each all in flight, one
    // key with limit 60: exactly 60 admitted in all. The main runtime is not
    // running meanwhile (this thread waits at the barrier), so no thread's call goes
    // through a connection of the main runtime's: with shared connections, made on
    // it, they would time out. Each thread holds its runtime
    // (and so its connection) until all three have counted the connections.
    let policy = Policy::new(Algorithm::Gcra, 60, Duration::from_secs(3600)).expect("policy");
    let checked = Arc::new(std::sync::Barrier::new(4));
    let counted = Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (store, checked, counted) =
                (store.clone(), Arc::clone(&checked), Arc::clone(&counted));
            std::thread::spawn(move || {
                let rt = runtime();
                let admitted = rt.block_on(async {
                    let mut tasks = Vec::new();
                    for _ in 0..50 {
                        let store = store.clone();
                        tasks.push(tokio::spawn(async move {
                            store
                                .check(&[Check::new("one", &policy)])
                                .await
                                .expect("check")
                                .allowed()
                        }));
                    }
                    let mut admitted = 0;
                    for t in tasks {
                        admitted += usize::from(t.await.expect("task"));
                    }
                    admitted
                });
                checked.wait();
                counted.wait();
                drop(rt);
                admitted
            })
        })
        .collect();
    checked.wait();
    let during = main.block_on(clients(&url));
    counted.wait();
    let admitted: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    assert_eq!(admitted, 60, "the threads admitted {admitted} of limit 60");
    assert_eq!(during, 4, "the main thread's connection and one per thread");

    // The threads are gone: their connections closed; the main thread's remains
    // and still decides (the key is spent).
    assert_eq!(main.block_on(settle(&url, 1)), 1);
    let again = main
        .block_on(store.check(&[Check::new("one", &policy)]))
        .expect("check");
    assert!(!again.allowed());

    // The store dropped: no connection left.
    drop(store);
    assert_eq!(main.block_on(settle(&url, 0)), 0);
}
