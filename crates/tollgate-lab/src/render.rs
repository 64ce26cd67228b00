//! `report.md` and `index.html`: the same tables; the page has the charts inline.

use std::fmt::Write as _;

use tollgate::Algorithm;

use crate::chart::colour;
use crate::report::{AlgorithmResult, Report, ScenarioResult, Timings};

/// A table: header cells and rows of cells, as plain text.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// A ratio with three decimals.
fn fixed3(x: f64) -> String {
    format!("{x:.3}")
}

/// A duration in the unit that reads best.
pub fn duration(ns: u64) -> String {
    if ns == 0 {
        "0".to_owned()
    } else if ns >= 1_000_000_000 {
        format!("{:.2} s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else {
        format!("{:.1} µs", ns as f64 / 1e3)
    }
}

fn scenario_table(s: &ScenarioResult, period: &str, timings: Option<&Timings>) -> Table {
    let grouped = s.results.first().is_some_and(|r| r.groups.len() > 1);
    let mut header: Vec<String> = [
        "algorithm",
        "admitted / offered",
        &format!("admitted per {period}"),
        "burst factor",
        "first denial",
        "delay mean / p99",
        "min spacing",
        "state bytes / key",
    ]
    .iter()
    .map(|h| (*h).to_owned())
    .collect();
    if grouped {
        header.insert(2, "per group (admitted / offered)".to_owned());
    }
    if s.live.is_some() {
        header.push("failed".to_owned());
        header.push("predicted: admitted / burst factor".to_owned());
    }
    if timings.is_some() {
        header.push(if s.live.is_some() {
            "mean round trip, µs (live)".to_owned()
        } else {
            "ns / decision (this machine)".to_owned()
        });
    }
    let rows = s
        .results
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let mut row = vec![
                r.algorithm.clone(),
                format!(
                    "{} / {} ({})",
                    r.admitted,
                    r.offered,
                    fixed3(r.admitted_ratio)
                ),
                format!("{:.1}", r.admitted_per_period),
                fixed3(r.burst_factor),
                r.first_denial_ns.map_or("never".to_owned(), duration),
                match (r.delay_mean_ns, r.delay_p99_ns) {
                    (Some(mean), Some(p99)) => format!("{} / {}", duration(mean), duration(p99)),
                    _ => "-".to_owned(),
                },
                r.min_spacing_ns.map_or("-".to_owned(), duration),
                r.state_bytes_per_key.to_string(),
            ];
            if grouped {
                row.insert(2, groups(r));
            }
            if let Some(live) = &s.live {
                row.push(r.failed.unwrap_or(0).to_string());
                row.push(live.predicted.get(k).map_or("-".to_owned(), |p| {
                    format!("{} / {}", p.admitted, fixed3(p.burst_factor))
                }));
            }
            if let Some(t) = timings {
                let live = s.live.is_some();
                row.push(t.get(&s.name, &r.algorithm).map_or("-".to_owned(), |ns| {
                    if live {
                        format!("{:.0}", ns / 1e3)
                    } else {
                        format!("{ns:.0}")
                    }
                }));
            }
            row
        })
        .collect();
    Table { header, rows }
}

fn groups(r: &AlgorithmResult) -> String {
    r.groups
        .iter()
        .map(|g| format!("{}: {} / {}", g.group, g.admitted, g.offered))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Scenarios down, algorithms across, one figure per cell.
fn matrix(report: &Report, figure: impl Fn(&AlgorithmResult) -> String) -> Table {
    let mut header = vec!["scenario".to_owned()];
    header.extend(Algorithm::ALL.iter().map(|a| a.name().to_owned()));
    let rows = report
        .scenarios
        .iter()
        .map(|s| {
            let mut row = vec![s.name.clone()];
            row.extend(s.results.iter().map(&figure));
            row
        })
        .collect();
    Table { header, rows }
}

/// Sentences with the figures that matter most, for the scenarios that were run.
pub fn highlights(report: &Report) -> Vec<String> {
    let mut out = Vec::new();
    let get = |s: &str, a: Algorithm| report.scenario(s).and_then(|s| s.result(a));
    let c = &report.config;
    if let (Some(fw), Some(log)) = (
        get("boundary_attack", Algorithm::FixedWindow),
        get("boundary_attack", Algorithm::SlidingWindowLog),
    ) {
        out.push(format!(
            "Boundary attack: fixed_window let {} requests through within a moment \
             (burst factor {}); sliding_window_log let {} (burst factor {}).",
            fw.max_in_window,
            fixed3(fw.burst_factor),
            log.max_in_window,
            fixed3(log.burst_factor)
        ));
    }
    if let (Some(tb), Some(lb)) = (
        get("steady_overload", Algorithm::TokenBucket),
        get("steady_overload", Algorithm::LeakyBucket),
    ) {
        out.push(format!(
            "Steady overload: token_bucket and gcra admit a full bucket and then the \
             refill, up to {} in one period (burst factor {}); leaky_bucket admits as \
             many but serves them one every T, never more than {} per {} (burst factor \
             {}), at a mean delay of {}.",
            tb.max_in_window,
            fixed3(tb.burst_factor),
            lb.max_in_window,
            c.period,
            fixed3(lb.burst_factor),
            lb.delay_mean_ns.map_or("-".to_owned(), duration)
        ));
    }
    if let (Some(swc), Some(log)) = (
        get("poisson_1x", Algorithm::SlidingWindowCounter),
        get("poisson_1x", Algorithm::SlidingWindowLog),
    ) {
        let diff = (swc.admitted as f64 - log.admitted as f64) / (log.admitted.max(1) as f64);
        out.push(format!(
            "Poisson traffic at the limit: sliding_window_counter admitted {} against the \
             exact log's {} ({:+.1}%), with a burst factor of {}.",
            swc.admitted,
            log.admitted,
            diff * 100.0,
            fixed3(swc.burst_factor)
        ));
    }
    if let (Some(naive), Some(shared)) = (
        get("fleet_naive", Algorithm::SlidingWindowLog),
        get("fleet_shared", Algorithm::SlidingWindowLog),
    ) {
        out.push(format!(
            "A fleet of {} nodes: with a limiter per node, one client got {} requests in \
             one period (burst factor {}); sharing one store, {} (burst factor {}).",
            c.nodes,
            naive.max_in_window,
            fixed3(naive.burst_factor),
            shared.max_in_window,
            fixed3(shared.burst_factor)
        ));
    }
    if let (Some(race), Some(atomic)) = (
        get("race_nonatomic", Algorithm::TokenBucket),
        get("race_atomic", Algorithm::TokenBucket),
    ) {
        out.push(format!(
            "Simultaneous requests: reading then writing back the state (the original \
             playground's Redis GET/SET) admitted {} of {} with token_bucket, up to {} in \
             one period; deciding atomically admitted {}, up to {}.",
            race.admitted, race.offered, race.max_in_window, atomic.admitted, atomic.max_in_window
        ));
    }
    out
}

const MEASURES: &str = "\
- **admitted / offered**: requests let through, of those sent.
- **admitted per W**: admitted requests per period, on average over the scenario.
- **burst factor**: the most requests of one client served within any interval of \
length W (over every node), divided by L. 1.0 means the limit was never exceeded.
- **first denial**: time from the first request to the first refused one.
- **delay mean / p99**: leaky_bucket only: how long admitted requests wait before \
they are served (they are delayed, not refused, until the queue is full).
- **min spacing**: the smallest gap between two served requests of one client.
- **state bytes / key**: the most memory one key's state took (sliding_window_log \
grows with the requests in its window; the memory store adds a 64-byte entry per key).";

fn config_line(report: &Report) -> String {
    let c = &report.config;
    if let Some(live) = &report.live {
        return format!(
            "LIVE RUN, not reproducible: every request was a POST /v1/check to {} ({} in \
             flight at most, keys tagged lab-{}-), sent in real time with the inline policy \
             L = {} requests per W = {} (burst B = {} for token_bucket, gcra and \
             leaky_bucket; T = W / L = {}); seed {}; the fleet scenarios have {} node(s). \
             Figures are measured on the instants the requests were sent; the server \
             decides each one up to a round trip later, so a burst factor a little above \
             the prediction is timing, not the limit giving way. \"predicted\" is the \
             simulator on the same traffic. {} requests, {} failed{}; {:.1} s in all. \
             Charts count requests per {} bucket.",
            live.targets.join(", "),
            live.in_flight,
            live.tag,
            c.limit,
            c.period,
            c.burst,
            duration(c.emission_interval_ns),
            c.seed,
            c.nodes,
            live.requests,
            live.failed,
            if live.failures.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    live.failures
                        .iter()
                        .map(|f| format!("{}: {}", f.kind, f.count))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            live.wall_seconds,
            duration(c.bucket_ns)
        );
    }
    format!(
        "Every algorithm ran under the same policy: L = {} requests per W = {} (burst B = {} \
         for token_bucket, gcra and leaky_bucket; T = W / L = {}), in virtual time, with \
         seed {}; the fleet scenarios have {} node(s). Charts count requests per {} bucket.",
        c.limit,
        c.period,
        c.burst,
        duration(c.emission_interval_ns),
        c.seed,
        c.nodes,
        duration(c.bucket_ns)
    )
}

const LIVE_TIMINGS_NOTE: &str = "The mean round trip is the time from sending a \
POST /v1/check to reading its answer, network and server included, measured in this run: \
machine-dependent, not reproducible (see timings.json).";

fn timings_note(report: &Report) -> &'static str {
    if report.live.is_some() {
        LIVE_TIMINGS_NOTE
    } else {
        TIMINGS_NOTE
    }
}

fn title(report: &Report) -> &'static str {
    if report.live.is_some() {
        "Tollgate lab report (live)"
    } else {
        "Tollgate lab report"
    }
}

/// Lines about a live run that the tables do not show: skipped scenarios and the
/// network's figures per scenario.
fn live_notes(report: &Report) -> Vec<String> {
    let Some(live) = &report.live else {
        return Vec::new();
    };
    let mut out: Vec<String> = live
        .skipped
        .iter()
        .map(|s| format!("Not run live: {s}."))
        .collect();
    for s in &report.scenarios {
        if let Some(l) = &s.live {
            out.push(format!(
                "{}: round trip p99 {}, max {}; sent up to {} late; {} failed.",
                s.name,
                duration(l.p99_round_trip_ns),
                duration(l.max_round_trip_ns),
                duration(l.max_lateness_ns),
                l.failed
            ));
        }
    }
    out
}

const TIMINGS_NOTE: &str = "ns / decision is wall-clock time measured on the machine that \
ran the lab, in this run (a manual-clock memory store, one thread): machine-dependent, \
not reproducible, and kept out of report.json (see timings.json).";

/// `report.md`.
pub fn markdown(report: &Report, timings: Option<&Timings>) -> String {
    let mut out = String::new();
    let md_table = |out: &mut String, t: &Table| {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        out.push_str(&line(&t.header));
        out.push_str(&line(&vec!["---".to_owned(); t.header.len()]));
        for row in &t.rows {
            out.push_str(&line(row));
        }
        out.push('\n');
    };
    let _ = writeln!(out, "# {}\n", title(report));
    let _ = writeln!(out, "{}\n", config_line(report));
    let notes = live_notes(report);
    if !notes.is_empty() {
        let _ = writeln!(out, "## The live run\n");
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
        out.push('\n');
    }
    let hl = highlights(report);
    if !hl.is_empty() {
        let _ = writeln!(out, "## Highlights\n");
        for h in hl {
            let _ = writeln!(out, "- {h}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "## Burst factor (1.0 = never above the limit)\n");
    md_table(&mut out, &matrix(report, |r| fixed3(r.burst_factor)));
    let _ = writeln!(out, "## Admitted / offered\n");
    md_table(&mut out, &matrix(report, |r| fixed3(r.admitted_ratio)));
    let _ = writeln!(out, "## What the columns mean\n\n{MEASURES}\n");
    if timings.is_some() {
        let _ = writeln!(out, "{}\n", timings_note(report));
    }
    for s in &report.scenarios {
        let _ = writeln!(out, "## {}: {}\n", s.name, s.title);
        let _ = writeln!(out, "{}\n", s.description);
        let _ = writeln!(out, "![{}]({})\n", s.title, s.chart);
        md_table(&mut out, &scenario_table(s, &report.config.period, timings));
    }
    out
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html_table(out: &mut String, t: &Table, swatches: bool) {
    out.push_str("<table>\n<thead><tr>");
    for h in &t.header {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in &t.rows {
        out.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let swatch = swatches && i == 0;
            let index = Algorithm::ALL.iter().position(|a| a.name() == cell);
            match (swatch, index) {
                (true, Some(k)) => {
                    let c = colour(k);
                    let _ = write!(
                        out,
                        "<td><span class=\"sw\" style=\"background:rgb({},{},{})\"></span>{}</td>",
                        c.0,
                        c.1,
                        c.2,
                        esc(cell)
                    );
                }
                _ => {
                    let _ = write!(out, "<td>{}</td>", esc(cell));
                }
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;\
max-width:1100px;padding:0 1rem;color:#222;background:#fff;line-height:1.45}\
h1{font-size:1.9rem;margin-bottom:.3rem}h2{margin-top:2.5rem;border-bottom:1px solid #ddd;\
padding-bottom:.2rem}table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}\
th,td{border:1px solid #ccc;padding:.3rem .55rem;text-align:right}\
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}\
.sw{display:inline-block;width:.9em;height:.9em;margin-right:.4em;vertical-align:-.1em;\
border-radius:2px}figure{margin:1rem 0}figure svg{max-width:100%;height:auto;\
border:1px solid #eee}.note{color:#555;font-size:.9rem}ul.hl li{margin:.3rem 0}\
nav a{margin-right:.8rem}";

/// `index.html`: one page, styles and charts inline, no scripts, no external files.
pub fn html(report: &Report, timings: Option<&Timings>, charts: &[String]) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(out, "<title>{}</title>", title(report));
    let _ = writeln!(out, "<style>{STYLE}</style>\n</head>\n<body>");
    let _ = writeln!(out, "<h1>{}</h1>", title(report));
    let _ = writeln!(out, "<p>{}</p>", esc(&config_line(report)));
    let notes = live_notes(report);
    if !notes.is_empty() {
        out.push_str("<h2>The live run</h2>\n<ul>\n");
        for n in notes {
            let _ = writeln!(out, "<li>{}</li>", esc(&n));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("<nav>");
    for s in &report.scenarios {
        let _ = write!(out, "<a href=\"#{0}\">{0}</a> ", esc(&s.name));
    }
    out.push_str("</nav>\n");
    let hl = highlights(report);
    if !hl.is_empty() {
        out.push_str("<h2>Highlights</h2>\n<ul class=\"hl\">\n");
        for h in hl {
            let _ = writeln!(out, "<li>{}</li>", esc(&h));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("<h2>Burst factor (1.0 = never above the limit)</h2>\n");
    html_table(&mut out, &matrix(report, |r| fixed3(r.burst_factor)), false);
    out.push_str("<h2>Admitted / offered</h2>\n");
    html_table(
        &mut out,
        &matrix(report, |r| fixed3(r.admitted_ratio)),
        false,
    );
    out.push_str("<h2>What the columns mean</h2>\n<ul>\n");
    for line in MEASURES.lines() {
        let line = line.trim_start_matches("- ");
        let (name, rest) = line
            .strip_prefix("**")
            .and_then(|l| l.split_once("**"))
            .unwrap_or(("", line));
        let _ = writeln!(out, "<li><b>{}</b>{}</li>", esc(name), esc(rest));
    }
    out.push_str("</ul>\n");
    if timings.is_some() {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", esc(timings_note(report)));
    }
    for (s, svg) in report.scenarios.iter().zip(charts) {
        let _ = writeln!(
            out,
            "<h2 id=\"{}\">{}: {}</h2>",
            esc(&s.name),
            esc(&s.name),
            esc(&s.title)
        );
        let _ = writeln!(out, "<p>{}</p>", esc(&s.description));
        let _ = writeln!(out, "<figure>\n{svg}\n</figure>");
        html_table(
            &mut out,
            &scenario_table(s, &report.config.period, timings),
            true,
        );
    }
    out.push_str("</body>\n</html>\n");
    out
}
