//! Invariants of `ALGORITHMS.md` on random request sequences (requests in time order):
//!
//! - `gcra` and `token_bucket` decide identically; `leaky_bucket` admits exactly what
//!   `gcra` admits, and its admitted requests leave evenly spaced.
//! - `sliding_window_log` never admits more than `L` units in any half-open interval
//!   of length `W`; `fixed_window` can admit `2L` across a boundary.
//! - A retry after `retry_after` is admitted, one a nanosecond earlier is not.
//! - Denials consume nothing; a cost over capacity is a denial with no `retry_after`.
//! - Stacked policies through `MemoryStore::check_all` are all or nothing, and report
//!   the decision the contract picks.
//!
//! Requests come in time order here. For the bucket family the contract gives no
//! "time in the state" other than `TAT` (which is a future instant, not a clock
//! reading): `gcra` uses `start = max(TAT, t)` with the request's own `t`, so with a
//! request earlier than a previous one the token model (which would clamp to the
//! instant of its last refill) and `gcra` read "time never runs backwards"
//! differently. The out-of-order property of `algorithms` covers the window
//! algorithms and `gcra`'s literal formulas.

use std::num::NonZeroU32;

use proptest::prelude::*;
use tollgate::{
    Algorithm, Check, Decision, DenyReason, ManualClock, MemoryStore, Nanos, Policy, State,
};

use crate::algorithms::{Raw, Step, any_policy, delta_for, policy_of, scenario, state_check};
use crate::reference::Model;

fn same_params(p: &Policy, algorithm: Algorithm) -> Policy {
    Policy::new(algorithm, p.limit(), p.period())
        .and_then(|q| q.with_burst(p.burst()))
        .expect("valid policy")
}

/// Bucket-family policies: `L`, `W`, `B` to share between the three algorithms.
fn bucket_scenario() -> impl Strategy<Value = (Policy, u64, Vec<Step>)> {
    scenario(policy_of(Algorithm::Gcra))
}

proptest! {
    /// `gcra` and `token_bucket` make the same decisions, every field; so do their
    /// reference models (a rational token count against a theoretical arrival time),
    /// which checks the contract's invariant independently of the library.
    #[test]
    fn gcra_and_token_bucket_decide_identically((p, t0, steps) in bucket_scenario()) {
        let tb = same_params(&p, Algorithm::TokenBucket);
        let (mut g, mut k) = (Raw::fresh(Algorithm::Gcra), Raw::fresh(Algorithm::TokenBucket));
        let (mut mg, mut mk) = (Model::new(&p), Model::new(&tb));
        let mut t = t0;
        for (i, s) in steps.iter().enumerate() {
            t += s.delta;
            let dg = g.check(&p, t, s.cost, s.consume);
            let dk = k.check(&tb, t, s.cost, s.consume);
            prop_assert_eq!(dg, dk, "library, step {} at t={}", i, t);
            let dg = mg.check(t, s.cost, s.consume);
            let dk = mk.check(t, s.cost, s.consume);
            prop_assert_eq!(dg, dk, "models, step {} at t={}", i, t);
        }
    }

    /// `leaky_bucket` admits exactly what `gcra` admits (and reports the same
    /// `remaining`, `reset_after` and `retry_after`, whose formulas are the same); its
    /// `delay` shapes the admitted requests into a queue served at one unit per `T`.
    ///
    /// Exactly: number the admitted requests `1, 2, ...` (arrival `t_i`, cost `c_i`,
    /// delay `d_i`) and let `s_i = t_i + d_i` be the instant request `i` proceeds.
    /// Then `s_1 = t_1` and `s_i = max(t_i, s_{i-1} + c_{i-1} * T)`: a request
    /// proceeds as soon as it has arrived and the one before it has had its
    /// `c * T` at the outlet, never earlier. So consecutive admitted requests leave
    /// at least `c_{i-1} * T` apart (exactly that while the queue is busy), and
    /// `d_i + c_i * T <= B * T`: no more than `B` units ever wait.
    #[test]
    fn leaky_bucket_admits_as_gcra_and_spaces_departures((p, t0, steps) in bucket_scenario()) {
        let lb = same_params(&p, Algorithm::LeakyBucket);
        let t_emit = p.emission_interval().as_u64();
        let (mut g, mut l) = (Raw::fresh(Algorithm::Gcra), Raw::fresh(Algorithm::LeakyBucket));
        let mut previous: Option<(u64, u64)> = None; // (s_{i-1}, c_{i-1})
        let mut t = t0;
        for (i, s) in steps.iter().enumerate() {
            t += s.delta;
            let dg = g.check(&p, t, s.cost, s.consume);
            let dl = l.check(&lb, t, s.cost, s.consume);
            prop_assert_eq!(dl.allowed, dg.allowed, "step {} at t={}", i, t);
            prop_assert_eq!(Decision { delay: Nanos::ZERO, ..dl }, dg, "step {}", i);
            if !dl.allowed {
                prop_assert_eq!(dl.delay, Nanos::ZERO);
                continue;
            }
            let c = u64::from(s.cost);
            let d = dl.delay.as_u64();
            prop_assert!(d + c * t_emit <= u64::from(p.burst()) * t_emit);
            let proceeds = t + d;
            let expected = match previous {
                None => t,
                Some((s_prev, c_prev)) => {
                    prop_assert!(proceeds >= s_prev + c_prev * t_emit, "step {}", i);
                    t.max(s_prev + c_prev * t_emit)
                }
            };
            prop_assert_eq!(proceeds, expected, "step {} at t={}", i, t);
            if s.consume {
                previous = Some((proceeds, c));
            }
        }
    }

    /// `sliding_window_log` is exact: no half-open interval of length `W` holds more
    /// than `L` admitted units. (An interval's admitted requests all lie in the
    /// interval of the same length starting at its first one, so intervals starting
    /// at admissions suffice.)
    #[test]
    fn sliding_window_log_never_exceeds_limit_in_any_window(
        (p, t0, steps) in scenario(policy_of(Algorithm::SlidingWindowLog))
    ) {
        let w = p.period().as_u64();
        let mut state = State::fresh(p.algorithm());
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        let mut t = t0;
        for s in &steps {
            t += s.delta;
            if state_check(&mut state, &p, t, s.cost, s.consume).allowed && s.consume {
                admitted.push((t, u64::from(s.cost)));
            }
        }
        for &(from, _) in &admitted {
            let inside: u64 = admitted
                .iter()
                .filter(|&&(ts, _)| from <= ts && ts < from + w)
                .map(|&(_, c)| c)
                .sum();
            prop_assert!(inside <= u64::from(p.limit()), "{} units in [{}, {})", inside, from, from + w);
        }
    }

    /// When a request is denied with `retry_after = r`, the same request is admitted
    /// at `t + r` (if nothing else comes) and, when `r > 0`, not at `t + r - 1`.
    #[test]
    fn retry_after_is_exact((p, t0, steps) in scenario(any_policy())) {
        let mut state = State::fresh(p.algorithm());
        let mut t = t0;
        for (i, s) in steps.iter().enumerate() {
            t += s.delta;
            let d = state_check(&mut state, &p, t, s.cost, false);
            if let Some(r) = d.retry_after {
                let r = r.as_u64();
                prop_assert!(!d.allowed);
                prop_assert_eq!(d.reason, Some(DenyReason::Limited));
                let mut later = state.clone();
                let then = state_check(&mut later, &p, t + r, s.cost, false);
                prop_assert!(then.allowed, "step {}: denied at t={} + retry_after {}", i, t, r);
                if r > 0 {
                    let early = state_check(&mut later, &p, t + r - 1, s.cost, false);
                    prop_assert!(!early.allowed, "step {}: admitted 1 ns before retry_after", i);
                }
            } else {
                prop_assert!(d.allowed || d.reason == Some(DenyReason::CostExceedsCapacity));
            }
            state_check(&mut state, &p, t, s.cost, s.consume);
        }
    }

    /// A denied request changes no state, through the module function and `State`.
    #[test]
    fn denials_consume_nothing((p, t0, steps) in scenario(any_policy())) {
        let mut raw = Raw::fresh(p.algorithm());
        let mut state = State::fresh(p.algorithm());
        let mut t = t0;
        for (i, s) in steps.iter().enumerate() {
            t += s.delta;
            let (raw_before, state_before) = (raw.clone(), state.clone());
            let d = raw.check(&p, t, s.cost, true);
            let e = state_check(&mut state, &p, t, s.cost, true);
            prop_assert_eq!(d, e);
            if !d.allowed {
                prop_assert_eq!(&raw, &raw_before, "a denial changed the state at step {}", i);
                prop_assert_eq!(&state, &state_before, "a denial changed the state at step {}", i);
            }
        }
    }

    /// A cost over capacity (`L` for windows, `B` for buckets) is denied with reason
    /// `cost_exceeds_capacity`, no `retry_after`, what the state holds now, and
    /// nothing consumed.
    #[test]
    fn cost_over_capacity_is_refused_for_good(
        (p, t0, steps) in scenario(any_policy()),
        over in 1..=4u32,
    ) {
        let cap = if p.algorithm().is_bucket() { p.burst() } else { p.limit() };
        prop_assert_eq!(p.capacity(), cap);
        let mut raw = Raw::fresh(p.algorithm());
        let mut state = State::fresh(p.algorithm());
        let mut t = t0;
        for (i, s) in steps.iter().enumerate() {
            t += s.delta;
            let (raw_before, state_before) = (raw.clone(), state.clone());
            let (remaining, reset_after) = raw.view(&p, t);
            let want = Decision {
                allowed: false,
                limit: cap,
                remaining,
                reset_after,
                retry_after: None,
                delay: Nanos::ZERO,
                reason: Some(DenyReason::CostExceedsCapacity),
            };
            prop_assert_eq!(raw.check(&p, t, cap + over, true), want, "step {}", i);
            prop_assert_eq!(state_check(&mut state, &p, t, cap + over, true), want);
            prop_assert_eq!(&raw, &raw_before);
            prop_assert_eq!(&state, &state_before);
            // The largest cost that fits is never refused for its size.
            let d = state_check(&mut state.clone(), &p, t, cap, false);
            prop_assert_ne!(d.reason, Some(DenyReason::CostExceedsCapacity));
            raw.check(&p, t, s.cost, s.consume);
            state_check(&mut state, &p, t, s.cost, s.consume);
        }
    }
}

#[test]
fn fixed_window_admits_twice_the_limit_across_a_boundary() {
    for (limit, period) in [(1u32, 10u64), (5, 100), (3, 7), (8, 1_000_000_000)] {
        let p = Policy::new(Algorithm::FixedWindow, limit, Nanos::new(period)).expect("valid");
        let mut state = State::fresh(p.algorithm());
        let edge = 42 * period;
        let mut passed = 0;
        for t in [edge - 1, edge] {
            while state_check(&mut state, &p, t, 1, true).allowed {
                passed += 1;
            }
        }
        assert_eq!(passed, 2 * limit, "L={limit} W={period}: 2L within 1 ns");

        // The exact log refuses the second half.
        let p = Policy::new(Algorithm::SlidingWindowLog, limit, Nanos::new(period)).expect("valid");
        let mut state = State::fresh(p.algorithm());
        let mut passed = 0;
        for t in [edge - 1, edge] {
            while state_check(&mut state, &p, t, 1, true).allowed {
                passed += 1;
            }
        }
        assert_eq!(passed, limit);
    }
}

/// A denial or a peek at a later instant must not drop log entries that are still
/// live at an earlier one: the next request may carry an earlier `t` than the peek
/// did (it read the clock first and reached the key second), and must see the log
/// as the admissions left it.
#[test]
fn sliding_window_log_peeks_and_denials_leave_the_log_alone() {
    let p = Policy::new(Algorithm::SlidingWindowLog, 1, Nanos::new(100)).expect("valid");
    let mut state = State::fresh(p.algorithm());
    assert!(state_check(&mut state, &p, 1_000, 1, true).allowed);
    let before = state.clone();
    // At 1_100 the entry has left the window: a peek there would pass.
    assert!(state_check(&mut state, &p, 1_100, 1, false).allowed);
    assert_eq!(state, before);
    // A request stamped 1_050 still sees it.
    let d = state_check(&mut state, &p, 1_050, 1, true);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Some(Nanos::new(50)));
    assert_eq!(state, before);
    // Same with a denial at the later instant.
    assert!(!state_check(&mut state, &p, 1_100, 2, true).allowed);
    assert_eq!(state, before);
    assert!(!state_check(&mut state, &p, 1_099, 1, true).allowed);
}

/// One stacked request: the time since the previous one and a cost per policy.
#[derive(Clone, Debug)]
struct StackStep {
    delta: u64,
    costs: Vec<u32>,
}

fn stack_scenario() -> impl Strategy<Value = (Vec<Policy>, Vec<StackStep>)> {
    proptest::collection::vec(any_policy(), 2..=3).prop_flat_map(|policies| {
        let delta = delta_for(&policies[0]);
        let costs: Vec<_> = policies
            .iter()
            .map(|p| {
                let cap = p.capacity();
                prop_oneof![9 => 1..=cap, 1 => Just(cap + 1)]
            })
            .collect();
        let step = (delta, costs).prop_map(|(delta, costs)| StackStep { delta, costs });
        (Just(policies), proptest::collection::vec(step, 1..=40))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// `MemoryStore::check_all`: admitted iff every policy admits, all or nothing; the
    /// per-policy decisions are the models'; the reported one is the denying policy
    /// with the largest `retry_after` (a cost that can never pass counts as the
    /// largest), else the one with the least `remaining`, with the largest `delay`.
    #[test]
    fn stacked_policies_are_all_or_nothing((policies, steps) in stack_scenario()) {
        let clock = ManualClock::new(Nanos::new(1_000));
        let store = MemoryStore::with_clock(clock.clone());
        let keys: Vec<String> = (0..policies.len()).map(|i| format!("key-{i}")).collect();
        let mut models: Vec<Model> = policies.iter().map(Model::new).collect();
        for (step_no, s) in steps.iter().enumerate() {
            clock.advance(Nanos::new(s.delta));
            let now = clock_now(&clock);
            let costs: Vec<NonZeroU32> = s
                .costs
                .iter()
                .map(|&c| NonZeroU32::new(c).expect("cost >= 1"))
                .collect();
            let checks: Vec<Check<'_>> = policies
                .iter()
                .zip(&keys)
                .zip(&costs)
                .map(|((p, k), &c)| Check::new(k, p).cost(c))
                .collect();
            let peeks_before = peek_everything(&store, &policies, &keys);
            let peeked = store.peek_all(&checks).expect("valid stack");
            let verdict = store.check_all(&checks).expect("valid stack");
            prop_assert_eq!(&peeked, &verdict, "peek_all and check_all differ at step {}", step_no);

            let alone: Vec<Decision> = models
                .iter_mut()
                .zip(&s.costs)
                .map(|(m, &c)| m.check(now, c, false))
                .collect();
            let all = alone.iter().all(|d| d.allowed);
            prop_assert_eq!(verdict.allowed(), all, "step {}", step_no);
            let expected: Vec<Decision> = if all {
                models
                    .iter_mut()
                    .zip(&s.costs)
                    .map(|(m, &c)| m.check(now, c, true))
                    .collect()
            } else {
                alone
                    .iter()
                    .zip(&models)
                    .map(|(d, m)| {
                        if d.allowed {
                            let (remaining, reset_after) = m.view(now);
                            Decision { remaining, reset_after, delay: Nanos::ZERO, ..*d }
                        } else {
                            *d
                        }
                    })
                    .collect()
            };
            prop_assert_eq!(verdict.decisions.to_vec(), expected.clone(), "step {}", step_no);

            let reported = verdict.decision;
            prop_assert_eq!(
                Decision { delay: Nanos::ZERO, ..reported },
                Decision { delay: Nanos::ZERO, ..expected[verdict.index] }
            );
            if all {
                let least = expected.iter().map(|d| d.remaining).min();
                prop_assert_eq!(Some(reported.remaining), least);
                let longest = expected.iter().map(|d| d.delay).max();
                prop_assert_eq!(Some(reported.delay), longest);
            } else {
                prop_assert!(!reported.allowed);
                prop_assert_eq!(reported.delay, Nanos::ZERO);
                let never = expected
                    .iter()
                    .any(|d| d.reason == Some(DenyReason::CostExceedsCapacity));
                if never {
                    prop_assert_eq!(reported.reason, Some(DenyReason::CostExceedsCapacity));
                } else {
                    let longest = expected.iter().filter_map(|d| d.retry_after).max();
                    prop_assert_eq!(reported.retry_after, longest);
                }
                // Nothing anywhere was consumed.
                prop_assert_eq!(
                    peek_everything(&store, &policies, &keys),
                    peeks_before,
                    "a denied stack changed some state at step {}",
                    step_no
                );
            }
        }
    }
}

fn clock_now(clock: &ManualClock) -> u64 {
    use tollgate::Clock;
    clock.now().as_u64()
}

/// Every policy's key peeked at every cost up to its capacity + 1.
fn peek_everything(
    store: &MemoryStore<ManualClock>,
    policies: &[Policy],
    keys: &[String],
) -> Vec<Decision> {
    policies
        .iter()
        .zip(keys)
        .flat_map(|(p, k)| {
            (1..=p.capacity() + 1)
                .map(move |c| store.peek_n(k, p, NonZeroU32::new(c).expect("cost >= 1")))
        })
        .collect()
}
