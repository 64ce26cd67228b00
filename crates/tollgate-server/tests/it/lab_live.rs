//! `tollgate lab --target URL`: the live mode against a real `tollgate serve` (the
//! in-memory store) started on an ephemeral port, and its errors.
//!
//! Live figures depend on timing, so the checks here lean on what the timing can
//! prove: the server decides each request between the instant the lab sent it and
//! the instant it read the answer (both on the lab's clock, recorded in
//! `requests.csv`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::tollgate;
use crate::running;

/// A fresh folder path (not created) under Cargo's scratch directory.
fn out_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "tollgate-server-lab-live-{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn path(dir: &Path) -> &str {
    dir.to_str().expect("a UTF-8 path")
}

/// One line of `requests.csv`.
#[derive(Debug)]
struct Request {
    scenario: String,
    algorithm: String,
    target: String,
    scheduled: u64,
    sent: u64,
    received: u64,
    outcome: String,
    allowed: bool,
}

fn requests(dir: &Path) -> Vec<Request> {
    let text = std::fs::read_to_string(dir.join("requests.csv")).expect("requests.csv");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(
            "scenario,algorithm,key,target,scheduled_ns,sent_ns,received_ns,outcome,allowed,delay_ms"
        )
    );
    lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 10, "{line}");
            Request {
                scenario: f[0].to_owned(),
                algorithm: f[1].to_owned(),
                target: f[3].to_owned(),
                scheduled: f[4].parse().expect("scheduled_ns"),
                sent: f[5].parse().expect("sent_ns"),
                received: f[6].parse().expect("received_ns"),
                outcome: f[7].to_owned(),
                allowed: f[8] == "true",
            }
        })
        .collect()
}

fn result<'a>(report: &'a Value, scenario: &str, algorithm: &str) -> &'a Value {
    report["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .find(|s| s["name"] == scenario)
        .and_then(|s| {
            s["results"]
                .as_array()
                .expect("results")
                .iter()
                .find(|r| r["algorithm"] == algorithm)
        })
        .unwrap_or_else(|| panic!("{scenario}/{algorithm} in the report"))
}

/// The most of `sorted` inside any half-open interval `[s, s + w)`.
fn most_within(sorted: &[u64], w: u64) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for (hi, &t) in sorted.iter().enumerate() {
        while sorted[lo] + w <= t {
            lo += 1;
        }
        best = best.max(hi + 1 - lo);
    }
    best
}

/// The limit of the single-server run, and of the fleet run.
const L: u64 = 5;
const L_FLEET: u64 = 10;
/// The period of every live run here (the live default).
const W: u64 = 1_000_000_000;

#[test]
fn a_live_run_against_a_real_server_holds_the_contract() {
    let server = running::start(&[], &[]);
    let out = out_dir("run");
    let started = Instant::now();
    let run = tollgate(
        &[
            "lab",
            "--target",
            &server.base,
            "--scenario",
            "boundary_attack",
            "--scenario",
            "burst",
            "--limit",
            "5",
            "--out",
            path(&out),
        ],
        "",
    );
    let took = started.elapsed();
    assert_eq!(run.status, 0, "{run:?}");
    assert_eq!(
        run.stderr,
        format!(
            "tollgate lab: live against {}: 150 requests over at most 9 s\n",
            server.base
        )
    );
    // Two scenarios of 4 and 3 periods of 1s, each waiting for a window edge first.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(
        run.stdout.starts_with(
            "tollgate lab (live): 2 scenario(s) x 6 algorithms, 5 per 1s, fleets of 4, seed 1, in "
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&format!(
            "live against {}: 150 requests sent, 0 failed",
            server.base
        )),
        "{}",
        run.stdout
    );
    for file in [
        "index.html",
        "report.md",
        "report.json",
        "timings.json",
        "requests.csv",
        "boundary_attack.svg",
        "burst.svg",
    ] {
        assert!(out.join(file).is_file(), "{file} was written");
    }
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(md.starts_with("# Tollgate lab report (live)\n\nLIVE RUN, not reproducible"));
    let html = std::fs::read_to_string(out.join("index.html")).expect("index.html");
    assert!(html.contains("<h1>Tollgate lab report (live)</h1>"));
    let svg = std::fs::read_to_string(out.join("burst.svg")).expect("burst.svg");
    assert!(svg.contains("(live)"));

    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report.json"))
            .expect("JSON");
    assert_eq!(report["lab"], "tollgate lab (live)");
    assert_eq!(report["live"]["targets"][0], server.base.as_str());
    assert_eq!(report["live"]["requests"], 150);
    assert_eq!(report["live"]["failed"], 0);
    assert_eq!(report["config"]["period"], "1s");

    let all = requests(&out);
    assert_eq!(all.len(), 150);
    assert!(all.iter().all(|r| r.outcome == "decided"), "no failures");
    for r in &all {
        assert!(r.scheduled <= r.sent && r.sent <= r.received, "{r:?}");
        assert_eq!(r.target, server.base);
    }
    let of = |scenario: &str, algorithm: &str| -> Vec<&Request> {
        all.iter()
            .filter(|r| r.scenario == scenario && r.algorithm == algorithm)
            .collect()
    };
    let admitted = |rs: &[&Request]| rs.iter().filter(|r| r.allowed).count() as u64;

    // The boundary attack: L sent 100 ms before the edge at 2W, L at the edge. When
    // every request of the first half was answered before the edge (the server
    // decided it in the old window), fixed_window admits both halves: 2L within
    // 100 ms, twice the limit.
    let edge = 2 * W;
    let fixed = of("boundary_attack", "fixed_window");
    let first_half_done = fixed
        .iter()
        .filter(|r| r.scheduled < edge)
        .map(|r| r.received)
        .max()
        .expect("a first half");
    assert!(
        first_half_done < edge,
        "the first half took until {first_half_done} ns: over the edge"
    );
    assert_eq!(admitted(&fixed), 2 * L);
    let fw = result(&report, "boundary_attack", "fixed_window");
    assert_eq!(fw["admitted"], 2 * L);
    assert_eq!(fw["burst_factor"], 2.0);
    assert_eq!(fw["failed"], 0);

    // sliding_window_log never admits more than L within any W of the server's
    // decision instants. Each decision lies within [sent, received], so requests
    // sent within W - R of each other (R the longest round trip) were decided
    // within W of each other: at most L of them may be admitted.
    for scenario in ["boundary_attack", "burst"] {
        let log = of(scenario, "sliding_window_log");
        let slack = log
            .iter()
            .map(|r| r.received - r.sent)
            .max()
            .expect("requests");
        assert!(slack < W / 2, "round trips of {slack} ns");
        let mut sent: Vec<u64> = log.iter().filter(|r| r.allowed).map(|r| r.sent).collect();
        sent.sort_unstable();
        assert!(
            most_within(&sent, W - slack) as u64 <= L,
            "{scenario}: {sent:?}"
        );
        assert_eq!(admitted(&log), L, "{scenario}: one window's worth in all");
    }

    // token_bucket and gcra compute the same thing. In the burst (3L at one instant,
    // T = W / L = 200 ms), each admits its bucket, L, plus one per T the batch
    // spans: none when the batch was decided within T.
    let tb = of("burst", "token_bucket");
    let gcra = of("burst", "gcra");
    let span = |rs: &[&Request]| {
        rs.iter().map(|r| r.received).max().unwrap_or(0)
            - rs.iter().map(|r| r.sent).min().unwrap_or(0)
    };
    let t = W / L;
    assert!(
        span(&tb) < t && span(&gcra) < t,
        "the burst took {} and {} ns",
        span(&tb),
        span(&gcra)
    );
    assert_eq!(admitted(&tb), L);
    assert_eq!(admitted(&gcra), admitted(&tb));
    assert_eq!(
        result(&report, "burst", "token_bucket")["admitted"],
        result(&report, "burst", "gcra")["admitted"]
    );

    // The prediction rides along: the simulator on the same traffic.
    let burst = report["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .find(|s| s["name"] == "burst")
        .expect("burst");
    let predicted = burst["live"]["predicted"].as_array().expect("predicted");
    assert_eq!(predicted.len(), 6);
    assert!(predicted.iter().all(|p| p["admitted"] == L));
    assert!(burst["live"]["max_round_trip_ns"].as_u64().expect("ns") > 0);
    assert_eq!(burst["live"]["start_unix_ns"].as_u64().expect("ns") % W, 0);
}

#[test]
fn a_server_that_goes_away_mid_run_is_counted_not_fatal() {
    let mut server = running::start(&[], &[]);
    let out = out_dir("dies");
    let base = server.base.clone();
    let out_path = path(&out).to_owned();
    let lab = std::thread::spawn(move || {
        tollgate(
            &[
                "lab",
                "--target",
                &base,
                "--scenario",
                "steady_overload",
                "--limit",
                "5",
                "--out",
                &out_path,
            ],
            "",
        )
    });
    // The run waits up to 1 s for a window edge, then sends for 6 s.
    std::thread::sleep(Duration::from_secs(3));
    let _ = server.child.kill();
    let _ = server.child.wait();
    let run = lab.join().expect("the lab ran");
    assert_eq!(run.status, 0, "{run:?}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report.json"))
            .expect("JSON");
    let failed = report["live"]["failed"].as_u64().expect("failed");
    let sent = report["live"]["requests"].as_u64().expect("requests");
    assert_eq!(sent, 6 * 60);
    assert!(failed > 0 && failed < sent, "{failed} of {sent} failed");
    let kinds: Vec<&str> = report["live"]["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .map(|f| f["kind"].as_str().expect("kind"))
        .collect();
    assert!(kinds.contains(&"connect"), "{kinds:?}");
    assert!(
        run.stdout.contains(&format!("{failed} failed")),
        "{}",
        run.stdout
    );
    let fw = result(&report, "steady_overload", "fixed_window");
    assert!(fw["failed"].as_u64().expect("failed") > 0);
}

/// A port on which nothing listens (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[test]
fn nothing_listening_exits_1_naming_the_url() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let out = out_dir("closed");
    let run = tollgate(
        &[
            "lab",
            "--target",
            &url,
            "--scenario",
            "burst",
            "--out",
            path(&out),
        ],
        "",
    );
    assert_eq!(run.status, 1, "{run:?}");
    let mut lines = run.stderr.lines();
    assert_eq!(
        lines.next(),
        Some(format!("tollgate lab: live against {url}: 1800 requests over at most 4 s").as_str())
    );
    assert!(
        lines.next().is_some_and(|l| l.starts_with(&format!(
            "error: cannot reach the tollgate server at {url}: "
        ))),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("connection refused"), "{}", run.stderr);
    assert!(run.stderr.contains("hint: start one with `tollgate serve`"));
    assert!(!out.exists(), "nothing written");
}

#[test]
fn bad_live_flags_exit_2_naming_the_flag() {
    let bad = |args: &[&str], first_line: &str| {
        let mut all = vec!["lab"];
        all.extend_from_slice(args);
        let run = tollgate(&all, "");
        assert_eq!(run.status, 2, "{run:?}");
        assert_eq!(run.stdout, "");
        assert_eq!(
            run.stderr.lines().next(),
            Some(first_line),
            "{}",
            run.stderr
        );
        run.stderr
    };
    let err = bad(
        &["--target", "localhost:8000"],
        "error: --target \"localhost:8000\": unsupported URL \"localhost:8000\": the lab speaks plain HTTP, not \"localhost\"",
    );
    assert!(err.contains("hint: write it as a URL, e.g. \"http://localhost:8000\""));
    bad(
        &["--target", "not a url"],
        "error: --target \"not a url\": invalid URL \"not a url\": relative URL without a base",
    );
    bad(
        &["--target", "https://127.0.0.1:8000"],
        "error: --target \"https://127.0.0.1:8000\": unsupported URL \"https://127.0.0.1:8000\": the lab speaks plain HTTP, not \"https\"",
    );
    bad(
        &["--target", "http://127.0.0.1:1", "--in-flight", "0"],
        "error: --in-flight 0: out of range: expected a whole number from 1 to 1024",
    );
    bad(
        &["--in-flight", "8"],
        "error: --in-flight 8: only a live run has requests in flight",
    );
    let err = bad(
        &[
            "--target",
            "http://127.0.0.1:1",
            "--scenario",
            "race_nonatomic",
        ],
        "error: --scenario \"race_nonatomic\": cannot run live: the server decides atomically, so there is no read-then-write to replay",
    );
    assert!(err.contains("hint: run it without --target"));
    let run = tollgate(
        &[
            "lab",
            "--target",
            "http://127.0.0.1:1",
            "--limit",
            "10000",
            "--period",
            "1m",
        ],
        "",
    );
    assert_eq!(run.status, 2, "{run:?}");
    assert!(
        run.stderr.starts_with("error: the live run would send ")
            && run.stderr.contains(
                " s: at most 500000 requests and 600 s are allowed\nhint: run fewer scenarios"
            ),
        "{}",
        run.stderr
    );
}

/// `--target` twice: a fleet of two servers. Sharing Redis, they hold one limit;
/// each with its own memory, they admit one limit each.
#[test]
fn two_targets_sharing_redis_hold_one_limit_and_two_in_memory_do_not() {
    let redis = std::env::var("TOLLGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("tglablive:{}:", std::process::id());
    let env = [
        ("TOLLGATE_STORE_URL", redis.as_str()),
        ("TOLLGATE_KEY_PREFIX", prefix.as_str()),
    ];
    let shared = [running::start(&[], &env), running::start(&[], &env)];
    let apart = [running::start(&[], &[]), running::start(&[], &[])];
    let lab = |servers: &[running::Server; 2], name: &str| {
        let out = out_dir(name);
        let args: Vec<String> = [
            "lab",
            "--target",
            &servers[0].base,
            "--target",
            &servers[1].base,
            "--scenario",
            "fleet_shared",
            "--nodes",
            "2",
            "--limit",
            "10",
            "--out",
            path(&out),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let run = tollgate(&args, "");
            (run, out)
        })
    };
    let on_redis = lab(&shared, "redis");
    let in_memory = lab(&apart, "memory");
    let (run, redis_out) = on_redis.join().expect("the lab ran");
    assert_eq!(run.status, 0, "{run:?}");
    let (run, memory_out) = in_memory.join().expect("the lab ran");
    assert_eq!(run.status, 0, "{run:?}");

    let log_admitted_sent = |out: &Path| {
        let all = requests(out);
        assert!(all.iter().all(|r| r.outcome == "decided"), "no failures");
        let log: Vec<&Request> = all
            .iter()
            .filter(|r| r.algorithm == "sliding_window_log")
            .collect();
        // Node n's requests go to target n: half to each.
        let first = log.iter().filter(|r| r.target == log[0].target).count();
        assert_eq!(2 * first, log.len());
        let slack = log.iter().map(|r| r.received - r.sent).max().unwrap_or(0);
        let mut sent: Vec<u64> = log.iter().filter(|r| r.allowed).map(|r| r.sent).collect();
        sent.sort_unstable();
        (sent, slack)
    };
    // 40 requests per second over 2 nodes for 6 s; the simulator's shared store
    // admits 10 per second, 60 in all.
    let (sent, slack) = log_admitted_sent(&redis_out);
    assert!(slack < W / 2, "round trips of {slack} ns");
    assert!(
        most_within(&sent, W - slack) as u64 <= L_FLEET,
        "two servers on Redis: {sent:?}"
    );
    assert!(sent.len() >= 50 && sent.len() <= 62, "{}", sent.len());
    let (sent, _) = log_admitted_sent(&memory_out);
    assert!(
        sent.len() >= 100,
        "two servers with their own memory admit a limit each: {}",
        sent.len()
    );
    let report: Value = serde_json::from_slice(
        &std::fs::read(memory_out.join("report.json")).expect("report.json"),
    )
    .expect("JSON");
    let log = result(&report, "fleet_shared", "sliding_window_log");
    assert!(
        log["burst_factor"].as_f64().expect("a ratio") >= 1.5,
        "{log}"
    );
    assert_eq!(report["live"]["targets"].as_array().map(Vec::len), Some(2));
}

/// A server that answers `GET /healthz` and never answers a check: every request
/// times out or is never sent, the run still ends within its duration and a few
/// seconds, the report is written and the status is 1 (no decision at all).
#[test]
fn a_server_that_never_decides_ends_the_run_in_bounded_time() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    if buf[..n].starts_with(b"GET /healthz") {
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                    }
                    // Anything else is read and never answered.
                }
            });
        }
    });
    let out = out_dir("silent");
    let started = Instant::now();
    let run = tollgate(
        &[
            "lab",
            "--target",
            &base,
            "--scenario",
            "burst",
            "--limit",
            "5",
            "--out",
            path(&out),
        ],
        "",
    );
    let took = started.elapsed();
    assert_eq!(run.status, 1, "{run:?}");
    assert_eq!(
        run.stderr.lines().nth(1),
        Some(
            format!("error: no decision from {base}: all 90 requests failed (the report says how)")
                .as_str()
        ),
        "{}",
        run.stderr
    );
    // Up to 1 s for the window edge, the 3 s scenario, a 5 s timeout.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report.json"))
            .expect("JSON");
    let failures: Vec<(String, u64)> = report["live"]["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().expect("kind").to_owned(),
                f["count"].as_u64().expect("count"),
            )
        })
        .collect();
    // 64 in flight time out; the rest never get a slot within 2 s of their instant.
    assert_eq!(
        failures,
        [("not-sent-late".to_owned(), 26), ("timeout".to_owned(), 64)]
    );
}
