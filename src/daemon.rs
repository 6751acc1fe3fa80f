//! `run`: the long-lived service (DESIGN.md §7). Signal handlers first; a first reconcile pass,
//! then `READY=1`; SIGHUP and config-file changes go through one reload path (a bad config
//! keeps the last good one running); a jittered anti-entropy pass every `reprobe_interval`;
//! SIGTERM finishes or abandons the pass in flight within a bound, writes state, exits 0.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use notify::{EventKind, RecursiveMode};
use sd_notify::NotifyState;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use crate::cli::{self, Cli, exit};
use crate::config::{self, Config};
use crate::hbr::client::HbrClient;
use crate::reconcile::{self, Mode, PassReport, SourceResult};
use crate::state::{State, StateStore};

/// How long SIGTERM waits for a pass in flight before abandoning it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How far each `EXTEND_TIMEOUT_USEC` during the first pass pushes systemd's start timeout.
const START_EXTENSION: Duration = Duration::from_secs(60);
/// Config file events closer together than this are one reload.
const DEBOUNCE: Duration = Duration::from_millis(500);

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
    reload_ok: bool,
}

pub async fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    // Before anything else: a SIGTERM during start-up must still end cleanly.
    let (mut signals, mut hup) = Signals::install().context("cannot install signal handlers")?;
    let cfg = match cli::load_config(cli, false) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let store = StateStore::open(&cfg.agent.state_dir)?;
    let key = store.hmac_key()?;
    let state = store.load()?;
    let client = HbrClient::new(&cfg.control_plane).context("cannot set up the HBR client")?;
    let (reload_tx, mut reload_rx) = mpsc::channel::<()>(1);
    let mut watcher = ConfigWatcher::start(&cli.config, reload_tx)?;
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
        reload_ok: true,
    };

    // READY=1 comes after the first pass, whose length depends on the endpoints and HBR. Every
    // probe and call in it has a deadline, so it ends; but many sources behind a throttling
    // HBR can outlast TimeoutStartSec, so the start timeout is extended while it runs.
    notify(&[NotifyState::Status("first reconcile pass")]);
    let first_pass = async {
        let keep_alive = async {
            loop {
                notify(&[NotifyState::ExtendTimeoutUsec(
                    START_EXTENSION.as_micros() as u32
                )]);
                tokio::time::sleep(START_EXTENSION / 3).await;
            }
        };
        tokio::select! {
            () = d.pass(None) => {}
            () = keep_alive => {}
        }
    };
    if let Some(why) = guarded(first_pass, &mut signals).await {
        return d.shutdown(why);
    }
    notify(&[NotifyState::Ready, NotifyState::Status(&d.status_line())]);

    loop {
        let wait = jittered(d.next_pass_in());
        let trigger = tokio::select! {
            why = signals.stop() => return d.shutdown(why),
            _ = hup.recv() => Trigger::Reload("SIGHUP"),
            Some(()) = reload_rx.recv() => Trigger::Reload("config file changed"),
            _ = tokio::time::sleep(wait) => Trigger::AntiEntropy,
        };
        let stopped = match trigger {
            Trigger::Reload(why) => {
                watcher.refresh();
                guarded(d.reload(why), &mut signals).await
            }
            Trigger::AntiEntropy => {
                tracing::info!("periodic re-probe and HBR check");
                guarded(d.pass(None), &mut signals).await
            }
        };
        if let Some(why) = stopped {
            return d.shutdown(why);
        }
        notify(&[NotifyState::Status(&d.status_line())]);
    }
}

enum Trigger {
    Reload(&'static str),
    AntiEntropy,
}

/// Run `work`; if a stop signal arrives meanwhile, give it [`SHUTDOWN_GRACE`] to finish and
/// return which signal it was.
async fn guarded<F: Future<Output = ()>>(work: F, signals: &mut Signals) -> Option<&'static str> {
    tokio::pin!(work);
    tokio::select! {
        () = &mut work => None,
        why = signals.stop() => {
            tracing::info!(signal = why, grace = ?SHUTDOWN_GRACE, "stopping; letting the pass in flight finish");
            notify(&[NotifyState::Stopping]);
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut work).await.is_err() {
                tracing::warn!("abandoned the pass in flight; the next start describes HBR before adding anything");
            }
            Some(why)
        }
    }
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
        if !self.reload_ok {
            s.push_str("; config reload failed, running the last good config");
        }
        s
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
            let unchanged = self
                .last_results
                .get(&s.name)
                .is_some_and(|old| old.outcome == s.outcome && old.detail == s.detail);
            if !unchanged {
                let id = s.data_source_id.as_deref().unwrap_or("-");
                if s.outcome.is_failure() {
                    tracing::warn!(source = %s.name, outcome = s.outcome.as_str(), data_source_id = id, "{}", s.detail);
                } else {
                    tracing::info!(source = %s.name, outcome = s.outcome.as_str(), data_source_id = id, "{}", s.detail);
                }
            }
            self.last_results.insert(s.name.clone(), s);
        }
        // Forget sources that left both the config and the state.
        let (cfg, state) = (&self.cfg, &self.state);
        self.last_results
            .retain(|name, _| cfg.sources.contains_key(name) || state.sources.contains_key(name));
    }

    /// Load the config again (secrets are re-read); on success reconcile what changed, on
    /// failure keep running the last good config.
    async fn reload(&mut self, why: &'static str) {
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
                self.reload_ok = false;
                return;
            }
        };
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        self.reload_ok = true;
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
                    self.reload_ok = false;
                    return;
                }
            }
        }
        let global = new.agent.cluster_id != self.cfg.agent.cluster_id
            || new.control_plane != self.cfg.control_plane
            || new.agent.register_on_probe_failure != self.cfg.agent.register_on_probe_failure;
        let mut agent = new.agent.clone();
        agent.state_dir = self.cfg.agent.state_dir.clone();
        self.cfg = Config { agent, ..new };
        tracing::info!(
            added = ?diff.added, changed = ?diff.changed, removed = ?diff.removed,
            unchanged = diff.unchanged,
            "configuration reloaded"
        );
        if global {
            self.pass(None).await;
        } else if !diff.added.is_empty() || !diff.changed.is_empty() || !diff.removed.is_empty() {
            let only: BTreeSet<String> = diff.added.iter().chain(&diff.changed).cloned().collect();
            self.pass(Some(&only)).await;
        }
    }

    fn shutdown(self, why: &'static str) -> anyhow::Result<ExitCode> {
        notify(&[NotifyState::Stopping]);
        tracing::info!(signal = why, "stopping");
        self.store.save(&self.state)?;
        Ok(ExitCode::from(exit::OK))
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

type Debouncer = notify_debouncer_full::Debouncer<
    notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

/// Watches the directory of the main config and its `conf.d/` (not recursively: the main file
/// may live in a big directory such as `/etc`) and sends one message per burst of relevant
/// changes. Watching directories, not files, survives editors' and config management's
/// rename-replace; `Access` events (our own reads) are ignored.
struct ConfigWatcher {
    debouncer: Debouncer,
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
        let mut debouncer = notify_debouncer_full::new_debouncer(
            DEBOUNCE,
            None,
            move |res: notify_debouncer_full::DebounceEventResult| match res {
                Ok(events) => {
                    let hit = events.iter().any(|ev| {
                        !matches!(ev.event.kind, EventKind::Access(_))
                            && ev.event.paths.iter().any(|p| relevant(p))
                    });
                    if hit {
                        // Full channel: a reload is already pending and will read the latest.
                        let _ = tx.try_send(());
                    }
                }
                Err(errors) => {
                    for e in errors {
                        tracing::warn!(error = %e, "config watcher error");
                    }
                }
            },
        )
        .context("cannot start the config watcher")?;
        debouncer
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
        let mut w = ConfigWatcher {
            debouncer,
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
            .debouncer
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
