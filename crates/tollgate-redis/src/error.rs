//! [`RedisError`]: what can go wrong, typed so a front end can act on it.

use std::time::Duration;

use tollgate::{CheckError, Nanos};

/// An error from the Redis store.
///
/// A denial is never an error: it is a [`tollgate::Decision`]. Errors are bad
/// arguments (the caller's to fix: [`RedisError::is_caller_error`]) or a store that
/// could not answer ([`RedisError::is_transient`]: trying again later may work); the
/// server's `on_error = deny | allow | local` applies to the second kind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// The URL or an option is invalid.
    #[error("invalid redis store configuration: {0}")]
    Config(String),
    /// The stack of checks is invalid (empty, too long, a key twice).
    #[error(transparent)]
    Check(#[from] CheckError),
    /// A policy whose durations are too long for exact arithmetic in Redis Lua.
    #[error(
        "policy with period {period} ns and burst tolerance {tolerance} ns is too long for the redis store: \
         the period, and for token_bucket, gcra and leaky_bucket the burst tolerance B*T, \
         must be at most 2^52 ns (about 52 days); use a shorter period or a smaller burst"
    )]
    PolicyTooLong {
        /// The policy's period `W`.
        period: Nanos,
        /// The policy's burst tolerance `tau = B * T`.
        tolerance: Nanos,
    },
    /// Redis did not answer within the timeout. The call may or may not have been
    /// applied; it is not replayed, so nothing is counted twice (transient).
    #[error(
        "redis did not answer within {0:?} (the call may have been applied; it is not retried)"
    )]
    Timeout(Duration),
    /// Redis could not be reached, or the connection broke (transient).
    #[error("redis is unavailable: {0}")]
    Unavailable(#[source] redis::RedisError),
    /// The store's circuit breaker is open: Redis failed (timed out or was
    /// unreachable) `failures` decisions in a row, so decisions fail at once
    /// instead of waiting out the timeout, until a probe sent after the cooldown is
    /// answered (transient). Nothing was sent to Redis.
    #[error(
        "redis failed {failures} decisions in a row: the store's circuit breaker is open \
         and this decision was not sent (next probe in {retry_in:?})"
    )]
    CircuitOpen {
        /// The failures in a row that open the breaker.
        failures: u32,
        /// Until a probe may go; zero while one is out.
        retry_in: Duration,
    },
    /// Redis answered with an error, for example a Lua error (not transient).
    #[error("redis answered with an error: {0}")]
    Server(#[source] redis::RedisError),
    /// Redis answered something the store does not understand (a bug or a foreign
    /// value under the store's keys).
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
}

impl RedisError {
    /// True when trying again later may succeed: Redis timed out or was unreachable,
    /// or the circuit breaker held the call back.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RedisError::Timeout(_) | RedisError::Unavailable(_) | RedisError::CircuitOpen { .. }
        )
    }

    /// True when the caller's input is at fault (configuration, the checks, the
    /// policy), so trying again cannot help and no fallback should hide it.
    pub fn is_caller_error(&self) -> bool {
        matches!(
            self,
            RedisError::Config(_) | RedisError::Check(_) | RedisError::PolicyTooLong { .. }
        )
    }
}
