//! The middleware over real HTTP: an axum app on a loopback socket, a hyper client.
//!
//! The HTTP tests are functions generic over the store, each called for the memory
//! store and the Redis store (a real Redis: `TOLLGATE_TEST_REDIS_URL`, else
//! `redis://127.0.0.1:6379`; the Redis store decides at the test's manual clock
//! through its caller clock, or on Redis `TIME` where real time is the point).
//! A store that answers after a wait runs some of them through the layer's
//! waiting path.

mod common;
mod count_if;
mod errors;
mod headers;
mod keys;
mod leaky;
mod plain_hyper;
mod stacked;
