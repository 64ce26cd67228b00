//! [`Policy`] and [`Algorithm`]: what a limit is.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use crate::divisor::Divisor;
use crate::error::PolicyError;
use crate::nanos::Nanos;

/// The six algorithms, with the exact meanings of `ALGORITHMS.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Windows aligned to the clock; up to `2L` can pass around a boundary.
    FixedWindow,
    /// A log of admitted requests; never more than `L` in any window of length `W`.
    SlidingWindowLog,
    /// Cloudflare's weighted two-window approximation.
    SlidingWindowCounter,
    /// A bucket of `B` tokens refilled one per `T`.
    TokenBucket,
    /// The generic cell rate algorithm; decides exactly as `TokenBucket`.
    Gcra,
    /// A queue leaking one unit per `T`: admitted requests are delayed, not refused.
    LeakyBucket,
}

impl Algorithm {
    /// Every algorithm, in the order of `ALGORITHMS.md`.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindowLog,
        Algorithm::SlidingWindowCounter,
        Algorithm::TokenBucket,
        Algorithm::Gcra,
        Algorithm::LeakyBucket,
    ];

    /// The name used in configuration, on the command line and in the HTTP API.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindowLog => "sliding_window_log",
            Algorithm::SlidingWindowCounter => "sliding_window_counter",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::Gcra => "gcra",
            Algorithm::LeakyBucket => "leaky_bucket",
        }
    }

    /// True for `token_bucket`, `gcra` and `leaky_bucket`, whose state is one instant
    /// (the theoretical arrival time) and whose capacity is the burst `B`.
    pub const fn is_bucket(self) -> bool {
        matches!(
            self,
            Algorithm::TokenBucket | Algorithm::Gcra | Algorithm::LeakyBucket
        )
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| PolicyError::UnknownAlgorithm(s.to_owned()))
    }
}

/// The longest period, and the longest burst tolerance `B * T`, a policy may have:
/// 2^62 ns, about 146 years. It keeps every instant a decision computes inside `u64`.
pub const MAX_PERIOD: Nanos = Nanos::new(1 << 62);

/// One limit: `limit` units per `period`, with a `burst` capacity for the bucket
/// family (ignored by the window algorithms).
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Algorithm, Policy};
///
/// let p = Policy::new(Algorithm::Gcra, 10, Duration::from_secs(1))?.with_burst(5)?;
/// assert_eq!(p.limit(), 10);
/// assert_eq!(p.burst(), 5);
/// assert_eq!(p.emission_interval().as_u64(), 100_000_000); // T = W / L
/// # Ok::<(), tollgate::PolicyError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    algorithm: Algorithm,
    limit: NonZeroU32,
    period: Nanos,
    burst: NonZeroU32,
    /// `T = ceil(W / L)`, at least 1 ns.
    emission: Nanos,
    /// `tau = B * T`.
    tolerance: Nanos,
    /// `T`, prepared for division.
    per_emission: Divisor,
    /// `W`, prepared for division.
    per_period: Divisor,
}

impl Policy {
    /// `limit` units per `period`, burst equal to `limit`.
    ///
    /// Errors when `limit` is 0, `period` is zero or longer than [`MAX_PERIOD`].
    pub fn new(
        algorithm: Algorithm,
        limit: u32,
        period: impl Into<Nanos>,
    ) -> Result<Self, PolicyError> {
        let limit = NonZeroU32::new(limit).ok_or(PolicyError::ZeroLimit)?;
        let period = period.into();
        if period == Nanos::ZERO {
            return Err(PolicyError::ZeroPeriod);
        }
        if period > MAX_PERIOD {
            return Err(PolicyError::PeriodTooLong(period));
        }
        let emission = Nanos::new(period.as_u64().div_ceil(u64::from(limit.get())));
        Self::assemble(algorithm, limit, period, limit, emission)
    }

    /// The same policy with capacity `burst` (the bucket family's `B`).
    pub fn with_burst(self, burst: u32) -> Result<Self, PolicyError> {
        let burst = NonZeroU32::new(burst).ok_or(PolicyError::ZeroBurst)?;
        Self::assemble(
            self.algorithm,
            self.limit,
            self.period,
            burst,
            self.emission,
        )
    }

    fn assemble(
        algorithm: Algorithm,
        limit: NonZeroU32,
        period: Nanos,
        burst: NonZeroU32,
        emission: Nanos,
    ) -> Result<Self, PolicyError> {
        let tau = u128::from(emission.as_u64()) * u128::from(burst.get());
        if tau > u128::from(MAX_PERIOD.as_u64()) {
            return Err(PolicyError::BurstTooLong {
                burst: burst.get(),
                emission,
            });
        }
        Ok(Policy {
            algorithm,
            limit,
            period,
            burst,
            emission,
            // Checked just above: tau <= 2^62.
            tolerance: Nanos::new(tau as u64),
            per_emission: Divisor::new(emission.as_u64()),
            per_period: Divisor::new(period.as_u64()),
        })
    }

    /// The algorithm.
    pub const fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// `L`, units admitted per period.
    pub const fn limit(&self) -> u32 {
        self.limit.get()
    }

    /// `W`, the period.
    pub const fn period(&self) -> Nanos {
        self.period
    }

    /// `B`, the bucket family's capacity (defaults to `L`).
    pub const fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// `T = ceil(W / L)`: one unit is earned back every `T`.
    pub const fn emission_interval(&self) -> Nanos {
        self.emission
    }

    /// `tau = B * T`: the bucket family's burst tolerance.
    pub const fn tolerance(&self) -> Nanos {
        self.tolerance
    }

    /// `floor(n / T)`, without a divide instruction.
    #[inline]
    pub(crate) const fn div_emission(&self, n: u64) -> u64 {
        self.per_emission.div(n)
    }

    /// `floor(n / W)`, without a divide instruction.
    #[inline]
    pub(crate) const fn div_period(&self, n: u64) -> u64 {
        self.per_period.div(n)
    }

    /// The most one request may cost: `B` for the bucket family, `L` for windows.
    /// A larger cost is denied with [`crate::DenyReason::CostExceedsCapacity`].
    pub const fn capacity(&self) -> u32 {
        if self.algorithm.is_bucket() {
            self.burst.get()
        } else {
            self.limit.get()
        }
    }
}

/// Parses a duration such as `500ms`, `15s`, `1m`, `1h`.
///
/// The units are `ns`, `us`, `ms`, `s`, `m`, `h` and `d`; the number is a whole
/// number. Zero is accepted here (a policy refuses a zero period itself).
///
/// ```
/// use tollgate::parse_duration;
/// assert_eq!(parse_duration("500ms")?.as_u64(), 500_000_000);
/// assert_eq!(parse_duration("1m")?.as_u64(), 60_000_000_000);
/// assert!(parse_duration("15 sec").is_err());
/// # Ok::<(), tollgate::PolicyError>(())
/// ```
pub fn parse_duration(text: &str) -> Result<Nanos, PolicyError> {
    let bad = || PolicyError::InvalidDuration(text.to_owned());
    let s = text.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(bad());
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    let scale: u64 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "d" => 86_400_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).map(Nanos::new).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emission_interval_rounds_up() {
        let p = Policy::new(Algorithm::Gcra, 3, Nanos::new(10)).expect("valid");
        assert_eq!(p.emission_interval(), Nanos::new(4));
        assert_eq!(p.tolerance(), Nanos::new(12));
        let p = p.with_burst(1).expect("valid");
        assert_eq!(p.tolerance(), Nanos::new(4));
    }

    #[test]
    fn rejects_zero_and_huge() {
        assert_eq!(
            Policy::new(Algorithm::Gcra, 0, Nanos::new(1)),
            Err(PolicyError::ZeroLimit)
        );
        assert_eq!(
            Policy::new(Algorithm::Gcra, 1, Nanos::ZERO),
            Err(PolicyError::ZeroPeriod)
        );
        assert!(Policy::new(Algorithm::Gcra, 1, Nanos::MAX).is_err());
        let p = Policy::new(Algorithm::Gcra, 1, MAX_PERIOD).expect("valid");
        assert!(p.with_burst(2).is_err());
        assert_eq!(p.with_burst(0), Err(PolicyError::ZeroBurst));
    }

    #[test]
    fn algorithm_names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>(), Ok(a));
        }
        let err = "leaky".parse::<Algorithm>().expect_err("unknown");
        assert!(err.to_string().contains("\"leaky\""), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Nanos::from_millis(500)));
        assert_eq!(parse_duration("15s"), Ok(Nanos::from_secs(15)));
        assert_eq!(parse_duration("1m"), Ok(Nanos::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Nanos::from_secs(3600)));
        assert_eq!(parse_duration("7ns"), Ok(Nanos::new(7)));
        for bad in [
            "",
            "abc",
            "15",
            "ms",
            "1.5s",
            "-1s",
            "15 sec",
            "99999999999999d",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
