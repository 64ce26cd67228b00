//! `fixed_window`: windows aligned to the clock.
//!
//! Window `k = floor(t / W)` covers `[kW, (k+1)W)`.
//!
//! - admit iff `count_k + c <= L`; then `count_k += c`
//! - `remaining = L - count_k`; `reset_after = (k+1)W - t`; `retry_after = (k+1)W - t`
//!
//! Known weakness: up to `2L` can pass within an instant around a window boundary
//! (`L` just before `(k+1)W`, `L` at it).
//!
//! ```
//! use std::num::NonZeroU32;
//! use tollgate::{fixed_window, Algorithm, Nanos, Policy};
//! use tollgate::fixed_window::FixedWindowState;
//!
//! let p = Policy::new(Algorithm::FixedWindow, 2, Nanos::from_secs(10))?;
//! let one = NonZeroU32::MIN;
//! let mut s = FixedWindowState::default();
//! let edge = Nanos::from_secs(20);
//! let before = Nanos::new(edge.as_u64() - 1);
//! assert!(fixed_window::check(&p, &mut s, before, one, true).allowed);
//! assert!(fixed_window::check(&p, &mut s, before, one, true).allowed);
//! let d = fixed_window::check(&p, &mut s, before, one, true);
//! assert_eq!(d.retry_after, Some(Nanos::new(1)));
//! // One nanosecond later a new window opens: 2L within 1 ns.
//! assert!(fixed_window::check(&p, &mut s, edge, one, true).allowed);
//! assert!(fixed_window::check(&p, &mut s, edge, one, true).allowed);
//! # Ok::<(), tollgate::PolicyError>(())
//! ```

use std::num::NonZeroU32;

use crate::decision::{Decision, DenyReason};
use crate::nanos::Nanos;
use crate::policy::Policy;

/// One key's fixed-window state. The default value is the fresh state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FixedWindowState {
    /// Units admitted in window `k = floor(last / W)`.
    pub count: u64,
    /// The instant of the latest admission; time never runs backwards past it, and
    /// its window is the one `count` belongs to.
    pub last: Nanos,
    /// The instant the state is fresh again: `(k+1)W`, or 0 when nothing was counted.
    pub expires: Nanos,
}

struct Now {
    t: Nanos,
    count: u64,
    end: Nanos,
}

fn at(policy: &Policy, state: &FixedWindowState, now: Nanos) -> Now {
    let t = now.max(state.last);
    let w = policy.period().as_u64();
    let k = policy.div_period(t.as_u64());
    let counted = policy.div_period(state.last.as_u64());
    let count = if counted == k { state.count } else { 0 };
    let end = Nanos::new(k.saturating_add(1).saturating_mul(w)).saturating_sub(t);
    Now { t, count, end }
}

/// Decides a request of `cost` at `now`; when `consume` is true and the request is
/// admitted, `state` counts it.
pub fn check(
    policy: &Policy,
    state: &mut FixedWindowState,
    now: Nanos,
    cost: NonZeroU32,
    consume: bool,
) -> Decision {
    let Now { t, count, end } = at(policy, state, now);
    let limit = u64::from(policy.limit());
    let c = u64::from(cost.get());
    let mut decision = Decision {
        allowed: false,
        limit: policy.limit(),
        remaining: limit.saturating_sub(count),
        reset_after: end,
        retry_after: None,
        delay: Nanos::ZERO,
        reason: Some(DenyReason::CostExceedsCapacity),
    };
    if c > limit {
        return decision;
    }
    if count + c <= limit {
        if consume {
            *state = FixedWindowState {
                count: count + c,
                last: t,
                expires: t.saturating_add(end),
            };
        }
        decision.allowed = true;
        decision.remaining = limit - count - c;
        decision.reason = None;
    } else {
        decision.retry_after = Some(end);
        decision.reason = Some(DenyReason::Limited);
    }
    decision
}

/// `(remaining, reset_after)` at `now` with nothing consumed.
pub fn view(policy: &Policy, state: &FixedWindowState, now: Nanos) -> (u64, Nanos) {
    let n = at(policy, state, now);
    (u64::from(policy.limit()).saturating_sub(n.count), n.end)
}
