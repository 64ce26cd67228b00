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
        |_| {},
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

/// `/metrics` as the server renders it: the Envoy metrics in a registry.
fn render(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("encode");
    out
}

fn has_series(text: &str, domain: &str, rule: &str) -> bool {
    let labels = format!("{{domain=\"{domain}\",rule=\"{rule}\"}}");
    text.lines()
        .any(|l| l.starts_with("envoy_total_hits_total") && l.contains(&labels))
}

#[test]
fn a_reload_removes_the_series_of_the_rules_it_removes() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("envoy-reload-series-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let both = "domain: live\ndescriptors:\n  - key: k\n    value: v\n    rate_limit:\n      unit: second\n      requests_per_unit: 5\n  - key: k\n    value: w\n    rate_limit:\n      unit: second\n      requests_per_unit: 6\n  - key: user\n    detailed_metric: true\n    rate_limit:\n      unit: minute\n      requests_per_unit: 7\n";
    write(&dir, "live.yaml", both);
    write(
        &dir,
        "other.yaml",
        &file(3).replace("domain: live", "domain: other"),
    );
    let metrics = EnvoyMetrics::new();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let (set, seen) = initial(&dir, &LoadOptions::default(), &metrics).expect("valid");
    let stats: Vec<(String, String)> = set
        .rule_stats()
        .into_iter()
        .map(|(d, r)| (d.to_owned(), r.to_owned()))
        .collect();
    assert_eq!(
        stats,
        [
            ("live".to_owned(), "k_v".to_owned()),
            ("live".to_owned(), "k_w".to_owned()),
            ("live".to_owned(), "user".to_owned()),
            ("other".to_owned(), "k_v".to_owned()),
        ]
    );
    // What requests make: a detailed_metric rule's values, and a descriptor's own
    // limit (no owning rule), in each domain.
    metrics
        .request_rule("live", Some("user"), "user_alice")
        .total_hits
        .inc();
    metrics
        .request_rule("live", None, "override.k")
        .total_hits
        .inc();
    metrics
        .request_rule("other", None, "override.k")
        .total_hits
        .inc();
    metrics.rule("live", "k_v").total_hits.inc_by(4);
    let text = render(&registry);
    for (domain, rule) in [
        ("live", "k_v"),
        ("live", "k_w"),
        ("live", "user"),
        ("live", "user_alice"),
        ("live", "override.k"),
        ("other", "k_v"),
        ("other", "override.k"),
    ] {
        assert!(has_series(&text, domain, rule), "{domain} {rule}:\n{text}");
    }

    let rules = Arc::new(ArcSwap::from_pointee(set));
    let thread = watch(
        dir.clone(),
        LoadOptions::default(),
        metrics.clone(),
        &rules,
        seen,
        Duration::from_millis(20),
        |_| {},
    )
    .expect("watcher");

    // k=w and the detailed rule go: so do their series and the detailed values'.
    write(&dir, "live.yaml", &file(8));
    wait_for(&rules, Some(8));
    let text = render(&registry);
    for (domain, rule, kept) in [
        ("live", "k_v", true),
        ("live", "k_w", false),
        ("live", "user", false),
        ("live", "user_alice", false),
        ("live", "override.k", true),
        ("other", "k_v", true),
        ("other", "override.k", true),
    ] {
        assert_eq!(
            has_series(&text, domain, rule),
            kept,
            "{domain} {rule} after the reload:\n{text}"
        );
    }
    // The kept rule keeps its count, and the new set's rule counts on it.
    rules
        .load()
        .domain("live")
        .and_then(|d| d.find([("k", "v")]))
        .expect("k=v in force")
        .counters
        .total_hits
        .inc();
    let text = render(&registry);
    let counted = |text: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("envoy_total_hits_total")
                    && l.contains("rule=\"k_v\"")
                    && l.contains("\"live\"")
            })
            .map(str::to_owned)
    };
    assert_eq!(
        counted(&text).as_deref(),
        Some("envoy_total_hits_total{domain=\"live\",rule=\"k_v\"} 5")
    );

    // The whole domain goes: every one of its series, its descriptors' own limits
    // with them; the other domain's stay.
    std::fs::remove_file(dir.join("live.yaml")).expect("remove");
    wait_for(&rules, None);
    let text = render(&registry);
    assert!(!text.contains("domain=\"live\""), "{text}");
    assert!(has_series(&text, "other", "k_v"), "{text}");
    assert!(has_series(&text, "other", "override.k"), "{text}");

    drop(rules);
    thread
        .join()
        .expect("the watcher ends once the rules are dropped");
    let _ = std::fs::remove_dir_all(&dir);
}
