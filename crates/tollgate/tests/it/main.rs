//! The `tollgate` crate's integration tests: one binary, one module per concern.

mod algorithms;
mod concurrency;
mod invariants;
mod reference;
mod store;
