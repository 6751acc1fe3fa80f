//! A deterministic simulation of a fleet (no network, no real hosts): many agents pass over
//! the same sources on jittered schedules while members die, restart and HBR notices it only
//! after the heartbeat timeout. It applies the same rules as the agent — rendezvous owner over
//! the members HBR shows as live at the moment a host reads them, describe before add, adds
//! that land some seconds after the describe — and counts what HBR would see: duplicate
//! registrations, sources left unregistered, and requests per minute. `examples/fleet-sim.rs`
//! runs it at 1,000 hosts × 10,000 sources; `docs/fleet.md` quotes its numbers.
//!
//! Strict mode models the etcd lock: a host takes the lock of each source it owns before it
//! describes, holds it until its pass ends, and skips sources locked by another host.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::score;

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub hosts: usize,
    pub sources: usize,
    /// Simulated time.
    pub minutes: u64,
    /// Each host's pass interval (`reprobe_interval`), ±`jitter` (a fraction).
    pub pass_interval_s: u64,
    pub jitter: f64,
    /// Hosts start at random times within this window (a config-management rollout).
    pub rollout_s: u64,
    /// HBR shows a dead host as live until this long after its last heartbeat.
    pub heartbeat_timeout_s: u64,
    /// Hosts killed per simulated minute (each comes back after `down_s`).
    pub kills_per_minute: usize,
    pub down_s: u64,
    /// Sources added to the config per minute after the start (pushed to each host with a
    /// delay of up to `push_spread_s`).
    pub new_sources_per_minute: usize,
    pub push_spread_s: u64,
    /// Seconds from a host's describe to its AddDataSource landing (probe time), 1..=this.
    pub add_latency_s: u64,
    pub strict: bool,
    /// The agent's rule: add only a source this host also owned in a view at least
    /// `settle_s` older (the previous pass's, or one read `settle_s` earlier in a first pass).
    pub guard: bool,
    /// Longer than `add_latency_s`.
    pub settle_s: u64,
    /// The agent's describe rule: a host that owns none of its sources lists nothing; an
    /// owner reads the first page, then looks up each owned name unless the rest of the
    /// listing is fewer requests. Off: every host lists every page each pass (the old rule).
    pub bounded_describe: bool,
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            hosts: 1000,
            sources: 10_000,
            minutes: 180,
            pass_interval_s: 3600,
            jitter: 0.1,
            rollout_s: 600,
            heartbeat_timeout_s: 600,
            kills_per_minute: 2,
            down_s: 900,
            new_sources_per_minute: 10,
            push_spread_s: 120,
            add_latency_s: 15,
            strict: false,
            guard: true,
            settle_s: 30,
            bounded_describe: true,
            seed: 1,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MinuteCounts {
    pub describe_backup_clients: u64,
    pub describe_data_sources: u64,
    /// What the same passes would have cost with every host listing every page (the rule
    /// before `bounded_describe`), for comparison in one run.
    pub describe_data_sources_full: u64,
    pub add_data_source: u64,
}

#[derive(Debug, Clone, Default)]
pub struct SimReport {
    pub sources_total: usize,
    /// Names HBR holds at the end.
    pub registered: usize,
    /// Names HBR holds more than once at the end.
    pub duplicates: usize,
    /// Configured names HBR does not hold at the end.
    pub unregistered: usize,
    /// Configured names with no live owner in HBR's final membership.
    pub unowned: usize,
    pub passes: u64,
    pub kills: u64,
    /// Owner changes over the run, summed over sources (each pass-to-pass move counts once).
    pub moves: u64,
    /// Longest time a configured source waited to be registered (seconds).
    pub max_wait_s: u64,
    /// Adds put off one pass by the guard (ownership had just moved).
    pub deferred: u64,
    pub per_minute: Vec<MinuteCounts>,
}

impl SimReport {
    pub fn peak(&self, f: impl Fn(&MinuteCounts) -> u64) -> u64 {
        self.per_minute.iter().map(f).max().unwrap_or(0)
    }
    pub fn mean(&self, f: impl Fn(&MinuteCounts) -> u64) -> f64 {
        let n = self.per_minute.len().max(1) as f64;
        self.per_minute.iter().map(f).sum::<u64>() as f64 / n
    }
    /// Mean over the minutes after `from` (the steady state, once the rollout is over).
    pub fn mean_from(&self, from: usize, f: impl Fn(&MinuteCounts) -> u64) -> f64 {
        let tail = &self.per_minute[from.min(self.per_minute.len())..];
        tail.iter().map(f).sum::<u64>() as f64 / tail.len().max(1) as f64
    }
}

/// splitmix64: deterministic, good enough to pick hosts and delays.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How many top-scoring members are kept per source; the owner is the first live one. When
/// all of them are dead (not seen at these churn rates) the full list is hashed.
const TOP: usize = 12;

struct World {
    ids: Vec<String>,
    names: Vec<String>,
    /// Per source, member indexes by descending score.
    top: Vec<Vec<u32>>,
    alive: Vec<bool>,
    died_at: Vec<Option<u64>>,
    heartbeat_timeout: u64,
}

impl World {
    /// Live as HBR shows it at `t`: running, or dead for less than the heartbeat timeout.
    fn live_in_hbr(&self, h: usize, t: u64) -> bool {
        self.alive[h] || self.died_at[h].is_some_and(|d| t < d + self.heartbeat_timeout)
    }

    fn owner(&self, s: usize, live: &[bool]) -> Option<usize> {
        if let Some(h) = self.top[s].iter().map(|&h| h as usize).find(|&h| live[h]) {
            return Some(h);
        }
        let members: Vec<&str> = (0..self.ids.len())
            .filter(|&h| live[h])
            .map(|h| self.ids[h].as_str())
            .collect();
        let o = super::owner(&members, &self.names[s])?;
        self.ids.iter().position(|id| id == o)
    }
}

pub fn run(cfg: &SimConfig) -> SimReport {
    let mut rng = Rng(cfg.seed);
    let total_sources = cfg.sources + cfg.new_sources_per_minute * cfg.minutes as usize;
    let ids: Vec<String> = (0..cfg.hosts).map(|h| format!("c-{h:06}")).collect();
    let names: Vec<String> = (0..total_sources).map(|s| format!("src-{s:06}")).collect();
    let top = names
        .iter()
        .map(|n| {
            let mut scored: Vec<(u64, u32)> = ids
                .iter()
                .enumerate()
                .map(|(h, id)| (score(id, n), h as u32))
                .collect();
            let k = TOP.min(scored.len());
            scored.select_nth_unstable_by(k.saturating_sub(1), |a, b| {
                b.0.cmp(&a.0).then(a.1.cmp(&b.1))
            });
            scored.truncate(k);
            scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            scored.into_iter().map(|(_, h)| h).collect()
        })
        .collect();
    let mut w = World {
        ids,
        names,
        top,
        alive: vec![true; cfg.hosts],
        died_at: vec![None; cfg.hosts],
        heartbeat_timeout: cfg.heartbeat_timeout_s,
    };
    // When source s enters the config (before the per-host push delay).
    let added_at: Vec<u64> = (0..total_sources)
        .map(|s| {
            if s < cfg.sources {
                0
            } else {
                ((s - cfg.sources) / cfg.new_sources_per_minute.max(1)) as u64 * 60
            }
        })
        .collect();
    let push_delay: Vec<u64> = (0..cfg.hosts)
        .map(|_| rng.below(cfg.push_spread_s + 1))
        .collect();

    let end = cfg.minutes * 60;
    let mut report = SimReport {
        sources_total: total_sources,
        per_minute: vec![MinuteCounts::default(); cfg.minutes as usize],
        ..Default::default()
    };
    // Registrations HBR holds, and adds in flight (land time, source).
    let mut registered = vec![0u32; total_sources];
    let mut registered_total = 0u64;
    let mut first_registered: Vec<Option<u64>> = vec![None; total_sources];
    let mut landing: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::new();
    // Strict mode: source → (holder, released at).
    let mut locks: HashMap<u32, (usize, u64)> = HashMap::new();
    let mut last_owner: Vec<Option<usize>> = vec![None; total_sources];
    // Events: (time, kind, host, life). kind 0 = pass, 1 = restart; a pass of an earlier
    // life of the host (scheduled before it was killed) is dropped.
    let mut events: BinaryHeap<Reverse<(u64, u8, usize, u32)>> = BinaryHeap::new();
    let mut life = vec![0u32; cfg.hosts];
    for h in 0..cfg.hosts {
        events.push(Reverse((rng.below(cfg.rollout_s + 1), 0, h, 0)));
    }
    let mut next_kill = 60;
    let mut live = vec![false; cfg.hosts];
    // Each host's previous view of the membership (the guard: add only what it owned in both).
    let mut previous: Vec<Option<(u64, Vec<bool>)>> = vec![None; cfg.hosts];

    while let Some(Reverse((t, kind, h, of_life))) = events.pop() {
        if t >= end {
            break;
        }
        // Kills happen at each minute boundary up to `t`.
        while next_kill <= t {
            for _ in 0..cfg.kills_per_minute {
                let victim = rng.below(cfg.hosts as u64) as usize;
                if w.alive[victim] {
                    w.alive[victim] = false;
                    w.died_at[victim] = Some(next_kill);
                    report.kills += 1;
                    life[victim] += 1;
                    events.push(Reverse((next_kill + cfg.down_s, 1, victim, life[victim])));
                }
            }
            next_kill += 60;
        }
        while let Some(Reverse((at, s))) = landing.peek().copied() {
            if at > t {
                break;
            }
            landing.pop();
            let s = s as usize;
            registered[s] += 1;
            registered_total += 1;
            first_registered[s].get_or_insert(at);
        }
        let minute = (t / 60) as usize;
        match kind {
            1 => {
                // Back with the same identity; its first pass right away. A saved view older
                // than the heartbeat timeout is not trusted (HBR may have dropped this host
                // meanwhile).
                w.alive[h] = true;
                w.died_at[h] = None;
                if previous[h]
                    .as_ref()
                    .is_some_and(|(at, _)| t - at > cfg.heartbeat_timeout_s)
                {
                    previous[h] = None;
                }
                events.push(Reverse((t, 0, h, life[h])));
                continue;
            }
            _ if !w.alive[h] || of_life != life[h] => continue, // a pass of a killed process
            _ => {}
        }
        report.passes += 1;
        for (m, l) in live.iter_mut().enumerate() {
            *l = w.live_in_hbr(m, t);
        }
        let n_live = live.iter().filter(|l| **l).count() as u64;
        let pages = |n: u64| n.div_ceil(99).max(1);
        let counts = &mut report.per_minute[minute];
        counts.describe_backup_clients += pages(n_live);
        if cfg.guard && previous[h].is_none() {
            // No trusted earlier view: read again after the settle time before adding.
            previous[h] = Some((t, live.clone()));
            events.push(Reverse((t + cfg.settle_s, 0, h, life[h])));
            continue;
        }
        let pass_end = t + cfg.add_latency_s;
        let mut owned_here = 0u64;
        for s in 0..total_sources {
            if t < added_at[s] + push_delay[h] {
                continue;
            }
            let Some(o) = w.owner(s, &live) else { continue };
            if last_owner[s].is_some_and(|l| l != o) {
                report.moves += 1;
            }
            last_owner[s] = Some(o);
            if o != h {
                continue;
            }
            owned_here += 1;
            if cfg.strict {
                match locks.get(&(s as u32)) {
                    Some(&(holder, until)) if holder != h && until > t => continue,
                    _ => {
                        locks.insert(s as u32, (h, pass_end));
                    }
                }
            }
            if registered[s] == 0
                && cfg.guard
                && let Some((_, prev)) = &previous[h]
                && w.owner(s, prev) != Some(h)
            {
                report.deferred += 1;
                continue;
            }
            if registered[s] == 0 {
                let lands = t + 1 + rng.below(cfg.add_latency_s);
                landing.push(Reverse((lands, s as u32)));
                let m = ((lands / 60) as usize).min(report.per_minute.len() - 1);
                report.per_minute[m].add_data_source += 1;
            }
        }
        let listing = pages(registered_total);
        let describe = match (cfg.bounded_describe, owned_here) {
            (false, _) => listing,
            (true, 0) => 0,
            // The first page, then the cheaper of the owned names (one page each) and the
            // rest of the listing.
            (true, k) => 1 + k.min(listing - 1),
        };
        // Strict mode describes again after taking the locks.
        let times = if cfg.strict { 2 } else { 1 };
        report.per_minute[minute].describe_data_sources += describe * times;
        report.per_minute[minute].describe_data_sources_full += listing * times;
        previous[h] = Some((t, live.clone()));
        let jitter = 1.0 + cfg.jitter * (2.0 * rng.unit() - 1.0);
        let next = t + ((cfg.pass_interval_s as f64) * jitter).max(1.0) as u64;
        events.push(Reverse((next, 0, h, life[h])));
    }
    while let Some(Reverse((at, s))) = landing.pop() {
        let s = s as usize;
        registered[s] += 1;
        first_registered[s].get_or_insert(at);
    }
    let live_end: Vec<bool> = (0..cfg.hosts).map(|h| w.live_in_hbr(h, end)).collect();
    // Only sources every host had in its config for a full pass interval are expected.
    let settled =
        end.saturating_sub(cfg.pass_interval_s * 2 + cfg.push_spread_s + cfg.heartbeat_timeout_s);
    for s in 0..total_sources {
        if registered[s] > 0 {
            report.registered += 1;
        }
        if registered[s] > 1 {
            report.duplicates += 1;
        }
        if w.owner(s, &live_end).is_none() {
            report.unowned += 1;
        }
        if added_at[s] <= settled && registered[s] == 0 {
            report.unregistered += 1;
        }
        if let Some(at) = first_registered[s] {
            report.max_wait_s = report.max_wait_s.max(at.saturating_sub(added_at[s]));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(strict: bool) -> SimConfig {
        SimConfig {
            hosts: 60,
            sources: 600,
            minutes: 90,
            pass_interval_s: 600,
            rollout_s: 300,
            kills_per_minute: 1,
            new_sources_per_minute: 5,
            strict,
            ..SimConfig::default()
        }
    }

    #[test]
    fn small_fleet_with_churn_registers_everything_once() {
        for strict in [false, true] {
            let r = run(&small(strict));
            assert_eq!(r.duplicates, 0, "strict={strict}: {r:?}");
            assert_eq!(r.unregistered, 0, "strict={strict}: {r:?}");
            assert_eq!(r.unowned, 0);
            assert!(r.kills > 50, "churn happened: {}", r.kills);
            assert!(r.moves > 0, "sources moved");
            let adds: u64 = r.per_minute.iter().map(|m| m.add_data_source).sum();
            assert_eq!(adds as usize, r.registered, "one add per source");
            assert!(r.registered > 600, "late sources were added too");
        }
    }

    #[test]
    fn bounded_describe_reads_less_and_changes_no_outcome() {
        // ~10 sources per host and ~21 pages in the listing: owners look names up.
        let shape = SimConfig {
            hosts: 200,
            sources: 2000,
            ..small(false)
        };
        let full = run(&SimConfig {
            bounded_describe: false,
            ..shape.clone()
        });
        let bounded = run(&shape);
        let total =
            |r: &SimReport| -> u64 { r.per_minute.iter().map(|m| m.describe_data_sources).sum() };
        assert!(
            total(&bounded) * 3 < total(&full) * 2,
            "{} vs {}",
            total(&bounded),
            total(&full)
        );
        assert_eq!(bounded.duplicates, 0);
        assert_eq!(bounded.unregistered, 0);
        assert_eq!(bounded.registered, full.registered);
    }

    #[test]
    fn deterministic() {
        let a = run(&small(false));
        let b = run(&small(false));
        assert_eq!(a.per_minute, b.per_minute);
    }
}
