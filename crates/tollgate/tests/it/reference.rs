//! Reference models of the six algorithms, written straight from `ALGORITHMS.md` and
//! sharing no code with the library: slow, plain, and meant to be obviously right.
//!
//! Each model keeps the state the contract talks about in the most literal shape:
//!
//! - `fixed_window`: a map window index -> units counted in it.
//! - `sliding_window_log`: a plain `Vec` of every admitted `(ts, c)`, filtered anew at
//!   each request.
//! - `sliding_window_counter`: a map window index -> count; `retry_after` is found by
//!   trying every later nanosecond until the admit test holds (it holds at the
//!   latest two windows on, so the search is bounded by `2W`; tests use small `W`).
//! - `token_bucket`: the number of tokens as an exact rational, kept as its numerator
//!   over `T`, refilled by the elapsed time and capped at `B`.
//! - `gcra`: the theoretical arrival time, `None` while fresh.
//! - `leaky_bucket`: an explicit queue, one entry per admitted unit holding the
//!   instant its `T`-long turn at the outlet ends; the backlog at `t` is the outlet
//!   time still owed to the queue, and a request proceeds once the backlog ahead of
//!   it has drained.
//!
//! All arithmetic is in `u128`/`i128`; instants are plain integers of nanoseconds.
//! `T` is computed here as `ceil(W / L)`, not read from the policy, so the rounding
//! is checked too.

use std::collections::BTreeMap;

use tollgate::{Algorithm, Decision, DenyReason, Nanos, Policy};

fn nanos(n: u128) -> Nanos {
    Nanos::new(u64::try_from(n).expect("instant fits in u64"))
}

fn admitted(limit: u128, remaining: u128, reset_after: u128, delay: u128) -> Decision {
    Decision {
        allowed: true,
        limit: u32::try_from(limit).expect("limit fits in u32"),
        remaining: u64::try_from(remaining).expect("remaining fits in u64"),
        reset_after: nanos(reset_after),
        retry_after: None,
        delay: nanos(delay),
        reason: None,
    }
}

/// A denial; `retry_after: None` means the cost can never be admitted.
fn denied(limit: u128, remaining: u128, reset_after: u128, retry_after: Option<u128>) -> Decision {
    Decision {
        allowed: false,
        limit: u32::try_from(limit).expect("limit fits in u32"),
        remaining: u64::try_from(remaining).expect("remaining fits in u64"),
        reset_after: nanos(reset_after),
        retry_after: retry_after.map(nanos),
        delay: Nanos::ZERO,
        reason: Some(match retry_after {
            Some(_) => DenyReason::Limited,
            None => DenyReason::CostExceedsCapacity,
        }),
    }
}

/// `a - b` if positive, else 0.
fn minus(a: u128, b: u128) -> u128 {
    a.saturating_sub(b)
}

/// `fixed_window`: a count per clock-aligned window.
#[derive(Clone, Debug)]
pub struct FixedWindow {
    l: u128,
    w: u128,
    counts: BTreeMap<u128, u128>,
    /// The latest instant a request was admitted at: time never runs back past it.
    last: u128,
}

impl FixedWindow {
    fn check(&mut self, now: u128, c: u128, consume: bool) -> Decision {
        let t = now.max(self.last);
        let k = t / self.w;
        let count = self.counts.get(&k).copied().unwrap_or(0);
        let to_end = (k + 1) * self.w - t;
        if c > self.l {
            return denied(self.l, self.l - count, to_end, None);
        }
        if count + c <= self.l {
            if consume {
                self.counts.insert(k, count + c);
                self.last = t;
            }
            admitted(self.l, self.l - (count + c), to_end, 0)
        } else {
            denied(self.l, self.l - count, to_end, Some(to_end))
        }
    }
}

/// `sliding_window_log`: every admitted request, kept for ever and filtered each time.
#[derive(Clone, Debug)]
pub struct SlidingWindowLog {
    l: u128,
    w: u128,
    log: Vec<(u128, u128)>,
    last: u128,
}

impl SlidingWindowLog {
    fn check(&mut self, now: u128, c: u128, consume: bool) -> Decision {
        let t = now.max(self.last);
        // Live iff ts > t - W, i.e. ts + W > t.
        let live: Vec<(u128, u128)> = self
            .log
            .iter()
            .copied()
            .filter(|&(ts, _)| ts + self.w > t)
            .collect();
        let used: u128 = live.iter().map(|&(_, n)| n).sum();
        let newest_reset = self
            .log
            .iter()
            .map(|&(ts, _)| minus(ts + self.w, t))
            .max()
            .unwrap_or(0);
        if c > self.l {
            return denied(self.l, minus(self.l, used), newest_reset, None);
        }
        if used + c <= self.l {
            if consume {
                self.log.push((t, c));
                self.last = t;
            }
            // The newest entry is now this one: ts + W - t = W.
            admitted(self.l, self.l - (used + c), self.w, 0)
        } else {
            let need = used + c - self.l;
            let mut running = 0;
            let mut retry = None;
            for &(ts, n) in &live {
                running += n;
                if running >= need {
                    retry = Some(ts + self.w - t);
                    break;
                }
            }
            let retry = retry.expect("the live entries sum to used >= need");
            denied(self.l, minus(self.l, used), newest_reset, Some(retry))
        }
    }
}

/// `sliding_window_counter`: a count per window, weighted over two windows.
#[derive(Clone, Debug)]
pub struct SlidingWindowCounter {
    l: u128,
    w: u128,
    counts: BTreeMap<u128, u128>,
    last: u128,
}

impl SlidingWindowCounter {
    fn count(&self, k: Option<u128>) -> u128 {
        k.and_then(|k| self.counts.get(&k).copied()).unwrap_or(0)
    }

    /// `(k, e, prev, curr)` at `t`.
    fn at(&self, t: u128) -> (u128, u128, u128, u128) {
        let k = t / self.w;
        (
            k,
            t - k * self.w,
            self.count(k.checked_sub(1)),
            self.count(Some(k)),
        )
    }

    /// The admit test at `t` for a request of cost `c`, on today's counts.
    fn fits(&self, t: u128, c: u128) -> bool {
        let (_, e, prev, curr) = self.at(t);
        prev * (self.w - e) + (curr + c) * self.w <= self.l * self.w
    }

    /// `(remaining, reset_after)` with `curr` as given.
    fn shows(&self, t: u128, curr: u128) -> (u128, u128) {
        let (k, e, prev, _) = self.at(t);
        let remaining = minus(self.l * self.w, prev * (self.w - e) + curr * self.w) / self.w;
        let reset = if curr > 0 {
            (k + 2) * self.w - t
        } else if prev > 0 {
            (k + 1) * self.w - t
        } else {
            0
        };
        (remaining, reset)
    }

    fn check(&mut self, now: u128, c: u128, consume: bool) -> Decision {
        let t = now.max(self.last);
        let (k, _, _, curr) = self.at(t);
        if c > self.l {
            let (remaining, reset) = self.shows(t, curr);
            return denied(self.l, remaining, reset, None);
        }
        if self.fits(t, c) {
            if consume {
                self.counts.insert(k, curr + c);
                self.last = t;
            }
            let (remaining, reset) = self.shows(t, curr + c);
            admitted(self.l, remaining, reset, 0)
        } else {
            // Two windows on, nothing weighs any more and c <= L fits.
            let retry = (0..=2 * self.w)
                .find(|&d| self.fits(t + d, c))
                .expect("admitted within two windows");
            let (remaining, reset) = self.shows(t, curr);
            denied(self.l, remaining, reset, Some(retry))
        }
    }
}

/// `token_bucket`: tokens as the exact rational `scaled / T`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    b: u128,
    t_emit: u128,
    /// `(tokens * T, instant)` of the last admission; `None` while fresh (full).
    level: Option<(u128, u128)>,
}

impl TokenBucket {
    /// `tokens(t) * T`. Only asked about instants at or after the last admission.
    fn scaled_tokens(&self, t: u128) -> u128 {
        let full = self.b * self.t_emit;
        match self.level {
            None => full,
            // tokens(t) = min(B, tokens(t0) + (t - t0) / T), times T.
            Some((scaled, t0)) => full.min(scaled + minus(t, t0)),
        }
    }

    fn check(&mut self, now: u128, c: u128, consume: bool) -> Decision {
        let full = self.b * self.t_emit;
        let have = self.scaled_tokens(now);
        if c > self.b {
            return denied(self.b, have / self.t_emit, full - have, None);
        }
        let want = c * self.t_emit;
        if have >= want {
            let left = have - want;
            if consume {
                self.level = Some((left, now));
            }
            admitted(self.b, left / self.t_emit, full - left, 0)
        } else {
            // (c - tokens) * T, already a whole number of nanoseconds.
            denied(self.b, have / self.t_emit, full - have, Some(want - have))
        }
    }
}

/// `gcra`: the theoretical arrival time.
#[derive(Clone, Debug)]
pub struct Gcra {
    b: u128,
    t_emit: u128,
    tat: Option<u128>,
}

impl Gcra {
    fn check(&mut self, now: u128, c: u128, consume: bool) -> Decision {
        let t = now as i128;
        let t_emit = self.t_emit as i128;
        let tau = (self.b * self.t_emit) as i128;
        let tat = self.tat.map_or(t, |x| x as i128);
        // With TAT at least t.
        let shows = |tat: i128| {
            let ahead = tat.max(t) - t;
            (((tau - ahead) / t_emit).max(0) as u128, ahead as u128)
        };
        if c > self.b {
            let (remaining, reset) = shows(tat);
            return denied(self.b, remaining, reset, None);
        }
        let start = tat.max(t);
        let new_tat = start + c as i128 * t_emit;
        if new_tat - t <= tau {
            if consume {
                self.tat = Some(new_tat as u128);
            }
            let (remaining, reset) = shows(new_tat);
            admitted(self.b, remaining, reset, 0)
        } else {
            let (remaining, reset) = shows(tat);
            denied(self.b, remaining, reset, Some((new_tat - tau - t) as u128))
        }
    }
}

/// `leaky_bucket`: a FIFO queue served at one unit per `T`.
#[derive(Clone, Debug)]
pub struct LeakyBucket {
    b: u128,
    t_emit: u128,
    /// For each admitted unit, the instant its turn at the outlet ends. Each unit's
    /// turn lasts `T` and begins when the unit before it has left (or when its
    /// request arrives, if the queue was empty).
    departures: Vec<u128>,
}

impl LeakyBucket {
    /// The outlet time still owed at `t` to the units in the queue: a unit whose turn
    /// ends at `d` owes `min(T, d - t)` (0 if it has left). Requests arrive in time
    /// order, so the queue is served without a gap from `t` on and this is also how
    /// long a newcomer waits.
    fn backlog(&self, t: u128) -> u128 {
        self.departures
            .iter()
            .map(|&d| minus(d, t).min(self.t_emit))
            .sum()
    }

    fn check(&mut self, now: u128, c: u128, consume: bool) -> Decision {
        let cap = self.b * self.t_emit;
        let wait = self.backlog(now);
        let shows = |owed: u128| (minus(cap, owed) / self.t_emit, owed);
        if c > self.b {
            let (remaining, reset) = shows(wait);
            return denied(self.b, remaining, reset, None);
        }
        let mine = c * self.t_emit;
        if wait + mine <= cap {
            if consume {
                self.departures.retain(|&d| d > now);
                let start = now + wait;
                for unit in 1..=c {
                    self.departures.push(start + unit * self.t_emit);
                }
            }
            let (remaining, reset) = shows(wait + mine);
            admitted(self.b, remaining, reset, wait)
        } else {
            let (remaining, reset) = shows(wait);
            denied(self.b, remaining, reset, Some(wait + mine - cap))
        }
    }
}

/// One reference model, for whichever algorithm a policy names.
#[derive(Clone, Debug)]
pub enum Model {
    FixedWindow(FixedWindow),
    SlidingWindowLog(SlidingWindowLog),
    SlidingWindowCounter(SlidingWindowCounter),
    TokenBucket(TokenBucket),
    Gcra(Gcra),
    LeakyBucket(LeakyBucket),
}

impl Model {
    /// A fresh model of `policy` (its `L`, `W` and `B`; `T` is derived here).
    pub fn new(policy: &Policy) -> Model {
        let l = u128::from(policy.limit());
        let w = u128::from(policy.period().as_u64());
        let b = u128::from(policy.burst());
        let t_emit = w.div_ceil(l);
        match policy.algorithm() {
            Algorithm::FixedWindow => Model::FixedWindow(FixedWindow {
                l,
                w,
                counts: BTreeMap::new(),
                last: 0,
            }),
            Algorithm::SlidingWindowLog => Model::SlidingWindowLog(SlidingWindowLog {
                l,
                w,
                log: Vec::new(),
                last: 0,
            }),
            Algorithm::SlidingWindowCounter => Model::SlidingWindowCounter(SlidingWindowCounter {
                l,
                w,
                counts: BTreeMap::new(),
                last: 0,
            }),
            Algorithm::TokenBucket => Model::TokenBucket(TokenBucket {
                b,
                t_emit,
                level: None,
            }),
            Algorithm::Gcra => Model::Gcra(Gcra {
                b,
                t_emit,
                tat: None,
            }),
            Algorithm::LeakyBucket => Model::LeakyBucket(LeakyBucket {
                b,
                t_emit,
                departures: Vec::new(),
            }),
        }
    }

    /// The decision for a request of `cost` at `now`; it is recorded only when
    /// `consume` is true and it is admitted.
    pub fn check(&mut self, now: u64, cost: u32, consume: bool) -> Decision {
        let (t, c) = (u128::from(now), u128::from(cost));
        match self {
            Model::FixedWindow(m) => m.check(t, c, consume),
            Model::SlidingWindowLog(m) => m.check(t, c, consume),
            Model::SlidingWindowCounter(m) => m.check(t, c, consume),
            Model::TokenBucket(m) => m.check(t, c, consume),
            Model::Gcra(m) => m.check(t, c, consume),
            Model::LeakyBucket(m) => m.check(t, c, consume),
        }
    }

    /// What the state shows at `now` with nothing consumed: `(remaining, reset_after)`.
    /// That is what any decision that consumes nothing reports, e.g. the denial of a
    /// cost no policy of this size could ever admit.
    pub fn view(&self, now: u64) -> (u64, Nanos) {
        let d = self.clone().check(now, u32::MAX, false);
        (d.remaining, d.reset_after)
    }
}
