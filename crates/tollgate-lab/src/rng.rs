//! [`SplitMix64`]: the lab's seeded random numbers.
//!
//! A generator written here rather than taken from a crate, so the lab's traffic
//! depends on nothing that a dependency update could change: the same seed gives
//! the same arrivals in every version of tollgate that keeps this file. SplitMix64
//! (Steele, Lea and Flood, 2014) passes BigCrush, needs one `u64` of state and is
//! plenty for drawing arrival times.

/// A seeded SplitMix64 generator.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`; every seed, 0 included, is fine.
    pub const fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A whole number in `[0, n)`; 0 when `n` is 0. (Multiply-shift: the bias is
    /// below `n / 2^64`, nothing a traffic generator can notice.)
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A draw from the exponential distribution with mean `mean` (the gap between
    /// two arrivals of a Poisson process), rounded down to whole nanoseconds.
    pub fn exponential(&mut self, mean: f64) -> u64 {
        // 1 - u is in (0, 1], so the logarithm is finite.
        let u = 1.0 - self.next_f64();
        (-u.ln() * mean) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_first_outputs() {
        // SplitMix64's published test vector for seed 1234567.
        let mut r = SplitMix64::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn ranges() {
        let mut r = SplitMix64::new(7);
        for _ in 0..10_000 {
            let f = r.next_f64();
            assert!((0.0..1.0).contains(&f));
            assert!(r.below(10) < 10);
        }
        assert_eq!(r.below(0), 0);
        let mean: f64 = (0..100_000)
            .map(|_| r.exponential(1000.0) as f64)
            .sum::<f64>()
            / 1e5;
        assert!((mean - 1000.0).abs() < 20.0, "{mean}");
    }
}
