//! The simulator's CSV reader and replay: any input ends in a count of rows or a
//! `SimError` with a message, an exit status of 1 or 2, and maybe a hint.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::{Algorithm, Nanos, Policy};
use tollgate_server::simulate;

const ALGORITHMS: [Algorithm; 6] = [
    Algorithm::FixedWindow,
    Algorithm::SlidingWindowLog,
    Algorithm::SlidingWindowCounter,
    Algorithm::TokenBucket,
    Algorithm::Gcra,
    Algorithm::LeakyBucket,
];

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let algorithm = ALGORITHMS[usize::from(first) % ALGORITHMS.len()];
    let limit = u32::from(first >> 3) + 1;
    let Ok(policy) = Policy::new(algorithm, limit, Nanos::new(1_000_000_000)) else {
        return;
    };
    match simulate::run(&policy, input, std::io::sink()) {
        Ok(_rows) => {}
        Err(err) => {
            let _ = err.to_string();
            let _ = err.hint();
            assert!(matches!(err.exit_code(), 1 | 2), "{err}");
        }
    }
});
