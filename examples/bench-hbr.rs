//! The fake HBR for `bench/bench.py`: the strict fake with an added round-trip latency and a
//! rate limit, and one line per answered request on stdout stamped with the wall clock, so the
//! bench can time "config written → request at HBR" from outside.
//!
//! ```text
//! bench-hbr [--latency-ms N] [--rate-limit PER_SECOND]
//! ```
//!
//! Prints `endpoint=http://127.0.0.1:PORT` first, then per request
//! `<unix seconds.micros> INFO fake_hbr: request request_id=… action=… status=… code=… fault=…`
//! (never parameters: they hold Credential). Stops when stdin closes or on SIGTERM.

#[path = "../tests/support/fake_hbr.rs"]
mod fake_hbr;

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use fake_hbr::{FakeConfig, FakeHbr};
use tokio::io::AsyncReadExt;

#[derive(Parser)]
#[command(about = "The fake HBR with latency and a rate limit, for the benchmarks")]
struct Args {
    /// Added to every authenticated answer.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Authenticated requests per second; more are throttled (Throttling.User).
    #[arg(long)]
    rate_limit: Option<u32>,
}

/// The wall clock as `seconds.micros`, comparable with Python's `time.time()`.
struct UnixTime;

impl tracing_subscriber::fmt::time::FormatTime for UnixTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        write!(w, "{}.{:06}", t.as_secs(), t.subsec_micros())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stdout)
        .with_ansi(false)
        .with_timer(UnixTime)
        .with_env_filter("fake_hbr=info")
        .init();
    let cfg = FakeConfig {
        latency: Duration::from_millis(args.latency_ms),
        rate_limit: args.rate_limit,
        ..FakeConfig::default()
    };
    let fake = match FakeHbr::start(cfg).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: cannot start the fake HBR: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("endpoint={}", fake.endpoint());

    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot watch SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    tokio::select! {
        _ = stdin_closed => {}
        _ = term.recv() => {}
    }
    fake.shutdown().await;
    ExitCode::SUCCESS
}
