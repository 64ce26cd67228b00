//! The Redis and Redis Cluster store for tollgate.
//!
//! [`RedisStore`] implements [`tollgate::Store`]: many processes on many machines
//! share one limit through Redis. Each decision is one round trip running one Lua
//! function (a Redis Functions library the store loads itself; Redis 7 or later)
//! that reads Redis `TIME`, decides every policy of a stack all or nothing, and
//! writes the new states with a time-to-live. There is no refill thread: the
//! algorithms compute refills from the time.
//!
//! ```no_run
//! use tollgate::{Algorithm, Check, Policy, Store};
//! use tollgate_redis::RedisStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::connect("redis://127.0.0.1:6379/0").await?;
//! let policy = Policy::new(Algorithm::Gcra, 10, std::time::Duration::from_secs(1))?;
//! let verdict = store.check(&[Check::new("api:alice", &policy)]).await?;
//! println!("allowed: {}", verdict.allowed());
//! # Ok(())
//! # }
//! ```

mod breaker;
mod error;
mod keys;
mod store;
mod url;

pub use breaker::{DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_FAILURES};
pub use error::RedisError;
pub use store::{DEFAULT_PREFIX, MAX_DURATION, RedisStore, RedisStoreBuilder};
