//! `sliding_window_counter`: the two-window approximation popularised by Cloudflare.
//!
//! Windows as in [`crate::fixed_window`]; `e = t - kW`, `prev = count_{k-1}`,
//! `curr = count_k`.
//!
//! - admit iff `prev * (W - e) + (curr + c) * W <= L * W`; then `curr += c`
//! - `remaining = floor((L*W - prev*(W - e) - curr*W) / W)`, at least 0
//! - `reset_after = (k+2)W - t` if `curr > 0`, else `(k+1)W - t` if `prev > 0`, else 0
//! - `retry_after`: the smallest `d >= 0` such that the same test holds at `t + d`
//!   (it may fall in the next window, where `prev` becomes today's `curr`)
//!
//! All products are computed in `u128`, exactly.
//!
//! ```
//! use std::num::NonZeroU32;
//! use tollgate::{sliding_window_counter as swc, Algorithm, Nanos, Policy};
//!
//! let p = Policy::new(Algorithm::SlidingWindowCounter, 4, Nanos::new(100))?;
//! let one = NonZeroU32::MIN;
//! let mut s = swc::SlidingWindowCounterState::default();
//! for _ in 0..4 {
//!     assert!(swc::check(&p, &mut s, Nanos::new(1_000), one, true).allowed);
//! }
//! // At 1_150 half of the previous window still weighs: 4 * 50 / 100 = 2 used.
//! let d = swc::check(&p, &mut s, Nanos::new(1_150), one, true);
//! assert!(d.allowed);
//! assert_eq!(d.remaining, 1);
//! # Ok::<(), tollgate::PolicyError>(())
//! ```

use std::num::NonZeroU32;

use crate::decision::{Decision, DenyReason};
use crate::nanos::Nanos;
use crate::policy::Policy;

/// One key's sliding-window-counter state. The default value is the fresh state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlidingWindowCounterState {
    /// Units admitted in window `k - 1`, where `k = floor(last / W)`. At most `L`,
    /// so 32 bits hold it.
    pub prev: u32,
    /// Units admitted in window `k`.
    pub curr: u32,
    /// The instant of the latest admission: its window is `k`.
    pub last: Nanos,
    /// The instant the state is fresh again: `(k+2)W` after an admission.
    pub expires: Nanos,
}

struct Now {
    t: u64,
    w: u64,
    k: u64,
    e: u64,
    prev: u64,
    curr: u64,
}

fn at(policy: &Policy, state: &SlidingWindowCounterState, now: Nanos) -> Now {
    let t = now.max(state.last).as_u64();
    let w = policy.period().as_u64();
    let k = policy.div_period(t);
    let counted = policy.div_period(state.last.as_u64());
    let (prev, curr) = if counted == k {
        (u64::from(state.prev), u64::from(state.curr))
    } else if counted.checked_add(1) == Some(k) {
        (u64::from(state.curr), 0)
    } else {
        (0, 0)
    };
    Now {
        t,
        w,
        k,
        e: t - k * w,
        prev,
        curr,
    }
}

impl Now {
    /// `prev * (W - e) + curr * W`: the weighted use, scaled by `W`.
    fn used(&self) -> u128 {
        u128::from(self.prev) * u128::from(self.w - self.e)
            + u128::from(self.curr) * u128::from(self.w)
    }

    fn remaining(&self, policy: &Policy) -> u64 {
        let cap = u128::from(policy.limit()) * u128::from(self.w);
        let room = cap.saturating_sub(self.used());
        match u64::try_from(room) {
            Ok(room) => policy.div_period(room),
            // At most L, so the quotient fits in u64.
            Err(_) => (room / u128::from(self.w)) as u64,
        }
    }

    /// `(k+n)W - t`, saturating.
    fn until_window(&self, n: u64) -> Nanos {
        Nanos::new(
            self.k
                .saturating_add(n)
                .saturating_mul(self.w)
                .saturating_sub(self.t),
        )
    }

    fn reset_after(&self) -> Nanos {
        if self.curr > 0 {
            self.until_window(2)
        } else if self.prev > 0 {
            self.until_window(1)
        } else {
            Nanos::ZERO
        }
    }

    /// The smallest `d` after which a request of cost `c` (`c <= L`) would pass.
    fn retry_after(&self, limit: u64, c: u64) -> Nanos {
        let w = u128::from(self.w);
        let e = u128::from(self.e);
        let prev = u128::from(self.prev);
        // Later in this window: need prev * (W - e - d) <= L*W - (curr + c)*W.
        let room = (u128::from(limit) * w).checked_sub((u128::from(self.curr) + u128::from(c)) * w);
        if let Some(room) = room {
            // With prev = 0 the test would hold now, so the request was not denied.
            let Some(fits) = room.checked_div(prev) else {
                return Nanos::ZERO;
            };
            let d = (w - e).saturating_sub(fits);
            if d < w - e {
                return Nanos::new(d as u64);
            }
        }
        // In window k+1: prev' = curr, curr' = 0, e' = d - (W - e).
        // Need curr * (W - e') + c*W <= L*W.
        let curr = u128::from(self.curr);
        let to_next = w - e;
        if curr == 0 {
            return Nanos::new(to_next as u64);
        }
        let room = (u128::from(limit) - u128::from(c)) * w;
        let e_next = w.saturating_sub(room / curr);
        if e_next < w {
            return Nanos::new((to_next + e_next) as u64);
        }
        // Window k+2: nothing weighs any more.
        Nanos::new((to_next + w) as u64)
    }
}

/// Decides a request of `cost` at `now`; when `consume` is true and the request is
/// admitted, `state` counts it.
pub fn check(
    policy: &Policy,
    state: &mut SlidingWindowCounterState,
    now: Nanos,
    cost: NonZeroU32,
    consume: bool,
) -> Decision {
    let mut n = at(policy, state, now);
    let limit = u64::from(policy.limit());
    let c = u64::from(cost.get());
    let mut decision = Decision {
        allowed: false,
        limit: policy.limit(),
        remaining: n.remaining(policy),
        reset_after: n.reset_after(),
        retry_after: None,
        delay: Nanos::ZERO,
        reason: Some(DenyReason::CostExceedsCapacity),
    };
    if c > limit {
        return decision;
    }
    let cap = u128::from(limit) * u128::from(n.w);
    if n.used() + u128::from(c) * u128::from(n.w) <= cap {
        n.curr += c;
        if consume {
            // Both are at most L (a u32): admitted units never exceed the limit.
            *state = SlidingWindowCounterState {
                prev: u32::try_from(n.prev).unwrap_or(u32::MAX),
                curr: u32::try_from(n.curr).unwrap_or(u32::MAX),
                last: Nanos::new(n.t),
                expires: Nanos::new(n.t).saturating_add(n.until_window(2)),
            };
        }
        decision.allowed = true;
        decision.remaining = n.remaining(policy);
        decision.reset_after = n.reset_after();
        decision.reason = None;
    } else {
        decision.retry_after = Some(n.retry_after(limit, c));
        decision.reason = Some(DenyReason::Limited);
    }
    decision
}

/// `(remaining, reset_after)` at `now` with nothing consumed.
pub fn view(policy: &Policy, state: &SlidingWindowCounterState, now: Nanos) -> (u64, Nanos) {
    let n = at(policy, state, now);
    (n.remaining(policy), n.reset_after())
}
