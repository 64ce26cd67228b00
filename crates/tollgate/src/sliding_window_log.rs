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

/// How many of the newest entries a log holds beside its header.
const PENDING: usize = 2;

/// One key's log. The default value is the fresh state.
///
/// The log is `entries` followed by the `npending` pending entries. A new entry is
/// pending, in the state itself, and when two are pending they move to `entries`
/// at once, so only one admission in two writes to `entries`' buffer: the others
/// touch only the state's own 88 bytes. The fields are in C order, the header
/// first: what a check reads is the first 32 bytes (the memory store keeps them in
/// the cache line of the key and the mutex), what an admission writes next.
#[derive(Clone, Default)]
#[repr(C)]
pub struct SlidingWindowLogState {
    /// Sum of every `c_i` in the log. Each admission leaves it at most the limit, a
    /// `u32`.
    total: u32,
    /// How many of `pending_ts` and `pending_c` hold entries.
    npending: u8,
    /// The latest instant the state was updated at.
    last: Nanos,
    /// `ts_newest + W`: the instant the state is fresh again.
    expires: Nanos,
    /// `ts` of the oldest entry (when there is one), kept beside the header so that a
    /// check learns that nothing has left the window without reading the entries.
    oldest: Nanos,
    /// `ts_i` of the newest entries, oldest first, all later than those in
    /// `entries`.
    pending_ts: [Nanos; PENDING],
    /// Their `c_i`: each at most the limit that admitted it, so a `u32`.
    pending_c: [u32; PENDING],
    /// The older `(ts_i, c_i)`, oldest first; instants strictly increasing.
    entries: VecDeque<(Nanos, u64)>,
}

const _: () = assert!(std::mem::size_of::<SlidingWindowLogState>() == 88);

/// `c` as a `u32`: counts and totals never pass a policy's limit, a `u32`.
#[inline]
fn narrow(c: u64) -> u32 {
    debug_assert!(c <= u64::from(u32::MAX));
    u32::try_from(c).unwrap_or(u32::MAX)
}

impl PartialEq for SlidingWindowLogState {
    /// Equal logs hold the same entries, whichever part holds them.
    fn eq(&self, other: &Self) -> bool {
        self.total == other.total
            && self.last == other.last
            && self.expires == other.expires
            && self.oldest == other.oldest
            && self.entries().eq(other.entries())
    }
}

impl Eq for SlidingWindowLogState {}

impl std::fmt::Debug for SlidingWindowLogState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlidingWindowLogState")
            .field("entries", &self.all().collect::<Vec<_>>())
            .field("total", &self.total)
            .field("last", &self.last)
            .field("expires", &self.expires)
            .field("oldest", &self.oldest)
            .finish()
    }
}

impl SlidingWindowLogState {
    /// The admitted entries `(ts_i, c_i)` still held, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = (Nanos, u64)> + '_ {
        self.all()
    }

    /// Sum of every `c_i` in the log.
    #[inline]
    fn total(&self) -> u64 {
        u64::from(self.total)
    }

    /// Sets the sum of every `c_i`: at most the limit of the policy that admitted the
    /// latest entry (after an admission `total = used + c <= L`; pruning lowers it).
    #[inline]
    fn set_total(&mut self, total: u64) {
        self.total = narrow(total);
    }

    /// The pending entries, oldest first.
    #[inline]
    fn pending(&self) -> impl Iterator<Item = (Nanos, u64)> + '_ {
        self.pending_ts[..usize::from(self.npending)]
            .iter()
            .zip(&self.pending_c)
            .map(|(&ts, &c)| (ts, u64::from(c)))
    }

    /// Every entry, oldest first.
    #[inline]
    fn all(&self) -> impl Iterator<Item = (Nanos, u64)> + '_ {
        self.entries.iter().copied().chain(self.pending())
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.npending == 0 && self.entries.is_empty()
    }

    /// Adds `c` to the newest entry (there is one).
    #[inline]
    fn add_to_newest(&mut self, c: u64) {
        match usize::from(self.npending) {
            0 => {
                if let Some((_, n)) = self.entries.back_mut() {
                    *n += c;
                }
            }
            n => self.pending_c[n - 1] = narrow(u64::from(self.pending_c[n - 1]) + c),
        }
    }

    /// Appends an entry later than every one held.
    #[inline]
    fn push(&mut self, ts: Nanos, c: u64) {
        let n = usize::from(self.npending);
        if n < PENDING {
            self.pending_ts[n] = ts;
            self.pending_c[n] = narrow(c);
            self.npending += 1;
        } else {
            let moved: [(Nanos, u64); PENDING] =
                std::array::from_fn(|i| (self.pending_ts[i], u64::from(self.pending_c[i])));
            self.entries.extend(moved);
            self.pending_ts[0] = ts;
            self.pending_c[0] = narrow(c);
            self.npending = 1;
        }
    }

    /// The instant the state is fresh again: `ts_newest + W`, 0 when never used.
    pub fn expires(&self) -> Nanos {
        self.expires
    }

    /// `ts_newest + W - t` under the policy asked now (its `W` may differ from the
    /// one that set `expires`), 0 for an empty log.
    fn reset_after(&self, t: Nanos, w: Nanos) -> Nanos {
        if self.is_empty() {
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
    fn live(&self, t: Nanos, w: Nanos) -> impl Iterator<Item = (Nanos, u64)> + '_ {
        self.all()
            .skip_while(move |(ts, _)| ts.saturating_add(w) <= t)
    }

    /// True when some entry is no longer live at `t`.
    #[inline]
    fn has_dead(&self, t: Nanos, w: Nanos) -> bool {
        !self.is_empty() && self.oldest.saturating_add(w) <= t
    }

    /// Drops the entries that are no longer live at `t`.
    fn prune(&mut self, t: Nanos, w: Nanos) {
        if !self.has_dead(t, w) {
            return;
        }
        while let Some(&(ts, c)) = self.entries.front() {
            if ts.saturating_add(w) > t {
                // The pending entries are later still: all live.
                self.oldest = ts;
                return;
            }
            self.entries.pop_front();
            self.set_total(self.total() - c);
        }
        if self.entries.capacity() > 64 {
            self.entries = VecDeque::new();
        }
        let n = usize::from(self.npending);
        let dead = self.pending_ts[..n]
            .iter()
            .take_while(|ts| ts.saturating_add(w) <= t)
            .count();
        let gone: u64 = self.pending_c[..dead].iter().map(|&c| u64::from(c)).sum();
        self.set_total(self.total() - gone);
        self.pending_ts.copy_within(dead..n, 0);
        self.pending_c.copy_within(dead..n, 0);
        // At most PENDING (2), so it fits in u8.
        self.npending = (n - dead) as u8;
        if self.npending > 0 {
            self.oldest = self.pending_ts[0];
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
            .all()
            .take_while(|(ts, _)| ts.saturating_add(w) <= t)
            .map(|(_, c)| c)
            .sum()
    } else {
        0
    };
    let used = state.total() - dead;
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
            if !state.is_empty() && state.last == t {
                state.add_to_newest(c);
            } else {
                if state.is_empty() {
                    state.oldest = t;
                }
                state.push(t, c);
            }
            state.set_total(state.total() + c);
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
        for (ts, n) in state.live(t, w) {
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
        .all()
        .filter(|(ts, _)| ts.saturating_add(w) > t)
        .map(|(_, c)| c)
        .sum();
    (
        u64::from(policy.limit()).saturating_sub(used),
        state.reset_after(t, w),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Algorithm;

    fn admit(p: &Policy, s: &mut SlidingWindowLogState, t: u64) {
        assert!(check(p, s, Nanos::new(t), NonZeroU32::MIN, true).allowed);
    }

    /// Two logs holding the same entries are equal however the entries are split
    /// between the heap and the slots beside the header.
    #[test]
    fn equal_logs_whatever_the_split() {
        let p = match Policy::new(Algorithm::SlidingWindowLog, 10, Nanos::new(100)) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        // a: 1 and 2 beside the header; 3 moves them to the heap; at 101 the entry
        // at 1 has left the window: heap [2, 3, 4], beside the header [101].
        let mut a = SlidingWindowLogState::default();
        for t in [1, 2, 3, 4, 101] {
            admit(&p, &mut a, t);
        }
        // b: heap [2, 3], beside the header [4, 101].
        let mut b = SlidingWindowLogState::default();
        for t in [2, 3, 4, 101] {
            admit(&p, &mut b, t);
        }
        assert_ne!(a.entries.len(), b.entries.len());
        assert_eq!(
            a.entries().collect::<Vec<_>>(),
            [2, 3, 4, 101].map(|t| (Nanos::new(t), 1))
        );
        assert_eq!(a, b);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        // They decide alike from here on, and the log stays exact across the split.
        for t in [102, 102, 103, 104, 105, 106, 107, 108, 109] {
            let (da, db) = (
                check(&p, &mut a, Nanos::new(t), NonZeroU32::MIN, true),
                check(&p, &mut b, Nanos::new(t), NonZeroU32::MIN, true),
            );
            assert!(da.allowed);
            assert_eq!(da, db);
        }
        // (10, 110] holds 101, 102 twice, 103 to 109: ten, the limit. The entry at
        // 101 is the first to leave, at 201.
        let d = check(&p, &mut a, Nanos::new(110), NonZeroU32::MIN, true);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, Some(Nanos::new(91)));
        assert_eq!(a, b);
    }
}
