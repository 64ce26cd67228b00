//! The `tollgate` crate's integration tests: one binary, one module per concern.

mod algorithms;
mod concurrency;
mod invariants;
mod reference;
mod store;

/// A small xorshift generator for tests that need a fixed pseudo-random sequence.
pub(crate) fn xorshift(seed: u64) -> impl FnMut() -> usize {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as usize
    }
}
