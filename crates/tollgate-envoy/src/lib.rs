//! The Envoy rate limit service, `envoy.service.ratelimit.v3.RateLimitService`
//! `ShouldRateLimit`, over any [`tollgate::Store`], configured in
//! envoyproxy/ratelimit's own YAML format.
//!
//! - [`config`]: the YAML files (`domain`, nested `descriptors` with `key`, `value`,
//!   `rate_limit { unit, requests_per_unit, unlimited, name, replaces }`,
//!   `shadow_mode`, `detailed_metric`), plus tollgate's `algorithm` and `burst`, and
//!   `policy` (one of the server's named policies, sharing its counters with the
//!   HTTP API); parsed, validated, compiled into a tree per domain.
//! - [`service`]: [`RateLimiter`], the tonic service: descriptors matched, all the
//!   request's limits decided as one stacked check (all or nothing), statuses and
//!   metrics.
//! - [`reload`]: watching the configuration directory and swapping the rules in
//!   atomically, keeping the previous rules when a file is invalid.
//! - [`metrics`]: per-rule counters.
//!
//! The protocol types come from the `envoy-types` crate (Envoy's own `.proto` files,
//! Apache-2.0, generated for tonic), re-exported as [`proto`].

pub mod config;
pub mod metrics;
pub mod reload;
pub mod service;

pub use config::{ConfigError, LoadOptions, RuleSet, Unit, load_dir};
pub use metrics::EnvoyMetrics;
pub use service::RateLimiter;

/// The protocol's types: requests, responses, the tonic server and client.
pub mod proto {
    pub use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
        RateLimitDescriptor, rate_limit_descriptor,
    };
    pub use envoy_types::pb::envoy::service::ratelimit::v3::{
        RateLimitRequest, RateLimitResponse, rate_limit_response, rate_limit_service_client,
        rate_limit_service_server,
    };
    pub use envoy_types::pb::google::protobuf::{Duration, UInt64Value};
}
