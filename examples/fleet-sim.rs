//! Fleet simulation: `cargo run --release --example fleet-sim [-- HOSTS SOURCES MINUTES]`.
//! Runs src/fleet/sim.rs in both coordination modes and prints the table docs/fleet.md quotes.

use hbr_source_agent::fleet::sim::{self, SimConfig};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: HOSTS SOURCES MINUTES"))
        .collect();
    let mut base = SimConfig::default();
    if let [hosts, sources, minutes, ..] = args[..] {
        base.hosts = hosts as usize;
        base.sources = sources as usize;
        base.minutes = minutes;
    }
    println!(
        "{} hosts, {} sources (+{}/min), {} min, pass every {}s ±{:.0}%, {} kills/min \
         (back after {}s), heartbeat timeout {}s, adds land 1–{}s after the describe",
        base.hosts,
        base.sources,
        base.new_sources_per_minute,
        base.minutes,
        base.pass_interval_s,
        base.jitter * 100.0,
        base.kills_per_minute,
        base.down_s,
        base.heartbeat_timeout_s,
        base.add_latency_s,
    );
    println!();
    println!(
        "| mode | passes (incl. first-pass re-reads) | kills | owner moves | deferred | duplicates | unregistered | unowned | max wait | \
         DescribeBackupClients/min (mean, peak) | DescribeDataSources/min (mean steady, peak) | \
         same passes, every host listing everything (mean steady, peak) | \
         AddDataSource/min (mean, peak) | seconds |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (strict, guard) in [(false, false), (false, true), (true, true)] {
        let cfg = SimConfig {
            strict,
            guard,
            ..base.clone()
        };
        let started = std::time::Instant::now();
        let r = sim::run(&cfg);
        let steady = (base.pass_interval_s / 60) as usize;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {}s | {:.0}, {} | {:.0}, {} | {:.0}, {} | {:.1}, {} | {:.1} |",
            match (strict, guard) {
                (true, _) => "etcd",
                (false, true) => "hbr",
                (false, false) => "hbr, no guard",
            },
            r.passes,
            r.kills,
            r.moves,
            r.deferred,
            r.duplicates,
            r.unregistered,
            r.unowned,
            r.max_wait_s,
            r.mean(|m| m.describe_backup_clients),
            r.peak(|m| m.describe_backup_clients),
            r.mean_from(steady, |m| m.describe_data_sources),
            r.peak(|m| m.describe_data_sources),
            r.mean_from(steady, |m| m.describe_data_sources_full),
            r.peak(|m| m.describe_data_sources_full),
            r.mean(|m| m.add_data_source),
            r.peak(|m| m.add_data_source),
            started.elapsed().as_secs_f64(),
        );
    }
}
