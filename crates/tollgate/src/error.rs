//! Errors: what can never work. A denial is a [`crate::Decision`], not an error.

use crate::nanos::Nanos;

/// A policy, duration or algorithm name that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// `limit` was 0.
    #[error("invalid limit 0: a policy must admit at least 1 unit per period")]
    ZeroLimit,
    /// `burst` was 0.
    #[error("invalid burst 0: the burst must be at least 1")]
    ZeroBurst,
    /// `period` was zero.
    #[error("invalid period 0: the period must be longer than zero")]
    ZeroPeriod,
    /// `period` was longer than [`crate::MAX_PERIOD`].
    #[error("invalid period {0}: the longest period is 2^62 ns (about 146 years)")]
    PeriodTooLong(Nanos),
    /// `burst * T` was longer than [`crate::MAX_PERIOD`].
    #[error("invalid burst {burst}: burst times the emission interval {emission} exceeds 2^62 ns")]
    BurstTooLong {
        /// The burst asked for.
        burst: u32,
        /// The policy's emission interval `T`.
        emission: Nanos,
    },
    /// A name that is none of the six algorithms.
    #[error(
        "unknown algorithm {0:?}: expected fixed_window, sliding_window_log, sliding_window_counter, token_bucket, gcra or leaky_bucket"
    )]
    UnknownAlgorithm(String),
    /// A duration that does not parse.
    #[error(
        "invalid duration {0:?}: expected a whole number followed by ms, s, m or h (also ns, us, d)"
    )]
    InvalidDuration(String),
}

/// Bad arguments to a check.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// A stacked check with no policy in it.
    #[error("a check needs at least one policy")]
    Empty,
    /// More stacked policies than [`crate::MAX_STACK`].
    #[error("{0} stacked policies: at most {max} may be checked at once", max = crate::MAX_STACK)]
    TooMany(usize),
    /// One key named twice in a stack. A key holds one state: two policies of one
    /// family would share it, and two of different families would each replace the
    /// other's.
    #[error(
        "key {0:?} appears twice in one stacked check: give each policy its own key (for example \"<policy>:<client>\")"
    )]
    DuplicateKey(String),
    /// A broken invariant inside the store: a bug to report, never the caller's fault.
    #[error("internal error in the memory store: please report it")]
    Internal,
}
