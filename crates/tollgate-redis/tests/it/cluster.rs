//! Redis Cluster: the harness starts a three-master cluster from `redis-server` on
//! free loopback ports, runs the conformance suite and stacked policies on it (no
//! CROSSSLOT, all or nothing across slots), and stops the nodes.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tollgate::{Algorithm, Check, ManualClock, Policy, Store};

use crate::common::{caller_store, epoch, raw};
use crate::conformance::replay;

/// A running cluster; dropping it stops the nodes and removes their files.
pub struct Cluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    /// `redis+cluster://` URL of the cluster.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }
}

/// A port that is free, whose cluster bus port (+10000) is free too.
fn free_port(taken: &[u16]) -> u16 {
    for _ in 0..200 {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = l.local_addr() else { continue };
        let port = addr.port();
        if port > 55_000 || taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port pair for a cluster node");
}

fn tool(name: &str) -> Command {
    let mut cmd = Command::new(name);
    cmd.stdin(Stdio::null());
    cmd
}

/// Starts three masters and joins them into a cluster.
pub fn start() -> Cluster {
    // A directory per cluster: the nodes write their cluster configuration there,
    // and a node whose file is removed under it (by another cluster's drop, when
    // they shared one) exits.
    static CLUSTERS: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tollgate-cluster-{}-{}",
        std::process::id(),
        CLUSTERS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let mut cluster = Cluster {
        nodes: Vec::new(),
        ports: Vec::new(),
        dir: dir.clone(),
    };
    for _ in 0..3 {
        let port = free_port(&cluster.ports);
        let child = tool("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-node-timeout",
                "2000",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server ({e}): the cluster tests need redis-server and redis-cli on PATH"));
        cluster.nodes.push(child);
        cluster.ports.push(port);
    }
    for &port in &cluster.ports {
        wait_for(|| ping(port), "a cluster node to answer PING");
    }
    let nodes: Vec<String> = cluster
        .ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let out = tool("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&nodes)
        .arg("--cluster-yes")
        .output()
        .expect("redis-cli --cluster create");
    assert!(
        out.status.success(),
        "redis-cli --cluster create failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for &port in &cluster.ports {
        wait_for(
            || cluster_ok(port),
            "the cluster to report cluster_state:ok",
        );
    }
    cluster
}

fn ping(port: u16) -> bool {
    tool("redis-cli")
        .args(["-p", &port.to_string(), "PING"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
        .unwrap_or(false)
}

fn cluster_ok(port: u16) -> bool {
    tool("redis-cli")
        .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        .unwrap_or(false)
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_master_cluster_decides_as_the_memory_store() {
    let cluster = start();
    let url = cluster.url();

    // The slot the store computes is the slot Redis computes.
    let store = caller_store(&url, "cluster-slots", ManualClock::new(epoch(0))).await;
    assert!(store.is_cluster());
    let mut node = raw(&format!("redis://127.0.0.1:{}", cluster.ports[0])).await;
    for key in ["per-client:10.0.0.1_curl", "global:global", "alice", "x:}{"] {
        let (state, log) = store.redis_keys(key);
        let a: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&state)
            .query_async(&mut node)
            .await
            .expect("KEYSLOT");
        let b: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&log)
            .query_async(&mut node)
            .await
            .expect("KEYSLOT");
        assert_eq!(a, b, "{key}: state and log keys share a slot");
    }
    let (one, _) = store.redis_keys("per-client:10.0.0.1");
    let (two, _) = store.redis_keys("per-hour:10.0.0.1");
    let a: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&one)
        .query_async(&mut node)
        .await
        .expect("KEYSLOT");
    let b: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&two)
        .query_async(&mut node)
        .await
        .expect("KEYSLOT");
    assert_eq!(a, b, "a client's policies share a slot");

    // The conformance suite, with stacks inside one slot and across slots.
    replay(&url, "cluster-conformance", 0xc1a5_7e25, 20, 120, true).await;

    // Stacked policies across slots: all or nothing, no CROSSSLOT.
    let clock = ManualClock::new(epoch(77));
    let redis = caller_store(&url, "cluster-stacks", clock.clone()).await;
    let per_client =
        Policy::new(Algorithm::TokenBucket, 2, Duration::from_secs(10)).expect("policy");
    let per_hour =
        Policy::new(Algorithm::SlidingWindowLog, 3, Duration::from_secs(3_600)).expect("policy");
    let global = Policy::new(Algorithm::FixedWindow, 3, Duration::from_secs(10)).expect("policy");
    let mut admitted = Vec::new();
    for client in ["c1", "c2", "c3", "c4", "c1"] {
        let a = format!("per-client:{client}");
        let h = format!("per-hour:{client}");
        let stack = [
            Check::new(&a, &per_client),
            Check::new(&h, &per_hour),
            Check::new("global:all", &global),
        ];
        let v = redis
            .check(&stack)
            .await
            .expect("a stack across slots is decided, no CROSSSLOT");
        admitted.push(v.allowed());
        if !v.allowed() {
            assert_eq!(v.index, 2, "the global policy denies");
            // What the denial did not consume is still there.
            let peek = redis
                .peek(&[Check::new(&a, &per_client)])
                .await
                .expect("peek");
            let fresh = if client == "c1" { 1 } else { 2 };
            assert_eq!(
                peek.decision.remaining,
                fresh - 1,
                "{client}: per-client gave back"
            );
            let peek = redis
                .peek(&[Check::new(&h, &per_hour)])
                .await
                .expect("peek");
            let fresh = if client == "c1" { 2 } else { 3 };
            assert_eq!(
                peek.decision.remaining,
                fresh - 1,
                "{client}: per-hour gave back"
            );
        }
    }
    assert_eq!(admitted, [true, true, true, false, false]);

    // Concurrent stacks on one slot in a cluster: exactly the limit.
    let redis = caller_store(&url, "cluster-exact", ManualClock::new(epoch(99))).await;
    let p = Policy::new(Algorithm::Gcra, 50, Duration::from_secs(60)).expect("policy");
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let redis = redis.clone();
        tasks.push(tokio::spawn(async move {
            redis
                .check(&[Check::new("hot:k", &p)])
                .await
                .map(|v| v.allowed())
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += usize::from(t.await.expect("task").expect("check"));
    }
    assert_eq!(n, 50);
    drop(cluster);
}

/// The port of the node serving `slot`, from `CLUSTER SLOTS`.
async fn owner(node: &mut redis::aio::MultiplexedConnection, slot: u16) -> u16 {
    let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(node)
        .await
        .expect("CLUSTER SLOTS");
    let int = |v: &redis::Value| match v {
        redis::Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    for range in &ranges {
        let redis::Value::Array(items) = range else {
            continue;
        };
        let (Some(first), Some(last)) = (items.first().and_then(int), items.get(1).and_then(int))
        else {
            continue;
        };
        if (first..=last).contains(&slot)
            && let Some(redis::Value::Array(master)) = items.get(2)
            && let Some(port) = master.get(1).and_then(int)
        {
            return port;
        }
    }
    panic!("no node serves slot {slot}: {ranges:?}");
}

/// A node that hangs opens the circuit breaker of its slots only: decisions on the
/// other nodes' slots go on, answered by Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_opens_the_breaker_of_its_slots_only() {
    let cluster = start();
    let store = breaker_store(&cluster, "cluster-breaker").await;
    let (hung_port, hung, live) = clients_on_two_nodes(&cluster, &store).await;
    let (hung, live) = (&hung, &live);
    let policy = Policy::new(Algorithm::Gcra, 1000, Duration::from_secs(1)).expect("policy");
    for key in [hung, live] {
        assert!(
            store
                .check(&[Check::new(key, &policy)])
                .await
                .expect("both nodes answer")
                .allowed()
        );
    }
    pause(hung_port).await;
    for i in 0..3 {
        let e = store
            .check(&[Check::new(hung, &policy)])
            .await
            .expect_err("the hung node's slot times out");
        // The cluster client's own response timeout, or the store's.
        assert!(
            e.is_transient() && !matches!(e, tollgate_redis::RedisError::CircuitOpen { .. }),
            "failure {i}: {e:?}"
        );
    }
    // Its range's breaker is open: a decision there fails at once.
    let t = Instant::now();
    let e = store
        .check(&[Check::new(hung, &policy)])
        .await
        .expect_err("open");
    assert!(
        matches!(e, tollgate_redis::RedisError::CircuitOpen { .. }),
        "{e:?}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    assert!(store.is_circuit_open());
    // The other node's clients are decided by Redis meanwhile.
    for _ in 0..20 {
        let v = store
            .check(&[Check::new(live, &policy)])
            .await
            .expect("a live node's slot is not held back by another node's breaker");
        assert!(v.allowed());
    }
    // A stack touching the hung node's range is held back whole, at once.
    let e = store
        .check(&[Check::new(live, &policy), Check::new(hung, &policy)])
        .await
        .expect_err("a stack with the hung slot");
    assert!(
        matches!(e, tollgate_redis::RedisError::CircuitOpen { .. }),
        "{e:?}"
    );
    // (The nodes stop with `cluster`, paused or not.)
}

/// A store on `cluster` whose breakers open after 3 failures and stay open 30 s.
async fn breaker_store(cluster: &Cluster, test: &str) -> tollgate_redis::RedisStore {
    tollgate_redis::RedisStore::builder(cluster.url())
        .key_prefix(crate::common::prefix(test))
        .timeout(Duration::from_millis(200))
        .circuit_breaker(3, Duration::from_secs(30))
        .connect()
        .await
        .expect("the cluster")
}

/// Two client keys on two nodes, each away from the slot ranges (256 slots each)
/// that straddle two nodes: the first one's node's port, and both keys.
async fn clients_on_two_nodes(
    cluster: &Cluster,
    store: &tollgate_redis::RedisStore,
) -> (u16, String, String) {
    let mut any = raw(&format!("redis://127.0.0.1:{}", cluster.ports[0])).await;
    let mut on: Vec<(u16, String)> = Vec::new();
    for i in 0..2000 {
        let key = format!("api:client-{i}");
        let (state, _) = store.redis_keys(&key);
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&state)
            .query_async(&mut any)
            .await
            .expect("KEYSLOT");
        let range = usize::from(slot) / 256;
        let port = owner(&mut any, slot).await;
        let whole = owner(&mut any, u16::try_from(range * 256).expect("slot")).await == port
            && owner(&mut any, u16::try_from(range * 256 + 255).expect("slot")).await == port;
        if whole && !on.iter().any(|(p, _)| *p == port) {
            on.push((port, key));
        }
        if on.len() == 2 {
            break;
        }
    }
    match <[_; 2]>::try_from(on) {
        Ok([(port, first), (_, second)]) => (port, first, second),
        Err(on) => panic!("no clients on two nodes: {on:?}"),
    }
}

/// Holds every command of the node on `port` for 20 s.
async fn pause(port: u16) {
    let mut node = raw(&format!("redis://127.0.0.1:{port}")).await;
    let _: String = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(20_000)
        .arg("ALL")
        .query_async(&mut node)
        .await
        .expect("CLIENT PAUSE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_across_nodes_fails_only_the_breaker_of_the_hung_node() {
    let cluster = start();
    let store = breaker_store(&cluster, "cluster-breaker-stack").await;
    let (hung_port, hung, live) = clients_on_two_nodes(&cluster, &store).await;
    let policy = Policy::new(Algorithm::Gcra, 1000, Duration::from_secs(1)).expect("policy");
    assert!(
        store
            .check(&[Check::new(&live, &policy), Check::new(&hung, &policy)])
            .await
            .expect("both nodes answer")
            .allowed()
    );
    pause(hung_port).await;
    // Three stacks over both nodes fail on the hung one: twice after the live
    // node answered, once before the live node was reached.
    for (i, stack) in [[&live, &hung], [&live, &hung], [&hung, &live]]
        .into_iter()
        .enumerate()
    {
        let e = store
            .check(&[Check::new(stack[0], &policy), Check::new(stack[1], &policy)])
            .await
            .expect_err("a stack with the hung node's slot times out");
        assert!(
            e.is_transient() && !matches!(e, tollgate_redis::RedisError::CircuitOpen { .. }),
            "stack {i}: {e:?}"
        );
    }
    // The hung node's range failed three times: its breaker is open.
    let e = store
        .check(&[Check::new(&hung, &policy)])
        .await
        .expect_err("open");
    assert!(
        matches!(e, tollgate_redis::RedisError::CircuitOpen { .. }),
        "{e:?}"
    );
    // The live node's range answered, or was not reached: its breaker is closed
    // (counting every failed stack in every range it touches opened it too).
    for _ in 0..5 {
        let v = store
            .check(&[Check::new(&live, &policy)])
            .await
            .expect("the live node's range is not held back by the hung node's failures");
        assert!(v.allowed());
    }
}
