//! [`Breaker`]: the store's circuit breaker.
//!
//! When Redis hangs (a network partition, a paused or overloaded server), every call
//! waits out its timeout before the caller can fall back: at the default 50 ms, every
//! rate-limited request of the fleet takes 50 ms longer for as long as the outage
//! lasts, and holds its task that long. The breaker stops asking once Redis has
//! failed `threshold` decisions in a row (timeouts and unreachable; an answer, even a
//! Redis error, is not a failure): for `cooldown`, decisions fail at once with
//! [`RedisError::CircuitOpen`](crate::RedisError::CircuitOpen). After the cooldown
//! one decision goes to Redis as a probe while the others still fail at once: if it
//! is answered, the breaker closes; if it fails, another cooldown starts.
//!
//! A store on a Redis Cluster has one breaker per range of slots ([`Breakers`]): a
//! node that hangs opens the breakers of its slots, and decisions on the other
//! nodes' slots go on.
//!
//! States, in three atomics: closed (`open_until == 0`); open (`now <
//! open_until`); half-open (`now >= open_until > 0`, one probe at a time, held by
//! `probing`). While closed a decision reads one atomic on the way in, and writes
//! nothing on the way out unless failures were being counted.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The default: failures in a row that open the breaker.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// The default: how long an open breaker fails decisions before a probe.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Breaker {
    /// Transient failures in a row that open the breaker; 0 never opens it.
    threshold: u32,
    cooldown: Duration,
    epoch: Instant,
    /// Transient failures since the last answer.
    failures: AtomicU32,
    /// Nanoseconds after `epoch` (at least 1) from which a probe may go; 0: closed.
    open_until: AtomicU64,
    /// A probe is out.
    probing: AtomicBool,
    /// The cluster slots it guards (first, last), for its log lines; `None`: all.
    slots: Option<(u16, u16)>,
}

/// The slot ranges of a cluster store's breakers: 16384 / 64 = 256 slots each. A
/// cluster's nodes own contiguous ranges of slots, thousands each, so all but the
/// range or two that straddle two nodes belong to one node.
pub(crate) const SLOT_RANGES: usize = 64;

/// Redis Cluster's slots.
const SLOTS: usize = 16384;

/// A store's breakers: one for a single server, [`SLOT_RANGES`] for a cluster.
#[derive(Debug)]
pub(crate) struct Breakers(Box<[Breaker]>);

impl Breakers {
    pub(crate) fn new(cluster: bool, threshold: u32, cooldown: Duration) -> Breakers {
        if !cluster {
            return Breakers(Box::new([Breaker::new(threshold, cooldown)]));
        }
        let per = SLOTS / SLOT_RANGES;
        Breakers(
            (0..SLOT_RANGES)
                .map(|i| {
                    let mut b = Breaker::new(threshold, cooldown);
                    let first = u16::try_from(i * per).unwrap_or(u16::MAX);
                    let last = u16::try_from((i + 1) * per - 1).unwrap_or(u16::MAX);
                    b.slots = Some((first, last));
                    b
                })
                .collect(),
        )
    }

    /// The breaker guarding `slot` (a single server's one breaker, whatever the slot).
    #[cfg(test)]
    pub(crate) fn of_slot(&self, slot: u16) -> &Breaker {
        self.of_range(self.range_of(slot))
    }

    /// The number of the breaker guarding `slot`: its range of slots (0 for a
    /// single server), below [`SLOT_RANGES`].
    #[inline]
    pub(crate) fn range_of(&self, slot: u16) -> usize {
        let i = usize::from(slot) % SLOTS * self.0.len() / SLOTS;
        i.min(self.0.len() - 1)
    }

    /// The breaker numbered `range` (see [`Breakers::range_of`]).
    #[inline]
    pub(crate) fn of_range(&self, range: usize) -> &Breaker {
        &self.0[range.min(self.0.len() - 1)]
    }

    /// The single server's breaker, or a cluster's first.
    #[inline]
    pub(crate) fn first(&self) -> &Breaker {
        &self.0[0]
    }

    /// More than one breaker: a cluster's.
    #[inline]
    pub(crate) fn per_slot(&self) -> bool {
        self.0.len() > 1
    }

    /// True while any of them holds decisions back.
    pub(crate) fn any_open(&self) -> bool {
        self.0.iter().any(Breaker::is_open)
    }
}

/// How a breaker names its slots in a log line.
struct SlotsLabel(Option<(u16, u16)>);

impl std::fmt::Display for SlotsLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some((first, last)) => write!(f, "{first}-{last}"),
            None => f.write_str("all"),
        }
    }
}

/// How a decision that went to Redis ended, for the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Redis answered (a verdict, or an error of its own).
    Answered,
    /// A timeout, or Redis unreachable.
    Failed,
    /// Nothing learned about Redis (the caller's input was refused before a call).
    Neither,
}

/// A decision let through; [`Attempt::finish`] reports how it ended. Dropped
/// unfinished (its future cancelled), a probe hands the probe to the next decision.
#[derive(Debug)]
pub(crate) struct Attempt<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold,
            cooldown,
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            slots: None,
        }
    }

    /// Nanoseconds since `epoch`, at least 1 (0 means closed).
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Lets a decision through, or says how long until the next probe may go
    /// (`Duration::ZERO` when the probe is out and its answer awaited).
    #[inline]
    pub(crate) fn enter(&self) -> Result<Attempt<'_>, Duration> {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Ok(Attempt {
                breaker: self,
                probe: false,
            });
        }
        self.enter_open(until)
    }

    #[cold]
    fn enter_open(&self, until: u64) -> Result<Attempt<'_>, Duration> {
        let now = self.now();
        if now < until {
            return Err(Duration::from_nanos(until - now));
        }
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(Attempt {
                breaker: self,
                probe: true,
            }),
            Err(_) => Err(Duration::ZERO),
        }
    }

    /// True while decisions fail at once (open, or half-open with a probe out).
    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// The threshold and the cooldown.
    pub(crate) fn settings(&self) -> (u32, Duration) {
        (self.threshold, self.cooldown)
    }

    /// The instant an open breaker opened now lets a probe go.
    fn cooled(&self) -> u64 {
        self.now()
            .saturating_add(u64::try_from(self.cooldown.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl Attempt<'_> {
    /// Reports how the decision ended.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        let b = self.breaker;
        match outcome {
            Outcome::Answered => {
                if b.failures.load(Ordering::Relaxed) != 0 {
                    b.failures.store(0, Ordering::Release);
                }
                if self.probe {
                    b.open_until.store(0, Ordering::Release);
                    tracing::info!(
                        slots = %SlotsLabel(b.slots),
                        "redis answers again: the store's circuit breaker is closed"
                    );
                }
            }
            Outcome::Failed => {
                if self.probe {
                    b.open_until.store(b.cooled(), Ordering::Release);
                } else if b.threshold > 0 {
                    let n = b.failures.fetch_add(1, Ordering::AcqRel).saturating_add(1);
                    // Of the calls failing together, the one that opens it says so.
                    if n >= b.threshold
                        && b.open_until
                            .compare_exchange(0, b.cooled(), Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                    {
                        b.failures.store(0, Ordering::Release);
                        tracing::warn!(
                            slots = %SlotsLabel(b.slots),
                            failures = n,
                            cooldown_ms = b.cooldown.as_millis() as u64,
                            "redis failed {n} decisions in a row: the store's circuit breaker is open, decisions fail at once until a probe is answered"
                        );
                    }
                }
            }
            Outcome::Neither => {}
        }
        if self.probe {
            self.probe = false;
            b.probing.store(false, Ordering::Release);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.probing.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_failures_in_a_row() {
        let b = Breaker::new(3, Duration::from_secs(60));
        for _ in 0..2 {
            b.enter().expect("closed").finish(Outcome::Failed);
        }
        // An answer resets the count.
        b.enter().expect("closed").finish(Outcome::Answered);
        for _ in 0..2 {
            b.enter().expect("closed").finish(Outcome::Failed);
        }
        assert!(!b.is_open());
        b.enter().expect("closed").finish(Outcome::Failed);
        assert!(b.is_open());
        let wait = b.enter().expect_err("open");
        assert!(wait > Duration::from_secs(59) && wait <= Duration::from_secs(60));
    }

    #[test]
    fn a_refused_input_counts_for_nothing() {
        let b = Breaker::new(1, Duration::from_secs(60));
        b.enter().expect("closed").finish(Outcome::Neither);
        assert!(!b.is_open());
    }

    #[test]
    fn threshold_zero_never_opens() {
        let b = Breaker::new(0, Duration::from_secs(60));
        for _ in 0..100 {
            b.enter().expect("never open").finish(Outcome::Failed);
        }
        assert!(!b.is_open());
    }

    #[test]
    fn one_probe_after_the_cooldown_closes_or_reopens() {
        let b = Breaker::new(1, Duration::from_millis(20));
        b.enter().expect("closed").finish(Outcome::Failed);
        assert!(b.enter().is_err());
        std::thread::sleep(Duration::from_millis(25));
        // Half-open: one probe, the others refused while it is out.
        let probe = b.enter().expect("the probe");
        assert_eq!(b.enter().expect_err("probe out"), Duration::ZERO);
        probe.finish(Outcome::Failed);
        // Failed: open for another cooldown.
        assert!(b.enter().expect_err("open again") > Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(25));
        b.enter().expect("the next probe").finish(Outcome::Answered);
        assert!(!b.is_open());
        b.enter().expect("closed").finish(Outcome::Answered);
    }

    #[test]
    fn a_cluster_has_a_breaker_per_slot_range_and_a_server_one() {
        let one = Breakers::new(false, 1, Duration::from_secs(60));
        assert!(!one.per_slot());
        assert!(std::ptr::eq(one.of_slot(0), one.of_slot(16383)));
        let cluster = Breakers::new(true, 1, Duration::from_secs(60));
        assert!(cluster.per_slot());
        assert!(std::ptr::eq(cluster.of_slot(0), cluster.of_slot(255)));
        assert!(!std::ptr::eq(cluster.of_slot(255), cluster.of_slot(256)));
        assert!(std::ptr::eq(cluster.of_slot(16128), cluster.of_slot(16383)));
        assert_eq!(cluster.of_slot(16383).slots, Some((16128, 16383)));
        // One range opens; the others stay closed.
        cluster
            .of_slot(300)
            .enter()
            .expect("closed")
            .finish(Outcome::Failed);
        assert!(cluster.of_slot(300).enter().is_err());
        assert!(cluster.of_slot(511).enter().is_err(), "the same range");
        assert!(cluster.of_slot(512).enter().is_ok(), "another range");
        assert!(cluster.of_slot(0).enter().is_ok());
        assert!(cluster.any_open());
        assert!(!one.any_open());
    }

    #[test]
    fn a_cancelled_probe_hands_the_probe_on() {
        let b = Breaker::new(1, Duration::from_millis(1));
        b.enter().expect("closed").finish(Outcome::Failed);
        std::thread::sleep(Duration::from_millis(5));
        let probe = b.enter().expect("the probe");
        drop(probe);
        let next = b.enter().expect("the probe again");
        next.finish(Outcome::Answered);
        assert!(!b.is_open());
    }
}
