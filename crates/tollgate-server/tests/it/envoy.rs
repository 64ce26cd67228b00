//! The Envoy rate limit service (gRPC `ShouldRateLimit`) of `tollgate serve`.
