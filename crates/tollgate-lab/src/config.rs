//! [`LabConfig`]: the limit every scenario is run under, the fleet size and the seed.

use std::fmt;

use tollgate::Nanos;

/// The largest `--limit` the lab accepts: the scenarios offer up to twenty times
/// the limit per period to every algorithm, so the run grows with it.
pub const MAX_LIMIT: u32 = 10_000;
/// The shortest period the lab accepts: the race scenario's round trips are
/// fractions of a millisecond and must stay short next to the period.
pub const MIN_PERIOD: Nanos = Nanos::from_millis(100);
/// The longest period the lab accepts: one day.
pub const MAX_PERIOD: Nanos = Nanos::from_secs(86_400);
/// The largest fleet the lab simulates.
pub const MAX_NODES: u32 = 64;

/// What every scenario shares: the policy's limit `L` per period `W` (the bucket
/// family's burst `B` is `L`), the fleet size, and the seed of the random traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabConfig {
    limit: u32,
    period: Nanos,
    nodes: u32,
    seed: u64,
}

impl Default for LabConfig {
    /// 100 per 10 s, 4 nodes, seed 1.
    fn default() -> Self {
        LabConfig {
            limit: 100,
            period: Nanos::from_secs(10),
            nodes: 4,
            seed: 1,
        }
    }
}

/// A configuration value the lab cannot use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The limit is 0 or above [`MAX_LIMIT`].
    Limit(u32),
    /// The period is outside [`MIN_PERIOD`]`..=`[`MAX_PERIOD`].
    Period(Nanos),
    /// The fleet has 0 or more than [`MAX_NODES`] nodes.
    Nodes(u32),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Limit(l) => write!(
                f,
                "limit {l} is out of range: the lab runs limits from 1 to {MAX_LIMIT}"
            ),
            ConfigError::Period(p) => write!(
                f,
                "period {} is out of range: the lab runs periods from {} to {}",
                human_duration(*p),
                human_duration(MIN_PERIOD),
                human_duration(MAX_PERIOD)
            ),
            ConfigError::Nodes(n) => write!(
                f,
                "{n} nodes is out of range: the lab simulates fleets of 1 to {MAX_NODES} nodes"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl LabConfig {
    /// A configuration, checked against the ranges above.
    pub fn new(limit: u32, period: Nanos, nodes: u32, seed: u64) -> Result<Self, ConfigError> {
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ConfigError::Limit(limit));
        }
        if period < MIN_PERIOD || period > MAX_PERIOD {
            return Err(ConfigError::Period(period));
        }
        if nodes == 0 || nodes > MAX_NODES {
            return Err(ConfigError::Nodes(nodes));
        }
        Ok(LabConfig {
            limit,
            period,
            nodes,
            seed,
        })
    }

    /// `L`, units admitted per period (and the bucket family's burst `B`).
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// `W`, the period.
    pub const fn period(&self) -> Nanos {
        self.period
    }

    /// The fleet size of the fleet scenarios.
    pub const fn nodes(&self) -> u32 {
        self.nodes
    }

    /// The seed of the random traffic.
    pub const fn seed(&self) -> u64 {
        self.seed
    }

    /// The width of a chart's time bucket: `W / 10`.
    pub const fn bucket(&self) -> Nanos {
        Nanos::new(self.period.as_u64() / 10)
    }
}

/// A duration as people write it: the largest unit that divides it exactly
/// (`10s`, `1500ms`, `2m`), as [`tollgate::parse_duration`] reads it back.
pub fn human_duration(n: Nanos) -> String {
    let n = n.as_u64();
    const UNITS: [(u64, &str); 7] = [
        (86_400_000_000_000, "d"),
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    for (scale, unit) in UNITS {
        if n != 0 && n.is_multiple_of(scale) {
            return format!("{}{unit}", n / scale);
        }
    }
    "0s".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_round_trip() {
        for text in ["10s", "1500ms", "2m", "1h", "1d", "7ns", "3us"] {
            let n = tollgate::parse_duration(text).expect("valid");
            assert_eq!(human_duration(n), text);
        }
        assert_eq!(human_duration(Nanos::ZERO), "0s");
    }

    #[test]
    fn ranges() {
        assert!(LabConfig::new(0, Nanos::from_secs(1), 1, 0).is_err());
        assert!(LabConfig::new(MAX_LIMIT + 1, Nanos::from_secs(1), 1, 0).is_err());
        assert!(LabConfig::new(1, Nanos::from_millis(99), 1, 0).is_err());
        assert!(LabConfig::new(1, Nanos::from_secs(1), 0, 0).is_err());
        assert!(LabConfig::new(1, Nanos::from_secs(1), MAX_NODES + 1, 0).is_err());
        assert!(LabConfig::new(MAX_LIMIT, MAX_PERIOD, MAX_NODES, u64::MAX).is_ok());
    }
}
