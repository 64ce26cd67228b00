//! `gcra`: the generic cell rate algorithm (as in ATM, redis-cell and governor).
//!
//! State: the theoretical arrival time `TAT`; a fresh key has `TAT <= t`. With the
//! emission interval `T = ceil(W / L)` and the burst tolerance `tau = B * T`:
//!
//! - `start = max(TAT, t)`; `new_tat = start + c*T`
//! - admit iff `new_tat - t <= tau`; then `TAT = new_tat`
//! - `remaining = floor((tau - (TAT - t)) / T)` after the decision
//! - `reset_after = max(TAT - t, 0)`
//! - `retry_after = new_tat - tau - t`
//!
//! The state is one instant, so the in-memory store keeps it in one `AtomicU64` and
//! updates it by compare-and-swap. `TAT = 0` is the fresh state: every `t >= 0`
//! satisfies `TAT <= t`, so it needs no separate "empty" marker.
//!
//! `token_bucket` and `leaky_bucket` are this same computation read differently;
//! see their modules.
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use tollgate::{gcra, Algorithm, Nanos, Policy};
//!
//! // 2 per second, burst 2: T = 500 ms, tau = 1 s.
//! let p = Policy::new(Algorithm::Gcra, 2, Duration::from_secs(1))?;
//! let one = NonZeroU32::MIN;
//! let mut tat = Nanos::ZERO;
//! let t0 = Nanos::from_secs(100);
//! assert!(gcra::check(&p, &mut tat, t0, one, true).allowed);
//! assert!(gcra::check(&p, &mut tat, t0, one, true).allowed);
//! let denied = gcra::check(&p, &mut tat, t0, one, true);
//! assert!(!denied.allowed);
//! assert_eq!(denied.retry_after, Some(Nanos::from_millis(500)));
//! // A nanosecond early is still too early; at retry_after it passes.
//! let early = t0.saturating_add(Nanos::new(499_999_999));
//! assert!(!gcra::check(&p, &mut tat, early, one, true).allowed);
//! assert!(gcra::check(&p, &mut tat, Nanos::from_millis(100_500), one, true).allowed);
//! # Ok::<(), tollgate::PolicyError>(())
//! ```

use std::num::NonZeroU32;

use crate::decision::{Decision, DenyReason};
use crate::nanos::Nanos;
use crate::policy::Policy;

/// Decides a request of `cost` at `now` against the state `tat`; when `consume` is
/// true and the request is admitted, `tat` moves to the new theoretical arrival time.
#[inline]
pub fn check(
    policy: &Policy,
    tat: &mut Nanos,
    now: Nanos,
    cost: NonZeroU32,
    consume: bool,
) -> Decision {
    check_bucket(policy, tat, now, cost, consume).0
}

/// What the state shows at `now` with nothing consumed: `(remaining, reset_after)`.
#[inline]
pub fn view(policy: &Policy, tat: Nanos, now: Nanos) -> (u64, Nanos) {
    let wait = tat.saturating_sub(now);
    let room = policy.tolerance().saturating_sub(wait);
    (policy.div_emission(room.as_u64()), wait)
}

/// The bucket family's one computation. Returns the decision (with `delay` 0) and,
/// for `leaky_bucket`, the wait `start - t` of an admitted request.
#[inline(always)]
pub(crate) fn check_bucket(
    policy: &Policy,
    tat: &mut Nanos,
    now: Nanos,
    cost: NonZeroU32,
    consume: bool,
) -> (Decision, Nanos) {
    let t = now;
    let emission = policy.emission_interval().as_u64();
    let tau = policy.tolerance();
    let start = if *tat > t { *tat } else { t };
    let wait = start.saturating_sub(t);
    if cost.get() > policy.burst() {
        let (remaining, reset_after) = view(policy, *tat, now);
        return (
            denial(
                policy,
                remaining,
                reset_after,
                None,
                DenyReason::CostExceedsCapacity,
            ),
            Nanos::ZERO,
        );
    }
    // c <= B, so c*T <= tau <= 2^62: no overflow.
    let new_tat = start.saturating_add(Nanos::new(u64::from(cost.get()) * emission));
    let ahead = new_tat.saturating_sub(t);
    if ahead <= tau {
        if consume {
            *tat = new_tat;
        }
        let remaining = policy.div_emission(tau.saturating_sub(ahead).as_u64());
        let decision = Decision {
            allowed: true,
            limit: policy.burst(),
            remaining,
            reset_after: ahead,
            retry_after: None,
            delay: Nanos::ZERO,
            reason: None,
        };
        (decision, wait)
    } else {
        // Denied: wait + c*T > tau, so fewer than c units fit; for c = 1, none.
        let room = tau.saturating_sub(wait).as_u64();
        let remaining = if room < emission {
            0
        } else {
            policy.div_emission(room)
        };
        let retry = ahead.saturating_sub(tau);
        (
            denial(policy, remaining, wait, Some(retry), DenyReason::Limited),
            Nanos::ZERO,
        )
    }
}

fn denial(
    policy: &Policy,
    remaining: u64,
    reset_after: Nanos,
    retry_after: Option<Nanos>,
    reason: DenyReason,
) -> Decision {
    Decision {
        allowed: false,
        limit: policy.burst(),
        remaining,
        reset_after,
        retry_after,
        delay: Nanos::ZERO,
        reason: Some(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Algorithm;

    #[test]
    fn burst_then_steady_rate() {
        // 10 per 10 ns, burst 3: T = 1, tau = 3.
        let p = Policy::new(Algorithm::Gcra, 10, Nanos::new(10))
            .and_then(|p| p.with_burst(3))
            .expect("valid");
        let one = NonZeroU32::MIN;
        let mut tat = Nanos::ZERO;
        let t = Nanos::new(1000);
        let d = check(&p, &mut tat, t, one, true);
        assert_eq!(
            (d.allowed, d.remaining, d.reset_after),
            (true, 2, Nanos::new(1))
        );
        assert!(check(&p, &mut tat, t, one, true).allowed);
        let d = check(&p, &mut tat, t, one, true);
        assert_eq!(
            (d.allowed, d.remaining, d.reset_after),
            (true, 0, Nanos::new(3))
        );
        let d = check(&p, &mut tat, t, one, true);
        assert_eq!(d.retry_after, Some(Nanos::new(1)));
        assert_eq!(d.reason, Some(DenyReason::Limited));
        assert_eq!(tat, Nanos::new(1003), "a denial consumes nothing");
    }

    #[test]
    fn cost_over_burst_is_never_admitted() {
        let p = Policy::new(Algorithm::Gcra, 5, Nanos::new(10)).expect("valid");
        let mut tat = Nanos::ZERO;
        let six = NonZeroU32::new(6).expect("non-zero");
        let d = check(&p, &mut tat, Nanos::new(50), six, true);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, None);
        assert_eq!(d.reason, Some(DenyReason::CostExceedsCapacity));
        assert_eq!(d.remaining, 5);
    }
}
