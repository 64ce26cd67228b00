//! [`Store`]: where keys' states live, and the shapes every store shares:
//! [`Check`] in, [`Verdict`] out.

use std::future::Future;
use std::num::NonZeroU32;

use smallvec::SmallVec;

use crate::decision::{Decision, DenyReason};
use crate::error::CheckError;
use crate::nanos::Nanos;
use crate::policy::Policy;

/// The most policies one stacked check may hold.
pub const MAX_STACK: usize = 16;

/// One policy applied to one key, at some cost.
///
/// A key names one counter: two policies that should count separately need
/// different keys (front ends build them as `<policy name>:<client>`). A key used
/// with a policy of another algorithm starts fresh (the bucket family,
/// `token_bucket`, `gcra` and `leaky_bucket`, shares one state shape, so a key keeps
/// its state across those three).
#[derive(Clone, Copy, Debug)]
pub struct Check<'a> {
    /// The key whose state is checked.
    pub key: &'a str,
    /// The policy to apply.
    pub policy: &'a Policy,
    /// Units this request costs.
    pub cost: NonZeroU32,
}

impl<'a> Check<'a> {
    /// A check of cost 1.
    pub const fn new(key: &'a str, policy: &'a Policy) -> Self {
        Check {
            key,
            policy,
            cost: NonZeroU32::MIN,
        }
    }

    /// The same check at another cost.
    pub const fn cost(self, cost: NonZeroU32) -> Self {
        Check { cost, ..self }
    }
}

/// The decisions of a stacked check: admitted iff every policy admits, and then all
/// consume; if any denies, none consumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The decision to report, as `ALGORITHMS.md` chooses it: on denial the denying
    /// policy with the largest `retry_after` (a cost that can never be admitted counts
    /// as the largest), else the policy with the least `remaining`; with `delay` set to
    /// the largest delay of all.
    pub decision: Decision,
    /// Which check `decision` comes from.
    pub index: usize,
    /// One decision per check, in the order given. When the stack was denied, the
    /// policies that would have admitted report `allowed: true` with what they hold
    /// now (`remaining`, `reset_after`): nothing was consumed from them.
    pub decisions: SmallVec<[Decision; 4]>,
}

impl Verdict {
    /// True when every policy admitted.
    pub fn allowed(&self) -> bool {
        self.decision.allowed
    }

    /// Builds a verdict from per-check decisions. For a denied stack, call it after
    /// replacing the would-have-admitted decisions by what they hold now.
    ///
    /// # Panics
    /// Never for a non-empty `decisions`; an empty one is refused before a store is
    /// asked (see [`validate`]).
    pub fn from_decisions(decisions: SmallVec<[Decision; 4]>) -> Verdict {
        let allowed = decisions.iter().all(|d| d.allowed);
        let mut index = 0;
        let mut best: Option<(u8, Nanos, u64)> = None;
        let mut delay = Nanos::ZERO;
        for (i, d) in decisions.iter().enumerate() {
            delay = delay.max(d.delay);
            // Larger key wins.
            let key = if allowed {
                (0, Nanos::ZERO, u64::MAX - d.remaining)
            } else if d.allowed {
                continue;
            } else {
                match d.reason {
                    Some(DenyReason::CostExceedsCapacity) => (1, Nanos::MAX, 0),
                    _ => (0, d.retry_after.unwrap_or(Nanos::ZERO), 0),
                }
            };
            if best.is_none_or(|b| key > b) {
                best = Some(key);
                index = i;
            }
        }
        let mut decision = decisions[index];
        decision.delay = if allowed { delay } else { Nanos::ZERO };
        Verdict {
            decision,
            index,
            decisions,
        }
    }
}

/// Checks that a stack is usable: 1 to [`MAX_STACK`] checks.
pub fn validate(checks: &[Check<'_>]) -> Result<(), CheckError> {
    match checks.len() {
        0 => Err(CheckError::Empty),
        n if n > MAX_STACK => Err(CheckError::TooMany(n)),
        _ => Ok(()),
    }
}

/// A place where keys' states live: in this process ([`crate::MemoryStore`]) or
/// shared between processes (the Redis store of `tollgate-redis`).
///
/// The methods return futures so that a store that needs a network round trip fits;
/// the in-memory store answers with a ready future (no allocation, no boxing) and
/// also offers the same operations as plain methods for callers that never await.
pub trait Store: Send + Sync {
    /// What goes wrong: bad arguments, or a store that could not answer.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides and consumes: all or nothing over `checks`.
    fn check(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Verdict, Self::Error>> + Send;

    /// Decides as [`Store::check`] would, consuming nothing.
    fn peek(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Verdict, Self::Error>> + Send;

    /// Forgets every state held under `key`.
    fn reset(&self, key: &str) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
