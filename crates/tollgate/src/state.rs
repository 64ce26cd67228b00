//! [`State`]: one key's state under any of the six algorithms.

use std::num::NonZeroU32;

use crate::decision::Decision;
use crate::fixed_window::{self, FixedWindowState};
use crate::nanos::Nanos;
use crate::policy::{Algorithm, Policy};
use crate::sliding_window_counter::{self, SlidingWindowCounterState};
use crate::sliding_window_log::{self, SlidingWindowLogState};
use crate::{gcra, leaky_bucket, token_bucket};

/// One key's state, for whichever algorithm its policy names.
///
/// [`State::check`] dispatches to the algorithm's pure function. A state of another
/// algorithm's shape than the policy's (a key whose policy changed algorithm) is read
/// as fresh. The bucket family shares one shape, the instant `TAT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// `token_bucket`, `gcra`, `leaky_bucket`: the theoretical arrival time.
    Bucket(Nanos),
    /// `fixed_window`.
    FixedWindow(FixedWindowState),
    /// `sliding_window_counter`.
    SlidingWindowCounter(SlidingWindowCounterState),
    /// `sliding_window_log`.
    SlidingWindowLog(SlidingWindowLogState),
}

impl State {
    /// The fresh state for `algorithm`.
    pub fn fresh(algorithm: Algorithm) -> State {
        match algorithm {
            Algorithm::TokenBucket | Algorithm::Gcra | Algorithm::LeakyBucket => {
                State::Bucket(Nanos::ZERO)
            }
            Algorithm::FixedWindow => State::FixedWindow(FixedWindowState::default()),
            Algorithm::SlidingWindowCounter => {
                State::SlidingWindowCounter(SlidingWindowCounterState::default())
            }
            Algorithm::SlidingWindowLog => {
                State::SlidingWindowLog(SlidingWindowLogState::default())
            }
        }
    }

    fn fits(&self, algorithm: Algorithm) -> bool {
        matches!(
            (self, algorithm),
            (
                State::Bucket(_),
                Algorithm::TokenBucket | Algorithm::Gcra | Algorithm::LeakyBucket
            ) | (State::FixedWindow(_), Algorithm::FixedWindow)
                | (
                    State::SlidingWindowCounter(_),
                    Algorithm::SlidingWindowCounter
                )
                | (State::SlidingWindowLog(_), Algorithm::SlidingWindowLog)
        )
    }

    /// Decides a request of `cost` at `now` under `policy`; when `consume` is true and
    /// the request is admitted, the state records it.
    pub fn check(
        &mut self,
        policy: &Policy,
        now: Nanos,
        cost: NonZeroU32,
        consume: bool,
    ) -> Decision {
        if !self.fits(policy.algorithm()) {
            let mut fresh = State::fresh(policy.algorithm());
            let decision = fresh.check(policy, now, cost, consume);
            if consume && decision.allowed {
                *self = fresh;
            }
            return decision;
        }
        match self {
            State::Bucket(tat) => match policy.algorithm() {
                Algorithm::LeakyBucket => leaky_bucket::check(policy, tat, now, cost, consume),
                Algorithm::TokenBucket => token_bucket::check(policy, tat, now, cost, consume),
                _ => gcra::check(policy, tat, now, cost, consume),
            },
            State::FixedWindow(s) => fixed_window::check(policy, s, now, cost, consume),
            State::SlidingWindowCounter(s) => {
                sliding_window_counter::check(policy, s, now, cost, consume)
            }
            State::SlidingWindowLog(s) => sliding_window_log::check(policy, s, now, cost, consume),
        }
    }

    /// `(remaining, reset_after)` at `now` with nothing consumed.
    pub fn view(&self, policy: &Policy, now: Nanos) -> (u64, Nanos) {
        if !self.fits(policy.algorithm()) {
            return State::fresh(policy.algorithm()).view(policy, now);
        }
        match self {
            State::Bucket(tat) => gcra::view(policy, *tat, now),
            State::FixedWindow(s) => fixed_window::view(policy, s, now),
            State::SlidingWindowCounter(s) => sliding_window_counter::view(policy, s, now),
            State::SlidingWindowLog(s) => sliding_window_log::view(policy, s, now),
        }
    }

    /// The instant from which the state is fresh again (if no request comes), so it
    /// may be forgotten.
    pub fn expires(&self) -> Nanos {
        match self {
            State::Bucket(tat) => *tat,
            State::FixedWindow(s) => s.expires,
            State::SlidingWindowCounter(s) => s.expires,
            State::SlidingWindowLog(s) => s.expires(),
        }
    }
}
