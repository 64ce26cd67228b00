//! Tollgate: rate limiting where every algorithm has one exact meaning.
//!
//! The six algorithms of `ALGORITHMS.md` are pure functions of (state, now, cost):
//! [`fixed_window`], [`sliding_window_log`], [`sliding_window_counter`],
//! [`token_bucket`], [`gcra`] and [`leaky_bucket`]. They never read a clock and do
//! no I/O, so the same code serves the in-memory store, the simulator and the lab,
//! and other stores are held to it.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::{Algorithm, Check, ManualClock, MemoryStore, Nanos, Policy};
//!
//! let clock = ManualClock::new(Nanos::from_secs(1_000));
//! let store = MemoryStore::with_clock(clock.clone());
//! let per_second = Policy::new(Algorithm::Gcra, 5, Duration::from_secs(1))?;
//!
//! for _ in 0..5 {
//!     assert!(store.check_one("alice", &per_second).allowed);
//! }
//! let denied = store.check_one("alice", &per_second);
//! assert!(!denied.allowed);
//! assert_eq!(denied.retry_after, Some(Nanos::from_millis(200)));
//! assert!(store.check_one("bob", &per_second).allowed); // another key, another count
//!
//! clock.advance(Duration::from_millis(200));
//! assert!(store.check_one("alice", &per_second).allowed);
//! # Ok::<(), tollgate::PolicyError>(())
//! ```

mod clock;
mod decision;
mod direct;
mod divisor;
mod error;
mod memory;
mod nanos;
mod policy;
mod state;
mod store;

pub mod fixed_window;
pub mod gcra;
pub mod leaky_bucket;
pub mod sliding_window_counter;
pub mod sliding_window_log;
pub mod token_bucket;

pub use clock::{Clock, ManualClock, SystemClock};
pub use decision::{Decision, DenyReason};
pub use direct::DirectLimiter;
pub use error::{CheckError, PolicyError};
pub use memory::{MemoryStats, MemoryStore, MemoryStoreBuilder};
pub use nanos::Nanos;
pub use policy::{Algorithm, MAX_PERIOD, Policy, parse_duration};
pub use state::State;
pub use store::{Check, MAX_STACK, Store, Verdict, validate};

/// The README's Rust examples, run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
