//! The files the lab writes: reproducible, well-formed, readable charts, and a page
//! that needs nothing from the network.

use std::collections::BTreeMap;
use std::path::Path;

use tollgate::Algorithm;
use tollgate_lab::{LabConfig, Scenario, WriteOptions};

use crate::common::{default_lab, scratch_dir};

/// Every file of a folder, by name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read the folder")
        .map(|e| {
            let e = e.expect("an entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read a file"),
            )
        })
        .collect()
}

#[test]
fn the_same_seed_gives_a_byte_identical_report_json() {
    let config = LabConfig::default();
    let a = scratch_dir("same-a");
    let b = scratch_dir("same-b");
    // Two separate runs, not one run written twice.
    let first = tollgate_lab::run(&config, &Scenario::ALL);
    tollgate_lab::write(&first, &a, WriteOptions::default()).expect("write");
    let second = tollgate_lab::run(&config, &Scenario::ALL);
    tollgate_lab::write(&second, &b, WriteOptions::default()).expect("write");
    let (fa, fb) = (files(&a), files(&b));
    assert_eq!(fa.get("report.json"), fb.get("report.json"));
    assert!(fa.contains_key("timings.json"));
    // The timings are the only difference allowed: without them, every file is the same.
    let c = scratch_dir("same-c");
    let d = scratch_dir("same-d");
    let no_timings = WriteOptions { timings: false };
    tollgate_lab::write(&first, &c, no_timings).expect("write");
    tollgate_lab::write(&tollgate_lab::run(&config, &Scenario::ALL), &d, no_timings)
        .expect("write");
    let (fc, fd) = (files(&c), files(&d));
    assert!(!fc.contains_key("timings.json"));
    assert_eq!(fc, fd);
    // Another seed gives another report.
    let other = LabConfig::new(100, config.period(), 4, 2).expect("valid");
    let e = scratch_dir("same-e");
    tollgate_lab::write(&tollgate_lab::run(&other, &Scenario::ALL), &e, no_timings).expect("write");
    assert_ne!(files(&e).get("report.json"), fc.get("report.json"));
}

#[test]
fn the_folder_holds_every_file() {
    let dir = scratch_dir("folder");
    let written = tollgate_lab::write(default_lab(), &dir, WriteOptions::default()).expect("write");
    let names = files(&dir);
    assert_eq!(written.len(), names.len());
    for s in Scenario::ALL {
        assert!(
            names.contains_key(&format!("{}.svg", s.name())),
            "{}",
            s.name()
        );
    }
    for f in ["index.html", "report.md", "report.json", "timings.json"] {
        assert!(names.contains_key(f), "{f}");
    }
    // report.json parses and holds every figure the library reported.
    let json: serde_json::Value =
        serde_json::from_slice(&names["report.json"]).expect("report.json is JSON");
    assert_eq!(json["config"]["limit"], 100);
    assert_eq!(json["scenarios"].as_array().map(Vec::len), Some(12));
    let boundary = &json["scenarios"][2];
    assert_eq!(boundary["name"], "boundary_attack");
    assert_eq!(boundary["results"][0]["algorithm"], "fixed_window");
    assert_eq!(boundary["results"][0]["burst_factor"], 2.0);
    assert!(!String::from_utf8_lossy(&names["report.json"]).contains("ns_per_decision"));
    let timings: serde_json::Value =
        serde_json::from_slice(&names["timings.json"]).expect("timings.json is JSON");
    assert_eq!(timings["entries"].as_array().map(Vec::len), Some(72));
    // report.md: the tables and the charts.
    let md = String::from_utf8(names["report.md"].clone()).expect("UTF-8");
    assert!(md.contains("| fixed_window | 200 / 200 (1.000) |"), "{md}");
    for s in Scenario::ALL {
        assert!(md.contains(&format!("]({}.svg)", s.name())));
    }
}

fn texts(doc: &roxmltree::Document<'_>) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_owned())
        .collect()
}

#[test]
fn every_svg_parses_and_has_a_title_axis_labels_and_a_legend() {
    let dir = scratch_dir("svg");
    tollgate_lab::write(default_lab(), &dir, WriteOptions::default()).expect("write");
    for s in Scenario::ALL {
        let text = std::fs::read_to_string(dir.join(format!("{}.svg", s.name()))).expect("read");
        let doc = roxmltree::Document::parse(&text)
            .unwrap_or_else(|e| panic!("{}.svg is not XML: {e}", s.name()));
        let root = doc.root_element();
        assert!(root.has_tag_name("svg"));
        let title = root
            .children()
            .find(|n| n.has_tag_name("title"))
            .and_then(|n| n.text());
        assert_eq!(title, Some(s.title()), "{}", s.name());
        let texts = texts(&doc);
        let has = |t: &str| texts.iter().any(|x| x == t);
        assert!(has(s.title()), "{}: the title is drawn", s.name());
        for axis in ["time (s)", "requests per 1s", "requests admitted"] {
            assert!(has(axis), "{}: axis label {axis:?}", s.name());
        }
        assert!(has("Legend"), "{}", s.name());
        for a in Algorithm::ALL {
            assert!(has(a.name()), "{}: legend entry {a}", s.name());
        }
        assert!(has("ideal: 100 per 10s"), "{}", s.name());
        // Six algorithms in six colours, plus grey for the offered load.
        let strokes: std::collections::BTreeSet<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .filter_map(|n| n.attribute("stroke"))
            .collect();
        assert!(strokes.len() >= 7, "{}: {strokes:?}", s.name());
    }
}

#[test]
fn the_page_is_self_contained() {
    let dir = scratch_dir("html");
    tollgate_lab::write(default_lab(), &dir, WriteOptions::default()).expect("write");
    let html = std::fs::read_to_string(dir.join("index.html")).expect("read");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(!html.to_ascii_lowercase().contains("<script"));
    assert!(!html.contains("<img"));
    assert!(!html.contains("<link"));
    assert!(!html.contains("src="));
    // The only URL is the SVG namespace, which is a name, not a fetch.
    let urls = html.matches("http://").count() + html.matches("https://").count();
    let namespaces = html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count();
    assert_eq!(urls, namespaces);
    assert_eq!(html.matches("<svg").count(), 12);
    for s in Scenario::ALL {
        assert!(html.contains(&format!("id=\"{}\"", s.name())));
    }
}

#[test]
fn writing_into_a_file_fails_with_the_path() {
    let dir = scratch_dir("not-a-folder");
    let file = dir.join("file");
    std::fs::write(&file, b"x").expect("write");
    let lab = tollgate_lab::run(&LabConfig::default(), &[Scenario::Burst]);
    let err = tollgate_lab::write(&lab, &file, WriteOptions::default()).expect_err("a file");
    assert!(err.to_string().starts_with("cannot write \""), "{err}");
}

/// The chart the README shows, `crates/tollgate-lab/charts/boundary_attack.svg`, is
/// the one the lab draws today. After a deliberate change to the charts, refresh it
/// with `TOLLGATE_LAB_BLESS=1 cargo test -p tollgate-lab readme_chart`.
#[test]
fn the_readme_chart_is_current() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/boundary_attack.svg");
    let dir = scratch_dir("readme-chart");
    let lab = tollgate_lab::run(&LabConfig::default(), &[Scenario::BoundaryAttack]);
    tollgate_lab::write(&lab, &dir, WriteOptions { timings: false }).expect("write");
    let drawn = std::fs::read_to_string(dir.join("boundary_attack.svg")).expect("read");
    if std::env::var_os("TOLLGATE_LAB_BLESS").is_some() {
        std::fs::write(&committed, &drawn).expect("bless the chart");
    }
    let kept = std::fs::read_to_string(&committed).unwrap_or_default();
    assert!(
        kept == drawn,
        "{} is out of date: refresh it with TOLLGATE_LAB_BLESS=1 cargo test -p tollgate-lab readme_chart",
        committed.display()
    );
}
