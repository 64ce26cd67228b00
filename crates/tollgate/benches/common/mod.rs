//! The workload both benches share: the keys, their order, the policies.

#![allow(dead_code)] // each bench uses its own part

use std::num::NonZeroU32;
use std::time::Duration;

use tollgate::{Algorithm, Policy};

pub const KEYS: usize = 100_000;
pub const SEED: u64 = 0x5eed_7011_6a7e;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key of client `i`: `client-00012345-api`, 19 bytes, written into `buf`.
///
/// Each check builds its key, as a server builds it from the request, so the key is
/// in cache and the bench measures the limiter's table, not the bench's own
/// 100,000-string `Vec` (fetching a random `String` from it costs two cache misses,
/// more than a whole check of the limiter under test).
pub fn fill_key(buf: &mut String, i: u32) {
    let mut bytes = *b"client-00000000-api";
    let mut n = i;
    for d in bytes[7..15].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    buf.clear();
    buf.push_str(std::str::from_utf8(&bytes).unwrap_or_default());
}

/// The 100,000 keys, and a fixed random visiting order (seeded).
pub fn keys_and_order() -> (Vec<String>, Vec<u32>) {
    let keys: Vec<String> = (0..KEYS as u32)
        .map(|i| {
            let mut k = String::new();
            fill_key(&mut k, i);
            k
        })
        .collect();
    let mut order: Vec<u32> = (0..KEYS as u32).collect();
    let mut s = SEED;
    for i in (1..order.len()).rev() {
        let j = (splitmix(&mut s) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    (keys, order)
}

pub fn policy(algorithm: Algorithm, limit: u32, period: Duration) -> Policy {
    match Policy::new(algorithm, limit, period) {
        Ok(p) => p,
        Err(e) => panic!("bench policy: {e}"),
    }
}

/// A policy under which every key stays live (never fresh again) for the whole
/// run and nothing is denied, so every check finds its key and the keyed benches
/// measure the steady state: the bucket family earns back one unit per second with a
/// burst of 10^9; the windows admit 10^9 per hour.
pub fn live_policy(algorithm: Algorithm) -> Policy {
    let p = if algorithm.is_bucket() {
        policy(algorithm, 1_000_000, Duration::from_secs(1_000_000))
    } else {
        policy(algorithm, 1_000_000_000, Duration::from_secs(3600))
    };
    match p.with_burst(1_000_000_000) {
        Ok(p) => p,
        Err(e) => panic!("bench policy: {e}"),
    }
}

pub fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}
