//! The command line (DESIGN.md §5): argument parsing, the one-shot commands and their human and
//! JSON output. Exit codes live here and nowhere else.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, Config, ConfigErrors};
use crate::probe::{Code, ProbeReport};
use crate::reconcile::{self, Mode, Outcome, PassReport};
use crate::state::{self, StateStore};

/// Exit codes (sysexits where one fits).
pub mod exit {
    pub const OK: u8 = 0;
    /// Some probe or registration failed; or `plan` could not finish.
    pub const FAILED: u8 = 1;
    /// `plan`: there are changes to apply.
    pub const CHANGES: u8 = 2;
    /// EX_USAGE: bad command line, unknown code for `explain`.
    pub const USAGE: u8 = 64;
    /// EX_CONFIG: the configuration is invalid.
    pub const CONFIG: u8 = 78;
}

#[derive(Debug, Parser)]
#[command(
    name = "hbr-source-agent",
    version,
    about = "Probe storage endpoints and register the ones that pass as Alibaba Cloud HBR data sources"
)]
pub struct Cli {
    /// Main config file; its sibling conf.d/*.toml is read too.
    #[arg(
        long,
        global = true,
        env = "HBR_SOURCE_AGENT_CONFIG",
        default_value = "/etc/hbr-source-agent/agent.toml"
    )]
    pub config: PathBuf,
    /// Log format (logs go to stderr; text has no timestamps under journald).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (-q errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the configuration offline. Exit 0 valid, 78 invalid.
    Validate {
        /// Treat warnings as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Run the layered probes. Exit 0 all pass, 1 some failed, 78 invalid config.
    Probe {
        /// Sources to probe (default: all).
        names: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show what apply would change in HBR. Exit 0 no changes, 2 changes, 1 error, 78.
    Plan {
        #[arg(long)]
        json: bool,
    },
    /// One reconcile pass. Exit 0 all in sync, 1 some failed, 78.
    Apply {
        #[arg(long)]
        json: bool,
    },
    /// The daemon (under systemd).
    Run {
        /// Where the metrics and status socket goes (systemd sets RUNTIME_DIRECTORY).
        #[arg(long, env = "RUNTIME_DIRECTORY", default_value = RUNTIME_DIR)]
        runtime_dir: PathBuf,
        /// Also serve /metrics over TCP on this loopback address (e.g. 127.0.0.1:9469).
        #[arg(long, value_parser = loopback_addr)]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// What the running daemon knows (over its runtime socket), else the state file. Exit 0.
    Status {
        #[arg(long)]
        json: bool,
        /// The running daemon's runtime directory.
        #[arg(long, default_value = RUNTIME_DIR)]
        runtime_dir: PathBuf,
    },
    /// What a failure code means and how to fix it.
    Explain { code: String },
}

/// The runtime directory under systemd (`RuntimeDirectory=hbr-source-agent`).
pub const RUNTIME_DIR: &str = "/run/hbr-source-agent";

fn loopback_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    let addr: std::net::SocketAddr = s.parse().map_err(|e| format!("{e}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address; metrics are served on loopback only (put a \
             proxy in front to scrape from elsewhere)"
        ));
    }
    Ok(addr)
}

impl Cli {
    /// The default log level of a command: the daemon tells what it does, one-shot commands
    /// print their result and log only problems.
    pub fn log_directive(&self) -> &'static str {
        let base: i8 = if matches!(self.command, Command::Run { .. }) {
            2
        } else {
            1
        };
        match base + self.verbose as i8 - self.quiet as i8 {
            i8::MIN..=0 => "error",
            1 => "warn",
            2 => "info",
            3 => "debug",
            _ => "trace",
        }
    }
}

/// Load the config, printing every error and warning to stderr.
pub fn load_config(cli: &Cli, strict: bool) -> Result<Config, ExitCode> {
    match config::load(&cli.config) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                eprintln!("{w}");
            }
            if strict && !cfg.warnings.is_empty() {
                eprintln!(
                    "{}: {} warning(s), which --strict treats as errors",
                    cli.config.display(),
                    cfg.warnings.len()
                );
                return Err(ExitCode::from(exit::CONFIG));
            }
            Ok(cfg)
        }
        Err(ConfigErrors { errors, warnings }) => {
            for d in warnings.iter().chain(errors.iter()) {
                eprintln!("{d}");
            }
            eprintln!(
                "{}: configuration invalid ({} error(s))",
                cli.config.display(),
                errors.len()
            );
            Err(ExitCode::from(exit::CONFIG))
        }
    }
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Validate { strict } => Ok(match load_config(&cli, *strict) {
            Ok(cfg) => {
                println!(
                    "{}: valid; {} source(s) from {} file(s)",
                    cli.config.display(),
                    cfg.sources.len(),
                    cfg.files.len()
                );
                ExitCode::from(exit::OK)
            }
            Err(code) => code,
        }),
        Command::Probe { names, json } => {
            let cfg = match load_config(&cli, false) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            probe_cmd(&cfg, names, *json).await
        }
        Command::Plan { json } => {
            let cfg = match load_config(&cli, false) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            pass_cmd(&cfg, Mode::Plan, *json).await
        }
        Command::Apply { json } => {
            let cfg = match load_config(&cli, false) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            pass_cmd(&cfg, Mode::Apply, *json).await
        }
        Command::Run {
            runtime_dir,
            metrics_listen,
        } => crate::daemon::run(&cli, runtime_dir, *metrics_listen).await,
        Command::Status { json, runtime_dir } => status_cmd(&cli, *json, runtime_dir),
        Command::Explain { code } => Ok(explain_cmd(code)),
    }
}

async fn probe_cmd(cfg: &Config, names: &[String], json: bool) -> anyhow::Result<ExitCode> {
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !cfg.sources.contains_key(*n))
        .collect();
    if !unknown.is_empty() {
        eprintln!(
            "no such source: {} (configured: {})",
            unknown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            cfg.sources.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        return Ok(ExitCode::from(exit::USAGE));
    }
    let wanted: Vec<&config::Source> = cfg
        .sources
        .values()
        .filter(|s| names.is_empty() || names.contains(&s.name))
        .collect();
    let reports = reconcile::probe_all(
        &wanted,
        cfg.agent.probe_concurrency.get(),
        cfg.agent.probe_timeout,
    )
    .await;
    let all_pass = reports.values().all(ProbeReport::passed);
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &reports.values().collect::<Vec<_>>())?;
        writeln!(out)?;
    } else {
        for r in reports.values() {
            write_probe(&mut out, r, "")?;
        }
        let failed = reports.values().filter(|r| !r.passed()).count();
        writeln!(out, "{} passed, {} failed", reports.len() - failed, failed)?;
    }
    Ok(ExitCode::from(if all_pass {
        exit::OK
    } else {
        exit::FAILED
    }))
}

fn write_probe(
    out: &mut impl std::io::Write,
    r: &ProbeReport,
    indent: &str,
) -> std::io::Result<()> {
    let verdict = match &r.failure {
        None => "PASS".to_string(),
        Some(f) => format!("FAIL {}", f.code),
    };
    writeln!(
        out,
        "{indent}{} {:<24} {verdict} ({:.3}s)",
        r.kind,
        r.source,
        r.duration.as_secs_f64()
    )?;
    for l in &r.layers {
        writeln!(
            out,
            "{indent}  {:<9} {:<4} {:>8.3}s  {}",
            l.layer.as_str(),
            if l.ok { "ok" } else { "FAIL" },
            l.duration.as_secs_f64(),
            l.detail
        )?;
    }
    for (k, v) in &r.facts {
        writeln!(out, "{indent}  {k}: {v}")?;
    }
    for w in &r.warnings {
        writeln!(out, "{indent}  warning {}: {}", w.code, w.reason)?;
    }
    if let Some(f) = &r.failure {
        writeln!(out, "{indent}  remedy: {}", f.code.info().remedy)?;
        writeln!(out, "{indent}  (hbr-source-agent explain {})", f.code)?;
    }
    Ok(())
}

async fn pass_cmd(cfg: &Config, mode: Mode, json: bool) -> anyhow::Result<ExitCode> {
    let client = crate::hbr::client::HbrClient::new(&cfg.control_plane)
        .context("cannot set up the HBR client")?;
    let (store, mut st, key) = match mode {
        Mode::Apply => {
            let store = StateStore::open(&cfg.agent.state_dir)?;
            let st = store.load()?;
            let key = store.hmac_key()?;
            (Some(store), st, key)
        }
        // plan changes nothing, so it does without the state it cannot read (an operator
        // who is not the service's user), saying what that costs.
        Mode::Plan => match state::read(&cfg.agent.state_dir)
            .and_then(|st| Ok((st, state::hmac_key(&cfg.agent.state_dir, false)?)))
        {
            Ok((st, key)) => (None, st, key),
            Err(e) => {
                eprintln!(
                    "warning: {e}; planning from HBR's view alone (run as the service's user for \
                     an exact plan: sources with credentials will show as updates)"
                );
                (None, state::State::default(), Vec::new())
            }
        },
    };
    let report =
        match reconcile::run_pass(cfg, &client, mode, None, &mut st, store.as_ref(), &key).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(exit::FAILED));
            }
        };
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_pass(&mut out, &report, mode)?;
    }
    let code = match mode {
        Mode::Plan if report.failed() => exit::FAILED,
        Mode::Plan if report.changes() => exit::CHANGES,
        Mode::Apply if report.failed() => exit::FAILED,
        _ => exit::OK,
    };
    Ok(ExitCode::from(code))
}

fn outcome_mark(o: Outcome) -> &'static str {
    match o {
        Outcome::Add | Outcome::Added => "+",
        Outcome::Update | Outcome::Updated => "~",
        Outcome::InSync => "=",
        Outcome::Orphaned => "?",
        Outcome::OtherOwner => "-",
        Outcome::Deferred => ".",
        Outcome::ProbeFailed | Outcome::Conflict | Outcome::Failed => "!",
    }
}

pub fn write_pass(
    out: &mut impl std::io::Write,
    report: &PassReport,
    mode: Mode,
) -> std::io::Result<()> {
    let verb = if mode == Mode::Plan { "Plan" } else { "Apply" };
    writeln!(out, "{verb} for client group {}:", report.cluster_id)?;
    for s in &report.sources {
        let id = s
            .data_source_id
            .as_deref()
            .map(|i| format!(" [{i}]"))
            .unwrap_or_default();
        writeln!(
            out,
            "  {} {:<13} {} ({}){id}",
            outcome_mark(s.outcome),
            s.outcome.as_str(),
            s.name,
            s.data_source_type
        )?;
        if !s.detail.is_empty() {
            writeln!(out, "      {}", s.detail)?;
        }
        if matches!(s.outcome, Outcome::Add | Outcome::Update)
            && let Some(params) = &s.params
        {
            for (k, v) in params {
                writeln!(out, "      {k} = {v}")?;
            }
            if s.credential {
                writeln!(out, "      Credential = (secret, not shown)")?;
            }
        }
        if let Some(rid) = &s.request_id {
            writeln!(out, "      RequestId {rid}")?;
        }
        if s.outcome == Outcome::ProbeFailed
            && let Some(f) = s.probe.as_ref().and_then(|p| p.failure.as_ref())
        {
            writeln!(out, "      remedy: {}", f.code.info().remedy)?;
        }
    }
    let count = |o: &[Outcome]| {
        report
            .sources
            .iter()
            .filter(|s| o.contains(&s.outcome))
            .count()
    };
    let failed = count(&[Outcome::ProbeFailed, Outcome::Conflict, Outcome::Failed]);
    let (in_sync, orphaned) = (count(&[Outcome::InSync]), count(&[Outcome::Orphaned]));
    match mode {
        Mode::Plan => writeln!(
            out,
            "{} to add, {} to update, {in_sync} in sync, {failed} failed, {orphaned} orphaned",
            count(&[Outcome::Add]),
            count(&[Outcome::Update]),
        ),
        Mode::Apply => writeln!(
            out,
            "{} added, {} updated, {in_sync} in sync, {failed} failed, {orphaned} orphaned ({})",
            count(&[Outcome::Added]),
            count(&[Outcome::Updated]),
            report.summary(),
        ),
    }
}

fn status_cmd(cli: &Cli, json: bool, runtime_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    match crate::control::query_status(runtime_dir) {
        Ok(st) => {
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &st)?;
                writeln!(out)?;
            } else {
                write_daemon_status(&mut out, &st)?;
            }
            return Ok(ExitCode::from(exit::OK));
        }
        // Not running (or not readable by this user): the state file tells the last pass.
        Err(e) => eprintln!("note: no answer from a running agent ({e:#}); showing the state file"),
    }
    state_status(cli, json)
}

fn write_daemon_status(
    out: &mut impl std::io::Write,
    st: &crate::control::DaemonStatus,
) -> std::io::Result<()> {
    writeln!(
        out,
        "agent running (pid {}, since {}), client group {}: {}",
        st.pid, st.started_at, st.cluster_id, st.summary
    )?;
    match &st.config_error {
        None => writeln!(out, "config loaded {}", st.last_reload_at)?,
        Some(e) => writeln!(
            out,
            "config reload FAILED {} (running the last good config): {e}",
            st.last_reload_at
        )?,
    }
    if let Some(e) = &st.pass_error {
        writeln!(out, "last pass failed: {e}")?;
    }
    for s in &st.sources {
        let probe = match &s.probe_code {
            Some(c) => format!("probe failed {c}"),
            None => format!("probe {}", s.probe),
        };
        writeln!(
            out,
            "  {:<24} {:<13} {:<24} {probe}, since {}",
            s.name,
            s.outcome,
            s.data_source_id.as_deref().unwrap_or("-"),
            s.last_change
        )?;
        if let Some(e) = &s.last_error {
            writeln!(out, "      {e}")?;
        }
    }
    Ok(())
}

fn state_status(cli: &Cli, json: bool) -> anyhow::Result<ExitCode> {
    let (state_dir, configured): (PathBuf, BTreeSet<String>) = match config::load(&cli.config) {
        Ok(cfg) => (
            cfg.agent.state_dir.clone(),
            cfg.sources.keys().cloned().collect(),
        ),
        Err(_) => {
            eprintln!(
                "note: {} does not load (run validate); showing the state in {}",
                cli.config.display(),
                config::defaults::STATE_DIR
            );
            (PathBuf::from(config::defaults::STATE_DIR), BTreeSet::new())
        }
    };
    let st = state::read(&state_dir)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &st)?;
        writeln!(out)?;
        return Ok(ExitCode::from(exit::OK));
    }
    writeln!(
        out,
        "state {} (client group {})",
        state_dir.join("state.json").display(),
        if st.cluster_id.is_empty() {
            "-"
        } else {
            &st.cluster_id
        }
    )?;
    for (name, s) in &st.sources {
        let probe = s.last_probe.as_ref().map_or("not probed".to_string(), |p| {
            if p.passed {
                format!("probe passed {}", p.at)
            } else {
                format!("probe failed {} {}", p.code.as_deref().unwrap_or("?"), p.at)
            }
        });
        writeln!(
            out,
            "  {name:<24} {:<13} {:<24} {probe}{}",
            s.outcome,
            s.data_source_id.as_deref().unwrap_or("-"),
            if configured.is_empty() || configured.contains(name) {
                ""
            } else {
                " (not in config)"
            }
        )?;
        if let Some(e) = &s.error {
            writeln!(out, "      {e}")?;
        }
    }
    for name in configured.iter().filter(|n| !st.sources.contains_key(*n)) {
        writeln!(out, "  {name:<24} never applied")?;
    }
    Ok(ExitCode::from(exit::OK))
}

fn explain_cmd(code: &str) -> ExitCode {
    match Code::lookup(code) {
        Some(info) => {
            println!(
                "{}\n  {}\n\nRemedy:\n  {}",
                info.code, info.summary, info.remedy
            );
            ExitCode::from(exit::OK)
        }
        None => {
            eprintln!(
                "unknown code {code:?}; known codes: {}",
                crate::probe::codes::CATALOGUE
                    .iter()
                    .map(|i| i.code.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            ExitCode::from(exit::USAGE)
        }
    }
}
