//! One SVG chart per scenario, drawn with plotters' SVG backend.
//!
//! Two panels share the time axis: above, admitted requests per bucket (`W / 10`)
//! for each algorithm, with the offered traffic in grey; below, the cumulative
//! admitted requests against the ideal line `L / W`. The legend has a column of
//! its own on the right, so it never hides a line.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::config::human_duration;
use crate::report::{ConfigReport, ScenarioResult};

/// Chart size in pixels.
const WIDTH: u32 = 1000;
const HEIGHT: u32 = 720;
/// The legend column's width.
const LEGEND: u32 = 230;

/// The algorithms' colours, in the order of `Algorithm::ALL`: the Okabe-Ito
/// palette, told apart by colour-blind readers too.
const COLOURS: [RGBColor; 6] = [
    RGBColor(213, 94, 0),    // fixed_window: vermillion
    RGBColor(0, 114, 178),   // sliding_window_log: blue
    RGBColor(86, 180, 233),  // sliding_window_counter: sky blue
    RGBColor(230, 159, 0),   // token_bucket: orange
    RGBColor(204, 121, 167), // gcra: reddish purple
    RGBColor(0, 158, 115),   // leaky_bucket: bluish green
];
/// Line widths, in the order of `Algorithm::ALL`. Algorithms often admit exactly
/// the same (gcra and token_bucket always do; fixed_window and sliding_window_log
/// often): the lines are drawn widest first, so coinciding lines show as nested
/// bands of their colours and none hides another.
const WIDTHS: [u32; 6] = [10, 6, 2, 8, 2, 4];
const OFFERED: RGBColor = RGBColor(110, 110, 110);
const IDEAL: RGBColor = RGBColor(0, 0, 0);

/// The colour of the algorithm at `index` in `Algorithm::ALL` (for the HTML page's
/// tables too).
pub fn colour(index: usize) -> RGBColor {
    COLOURS[index % COLOURS.len()]
}

/// Indices of the `n` algorithms, widest line first.
fn draw_order(n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(WIDTHS[i % WIDTHS.len()]));
    order
}

/// Axis numbers: whole when the axis is long enough, one decimal otherwise.
fn tick(v: &f64, span: f64) -> String {
    if span >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The SVG text of `scenario`'s chart.
pub fn draw(config: &ConfigReport, scenario: &ScenarioResult) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root
            .titled(&scenario.title, ("sans-serif", 22))
            .map_err(err)?;
        let (plots, legend) = root.split_horizontally(WIDTH - LEGEND);
        let (upper, lower) = plots.split_vertically((HEIGHT - 30) / 2);
        per_bucket(config, scenario, &upper)?;
        cumulative(config, scenario, &lower)?;
        draw_legend(config, scenario, &legend)?;
        root.present().map_err(err)?;
    }
    // A <title> element names the chart for screen readers and browsers' tooltips.
    let title = format!("<title>{}</title>", escape(&scenario.title));
    Ok(match svg.find('>') {
        Some(end) => format!("{}{title}{}", &svg[..=end], &svg[end + 1..]),
        None => svg,
    })
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn per_bucket(
    config: &ConfigReport,
    scenario: &ScenarioResult,
    area: &DrawingArea<SVGBackend<'_>, Shift>,
) -> Result<(), String> {
    let bucket = config.bucket_ns;
    let n = scenario.offered_series.len();
    let x_end = secs(bucket * n as u64);
    let admitted_max = scenario
        .results
        .iter()
        .flat_map(|r| r.admitted_series.iter().copied())
        .max()
        .unwrap_or(0);
    // Room above the highest admitted bucket; the offered line is cut at the top
    // when it would squash the admitted ones.
    let y_end = ((admitted_max.max(1) as f64) * 1.5).ceil();
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "Admitted per {} ({})",
                human_duration(tollgate::Nanos::new(bucket)),
                scenario.charted
            ),
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_end, 0f64..y_end)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc(format!(
            "requests per {}",
            human_duration(tollgate::Nanos::new(bucket))
        ))
        .x_label_formatter(&|v| tick(v, x_end))
        .y_label_formatter(&|v| tick(v, y_end))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    let steps = |series: &[u64], cap: f64| -> Vec<(f64, f64)> {
        let mut points = Vec::with_capacity(series.len() * 2);
        for (i, &v) in series.iter().enumerate() {
            let v = (v as f64).min(cap);
            points.push((secs(bucket * i as u64), v));
            points.push((secs(bucket * (i as u64 + 1)), v));
        }
        points
    };
    for i in draw_order(scenario.results.len()) {
        let r = &scenario.results[i];
        chart
            .draw_series(LineSeries::new(
                steps(&r.admitted_series, y_end),
                colour(i).stroke_width(WIDTHS[i % WIDTHS.len()]),
            ))
            .map_err(err)?;
    }
    // The offered load last, thin and dashed, so it shows over the admitted lines.
    chart
        .draw_series(DashedLineSeries::new(
            steps(&scenario.offered_series, y_end),
            6,
            4,
            OFFERED.stroke_width(2),
        ))
        .map_err(err)?;
    Ok(())
}

fn cumulative(
    config: &ConfigReport,
    scenario: &ScenarioResult,
    area: &DrawingArea<SVGBackend<'_>, Shift>,
) -> Result<(), String> {
    let bucket = config.bucket_ns;
    let n = scenario.offered_series.len();
    let x_end = secs(bucket * n as u64);
    let start = secs(scenario.first_arrival_ns);
    let ideal_end = f64::from(config.limit) * (x_end - start).max(0.0) / secs(config.period_ns);
    let predicted = scenario.live.as_ref().map(|l| l.predicted.as_slice());
    let top = scenario
        .results
        .iter()
        .chain(predicted.unwrap_or_default())
        .map(|r| r.admitted_series.iter().sum::<u64>())
        .max()
        .unwrap_or(0) as f64;
    let y_end = (top.max(ideal_end).max(1.0) * 1.08).ceil();
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "Cumulative admitted, against the ideal {} per {} from the first request",
                config.limit, config.period
            ),
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_end, 0f64..y_end)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("requests admitted")
        .x_label_formatter(&|v| tick(v, x_end))
        .y_label_formatter(&|v| tick(v, y_end))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(DashedLineSeries::new(
            [(start, 0.0), (x_end, ideal_end)],
            8,
            6,
            IDEAL.stroke_width(2),
        ))
        .map_err(err)?;
    let running_total = |series: &[u64]| {
        let mut total = 0;
        let mut points = vec![(0.0, 0.0)];
        for (j, &v) in series.iter().enumerate() {
            total += v;
            points.push((secs(bucket * (j as u64 + 1)), total as f64));
        }
        points
    };
    for i in draw_order(scenario.results.len()) {
        let r = &scenario.results[i];
        chart
            .draw_series(LineSeries::new(
                running_total(&r.admitted_series),
                colour(i).stroke_width(WIDTHS[i % WIDTHS.len()]),
            ))
            .map_err(err)?;
    }
    // A live run: the simulator's prediction for the same traffic, thin and
    // dashed over the measured lines, so a gap between them shows.
    for (i, p) in predicted.unwrap_or_default().iter().enumerate() {
        chart
            .draw_series(DashedLineSeries::new(
                running_total(&p.admitted_series),
                5,
                4,
                colour(i).stroke_width(2),
            ))
            .map_err(err)?;
    }
    Ok(())
}

fn draw_legend(
    config: &ConfigReport,
    scenario: &ScenarioResult,
    area: &DrawingArea<SVGBackend<'_>, Shift>,
) -> Result<(), String> {
    let text = ("sans-serif", 15).into_font().color(&BLACK);
    let small = ("sans-serif", 12).into_font().color(&BLACK);
    let x = 12;
    let mut y = 40;
    area.draw(&Text::new("Legend", (x, y), ("sans-serif", 17).into_font()))
        .map_err(err)?;
    y += 30;
    let gcra_same = scenario
        .results
        .get(3)
        .zip(scenario.results.get(4))
        .is_some_and(|(tb, g)| tb.admitted_series == g.admitted_series);
    for (i, r) in scenario.results.iter().enumerate() {
        area.draw(&PathElement::new(
            [(x, y + 8), (x + 30, y + 8)],
            colour(i).stroke_width(WIDTHS[i % WIDTHS.len()].min(6)),
        ))
        .map_err(err)?;
        area.draw(&Text::new(r.algorithm.clone(), (x + 40, y), text.clone()))
            .map_err(err)?;
        y += 24;
        if i == 4 && gcra_same {
            area.draw(&Text::new(
                "(gcra = token_bucket: lines overlap)",
                (x + 40, y - 4),
                small.clone(),
            ))
            .map_err(err)?;
            y += 18;
        }
    }
    for (a, b) in [(x, x + 8), (x + 11, x + 19), (x + 22, x + 30)] {
        area.draw(&PathElement::new(
            [(a, y + 8), (b, y + 8)],
            OFFERED.stroke_width(2),
        ))
        .map_err(err)?;
    }
    area.draw(&Text::new(
        "offered (upper panel)",
        (x + 40, y),
        text.clone(),
    ))
    .map_err(err)?;
    y += 24;
    area.draw(&PathElement::new(
        [(x, y + 8), (x + 12, y + 8)],
        IDEAL.stroke_width(2),
    ))
    .map_err(err)?;
    area.draw(&PathElement::new(
        [(x + 18, y + 8), (x + 30, y + 8)],
        IDEAL.stroke_width(2),
    ))
    .map_err(err)?;
    area.draw(&Text::new(
        format!("ideal: {} per {}", config.limit, config.period),
        (x + 40, y),
        text.clone(),
    ))
    .map_err(err)?;
    if scenario.live.is_some() {
        y += 24;
        for (a, b) in [(x, x + 6), (x + 10, x + 16), (x + 20, x + 26)] {
            area.draw(&PathElement::new(
                [(a, y + 8), (b, y + 8)],
                BLACK.stroke_width(2),
            ))
            .map_err(err)?;
        }
        area.draw(&Text::new(
            "predicted (lower panel,",
            (x + 40, y),
            text.clone(),
        ))
        .map_err(err)?;
        y += 18;
        area.draw(&Text::new("algorithm's colour)", (x + 40, y), text.clone()))
            .map_err(err)?;
        y += 24;
        area.draw(&Text::new(
            "LIVE: solid lines measured",
            (x, y),
            small.clone(),
        ))
        .map_err(err)?;
    }
    y += 40;
    let notes = [
        format!(
            "L = {}, W = {}, B = {}",
            config.limit, config.period, config.burst
        ),
        format!(
            "T = W / L = {}",
            human_duration(tollgate::Nanos::new(config.emission_interval_ns))
        ),
        "leaky_bucket counted when".to_owned(),
        "served (after its delay)".to_owned(),
        "Lines that coincide show as".to_owned(),
        "nested bands of their colours".to_owned(),
    ];
    for note in notes {
        area.draw(&Text::new(note, (x, y), small.clone()))
            .map_err(err)?;
        y += 18;
    }
    Ok(())
}
