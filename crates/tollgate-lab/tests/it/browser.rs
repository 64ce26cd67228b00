//! `index.html` in a real browser: headless Chromium opens the page from disk,
//! takes a screenshot, and the screenshot must show a page, not a blank.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tollgate_lab::WriteOptions;

use crate::common::{default_lab, scratch_dir};

/// The first Chromium on `PATH`.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in [
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Runs Chromium headless on `page`, writing a `width` x `height` screenshot.
fn screenshot(browser: &Path, page: &Path, shot: &Path, width: u32, height: u32) {
    let profile = scratch_dir("chromium-profile");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            assert!(status.success(), "chromium failed: {status}\n{stderr}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium took more than two minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_page_opens_in_headless_chromium_and_is_not_blank() {
    let Some(browser) = chromium() else {
        eprintln!(
            "SKIPPED the_page_opens_in_headless_chromium_and_is_not_blank: no chromium on PATH \
             (install it with `apt-get install -y chromium`; .ci/run does)"
        );
        return;
    };
    let dir = scratch_dir("browser");
    tollgate_lab::write(default_lab(), &dir, WriteOptions::default()).expect("write");
    let page = dir
        .join("index.html")
        .canonicalize()
        .expect("absolute path");
    let shot = dir.join("screenshot.png");
    let (width, height) = (1200, 2400);
    screenshot(&browser, &page, &shot, width, height);

    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&shot).expect("a screenshot was written"),
    ));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    assert_eq!((info.width, info.height), (width, height));
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let pixels = buf[..info.buffer_size()].chunks(channels);
    let mut ink = 0usize;
    let mut colours = std::collections::HashSet::new();
    let mut total = 0usize;
    for p in pixels {
        total += 1;
        if p[0] < 230 || p[1] < 230 || p[2] < 230 {
            ink += 1;
        }
        colours.insert((p[0] >> 4, p[1] >> 4, p[2] >> 4));
    }
    let share = ink as f64 / total as f64;
    // Text, tables and the first charts: a few percent of the page at least, and
    // the palette's colours, not one flat shade.
    assert!(
        share > 0.02,
        "only {:.2}% of the page is drawn",
        share * 100.0
    );
    assert!(colours.len() > 20, "{} colours", colours.len());
    // Okabe-Ito blue (sliding_window_log) appears: the charts or swatches rendered.
    let blue = buf[..info.buffer_size()]
        .chunks(channels)
        .any(|p| p[0] < 30 && (100..130).contains(&p[1]) && (160..195).contains(&p[2]));
    assert!(blue, "no sliding_window_log blue on the page");
}
