//! [`Divisor`]: division by a policy's fixed `T` or `W` without a divide instruction.
//!
//! A check divides by the same `T` (or `W`) every time, and a 64-bit divide costs
//! about as much as the rest of a bucket check. The divisor is turned once into a
//! multiplier and a shift (Granlund and Montgomery's method):
//!
//! with `L = ceil(log2 d)` and `m = ceil(2^(63+L) / d)`, for every `n < 2^63`,
//! `floor(n / d) = floor(n * m / 2^(63+L))`.
//!
//! Why: `m = (2^(63+L) + e) / d` with `0 <= e < d`, so `n*m / 2^(63+L) = n/d + err`
//! with `err = e*n / (d * 2^(63+L)) < 2^-L <= 1/d`; writing `n/d = q + r/d` with
//! `r <= d - 1`, the sum stays below `q + 1`. And `m < 2^64`: `d > 2^(L-1)` gives
//! `2^(63+L)/d < 2^64` (for a power of two, `m = 2^63` exactly), so `n*m` is one
//! 64x64->128 multiplication. Every instant and duration a check divides is at most
//! `2^63` (`MAX_PERIOD` keeps them there); larger dividends fall back to `/`.

/// A `u64` divisor prepared for fast division of dividends below `2^63`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Divisor {
    d: u64,
    m: u64,
    /// `L - 1` for `d >= 2` (the shift is `64 + L - 1`: take the high half of the
    /// product, then shift by this); unused for `d = 1`.
    shift: u32,
}

impl Divisor {
    /// Prepares `d` (at least 1; 0 is taken as 1, which no caller passes).
    pub(crate) const fn new(d: u64) -> Divisor {
        let d = if d == 0 { 1 } else { d };
        if d == 1 {
            return Divisor { d, m: 0, shift: 0 };
        }
        // L = ceil(log2 d), at least 1 here.
        let l = 64 - (d - 1).leading_zeros();
        // ceil(2^(63+L) / d), computed in u128 (63 + L <= 127).
        let m = (1u128 << (63 + l)).div_ceil(d as u128);
        Divisor {
            d,
            m: m as u64,
            shift: l - 1,
        }
    }

    /// `floor(n / d)`.
    #[inline]
    pub(crate) const fn div(self, n: u64) -> u64 {
        if self.d == 1 {
            n
        } else if n < 1 << 63 {
            let high = ((n as u128 * self.m as u128) >> 64) as u64;
            high >> self.shift
        } else {
            n / self.d
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_plain_division() {
        let divisors = [
            1u64,
            2,
            3,
            7,
            10,
            1_000,
            1_000_000_007,
            (1 << 32) - 1,
            1 << 32,
            (1 << 32) + 1,
            3_600_000_000_000,
            (1 << 62) - 1,
            1 << 62,
            u64::MAX,
        ];
        let mut x: u64 = 0x243f_6a88_85a3_08d3;
        for &d in &divisors {
            let div = Divisor::new(d);
            let mut dividends = vec![
                0,
                1,
                d - 1,
                d,
                d.saturating_add(1),
                (1 << 63) - 1,
                1 << 63,
                u64::MAX,
            ];
            for _ in 0..2_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                dividends.push(x >> (x % 64));
                dividends.push((x % 4).wrapping_mul(d).wrapping_add(x % 3).wrapping_sub(1));
            }
            for n in dividends {
                assert_eq!(div.div(n), n / d, "{n} / {d}");
            }
        }
    }
}
