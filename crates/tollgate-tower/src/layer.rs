//! [`RateLimitLayer`] and its builder: the policies, the key, what to do when the
//! store fails, and how to answer.

use std::collections::HashSet;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use tollgate::{Check, CheckError, Clock, MAX_STACK, MemoryStore, Policy, Store, Verdict};
use tower_layer::Layer;

use crate::error::BuildError;
use crate::key::Key;
use crate::response::{self, Denied};
use crate::service::RateLimit;

/// The longest client key accepted unless told otherwise, in bytes.
pub const DEFAULT_MAX_KEY_LEN: usize = 256;

type CostFn = dyn Fn(&Parts) -> NonZeroU32 + Send + Sync;
type DenyFn = dyn Fn(&Denied<'_>) -> Response<Full<Bytes>> + Send + Sync;
type CountFn = dyn Fn(StatusCode) -> bool + Send + Sync;

/// A tower [`Layer`] that rate-limits the services it wraps with [`RateLimit`].
///
/// Build it with [`RateLimitLayer::builder`]; clones share the store and the
/// configuration.
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Algorithm, MemoryStore, Policy};
/// use tollgate_tower::{Key, RateLimitLayer};
///
/// let per_client = Policy::new(Algorithm::Gcra, 10, Duration::from_secs(1))?;
/// let layer = RateLimitLayer::builder(MemoryStore::new())
///     .policy("per-client", per_client)
///     .key(Key::peer_ip())
///     .build()?;
/// let app: axum::Router = axum::Router::new()
///     .route("/", axum::routing::get(|| async { "hello" }))
///     .layer(layer);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RateLimitLayer<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for RateLimitLayer<S> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> fmt::Debug for RateLimitLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shared, f)
    }
}

impl<S: Store> RateLimitLayer<S> {
    /// Starts a layer over `store` (any [`Store`]: the memory store, the Redis store).
    pub fn builder(store: S) -> RateLimitBuilder<S> {
        RateLimitLayer::builder_shared(Arc::new(store))
    }

    /// Starts a layer over a store shared with other code (or other layers).
    pub fn builder_shared(store: Arc<S>) -> RateLimitBuilder<S> {
        RateLimitBuilder {
            store,
            key: Key::peer_ip(),
            policies: Vec::new(),
            cost: None,
            on_error: OnError::deny(),
            legacy_headers: false,
            max_key_len: DEFAULT_MAX_KEY_LEN,
            deny: None,
            count_if: None,
        }
    }

    /// The store decisions are asked of.
    pub fn store(&self) -> &Arc<S> {
        &self.shared.store
    }
}

impl<S, I> Layer<I> for RateLimitLayer<S> {
    type Service = RateLimit<S, I>;

    fn layer(&self, inner: I) -> Self::Service {
        RateLimit::from_shared(inner, Arc::clone(&self.shared))
    }
}

/// Configures a [`RateLimitLayer`]; [`build`](RateLimitBuilder::build) checks it.
pub struct RateLimitBuilder<S> {
    store: Arc<S>,
    key: Key,
    policies: Vec<(String, Policy, Option<Key>)>,
    cost: Option<Arc<CostFn>>,
    on_error: OnError,
    legacy_headers: bool,
    max_key_len: usize,
    deny: Option<Arc<DenyFn>>,
    count_if: Option<Arc<CountFn>>,
}

impl<S> fmt::Debug for RateLimitBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("key", &self.key)
            .field("policies", &self.policies)
            .field("on_error", &self.on_error)
            .field("legacy_headers", &self.legacy_headers)
            .field("max_key_len", &self.max_key_len)
            .finish_non_exhaustive()
    }
}

impl<S: Store> RateLimitBuilder<S> {
    /// Adds a policy named `name`, keyed by the layer's [`key`](Self::key). Every
    /// policy must admit a request for it to pass, and a denied request consumes
    /// from none (all or nothing). The store sees the key `"<name>:<client key>"`,
    /// so names must not contain `':'`.
    pub fn policy(mut self, name: impl Into<String>, policy: Policy) -> Self {
        self.policies.push((name.into(), policy, None));
        self
    }

    /// Adds a policy with its own key, e.g. a `"global"` policy under
    /// [`Key::global`] stacked on a per-client one.
    pub fn policy_keyed(mut self, name: impl Into<String>, policy: Policy, key: Key) -> Self {
        self.policies.push((name.into(), policy, Some(key)));
        self
    }

    /// The key of the policies added without one (default [`Key::peer_ip`]).
    pub fn key(mut self, key: Key) -> Self {
        self.key = key;
        self
    }

    /// What a request costs (default 1), from its head.
    pub fn cost<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> NonZeroU32 + Send + Sync + 'static,
    {
        self.cost = Some(Arc::new(f));
        self
    }

    /// What to do when the store fails (default [`OnError::deny`]).
    pub fn on_error(mut self, mode: OnError) -> Self {
        self.on_error = mode;
        self
    }

    /// Also sends `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
    /// `X-RateLimit-Reset` (seconds from now) for the reported policy, for clients
    /// that expect them. Off by default.
    pub fn legacy_headers(mut self, on: bool) -> Self {
        self.legacy_headers = on;
        self
    }

    /// Refuses client keys longer than `bytes` with `400` (default
    /// [`DEFAULT_MAX_KEY_LEN`]), so a client cannot fill the store with huge keys.
    pub fn max_key_len(mut self, bytes: usize) -> Self {
        self.max_key_len = bytes;
        self
    }

    /// Answers denied requests with `f` instead of the default problem+json 429.
    /// The layer adds the `RateLimit` fields, and `Retry-After` unless `f` set one.
    pub fn deny_response<F>(mut self, f: F) -> Self
    where
        F: Fn(&Denied<'_>) -> Response<Full<Bytes>> + Send + Sync + 'static,
    {
        self.deny = Some(Arc::new(f));
        self
    }

    /// Counts only the requests whose response status satisfies `f` (e.g. only
    /// `401`s, to throttle failed logins).
    ///
    /// A request is first *peeked*: if the policies would deny it, it is refused
    /// with 429 without reaching the inner service. Otherwise the inner service
    /// answers, and if `f(status)` holds the request is then checked, consuming.
    /// This is not atomic: requests in flight together are all peeked before any is
    /// counted, so up to the concurrency level may pass beyond the limit.
    /// `leaky_bucket` policies cannot be used with it.
    ///
    /// A counted response carries the fields of its check. An uncounted one carries
    /// what remains (exact: the peek's `remaining` plus the cost it did not take)
    /// and the peek's `t`, an upper bound (a peek cannot tell when the state would
    /// be fresh without this request).
    pub fn count_if<F>(mut self, f: F) -> Self
    where
        F: Fn(StatusCode) -> bool + Send + Sync + 'static,
    {
        self.count_if = Some(Arc::new(f));
        self
    }

    /// Checks the configuration and makes the layer.
    pub fn build(self) -> Result<RateLimitLayer<S>, BuildError> {
        if self.policies.is_empty() {
            return Err(BuildError::NoPolicy);
        }
        if self.policies.len() > MAX_STACK {
            return Err(BuildError::TooManyPolicies(self.policies.len()));
        }
        if self.max_key_len == 0 {
            return Err(BuildError::MaxKeyLen);
        }
        let mut seen = HashSet::new();
        for (name, policy, _) in &self.policies {
            validate_name(name)?;
            if !seen.insert(name.as_str()) {
                return Err(BuildError::DuplicatePolicyName(name.clone()));
            }
            if self.count_if.is_some() && policy.algorithm() == tollgate::Algorithm::LeakyBucket {
                return Err(BuildError::CountIfWithLeakyBucket(name.clone()));
            }
        }
        self.key.validate()?;
        let nodes = match &self.on_error.0 {
            Mode::Local { nodes, .. } => *nodes,
            _ => 1,
        };
        if nodes == 0 {
            return Err(BuildError::ZeroNodes);
        }

        // The distinct extractors, each run once per request: the layer's key only
        // if some policy uses it (an unused key must not refuse requests).
        let mut keys = Vec::new();
        let mut default_key = None;
        let mut policies = Vec::with_capacity(self.policies.len());
        for (name, policy, key) in self.policies {
            let key = match key {
                Some(key) => {
                    key.validate()?;
                    keys.push(key);
                    keys.len() - 1
                }
                None => *default_key.get_or_insert_with(|| {
                    keys.push(self.key.clone());
                    keys.len() - 1
                }),
            };
            policies.push(Named {
                local: local_share(&policy, nodes),
                name: name.into_boxed_str(),
                policy,
                key,
            });
        }
        let policy_header = response::policy_field(policies.iter().map(|p| (&*p.name, &p.policy)));
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                store: self.store,
                policies: policies.into_boxed_slice(),
                keys: keys.into_boxed_slice(),
                cost: self.cost,
                on_error: self.on_error.0,
                policy_header,
                legacy_headers: self.legacy_headers,
                max_key_len: self.max_key_len,
                deny: self.deny,
                count_if: self.count_if,
            }),
        })
    }
}

fn validate_name(name: &str) -> Result<(), BuildError> {
    let bad = |reason| {
        Err(BuildError::PolicyName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 64 {
        return bad("it is longer than 64 bytes");
    }
    if name.contains(':') {
        return bad("the store key is \"<name>:<client>\", so ':' would make keys ambiguous");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        return bad("it must be visible ASCII without '\"' or '\\' (it is sent in headers)");
    }
    Ok(())
}

/// The policy one node of `nodes` decides with while the shared store is down:
/// `limit / nodes` and `burst / nodes` (at least 1), over the same period.
fn local_share(policy: &Policy, nodes: u32) -> Policy {
    if nodes <= 1 {
        return *policy;
    }
    Policy::new(
        policy.algorithm(),
        (policy.limit() / nodes).max(1),
        policy.period(),
    )
    .and_then(|p| p.with_burst((policy.burst() / nodes).max(1)))
    .unwrap_or(*policy)
}

/// What the layer does when the store fails (cannot be reached, times out).
///
/// Every failure is logged with `tracing` at `warn`.
#[derive(Clone)]
pub struct OnError(pub(crate) Mode);

#[derive(Clone)]
pub(crate) enum Mode {
    Deny,
    Allow,
    Local {
        store: Arc<dyn LocalStore>,
        nodes: u32,
    },
}

impl OnError {
    /// Refuse the request with `503 Service Unavailable` (problem+json). The default:
    /// an outage of the limiter does not open the service to unlimited traffic.
    pub fn deny() -> Self {
        OnError(Mode::Deny)
    }

    /// Pass the request to the inner service unlimited, without rate-limit headers.
    pub fn allow() -> Self {
        OnError(Mode::Allow)
    }

    /// Decide with `store`, an in-process limiter, until the shared store answers
    /// again. See [`nodes`](Self::nodes) to share the limit across a fleet.
    pub fn local<C: Clock + 'static>(store: MemoryStore<C>) -> Self {
        OnError(Mode::Local {
            store: Arc::new(store),
            nodes: 1,
        })
    }

    /// [`OnError::local`] with a store the caller keeps a handle on, so that other
    /// code deciding the same keys while the shared store is down (a server's
    /// decision API beside its protected routes) draws on the same local budget
    /// instead of a second one.
    pub fn local_shared<C: Clock + 'static>(store: Arc<MemoryStore<C>>) -> Self {
        OnError(Mode::Local { store, nodes: 1 })
    }

    /// For [`OnError::local`]: the fleet has `nodes` nodes, so each decides locally
    /// with `limit / nodes` and `burst / nodes` (at least 1) and the fleet stays
    /// near the limit during an outage. Ignored by the other modes.
    pub fn nodes(mut self, nodes: u32) -> Self {
        if let Mode::Local { nodes: n, .. } = &mut self.0 {
            *n = nodes;
        }
        self
    }
}

impl fmt::Debug for OnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Mode::Deny => f.write_str("OnError::deny"),
            Mode::Allow => f.write_str("OnError::allow"),
            Mode::Local { nodes, .. } => write!(f, "OnError::local(nodes: {nodes})"),
        }
    }
}

/// The in-process fallback limiter, with its clock erased.
pub(crate) trait LocalStore: Send + Sync {
    fn decide(&self, checks: &[Check<'_>], consume: bool) -> Result<Verdict, CheckError>;
}

impl<C: Clock> LocalStore for MemoryStore<C> {
    fn decide(&self, checks: &[Check<'_>], consume: bool) -> Result<Verdict, CheckError> {
        if consume {
            self.check_all(checks)
        } else {
            self.peek_all(checks)
        }
    }
}

/// One configured policy.
#[derive(Debug)]
pub(crate) struct Named {
    pub(crate) name: Box<str>,
    pub(crate) policy: Policy,
    /// What this node decides with under [`OnError::local`].
    pub(crate) local: Policy,
    /// Index into [`Shared::keys`].
    pub(crate) key: usize,
}

/// What a layer and its services share.
pub(crate) struct Shared<S> {
    pub(crate) store: Arc<S>,
    pub(crate) policies: Box<[Named]>,
    /// The distinct key extractors the policies use.
    pub(crate) keys: Box<[Key]>,
    pub(crate) cost: Option<Arc<CostFn>>,
    pub(crate) on_error: Mode,
    pub(crate) policy_header: Option<HeaderValue>,
    pub(crate) legacy_headers: bool,
    pub(crate) max_key_len: usize,
    pub(crate) deny: Option<Arc<DenyFn>>,
    pub(crate) count_if: Option<Arc<CountFn>>,
}

impl<S> fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("policies", &self.policies)
            .field("keys", &self.keys)
            .field("on_error", &OnError(self.on_error.clone()))
            .field("legacy_headers", &self.legacy_headers)
            .field("max_key_len", &self.max_key_len)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;
    use tollgate::Algorithm;

    fn p() -> Policy {
        Policy::new(Algorithm::Gcra, 1, Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn names_are_checked() {
        let b = || RateLimitLayer::builder(MemoryStore::new());
        assert!(matches!(b().build(), Err(BuildError::NoPolicy)));
        let e = b().policy("a:b", p()).build().unwrap_err();
        assert!(e.to_string().contains("':'"), "{e}");
        assert!(b().policy("", p()).build().is_err());
        assert!(b().policy("a b", p()).build().is_err());
        assert!(b().policy("a\"", p()).build().is_err());
        assert!(matches!(
            b().policy("a", p()).policy("a", p()).build(),
            Err(BuildError::DuplicatePolicyName(_))
        ));
        assert!(b().policy("per-client", p()).build().is_ok());
    }

    #[test]
    fn count_if_refuses_leaky_bucket() {
        let leaky = Policy::new(Algorithm::LeakyBucket, 1, Duration::from_secs(1)).unwrap();
        let r = RateLimitLayer::builder(MemoryStore::new())
            .policy("l", leaky)
            .count_if(|s| s == StatusCode::UNAUTHORIZED)
            .build();
        assert!(matches!(r, Err(BuildError::CountIfWithLeakyBucket(_))));
    }

    #[test]
    fn store_keys_reuse_the_strings_given() {
        let stacked = RateLimitLayer::builder(MemoryStore::new())
            .key(Key::header("x-a"))
            .policy("a", p())
            .policy_keyed("g", p(), Key::global())
            .policy("c", p())
            .build()
            .unwrap();
        let (parts, ()) = http::Request::builder()
            .header("x-a", "v")
            .body(())
            .unwrap()
            .into_parts();
        let mut keys: smallvec::SmallVec<[String; 2]> = ["junk", "more junk", "x", "y", "z"]
            .map(String::from)
            .into_iter()
            .collect();
        crate::decide::fill_keys(&stacked.shared, &parts, &mut keys).unwrap();
        assert_eq!(&keys[..], ["a:v", "g:global", "c:v"]);

        let (bare, ()) = http::Request::new(()).into_parts();
        let missing = crate::decide::fill_keys(&stacked.shared, &bare, &mut keys).unwrap_err();
        assert!(missing.contains("\"x-a\""), "{missing}");

        let one = RateLimitLayer::builder(MemoryStore::new())
            .key(Key::global())
            .policy("o", p())
            .build()
            .unwrap();
        crate::decide::fill_keys(&one.shared, &bare, &mut keys).unwrap();
        assert_eq!(&keys[..], ["o:global"]);
    }

    #[test]
    fn local_share_divides_limit_and_burst() {
        let q = Policy::new(Algorithm::Gcra, 10, Duration::from_secs(1))
            .unwrap()
            .with_burst(20)
            .unwrap();
        let l = local_share(&q, 4);
        assert_eq!((l.limit(), l.burst(), l.period()), (2, 5, q.period()));
        assert_eq!(local_share(&q, 100).limit(), 1);
    }
}
