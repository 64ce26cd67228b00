//! The known facts of `ALGORITHMS.md`, read off the lab's own figures, under the
//! default configuration and under another one.

use tollgate::{Algorithm, Nanos};
use tollgate_lab::{Lab, LabConfig, Mode, Scenario, ScenarioResult};

use crate::common::{default_lab, edge_labs, other_lab};

/// Every lab the facts are checked on: the default, another configuration, and
/// the edges.
fn labs() -> Vec<&'static Lab> {
    let mut labs = vec![default_lab(), other_lab()];
    labs.extend(edge_labs());
    labs
}

fn scenario(lab: &Lab, s: Scenario) -> &ScenarioResult {
    lab.report
        .scenario(s.name())
        .expect("every scenario was run")
}

fn result(lab: &Lab, s: Scenario, a: Algorithm) -> &tollgate_lab::AlgorithmResult {
    scenario(lab, s).result(a).expect("every algorithm was run")
}

#[test]
fn every_scenario_and_algorithm_is_reported() {
    for lab in labs() {
        assert_eq!(lab.report.scenarios.len(), Scenario::ALL.len());
        for (s, want) in lab.report.scenarios.iter().zip(Scenario::ALL) {
            assert_eq!(s.name, want.name());
            assert_eq!(s.results.len(), 6);
            for r in &s.results {
                assert_eq!(r.offered, s.offered);
                assert!(r.admitted <= r.offered);
                assert_eq!(r.admitted_series.len(), s.offered_series.len());
            }
        }
    }
}

#[test]
fn the_store_decides_as_the_pure_functions() {
    for lab in labs() {
        assert_eq!(lab.disagreements, 0);
    }
}

#[test]
fn fixed_window_lets_twice_the_limit_through_on_the_boundary_attack() {
    for lab in labs() {
        let l = u64::from(lab.report.config.limit);
        let fw = result(lab, Scenario::BoundaryAttack, Algorithm::FixedWindow);
        assert_eq!(fw.burst_factor, 2.0);
        assert_eq!(fw.max_in_window, 2 * l);
        assert_eq!(fw.admitted, 2 * l);
        for a in Algorithm::ALL {
            if a != Algorithm::FixedWindow {
                let r = result(lab, Scenario::BoundaryAttack, a);
                assert_eq!(r.admitted, l, "{a}");
            }
        }
    }
}

#[test]
fn sliding_window_log_never_exceeds_the_limit() {
    for lab in labs() {
        for s in Scenario::ALL {
            let r = result(lab, s, Algorithm::SlidingWindowLog);
            if s.breaks_the_limit() {
                assert!(r.burst_factor > 1.0, "{}: {}", s.name(), r.burst_factor);
            } else {
                assert!(r.burst_factor <= 1.0, "{}: {}", s.name(), r.burst_factor);
            }
        }
    }
}

#[test]
fn sliding_window_counter_stays_under_twice_and_near_the_log_on_poisson() {
    for lab in labs() {
        for s in Scenario::ALL {
            let r = result(lab, s, Algorithm::SlidingWindowCounter);
            if !s.breaks_the_limit() {
                assert!(r.burst_factor < 2.0, "{}: {}", s.name(), r.burst_factor);
            }
        }
    }
    // Within a few percent of the exact log, at the default limit (with L = 7 the
    // counts are too small for percentages to mean much).
    let lab = default_lab();
    for s in [
        Scenario::Poisson90,
        Scenario::Poisson100,
        Scenario::Poisson150,
    ] {
        let swc = result(lab, s, Algorithm::SlidingWindowCounter).admitted as f64;
        let log = result(lab, s, Algorithm::SlidingWindowLog).admitted as f64;
        let diff = (swc - log).abs() / log;
        assert!(diff < 0.03, "{}: counter {swc}, log {log}", s.name());
    }
}

#[test]
fn token_bucket_and_gcra_give_identical_series_and_decisions() {
    for lab in labs() {
        for s in &lab.report.scenarios {
            let tb = s.result(Algorithm::TokenBucket).expect("run");
            let g = s.result(Algorithm::Gcra).expect("run");
            assert_eq!(tb.admitted_series, g.admitted_series, "{}", s.name);
            assert_eq!(tb.admitted, g.admitted, "{}", s.name);
            assert_eq!(tb.max_in_window, g.max_in_window, "{}", s.name);
        }
    }
    // Request by request, with the allowed decisions of leaky_bucket too.
    let config = LabConfig::default();
    for s in Scenario::ALL {
        let traffic = s.traffic(&config);
        let run = |a| tollgate_lab::simulate(&traffic, &tollgate_lab::policy(&config, a));
        let tb = run(Algorithm::TokenBucket);
        let g = run(Algorithm::Gcra);
        let lb = run(Algorithm::LeakyBucket);
        assert_eq!(tb.outcomes, g.outcomes, "{}", s.name());
        if traffic.mode != Mode::NonAtomic {
            let allowed = |r: &tollgate_lab::Run| -> Vec<bool> {
                r.outcomes.iter().map(|o| o.allowed).collect()
            };
            assert_eq!(allowed(&g), allowed(&lb), "{}", s.name());
        }
    }
}

#[test]
fn leaky_bucket_serves_admitted_requests_t_apart() {
    for lab in labs() {
        let t = lab.report.config.emission_interval_ns;
        for s in Scenario::ALL {
            let r = result(lab, s, Algorithm::LeakyBucket);
            if !s.breaks_the_limit() {
                // None when a single request was admitted (L = 1, one burst).
                if let Some(gap) = r.min_spacing_ns {
                    assert!(gap >= t, "{}: {gap} < {t}", s.name());
                }
                assert!(r.burst_factor <= 1.0, "{}: {}", s.name(), r.burst_factor);
            }
        }
        // The burst: L admitted at one instant leave exactly 0, T, 2T, ...
        let burst = result(lab, Scenario::Burst, Algorithm::LeakyBucket);
        let l = u64::from(lab.report.config.limit);
        assert_eq!(burst.min_spacing_ns, (l > 1).then_some(t));
        assert_eq!(burst.delay_mean_ns, Some((l - 1) * t / 2));
    }
    let config = LabConfig::default();
    let traffic = Scenario::Burst.traffic(&config);
    let run = tollgate_lab::simulate(
        &traffic,
        &tollgate_lab::policy(&config, Algorithm::LeakyBucket),
    );
    let t = config.period().as_u64() / u64::from(config.limit());
    let delays: Vec<u64> = run
        .outcomes
        .iter()
        .filter(|o| o.allowed)
        .map(|o| o.delay.as_u64())
        .collect();
    let expected: Vec<u64> = (0..u64::from(config.limit())).map(|k| k * t).collect();
    assert_eq!(delays, expected);
    // Only leaky_bucket reports delays.
    for a in Algorithm::ALL {
        let r = default_lab()
            .report
            .scenario("burst")
            .and_then(|s| s.result(a))
            .expect("run");
        assert_eq!(
            r.delay_mean_ns.is_some(),
            a == Algorithm::LeakyBucket,
            "{a}"
        );
    }
}

/// Admitted per aligned window `[kW, (k+1)W)`, from the series (ten buckets a window).
fn per_window(series: &[u64]) -> Vec<u64> {
    series.chunks(10).map(|c| c.iter().sum()).collect()
}

#[test]
fn a_naive_fleet_admits_n_times_the_limit_and_a_shared_store_the_limit() {
    for lab in labs() {
        let l = u64::from(lab.report.config.limit);
        let n = u64::from(lab.report.config.nodes);
        for a in [Algorithm::FixedWindow, Algorithm::SlidingWindowLog] {
            let naive = result(lab, Scenario::FleetNaive, a);
            let shared = result(lab, Scenario::FleetShared, a);
            assert_eq!(naive.max_in_window, n * l, "{a}");
            assert_eq!(shared.max_in_window, l, "{a}");
            // The traffic lasts six windows.
            let naive_windows = per_window(&naive.admitted_series);
            let shared_windows = per_window(&shared.admitted_series);
            assert_eq!(&naive_windows[..6], &[n * l; 6], "{a}");
            assert_eq!(&shared_windows[..6], &[l; 6], "{a}");
        }
        for a in Algorithm::ALL {
            let naive = result(lab, Scenario::FleetNaive, a);
            let shared = result(lab, Scenario::FleetShared, a);
            assert_eq!(naive.admitted, n * shared.admitted, "{a}");
        }
    }
}

#[test]
fn the_non_atomic_pattern_over_admits_and_the_atomic_one_does_not() {
    for lab in labs() {
        for a in Algorithm::ALL {
            let race = result(lab, Scenario::RaceNonAtomic, a);
            let atomic = result(lab, Scenario::RaceAtomic, a);
            assert_eq!(race.offered, atomic.offered);
            assert!(
                race.admitted > atomic.admitted,
                "{a}: non-atomic {} vs atomic {}",
                race.admitted,
                atomic.admitted
            );
            assert!(race.max_in_window > atomic.max_in_window, "{a}");
        }
        for a in [
            Algorithm::FixedWindow,
            Algorithm::SlidingWindowLog,
            Algorithm::SlidingWindowCounter,
        ] {
            let l = u64::from(lab.report.config.limit);
            let race = result(lab, Scenario::RaceNonAtomic, a);
            assert!(race.burst_factor > 1.0, "{a}: {}", race.burst_factor);
            // Every aligned window of the atomic run holds at most L.
            let atomic = result(lab, Scenario::RaceAtomic, a);
            assert!(per_window(&atomic.admitted_series).iter().all(|&w| w <= l));
        }
    }
}

#[test]
fn per_client_keys_hold_the_hog_and_spare_the_others() {
    for lab in labs() {
        let l = lab.report.config.limit;
        for a in Algorithm::ALL {
            let r = result(lab, Scenario::Hog, a);
            let others = &r.groups[0];
            let hog = &r.groups[1];
            assert_eq!(
                (others.group.as_str(), hog.group.as_str()),
                ("others", "hog")
            );
            assert_eq!(others.offered + hog.offered, r.offered);
            assert!(hog.admitted_ratio < 0.5, "{a}: {}", hog.admitted_ratio);
            // At half the limit each, random clumps rarely meet a client's limit.
            if l >= 100 {
                assert!(
                    others.admitted_ratio > 0.95,
                    "{a}: {}",
                    others.admitted_ratio
                );
            }
        }
    }
}

#[test]
fn the_figures_follow_the_configuration() {
    let lab = other_lab();
    let c = &lab.report.config;
    assert_eq!(
        (c.limit, c.period_ns, c.nodes, c.seed, c.burst),
        (7, 1_500_000_000, 3, 42, 7)
    );
    assert_eq!(c.emission_interval_ns, 1_500_000_000_u64.div_ceil(7));
    // Steady overload: every exact algorithm holds L per W; the stated durations
    // scale with W.
    let s = scenario(lab, Scenario::SteadyOverload);
    assert_eq!(s.duration_ns, 6 * 1_500_000_000);
    assert_eq!(s.offered, 2 * 7 * 6);
    // Time to first denial in the burst is 0 (the 3L arrive at once; the L+1st is
    // refused at the instant of the first).
    for r in &scenario(lab, Scenario::Burst).results {
        assert_eq!(r.first_denial_ns, Some(0), "{}", r.algorithm);
    }
    // Poisson at 0.9x may never be refused at all; at 1.5x it is.
    assert!(
        result(default_lab(), Scenario::Poisson150, Algorithm::Gcra)
            .first_denial_ns
            .is_some()
    );
}

#[test]
fn state_bytes_per_key() {
    let lab = default_lab();
    for s in &lab.report.scenarios {
        for r in &s.results {
            let want = match r.algorithm.as_str() {
                "token_bucket" | "gcra" | "leaky_bucket" => Some(8),
                "fixed_window" | "sliding_window_counter" => Some(24),
                _ => None,
            };
            match want {
                Some(bytes) => assert_eq!(r.state_bytes_per_key, bytes, "{}", r.algorithm),
                // The log holds an entry of 16 bytes on the heap per instant with
                // admissions still in the window: up to L of them (requests admitted
                // at one instant share one).
                None if s.name.starts_with("poisson") => {
                    assert!(r.state_bytes_per_key > 16 * 50, "{}", s.name)
                }
                None => assert!(r.state_bytes_per_key > 24, "{}", s.name),
            }
        }
    }
}

#[test]
fn one_scenario_alone_gives_the_figures_it_gives_among_all() {
    let config = LabConfig::default();
    for s in [Scenario::Poisson100, Scenario::RaceNonAtomic, Scenario::Hog] {
        let alone = tollgate_lab::run(&config, &[s]);
        assert_eq!(
            format!("{:?}", alone.report.scenarios[0]),
            format!("{:?}", scenario(default_lab(), s)),
            "{}",
            s.name()
        );
    }
}

#[test]
fn the_seed_changes_random_traffic_only() {
    let a = LabConfig::new(100, Nanos::from_secs(10), 4, 1).expect("valid");
    let b = LabConfig::new(100, Nanos::from_secs(10), 4, 2).expect("valid");
    assert_ne!(
        Scenario::Poisson100.traffic(&a).arrivals,
        Scenario::Poisson100.traffic(&b).arrivals
    );
    assert_eq!(
        Scenario::SteadyOverload.traffic(&a).arrivals,
        Scenario::SteadyOverload.traffic(&b).arrivals
    );
    // The two fleet scenarios, and the two races, offer the very same requests.
    assert_eq!(
        Scenario::RaceNonAtomic.traffic(&a).arrivals,
        Scenario::RaceAtomic.traffic(&a).arrivals
    );
    let naive = Scenario::FleetNaive.traffic(&a);
    let shared = Scenario::FleetShared.traffic(&a);
    assert_eq!(naive.arrivals, shared.arrivals);
    assert_eq!((naive.mode, shared.mode), (Mode::PerNode, Mode::Shared));
}
