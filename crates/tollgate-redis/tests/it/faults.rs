//! Faults: the script cache flushed mid-run, Redis stopped and started again. Each
//! test runs its own `redis-server` on a free port, so the shared one is untouched.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tollgate::{Algorithm, Check, Policy, Store};
use tollgate_redis::{RedisError, RedisStore};

use crate::common::{early_in_window, prefix, raw};

/// A private Redis; dropping it stops it.
pub struct Server {
    child: Option<Child>,
    port: u16,
}

impl Server {
    fn start_on(port: u16) -> Server {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): these tests need it on PATH")
            });
        let server = Server {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn start() -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        Server::start_on(port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Sends the server `signal` (`STOP` freezes it: connections stay open and
    /// nothing is answered, as in a network partition; `CONT` thaws it).
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("a running server").id();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn connect(url: &str, timeout: Duration) -> RedisStore {
    RedisStore::builder(url)
        .key_prefix(prefix("faults"))
        .timeout(timeout)
        .connect()
        .await
        .expect("the private redis-server")
}

// The store runs a Redis Function, which SCRIPT FLUSH leaves alone: this shows that
// an operator's SCRIPT FLUSH does not disturb it. FUNCTION FLUSH is the test below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_mid_run_loses_nothing_and_counts_nothing_twice() {
    let server = Server::start();
    let store = connect(&server.url(), Duration::from_secs(5)).await;
    let mut admin = raw(&server.url()).await;
    admit_exactly_the_limit_while_flushing(&store, &mut admin, "SCRIPT", "flushed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_is_a_typed_error_and_a_restarted_one_serves_again() {
    let mut server = Server::start();
    let port = server.port;
    let timeout = Duration::from_millis(200);
    let store = connect(&server.url(), timeout).await;
    let policy = Policy::new(Algorithm::Gcra, 1_000, Duration::from_secs(1)).expect("policy");
    let check = [Check::new("outage:client", &policy)];
    assert!(
        store
            .check(&check)
            .await
            .expect("before the outage")
            .allowed()
    );

    server.stop();
    for _ in 0..5 {
        let started = Instant::now();
        match store.check(&check).await {
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                assert!(
                    matches!(e, RedisError::Unavailable(_) | RedisError::Timeout(_)),
                    "{e:?}"
                );
            }
            Ok(v) => panic!("a stopped Redis answered {v:?}"),
        }
        assert!(
            started.elapsed() < timeout + Duration::from_millis(300),
            "the error took {:?}, more than the timeout",
            started.elapsed()
        );
    }
    assert!(store.ping().await.is_err());

    let _server = Server::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.check(&check).await {
            Ok(v) => {
                assert!(v.allowed());
                break;
            }
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                assert!(
                    Instant::now() < deadline,
                    "the store did not reconnect by itself: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    store.ping().await.expect("PING after the restart");
}

/// A hung Redis (frozen with SIGSTOP: connected, never answering): after the
/// breaker's three timeouts in a row, decisions fail at once with `CircuitOpen`
/// instead of each waiting out the timeout; a probe after the cooldown that times
/// out opens it again; once Redis answers, the next probe closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_opens_the_circuit_breaker_and_an_answer_closes_it() {
    let server = Server::start();
    let timeout = Duration::from_millis(100);
    let cooldown = Duration::from_millis(500);
    let store = RedisStore::builder(server.url())
        .key_prefix(prefix("breaker"))
        .timeout(timeout)
        .circuit_breaker(3, cooldown)
        .connect()
        .await
        .expect("the private redis-server");
    let policy = Policy::new(Algorithm::Gcra, 1_000, Duration::from_secs(1)).expect("policy");
    let check = [Check::new("hung:client", &policy)];
    assert!(store.check(&check).await.expect("before").allowed());

    server.signal("STOP");
    for i in 0..3 {
        let started = Instant::now();
        match store.check(&check).await {
            Err(RedisError::Timeout(_)) => {}
            other => panic!("failure {i}: expected a timeout, got {other:?}"),
        }
        assert!(started.elapsed() >= timeout - Duration::from_millis(5));
        assert_eq!(store.is_circuit_open(), i == 2, "after failure {i}");
    }
    for _ in 0..20 {
        let started = Instant::now();
        match store.check(&check).await {
            Err(
                e @ RedisError::CircuitOpen {
                    failures: 3,
                    retry_in,
                },
            ) => {
                assert!(e.is_transient(), "{e}");
                assert!(retry_in <= cooldown, "{e}");
            }
            other => panic!("expected CircuitOpen, got {other:?}"),
        }
        // Not sent: answered without waiting for Redis.
        let took = started.elapsed();
        assert!(took < timeout / 2, "an open breaker took {took:?}");
    }

    // The cooldown over, one probe goes and times out: open again.
    tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
    match store.check(&check).await {
        Err(RedisError::Timeout(_)) => {}
        other => panic!("the probe: expected a timeout, got {other:?}"),
    }
    assert!(matches!(
        store.check(&check).await,
        Err(RedisError::CircuitOpen { .. })
    ));

    server.signal("CONT");
    tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
    let v = store
        .check(&check)
        .await
        .expect("the probe after Redis thawed");
    assert!(v.allowed());
    assert!(!store.is_circuit_open());
    store.check(&check).await.expect("closed again");
}

async fn tollgate_functions(admin: &mut redis::aio::MultiplexedConnection) -> usize {
    let libraries: Vec<redis::Value> = redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg("tollgate_*")
        .query_async(admin)
        .await
        .expect("FUNCTION LIST");
    libraries.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_functions_are_loaded_again_and_nothing_counts_twice() {
    let server = Server::start();
    let store = connect(&server.url(), Duration::from_secs(5)).await;
    let mut admin = raw(&server.url()).await;
    assert_eq!(
        tollgate_functions(&mut admin).await,
        1,
        "connect loads the library"
    );
    let policy = Policy::new(Algorithm::FixedWindow, 5, Duration::from_secs(60)).expect("policy");
    // Both calls in one (clock-aligned) window.
    early_in_window(&mut admin, Duration::from_secs(60), Duration::from_secs(10)).await;
    let check = [Check::new("cache:client", &policy)];
    store.check(&check).await.expect("first call");
    let _: String = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .expect("FUNCTION FLUSH");
    assert_eq!(tollgate_functions(&mut admin).await, 0);
    let v = store
        .check(&check)
        .await
        .expect("the call after a flush succeeds");
    assert_eq!(
        v.decision.remaining, 3,
        "counted once: \"Function not found\" means nothing ran"
    );
    assert_eq!(
        tollgate_functions(&mut admin).await,
        1,
        "the store loaded it again"
    );

    // And under load: 300 concurrent checks against a limit of 100 while the
    // functions are flushed again and again.
    admit_exactly_the_limit_while_flushing(&store, &mut admin, "FUNCTION", "function-flushed")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_is_not_replayed() {
    let server = Server::start();
    let store = connect(&server.url(), Duration::from_millis(100)).await;
    let mut admin = raw(&server.url()).await;
    let policy = Policy::new(Algorithm::Gcra, 10, Duration::from_secs(60)).expect("policy");
    let check = [Check::new("paused:client", &policy)];
    // Redis holds every client's commands for 600 ms, then runs them.
    let _: String = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(600)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .expect("CLIENT PAUSE");
    match store.check(&check).await {
        Err(RedisError::Timeout(_)) => {}
        other => panic!("expected a timeout while Redis is paused, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let v = store.peek(&check).await.expect("after the pause");
    // The paused call ran once when the pause ended; the store did not send it
    // again. A peek answers as if it were admitted: 10 - 1 (the paused call) - 1.
    // Never sent would leave 9, sent twice 7.
    assert_eq!(v.decision.remaining, 8, "consumed exactly once: {v:?}");
}

/// 300 concurrent checks per algorithm against a limit of 100 while `SCRIPT FLUSH`
/// or `FUNCTION FLUSH` runs every 60 requests: no error reaches a caller, and
/// exactly 100 are admitted (nothing lost, nothing counted twice).
async fn admit_exactly_the_limit_while_flushing(
    store: &RedisStore,
    admin: &mut redis::aio::MultiplexedConnection,
    flush: &str,
    name: &str,
) {
    for algorithm in Algorithm::ALL {
        let policy = Policy::new(algorithm, 100, Duration::from_secs(60)).expect("policy");
        if algorithm == Algorithm::FixedWindow {
            // All 300 checks in one (clock-aligned) window.
            early_in_window(admin, Duration::from_secs(60), Duration::from_secs(10)).await;
        }
        let key = format!("{}:{name}", algorithm.name());
        let mut tasks = Vec::new();
        for i in 0..300 {
            let store = store.clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                store.check(&[Check::new(&key, &policy)]).await
            }));
            if i % 60 == 0 {
                let _: String = redis::cmd(flush)
                    .arg("FLUSH")
                    .query_async(admin)
                    .await
                    .unwrap_or_else(|e| panic!("{flush} FLUSH: {e}"));
            }
        }
        let mut admitted = 0;
        for t in tasks {
            let v = t
                .await
                .expect("task")
                .unwrap_or_else(|e| panic!("{algorithm:?}: an error reached the caller: {e}"));
            admitted += usize::from(v.allowed());
        }
        assert_eq!(
            admitted, 100,
            "{algorithm:?}: exactly the limit under {flush} FLUSH"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_store_is_made_while_redis_is_down_and_serves_once_it_is_up() {
    // A port with nothing behind it, for now.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let url = format!("redis://127.0.0.1:{port}/0");
    assert!(
        RedisStore::builder(url.clone())
            .connect_timeout(Duration::from_millis(300))
            .connect()
            .await
            .is_err(),
        "an eager store refuses to start without Redis"
    );
    let store = RedisStore::builder(url)
        .key_prefix(prefix("lazy"))
        .timeout(Duration::from_millis(300))
        .lazy(true)
        .connect()
        .await
        .expect("a lazy store is made without Redis");
    let policy =
        Policy::new(Algorithm::SlidingWindowLog, 2, Duration::from_secs(60)).expect("policy");
    let check = [Check::new("lazy:client", &policy)];
    match store.check(&check).await {
        Err(e) => assert!(e.is_transient(), "{e}"),
        Ok(v) => panic!("no Redis, yet {v:?}"),
    }
    let _server = Server::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        match store.check(&check).await {
            Ok(v) => break v,
            Err(e) => {
                assert!(Instant::now() < deadline, "never served: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(v.allowed());
    assert_eq!(
        v.decision.remaining, 1,
        "the function was loaded on first use and counted once"
    );
}
