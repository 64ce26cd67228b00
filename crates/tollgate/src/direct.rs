//! [`DirectLimiter`]: one policy, one key, no map.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::clock::{Clock, SystemClock};
use crate::decision::Decision;
use crate::nanos::Nanos;
use crate::policy::Policy;
use crate::state::State;

/// A limiter for one thing: one policy, one state, no key and no map.
///
/// The bucket family keeps its state in one `AtomicU64` updated by compare-and-swap;
/// the window algorithms keep theirs behind a small mutex.
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Algorithm, DirectLimiter, ManualClock, Nanos, Policy};
///
/// let clock = ManualClock::new(Nanos::from_secs(1));
/// let policy = Policy::new(Algorithm::TokenBucket, 2, Duration::from_secs(1))?;
/// let limiter = DirectLimiter::with_clock(policy, clock.clone());
/// assert!(limiter.check().allowed);
/// assert!(limiter.check().allowed);
/// assert!(!limiter.check().allowed);
/// clock.advance(Duration::from_millis(500));
/// assert!(limiter.check().allowed);
/// # Ok::<(), tollgate::PolicyError>(())
/// ```
#[derive(Debug)]
pub struct DirectLimiter<C = SystemClock> {
    policy: Policy,
    clock: C,
    slot: Slot,
}

#[derive(Debug)]
enum Slot {
    Bucket(AtomicU64),
    Window(Mutex<State>),
}

impl DirectLimiter<SystemClock> {
    /// A limiter on the system clock.
    pub fn new(policy: Policy) -> Self {
        Self::with_clock(policy, SystemClock::new())
    }
}

impl<C: Clock> DirectLimiter<C> {
    /// A limiter reading time from `clock`.
    pub fn with_clock(policy: Policy, clock: C) -> Self {
        let slot = if policy.algorithm().is_bucket() {
            Slot::Bucket(AtomicU64::new(0))
        } else {
            Slot::Window(Mutex::new(State::fresh(policy.algorithm())))
        };
        DirectLimiter {
            policy,
            clock,
            slot,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Decides and consumes one unit.
    #[inline]
    pub fn check(&self) -> Decision {
        self.decide(NonZeroU32::MIN, true)
    }

    /// Decides and consumes `cost` units.
    #[inline]
    pub fn check_n(&self, cost: NonZeroU32) -> Decision {
        self.decide(cost, true)
    }

    /// What [`DirectLimiter::check_n`] would answer, consuming nothing.
    pub fn peek_n(&self, cost: NonZeroU32) -> Decision {
        self.decide(cost, false)
    }

    /// Forgets the state: the limiter is fresh again.
    pub fn reset(&self) {
        match &self.slot {
            Slot::Bucket(cell) => cell.store(0, Ordering::Release),
            Slot::Window(state) => *state.lock() = State::fresh(self.policy.algorithm()),
        }
    }

    #[inline]
    fn decide(&self, cost: NonZeroU32, consume: bool) -> Decision {
        let now = self.clock.now();
        match &self.slot {
            Slot::Bucket(cell) => bucket_check(&self.policy, cell, now, cost, consume),
            Slot::Window(state) => state.lock().check(&self.policy, now, cost, consume),
        }
    }
}

/// The bucket family on an atomic cell: decide on a copy, publish by compare-and-swap,
/// decide again if another thread got there first.
#[inline(always)]
pub(crate) fn bucket_check(
    policy: &Policy,
    cell: &AtomicU64,
    now: Nanos,
    cost: NonZeroU32,
    consume: bool,
) -> Decision {
    let mut current = cell.load(Ordering::Acquire);
    loop {
        let mut tat = Nanos::new(current);
        let decision = bucket_decide(policy, &mut tat, now, cost);
        // An admission always moves `TAT` forward (c*T >= 1), so there is something
        // to publish.
        if !consume || !decision.allowed {
            return decision;
        }
        match cell.compare_exchange_weak(current, tat.as_u64(), Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return decision,
            Err(actual) => current = actual,
        }
    }
}

#[inline(always)]
pub(crate) fn bucket_decide(
    policy: &Policy,
    tat: &mut Nanos,
    now: Nanos,
    cost: NonZeroU32,
) -> Decision {
    match policy.algorithm() {
        crate::Algorithm::LeakyBucket => crate::leaky_bucket::check(policy, tat, now, cost, true),
        _ => crate::gcra::check(policy, tat, now, cost, true),
    }
}
