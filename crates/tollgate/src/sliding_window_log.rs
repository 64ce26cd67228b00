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

use smallvec::SmallVec;

use crate::decision::{Decision, DenyReason};
use crate::nanos::Nanos;
use crate::policy::Policy;

/// How many of the newest entries a log holds beside its header.
const PENDING: usize = 5;
/// How many entries a chunk of the older ones holds.
const CHUNK: usize = 5;

/// Up to [`CHUNK`] older entries, on the heap, in a singly linked list.
struct Chunk {
    /// `ts_i`, strictly increasing.
    ts: [Nanos; CHUNK],
    /// `c_i`: each at most the limit that admitted it, so a `u32`.
    c: [u32; CHUNK],
    /// The first entry still held (pruning moves it forward).
    start: u8,
    /// The slots in use.
    len: u8,
    /// In the older list, the next newer chunk; in the newer list, the next older.
    next: Option<Box<Chunk>>,
}

impl Chunk {
    #[inline]
    fn entries(&self) -> impl DoubleEndedIterator<Item = (Nanos, u64)> + '_ {
        let (start, len) = (usize::from(self.start), usize::from(self.len));
        self.ts[start..len]
            .iter()
            .zip(&self.c[start..len])
            .map(|(&ts, &c)| (ts, u64::from(c)))
    }
}

/// The chunks of a list, first to last.
#[inline]
fn chunks(list: &Option<Box<Chunk>>) -> impl Iterator<Item = &Chunk> {
    std::iter::successors(list.as_deref(), |c| c.next.as_deref())
}

/// The list in the other order.
fn reverse(mut list: Option<Box<Chunk>>) -> Option<Box<Chunk>> {
    let mut reversed = None;
    while let Some(mut chunk) = list {
        list = chunk.next.take();
        chunk.next = reversed;
        reversed = Some(chunk);
    }
    reversed
}

/// A copy of the list, made without recursion.
fn clone_list(list: &Option<Box<Chunk>>) -> Option<Box<Chunk>> {
    let copies: Vec<Box<Chunk>> = chunks(list).map(|c| Box::new(c.clone_head())).collect();
    let mut out = None;
    for mut c in copies.into_iter().rev() {
        c.next = out;
        out = Some(c);
    }
    out
}

impl Chunk {
    /// The chunk's own entries, without its successors.
    fn clone_head(&self) -> Chunk {
        Chunk {
            ts: self.ts,
            c: self.c,
            start: self.start,
            len: self.len,
            next: None,
        }
    }
}

/// Frees a list without recursion (dropping a long chain recursively could overflow
/// the stack).
fn free(mut list: Option<Box<Chunk>>) {
    while let Some(mut chunk) = list {
        list = chunk.next.take();
    }
}

/// One key's log. The default value is the fresh state.
///
/// The log is the entries of `older` (oldest first), then those of `newer` (held
/// newest first), then the `npending` pending entries. A new entry is pending, in
/// the state itself; when five are pending (or the oldest pending one is too
/// far back to be written as an offset), they move together to the head of
/// `newer`: into the room left in its first chunk (`head` tells whether there is
/// any without reading it), else a chunk allocated for them. So an admission writes
/// only the state's own bytes, and one in five writes memory that was just
/// allocated, never an older part of the log. Pruning takes entries from `older`;
/// when it runs out, `newer` is reversed into it (each chunk once). A pending entry
/// is held as its offset back from `last` (the newest entry's instant) in the high
/// 32 bits and its `c_i` in the low 32.
///
/// The fields are in C order, the header first: what a check reads is the first 32
/// bytes (the memory store keeps them in the cache line of the key and the mutex),
/// what an admission writes next.
#[derive(Default)]
#[repr(C)]
pub struct SlidingWindowLogState {
    /// Sum of every `c_i` in the log. Each admission leaves it at most the limit, a
    /// `u32`.
    total: u32,
    /// How many of `pending` hold entries.
    npending: u8,
    /// The slots in use in the first chunk of `newer` (0 when `newer` is empty), so
    /// that a spill learns that chunk is full without reading it: it was written
    /// long ago, and reading it was a cache miss on one admission in five.
    head: u8,
    /// The latest instant the state was updated at: the newest entry's `ts`.
    last: Nanos,
    /// `ts_newest + W`: the instant the state is fresh again.
    expires: Nanos,
    /// `ts` of the oldest entry (when there is one), kept beside the header so that a
    /// check learns that nothing has left the window without reading the entries.
    oldest: Nanos,
    /// The oldest chunks, oldest first.
    older: Option<Box<Chunk>>,
    /// The newer chunks, newest first; all later than those of `older`.
    newer: Option<Box<Chunk>>,
    /// The newest entries, oldest first, all later than those in the chunks:
    /// `(last - ts_i) << 32 | c_i`.
    pending: [u64; PENDING],
}

const _: () = assert!(std::mem::size_of::<SlidingWindowLogState>() == 88);

/// `c` as a `u32`: counts and totals never pass a policy's limit, a `u32`.
#[inline]
fn narrow(c: u64) -> u32 {
    debug_assert!(c <= u64::from(u32::MAX));
    u32::try_from(c).unwrap_or(u32::MAX)
}

impl Clone for SlidingWindowLogState {
    fn clone(&self) -> Self {
        SlidingWindowLogState {
            total: self.total,
            npending: self.npending,
            head: self.head,
            last: self.last,
            expires: self.expires,
            oldest: self.oldest,
            older: clone_list(&self.older),
            newer: clone_list(&self.newer),
            pending: self.pending,
        }
    }
}

impl Drop for SlidingWindowLogState {
    fn drop(&mut self) {
        free(self.older.take());
        free(self.newer.take());
    }
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

    /// `ts_i` of the pending entry `i`.
    #[inline]
    fn pending_ts(&self, i: usize) -> Nanos {
        self.last.saturating_sub(Nanos::new(self.pending[i] >> 32))
    }

    /// `c_i` of the pending entry `i`.
    #[inline]
    fn pending_c(&self, i: usize) -> u64 {
        self.pending[i] & u64::from(u32::MAX)
    }

    /// The pending entries, oldest first.
    #[inline]
    fn pending(&self) -> impl Iterator<Item = (Nanos, u64)> + '_ {
        (0..usize::from(self.npending)).map(|i| (self.pending_ts(i), self.pending_c(i)))
    }

    /// The entries of the chunks, oldest first. `newer` is walked only when reached.
    #[inline]
    fn chunked(&self) -> impl Iterator<Item = (Nanos, u64)> + '_ {
        let newer = std::iter::once(()).flat_map(move |()| {
            let list: SmallVec<[&Chunk; 8]> = chunks(&self.newer).collect();
            list.into_iter().rev().flat_map(Chunk::entries)
        });
        chunks(&self.older).flat_map(Chunk::entries).chain(newer)
    }

    /// Every entry, oldest first.
    #[inline]
    fn all(&self) -> impl Iterator<Item = (Nanos, u64)> + '_ {
        self.chunked().chain(self.pending())
    }

    /// Every entry holds at least one unit (a cost is never 0), so the log is empty
    /// exactly when its total is 0: one load instead of three.
    #[inline]
    fn is_empty(&self) -> bool {
        debug_assert_eq!(
            self.total == 0,
            self.npending == 0 && self.older.is_none() && self.newer.is_none()
        );
        self.total == 0
    }

    /// Adds `c` to the newest entry (there is one).
    #[inline]
    fn add_to_newest(&mut self, c: u64) {
        match usize::from(self.npending) {
            0 => {
                // Not reached: an admission leaves an entry pending, and only an
                // admission prunes. Kept for a log that ends in a chunk.
                if self.newer.is_none() {
                    self.newer = reverse(self.older.take());
                    self.head = self.newer.as_deref().map_or(0, |c| c.len);
                }
                if let Some(chunk) = self.newer.as_deref_mut()
                    && let Some(i) = usize::from(chunk.len).checked_sub(1)
                {
                    chunk.c[i] = narrow(u64::from(chunk.c[i]) + c);
                }
            }
            n => self.pending[n - 1] += c,
        }
    }

    /// Moves the pending entries to the head of `newer`: as many as there is room
    /// for into its first chunk, the rest into a new one. So every chunk is full
    /// but the newest, the oldest, and the newest of those last reversed into
    /// `older`: with a chunk's allocation, 16 bytes per entry.
    /// (When five move, the first chunk is full unless the previous move was of fewer,
    /// which happens only after a gap of seconds: a busy key writes only the new
    /// chunk, and `head` tells it so without reading the full one.)
    #[inline(never)]
    fn spill(&mut self) {
        let n = usize::from(self.npending);
        let moved: [(Nanos, u32); PENDING] =
            std::array::from_fn(|i| (self.pending_ts(i), narrow(self.pending_c(i))));
        let mut rest = &moved[..n];
        // The first chunk is read only when it has room (`head` says so).
        if usize::from(self.head) < CHUNK
            && let Some(chunk) = self.newer.as_deref_mut()
        {
            let at = usize::from(self.head);
            debug_assert_eq!(at, usize::from(chunk.len));
            let k = (CHUNK - at).min(rest.len());
            for (j, &(ts, c)) in rest[..k].iter().enumerate() {
                chunk.ts[at + j] = ts;
                chunk.c[at + j] = c;
            }
            // At most CHUNK (5), so it fits in u8.
            chunk.len = (at + k) as u8;
            self.head = chunk.len;
            rest = &rest[k..];
        }
        if !rest.is_empty() {
            let mut chunk = Box::new(Chunk {
                ts: [Nanos::ZERO; CHUNK],
                c: [0; CHUNK],
                start: 0,
                // At most PENDING (5), so it fits in u8.
                len: rest.len() as u8,
                next: self.newer.take(),
            });
            for (j, &(ts, c)) in rest.iter().enumerate() {
                chunk.ts[j] = ts;
                chunk.c[j] = c;
            }
            self.newer = Some(chunk);
            // At most PENDING (5), so it fits in u8.
            self.head = rest.len() as u8;
        }
        self.npending = 0;
    }

    /// Appends an entry at `t`, later than every one held (`t > last`, or the log is
    /// empty and `t >= last`).
    #[inline]
    fn push(&mut self, t: Nanos, c: u64) {
        let shift = t.saturating_sub(self.last).as_u64();
        let n = usize::from(self.npending);
        if n == PENDING
            || (n > 0 && (self.pending[0] >> 32).saturating_add(shift) > u64::from(u32::MAX))
        {
            self.spill();
        }
        let n = usize::from(self.npending);
        for p in &mut self.pending[..n] {
            *p += shift << 32;
        }
        self.pending[n] = u64::from(narrow(c));
        // At most PENDING (5), so it fits in u8.
        self.npending = (n + 1) as u8;
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
        (chunks(&self.older).count() + chunks(&self.newer).count()) * std::mem::size_of::<Chunk>()
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

    /// When `older` is empty, the older entries are in `newer`: reverse it into
    /// `older`, so the oldest are read first. The entries stay the same.
    #[inline]
    fn oldest_first(&mut self) {
        if self.older.is_none() && self.newer.is_some() {
            self.older = reverse(self.newer.take());
            self.head = 0;
        }
    }

    /// Drops the entries that are no longer live at `t`.
    fn prune(&mut self, t: Nanos, w: Nanos) {
        if !self.has_dead(t, w) {
            return;
        }
        loop {
            self.oldest_first();
            let Some(chunk) = self.older.as_deref_mut() else {
                break;
            };
            while chunk.start < chunk.len {
                let i = usize::from(chunk.start);
                if chunk.ts[i].saturating_add(w) > t {
                    // Everything after it is later still: all live.
                    self.oldest = chunk.ts[i];
                    return;
                }
                self.total -= chunk.c[i];
                chunk.start += 1;
            }
            let next = chunk.next.take();
            self.older = next;
        }
        let n = usize::from(self.npending);
        let dead = (0..n)
            .take_while(|&i| self.pending_ts(i).saturating_add(w) <= t)
            .count();
        let gone: u64 = (0..dead).map(|i| self.pending_c(i)).sum();
        self.set_total(self.total() - gone);
        self.pending.copy_within(dead..n, 0);
        // At most PENDING (5), so it fits in u8.
        self.npending = (n - dead) as u8;
        if self.npending > 0 {
            self.oldest = self.pending_ts(0);
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
        state.oldest_first();
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
        // a: 1 to 5 beside the header; 6 moves them to a chunk; at 101 the entry at
        // 1 has left the window: chunk [2, 3, 4, 5], beside the header [6, 101].
        let mut a = SlidingWindowLogState::default();
        for t in [1, 2, 3, 4, 5, 6, 101] {
            admit(&p, &mut a, t);
        }
        // b: chunk [2, 3, 4, 5, 6], beside the header [101].
        let mut b = SlidingWindowLogState::default();
        for t in [2, 3, 4, 5, 6, 101] {
            admit(&p, &mut b, t);
        }
        assert_ne!(a.npending, b.npending);
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

    /// Long logs (more entries than the header and several chunks hold), gaps from
    /// nothing to more than a pending entry's 32-bit offset, denials, peeks and
    /// instants out of order: every decision and every live entry as the reference.
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
            let mut most_chunks = 0;
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
                    .filter(|(ts, _)| ts.saturating_add(Nanos::new(w)) > state.last)
                    .collect();
                assert_eq!(live, reference.live(w), "limit {limit} w {w} step {step}");
                assert_eq!(state.clone(), state);
                // `head` is the first newer chunk's fill, as a spill trusts it to be.
                assert_eq!(
                    usize::from(state.head),
                    state.newer.as_deref().map_or(0, |c| usize::from(c.len))
                );
                let chunks = state.heap_bytes() / std::mem::size_of::<Chunk>();
                most_chunks = most_chunks.max(chunks);
                // Every chunk full but at most three: the newest, the oldest, and the
                // newest of those reversed into `older`.
                let held = state.entries().count();
                assert!(chunks <= held.saturating_sub(usize::from(state.npending)) / CHUNK + 3);
            }
            assert!(
                most_chunks >= 4,
                "limit {limit} w {w}: {most_chunks} chunks at most"
            );
        }
    }
}
