//! The directory watcher: a changed file is swapped in, an invalid one leaves the
//! previous rules in force, a fixed one is taken again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tollgate_envoy::reload::{initial, watch};
use tollgate_envoy::{EnvoyMetrics, LoadOptions, RuleSet};

fn limit_of(rules: &ArcSwap<RuleSet>) -> Option<u32> {
    let set = rules.load();
    set.domain("live")?
        .find([("k", "v")])
        .map(|r| r.requests_per_unit)
}

fn file(limit: u32) -> String {
    format!(
        "domain: live\ndescriptors:\n  - key: k\n    value: v\n    rate_limit:\n      unit: second\n      requests_per_unit: {limit}\n"
    )
}

/// Writes atomically (a temporary file renamed over the old one), as config tools do.
fn write(dir: &std::path::Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

fn wait_for(rules: &ArcSwap<RuleSet>, want: Option<u32>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while limit_of(rules) != want {
        assert!(Instant::now() < deadline, "the rules never became {want:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn changes_are_swapped_in_and_invalid_files_keep_the_previous_rules() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("envoy-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    write(&dir, "live.yaml", &file(5));
    std::fs::write(dir.join("notes.txt"), "not a config").expect("write");
    let metrics = EnvoyMetrics::new();
    let (set, seen) = initial(&dir, &LoadOptions::default(), &metrics).expect("valid");
    let rules = Arc::new(ArcSwap::from_pointee(set));
    assert_eq!(limit_of(&rules), Some(5));
    let thread = watch(
        dir.clone(),
        LoadOptions::default(),
        metrics,
        &rules,
        seen,
        Duration::from_millis(20),
    )
    .expect("watcher");

    write(&dir, "live.yaml", &file(9));
    wait_for(&rules, Some(9));

    write(
        &dir,
        "live.yaml",
        "domain: live\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: fortnight\n",
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(limit_of(&rules), Some(9), "an invalid file changes nothing");

    write(&dir, "live.yaml", &file(11));
    wait_for(&rules, Some(11));

    std::fs::remove_file(dir.join("live.yaml")).expect("remove");
    wait_for(&rules, None);

    drop(rules);
    thread
        .join()
        .expect("the watcher ends once the rules are dropped");
    let _ = std::fs::remove_dir_all(&dir);
}
