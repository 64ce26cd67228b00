//! Interleaved ratios: tollgate against governor and a bare `DashMap`, subject by
//! subject in short alternating rounds, so the shared machine's slow and fast
//! moments fall on every subject alike.
//!
//! ```text
//! cargo bench -p tollgate --bench ratios
//! ```
//!
//! `compare.rs` gives criterion's full statistics per subject, but runs each subject
//! for seconds on end, and on a shared virtual machine the background changes
//! between subjects by more than the differences measured. Here every round runs
//! every subject for a few milliseconds, in a rotating order, and the figures are
//! the medians over the rounds of each subject's time per check and of its ratio to
//! the references measured in the same round.
//!
//! Beside governor and the bare `DashMap`, a third reference, `one_miss_floor`: a
//! lock-free `hashbrown` table of 64-byte entries with the key inline and an atomic
//! counter, looked up and added to. It has no lock, no clock and no policy: the
//! least any keyed limiter built on a hash table can cost (one cache miss).
//!
//! The workload is the one of `compare.rs`: 100,000 distinct `String` keys in a
//! fixed random order, each key built into a buffer just before its check, policies
//! under which nothing is denied and no key goes fresh (see `live_policy`), on 1 and
//! 2 threads (for 2 threads, wall time per check).

use std::hash::BuildHasher;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::{Quota, RateLimiter};
use tollgate::{Algorithm, DirectLimiter, MemoryStore, Policy};

mod common;

use common::{fill_key, keys_and_order, live_policy, nz, policy};

const ROUNDS: usize = 21;
const OPS_PER_ROUND: u64 = 200_000;

/// Nanoseconds of wall time per operation for `ops` operations over `threads`.
fn time_keyed(
    threads: usize,
    ops: u64,
    order: &[u32],
    round: usize,
    op: &(dyn Fn(&String) + Sync),
) -> f64 {
    let per_thread = ops / threads as u64;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut key = String::with_capacity(32);
                let offset = (round * 7919 + t * order.len() / threads) % order.len();
                for i in 0..per_thread as usize {
                    fill_key(&mut key, order[(offset + i) % order.len()]);
                    op(&key);
                }
            });
        }
    });
    start.elapsed().as_nanos() as f64 / (per_thread * threads as u64) as f64
}

fn time_direct(ops: u64, op: &dyn Fn()) -> f64 {
    let start = Instant::now();
    for _ in 0..ops {
        op();
    }
    start.elapsed().as_nanos() as f64 / ops as f64
}

/// An entry of the one-miss floor: the key inline beside its counter, one cache line.
#[repr(align(64))]
struct InlineEntry {
    len: u8,
    bytes: [u8; 47],
    value: AtomicU64,
}

impl InlineEntry {
    fn new(key: &str) -> InlineEntry {
        let mut bytes = [0; 47];
        let len = key.len().min(47);
        bytes[..len].copy_from_slice(&key.as_bytes()[..len]);
        InlineEntry {
            len: len as u8,
            bytes,
            value: AtomicU64::new(0),
        }
    }

    fn key(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs every subject once per round in a rotating order; prints the medians of
/// each subject's ns/op and of its ratio to each reference.
fn report(title: &str, subjects: &[(&str, &dyn Fn(usize) -> f64)], references: &[&str]) {
    let n = subjects.len();
    let mut times = vec![Vec::new(); n];
    for round in 0..ROUNDS {
        let mut row = vec![0.0; n];
        for j in 0..n {
            let i = (round + j) % n;
            row[i] = (subjects[i].1)(round);
        }
        for i in 0..n {
            times[i].push(row[i]);
        }
    }
    println!("\n{title}\n");
    print!("| subject | ns/op (median) |");
    for r in references {
        print!(" ratio to {r} |");
    }
    println!();
    print!("|---|---|");
    for _ in references {
        print!("---|");
    }
    println!();
    for (i, (name, _)) in subjects.iter().enumerate() {
        print!("| {name} | {:.1} |", median(times[i].clone()));
        for r in references {
            let Some(ri) = subjects.iter().position(|(n, _)| n == r) else {
                continue;
            };
            let ratios: Vec<f64> = (0..ROUNDS).map(|k| times[i][k] / times[ri][k]).collect();
            print!(" {:.2} |", median(ratios));
        }
        println!();
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` asks benches to list themselves; nothing to list.
        return;
    }
    let (keys, order) = keys_and_order();

    // Single key.
    let high = policy(Algorithm::Gcra, 1_000_000_000, Duration::from_secs(1));
    let low = policy(Algorithm::Gcra, 1, Duration::from_secs(3600));
    let direct_high = DirectLimiter::new(high);
    let direct_low = DirectLimiter::new(low);
    let _ = direct_low.check();
    let gov_high = RateLimiter::direct(Quota::per_second(nz(1_000_000_000)));
    let gov_low = RateLimiter::direct(Quota::per_hour(nz(1)));
    let _ = gov_low.check();
    let ops = OPS_PER_ROUND * 10;
    report(
        "single key, allowed",
        &[
            ("tollgate_direct_gcra", &|_| {
                time_direct(ops, &|| {
                    black_box(direct_high.check().allowed);
                })
            }),
            ("governor_direct", &|_| {
                time_direct(ops, &|| {
                    black_box(gov_high.check().is_ok());
                })
            }),
        ],
        &["governor_direct"],
    );
    report(
        "single key, denied",
        &[
            ("tollgate_direct_gcra", &|_| {
                time_direct(ops, &|| {
                    black_box(direct_low.check().allowed);
                })
            }),
            ("governor_direct", &|_| {
                time_direct(ops, &|| {
                    black_box(gov_low.check().is_ok());
                })
            }),
        ],
        &["governor_direct"],
    );

    // Keyed.
    let stores: Vec<(Algorithm, Policy, MemoryStore)> = Algorithm::ALL
        .into_iter()
        .map(|a| {
            let p = live_policy(a);
            let store = MemoryStore::new();
            for k in &keys {
                store.check_one(k, &p);
            }
            (a, p, store)
        })
        .collect();
    let gov = RateLimiter::keyed(Quota::per_second(nz(1_000_000_000)));
    for k in &keys {
        let _ = gov.check_key(k);
    }
    // The least any hash table can cost: one lock-free lookup in a table of 64-byte
    // entries with the key inline, and an atomic add. No lock, no clock, no policy.
    let hasher = foldhash::fast::RandomState::default();
    let mut one_miss: hashbrown::HashTable<InlineEntry> = hashbrown::HashTable::new();
    for k in &keys {
        let e = InlineEntry::new(k);
        one_miss.insert_unique(hasher.hash_one(k.as_bytes()), e, |e| {
            hasher.hash_one(e.key())
        });
    }
    let floor: DashMap<String, AtomicU64> = keys
        .iter()
        .map(|k| (k.clone(), AtomicU64::new(0)))
        .collect();

    for threads in [1usize, 2] {
        let names: Vec<String> = stores
            .iter()
            .map(|(a, _, _)| format!("tollgate_{}", a.name()))
            .collect();
        let tollgate_ops: Vec<Box<dyn Fn(usize) -> f64 + '_>> = stores
            .iter()
            .map(|(_, p, store)| {
                let order = &order;
                Box::new(move |round| {
                    time_keyed(threads, OPS_PER_ROUND, order, round, &|k: &String| {
                        black_box(store.check_one(k, p).allowed);
                    })
                }) as Box<dyn Fn(usize) -> f64>
            })
            .collect();
        let gov_op = |round| {
            time_keyed(threads, OPS_PER_ROUND, &order, round, &|k: &String| {
                black_box(gov.check_key(k).is_ok());
            })
        };
        let floor_op = |round| {
            time_keyed(threads, OPS_PER_ROUND, &order, round, &|k: &String| {
                if let Some(v) = floor.get(k.as_str()) {
                    black_box(v.fetch_add(1, Ordering::AcqRel));
                }
            })
        };
        let mut subjects: Vec<(&str, &dyn Fn(usize) -> f64)> = names
            .iter()
            .zip(&tollgate_ops)
            .map(|(n, f)| (n.as_str(), &**f as &dyn Fn(usize) -> f64))
            .collect();
        let one_miss_op = |round| {
            time_keyed(threads, OPS_PER_ROUND, &order, round, &|k: &String| {
                let hash = hasher.hash_one(k.as_bytes());
                if let Some(e) = one_miss.find(hash, |e| e.key() == k.as_bytes()) {
                    black_box(e.value.fetch_add(1, Ordering::AcqRel));
                }
            })
        };
        subjects.push(("governor_check_key", &gov_op));
        subjects.push(("dashmap_floor", &floor_op));
        subjects.push(("one_miss_floor", &one_miss_op));
        report(
            &format!("100,000 String keys, random order, {threads} thread(s)"),
            &subjects,
            &["governor_check_key", "dashmap_floor", "one_miss_floor"],
        );
    }
}
