//! Reloading the configuration directory when its files change.
//!
//! The directory is polled (every [`DEFAULT_INTERVAL`] by default): its files' contents
//! are read and compared with the last ones seen. Polling rather than file
//! notifications, because a Kubernetes ConfigMap changes by swapping a `..data`
//! symlink, which inotify watches on the files do not see, and because it works
//! the same on every file system (network and overlay ones included); reading a
//! few small files twice a second costs nothing next to serving requests.
//!
//! A changed directory is compiled whole and swapped in with one atomic pointer
//! store, so a request sees either the old rules or the new ones, never a mix, and
//! none waits. An invalid file (or one caught half written) is logged with its file
//! and reason, and the previous rules stay in force; the same contents are not
//! reported twice.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{self, ConfigError, LoadOptions, RuleSet};
use crate::metrics::EnvoyMetrics;

/// How often the directory is read.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);

/// The files of a directory as last read.
pub type Snapshot = Vec<(String, Vec<u8>)>;

/// Reads and compiles `dir` for start-up: the rules and the snapshot they came from.
pub fn initial(
    dir: &Path,
    options: &LoadOptions,
    metrics: &EnvoyMetrics,
) -> Result<(RuleSet, Snapshot), ConfigError> {
    let files = config::read_dir(dir)?;
    let set = config::compile(&files, options, metrics)?;
    metrics.load(true);
    Ok((set, files))
}

/// Starts a thread that polls `dir` every `interval` and swaps new rules into
/// `rules`; it ends once every other holder of `rules` has dropped it. Just before
/// each swap it calls `on_swap` with the new rules (a front end's own metrics of
/// the rules follow them this way).
pub fn watch(
    dir: PathBuf,
    options: LoadOptions,
    metrics: EnvoyMetrics,
    rules: &Arc<ArcSwap<RuleSet>>,
    seen: Snapshot,
    interval: Duration,
    on_swap: impl Fn(&RuleSet) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let weak: Weak<ArcSwap<RuleSet>> = Arc::downgrade(rules);
    std::thread::Builder::new()
        .name("envoy-config".to_owned())
        .spawn(move || poll(&dir, &options, &metrics, &weak, seen, interval, &on_swap))
}

fn poll(
    dir: &Path,
    options: &LoadOptions,
    metrics: &EnvoyMetrics,
    rules: &Weak<ArcSwap<RuleSet>>,
    mut seen: Snapshot,
    interval: Duration,
    on_swap: &dyn Fn(&RuleSet),
) {
    let mut last_error: Option<String> = None;
    loop {
        std::thread::sleep(interval);
        let Some(rules) = rules.upgrade() else { return };
        let files = match config::read_dir(dir) {
            Ok(files) => files,
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "cannot read the Envoy configuration directory; the previous configuration stays in force");
                    metrics.load(false);
                    last_error = Some(text);
                }
                continue;
            }
        };
        if files == seen {
            continue;
        }
        match config::compile(&files, options, metrics) {
            Ok(set) => {
                let (domains, count) = (set.domain_names().join(","), set.rules());
                // The series of rules the new set no longer has go (before the swap,
                // so that whoever sees the new rules sees their metrics).
                metrics.retain(&set);
                on_swap(&set);
                rules.store(Arc::new(set));
                // Said once the new rules are in force.
                tracing::info!(
                    dir = %dir.display(),
                    domains = %domains,
                    rules = count,
                    "Envoy rate limit configuration reloaded"
                );
                metrics.load(true);
                last_error = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "invalid Envoy rate limit configuration; the previous configuration stays in force");
                // Compiling it may have made series for its rules before failing.
                metrics.retain(&rules.load());
                metrics.load(false);
                last_error = Some(e.to_string());
            }
        }
        seen = files;
    }
}
