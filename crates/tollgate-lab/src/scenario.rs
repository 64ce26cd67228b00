//! [`Scenario`]: the traffic the lab offers every algorithm, and how it reaches the
//! limiter ([`Mode`]).
//!
//! Every scenario is deterministic: its arrivals are a function of the
//! [`LabConfig`] alone (the random ones come from [`SplitMix64`] seeded from the
//! configuration's seed and the scenario), so running one scenario on its own gives
//! the same figures as running it among all the others.

use tollgate::Nanos;

use crate::config::LabConfig;
use crate::rng::SplitMix64;

/// The scenarios, in the order the report shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// Evenly spaced requests at twice the limit.
    SteadyOverload,
    /// `3L` requests at one instant, then silence.
    Burst,
    /// `L` requests just before a window edge and `L` just after it.
    BoundaryAttack,
    /// Poisson arrivals at 0.9 times the limit.
    Poisson90,
    /// Poisson arrivals at the limit.
    Poisson100,
    /// Poisson arrivals at 1.5 times the limit.
    Poisson150,
    /// Five times the limit for 10% of the time, nothing otherwise.
    OnOff,
    /// Nine clients at half the limit each and one at five times it, each client
    /// with its own key.
    Hog,
    /// `N` nodes behind a load balancer, each with its own in-memory limiter.
    FleetNaive,
    /// The same fleet sharing one store.
    FleetShared,
    /// Waves of simultaneous requests decided by reading the state, deciding on the
    /// copy and writing it back (the original playground's Redis GET / SET).
    RaceNonAtomic,
    /// The same waves decided atomically, as tollgate's stores decide.
    RaceAtomic,
}

/// How a scenario's requests reach the limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One store decides every request atomically.
    Shared,
    /// Each node has its own store; a request is decided by its node's.
    PerNode,
    /// One state, read and written back non-atomically: each request reads the
    /// state at its arrival, decides on its own copy, and (when admitted) writes
    /// that copy back one round trip later, whatever was written meanwhile.
    NonAtomic,
}

/// One request offered to the limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// When it arrives, from the start of the scenario.
    pub at: Nanos,
    /// The client (the key is `client-<n>`).
    pub client: u32,
    /// The node that decides it (0 unless the scenario has a fleet).
    pub node: u32,
    /// [`Mode::NonAtomic`] only: the time between reading the state and writing it
    /// back (a round trip to the shared store).
    pub round_trip: Nanos,
}

/// A scenario's requests, ready to run.
#[derive(Clone, Debug)]
pub struct Traffic {
    /// The requests, in order of arrival.
    pub arrivals: Vec<Arrival>,
    /// How long the scenario lasts (the charts' time axis covers at least this).
    pub duration: Nanos,
    /// How the requests reach the limiter.
    pub mode: Mode,
    /// The names of the client groups whose figures the report gives separately,
    /// indexed by [`Traffic::group_of`]; one group when the scenario has no groups.
    pub groups: Vec<&'static str>,
    /// The group of each client, indexed by client; a client past the end is in
    /// group 0.
    pub group_of: Vec<usize>,
    /// The client the charts follow; `None` charts every client together.
    pub charted: Option<u32>,
}

impl Scenario {
    /// Every scenario, in the report's order.
    pub const ALL: [Scenario; 12] = [
        Scenario::SteadyOverload,
        Scenario::Burst,
        Scenario::BoundaryAttack,
        Scenario::Poisson90,
        Scenario::Poisson100,
        Scenario::Poisson150,
        Scenario::OnOff,
        Scenario::Hog,
        Scenario::FleetNaive,
        Scenario::FleetShared,
        Scenario::RaceNonAtomic,
        Scenario::RaceAtomic,
    ];

    /// The name on the command line (`--scenario`) and of the chart's file.
    pub const fn name(self) -> &'static str {
        match self {
            Scenario::SteadyOverload => "steady_overload",
            Scenario::Burst => "burst",
            Scenario::BoundaryAttack => "boundary_attack",
            Scenario::Poisson90 => "poisson_0.9x",
            Scenario::Poisson100 => "poisson_1x",
            Scenario::Poisson150 => "poisson_1.5x",
            Scenario::OnOff => "on_off",
            Scenario::Hog => "hog",
            Scenario::FleetNaive => "fleet_naive",
            Scenario::FleetShared => "fleet_shared",
            Scenario::RaceNonAtomic => "race_nonatomic",
            Scenario::RaceAtomic => "race_atomic",
        }
    }

    /// The scenario called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// A title for the chart and the report.
    pub const fn title(self) -> &'static str {
        match self {
            Scenario::SteadyOverload => "Steady overload at 2x the limit",
            Scenario::Burst => "A burst of 3L at once, then silence",
            Scenario::BoundaryAttack => "The boundary attack: L before a window edge, L after",
            Scenario::Poisson90 => "Poisson arrivals at 0.9x the limit",
            Scenario::Poisson100 => "Poisson arrivals at 1x the limit",
            Scenario::Poisson150 => "Poisson arrivals at 1.5x the limit",
            Scenario::OnOff => "On/off: 5x the limit 10% of the time",
            Scenario::Hog => "Ten clients, one of them a hog (one key each)",
            Scenario::FleetNaive => "A fleet, each node with its own in-memory limiter",
            Scenario::FleetShared => "A fleet sharing one store",
            Scenario::RaceNonAtomic => "Simultaneous requests, non-atomic read-then-write",
            Scenario::RaceAtomic => "Simultaneous requests, atomic decisions",
        }
    }

    /// What the traffic is, and what to look for; `L`, `W` and `N` as configured.
    pub fn description(self, config: &LabConfig) -> String {
        let l = config.limit();
        let w = crate::config::human_duration(config.period());
        let n = config.nodes();
        match self {
            Scenario::SteadyOverload => format!(
                "One client sends {} requests per {w}, evenly spaced, for 6 periods. \
                 Every algorithm should hold it near {l} per {w}; the bucket family starts \
                 with a full bucket, so it admits B = {l} more at the start.",
                2 * l
            ),
            Scenario::Burst => format!(
                "{} requests arrive at one instant half a period in, then nothing for 2.5 \
                 periods. Each algorithm admits {l}; leaky_bucket admits them too but \
                 spreads them out, one every T.",
                3 * l
            ),
            Scenario::BoundaryAttack => format!(
                "{l} requests arrive just before the edge of a fixed window (at 2W minus \
                 W/10000) and {l} at the edge. fixed_window admits all {}: twice the \
                 limit within a moment. Every other algorithm admits {l}.",
                2 * l
            ),
            Scenario::Poisson90 => format!(
                "Random (Poisson) arrivals averaging 0.9 x {l} per {w}, for 30 periods. \
                 Below the limit on average, so a good limiter refuses little; random \
                 clumps still meet it."
            ),
            Scenario::Poisson100 => format!(
                "Random (Poisson) arrivals averaging {l} per {w}, for 30 periods: exactly \
                 at the limit. sliding_window_counter, an approximation, should admit \
                 within a few percent of the exact sliding_window_log."
            ),
            Scenario::Poisson150 => format!(
                "Random (Poisson) arrivals averaging 1.5 x {l} per {w}, for 30 periods: \
                 every algorithm should admit close to {l} per {w}."
            ),
            Scenario::OnOff => format!(
                "Every 5 periods, half a period of random arrivals at 5 x {l} per {w} \
                 (2.5L requests), straddling a window edge; silence otherwise; 30 \
                 periods. fixed_window admits L on each side of the edge; the bucket \
                 family admits its burst plus what refills while the burst lasts."
            ),
            Scenario::Hog => format!(
                "Nine clients send random arrivals at half the limit each, one client (the \
                 hog) at 5 x {l} per {w}; each client has its own key with the limit {l} \
                 per {w}; 10 periods. The charts follow the hog's key; the tables give \
                 the others' share too: per-client keys hold the hog without touching \
                 the others."
            ),
            Scenario::FleetNaive => format!(
                "{n} nodes behind a round-robin load balancer, one client sending {} \
                 requests per {w} in all. Each node has its own in-memory limiter with \
                 the limit {l} per {w}, so the client gets up to {n} x {l}.",
                2 * l * n
            ),
            Scenario::FleetShared => format!(
                "The same {n} nodes and traffic as fleet_naive, deciding in one shared \
                 store (as with tollgate-redis): the client gets {l} per {w}, however \
                 many nodes there are."
            ),
            Scenario::RaceNonAtomic => format!(
                "Every W/10, a wave of {} requests arrives within 1 ms. Each request reads \
                 the key's state, decides on its copy with tollgate's own algorithm, and \
                 writes the copy back 0.5 to 1.5 ms later (a round trip), as the original \
                 playground did with Redis GET and SET: requests that read before the \
                 others wrote are all admitted, and their writes overwrite each other. \
                 The waves offer {} requests per {w} against a limit of {l}; 5 periods.",
                wave_size(config),
                10 * wave_size(config)
            ),
            Scenario::RaceAtomic => format!(
                "The same waves as race_nonatomic, each request decided atomically (read, \
                 decide and write as one step, as tollgate's memory store and its Redis \
                 function do): never more than the algorithm allows, {l} per {w} for the \
                 exact ones."
            ),
        }
    }

    /// Scenarios that share their traffic share this number, so their seeds agree.
    const fn traffic_id(self) -> u64 {
        match self {
            Scenario::SteadyOverload => 1,
            Scenario::Burst => 2,
            Scenario::BoundaryAttack => 3,
            Scenario::Poisson90 => 4,
            Scenario::Poisson100 => 5,
            Scenario::Poisson150 => 6,
            Scenario::OnOff => 7,
            Scenario::Hog => 8,
            Scenario::FleetNaive | Scenario::FleetShared => 9,
            Scenario::RaceNonAtomic | Scenario::RaceAtomic => 10,
        }
    }

    /// True for the scenarios whose point is that the limit does not hold: the
    /// naive fleet and the non-atomic race. Everywhere else the exact algorithms
    /// never exceed `L` in any window.
    pub const fn breaks_the_limit(self) -> bool {
        matches!(self, Scenario::FleetNaive | Scenario::RaceNonAtomic)
    }

    /// The scenario's requests under `config`.
    pub fn traffic(self, config: &LabConfig) -> Traffic {
        let mut rng = SplitMix64::new(
            config
                .seed()
                .wrapping_add(self.traffic_id().wrapping_mul(0xA076_1D64_78BD_642F)),
        );
        let l = u64::from(config.limit());
        let w = config.period().as_u64();
        let one = |arrivals: Vec<Arrival>, periods: u64, mode: Mode| Traffic {
            arrivals,
            duration: Nanos::new(periods * w),
            mode,
            groups: vec!["all"],
            group_of: vec![0],
            charted: None,
        };
        match self {
            Scenario::SteadyOverload => one(even(2 * l * 6, 2 * l, w), 6, Mode::Shared),
            Scenario::Burst => one(
                (0..3 * l).map(|_| arrival(w / 2, 0, 0)).collect(),
                3,
                Mode::Shared,
            ),
            Scenario::BoundaryAttack => {
                let edge = 2 * w;
                let before = edge - (w / 10_000).max(1);
                let arrivals = (0..l)
                    .map(|_| arrival(before, 0, 0))
                    .chain((0..l).map(|_| arrival(edge, 0, 0)))
                    .collect();
                one(arrivals, 4, Mode::Shared)
            }
            Scenario::Poisson90 => {
                one(poisson(&mut rng, 0, 30 * w, 0.9, l, w, 0), 30, Mode::Shared)
            }
            Scenario::Poisson100 => {
                one(poisson(&mut rng, 0, 30 * w, 1.0, l, w, 0), 30, Mode::Shared)
            }
            Scenario::Poisson150 => {
                one(poisson(&mut rng, 0, 30 * w, 1.5, l, w, 0), 30, Mode::Shared)
            }
            Scenario::OnOff => {
                let mut arrivals = Vec::new();
                for cycle in 0..6 {
                    let start = cycle * 5 * w + 3 * w / 4;
                    arrivals.extend(poisson(&mut rng, start, start + w / 2, 5.0, l, w, 0));
                }
                one(arrivals, 30, Mode::Shared)
            }
            Scenario::Hog => {
                let mut arrivals = Vec::new();
                for client in 0..10 {
                    let rate = if client == HOG { 5.0 } else { 0.5 };
                    arrivals.extend(poisson(&mut rng, 0, 10 * w, rate, l, w, client));
                }
                arrivals.sort_by_key(|a| (a.at, a.client));
                Traffic {
                    arrivals,
                    duration: Nanos::new(10 * w),
                    mode: Mode::Shared,
                    groups: vec!["others", "hog"],
                    group_of: (0..10).map(|c| usize::from(c == HOG)).collect(),
                    charted: Some(HOG),
                }
            }
            Scenario::FleetNaive | Scenario::FleetShared => {
                let nodes = u64::from(config.nodes());
                let mode = if self == Scenario::FleetNaive {
                    Mode::PerNode
                } else {
                    Mode::Shared
                };
                let mut arrivals = even(2 * l * nodes * 6, 2 * l * nodes, w);
                for (i, a) in arrivals.iter_mut().enumerate() {
                    a.node = (i as u64 % nodes) as u32;
                }
                one(arrivals, 6, mode)
            }
            Scenario::RaceNonAtomic | Scenario::RaceAtomic => {
                let mode = if self == Scenario::RaceNonAtomic {
                    Mode::NonAtomic
                } else {
                    Mode::Shared
                };
                let ms = 1_000_000;
                let mut arrivals = Vec::new();
                for wave in 0..50 {
                    let start = wave * w / 10;
                    for _ in 0..wave_size(config) {
                        let mut a = arrival(start + rng.below(ms), 0, 0);
                        a.round_trip = Nanos::new(ms / 2 + rng.below(ms));
                        arrivals.push(a);
                    }
                }
                arrivals.sort_by_key(|a| a.at);
                one(arrivals, 5, mode)
            }
        }
    }
}

/// The hog's client number in [`Scenario::Hog`].
pub const HOG: u32 = 9;

/// Requests per wave in the race scenarios: `L / 4`, at least 2.
fn wave_size(config: &LabConfig) -> u64 {
    (u64::from(config.limit()) / 4).max(2)
}

fn arrival(at: u64, client: u32, node: u32) -> Arrival {
    Arrival {
        at: Nanos::new(at),
        client,
        node,
        round_trip: Nanos::ZERO,
    }
}

/// `count` requests from client 0 at node 0, evenly spaced at `per_period` per `w`,
/// from 0.
fn even(count: u64, per_period: u64, w: u64) -> Vec<Arrival> {
    (0..count)
        .map(|i| {
            let at = u128::from(i) * u128::from(w) / u128::from(per_period);
            // i < 20 L periods, so i * W / rate < 20 W periods: fits u64.
            arrival(at as u64, 0, 0)
        })
        .collect()
}

/// Poisson arrivals for `client` in `[from, to)` at `rate` times `l` per `w`.
fn poisson(
    rng: &mut SplitMix64,
    from: u64,
    to: u64,
    rate: f64,
    l: u64,
    w: u64,
    client: u32,
) -> Vec<Arrival> {
    let mean_gap = w as f64 / (rate * l as f64);
    let mut out = Vec::new();
    let mut t = from;
    loop {
        t = t.saturating_add(rng.exponential(mean_gap));
        if t >= to {
            return out;
        }
        out.push(arrival(t, client, 0));
    }
}
