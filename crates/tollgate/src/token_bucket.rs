//! `token_bucket`: a bucket of `B` tokens, one token added every `T`.
//!
//! A fresh bucket is full. With `tokens(t) = min(B, tokens(t0) + (t - t0) / T)` as
//! an exact rational:
//!
//! - admit iff `tokens(t) >= c`; then `tokens -= c`
//! - `remaining = floor(tokens)` after the decision
//! - `reset_after` = time until the bucket is full again
//! - `retry_after = (c - tokens(t)) * T`
//!
//! The bucket is kept as the instant `TAT` at which it will be full again:
//! `tokens(t) = B - max(TAT - t, 0) / T`. Refill is then implicit and exact (no
//! timer, no refill thread), taking `c` tokens is `TAT = max(TAT, t) + c*T`, and
//! every formula above becomes the corresponding one of [`crate::gcra`]. So the two
//! algorithms make the same decisions with the same numbers, as `ALGORITHMS.md`
//! requires; the property tests check it against a model that counts tokens as
//! rationals.
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use tollgate::{token_bucket, Algorithm, Nanos, Policy};
//!
//! // 1 token per 15 s, capacity 1 (the seed's per-client limit).
//! let p = Policy::new(Algorithm::TokenBucket, 1, Duration::from_secs(15))?;
//! let one = NonZeroU32::MIN;
//! let mut state = Nanos::ZERO;
//! assert!(token_bucket::check(&p, &mut state, Nanos::from_secs(0), one, true).allowed);
//! let d = token_bucket::check(&p, &mut state, Nanos::from_secs(5), one, true);
//! assert_eq!(d.retry_after, Some(Nanos::from_secs(10)));
//! // Refilled after 15 s, exactly.
//! assert!(token_bucket::check(&p, &mut state, Nanos::from_secs(15), one, true).allowed);
//! # Ok::<(), tollgate::PolicyError>(())
//! ```

use std::num::NonZeroU32;

use crate::decision::Decision;
use crate::nanos::Nanos;
use crate::policy::Policy;

/// Decides a request of `cost` at `now`; `state` is the instant the bucket is full
/// again (`Nanos::ZERO` for a fresh, full bucket).
#[inline]
pub fn check(
    policy: &Policy,
    state: &mut Nanos,
    now: Nanos,
    cost: NonZeroU32,
    consume: bool,
) -> Decision {
    crate::gcra::check_bucket(policy, state, now, cost, consume).0
}

/// `(remaining, reset_after)` at `now` with nothing consumed.
#[inline]
pub fn view(policy: &Policy, state: Nanos, now: Nanos) -> (u64, Nanos) {
    crate::gcra::view(policy, state, now)
}
