//! Runs the strict fake HBR by hand, so an operator can stage a config (`endpoint =` in
//! `[control_plane]`) before pointing the agent at the real cloud.
//!
//! ```text
//! cargo run --example fake-hbr -- --listen 127.0.0.1:8080 [--access-key-id ID
//!     --access-key-secret SECRET] [--security-token TOKEN] [--throttle-every N]
//! ```
//!
//! Prints one line with the endpoint and the (fake) credentials on stdout, logs one line per
//! request (action, status, code — never parameters) on stderr, stops on Ctrl-C or SIGTERM.

#[path = "../tests/support/fake_hbr.rs"]
mod fake_hbr;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use fake_hbr::{Account, FakeConfig, FakeHbr};

#[derive(Parser)]
#[command(about = "A strict fake of Alibaba Cloud HBR (RPC 2017-09-08) on loopback")]
struct Args {
    /// Loopback address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[arg(long, default_value = fake_hbr::DEFAULT_ACCESS_KEY_ID)]
    access_key_id: String,
    #[arg(long, default_value = fake_hbr::DEFAULT_ACCESS_KEY_SECRET)]
    access_key_secret: String,
    /// Require this STS token with the key.
    #[arg(long)]
    security_token: Option<String>,
    /// Throttle every Nth authenticated request (HTTP 400 Throttling.User).
    #[arg(long)]
    throttle_every: Option<u32>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "fake_hbr=info".into()),
        )
        .init();
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "error: --listen {} is not a loopback address; the fake HBR never listens elsewhere",
            args.listen
        );
        return ExitCode::from(2);
    }
    let account = match &args.security_token {
        Some(t) => Account::sts(&args.access_key_id, &args.access_key_secret, t, None),
        None => Account::new(&args.access_key_id, &args.access_key_secret),
    };
    let cfg = FakeConfig {
        listen: args.listen,
        accounts: vec![account],
        throttle_every: args.throttle_every,
        ..FakeConfig::default()
    };
    let fake = match FakeHbr::start(cfg).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: cannot start the fake HBR on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    // These credentials are fake; printing them is the point.
    let token = args
        .security_token
        .as_deref()
        .map(|t| format!(" security_token={t}"))
        .unwrap_or_default();
    println!(
        "fake HBR endpoint={} access_key_id={} access_key_secret={}{token}",
        fake.endpoint(),
        args.access_key_id,
        args.access_key_secret
    );

    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot watch SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    fake.shutdown().await;
    ExitCode::SUCCESS
}
