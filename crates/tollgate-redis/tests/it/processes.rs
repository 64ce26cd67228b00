//! Exactness across processes: four OS processes, each firing 250 concurrent checks
//! at one key with limit 100, admit exactly 100 in total, for every algorithm that
//! promises it.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate::{Algorithm, Check, Policy, Store};

use crate::common::{early_in_window, prefix, raw, redis_url};

const PROCESSES: usize = 4;
const PER_PROCESS: usize = 250;
const LIMIT: u32 = 100;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_admit_exactly_the_limit() {
    let exe = std::env::current_exe().expect("the test binary's path");
    let url = redis_url();
    for algorithm in [
        Algorithm::TokenBucket,
        Algorithm::Gcra,
        Algorithm::FixedWindow,
        Algorithm::SlidingWindowLog,
        Algorithm::LeakyBucket,
    ] {
        let prefix = prefix("processes");
        // fixed_window's count starts again when its (clock-aligned) minute ends:
        // the run (1.5 s to connect, well under a second of checks) keeps clear of it.
        early_in_window(
            &mut raw(&url).await,
            Duration::from_secs(60),
            Duration::from_secs(10),
        )
        .await;
        // Every process starts firing at the same instant, once all are connected.
        let start = unix_ms() + 1_500;
        let mut children = Vec::new();
        for _ in 0..PROCESSES {
            let child = tokio::process::Command::new(&exe)
                .args([
                    "processes::worker",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("TOLLGATE_TEST_REDIS_URL", &url)
                .env("TOLLGATE_WORKER_PREFIX", &prefix)
                .env("TOLLGATE_WORKER_ALGORITHM", algorithm.name())
                .env("TOLLGATE_WORKER_START_MS", start.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn a worker process");
            children.push(child);
        }
        let mut total = 0;
        for child in children {
            let output = child.wait_with_output().await.expect("worker exit");
            let out = String::from_utf8_lossy(&output.stdout);
            let err = String::from_utf8_lossy(&output.stderr);
            let status = output.status;
            assert!(status.success(), "worker failed: {out}\n{err}");
            let admitted: usize = out
                .lines()
                .find_map(|l| l.split("admitted=").nth(1))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("worker printed no count: {out}\n{err}"));
            total += admitted;
        }
        assert_eq!(
            total, LIMIT as usize,
            "{algorithm:?}: {PROCESSES} processes x {PER_PROCESS} concurrent checks admitted {total}"
        );
    }
}

/// Not a test on its own: the worker process that
/// `four_processes_admit_exactly_the_limit` starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a worker process started by four_processes_admit_exactly_the_limit"]
async fn worker() {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run four_processes_admit_exactly_the_limit instead")
        })
    };
    let algorithm: Algorithm = var("TOLLGATE_WORKER_ALGORITHM")
        .parse()
        .expect("an algorithm name");
    let start: u64 = var("TOLLGATE_WORKER_START_MS")
        .parse()
        .expect("a start instant");
    let store = tollgate_redis::RedisStore::builder(redis_url())
        .key_prefix(var("TOLLGATE_WORKER_PREFIX"))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("a Redis at TOLLGATE_TEST_REDIS_URL");
    let policy = Policy::new(algorithm, LIMIT, Duration::from_secs(60)).expect("policy");
    tokio::time::sleep(Duration::from_millis(start.saturating_sub(unix_ms()))).await;
    let mut tasks = Vec::new();
    for _ in 0..PER_PROCESS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .check(&[Check::new("shared:one-key", &policy)])
                .await
                .map(|v| v.allowed())
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        if t.await.expect("task").expect("check") {
            admitted += 1;
        }
    }
    println!("admitted={admitted}");
}
