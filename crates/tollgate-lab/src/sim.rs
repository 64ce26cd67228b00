//! Running a scenario's traffic through one algorithm: the decisions, nothing else.
//!
//! The decisions come from tollgate itself, never from a model of it:
//!
//! - [`Mode::Shared`] and [`Mode::PerNode`] ask a [`MemoryStore`] on a
//!   [`ManualClock`] set to each arrival's instant (one store, or one per node).
//! - [`Mode::NonAtomic`] calls the pure algorithm ([`State::check`]) on a copy of
//!   the key's state read at the arrival, and writes the copy back one round trip
//!   later: the read-then-write pattern, with its lost updates.
//!
//! Beside the store, every request is also decided by the pure functions on a
//! [`State`] per key, which gives the bytes each key's state takes and checks that
//! the store decided as the functions do.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::num::NonZeroU32;
use std::time::Instant;

use tollgate::{ManualClock, MemoryStore, Nanos, Policy, State};

use crate::scenario::{Mode, Traffic};

/// What happened to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Admitted or not.
    pub allowed: bool,
    /// `leaky_bucket`: how long the admitted request waits before it is served.
    pub delay: Nanos,
}

/// One algorithm's run of one scenario.
#[derive(Clone, Debug)]
pub struct Run {
    /// One outcome per arrival, in the traffic's order.
    pub outcomes: Vec<Outcome>,
    /// The most bytes one key's state took at any point: the algorithm's state
    /// (`State`'s payload) and, for `sliding_window_log`, its log on the heap.
    pub peak_state_bytes: u64,
    /// Requests the store decided otherwise than the pure functions (always 0;
    /// the tests hold the lab to it).
    pub disagreements: u64,
    /// Wall-clock nanoseconds the decisions took on this machine, this run.
    pub elapsed_ns: u64,
}

/// The store's key cap in the lab: in effect none, so no decision depends on the
/// store's housekeeping.
const NO_KEY_CAP: usize = usize::MAX >> 2;

/// The instant virtual time starts at. Windows are aligned to multiples of `W` from
/// the clock's zero, so the scenarios place their edges from there.
const START: Nanos = Nanos::ZERO;

/// Runs `traffic` through `policy`.
pub fn run(traffic: &Traffic, policy: &Policy) -> Run {
    let clients = traffic
        .arrivals
        .iter()
        .map(|a| a.client)
        .max()
        .map_or(0, |c| c + 1);
    let keys: Vec<String> = (0..clients).map(|c| format!("client-{c}")).collect();
    let started = Instant::now();
    let outcomes = match traffic.mode {
        Mode::Shared | Mode::PerNode => atomic(traffic, policy, &keys),
        Mode::NonAtomic => non_atomic(traffic, policy),
    };
    let elapsed_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let (peak_state_bytes, disagreements) = shadow(traffic, policy, &outcomes);
    Run {
        outcomes,
        peak_state_bytes,
        disagreements,
        elapsed_ns,
    }
}

fn atomic(traffic: &Traffic, policy: &Policy, keys: &[String]) -> Vec<Outcome> {
    let clock = ManualClock::new(START);
    let stores = match traffic.mode {
        Mode::PerNode => traffic
            .arrivals
            .iter()
            .map(|a| a.node as usize + 1)
            .max()
            .unwrap_or(1),
        _ => 1,
    };
    let stores: Vec<MemoryStore<ManualClock>> = (0..stores)
        .map(|_| {
            MemoryStore::builder()
                .max_keys(NO_KEY_CAP)
                .shards(1)
                .build_with_clock(clock.clone())
        })
        .collect();
    traffic
        .arrivals
        .iter()
        .map(|a| {
            clock.set(START.saturating_add(a.at));
            let store = &stores[a.node as usize % stores.len()];
            let d = store.check_one(&keys[a.client as usize], policy);
            Outcome {
                allowed: d.allowed,
                delay: d.delay,
            }
        })
        .collect()
}

/// The read-then-write pattern: each arrival reads the state, decides on its copy,
/// and an admitted one writes its copy back `round_trip` later. Writes due at or
/// before an arrival land before it reads.
fn non_atomic(traffic: &Traffic, policy: &Policy) -> Vec<Outcome> {
    let mut states: HashMap<u32, State> = HashMap::new();
    // (due, sequence) -> the write; the sequence keeps equal instants in order.
    let mut pending: BinaryHeap<Reverse<(Nanos, usize)>> = BinaryHeap::new();
    let mut writes: HashMap<usize, (u32, State)> = HashMap::new();
    let mut outcomes = Vec::with_capacity(traffic.arrivals.len());
    for (i, a) in traffic.arrivals.iter().enumerate() {
        let now = START.saturating_add(a.at);
        while let Some(&Reverse((due, seq))) = pending.peek() {
            if due > now {
                break;
            }
            pending.pop();
            if let Some((client, state)) = writes.remove(&seq) {
                states.insert(client, state);
            }
        }
        let mut copy = states
            .get(&a.client)
            .cloned()
            .unwrap_or_else(|| State::fresh(policy.algorithm()));
        let d = copy.check(policy, now, NonZeroU32::MIN, true);
        if d.allowed {
            pending.push(Reverse((now.saturating_add(a.round_trip), i)));
            writes.insert(i, (a.client, copy));
        }
        outcomes.push(Outcome {
            allowed: d.allowed,
            delay: d.delay,
        });
    }
    outcomes
}

/// Decides every request again with the pure functions, one [`State`] per (node,
/// key) as the stores hold them: returns the peak bytes of a key's state and how
/// many decisions differ from `outcomes` (the non-atomic mode is not compared: its
/// decisions are meant to differ from an atomic run's).
fn shadow(traffic: &Traffic, policy: &Policy, outcomes: &[Outcome]) -> (u64, u64) {
    let mut states: HashMap<(u32, u32), State> = HashMap::new();
    let mut peak = 0;
    let mut disagreements = 0;
    for (a, o) in traffic.arrivals.iter().zip(outcomes) {
        let node = if traffic.mode == Mode::PerNode {
            a.node
        } else {
            0
        };
        let state = states
            .entry((node, a.client))
            .or_insert_with(|| State::fresh(policy.algorithm()));
        let d = state.check(policy, START.saturating_add(a.at), NonZeroU32::MIN, true);
        if traffic.mode != Mode::NonAtomic && (d.allowed != o.allowed || d.delay != o.delay) {
            disagreements += 1;
        }
        peak = peak.max(state_bytes(state));
    }
    (peak, disagreements)
}

/// The bytes `state` takes: its payload, and the log's heap for the sliding log.
pub fn state_bytes(state: &State) -> u64 {
    let bytes = match state {
        State::Bucket(_) => std::mem::size_of::<Nanos>(),
        State::FixedWindow(s) => std::mem::size_of_val(s),
        State::SlidingWindowCounter(s) => std::mem::size_of_val(s),
        State::SlidingWindowLog(s) => std::mem::size_of_val(s) + s.heap_bytes(),
    };
    bytes as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Arrival;
    use tollgate::Algorithm;

    fn traffic(arrivals: Vec<Arrival>, mode: Mode) -> Traffic {
        Traffic {
            arrivals,
            duration: Nanos::from_secs(5),
            mode,
            groups: vec!["all"],
            group_of: vec![0],
            charted: None,
        }
    }

    fn at(ms: u64, round_trip_ms: u64) -> Arrival {
        Arrival {
            at: Nanos::from_millis(ms),
            client: 0,
            node: 0,
            round_trip: Nanos::from_millis(round_trip_ms),
        }
    }

    fn admitted(run: &Run) -> usize {
        run.outcomes.iter().filter(|o| o.allowed).count()
    }

    /// The original playground's case: 5 tokens, 32 simultaneous requests.
    #[test]
    fn reads_before_any_write_all_pass_and_later_reads_see_the_last_write() {
        let p = Policy::new(Algorithm::TokenBucket, 5, Nanos::from_secs(5)).expect("valid");
        // All 32 read at 0, before the first write lands at 1 ms.
        let wave = traffic((0..32).map(|_| at(0, 1)).collect(), Mode::NonAtomic);
        assert_eq!(admitted(&run(&wave, &p)), 32);
        // The same requests decided atomically: 5.
        let atomic = traffic(wave.arrivals.clone(), Mode::Shared);
        assert_eq!(admitted(&run(&atomic, &p)), 5);
        // Each request reads after the previous one wrote: no race, 5 admitted.
        let apart = traffic((0..32).map(|i| at(2 * i, 1)).collect(), Mode::NonAtomic);
        assert_eq!(admitted(&run(&apart, &p)), 5);
        // Writes overwrite each other: two readers of 5 tokens both write back 4,
        // so after two admissions 4 tokens remain and four more pass.
        let pairs = traffic(
            [at(0, 1), at(0, 1)]
                .into_iter()
                .chain((0..10).map(|i| at(10 + 2 * i, 1)))
                .collect(),
            Mode::NonAtomic,
        );
        assert_eq!(admitted(&run(&pairs, &p)), 6);
    }

    #[test]
    fn per_node_stores_count_separately() {
        let p = Policy::new(Algorithm::FixedWindow, 3, Nanos::from_secs(5)).expect("valid");
        let arrivals: Vec<Arrival> = (0..20)
            .map(|i| Arrival {
                node: i % 2,
                ..at(u64::from(i), 0)
            })
            .collect();
        let per_node = run(&traffic(arrivals.clone(), Mode::PerNode), &p);
        assert_eq!(admitted(&per_node), 6);
        assert_eq!(per_node.disagreements, 0);
        let shared = run(&traffic(arrivals, Mode::Shared), &p);
        assert_eq!(admitted(&shared), 3);
        assert_eq!(shared.peak_state_bytes, 24);
    }
}
