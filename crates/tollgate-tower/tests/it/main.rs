//! The middleware over real HTTP: an axum app on a loopback socket, a hyper client.
//!
//! The HTTP tests are functions generic over the store, called here for the memory
//! store; the Redis store joins with one line per test.

mod common;
mod count_if;
mod errors;
mod headers;
mod keys;
mod leaky;
mod plain_hyper;
mod stacked;
