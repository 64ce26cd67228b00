//! [`Nanos`]: a duration or an instant in whole nanoseconds.

use std::fmt;
use std::time::Duration;

/// A count of nanoseconds: an instant on a store's clock (nanoseconds since the
/// Unix epoch for the system clock) or a duration.
///
/// Arithmetic saturates: an instant never wraps around, a duration never goes
/// below zero. `u64` nanoseconds reach the year 2554.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanos(u64);

impl Nanos {
    /// Zero nanoseconds.
    pub const ZERO: Nanos = Nanos(0);
    /// The largest representable value.
    pub const MAX: Nanos = Nanos(u64::MAX);

    /// `n` nanoseconds.
    pub const fn new(n: u64) -> Self {
        Nanos(n)
    }

    /// `ms` milliseconds, saturating.
    pub const fn from_millis(ms: u64) -> Self {
        Nanos(ms.saturating_mul(1_000_000))
    }

    /// `s` seconds, saturating.
    pub const fn from_secs(s: u64) -> Self {
        Nanos(s.saturating_mul(1_000_000_000))
    }

    /// The number of nanoseconds.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whole milliseconds, rounded up (the simulator and the HTTP API report these).
    pub const fn as_millis_ceil(self) -> u64 {
        self.0.div_ceil(1_000_000)
    }

    /// Whole seconds, rounded up (what `Retry-After` carries).
    pub const fn as_secs_ceil(self) -> u64 {
        self.0.div_ceil(1_000_000_000)
    }

    /// `self + rhs`, saturating at [`Nanos::MAX`].
    pub const fn saturating_add(self, rhs: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(rhs.0))
    }

    /// `self - rhs`, saturating at zero.
    pub const fn saturating_sub(self, rhs: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(rhs.0))
    }
}

impl From<Duration> for Nanos {
    /// Saturates at [`Nanos::MAX`] (about 584 years).
    fn from(d: Duration) -> Self {
        Nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl From<Nanos> for Duration {
    fn from(n: Nanos) -> Self {
        Duration::from_nanos(n.0)
    }
}

impl fmt::Debug for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ns", self.0)
    }
}

impl fmt::Display for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_up_to_millis_and_secs() {
        assert_eq!(Nanos::new(0).as_millis_ceil(), 0);
        assert_eq!(Nanos::new(1).as_millis_ceil(), 1);
        assert_eq!(Nanos::new(1_000_000).as_millis_ceil(), 1);
        assert_eq!(Nanos::new(1_000_001).as_millis_ceil(), 2);
        assert_eq!(Nanos::new(1_000_000_001).as_secs_ceil(), 2);
    }

    #[test]
    fn saturates() {
        assert_eq!(Nanos::MAX.saturating_add(Nanos::new(1)), Nanos::MAX);
        assert_eq!(Nanos::new(1).saturating_sub(Nanos::new(2)), Nanos::ZERO);
        assert_eq!(Nanos::from(Duration::MAX), Nanos::MAX);
    }
}
