//! `run`: the long-lived service (DESIGN.md §7). Signal handlers first; a first reconcile pass,
//! then `READY=1`; SIGHUP and config-file changes go through one reload path (a bad config
//! keeps the last good one running); a jittered anti-entropy pass every `reprobe_interval`;
//! SIGTERM finishes or abandons the pass in flight within a bound, writes state, exits 0.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use notify::{EventKind, RecursiveMode, Watcher as _};
use sd_notify::NotifyState;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use crate::cli::{self, Cli, exit};
use crate::config::{self, Config};
use crate::control::{DaemonStatus, SharedStatus, SourceStatus};
use crate::hbr::client::HbrClient;
use crate::reconcile::{self, Mode, PassReport, SourceResult};
use crate::state::{State, StateStore};

/// How long SIGTERM waits for a pass in flight before abandoning it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How far each `EXTEND_TIMEOUT_USEC` during the first pass pushes systemd's start timeout.
const START_EXTENSION: Duration = Duration::from_secs(60);
/// A config change is applied once the files have been quiet this long: an editor's or config
/// management's burst of writes is one reload of the final content, not one per write (each
/// intermediate file would be probed and registered, then orphaned in HBR).
const SETTLE_QUIET: Duration = Duration::from_millis(250);
/// ...but no later than this after the first event, however long the writes go on.
const SETTLE_MAX: Duration = Duration::from_secs(5);

/// SIGTERM and SIGINT; SIGHUP is handled apart (it reloads).
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> std::io::Result<(Signals, Signal)> {
        Ok((
            Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            },
            signal(SignalKind::hangup())?,
        ))
    }

    async fn stop(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// The systemd watchdog: pings at half of `WATCHDOG_USEC`, sent from the main loop, and during
/// a pass only while the pass is within the time it can legitimately take. A wedged runtime or
/// a pass stuck past every deadline stops the pings, and systemd restarts the service.
struct Watchdog {
    tick: Option<tokio::time::Interval>,
}

impl Watchdog {
    fn from_env() -> Watchdog {
        let tick = sd_notify::watchdog_enabled().map(|period| {
            let mut i = tokio::time::interval((period / 2).max(Duration::from_millis(10)));
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        Watchdog { tick }
    }

    /// Completes at the next ping time; never when the watchdog is off.
    async fn due(&mut self) {
        match &mut self.tick {
            Some(i) => {
                i.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    fn ping() {
        notify(&[NotifyState::Watchdog]);
    }
}

/// Beyond the probes' own deadlines, what a pass may spend on HBR (retries with backoff,
/// several pages, one call per source) before the watchdog considers it stuck.
const PASS_HBR_ALLOWANCE: Duration = Duration::from_secs(30 * 60);

/// How long a pass over `cfg` can take while still making progress.
fn pass_bound(cfg: &Config) -> Duration {
    let waves = cfg
        .sources
        .len()
        .div_ceil(cfg.agent.probe_concurrency.get())
        .max(1) as u32;
    // A fleet's first pass may wait settle_time before reading the membership again.
    cfg.agent.probe_timeout.saturating_mul(waves + 1)
        + PASS_HBR_ALLOWANCE
        + crate::fleet::settle_time(cfg)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn notify(state: &[NotifyState]) {
    // A no-op outside systemd (no NOTIFY_SOCKET).
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

struct Daemon {
    config_path: PathBuf,
    cfg: Config,
    client: HbrClient,
    store: StateStore,
    state: State,
    key: Vec<u8>,
    /// The latest result per source, across partial passes: each change is logged once, and
    /// `STATUS=` is built from it.
    last_results: BTreeMap<String, SourceResult>,
    /// Set when the last pass could not run at all (HBR unreadable).
    pass_error: Option<String>,
    /// Passes in a row that left work undone because of HBR (not because of a probe).
    failed_passes: u32,
    /// Why the last reload failed; `None` when the running config is the latest.
    reload_error: Option<String>,
    last_reload_at: String,
    last_pass_at: Option<String>,
    /// When each source's outcome last changed.
    changed_at: BTreeMap<String, String>,
    /// What `status` and the runtime socket show.
    status: SharedStatus,
    /// The runtime socket, removed on exit.
    socket: Option<PathBuf>,
    watchdog: Watchdog,
}

pub async fn run(
    cli: &Cli,
    runtime_dir: &Path,
    metrics_listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<ExitCode> {
    // Before anything else: a SIGTERM during start-up must still end cleanly.
    let (mut signals, mut hup) = Signals::install().context("cannot install signal handlers")?;
    let cfg = match cli::load_config(cli, false) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    crate::metrics::global().config_loaded(true);
    let store = StateStore::open(&cfg.agent.state_dir)?;
    let key = store.hmac_key()?;
    let state = store.load()?;
    let client = HbrClient::new(&cfg.control_plane).context("cannot set up the HBR client")?;
    let (reload_tx, mut reload_rx) = mpsc::channel::<()>(1);
    let mut watcher = ConfigWatcher::start(&cli.config, reload_tx)?;
    let status = Arc::new(Mutex::new(DaemonStatus {
        pid: std::process::id(),
        started_at: now_rfc3339(),
        cluster_id: cfg.agent.cluster_id.clone(),
        summary: "first reconcile pass".into(),
        config_ok: true,
        last_reload_at: now_rfc3339(),
        ..DaemonStatus::default()
    }));
    // Metrics and status are for operators; the agent's job does not depend on them.
    // An explicitly asked listener that cannot bind is an error, the default socket is not.
    if let Some(addr) = metrics_listen {
        crate::control::serve_tcp(addr)?;
    }
    let socket = match crate::control::serve_unix(runtime_dir, status.clone()) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no metrics and status socket (`status` will read the state file)");
            None
        }
    };
    tracing::info!(
        config = %cli.config.display(),
        sources = cfg.sources.len(),
        cluster_id = %cfg.agent.cluster_id,
        "hbr-source-agent starting"
    );
    let mut d = Daemon {
        config_path: cli.config.clone(),
        cfg,
        client,
        store,
        state,
        key,
        last_results: BTreeMap::new(),
        pass_error: None,
        failed_passes: 0,
        reload_error: None,
        last_reload_at: now_rfc3339(),
        last_pass_at: None,
        changed_at: BTreeMap::new(),
        status,
        socket,
        watchdog: Watchdog::from_env(),
    };

    // READY=1 comes after the first pass, whose length depends on the endpoints and HBR. Every
    // probe and call in it has a deadline, so it ends; but many sources behind a throttling
    // HBR can outlast TimeoutStartSec, so the start timeout is extended while it runs.
    notify(&[NotifyState::Status("first reconcile pass")]);
    if let Some(why) = d.guarded(Work::FirstPass, &mut signals).await {
        return d.shutdown(why);
    }
    notify(&[NotifyState::Ready, NotifyState::Status(&d.status_line())]);

    // A fixed point in time: neither watchdog pings nor reloads push the next pass back.
    let mut next_pass = tokio::time::Instant::now() + jittered(d.next_pass_in());
    // A file change waiting for the files to settle: (reload when quiet until, at the latest).
    let mut settling: Option<(tokio::time::Instant, tokio::time::Instant)> = None;
    loop {
        let work = loop {
            let settled = settling.map_or(next_pass, |(quiet, _)| quiet);
            tokio::select! {
                why = signals.stop() => return d.shutdown(why),
                _ = hup.recv() => {
                    settling = None;
                    break Work::Reload("SIGHUP");
                }
                Some(()) = reload_rx.recv() => {
                    let now = tokio::time::Instant::now();
                    let latest = settling.map_or(now + SETTLE_MAX, |(_, latest)| latest);
                    settling = Some(((now + SETTLE_QUIET).min(latest), latest));
                }
                _ = tokio::time::sleep_until(settled), if settling.is_some() => {
                    settling = None;
                    break Work::Reload("config file changed");
                }
                _ = tokio::time::sleep_until(next_pass) => break Work::Pass,
                () = d.watchdog.due() => Watchdog::ping(),
            }
        };
        let periodic = !matches!(work, Work::Reload(_));
        if periodic {
            // Steady state is quiet: what changed is logged by `record`.
            tracing::debug!("periodic re-probe and HBR check");
        } else {
            watcher.refresh();
        }
        if let Some(why) = d.guarded(work, &mut signals).await {
            return d.shutdown(why);
        }
        // After a reload, only sooner (its pass may have failed and want a retry).
        let due = tokio::time::Instant::now() + jittered(d.next_pass_in());
        next_pass = if periodic { due } else { next_pass.min(due) };
        notify(&[NotifyState::Status(&d.status_line())]);
    }
}

/// What the main loop runs under [`Daemon::guarded`].
enum Work {
    FirstPass,
    Pass,
    Reload(&'static str),
}

/// After a pass that could not finish (HBR unreachable, throttled, refused), the next one comes
/// sooner: from one minute, doubling, up to `reprobe_interval`.
const RETRY_FIRST: Duration = Duration::from_secs(60);

fn next_pass_in(failed_passes: u32, interval: Duration) -> Duration {
    match failed_passes {
        0 => interval,
        n => RETRY_FIRST
            .saturating_mul(1 << (n - 1).min(16))
            .min(interval),
    }
}

/// `base` ± 10 %, so that a fleet started together does not call HBR in step.
fn jittered(base: Duration) -> Duration {
    let f: f64 = 0.9 + rand::random::<f64>() * 0.2;
    base.mul_f64(f)
}

impl Daemon {
    /// When the next anti-entropy pass is due (before jitter).
    fn next_pass_in(&self) -> Duration {
        next_pass_in(self.failed_passes, self.cfg.agent.reprobe_interval)
    }

    fn status_line(&self) -> String {
        let mut s = match &self.pass_error {
            Some(e) => format!("reconcile failed: {e}"),
            None => PassReport {
                cluster_id: self.cfg.agent.cluster_id.clone(),
                sources: self.last_results.values().cloned().collect(),
            }
            .summary(),
        };
        if self.reload_error.is_some() {
            s.push_str("; config reload failed, running the last good config");
        }
        s
    }

    /// Run `work`, pinging the watchdog while it is within [`pass_bound`] (and extending the
    /// start timeout during the first pass). If a stop signal arrives meanwhile, give the work
    /// [`SHUTDOWN_GRACE`] to finish and return which signal it was.
    async fn guarded(&mut self, work: Work, signals: &mut Signals) -> Option<&'static str> {
        let bound = pass_bound(&self.cfg);
        let started = Instant::now();
        let first = matches!(work, Work::FirstPass);
        let mut watchdog = std::mem::replace(&mut self.watchdog, Watchdog { tick: None });
        let mut extend = tokio::time::interval(START_EXTENSION / 3);
        let mut overdue = false;
        let stopped = {
            let fut = async {
                match work {
                    Work::FirstPass | Work::Pass => self.pass(None).await,
                    Work::Reload(why) => self.reload(why).await,
                }
            };
            tokio::pin!(fut);
            loop {
                tokio::select! {
                    () = &mut fut => break None,
                    why = signals.stop() => {
                        tracing::info!(signal = why, grace = ?SHUTDOWN_GRACE, "stopping; letting the pass in flight finish");
                        notify(&[NotifyState::Stopping]);
                        if tokio::time::timeout(SHUTDOWN_GRACE, &mut fut).await.is_err() {
                            tracing::warn!("abandoned the pass in flight; the next start describes HBR before adding anything");
                        }
                        break Some(why);
                    }
                    () = watchdog.due() => {
                        if started.elapsed() < bound {
                            Watchdog::ping();
                        } else if !overdue {
                            overdue = true;
                            tracing::error!(bound = ?bound, "the pass is taking longer than any of its deadlines allow; no more watchdog pings");
                        }
                    }
                    _ = extend.tick(), if first => notify(&[NotifyState::ExtendTimeoutUsec(
                        START_EXTENSION.as_micros() as u32,
                    )]),
                }
            }
        };
        self.watchdog = watchdog;
        self.publish();
        stopped
    }

    async fn pass(&mut self, only: Option<&BTreeSet<String>>) {
        let result = reconcile::run_pass(
            &self.cfg,
            &self.client,
            Mode::Apply,
            only,
            &mut self.state,
            Some(&self.store),
            &self.key,
        )
        .await;
        self.last_pass_at = Some(now_rfc3339());
        match result {
            Ok(report) => {
                self.pass_error = None;
                let hbr_failed = report
                    .sources
                    .iter()
                    .any(|s| s.outcome == reconcile::Outcome::Failed);
                self.failed_passes = if hbr_failed {
                    self.failed_passes + 1
                } else {
                    0
                };
                self.record(report);
            }
            Err(e) => {
                self.failed_passes += 1;
                tracing::error!(error = %e, retry_in = ?self.next_pass_in(), "reconcile pass failed; retrying");
                self.pass_error = Some(e.to_string());
            }
        }
    }

    /// Keep the latest result per source and log each one that differs from the last.
    fn record(&mut self, report: PassReport) {
        for s in report.sources {
            use reconcile::Outcome::{Added, InSync, Updated};
            let unchanged = self.last_results.get(&s.name).is_some_and(|old| {
                (old.outcome == s.outcome && old.detail == s.detail)
                    // What was just added or updated being in sync is no news.
                    || (matches!(old.outcome, Added | Updated)
                        && s.outcome == InSync
                        && s.detail.is_empty())
            });
            if !unchanged {
                let id = s.data_source_id.as_deref().unwrap_or("-");
                if s.outcome.is_failure() {
                    tracing::warn!(source = %s.name, outcome = s.outcome.as_str(), data_source_id = id, "{}", s.detail);
                } else {
                    tracing::info!(source = %s.name, outcome = s.outcome.as_str(), data_source_id = id, "{}", s.detail);
                }
                self.changed_at.insert(s.name.clone(), now_rfc3339());
            }
            self.last_results.insert(s.name.clone(), s);
        }
        // Forget sources that left both the config and the state.
        let (cfg, state) = (&self.cfg, &self.state);
        self.last_results
            .retain(|name, _| cfg.sources.contains_key(name) || state.sources.contains_key(name));
        let known = &self.last_results;
        self.changed_at.retain(|name, _| known.contains_key(name));
    }

    /// Metrics and the runtime socket's status from what the daemon knows now.
    fn publish(&self) {
        crate::metrics::global().publish(self.last_results.values());
        let sources = self
            .last_results
            .values()
            .map(|r| SourceStatus {
                name: r.name.clone(),
                kind: r.kind.to_string(),
                outcome: r.outcome.as_str().to_string(),
                data_source_id: r.data_source_id.clone(),
                probe: match &r.probe {
                    None => "not probed".into(),
                    Some(p) if p.passed() => "passed".into(),
                    Some(_) => "failed".into(),
                },
                probe_code: r
                    .probe
                    .as_ref()
                    .and_then(|p| p.failure.as_ref())
                    .map(|f| f.code.to_string()),
                last_change: self.changed_at.get(&r.name).cloned().unwrap_or_default(),
                last_error: r.outcome.is_failure().then(|| r.detail.clone()),
                reach: r.reach.clone(),
            })
            .collect();
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        st.cluster_id = self.cfg.agent.cluster_id.clone();
        st.summary = self.status_line();
        st.config_ok = self.reload_error.is_none();
        st.config_error = self.reload_error.clone();
        st.last_reload_at = self.last_reload_at.clone();
        st.last_pass_at = self.last_pass_at.clone();
        st.pass_error = self.pass_error.clone();
        st.sources = sources;
    }

    /// One reload, told to systemd as `RELOADING=1` (with `MONOTONIC_USEC`, which systemd 253+
    /// requires) … `READY=1`, whatever its result.
    async fn reload(&mut self, why: &'static str) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => notify(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading configuration"),
            ]),
            Err(e) => tracing::debug!(error = %e, "no monotonic clock for MONOTONIC_USEC"),
        }
        self.reload_config(why).await;
        self.last_reload_at = now_rfc3339();
        crate::metrics::global().config_loaded(self.reload_error.is_none());
        notify(&[NotifyState::Ready]);
    }

    /// Load the config again (secrets are re-read); on success reconcile what changed, on
    /// failure keep running the last good config.
    async fn reload_config(&mut self, why: &'static str) {
        tracing::info!(trigger = why, "reloading configuration");
        let new = match config::load(&self.config_path) {
            Ok(c) => c,
            Err(errs) => {
                for e in &errs.errors {
                    tracing::error!("{e}");
                }
                tracing::error!(
                    errors = errs.errors.len(),
                    "configuration invalid; still running the last good configuration"
                );
                let first = errs
                    .errors
                    .first()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                self.reload_error = Some(format!(
                    "{} error(s); first: {}",
                    errs.errors.len(),
                    first.lines().next().unwrap_or_default()
                ));
                return;
            }
        };
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        let diff = Diff::between(&self.cfg, &new);
        if new.agent.state_dir != self.cfg.agent.state_dir {
            tracing::warn!(
                old = %self.cfg.agent.state_dir.display(),
                new = %new.agent.state_dir.display(),
                "state_dir changed: restart the service to move to it; still using the old one"
            );
        }
        if new.control_plane != self.cfg.control_plane {
            match HbrClient::new(&new.control_plane) {
                Ok(c) => self.client = c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot set up the HBR client for the new config; keeping the last good configuration");
                    self.reload_error = Some(format!("cannot set up the HBR client: {e}"));
                    return;
                }
            }
        }
        self.reload_error = None;
        let global = new.agent.cluster_id != self.cfg.agent.cluster_id
            || new.control_plane != self.cfg.control_plane
            || new.agent.register_on_probe_failure != self.cfg.agent.register_on_probe_failure;
        let mut agent = new.agent.clone();
        agent.state_dir = self.cfg.agent.state_dir.clone();
        self.cfg = Config { agent, ..new };
        if global {
            self.pass(None).await;
        } else if !diff.added.is_empty() || !diff.changed.is_empty() || !diff.removed.is_empty() {
            let only: BTreeSet<String> = diff.added.iter().chain(&diff.changed).cloned().collect();
            self.pass(Some(&only)).await;
        }
        // The result, once: per source added / updated / removed from config / failed.
        let failed = |n: &&String| {
            self.last_results
                .get(*n)
                .is_some_and(|r| r.outcome.is_failure())
        };
        let (added, updated): (Vec<&String>, Vec<&String>) = (
            diff.added.iter().filter(|n| !failed(n)).collect(),
            diff.changed.iter().filter(|n| !failed(n)).collect(),
        );
        let failures: Vec<String> = diff
            .added
            .iter()
            .chain(&diff.changed)
            .filter(|n| failed(n))
            .filter_map(|n| self.last_results.get(n))
            .map(|r| format!("{}: {}", r.name, failure_word(r)))
            .collect();
        let msg = if self.pass_error.is_some() {
            "configuration reloaded; HBR could not be read, retrying"
        } else {
            "configuration reloaded"
        };
        if failures.is_empty() {
            tracing::info!(?added, ?updated, removed_from_config = ?diff.removed, unchanged = diff.unchanged, "{msg}");
        } else {
            tracing::warn!(?added, ?updated, removed_from_config = ?diff.removed, unchanged = diff.unchanged, failed = ?failures, "{msg}");
        }
    }

    fn shutdown(self, why: &'static str) -> anyhow::Result<ExitCode> {
        notify(&[NotifyState::Stopping]);
        tracing::info!(signal = why, "stopping");
        if let Some(p) = &self.socket {
            let _ = std::fs::remove_file(p);
        }
        self.store.save(&self.state)?;
        Ok(ExitCode::from(exit::OK))
    }
}

/// The failure code of a probe failure, else the outcome ("failed", "conflict").
fn failure_word(r: &SourceResult) -> String {
    match r.probe.as_ref().and_then(|p| p.failure.as_ref()) {
        Some(f) if r.outcome == reconcile::Outcome::ProbeFailed => f.code.to_string(),
        _ => r.outcome.as_str().to_string(),
    }
}

/// Sources added, changed and removed between two configs, by name.
struct Diff {
    added: Vec<String>,
    changed: Vec<String>,
    removed: Vec<String>,
    unchanged: usize,
}

impl Diff {
    fn between(old: &Config, new: &Config) -> Diff {
        let mut d = Diff {
            added: vec![],
            changed: vec![],
            removed: vec![],
            unchanged: 0,
        };
        for (name, src) in &new.sources {
            match old.sources.get(name) {
                None => d.added.push(name.clone()),
                // Origin (file and line) moving is no change to HBR.
                Some(o)
                    if o.spec != src.spec
                        || o.archive != src.archive
                        || o.connection_info_extra != src.connection_info_extra =>
                {
                    d.changed.push(name.clone())
                }
                Some(_) => d.unchanged += 1,
            }
        }
        d.removed = old
            .sources
            .keys()
            .filter(|n| !new.sources.contains_key(*n))
            .cloned()
            .collect();
        d
    }
}

/// Watches the directory of the main config and its `conf.d/` (not recursively: the main file
/// may live in a big directory such as `/etc`) and sends a message for each relevant change;
/// the main loop waits for the files to settle ([`SETTLE_QUIET`]) before it reloads. Watching
/// directories, not files, survives editors' and config management's rename-replace;
/// `Access` events (our own reads) are ignored. The raw inotify watcher blocks in `read`, so
/// an idle daemon is not woken by it (a debouncer's ticking thread woke it 5 to 40 times a
/// second, docs/benchmarks.md).
struct ConfigWatcher {
    watcher: notify::RecommendedWatcher,
    conf_d: PathBuf,
    conf_d_watched: bool,
}

impl ConfigWatcher {
    fn start(main: &Path, tx: mpsc::Sender<()>) -> anyhow::Result<ConfigWatcher> {
        let main_abs = std::path::absolute(main).context("cannot resolve the config path")?;
        let dir = main_abs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let conf_d = dir.join("conf.d");
        let relevant = {
            let conf_d = conf_d.clone();
            move |p: &Path| {
                p == main_abs
                    || p == conf_d
                    || (p.parent() == Some(conf_d.as_path())
                        && p.extension().is_some_and(|e| e == "toml"))
            }
        };
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            match res {
                Ok(ev) => {
                    if !matches!(ev.kind, EventKind::Access(_))
                        && ev.paths.iter().any(|p| relevant(p))
                    {
                        // Full channel: a change is already pending; the reload reads the
                        // files as they are then.
                        let _ = tx.try_send(());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "config watcher error"),
            }
        })
        .context("cannot start the config watcher")?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
        let mut w = ConfigWatcher {
            watcher,
            conf_d,
            conf_d_watched: false,
        };
        w.refresh();
        Ok(w)
    }

    /// Watch `conf.d/` once it exists (it may be created after start; its creation is itself
    /// an event in the watched parent, and the reload it triggers reads what is in it).
    fn refresh(&mut self) {
        if self.conf_d_watched || !self.conf_d.is_dir() {
            return;
        }
        match self
            .watcher
            .watch(&self.conf_d, RecursiveMode::NonRecursive)
        {
            Ok(()) => self.conf_d_watched = true,
            Err(e) => {
                tracing::warn!(dir = %self.conf_d.display(), error = %e, "cannot watch conf.d; use SIGHUP to reload")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_passes_retry_sooner_with_backoff() {
        let hour = Duration::from_secs(3600);
        assert_eq!(next_pass_in(0, hour), hour);
        assert_eq!(next_pass_in(1, hour), Duration::from_secs(60));
        assert_eq!(next_pass_in(2, hour), Duration::from_secs(120));
        assert_eq!(next_pass_in(7, hour), hour);
        assert_eq!(next_pass_in(u32::MAX, hour), hour);
        assert_eq!(
            next_pass_in(1, Duration::from_secs(30)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let base = Duration::from_secs(3600);
        for _ in 0..1000 {
            let j = jittered(base);
            assert!(j >= base.mul_f64(0.9) && j <= base.mul_f64(1.1), "{j:?}");
        }
    }
}
