//! [`BuildError`]: a layer configuration that can never work.

/// Why [`crate::RateLimitBuilder::build`] refused a configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No policy was given.
    #[error("no policy: add at least one with .policy(name, policy)")]
    NoPolicy,
    /// More policies than one stacked check may hold.
    #[error("{0} policies: at most {max} may be stacked on one layer", max = tollgate::MAX_STACK)]
    TooManyPolicies(usize),
    /// A policy name that cannot be used.
    #[error(
        "invalid policy name {name:?}: {reason} (names are 1 to 64 visible ASCII characters without ':', '\"' or '\\\\')"
    )]
    PolicyName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two policies with one name (they would share the store's keys).
    #[error("policy name {0:?} is used twice: each policy needs its own name")]
    DuplicatePolicyName(String),
    /// A header name that is not one.
    #[error("invalid header name {0:?} for Key::header: expected a token such as \"x-api-key\"")]
    HeaderName(String),
    /// An IPv6 prefix longer than an address.
    #[error("invalid IPv6 prefix /{0}: expected 0 to 128")]
    Ipv6Prefix(u8),
    /// `max_key_len(0)`.
    #[error("invalid max_key_len 0: keys need at least one byte")]
    MaxKeyLen,
    /// `count_if` with a `leaky_bucket` policy, whose delay must be served before
    /// the inner service answers, while `count_if` decides after it answered.
    #[error(
        "policy {0:?} is a leaky_bucket, which cannot be used with count_if: its delay must be served before the response, count_if counts after it"
    )]
    CountIfWithLeakyBucket(String),
    /// `OnError::local` with zero nodes.
    #[error("invalid node count 0 for OnError::local: expected 1 or more")]
    ZeroNodes,
}
