//! Property tests: every algorithm's library decisions equal the reference model's,
//! field by field, on random policies and random request sequences; both through the
//! algorithm's own module function and through [`tollgate::State::check`].

use std::num::NonZeroU32;

use proptest::prelude::*;
use tollgate::fixed_window::{self, FixedWindowState};
use tollgate::sliding_window_counter::{self as swc, SlidingWindowCounterState};
use tollgate::sliding_window_log::{self as swl, SlidingWindowLogState};
use tollgate::{Algorithm, Decision, Nanos, Policy, State, gcra, leaky_bucket, token_bucket};

use crate::reference::Model;

/// One key's state as the algorithm's own module function takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Raw {
    Bucket(Nanos),
    FixedWindow(FixedWindowState),
    SlidingWindowCounter(SlidingWindowCounterState),
    SlidingWindowLog(SlidingWindowLogState),
}

impl Raw {
    pub(crate) fn fresh(algorithm: Algorithm) -> Raw {
        match algorithm {
            Algorithm::FixedWindow => Raw::FixedWindow(FixedWindowState::default()),
            Algorithm::SlidingWindowLog => Raw::SlidingWindowLog(SlidingWindowLogState::default()),
            Algorithm::SlidingWindowCounter => {
                Raw::SlidingWindowCounter(SlidingWindowCounterState::default())
            }
            Algorithm::TokenBucket | Algorithm::Gcra | Algorithm::LeakyBucket => {
                Raw::Bucket(Nanos::ZERO)
            }
        }
    }

    /// Calls the module function of `policy`'s algorithm.
    pub(crate) fn check(
        &mut self,
        policy: &Policy,
        now: u64,
        cost: u32,
        consume: bool,
    ) -> Decision {
        let now = Nanos::new(now);
        let cost = NonZeroU32::new(cost).expect("cost >= 1");
        match (self, policy.algorithm()) {
            (Raw::Bucket(s), Algorithm::TokenBucket) => {
                token_bucket::check(policy, s, now, cost, consume)
            }
            (Raw::Bucket(s), Algorithm::Gcra) => gcra::check(policy, s, now, cost, consume),
            (Raw::Bucket(s), Algorithm::LeakyBucket) => {
                leaky_bucket::check(policy, s, now, cost, consume)
            }
            (Raw::FixedWindow(s), Algorithm::FixedWindow) => {
                fixed_window::check(policy, s, now, cost, consume)
            }
            (Raw::SlidingWindowCounter(s), Algorithm::SlidingWindowCounter) => {
                swc::check(policy, s, now, cost, consume)
            }
            (Raw::SlidingWindowLog(s), Algorithm::SlidingWindowLog) => {
                swl::check(policy, s, now, cost, consume)
            }
            (raw, algorithm) => panic!("{raw:?} is no state of {algorithm}"),
        }
    }

    /// The module's `view`: `(remaining, reset_after)` with nothing consumed.
    pub(crate) fn view(&self, policy: &Policy, now: u64) -> (u64, Nanos) {
        let now = Nanos::new(now);
        match self {
            Raw::Bucket(s) => match policy.algorithm() {
                Algorithm::TokenBucket => token_bucket::view(policy, *s, now),
                Algorithm::LeakyBucket => leaky_bucket::view(policy, *s, now),
                _ => gcra::view(policy, *s, now),
            },
            Raw::FixedWindow(s) => fixed_window::view(policy, s, now),
            Raw::SlidingWindowCounter(s) => swc::view(policy, s, now),
            Raw::SlidingWindowLog(s) => swl::view(policy, s, now),
        }
    }
}

/// Calls [`State::check`] with plain integers.
pub(crate) fn state_check(
    state: &mut State,
    policy: &Policy,
    now: u64,
    cost: u32,
    consume: bool,
) -> Decision {
    let cost = NonZeroU32::new(cost).expect("cost >= 1");
    state.check(policy, Nanos::new(now), cost, consume)
}

/// One request of a sequence: the time since the previous one, its cost, and whether
/// it consumes (a peek when not).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Step {
    pub delta: u64,
    pub cost: u32,
    pub consume: bool,
}

/// A policy of `algorithm` with `L` in 1..=8, `W` in 1..=200 ns (mostly not a multiple
/// of `L`, so `T` rounds up) and `B` in 1..=8.
pub(crate) fn policy_of(algorithm: Algorithm) -> impl Strategy<Value = Policy> {
    (1..=8u32, 1..=200u64, 1..=8u32).prop_map(move |(l, w, b)| {
        Policy::new(algorithm, l, Nanos::new(w))
            .and_then(|p| p.with_burst(b))
            .expect("valid policy")
    })
}

/// Any of the six algorithms.
pub(crate) fn any_policy() -> impl Strategy<Value = Policy> {
    proptest::sample::select(Algorithm::ALL.to_vec()).prop_flat_map(policy_of)
}

/// Time gaps: many zero (same instant), many short next to `W`, some long.
pub(crate) fn delta_for(policy: &Policy) -> impl Strategy<Value = u64> + use<> {
    let w = policy.period().as_u64();
    prop_oneof![
        3 => Just(0u64),
        4 => 0..=w / 4 + 1,
        3 => 0..=2 * w + 2,
    ]
}

/// One step of cost 1..=capacity+2, mostly consuming.
pub(crate) fn step_for(policy: &Policy) -> impl Strategy<Value = Step> + use<> {
    let cap = policy.capacity();
    (
        delta_for(policy),
        1..=cap + 2,
        proptest::bool::weighted(0.8),
    )
        .prop_map(|(delta, cost, consume)| Step {
            delta,
            cost,
            consume,
        })
}

/// Up to `max_len` steps.
pub(crate) fn steps_for(
    policy: &Policy,
    max_len: usize,
) -> impl Strategy<Value = Vec<Step>> + use<> {
    proptest::collection::vec(step_for(policy), 1..=max_len)
}

/// The instant of the first request: near zero, or far from it.
pub(crate) fn start() -> impl Strategy<Value = u64> {
    prop_oneof![0..=300u64, (1u64 << 40)..=(1u64 << 40) + 1_000]
}

/// A policy with a random request sequence.
pub(crate) fn scenario(
    policy: impl Strategy<Value = Policy>,
) -> impl Strategy<Value = (Policy, u64, Vec<Step>)> {
    policy.prop_flat_map(|p| (Just(p), start(), steps_for(&p, 60)))
}

/// Runs `steps` through the module function, `State::check` and the model, comparing
/// every decision field by field.
fn matches_reference(policy: &Policy, start: u64, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut model = Model::new(policy);
    let mut raw = Raw::fresh(policy.algorithm());
    let mut state = State::fresh(policy.algorithm());
    let mut t = start;
    for (i, s) in steps.iter().enumerate() {
        t += s.delta;
        let want = model.check(t, s.cost, s.consume);
        let got = raw.check(policy, t, s.cost, s.consume);
        prop_assert_eq!(
            got,
            want,
            "module function, step {} at t={} cost={} consume={}",
            i,
            t,
            s.cost,
            s.consume
        );
        let got = state_check(&mut state, policy, t, s.cost, s.consume);
        prop_assert_eq!(
            got,
            want,
            "State::check, step {} at t={} cost={} consume={}",
            i,
            t,
            s.cost,
            s.consume
        );
        let (remaining, reset_after) = model.view(t);
        prop_assert_eq!(
            raw.view(policy, t),
            (remaining, reset_after),
            "view at step {}",
            i
        );
        prop_assert_eq!(state.view(policy, Nanos::new(t)), (remaining, reset_after));
    }
    Ok(())
}

/// Peeks (`consume = false`) change nothing and answer what a consuming check answers.
fn peek_is_pure(policy: &Policy, start: u64, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut raw = Raw::fresh(policy.algorithm());
    let mut state = State::fresh(policy.algorithm());
    let mut t = start;
    for (i, s) in steps.iter().enumerate() {
        t += s.delta;
        let raw_before = raw.clone();
        let state_before = state.clone();
        let peeked = raw.check(policy, t, s.cost, false);
        prop_assert_eq!(
            &raw,
            &raw_before,
            "module peek changed the state at step {}",
            i
        );
        let peeked_state = state_check(&mut state, policy, t, s.cost, false);
        prop_assert_eq!(
            &state,
            &state_before,
            "State peek changed the state at step {}",
            i
        );
        prop_assert_eq!(peeked, peeked_state);
        let checked = raw.check(policy, t, s.cost, true);
        prop_assert_eq!(peeked, checked, "peek and check differ at step {}", i);
        let checked = state_check(&mut state, policy, t, s.cost, true);
        prop_assert_eq!(peeked, checked);
    }
    Ok(())
}

proptest! {
    #[test]
    fn fixed_window_matches_reference((p, t0, steps) in scenario(policy_of(Algorithm::FixedWindow))) {
        matches_reference(&p, t0, &steps)?;
    }

    #[test]
    fn sliding_window_log_matches_reference(
        (p, t0, steps) in scenario(policy_of(Algorithm::SlidingWindowLog))
    ) {
        matches_reference(&p, t0, &steps)?;
    }

    #[test]
    fn sliding_window_counter_matches_reference(
        (p, t0, steps) in scenario(policy_of(Algorithm::SlidingWindowCounter))
    ) {
        matches_reference(&p, t0, &steps)?;
    }

    #[test]
    fn token_bucket_matches_reference((p, t0, steps) in scenario(policy_of(Algorithm::TokenBucket))) {
        matches_reference(&p, t0, &steps)?;
    }

    #[test]
    fn gcra_matches_reference((p, t0, steps) in scenario(policy_of(Algorithm::Gcra))) {
        matches_reference(&p, t0, &steps)?;
    }

    #[test]
    fn leaky_bucket_matches_reference((p, t0, steps) in scenario(policy_of(Algorithm::LeakyBucket))) {
        matches_reference(&p, t0, &steps)?;
    }

    #[test]
    fn peek_changes_nothing_and_agrees_with_check((p, t0, steps) in scenario(any_policy())) {
        peek_is_pure(&p, t0, &steps)?;
    }
}

/// Window algorithms and `gcra` with request times that may step backwards (a skewed
/// client clock, or two threads that read the clock in one order and reach the key in
/// the other): the window algorithms use the state's time, `gcra`'s formulas take
/// `max(TAT, t)` as written. Only these are compared: the token and queue models are
/// stated for requests in time order (see the module comment of `invariants`).
fn backwards_scenario() -> impl Strategy<Value = (Policy, u64, Vec<(Step, u64)>)> {
    let algorithms = vec![
        Algorithm::FixedWindow,
        Algorithm::SlidingWindowLog,
        Algorithm::SlidingWindowCounter,
        Algorithm::Gcra,
    ];
    proptest::sample::select(algorithms)
        .prop_flat_map(policy_of)
        .prop_flat_map(|p| {
            let w = p.period().as_u64();
            let steps = proptest::collection::vec((step_for(&p), 0..=w + 1), 1..=60);
            (Just(p), 500..=800u64, steps)
        })
}

proptest! {
    #[test]
    fn out_of_order_times_match_reference((p, t0, steps) in backwards_scenario()) {
        let mut model = Model::new(&p);
        let mut raw = Raw::fresh(p.algorithm());
        let mut state = State::fresh(p.algorithm());
        let mut clock = t0;
        for (i, (s, back)) in steps.iter().enumerate() {
            clock += s.delta;
            let t = clock.saturating_sub(*back);
            let want = model.check(t, s.cost, s.consume);
            prop_assert_eq!(raw.check(&p, t, s.cost, s.consume), want, "step {} at t={}", i, t);
            prop_assert_eq!(state_check(&mut state, &p, t, s.cost, s.consume), want);
        }
    }
}

#[test]
fn references_agree_with_documented_examples() {
    // The doc examples of the library, replayed on the models.
    let p = Policy::new(Algorithm::Gcra, 5, Nanos::from_secs(1)).expect("valid");
    let mut m = Model::new(&p);
    let t = Nanos::from_secs(1_000).as_u64();
    for _ in 0..5 {
        assert!(m.check(t, 1, true).allowed);
    }
    assert_eq!(
        m.check(t, 1, true).retry_after,
        Some(Nanos::from_millis(200))
    );

    let p = Policy::new(Algorithm::LeakyBucket, 1, Nanos::from_secs(5))
        .and_then(|p| p.with_burst(5))
        .expect("valid");
    let mut m = Model::new(&p);
    let delays: Vec<u64> = (0..5)
        .map(|_| m.check(t, 1, true).delay.as_secs_ceil())
        .collect();
    assert_eq!(delays, [0, 5, 10, 15, 20]);
    assert!(!m.check(t, 1, true).allowed);

    let p = Policy::new(Algorithm::SlidingWindowCounter, 4, Nanos::new(100)).expect("valid");
    let mut m = Model::new(&p);
    for _ in 0..4 {
        assert!(m.check(1_000, 1, true).allowed);
    }
    let d = m.check(1_150, 1, true);
    assert!(d.allowed);
    assert_eq!(d.remaining, 1);

    let p = Policy::new(Algorithm::SlidingWindowLog, 2, Nanos::new(100)).expect("valid");
    let mut m = Model::new(&p);
    assert!(m.check(1_000, 1, true).allowed);
    assert!(m.check(1_060, 1, true).allowed);
    assert_eq!(m.check(1_080, 1, true).retry_after, Some(Nanos::new(20)));
    assert!(!m.check(1_099, 1, true).allowed);
    assert!(m.check(1_100, 1, true).allowed);

    // T rounds up: 3 per 10 ns is one per 4 ns, never faster.
    let p = Policy::new(Algorithm::TokenBucket, 3, Nanos::new(10))
        .and_then(|p| p.with_burst(1))
        .expect("valid");
    let mut m = Model::new(&p);
    assert!(m.check(100, 1, true).allowed);
    assert_eq!(m.check(103, 1, true).retry_after, Some(Nanos::new(1)));
    assert!(m.check(104, 1, true).allowed);
}
