//! [`MemoryStore`]: every key's state in this process.
//!
//! # Shape
//!
//! Keys live in a fixed number of shards, each two hash tables (one for
//! `sliding_window_log`'s keys, one for the other algorithms') behind a
//! reader-writer lock; a key's hash picks its shard. A check takes its shard's lock
//! for reading only, so checks of different keys never wait for each other and
//! there is no global lock. The lock is crossbeam's `ShardedLock`: a reader locks only its own
//! thread's slice of it, so readers on different cores do not pass the lock's cache
//! line back and forth (with two threads that cut a keyed check by about a tenth);
//! a writer locks every slice, which costs a new key about 8% more. Each entry of
//! the main table is one 64-byte cache line holding the key (inline when short) and
//! its state: the bucket family's one instant, `TAT`, as an `AtomicU64` updated by
//! compare-and-swap; `fixed_window`'s and `sliding_window_counter`'s 24 bytes
//! behind a one-byte mutex. So a keyed check costs one cache miss, not the two of a
//! map of `String` keys. A `sliding_window_log` entry is an aligned pair of lines:
//! the key, the mutex and the log's header in the first, all a check reads; the
//! five newest log entries and the handles of the older ones (in chunks on the
//! heap, to which one admission in five moves the five, in a chunk just allocated)
//! in the second. The write lock is taken only to add a key,
//! to change a key's algorithm (which moves it between the tables), to forget a
//! key, and to sweep.
//!
//! # Bounded memory
//!
//! - A denied request, a peek and a check that fails never add a key.
//! - Keys whose state is fresh again are dropped as the store goes: when a shard has
//!   grown to twice its size after its last sweep, the next insertion sweeps it
//!   (amortised O(1) per new key). That sweep gives a second chance: it drops the
//!   keys that were fresh already at the shard's previous sweep and were not used
//!   since, so a key that went fresh a moment ago and comes back is not dropped and
//!   added again over and over (without it, light traffic over many keys, where a
//!   key is fresh again before its next request, would add nearly every key anew).
//!   [`MemoryStore::sweep`] drops every key that is fresh now.
//! - `max_keys` caps the total: each shard holds at most `max_keys / shards`
//!   (rounded down; there are never more shards than `max_keys`). When a new key
//!   finds its shard full of live keys, the shard evicts the eighth of its keys that
//!   are closest to fresh (earliest expiry first; exactly `len / 8 + 1` keys), then
//!   admits the new key. An evicted key that comes back starts fresh, so it may get up
//!   to one more quota than the policy allows: that is the price of a cap, paid by the
//!   keys that had least left to lose. Checks never fail and never block because of
//!   the cap; [`MemoryStats::evicted`] counts the evictions so an operator can raise
//!   the cap. A stacked check never evicts its own keys to make room for its others.
//!
//! # Stacked checks
//!
//! [`MemoryStore::check_all`] read-locks the shards involved in ascending order,
//! then the window keys' mutexes in address order (so two stacks cannot deadlock),
//! decides every policy on what it holds, and only if all admit commits them: the
//! window states under their mutexes, the bucket states by compare-and-swap. If a
//! bucket changed under it, the compare-and-swaps already made are given back and
//! the whole stack is decided again.

use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};
use hashbrown::HashTable;
use parking_lot::{Mutex, MutexGuard};
use smallvec::{SmallVec, smallvec};

use crate::clock::{Clock, SystemClock};
use crate::decision::Decision;
use crate::direct::{bucket_check, bucket_decide};
use crate::error::CheckError;
use crate::fixed_window::{self, FixedWindowState};
use crate::gcra;
use crate::nanos::Nanos;
use crate::policy::{Algorithm, Policy};
use crate::sliding_window_counter::{self, SlidingWindowCounterState};
use crate::sliding_window_log::{self, SlidingWindowLogState};
use crate::state::State;
use crate::store::{Check, Store, Verdict, validate};

/// Shards when none is asked for.
const DEFAULT_SHARDS: usize = 64;
/// Keys when no cap is asked for.
const DEFAULT_MAX_KEYS: usize = 1_000_000;
/// A shard is not swept before it holds this many keys.
const MIN_SWEEP: usize = 64;

/// A key's bytes: inline when at most `N` bytes, so that they share the entry's
/// cache line with the state (IP addresses, user ids, most API keys), on the heap
/// otherwise. Inline keys save a cache miss per check on large key sets.
#[derive(Debug)]
enum Key<const N: usize> {
    Inline { len: u8, bytes: [u8; N] },
    Heap(Box<[u8]>),
}

impl<const N: usize> Key<N> {
    fn new(key: &[u8]) -> Self {
        if key.len() <= N {
            let mut bytes = [0; N];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline {
                // At most N (46), so it fits in u8.
                len: key.len() as u8,
                bytes,
            }
        } else {
            Key::Heap(Box::from(key))
        }
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(b) => b,
        }
    }
}

/// One key and its state, in one 64-byte cache line: a bucket key up to 46 bytes
/// with its `TAT`; a `fixed_window` or `sliding_window_counter` key up to 22 bytes
/// with its state behind a one-byte mutex. Longer keys live on the heap.
/// (`sliding_window_log` keys are [`LogEntry`]s.)
///
/// `repr(C)` puts each variant's key first, just after the tag, so the key starts
/// in the first quarter of the line. Comparing a key reads it with vector loads as
/// wide as 32 bytes (the C library's `memcmp`, even for shorter keys); a key placed
/// after the state (where Rust's own layout put the windows' keys) made that load
/// run into the next entry's cache line, a second miss per check.
#[derive(Debug)]
#[repr(C, align(64))]
enum Entry {
    /// `token_bucket`, `gcra`, `leaky_bucket`: `TAT` in nanoseconds; 0 is fresh.
    Bucket { key: Key<46>, tat: AtomicU64 },
    Fixed {
        key: Key<22>,
        state: Mutex<FixedWindowState>,
    },
    Counter {
        key: Key<22>,
        state: Mutex<SlidingWindowCounterState>,
    },
}

const _: () = assert!(std::mem::size_of::<Entry>() == 64);

/// A `sliding_window_log` key and its state, in a table of their own: an aligned
/// pair of cache lines. The first holds the key (inline up to 22 bytes), the mutex
/// and the log's header, all a check reads; the second the five newest entries
/// (which an admission writes), the handles of the older ones, in chunks on the heap
/// (one admission in five moves the five to a chunk it allocates), and the key's
/// whole hash. A lookup compares the hash
/// before the key: the two loads go out together, so the second line arrives with
/// the first instead of after it (an admission's write to it otherwise made the
/// mutex's release wait for a second miss).
#[derive(Debug)]
#[repr(C, align(128))]
struct LogEntry {
    key: Key<22>,
    state: Mutex<SlidingWindowLogState>,
    hash: u64,
}

const _: () = assert!(std::mem::size_of::<LogEntry>() == 128);

impl LogEntry {
    fn fresh(key: &[u8], hash: u64) -> LogEntry {
        LogEntry {
            key: Key::new(key),
            state: Mutex::default(),
            hash,
        }
    }

    #[inline]
    fn key(&self) -> &[u8] {
        self.key.as_bytes()
    }

    /// The instant the state is fresh again. Needs `&mut`, so only under a write lock.
    fn expires(&mut self) -> Nanos {
        self.state.get_mut().expires()
    }
}

/// An entry's state, borrowed for a check.
#[derive(Clone, Copy)]
enum Slot<'a> {
    Bucket(&'a AtomicU64),
    Window(Window<'a>),
}

/// A window algorithm's state, behind its mutex.
#[derive(Clone, Copy)]
enum Window<'a> {
    Fixed(&'a Mutex<FixedWindowState>),
    Counter(&'a Mutex<SlidingWindowCounterState>),
    Log(&'a Mutex<SlidingWindowLogState>),
}

/// A locked window state.
enum WindowGuard<'a> {
    Fixed(MutexGuard<'a, FixedWindowState>),
    Counter(MutexGuard<'a, SlidingWindowCounterState>),
    Log(MutexGuard<'a, SlidingWindowLogState>),
}

impl Entry {
    /// A fresh entry for `policy`; `None` for `sliding_window_log`, whose keys live
    /// in their own table.
    fn fresh(key: &[u8], policy: &Policy) -> Option<Entry> {
        match policy.algorithm() {
            Algorithm::TokenBucket | Algorithm::Gcra | Algorithm::LeakyBucket => {
                Some(Entry::Bucket {
                    key: Key::new(key),
                    tat: AtomicU64::new(0),
                })
            }
            Algorithm::FixedWindow => Some(Entry::Fixed {
                key: Key::new(key),
                state: Mutex::default(),
            }),
            Algorithm::SlidingWindowCounter => Some(Entry::Counter {
                key: Key::new(key),
                state: Mutex::default(),
            }),
            Algorithm::SlidingWindowLog => None,
        }
    }

    #[inline]
    fn key(&self) -> &[u8] {
        match self {
            Entry::Bucket { key, .. } => key.as_bytes(),
            Entry::Fixed { key, .. } | Entry::Counter { key, .. } => key.as_bytes(),
        }
    }

    /// The state, if it is of `policy`'s algorithm (any of the bucket family for a
    /// bucket); `None` when the key was last used under another algorithm.
    #[inline]
    fn slot(&self, policy: &Policy) -> Option<Slot<'_>> {
        match (self, policy.algorithm()) {
            (Entry::Bucket { tat, .. }, a) if a.is_bucket() => Some(Slot::Bucket(tat)),
            (Entry::Fixed { state, .. }, Algorithm::FixedWindow) => {
                Some(Slot::Window(Window::Fixed(state)))
            }
            (Entry::Counter { state, .. }, Algorithm::SlidingWindowCounter) => {
                Some(Slot::Window(Window::Counter(state)))
            }
            _ => None,
        }
    }

    /// The instant the state is fresh again. Needs `&mut`, so only under a write lock.
    fn expires(&mut self) -> Nanos {
        match self {
            Entry::Bucket { tat, .. } => Nanos::new(*tat.get_mut()),
            Entry::Fixed { state, .. } => state.get_mut().expires,
            Entry::Counter { state, .. } => state.get_mut().expires,
        }
    }
}

impl<'a> Slot<'a> {
    /// Decides (and, if `consume`, records) a check on this state.
    #[inline]
    fn check(self, policy: &Policy, now: Nanos, cost: NonZeroU32, consume: bool) -> Decision {
        match self {
            Slot::Bucket(cell) => bucket_check(policy, cell, now, cost, consume),
            Slot::Window(w) => w.lock().check(policy, now, cost, consume),
        }
    }
}

impl<'a> Window<'a> {
    fn lock(self) -> WindowGuard<'a> {
        match self {
            Window::Fixed(m) => WindowGuard::Fixed(m.lock()),
            Window::Counter(m) => WindowGuard::Counter(m.lock()),
            Window::Log(m) => WindowGuard::Log(m.lock()),
        }
    }

    /// Where the mutex is: stacks lock windows in address order.
    fn address(self) -> usize {
        match self {
            Window::Fixed(m) => m as *const _ as usize,
            Window::Counter(m) => m as *const _ as usize,
            Window::Log(m) => m as *const _ as usize,
        }
    }
}

impl WindowGuard<'_> {
    fn check(&mut self, policy: &Policy, now: Nanos, cost: NonZeroU32, consume: bool) -> Decision {
        match self {
            WindowGuard::Fixed(s) => fixed_window::check(policy, s, now, cost, consume),
            WindowGuard::Counter(s) => sliding_window_counter::check(policy, s, now, cost, consume),
            WindowGuard::Log(s) => sliding_window_log::check(policy, s, now, cost, consume),
        }
    }

    fn view(&self, policy: &Policy, now: Nanos) -> (u64, Nanos) {
        match self {
            WindowGuard::Fixed(s) => fixed_window::view(policy, s, now),
            WindowGuard::Counter(s) => sliding_window_counter::view(policy, s, now),
            WindowGuard::Log(s) => sliding_window_log::view(policy, s, now),
        }
    }
}

/// A predicate matching the entry of `key`.
#[inline]
fn is(key: &[u8]) -> impl Fn(&Entry) -> bool + '_ {
    move |e| e.key() == key
}

/// A predicate matching the log entry of `key`, whose hash is `hash`.
#[inline]
fn is_log(hash: u64, key: &[u8]) -> impl Fn(&LogEntry) -> bool + '_ {
    move |e| e.hash == hash && e.key() == key
}

/// True for the algorithm whose keys live in [`Table::logs`].
#[inline]
fn is_log_policy(policy: &Policy) -> bool {
    policy.algorithm() == Algorithm::SlidingWindowLog
}

#[derive(Debug)]
struct Table {
    /// The keys of every algorithm but `sliding_window_log`.
    map: HashTable<Entry>,
    /// The keys of `sliding_window_log`. A key is in one table at most.
    logs: HashTable<LogEntry>,
    /// Sweep when `len()` reaches this.
    next_sweep: usize,
    /// When this shard was last swept. The next sweep as the store goes drops only
    /// keys that were already fresh then (see `make_room`).
    last_sweep: Nanos,
}

impl Table {
    /// Keys held, in both tables.
    fn len(&self) -> usize {
        self.map.len() + self.logs.len()
    }

    /// The state of `key`, if it is held under `policy`'s algorithm (any of the
    /// bucket family for a bucket); `None` when absent or held under another.
    #[inline]
    fn slot(&self, hash: u64, key: &[u8], policy: &Policy) -> Option<Slot<'_>> {
        if is_log_policy(policy) {
            self.logs
                .find(hash, is_log(hash, key))
                .map(|e| Slot::Window(Window::Log(&e.state)))
        } else {
            self.map.find(hash, is(key)).and_then(|e| e.slot(policy))
        }
    }

    /// True when `key` is held, under any algorithm.
    fn contains(&self, hash: u64, key: &[u8]) -> bool {
        self.map.find(hash, is(key)).is_some() || self.logs.find(hash, is_log(hash, key)).is_some()
    }

    /// Forgets `key`.
    fn remove(&mut self, hash: u64, key: &[u8]) {
        if let Ok(entry) = self.map.find_entry(hash, is(key)) {
            entry.remove();
        }
        if let Ok(entry) = self.logs.find_entry(hash, is_log(hash, key)) {
            entry.remove();
        }
    }

    /// Keeps the keys for which `keep(key, expires)` is true; returns how many it
    /// dropped.
    fn retain(&mut self, mut keep: impl FnMut(&[u8], Nanos) -> bool) -> usize {
        let before = self.len();
        self.map.retain(|e| {
            let expires = e.expires();
            keep(e.key(), expires)
        });
        self.logs.retain(|e| {
            let expires = e.expires();
            keep(e.key(), expires)
        });
        before - self.len()
    }
}

/// A shard on a cache line of its own.
#[derive(Debug)]
#[repr(align(128))]
struct Shard(ShardedLock<Table>);

impl Shard {
    /// The table for reading. A panic while the table was written can poison the lock;
    /// every write leaves the table consistent between its steps, so it is read on.
    #[inline]
    fn read(&self) -> ShardedLockReadGuard<'_, Table> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The table for writing (see [`Shard::read`] on poisoning).
    fn write(&self) -> ShardedLockWriteGuard<'_, Table> {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a memory store holds and has dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Keys held now.
    pub keys: usize,
    /// The most keys it will hold.
    pub max_keys: usize,
    /// Keys dropped because their state was fresh again.
    pub expired: u64,
    /// Live keys dropped because a shard was full.
    pub evicted: u64,
}

/// Builds a [`MemoryStore`] with a cap and shard count of your choosing.
#[derive(Clone, Debug)]
pub struct MemoryStoreBuilder {
    max_keys: usize,
    shards: usize,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        MemoryStoreBuilder {
            max_keys: DEFAULT_MAX_KEYS,
            shards: DEFAULT_SHARDS,
        }
    }
}

impl MemoryStoreBuilder {
    /// The most keys the store holds (default 1,000,000; at least 1).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    /// The number of shards, rounded up to a power of two (default 64).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards.clamp(1, 1 << 16).next_power_of_two();
        self
    }

    /// A store on the system clock.
    pub fn build(self) -> MemoryStore<SystemClock> {
        self.build_with_clock(SystemClock::new())
    }

    /// A store reading time from `clock`.
    pub fn build_with_clock<C: Clock>(self, clock: C) -> MemoryStore<C> {
        // No more shards than keys (the power of two at or below max_keys), and each
        // shard's share rounded down: together they never hold more than max_keys.
        let shards = self.shards.min(1 << self.max_keys.max(1).ilog2());
        let per_shard = self.max_keys / shards;
        MemoryStore {
            clock,
            shards: (0..shards)
                .map(|_| {
                    Shard(ShardedLock::new(Table {
                        map: HashTable::new(),
                        logs: HashTable::new(),
                        next_sweep: MIN_SWEEP.min(per_shard),
                        last_sweep: Nanos::ZERO,
                    }))
                })
                .collect(),
            shard_shift: 64 - shards.trailing_zeros(),
            per_shard,
            max_keys: self.max_keys,
            hasher: foldhash::fast::RandomState::default(),
            expired: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }
}

/// Every key's state in this process: concurrent, sharded, bounded. See the module
/// documentation for how it holds memory down.
///
/// Each check names its own policy, so one store serves keys with different quotas.
#[derive(Debug)]
pub struct MemoryStore<C = SystemClock> {
    clock: C,
    shards: Box<[Shard]>,
    /// `64 - log2(shards)`; 64 when there is one shard.
    shard_shift: u32,
    per_shard: usize,
    max_keys: usize,
    /// foldhash, seeded at random per store: fast, and keys an attacker picks cannot
    /// be aimed at one bucket without knowing the seed.
    hasher: foldhash::fast::RandomState,
    expired: AtomicU64,
    evicted: AtomicU64,
}

impl MemoryStore<SystemClock> {
    /// A store on the system clock, holding at most 1,000,000 keys.
    pub fn new() -> Self {
        MemoryStoreBuilder::default().build()
    }

    /// Choose the cap and the shard count.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }
}

impl Default for MemoryStore<SystemClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock> MemoryStore<C> {
    /// A store reading time from `clock`, holding at most 1,000,000 keys.
    pub fn with_clock(clock: C) -> Self {
        MemoryStoreBuilder::default().build_with_clock(clock)
    }

    /// The clock the store reads.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Decides and consumes one unit of `key` under `policy`.
    #[inline]
    pub fn check_one(&self, key: &str, policy: &Policy) -> Decision {
        self.single(key, policy, NonZeroU32::MIN, true)
    }

    /// Decides and consumes `cost` units of `key` under `policy`.
    #[inline]
    pub fn check_n(&self, key: &str, policy: &Policy, cost: NonZeroU32) -> Decision {
        self.single(key, policy, cost, true)
    }

    /// What [`MemoryStore::check_n`] would answer, consuming nothing.
    pub fn peek_n(&self, key: &str, policy: &Policy, cost: NonZeroU32) -> Decision {
        self.single(key, policy, cost, false)
    }

    /// Decides a stack of checks, all or nothing, and consumes if all admit.
    ///
    /// Errors when the stack is empty, longer than [`crate::MAX_STACK`], or names
    /// one key twice (a key holds one state, whatever the policies).
    pub fn check_all(&self, checks: &[Check<'_>]) -> Result<Verdict, CheckError> {
        self.stack(checks, true)
    }

    /// What [`MemoryStore::check_all`] would answer, consuming nothing.
    pub fn peek_all(&self, checks: &[Check<'_>]) -> Result<Verdict, CheckError> {
        self.stack(checks, false)
    }

    /// Forgets `key`: its next check starts fresh.
    pub fn remove(&self, key: &str) {
        let hash = self.hasher.hash_one(key.as_bytes());
        self.shard(hash).write().remove(hash, key.as_bytes());
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the store holds and has dropped.
    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            keys: self.len(),
            max_keys: self.max_keys,
            expired: self.expired.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }

    /// Drops every key whose state is fresh again now; returns how many.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now();
        self.shards
            .iter()
            .map(|s| {
                let mut table = s.write();
                table.last_sweep = now;
                self.sweep_table(&mut table, now, |_| false)
            })
            .sum()
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[self.shard_index(hash)]
    }

    /// Bits just below the top 7 of the hash, which hashbrown keeps for its control
    /// bytes, and far from the low bits it uses to place the entry in the table.
    #[inline]
    fn shard_index(&self, hash: u64) -> usize {
        if self.shard_shift >= 64 {
            0
        } else {
            ((hash << 7) >> self.shard_shift) as usize
        }
    }

    #[inline]
    fn single(&self, key: &str, policy: &Policy, cost: NonZeroU32, consume: bool) -> Decision {
        let now = self.clock.now();
        let hash = self.hasher.hash_one(key.as_bytes());
        let shard = self.shard(hash);
        let fresh = {
            let table = shard.read();
            if let Some(slot) = table.slot(hash, key.as_bytes(), policy) {
                return slot.check(policy, now, cost, consume);
            }
            // Absent, or last used under another algorithm: as if fresh.
            let decision = State::fresh(policy.algorithm()).check(policy, now, cost, false);
            if !consume || !decision.allowed {
                return decision;
            }
            decision
        };
        let mut table = shard.write();
        if !table.contains(hash, key.as_bytes()) {
            self.make_room(&mut table, now, 1, |_| false);
        }
        self.insert(&mut table, hash, key, policy);
        match table.slot(hash, key.as_bytes(), policy) {
            Some(slot) => slot.check(policy, now, cost, true),
            // `insert` made the entry fit the policy, so this is not reached; should
            // it be, answer without consuming rather than panic.
            None => fresh,
        }
    }

    /// Makes `key` held under `policy`'s algorithm: added as a fresh one if absent,
    /// replaced by a fresh one if held under another algorithm, left as it is
    /// otherwise. The caller has made room for it.
    fn insert(&self, table: &mut Table, hash: u64, key: &str, policy: &Policy) {
        let key = key.as_bytes();
        let hasher = &self.hasher;
        let Some(fresh) = Entry::fresh(key, policy) else {
            // sliding_window_log: out of the other table, into its own.
            if let Ok(entry) = table.map.find_entry(hash, is(key)) {
                entry.remove();
            }
            table
                .logs
                .entry(hash, is_log(hash, key), |e| e.hash)
                .or_insert_with(|| LogEntry::fresh(key, hash));
            return;
        };
        if let Ok(entry) = table.logs.find_entry(hash, is_log(hash, key)) {
            entry.remove();
        }
        match table.map.entry(hash, is(key), |e| hasher.hash_one(e.key())) {
            hashbrown::hash_table::Entry::Occupied(mut held) => {
                if held.get().slot(policy).is_none() {
                    *held.get_mut() = fresh;
                }
            }
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(fresh);
            }
        }
    }

    /// Before adding `need` keys: sweep when the shard has doubled since its last
    /// sweep, and evict the eighth closest to fresh (more if `need` takes more) when
    /// it is full. Keys for which `keep` is true (the other keys of a stack being
    /// added) are neither swept nor evicted: dropped, they would be added back fresh
    /// and past the cap. A stack adding more keys to one shard than the shard's whole
    /// share takes that shard past its share.
    fn make_room(&self, table: &mut Table, now: Nanos, need: usize, keep: impl Fn(&[u8]) -> bool) {
        if table.len() + need <= table.next_sweep {
            return;
        }
        // Second chance: drop the keys that were fresh already at the last sweep
        // and have not been used since. A key that went fresh a moment ago is
        // likely to come back, and dropping it would only make it be added again.
        let cutoff = std::mem::replace(&mut table.last_sweep, now);
        self.sweep_table(table, cutoff, &keep);
        let len = table.len();
        if len + need > self.per_shard {
            // An eighth, or what `need` takes.
            self.evict(table, (len / 8 + 1).max(len + need - self.per_shard), &keep);
        }
        table.next_sweep = (table.len() * 2).max(MIN_SWEEP).min(self.per_shard);
    }

    /// Evicts the `count` keys closest to fresh (or every key, if fewer), sparing
    /// those for which `keep` is true.
    fn evict(&self, table: &mut Table, count: usize, keep: impl Fn(&[u8]) -> bool) {
        let mut expiries: Vec<Nanos> = table
            .map
            .iter_mut()
            .filter(|e| !keep(e.key()))
            .map(|e| e.expires())
            .chain(
                table
                    .logs
                    .iter_mut()
                    .filter(|e| !keep(e.key()))
                    .map(|e| e.expires()),
            )
            .collect();
        let Some(nth) = count.min(expiries.len()).checked_sub(1) else {
            return;
        };
        let (below, &mut threshold, _) = expiries.select_nth_unstable(nth);
        // Evict exactly nth + 1 keys: all those expiring before the threshold,
        // and as many as are still needed of those expiring at it.
        let mut at_threshold = nth + 1 - below.iter().filter(|&&e| e < threshold).count();
        let evicted = table.retain(|key, e| {
            if keep(key) {
                return true;
            }
            if e < threshold {
                false
            } else if e == threshold && at_threshold > 0 {
                at_threshold -= 1;
                false
            } else {
                true
            }
        });
        self.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
    }

    fn sweep_table(&self, table: &mut Table, now: Nanos, keep: impl Fn(&[u8]) -> bool) -> usize {
        let dropped = table.retain(|key, e| e > now || keep(key));
        self.expired.fetch_add(dropped as u64, Ordering::Relaxed);
        dropped
    }

    fn stack(&self, checks: &[Check<'_>], consume: bool) -> Result<Verdict, CheckError> {
        validate(checks)?;
        if let [one] = checks {
            let d = self.single(one.key, one.policy, one.cost, consume);
            return Ok(Verdict::from_decisions(smallvec![d]));
        }
        for (i, a) in checks.iter().enumerate() {
            for b in &checks[..i] {
                // One key holds one state: in one family the policies would share
                // it, across families each would replace the other's.
                if a.key == b.key {
                    return Err(CheckError::DuplicateKey(a.key.to_owned()));
                }
            }
        }
        let now = self.clock.now();
        let hashes: SmallVec<[u64; 4]> = checks
            .iter()
            .map(|c| self.hasher.hash_one(c.key.as_bytes()))
            .collect();
        let mut order: SmallVec<[usize; 4]> = hashes.iter().map(|&h| self.shard_index(h)).collect();
        order.sort_unstable();
        order.dedup();

        {
            let guards: SmallVec<[_; 4]> =
                order.iter().map(|&i| (i, self.shards[i].read())).collect();
            let slots: SmallVec<[Option<Slot<'_>>; 4]> = checks
                .iter()
                .zip(&hashes)
                .map(|(c, &h)| {
                    let table =
                        &guards[guards.partition_point(|(i, _)| *i < self.shard_index(h))].1;
                    table.slot(h, c.key.as_bytes(), c.policy)
                })
                .collect();
            if let Some(v) = decide_stack(checks, &slots, now, consume) {
                return Ok(v);
            }
        }

        // Some key must be added first: take the shards' write locks, in order. Make
        // room for every missing key before adding any, sparing the stack's own keys:
        // making room after adding one could sweep or evict it (a fresh slot is the
        // closest to fresh), and a key dropped here would come back fresh.
        let mut guards: SmallVec<[_; 4]> =
            order.iter().map(|&i| (i, self.shards[i].write())).collect();
        let mut need: SmallVec<[usize; 4]> = smallvec![0; guards.len()];
        for (c, &h) in checks.iter().zip(&hashes) {
            let pos = guards.partition_point(|(i, _)| *i < self.shard_index(h));
            if !guards[pos].1.contains(h, c.key.as_bytes()) {
                need[pos] += 1;
            }
        }
        let in_stack = |key: &[u8]| checks.iter().any(|c| c.key.as_bytes() == key);
        for (pos, &n) in need.iter().enumerate() {
            if n > 0 {
                self.make_room(&mut guards[pos].1, now, n, in_stack);
            }
        }
        for (c, &h) in checks.iter().zip(&hashes) {
            let pos = guards.partition_point(|(i, _)| *i < self.shard_index(h));
            self.insert(&mut guards[pos].1, h, c.key, c.policy);
        }
        let slots: SmallVec<[Option<Slot<'_>>; 4]> = checks
            .iter()
            .zip(&hashes)
            .map(|(c, &h)| {
                let table = &guards[guards.partition_point(|(i, _)| *i < self.shard_index(h))].1;
                table.slot(h, c.key.as_bytes(), c.policy)
            })
            .collect();
        // Every slot exists and fits under the write locks, so `None` cannot come
        // back; should it ever, say so rather than panic.
        decide_stack(checks, &slots, now, consume).ok_or(CheckError::Internal)
    }
}

/// Decides a stack over slots that stay put (their shards are locked). A `None` slot
/// is a key that is absent or last used under another algorithm: it decides as
/// fresh, and if the stack would be admitted and consumed, the answer is `None`: the
/// caller must add the key under a write lock and decide again.
fn decide_stack(
    checks: &[Check<'_>],
    slots: &[Option<Slot<'_>>],
    now: Nanos,
    consume: bool,
) -> Option<Verdict> {
    // Lock the window states in address order.
    let mut by_addr: SmallVec<[(usize, usize); 4]> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Some(Slot::Window(w)) => Some((w.address(), i)),
            _ => None,
        })
        .collect();
    by_addr.sort_unstable();
    let mut windows: SmallVec<[Option<WindowGuard<'_>>; 4]> = slots.iter().map(|_| None).collect();
    for &(_, i) in &by_addr {
        if let Some(Slot::Window(w)) = slots[i] {
            windows[i] = Some(w.lock());
        }
    }

    loop {
        let mut snapshots: SmallVec<[(u64, Nanos); 4]> = smallvec![(0, Nanos::ZERO); checks.len()];
        let mut decisions: SmallVec<[Decision; 4]> = SmallVec::with_capacity(checks.len());
        for (i, c) in checks.iter().enumerate() {
            let d = match (slots[i], windows[i].as_mut()) {
                (Some(Slot::Bucket(cell)), _) => {
                    let cur = cell.load(Ordering::Acquire);
                    let mut tat = Nanos::new(cur);
                    let d = bucket_decide(c.policy, &mut tat, now, c.cost);
                    snapshots[i] = (cur, tat);
                    d
                }
                (_, Some(state)) => state.check(c.policy, now, c.cost, false),
                _ => State::fresh(c.policy.algorithm()).check(c.policy, now, c.cost, false),
            };
            decisions.push(d);
        }

        if !decisions.iter().all(|d| d.allowed) {
            // Nothing is consumed: the policies that would have admitted report what
            // they hold now.
            for (i, d) in decisions.iter_mut().enumerate() {
                if !d.allowed {
                    continue;
                }
                let c = &checks[i];
                let (remaining, reset_after) = match (slots[i], windows[i].as_ref()) {
                    (Some(Slot::Bucket(_)), _) => {
                        gcra::view(c.policy, Nanos::new(snapshots[i].0), now)
                    }
                    (_, Some(state)) => state.view(c.policy, now),
                    _ => State::fresh(c.policy.algorithm()).view(c.policy, now),
                };
                d.remaining = remaining;
                d.reset_after = reset_after;
                d.delay = Nanos::ZERO;
            }
            return Some(Verdict::from_decisions(decisions));
        }
        if !consume {
            return Some(Verdict::from_decisions(decisions));
        }
        if slots.iter().any(|s| s.is_none()) {
            return None;
        }

        // Commit the buckets; on a lost race give back what was taken and decide again.
        let mut committed: SmallVec<[usize; 4]> = SmallVec::new();
        let mut lost = false;
        for (i, slot) in slots.iter().enumerate() {
            if let Some(Slot::Bucket(cell)) = slot {
                let (cur, new) = snapshots[i];
                if cur == new.as_u64() {
                    continue;
                }
                if cell
                    .compare_exchange(cur, new.as_u64(), Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    committed.push(i);
                } else {
                    lost = true;
                    break;
                }
            }
        }
        if lost {
            for &i in &committed {
                if let Some(Slot::Bucket(cell)) = slots[i] {
                    give_back(cell, snapshots[i], checks[i]);
                }
            }
            continue;
        }
        for (i, c) in checks.iter().enumerate() {
            if let Some(state) = windows[i].as_mut() {
                let d = state.check(c.policy, now, c.cost, true);
                debug_assert_eq!(d, decisions[i]);
            }
        }
        return Some(Verdict::from_decisions(decisions));
    }
}

/// Undoes a committed bucket update: back to the old value if nothing moved it since,
/// else hands back the `c*T` it took.
fn give_back(cell: &AtomicU64, (old, new): (u64, Nanos), check: Check<'_>) {
    if cell
        .compare_exchange(new.as_u64(), old, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        return;
    }
    let taken = u64::from(check.cost.get()) * check.policy.emission_interval().as_u64();
    let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
        Some(cur.saturating_sub(taken).max(old))
    });
}

impl<C: Clock> Store for MemoryStore<C> {
    type Error = CheckError;

    fn check(
        &self,
        checks: &[Check<'_>],
    ) -> impl std::future::Future<Output = Result<Verdict, CheckError>> + Send {
        std::future::ready(self.check_all(checks))
    }

    fn peek(
        &self,
        checks: &[Check<'_>],
    ) -> impl std::future::Future<Output = Result<Verdict, CheckError>> + Send {
        std::future::ready(self.peek_all(checks))
    }

    fn reset(&self, key: &str) -> impl std::future::Future<Output = Result<(), CheckError>> + Send {
        self.remove(key);
        std::future::ready(Ok(()))
    }
}
