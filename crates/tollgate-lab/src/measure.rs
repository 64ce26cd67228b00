//! The figures: from a run's outcomes to an [`AlgorithmResult`].

use tollgate::{Algorithm, Nanos};

use crate::config::LabConfig;
use crate::report::{AlgorithmResult, GroupResult};
use crate::scenario::Traffic;
use crate::sim::Run;

/// The instants at which the admitted requests of one client were served (arrival
/// plus `leaky_bucket`'s delay), ascending, over every node.
fn served(traffic: &Traffic, run: &Run, client: u32) -> Vec<u64> {
    let mut out: Vec<u64> = traffic
        .arrivals
        .iter()
        .zip(&run.outcomes)
        .filter(|(a, o)| o.allowed && a.client == client)
        .map(|(a, o)| a.at.saturating_add(o.delay).as_u64())
        .collect();
    out.sort_unstable();
    out
}

/// The most instants of `sorted` inside any half-open interval `[s, s + w)`.
pub fn max_in_window(sorted: &[u64], w: u64) -> u64 {
    let mut best = 0;
    let mut lo = 0;
    for (hi, &t) in sorted.iter().enumerate() {
        while sorted[lo].saturating_add(w) <= t {
            lo += 1;
        }
        best = best.max(hi + 1 - lo);
    }
    best as u64
}

/// The `q`-quantile of `sorted` by the nearest-rank method; 0 when empty.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A ratio rounded to 6 decimals, so the report's figures read well and stay
/// identical from run to run.
pub fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        return 0.0;
    }
    (num as f64 / den as f64 * 1e6).round() / 1e6
}

/// Every figure of one algorithm on one scenario; `buckets` is the number of chart
/// buckets of `config.bucket()` each.
pub fn measure(
    config: &LabConfig,
    traffic: &Traffic,
    algorithm: Algorithm,
    run: &Run,
    buckets: usize,
) -> AlgorithmResult {
    let w = config.period().as_u64();
    let l = u64::from(config.limit());
    let offered = traffic.arrivals.len() as u64;
    let admitted = run.outcomes.iter().filter(|o| o.allowed).count() as u64;

    let clients = traffic
        .arrivals
        .iter()
        .map(|a| a.client)
        .max()
        .map_or(0, |c| c + 1);
    let mut max_window = 0;
    let mut min_spacing: Option<u64> = None;
    for client in 0..clients {
        let s = served(traffic, run, client);
        max_window = max_window.max(max_in_window(&s, w));
        for pair in s.windows(2) {
            let gap = pair[1] - pair[0];
            min_spacing = Some(min_spacing.map_or(gap, |m| m.min(gap)));
        }
    }

    let origin = traffic.arrivals.first().map_or(Nanos::ZERO, |a| a.at);
    let first_denial = traffic
        .arrivals
        .iter()
        .zip(&run.outcomes)
        .find(|(_, o)| !o.allowed)
        .map(|(a, _)| a.at.saturating_sub(origin).as_u64());

    let (delay_mean_ns, delay_p99_ns) = if algorithm == Algorithm::LeakyBucket {
        let mut delays: Vec<u64> = run
            .outcomes
            .iter()
            .filter(|o| o.allowed)
            .map(|o| o.delay.as_u64())
            .collect();
        delays.sort_unstable();
        let sum: u128 = delays.iter().map(|&d| u128::from(d)).sum();
        let mean = if delays.is_empty() {
            0
        } else {
            (sum / delays.len() as u128) as u64
        };
        (Some(mean), Some(quantile(&delays, 0.99)))
    } else {
        (None, None)
    };

    let groups = traffic
        .groups
        .iter()
        .enumerate()
        .map(|(g, name)| {
            let mut offered = 0;
            let mut admitted = 0;
            for (a, o) in traffic.arrivals.iter().zip(&run.outcomes) {
                // A client missing from `group_of` is in the first group.
                let group = traffic
                    .group_of
                    .get(a.client as usize)
                    .copied()
                    .unwrap_or(0);
                if group == g {
                    offered += 1;
                    admitted += u64::from(o.allowed);
                }
            }
            GroupResult {
                group: (*name).to_owned(),
                offered,
                admitted,
                admitted_ratio: ratio(admitted, offered),
            }
        })
        .collect();

    AlgorithmResult {
        algorithm: algorithm.name().to_owned(),
        offered,
        admitted,
        admitted_ratio: ratio(admitted, offered),
        admitted_per_period: ratio(admitted * w, traffic.duration.as_u64()),
        max_in_window: max_window,
        burst_factor: ratio(max_window, l),
        first_denial_ns: first_denial,
        delay_mean_ns,
        delay_p99_ns,
        min_spacing_ns: min_spacing,
        state_bytes_per_key: run.peak_state_bytes,
        groups,
        admitted_series: series(traffic, run, config.bucket().as_u64(), buckets),
        failed: None,
    }
}

/// Admitted requests of the charted client(s) per bucket, by the instant served.
fn series(traffic: &Traffic, run: &Run, bucket: u64, buckets: usize) -> Vec<u64> {
    let mut out = vec![0; buckets];
    for (a, o) in traffic.arrivals.iter().zip(&run.outcomes) {
        if o.allowed && traffic.charted.is_none_or(|c| c == a.client) {
            let i = (a.at.saturating_add(o.delay).as_u64() / bucket) as usize;
            if let Some(slot) = out.get_mut(i) {
                *slot += 1;
            }
        }
    }
    out
}

/// Offered requests of the charted client(s) per bucket.
pub fn offered_series(traffic: &Traffic, bucket: u64, buckets: usize) -> Vec<u64> {
    let mut out = vec![0; buckets];
    for a in &traffic.arrivals {
        if traffic.charted.is_none_or(|c| c == a.client)
            && let Some(slot) = out.get_mut((a.at.as_u64() / bucket) as usize)
        {
            *slot += 1;
        }
    }
    out
}

/// Buckets needed to chart `traffic` and every run: the scenario's duration, or the
/// last served instant if a delay carried it further.
pub fn buckets_needed(traffic: &Traffic, runs: &[Run], bucket: u64) -> usize {
    let mut end = traffic.duration.as_u64();
    for run in runs {
        for (a, o) in traffic.arrivals.iter().zip(&run.outcomes) {
            if o.allowed {
                end = end.max(a.at.saturating_add(o.delay).as_u64() + 1);
            }
        }
    }
    end.div_ceil(bucket.max(1)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_half_open() {
        assert_eq!(max_in_window(&[], 10), 0);
        assert_eq!(max_in_window(&[0, 9, 10, 19, 20], 10), 2);
        assert_eq!(max_in_window(&[5, 5, 5, 14], 10), 4);
        assert_eq!(max_in_window(&[5, 5, 5, 15], 10), 3);
    }

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&[7], 0.99), 7);
    }
}
