//! `leaky_bucket`: a queue that leaks one unit every `T` and holds at most `B` units.
//!
//! Admitted requests are **delayed**, not rejected, until the queue is full (traffic
//! shaping, as nginx's `limit_req` with `burst`). State: `next_free`, the instant the
//! queue's outlet is free; fresh means `next_free <= t`.
//!
//! - `start = max(next_free, t)`; `wait = start - t`
//! - admit iff `wait + c*T <= B*T`; then `next_free = start + c*T`, `delay = wait`
//! - `remaining = floor((B*T - (next_free - t)) / T)` after the decision
//! - `reset_after = max(next_free - t, 0)`
//! - `retry_after = wait + c*T - B*T`
//!
//! `next_free` is [`crate::gcra`]'s `TAT` under another name, so the two admit exactly
//! the same requests; what the leaky bucket adds is `delay`. Admitted requests that
//! each wait their `delay` leave evenly spaced, `T` apart. A front end that admits a
//! request must hold it for `delay` before serving it.
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use tollgate::{leaky_bucket, Algorithm, Nanos, Policy};
//!
//! // One per 5 s, a queue of 5 (the seed's `leaking_bucket_queue`).
//! let p = Policy::new(Algorithm::LeakyBucket, 1, Duration::from_secs(5))?.with_burst(5)?;
//! let one = NonZeroU32::MIN;
//! let mut next_free = Nanos::ZERO;
//! let t = Nanos::from_secs(1000);
//! let delays: Vec<u64> = (0..5)
//!     .map(|_| leaky_bucket::check(&p, &mut next_free, t, one, true).delay.as_secs_ceil())
//!     .collect();
//! assert_eq!(delays, [0, 5, 10, 15, 20]);
//! assert!(!leaky_bucket::check(&p, &mut next_free, t, one, true).allowed);
//! # Ok::<(), tollgate::PolicyError>(())
//! ```

use std::num::NonZeroU32;

use crate::decision::Decision;
use crate::nanos::Nanos;
use crate::policy::Policy;

/// Decides a request of `cost` at `now` against `next_free`; an admitted request's
/// decision carries its `delay`.
#[inline]
pub fn check(
    policy: &Policy,
    next_free: &mut Nanos,
    now: Nanos,
    cost: NonZeroU32,
    consume: bool,
) -> Decision {
    let (mut decision, wait) = crate::gcra::check_bucket(policy, next_free, now, cost, consume);
    decision.delay = wait;
    decision
}

/// `(remaining, reset_after)` at `now` with nothing consumed.
#[inline]
pub fn view(policy: &Policy, next_free: Nanos, now: Nanos) -> (u64, Nanos) {
    crate::gcra::view(policy, next_free, now)
}
