//! The Redis store's integration tests, against a real Redis (never a mock).
//!
//! They read the URL from `TOLLGATE_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`) and fail, saying how to get one, when no Redis answers
//! there. The cluster tests start their own nodes from `redis-server`.

mod batching;
mod cluster;
mod common;
mod conformance;
mod faults;
mod per_thread;
mod processes;
mod time_mode;
mod tls;
mod ttl;
