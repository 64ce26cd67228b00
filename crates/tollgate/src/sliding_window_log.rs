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

use std::num::NonZeroU32;

use parking_lot::{Mutex, MutexGuard};

use crate::decision::{Decision, DenyReason};
use crate::nanos::Nanos;
use crate::policy::Policy;

/// Slots in a page of a pool past its first (a page is 4 KiB).
const PAGE: usize = 256;
/// No slot: a pool never hands out index 0.
const NIL: u32 = 0;

/// One entry `(ts_i, c_i)` in a pool, and the link to the next one of its list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Slot {
    ts: Nanos,
    /// `c_i`: each at most the limit that admitted it, so a `u32`.
    c: u32,
    /// In a log's `older` list, the next newer entry; in its `newer` list, the next
    /// older one; in the pool's free list, the next free slot.
    next: u32,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 16);

/// The entries of logs, in 16-byte slots addressed by `u32` indices. The memory
/// store gives each shard one pool for all its keys' logs, so that an admission
/// writes its entry at the pool's tail, a line the shard's last admissions wrote
/// too (in cache), rather than into a part of the key's own log last written when
/// the key was last seen. A standalone [`SlidingWindowLogState`] has its own.
///
/// Slots freed by pruning go to a free list, reused first. The pool does not shrink
/// by itself: [`Pool::compact`] rebuilds it from the logs that use it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pool {
    /// Slots `0..PAGE` (0 unused), grown as a vector.
    first: Vec<Slot>,
    /// Slots from `PAGE` on, in pages of `PAGE`, never moved.
    pages: Vec<Box<[Slot]>>,
    /// The first index never handed out (0 before the first).
    top: u32,
    /// The first free slot, `NIL` for none.
    free: u32,
    /// Slots in logs.
    held: u32,
}

impl Pool {
    #[inline]
    fn slot(&self, i: u32) -> &Slot {
        let i = i as usize;
        if i < PAGE {
            &self.first[i]
        } else {
            &self.pages[i / PAGE - 1][i % PAGE]
        }
    }

    #[inline]
    fn slot_mut(&mut self, i: u32) -> &mut Slot {
        let i = i as usize;
        if i < PAGE {
            &mut self.first[i]
        } else {
            &mut self.pages[i / PAGE - 1][i % PAGE]
        }
    }

    /// A slot holding `s`: the last freed one, else the next at the tail. `None`
    /// when all 2^32 - 1 indices are in use (64 GiB of entries: not reached).
    #[inline]
    fn alloc(&mut self, s: Slot) -> Option<u32> {
        if self.free != NIL {
            let i = self.free;
            let slot = self.slot_mut(i);
            let next = slot.next;
            *slot = s;
            self.free = next;
            self.held += 1;
            return Some(i);
        }
        if self.top == u32::MAX {
            return None;
        }
        if self.top == 0 {
            self.first.push(Slot::default());
            self.top = 1;
        }
        let i = self.top as usize;
        if i < PAGE {
            self.first.push(s);
        } else {
            if i.is_multiple_of(PAGE) {
                self.pages
                    .push(vec![Slot::default(); PAGE].into_boxed_slice());
            }
            self.pages[i / PAGE - 1][i % PAGE] = s;
        }
        self.top += 1;
        self.held += 1;
        Some(self.top - 1)
    }

    /// Puts slot `i` on the free list.
    #[inline]
    fn release(&mut self, i: u32) {
        let free = self.free;
        self.slot_mut(i).next = free;
        self.free = i;
        self.held -= 1;
    }

    /// Bytes held on the heap.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.first.capacity() * std::mem::size_of::<Slot>()
            + self.pages.len() * PAGE * std::mem::size_of::<Slot>()
            + self.pages.capacity() * std::mem::size_of::<Box<[Slot]>>()
    }

    /// True when more than half the slots handed out are free, past `slack`.
    pub(crate) fn wasteful(&self, slack: usize) -> bool {
        self.top as usize > 2 * self.held as usize + slack
    }

    /// Slots in logs.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held as usize
    }

    /// Rebuilds the pool holding only the entries of `logs` (every log that uses
    /// it), each log's entries oldest first in consecutive slots.
    pub(crate) fn compact<'a>(&mut self, logs: impl Iterator<Item = &'a mut Header>) {
        let mut fresh = Pool::default();
        let mut entries: Vec<(Nanos, u32)> = Vec::new();
        for log in logs {
            entries.clear();
            entries.extend(log.all(self).map(|(ts, c)| (ts, narrow(c))));
            let (mut head, mut prev) = (NIL, NIL);
            for &(ts, c) in &entries {
                let Some(i) = fresh.alloc(Slot { ts, c, next: NIL }) else {
                    break;
                };
                if prev == NIL {
                    head = i;
                } else {
                    fresh.slot_mut(prev).next = i;
                }
                prev = i;
            }
            log.older = head;
            log.newer = NIL;
        }
        *self = fresh;
    }
}

/// The slots of a list, first to last, with their indices.
#[inline]
fn walk(pool: &Pool, head: u32) -> impl Iterator<Item = (u32, Slot)> + '_ {
    std::iter::successors(
        (head != NIL).then(|| (head, *pool.slot(head))),
        |&(_, s)| (s.next != NIL).then(|| (s.next, *pool.slot(s.next))),
    )
}

/// Reverses the list at `head` in place; returns the new head.
fn reverse(pool: &mut Pool, mut head: u32) -> u32 {
    let mut reversed = NIL;
    while head != NIL {
        let slot = pool.slot_mut(head);
        let next = slot.next;
        slot.next = reversed;
        reversed = head;
        head = next;
    }
    reversed
}

/// Where a check finds its log's pool: owned, or behind the shard's mutex, locked
/// only when the check reads or writes an entry (most checks read the header alone
/// or append one entry).
pub(crate) trait Slots {
    fn pool(&mut self) -> &mut Pool;
}

impl Slots for Pool {
    #[inline]
    fn pool(&mut self) -> &mut Pool {
        self
    }
}

/// A shard's pool, locked on first use, unlocked when dropped.
pub(crate) struct Locked<'a> {
    mutex: &'a Mutex<Pool>,
    guard: Option<MutexGuard<'a, Pool>>,
}

impl<'a> Locked<'a> {
    #[inline]
    pub(crate) fn new(mutex: &'a Mutex<Pool>) -> Self {
        Locked { mutex, guard: None }
    }
}

impl Locked<'_> {
    /// True when the check left more than half the pool free, past `slack` (false
    /// when it did not lock the pool).
    #[inline]
    pub(crate) fn wasteful(&self, slack: usize) -> bool {
        self.guard.as_ref().is_some_and(|g| g.wasteful(slack))
    }
}

impl Slots for Locked<'_> {
    #[inline]
    fn pool(&mut self) -> &mut Pool {
        let mutex = self.mutex;
        self.guard.get_or_insert_with(|| mutex.lock())
    }
}

/// A log's header: what a check reads, and the heads of its two lists of entries in
/// a [`Pool`]. The log is the entries of `older` (oldest first), then those of
/// `newer` (held newest first). An admission puts its entry at the head of `newer`,
/// linked to the previous head, so it writes only the new slot (no older part of the
/// log). Pruning takes entries from `older`; when it runs out, `newer` is reversed
/// into it (each entry once).
///
/// 36 bytes, 4-aligned: behind a one-byte mutex and a 24-byte key it fills the
/// memory store's 64-byte entry.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, packed(4))]
pub(crate) struct Header {
    /// The latest instant the state was updated at: the newest entry's `ts`.
    last: Nanos,
    /// `ts_newest + W`: the instant the state is fresh again.
    expires: Nanos,
    /// `ts` of the oldest entry (when there is one), so that a check learns that
    /// nothing has left the window without reading the entries.
    oldest: Nanos,
    /// Sum of every `c_i` in the log. Each admission leaves it at most the limit, a
    /// `u32`.
    total: u32,
    /// Head of the oldest-first list.
    older: u32,
    /// Head of the newest-first list; all later than the entries of `older`.
    newer: u32,
}

const _: () = assert!(std::mem::size_of::<Header>() == 36);

/// `c` as a `u32`: counts and totals never pass a policy's limit, a `u32`.
#[inline]
fn narrow(c: u64) -> u32 {
    debug_assert!(c <= u64::from(u32::MAX));
    u32::try_from(c).unwrap_or(u32::MAX)
}

impl Header {
    /// The instant the state is fresh again: `ts_newest + W`, 0 when never used.
    #[inline]
    pub(crate) fn expires(&self) -> Nanos {
        self.expires
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.older == NIL && self.newer == NIL
    }

    /// Every entry, oldest first. `newer` is walked (into a vector) only when reached.
    fn all<'a>(&self, pool: &'a Pool) -> impl Iterator<Item = (Nanos, u64)> + 'a {
        let newer = self.newer;
        let later = std::iter::once(()).flat_map(move |()| {
            let list: Vec<Slot> = walk(pool, newer).map(|(_, s)| s).collect();
            list.into_iter().rev()
        });
        walk(pool, self.older)
            .map(|(_, s)| s)
            .chain(later)
            .map(|s| (s.ts, u64::from(s.c)))
    }

    /// Every entry, in no particular order.
    fn unordered<'a>(&self, pool: &'a Pool) -> impl Iterator<Item = (Nanos, u64)> + 'a {
        walk(pool, self.older)
            .chain(walk(pool, self.newer))
            .map(|(_, s)| (s.ts, u64::from(s.c)))
    }

    /// Gives every slot back to the pool: the log is empty, as fresh.
    pub(crate) fn release(&mut self, pool: &mut Pool) {
        for head in [self.older, self.newer] {
            let slots: Vec<u32> = walk(pool, head).map(|(i, _)| i).collect();
            for i in slots {
                pool.release(i);
            }
        }
        *self = Header::default();
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

    /// True when some entry is no longer live at `t`.
    #[inline]
    fn has_dead(&self, t: Nanos, w: Nanos) -> bool {
        !self.is_empty() && self.oldest.saturating_add(w) <= t
    }

    /// When `older` is empty, the older entries are in `newer`: reverse it into
    /// `older`, so the oldest are read first. The entries stay the same.
    #[inline]
    fn oldest_first(&mut self, pool: &mut Pool) {
        if self.older == NIL && self.newer != NIL {
            self.older = reverse(pool, self.newer);
            self.newer = NIL;
        }
    }

    /// Drops the entries that are no longer live at `t`.
    fn prune(&mut self, t: Nanos, w: Nanos, pool: &mut Pool) {
        if !self.has_dead(t, w) {
            return;
        }
        loop {
            self.oldest_first(pool);
            if self.older == NIL {
                break;
            }
            let i = self.older;
            let s = *pool.slot(i);
            if s.ts.saturating_add(w) > t {
                // Everything after it is later still: all live.
                self.oldest = s.ts;
                return;
            }
            self.total -= s.c;
            self.older = s.next;
            pool.release(i);
        }
    }

    /// Adds `c` to the newest entry (there is one).
    fn add_to_newest(&mut self, c: u64, pool: &mut Pool) {
        // The newest is the head of `newer`, or when `newer` is empty (just reversed
        // into `older`) the last of `older`.
        let newest = if self.newer != NIL {
            Some(self.newer)
        } else {
            walk(pool, self.older).last().map(|(i, _)| i)
        };
        if let Some(i) = newest {
            let slot = pool.slot_mut(i);
            slot.c = narrow(u64::from(slot.c) + c);
        }
    }

    /// Appends an entry at `t`, later than every one held.
    #[inline]
    fn push(&mut self, t: Nanos, c: u64, pool: &mut Pool) {
        let slot = Slot {
            ts: t,
            c: narrow(c),
            next: self.newer,
        };
        match pool.alloc(slot) {
            Some(i) => self.newer = i,
            // Not reached (2^32 - 1 entries in one pool): fold into the newest.
            None => self.add_to_newest(c, pool),
        }
    }
}

/// Decides a request of `cost` at `now` on the log `log` whose entries are in
/// `slots`; when `consume` is true and the request is admitted, it is appended.
#[inline]
pub(crate) fn check_in(
    policy: &Policy,
    log: &mut Header,
    slots: &mut impl Slots,
    now: Nanos,
    cost: NonZeroU32,
    consume: bool,
) -> Decision {
    let t = now.max(log.last);
    let w = policy.period();
    let dead: u64 = if log.has_dead(t, w) {
        let pool = slots.pool();
        log.oldest_first(pool);
        log.all(pool)
            .take_while(|(ts, _)| ts.saturating_add(w) <= t)
            .map(|(_, c)| c)
            .sum()
    } else {
        0
    };
    let used = u64::from(log.total) - dead;
    let limit = u64::from(policy.limit());
    let c = u64::from(cost.get());
    let mut decision = Decision {
        allowed: false,
        limit: policy.limit(),
        remaining: limit.saturating_sub(used),
        reset_after: log.reset_after(t, w),
        retry_after: None,
        delay: Nanos::ZERO,
        reason: Some(DenyReason::CostExceedsCapacity),
    };
    if c > limit {
        return decision;
    }
    if used + c <= limit {
        if consume {
            let pool = slots.pool();
            // `t` becomes the state's time: entries dead now stay dead.
            log.prune(t, w, pool);
            // The newest entry is at `last`: one admitted at the same instant shares
            // its slot (`last` tells without reading the entries).
            if !log.is_empty() && { log.last } == t {
                log.add_to_newest(c, pool);
            } else {
                if log.is_empty() {
                    log.oldest = t;
                }
                log.push(t, c, pool);
            }
            log.total = narrow(u64::from(log.total) + c);
            log.last = t;
            log.expires = t.saturating_add(w);
        }
        decision.allowed = true;
        decision.remaining = limit - used - c;
        decision.reset_after = w;
        decision.reason = None;
    } else {
        let need = used + c - limit;
        let pool = slots.pool();
        log.oldest_first(pool);
        let mut sum = 0;
        let mut retry = Nanos::ZERO;
        for (ts, n) in log
            .all(pool)
            .skip_while(|(ts, _)| ts.saturating_add(w) <= t)
        {
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

/// `(remaining, reset_after)` at `now` with nothing consumed, for the log `log`
/// whose entries are in `pool`.
pub(crate) fn view_in(policy: &Policy, log: &Header, pool: &Pool, now: Nanos) -> (u64, Nanos) {
    let t = now.max(log.last);
    let w = policy.period();
    let used: u64 = log
        .unordered(pool)
        .filter(|(ts, _)| ts.saturating_add(w) > t)
        .map(|(_, c)| c)
        .sum();
    (
        u64::from(policy.limit()).saturating_sub(used),
        log.reset_after(t, w),
    )
}

/// One key's log, with its own pool of entries. The default value is the fresh
/// state.
///
/// Memory is O(L): entries admitted at the same instant share one 16-byte slot,
/// entries that left the window are dropped when an admission is recorded, and the
/// pool is rebuilt when more than half of it is free.
#[derive(Clone, Default)]
pub struct SlidingWindowLogState {
    header: Header,
    pool: Pool,
}

impl PartialEq for SlidingWindowLogState {
    /// Equal logs hold the same entries, whichever list and slots hold them.
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.header, &other.header);
        let (a_last, a_expires, a_oldest, a_total) = (a.last, a.expires, a.oldest, a.total);
        let (b_last, b_expires, b_oldest, b_total) = (b.last, b.expires, b.oldest, b.total);
        a_total == b_total
            && a_last == b_last
            && a_expires == b_expires
            && a_oldest == b_oldest
            && self.entries().eq(other.entries())
    }
}

impl Eq for SlidingWindowLogState {}

impl std::fmt::Debug for SlidingWindowLogState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = self.header;
        let (last, expires, oldest, total) = (h.last, h.expires, h.oldest, h.total);
        f.debug_struct("SlidingWindowLogState")
            .field("entries", &self.entries().collect::<Vec<_>>())
            .field("total", &total)
            .field("last", &last)
            .field("expires", &expires)
            .field("oldest", &oldest)
            .finish()
    }
}

impl SlidingWindowLogState {
    /// The admitted entries `(ts_i, c_i)` still held, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = (Nanos, u64)> + '_ {
        self.header.all(&self.pool)
    }

    /// The instant the state is fresh again: `ts_newest + W`, 0 when never used.
    pub fn expires(&self) -> Nanos {
        self.header.expires
    }

    /// Bytes held on the heap by this log.
    pub fn heap_bytes(&self) -> usize {
        self.pool.heap_bytes()
    }

    /// Rebuilds the pool when more than half of it is free.
    fn tidy(&mut self) {
        if self.pool.wasteful(16) {
            self.pool.compact(std::iter::once(&mut self.header));
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
    let decision = check_in(
        policy,
        &mut state.header,
        &mut state.pool,
        now,
        cost,
        consume,
    );
    if consume && decision.allowed {
        state.tidy();
    }
    decision
}

/// `(remaining, reset_after)` at `now` with nothing consumed.
pub fn view(policy: &Policy, state: &SlidingWindowLogState, now: Nanos) -> (u64, Nanos) {
    view_in(policy, &state.header, &state.pool, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Algorithm;

    fn admit(p: &Policy, s: &mut SlidingWindowLogState, t: u64) {
        assert!(check(p, s, Nanos::new(t), NonZeroU32::MIN, true).allowed);
    }

    /// Two logs holding the same entries are equal however the entries are split
    /// between the two lists.
    #[test]
    fn equal_logs_whatever_the_split() {
        let p = match Policy::new(Algorithm::SlidingWindowLog, 10, Nanos::new(100)) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        // a: at 101 the entry at 1 has left the window.
        let mut a = SlidingWindowLogState::default();
        for t in [1, 2, 3, 4, 5, 6, 101] {
            admit(&p, &mut a, t);
        }
        let mut b = SlidingWindowLogState::default();
        for t in [2, 3, 4, 5, 6, 101] {
            admit(&p, &mut b, t);
        }
        // a's admission at 101 pruned, reversing the older entries: [2, 3, 4, 5, 6]
        // oldest first, [101] newest first; b's are all newest first.
        let (a_older, b_older) = (a.header.older, b.header.older);
        assert_ne!(a_older == NIL, b_older == NIL);
        assert_eq!(
            a.entries().collect::<Vec<_>>(),
            [2, 3, 4, 5, 6, 101].map(|t| (Nanos::new(t), 1))
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

    /// The log as ALGORITHMS.md states it: every admitted `(t, c)` in a list,
    /// nothing dropped.
    #[derive(Default)]
    struct Reference {
        log: Vec<(u64, u64)>,
        last: u64,
    }

    impl Reference {
        fn check(&mut self, p: &Policy, now: u64, c: u64, consume: bool) -> Decision {
            let t = now.max(self.last);
            let (w, limit) = (p.period().as_u64(), u64::from(p.limit()));
            let live: Vec<(u64, u64)> = self
                .log
                .iter()
                .copied()
                .filter(|&(ts, _)| ts.saturating_add(w) > t)
                .collect();
            let used: u64 = live.iter().map(|&(_, c)| c).sum();
            let newest = self.log.last().map(|&(ts, _)| ts);
            let mut d = Decision {
                allowed: false,
                limit: p.limit(),
                remaining: limit.saturating_sub(used),
                reset_after: newest
                    .map_or(Nanos::ZERO, |ts| Nanos::new((ts + w).saturating_sub(t))),
                retry_after: None,
                delay: Nanos::ZERO,
                reason: Some(DenyReason::CostExceedsCapacity),
            };
            if c > limit {
                return d;
            }
            if used + c <= limit {
                if consume {
                    self.log.push((t, c));
                    self.last = t;
                }
                d.allowed = true;
                d.remaining = limit - used - c;
                d.reset_after = p.period();
                d.reason = None;
            } else {
                let need = used + c - limit;
                let mut sum = 0;
                let j = live.iter().find(|&&(_, c)| {
                    sum += c;
                    sum >= need
                });
                d.retry_after = j.map(|&(ts, _)| Nanos::new(ts + w - t));
                d.reason = Some(DenyReason::Limited);
            }
            d
        }

        /// The entries still live at the state's own time, merged by instant.
        fn live(&self, w: u64) -> Vec<(Nanos, u64)> {
            let mut out: Vec<(Nanos, u64)> = Vec::new();
            for &(ts, c) in &self.log {
                if ts.saturating_add(w) <= self.last {
                    continue;
                }
                match out.last_mut() {
                    Some((prev, n)) if prev.as_u64() == ts => *n += c,
                    _ => out.push((Nanos::new(ts), c)),
                }
            }
            out
        }
    }

    /// Long logs (many entries, both lists, pool rebuilds), gaps from nothing to more
    /// than 32 bits of nanoseconds, denials, peeks and instants out of order: every
    /// decision and every live entry as the reference.
    #[test]
    fn long_logs_match_the_reference() {
        let mut seed = 0x1065_u64;
        let mut next = move || {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let big = 1u64 << 33;
        for (limit, w) in [(40, 1_000), (200, 50_000), (30, 3 * big), (1_000, 40 * big)] {
            let p = match Policy::new(Algorithm::SlidingWindowLog, limit, Nanos::new(w)) {
                Ok(p) => p,
                Err(e) => panic!("{e}"),
            };
            let mut state = SlidingWindowLogState::default();
            let mut reference = Reference::default();
            let mut now = 1u64 << 40;
            let mut most_held = 0;
            for step in 0..6_000 {
                let r = next();
                let gap = match r % 10 {
                    0..=2 => 0,
                    3..=6 => next() % (w / 50 + 2),
                    7 => next() % (w + 2),
                    8 => next() % (big + 2),
                    _ => next() % (w / 4 + 2),
                };
                now += gap;
                // Now and then an instant a little earlier than the last one.
                let at = if r % 17 == 0 {
                    now.saturating_sub(next() % (w / 8 + 1))
                } else {
                    now
                };
                let c = if r % 13 == 0 { next() % 5 + 1 } else { 1 };
                let consume = r % 11 != 0;
                let cost = NonZeroU32::new(c as u32).unwrap_or(NonZeroU32::MIN);
                let before = state.clone();
                let got = check(&p, &mut state, Nanos::new(at), cost, consume);
                let want = reference.check(&p, at, c, consume);
                assert_eq!(got, want, "limit {limit} w {w} step {step}");
                if !got.allowed || !consume {
                    assert_eq!(state, before, "step {step}");
                }
                let live: Vec<(Nanos, u64)> = state
                    .entries()
                    .filter(|(ts, _)| ts.saturating_add(Nanos::new(w)) > { state.header.last })
                    .collect();
                assert_eq!(live, reference.live(w), "limit {limit} w {w} step {step}");
                assert_eq!(state.clone(), state);
                // One slot per entry held, and at most half the pool free (past 16).
                let held = state.entries().count();
                assert_eq!(state.pool.held(), held, "step {step}");
                assert!(!state.pool.wasteful(16), "step {step}");
                most_held = most_held.max(held);
            }
            assert!(
                most_held >= 20,
                "limit {limit} w {w}: {most_held} entries at most"
            );
        }
    }
}
