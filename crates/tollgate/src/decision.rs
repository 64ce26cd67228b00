//! [`Decision`]: what a check answers.

use crate::nanos::Nanos;

/// Why a request was denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// The limit is used up for now; `retry_after` says when the same request would pass.
    Limited,
    /// The cost is larger than the policy could ever admit at once (`c > L` for the
    /// window algorithms, `c > B` for the bucket family). Waiting does not help.
    CostExceedsCapacity,
}

impl DenyReason {
    /// The reason's name in the HTTP API and the simulator: `limited` or
    /// `cost_exceeds_capacity`.
    pub const fn name(self) -> &'static str {
        match self {
            DenyReason::Limited => "limited",
            DenyReason::CostExceedsCapacity => "cost_exceeds_capacity",
        }
    }
}

/// The answer to one check, with the fields of `ALGORITHMS.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Admitted or not.
    pub allowed: bool,
    /// `L` (the bucket family reports `B`).
    pub limit: u32,
    /// Whole units that could still be admitted now, after this decision.
    pub remaining: u64,
    /// Time until the key's state is back to fresh if no more requests come.
    pub reset_after: Nanos,
    /// On a denial, the smallest wait after which this same request would be admitted
    /// if no other request came. `None` when allowed or when the cost can never be
    /// admitted.
    pub retry_after: Option<Nanos>,
    /// `leaky_bucket` only: how long the admitted request must wait before it proceeds.
    pub delay: Nanos,
    /// Why the request was denied; `None` when allowed.
    pub reason: Option<DenyReason>,
}

impl Decision {
    /// True when the request was denied.
    pub const fn is_denied(&self) -> bool {
        !self.allowed
    }
}
