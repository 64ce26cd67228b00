//! [`Clock`]: where a store reads the time. The algorithms themselves never read one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::nanos::Nanos;

/// A source of instants, in nanoseconds. Instants from one clock never decrease.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Nanos;
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> Nanos {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Nanos {
        (**self).now()
    }
}

/// The system clock: monotonic, anchored once to Unix time.
///
/// It reads Unix time once, when it is made, and from then on adds the time elapsed
/// on a monotonic clock, so it never steps backwards when the wall clock is
/// adjusted. Instants are nanoseconds since the Unix epoch (as right as the wall
/// clock was when the clock was made).
///
/// The monotonic clock is [quanta]'s: the CPU's time-stamp counter, calibrated
/// against the operating system's monotonic clock, where the CPU has an invariant
/// one, and the operating system's clock otherwise. Reading it costs a few
/// nanoseconds instead of a system clock call, which matters when the whole check
/// costs tens of nanoseconds. Should two readings on two cores ever come out of
/// order, no harm follows: every algorithm treats an earlier instant conservatively
/// (see `ARCHITECTURE.md`, "Time never runs backwards inside a key's state").
///
/// [quanta]: https://docs.rs/quanta
#[derive(Clone, Debug)]
pub struct SystemClock {
    clock: quanta::Clock,
    start: u64,
    anchor: Nanos,
}

impl SystemClock {
    /// A clock anchored to the wall clock now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let start = clock.raw();
        let anchor = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        SystemClock {
            clock,
            start,
            anchor: Nanos::from(anchor),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Nanos {
        let elapsed = self.clock.delta_as_nanos(self.start, self.clock.raw());
        self.anchor.saturating_add(Nanos::new(elapsed))
    }
}

/// A clock that moves only when told to; its clones share one time.
///
/// Used by tests, the simulator and the lab.
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Clock, ManualClock, Nanos};
///
/// let clock = ManualClock::new(Nanos::from_secs(10));
/// let view = clock.clone();
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(view.now(), Nanos::from_millis(11_500));
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: Nanos) -> Self {
        ManualClock {
            now: Arc::new(AtomicU64::new(start.as_u64())),
        }
    }

    /// Moves the time forward by `by` (saturating).
    pub fn advance(&self, by: impl Into<Nanos>) {
        let by = by.into().as_u64();
        let _ = self
            .now
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(by))
            });
    }

    /// Sets the time to `to`, if that is later than now: a manual clock never goes
    /// backwards either. Returns the time it shows afterwards.
    pub fn set(&self, to: Nanos) -> Nanos {
        let prev = self.now.fetch_max(to.as_u64(), Ordering::AcqRel);
        Nanos::new(prev.max(to.as_u64()))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        Nanos::new(self.now.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_unix_time_and_monotonic() {
        let clock = SystemClock::new();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
        // Later than 2020-01-01.
        assert!(a > Nanos::from_secs(1_577_836_800));
    }

    #[test]
    fn manual_clock_never_goes_back() {
        let c = ManualClock::new(Nanos::new(100));
        assert_eq!(c.set(Nanos::new(50)), Nanos::new(100));
        assert_eq!(c.set(Nanos::new(150)), Nanos::new(150));
        c.advance(Nanos::new(5));
        assert_eq!(c.now(), Nanos::new(155));
    }
}
