//! `sliding_window_log`: a log of the admitted requests, exact over any window.
//!
//! At `t` an entry `(ts_i, c_i)` is live iff `ts_i > t - W` (the window is
//! `(t - W, t]`); `used = sum of live c_i`.
//!
//! - admit iff `used + c <= L`; then append `(t, c)`
//! - `remaining = L - used` (after the decision)
//! - `reset_after = ts_newest + W - t` (0 if the log is empty)
//! - `retry_after`: with live entries oldest first, the first `j` whose running sum of
//!   `c_i` reaches `used + c - L`; `retry_after = ts_j + W - t`
//!
//! Never more than `L` units in any half-open interval of length `W`. Memory is
//! O(L) per key: entries admitted at the same instant share one slot, and entries
//! that left the window are dropped when an admission is recorded. Denials and peeks
//! leave the log as it is: a later request may carry an earlier `t` (a skewed
//! clock, or threads that read the clock in one order and reach the key in the
//! other), and an entry dead at one `t` can be live at an earlier one.
//!
//! ```
//! use std::num::NonZeroU32;
//! use tollgate::{sliding_window_log as swl, Algorithm, Nanos, Policy};
//!
//! let p = Policy::new(Algorithm::SlidingWindowLog, 2, Nanos::new(100))?;
//! let one = NonZeroU32::MIN;
//! let mut log = swl::SlidingWindowLogState::default();
//! assert!(swl::check(&p, &mut log, Nanos::new(1_000), one, true).allowed);
//! assert!(swl::check(&p, &mut log, Nanos::new(1_060), one, true).allowed);
//! let d = swl::check(&p, &mut log, Nanos::new(1_080), one, true);
//! assert_eq!(d.retry_after, Some(Nanos::new(20))); // the entry at 1_000 leaves at 1_100
//! assert!(!swl::check(&p, &mut log, Nanos::new(1_099), one, true).allowed);
//! assert!(swl::check(&p, &mut log, Nanos::new(1_100), one, true).allowed);
//! # Ok::<(), tollgate::PolicyError>(())
//! ```

use std::collections::VecDeque;
use std::num::NonZeroU32;

use crate::decision::{Decision, DenyReason};
use crate::nanos::Nanos;
use crate::policy::Policy;

/// One key's log. The default value is the fresh state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlidingWindowLogState {
    /// `(ts_i, c_i)`, oldest first; instants strictly increasing.
    entries: VecDeque<(Nanos, u64)>,
    /// Sum of every `c_i` in `entries`.
    total: u64,
    /// The latest instant the state was updated at.
    last: Nanos,
    /// `ts_newest + W`: the instant the state is fresh again.
    expires: Nanos,
    /// `ts` of the oldest entry (when there is one), kept beside the header so that a
    /// check learns that nothing has left the window without reading the entries.
    oldest: Nanos,
}

impl SlidingWindowLogState {
    /// The admitted entries `(ts_i, c_i)` still held, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = (Nanos, u64)> + '_ {
        self.entries.iter().copied()
    }

    /// The instant the state is fresh again: `ts_newest + W`, 0 when never used.
    pub fn expires(&self) -> Nanos {
        self.expires
    }

    /// `ts_newest + W - t` under the policy asked now (its `W` may differ from the
    /// one that set `expires`), 0 for an empty log.
    fn reset_after(&self, t: Nanos, w: Nanos) -> Nanos {
        if self.entries.is_empty() {
            Nanos::ZERO
        } else {
            self.last.saturating_add(w).saturating_sub(t)
        }
    }

    /// Bytes held on the heap by this log.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<(Nanos, u64)>()
    }

    /// `(ts_i, c_i)` of the entries live at `t`, oldest first.
    fn live(&self, t: Nanos, w: Nanos) -> impl Iterator<Item = &(Nanos, u64)> + '_ {
        self.entries
            .iter()
            .skip_while(move |(ts, _)| ts.saturating_add(w) <= t)
    }

    /// True when some entry is no longer live at `t`.
    #[inline]
    fn has_dead(&self, t: Nanos, w: Nanos) -> bool {
        !self.entries.is_empty() && self.oldest.saturating_add(w) <= t
    }

    /// Drops the entries that are no longer live at `t`.
    fn prune(&mut self, t: Nanos, w: Nanos) {
        if !self.has_dead(t, w) {
            return;
        }
        while let Some(&(ts, c)) = self.entries.front() {
            if ts.saturating_add(w) > t {
                self.oldest = ts;
                break;
            }
            self.entries.pop_front();
            self.total -= c;
        }
        if self.entries.is_empty() && self.entries.capacity() > 64 {
            self.entries = VecDeque::new();
        }
    }
}

/// Decides a request of `cost` at `now`; when `consume` is true and the request is
/// admitted, it is appended to the log.
pub fn check(
    policy: &Policy,
    state: &mut SlidingWindowLogState,
    now: Nanos,
    cost: NonZeroU32,
    consume: bool,
) -> Decision {
    let t = now.max(state.last);
    let w = policy.period();
    let dead: u64 = if state.has_dead(t, w) {
        state
            .entries
            .iter()
            .take_while(|(ts, _)| ts.saturating_add(w) <= t)
            .map(|&(_, c)| c)
            .sum()
    } else {
        0
    };
    let used = state.total - dead;
    let limit = u64::from(policy.limit());
    let c = u64::from(cost.get());
    let mut decision = Decision {
        allowed: false,
        limit: policy.limit(),
        remaining: limit.saturating_sub(used),
        reset_after: state.reset_after(t, w),
        retry_after: None,
        delay: Nanos::ZERO,
        reason: Some(DenyReason::CostExceedsCapacity),
    };
    if c > limit {
        return decision;
    }
    if used + c <= limit {
        if consume {
            // `t` becomes the state's time: entries dead now stay dead.
            state.prune(t, w);
            // The newest entry is at `last`: one admitted at the same instant shares
            // its slot (`last` tells without reading the entries).
            match state.entries.back_mut() {
                Some((_, n)) if state.last == t => *n += c,
                _ => {
                    if state.entries.is_empty() {
                        state.oldest = t;
                    }
                    state.entries.push_back((t, c));
                }
            }
            state.total += c;
            state.last = t;
            state.expires = t.saturating_add(w);
        }
        decision.allowed = true;
        decision.remaining = limit - used - c;
        decision.reset_after = w;
        decision.reason = None;
    } else {
        let need = used + c - limit;
        let mut sum = 0;
        let mut retry = Nanos::ZERO;
        for &(ts, n) in state.live(t, w) {
            sum += n;
            if sum >= need {
                retry = ts.saturating_add(w).saturating_sub(t);
                break;
            }
        }
        decision.retry_after = Some(retry);
        decision.reason = Some(DenyReason::Limited);
    }
    decision
}

/// `(remaining, reset_after)` at `now` with nothing consumed.
pub fn view(policy: &Policy, state: &SlidingWindowLogState, now: Nanos) -> (u64, Nanos) {
    let t = now.max(state.last);
    let w = policy.period();
    let used: u64 = state
        .entries
        .iter()
        .filter(|(ts, _)| ts.saturating_add(w) > t)
        .map(|&(_, c)| c)
        .sum();
    (
        u64::from(policy.limit()).saturating_sub(used),
        state.reset_after(t, w),
    )
}
