//! Shared helpers: the default lab, run once per test binary, and scratch folders.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tollgate_lab::{Lab, LabConfig, Scenario};

/// The whole default lab, run once.
pub fn default_lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(|| tollgate_lab::run(&LabConfig::default(), &Scenario::ALL))
}

/// A lab with other numbers everywhere: a small limit, a short period, three nodes
/// and another seed.
pub fn other_lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(|| {
        let config = LabConfig::new(7, tollgate::Nanos::from_millis(1_500), 3, 42)
            .expect("a valid configuration");
        tollgate_lab::run(&config, &Scenario::ALL)
    })
}

/// More labs at the edges: the smallest limit and period, and a larger limit over
/// a minute with five nodes.
pub fn edge_labs() -> &'static [Lab] {
    static LABS: OnceLock<Vec<Lab>> = OnceLock::new();
    LABS.get_or_init(|| {
        [
            (1, tollgate::Nanos::from_millis(100), 2, 5),
            (250, tollgate::Nanos::from_secs(60), 5, 99),
        ]
        .into_iter()
        .map(|(limit, period, nodes, seed)| {
            let config = LabConfig::new(limit, period, nodes, seed).expect("valid");
            tollgate_lab::run(&config, &Scenario::ALL)
        })
        .collect()
    })
}

/// A fresh, empty folder under Cargo's scratch directory.
pub fn scratch_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "tollgate-lab-it-{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}
