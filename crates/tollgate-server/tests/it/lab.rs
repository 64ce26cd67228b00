//! `tollgate lab`: the report folder, `--list`, `--scenario`, and bad flags (exit
//! status 2, a message naming the flag).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::tollgate;

/// A fresh folder path (not created) under Cargo's scratch directory.
fn out_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "tollgate-server-lab-{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("the folder exists")
        .map(|e| {
            let e = e.expect("an entry");
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("read"))
        })
        .collect()
}

fn path(dir: &Path) -> &str {
    dir.to_str().expect("a UTF-8 path")
}

#[test]
fn the_default_lab_writes_the_whole_folder_twice_alike() {
    let a = out_dir("all-a");
    let b = out_dir("all-b");
    let run = tollgate(&["lab", "--out", path(&a)], "");
    assert_eq!(run.status, 0, "{run:?}");
    assert_eq!(run.stderr, "");
    assert!(
        run.stdout.starts_with(
            "tollgate lab: 12 scenario(s) x 6 algorithms, 100 per 10s, fleets of 4, seed 1, in "
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("fixed_window let 200 requests through"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("wrote 16 files to "), "{}", run.stdout);
    let run = tollgate(&["lab", "--out", path(&b)], "");
    assert_eq!(run.status, 0, "{run:?}");
    let (fa, fb) = (files(&a), files(&b));
    assert_eq!(fa.len(), 16);
    assert_eq!(fa.get("report.json"), fb.get("report.json"));
    assert!(fa.contains_key("index.html") && fa.contains_key("timings.json"));
}

#[test]
fn no_timings_makes_every_file_reproducible() {
    let a = out_dir("nt-a");
    let b = out_dir("nt-b");
    let args = |dir: &Path| {
        vec![
            "lab".to_owned(),
            "--no-timings".to_owned(),
            "--seed".to_owned(),
            "9".to_owned(),
            "--out".to_owned(),
            path(dir).to_owned(),
        ]
    };
    for dir in [&a, &b] {
        let args = args(dir);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = tollgate(&args, "");
        assert_eq!(run.status, 0, "{run:?}");
    }
    let fa = files(&a);
    assert!(!fa.contains_key("timings.json"));
    assert_eq!(fa, files(&b));
}

#[test]
fn one_scenario_with_other_numbers() {
    let dir = out_dir("one");
    let run = tollgate(
        &[
            "lab",
            "--scenario",
            "boundary_attack",
            "--scenario",
            "fleet_naive",
            "--limit",
            "10",
            "--period",
            "1s",
            "--nodes",
            "3",
            "--out",
            path(&dir),
        ],
        "",
    );
    assert_eq!(run.status, 0, "{run:?}");
    let names: Vec<String> = files(&dir).into_keys().collect();
    assert_eq!(
        names,
        [
            "boundary_attack.svg",
            "fleet_naive.svg",
            "index.html",
            "report.json",
            "report.md",
            "timings.json"
        ]
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("read"))
            .expect("JSON");
    assert_eq!(json["config"]["limit"], 10);
    assert_eq!(json["config"]["period"], "1s");
    assert_eq!(json["config"]["nodes"], 3);
    let fleet = &json["scenarios"][1];
    assert_eq!(fleet["name"], "fleet_naive");
    assert_eq!(fleet["results"][1]["algorithm"], "sliding_window_log");
    assert_eq!(fleet["results"][1]["max_in_window"], 30);
    assert!(
        run.stdout.contains("fixed_window let 20 requests through"),
        "{}",
        run.stdout
    );
}

#[test]
fn list_names_every_scenario() {
    let run = tollgate(&["lab", "--list"], "");
    assert_eq!(run.status, 0, "{run:?}");
    let names: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        [
            "steady_overload",
            "burst",
            "boundary_attack",
            "poisson_0.9x",
            "poisson_1x",
            "poisson_1.5x",
            "on_off",
            "hog",
            "fleet_naive",
            "fleet_shared",
            "race_nonatomic",
            "race_atomic"
        ]
    );
}

/// Runs `tollgate lab args...` expecting exit status 2; returns stderr.
fn bad(args: &[&str], first_line: &str) -> String {
    let dir = out_dir("bad");
    let mut all = vec!["lab", "--out", path(&dir)];
    all.extend_from_slice(args);
    let run = tollgate(&all, "");
    assert_eq!(run.status, 2, "{run:?}");
    assert_eq!(run.stderr.lines().next(), Some(first_line), "{run:?}");
    assert_eq!(run.stdout, "");
    assert!(!dir.exists(), "nothing is written on a bad flag");
    run.stderr
}

#[test]
fn bad_flags_name_the_flag_and_exit_2() {
    bad(
        &["--limit", "0"],
        "error: --limit 0: out of range: expected a whole number from 1 to 10000",
    );
    bad(
        &["--limit", "20000"],
        "error: --limit 20000: out of range: expected a whole number from 1 to 10000",
    );
    bad(
        &["--limit", "abc"],
        "error: --limit \"abc\": expected a whole number from 1 to 10000",
    );
    bad(
        &["--limit", "-5"],
        "error: --limit \"-5\": expected a whole number from 1 to 10000",
    );
    let stderr = bad(
        &["--limit", " 5"],
        "error: --limit \" 5\": expected a whole number from 1 to 10000",
    );
    assert!(
        stderr.contains("hint: remove the spaces around the number"),
        "{stderr}"
    );
    bad(
        &["--nodes", "65"],
        "error: --nodes 65: out of range: expected a whole number from 1 to 64",
    );
    bad(
        &["--seed", "-1"],
        "error: --seed \"-1\": expected a whole number from 0 to 18446744073709551615",
    );
    bad(
        &["--period", "10ms"],
        "error: --period \"10ms\": out of range: the lab runs periods from 100ms to 1d",
    );
    let stderr = bad(
        &["--period", "10"],
        "error: --period \"10\": invalid duration: expected a whole number followed by a unit: ms, s, m or h (also ns, us, d), e.g. 500ms, 15s, 1m",
    );
    assert!(
        stderr.contains("hint: add a unit, e.g. \"10s\""),
        "{stderr}"
    );
    let stderr = bad(
        &["--scenario", "nope"],
        "error: --scenario \"nope\": unknown scenario: expected one of steady_overload, burst, boundary_attack, poisson_0.9x, poisson_1x, poisson_1.5x, on_off, hog, fleet_naive, fleet_shared, race_nonatomic, race_atomic",
    );
    assert!(
        stderr.contains("hint: tollgate lab --list describes them"),
        "{stderr}"
    );
    let stderr = bad(
        &["--scenario", "Boundary-Attack"],
        "error: --scenario \"Boundary-Attack\": unknown scenario: expected one of steady_overload, burst, boundary_attack, poisson_0.9x, poisson_1x, poisson_1.5x, on_off, hog, fleet_naive, fleet_shared, race_nonatomic, race_atomic",
    );
    assert!(
        stderr.contains("hint: did you mean \"boundary_attack\"?"),
        "{stderr}"
    );
    // clap's own errors (an unknown flag) also exit with 2.
    let run = tollgate(&["lab", "--limits", "5"], "");
    assert_eq!(run.status, 2, "{run:?}");
    assert!(run.stderr.contains("--limits"), "{run:?}");
}

#[test]
fn an_unwritable_folder_exits_1() {
    let dir = out_dir("file");
    std::fs::create_dir_all(&dir).expect("create");
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let run = tollgate(&["lab", "--scenario", "burst", "--out", path(&file)], "");
    assert_eq!(run.status, 1, "{run:?}");
    assert!(run.stderr.starts_with("error: cannot write \""), "{run:?}");
}

#[test]
fn a_reader_that_goes_away_early_is_not_an_error() {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = crate::common::command(&["lab", "--list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tollgate");
    // Close stdout at once: the listing meets a closed pipe.
    drop(child.stdout.take());
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(status.success(), "{status} {stderr}");
    assert_eq!(stderr, "");
}
