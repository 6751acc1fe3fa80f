//! One reconcile pass (DESIGN.md §4): read HBR's view, probe every desired source, then per
//! source add / update / leave in sync / report the probe failure, and report sources this
//! agent registered that left the config (orphaned, never removed). `plan` runs the same pass
//! without writing anything.
//!
//! Invariants: a source whose probe failed is never added or updated; a name is looked up in
//! HBR before any add (so a lost state file never duplicates); an uncertain add is resolved by
//! describing again, never by adding again. Up to `write_concurrency` HBR writes are in flight
//! at once (never two for one source); state is saved once those in flight have answered, at
//! least every 200 ms while they keep coming, and at the end of the pass (docs/reliability.md:
//! why a record lost in a crash never duplicates nor loses a registration).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use futures::StreamExt as _;
use serde::Serialize;

use crate::config::{Config, Source};
use crate::desired;
use crate::hbr::{DataSourceRequest, RemoteDataSource};
use crate::probe::{self, ProbeReport};
use crate::state::{ProbeSummary, SourceState, State, StateStore};

/// What the reconciler needs from HBR. The real client implements it; unit tests use a map.
pub trait Registry: Sync {
    type Error: std::fmt::Display;

    /// True when the request may or may not have taken effect (sent, then no answer).
    fn outcome_unknown(err: &Self::Error) -> bool;

    fn describe(
        &self,
        cluster_id: &str,
    ) -> impl Future<Output = Result<Vec<RemoteDataSource>, Self::Error>> + Send;

    /// Returns (DataSourceId, RequestId).
    fn add(
        &self,
        req: &DataSourceRequest,
    ) -> impl Future<Output = Result<(String, String), Self::Error>> + Send;

    /// Returns the RequestId.
    fn update(
        &self,
        data_source_id: &str,
        req: &DataSourceRequest,
    ) -> impl Future<Output = Result<String, Self::Error>> + Send;

    /// The data sources a pass that may write `names` and checks the orphans `ids` needs:
    /// at least every one named exactly one of `names` or with one of `ids`, possibly more
    /// (the map implementation lists everything). Nothing when both are empty.
    fn describe_for(
        &self,
        cluster_id: &str,
        names: &[String],
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<RemoteDataSource>, Self::Error>> + Send {
        async move {
            if names.is_empty() && ids.is_empty() {
                return Ok(Vec::new());
            }
            self.describe(cluster_id).await
        }
    }

    /// Fleet mode: the client group's backup clients (DescribeBackupClients, all pages).
    fn backup_clients(
        &self,
        _cluster_id: &str,
    ) -> impl Future<Output = Result<Vec<crate::hbr::client::BackupClient>, Self::Error>> + Send
    {
        async { Ok(Vec::new()) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Compute what would change; write nothing, call nothing but DescribeDataSources.
    Plan,
    Apply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Plan: would call AddDataSource.
    Add,
    /// Plan: would call UpdateDataSource.
    Update,
    Added,
    Updated,
    InSync,
    /// Not registered or updated: the probe failed.
    ProbeFailed,
    /// Registered by this agent, no longer in the config; left in HBR.
    Orphaned,
    /// HBR holds something under this name that the agent will not touch.
    Conflict,
    /// HBR refused or could not be reached.
    Failed,
    /// Fleet mode: probed here, written by another member (the detail names it).
    OtherOwner,
    /// Fleet mode: owned here only since the membership changed; added on a later pass if
    /// that holds (so two hosts reading membership around a change never both add).
    Deferred,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Add => "add",
            Outcome::Update => "update",
            Outcome::Added => "added",
            Outcome::Updated => "updated",
            Outcome::InSync => "in_sync",
            Outcome::ProbeFailed => "probe_failed",
            Outcome::Orphaned => "orphaned",
            Outcome::Conflict => "conflict",
            Outcome::Failed => "failed",
            Outcome::OtherOwner => "other_owner",
            Outcome::Deferred => "deferred",
        }
    }

    pub fn is_change(self) -> bool {
        matches!(
            self,
            Outcome::Add | Outcome::Update | Outcome::Added | Outcome::Updated
        )
    }

    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::ProbeFailed | Outcome::Conflict | Outcome::Failed
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceResult {
    pub name: String,
    /// Config kind (`nas`, `filesystem`, …); empty for an orphan.
    pub kind: &'static str,
    pub data_source_type: String,
    pub outcome: Outcome,
    pub data_source_id: Option<String>,
    /// Why: the update reasons, the conflict, the error (HBR Code, Message, RequestId).
    pub detail: String,
    pub request_id: Option<String>,
    pub probe: Option<ProbeReport>,
    /// Non-secret parameters that would be / were sent (plan and apply output).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<BTreeMap<String, String>>,
    /// Whether a Credential is sent (its value never is shown).
    pub credential: bool,
    /// Fleet strict mode, on the owner: how the live members reach the source
    /// (`PARTIAL_REACHABILITY`, docs/fleet.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reach: Option<crate::fleet::reach::Reach>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    pub cluster_id: String,
    pub sources: Vec<SourceResult>,
}

impl PassReport {
    pub fn failed(&self) -> bool {
        self.sources.iter().any(|s| s.outcome.is_failure())
    }

    pub fn changes(&self) -> bool {
        self.sources.iter().any(|s| s.outcome.is_change())
    }

    /// "4/5 in sync; finance: SMB_LOGON_FAILURE" (for `STATUS=` and logs).
    pub fn summary(&self) -> String {
        let desired: Vec<&SourceResult> = self
            .sources
            .iter()
            .filter(|s| {
                !matches!(
                    s.outcome,
                    Outcome::Orphaned | Outcome::OtherOwner | Outcome::Deferred
                )
            })
            .collect();
        let others = self
            .sources
            .iter()
            .filter(|s| s.outcome == Outcome::OtherOwner)
            .count();
        let ok = desired
            .iter()
            .filter(|s| {
                matches!(
                    s.outcome,
                    Outcome::InSync | Outcome::Added | Outcome::Updated
                )
            })
            .count();
        let mut out = format!("{ok}/{} in sync", desired.len());
        if others > 0 {
            out.push_str(&format!(" ({others} owned by other members)"));
        }
        for s in desired.iter().filter(|s| s.outcome.is_failure()) {
            let what = s
                .probe
                .as_ref()
                .and_then(|p| p.failure.as_ref())
                .filter(|_| s.outcome == Outcome::ProbeFailed)
                .map_or_else(|| s.outcome.as_str().to_string(), |f| f.code.to_string());
            out.push_str(&format!("; {}: {what}", s.name));
        }
        for s in desired
            .iter()
            .filter(|s| s.reach.as_ref().is_some_and(|r| r.partial()))
        {
            out.push_str(&format!(
                "; {}: {}",
                s.name,
                crate::probe::Code::PARTIAL_REACHABILITY
            ));
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("cannot read the data sources of {cluster_id} from HBR: {message}")]
    Describe { cluster_id: String, message: String },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Probe `sources` with at most `concurrency` at a time, each under `deadline`.
pub async fn probe_all(
    sources: &[&Source],
    concurrency: usize,
    deadline: Duration,
) -> BTreeMap<String, ProbeReport> {
    futures::stream::iter(sources.iter().copied())
        .map(|s| probe::probe_source(s, deadline))
        .buffer_unordered(concurrency.max(1))
        .map(|r| (r.source.clone(), r))
        .collect()
        .await
}

/// Start one probe task per source, at most `concurrency` probing at a time.
fn spawn_probes(
    sources: &[&Source],
    concurrency: usize,
    deadline: Duration,
) -> tokio::task::JoinSet<ProbeReport> {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for source in sources {
        let source = (*source).clone();
        let slots = slots.clone();
        set.spawn(async move {
            let _slot = slots.acquire_owned().await;
            // Boxed, so that a task waiting for its slot holds a pointer, not the whole probe
            // future (kilobytes per kind): 10,000 waiting tasks cost 185 MB before this.
            Box::pin(probe::probe_source(&source, deadline)).await
        });
    }
    set
}

fn probe_result(done: Result<ProbeReport, tokio::task::JoinError>) -> Option<ProbeReport> {
    match done {
        Ok(report) => Some(report),
        Err(e) => {
            tracing::error!(error = %e, "a probe task ended without a report");
            None
        }
    }
}

/// One pass over the sources named in `only` (all when `None`). Orphans are always reported.
pub async fn run_pass<R: Registry>(
    cfg: &Config,
    registry: &R,
    mode: Mode,
    only: Option<&BTreeSet<String>>,
    state: &mut State,
    store: Option<&StateStore>,
    hmac_key: &[u8],
) -> Result<PassReport, PassError> {
    let cluster_id = cfg.agent.cluster_id.clone();
    let wanted: Vec<&Source> = cfg
        .sources
        .values()
        .filter(|s| only.is_none_or(|o| o.contains(&s.name)))
        .collect();
    // Probes run as tasks of their own, so that a source is reconciled the moment its probe
    // ends: a good source is registered within its own probe time, however many others hang
    // until their deadline. Dropping the set (a cancelled pass) aborts the probes.
    let mut probes = spawn_probes(
        &wanted,
        cfg.agent.probe_concurrency.get(),
        cfg.agent.probe_timeout,
    );
    let mut finished: Vec<ProbeReport> = Vec::new();
    // Orphans of this client group are looked up by id (their registration may be gone).
    let orphan_ids: Vec<String> = if state.cluster_id == cluster_id {
        state
            .sources
            .iter()
            .filter(|(name, _)| !cfg.sources.contains_key(*name))
            .filter_map(|(_, e)| e.data_source_id.clone())
            .collect()
    } else {
        Vec::new()
    };
    let remote = {
        // Membership first: only the sources this host may write are read from HBR (none at
        // all on a host that owns none), so the fleet's describe volume stays bounded.
        let describe = async {
            let ownership = match fleet_view(cfg, registry, &cluster_id, mode).await {
                Ok(o) => o,
                Err(e) => return (Ok(Vec::new()), Err(e), Vec::new()),
            };
            let names = ownership.owned(wanted.iter().map(|s| s.name.as_str()));
            let remote = registry
                .describe_for(&cluster_id, &names, &orphan_ids)
                .await;
            (remote, Ok(ownership), names)
        };
        tokio::pin!(describe);
        loop {
            tokio::select! {
                r = &mut describe => break r,
                Some(done) = probes.join_next() => finished.extend(probe_result(done)),
            }
        }
    };
    let (remote, ownership, names) = remote;
    let remote = remote.map_err(|e| PassError::Describe {
        cluster_id: cluster_id.clone(),
        message: e.to_string(),
    })?;
    let (ownership, lease) = take_locks(cfg, mode, ownership?, &wanted).await?;
    // Strict mode: look again now that the locks are held, so that an add by the previous
    // holder, landed after the first describe, is seen before this host adds.
    let remote = match &lease {
        Some(_) => registry
            .describe_for(&cluster_id, &names, &orphan_ids)
            .await
            .map_err(|e| PassError::Describe {
                cluster_id: cluster_id.clone(),
                message: e.to_string(),
            })?,
        None => remote,
    };
    if state.cluster_id != cluster_id {
        if !state.cluster_id.is_empty() {
            tracing::warn!(
                old = %state.cluster_id,
                new = %cluster_id,
                "cluster_id changed: records of the old client group are not used"
            );
        }
        state.cluster_id = cluster_id.clone();
        state.sources.clear();
    }

    let mut results = Vec::new();
    let mut pending: BTreeMap<&str, &Source> =
        wanted.iter().map(|s| (s.name.as_str(), *s)).collect();
    // HBR writes run up to `write_concurrency` at a time while further probes are decided; each
    // result is recorded in `state` the moment it answers, and the state file is written in
    // batches (see `Saves`). A source is decided once per pass, so two writes for one name are
    // never in flight.
    let write_limit = cfg.agent.write_concurrency.get();
    let mut writes = futures::stream::FuturesUnordered::new();
    let mut saves = Saves::new(mode, store);
    let mut probes_done = false;
    loop {
        if probes_done && writes.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some((write, outcome)) = writes.next(), if !writes.is_empty() => {
                results.push(record_write(state, write, outcome));
                saves.accepted();
            }
            next = next_report(&mut finished, &mut probes), if !probes_done && writes.len() < write_limit => {
                let report = match next {
                    Some(Some(report)) => report,
                    Some(None) => continue,
                    None => {
                        probes_done = true;
                        continue;
                    }
                };
                let Some(source) = pending.remove(report.source.as_str()) else {
                    continue;
                };
                match decide(cfg, mode, source, Some(report), &remote, &ownership, state, hmac_key) {
                    Decision::Done(result) => {
                        results.push(result);
                        saves.touched();
                    }
                    Decision::Write(write) => writes.push(send(registry, &cfg.agent.cluster_id, write)),
                }
            }
            else => break,
        }
        saves.maybe_save(state, writes.is_empty())?;
    }
    // A probe task that panicked left no report: the source is reported as not probed.
    for source in pending.into_values() {
        let result = match decide(
            cfg, mode, source, None, &remote, &ownership, state, hmac_key,
        ) {
            Decision::Done(result) => result,
            Decision::Write(write) => {
                let (write, outcome) = send(registry, &cfg.agent.cluster_id, write).await;
                record_write(state, write, outcome)
            }
        };
        results.push(result);
    }
    results.sort_by(|a, b| a.name.cmp(&b.name));
    fleet_reach(cfg, mode, &ownership, &mut results).await;
    if let Some(lease) = lease {
        lease.release().await;
    }

    for (name, entry) in state.sources.iter() {
        if cfg.sources.contains_key(name) {
            continue;
        }
        let Some(id) = entry.data_source_id.clone() else {
            continue;
        };
        let present = remote.iter().any(|r| r.data_source_id == id);
        results.push(SourceResult {
            name: name.clone(),
            kind: "",
            data_source_type: entry.data_source_type.clone(),
            outcome: Outcome::Orphaned,
            data_source_id: Some(id),
            detail: if present {
                "registered by this agent but no longer in the config; left in HBR (remove it \
                 in the console if that is intended)"
                    .into()
            } else {
                "no longer in the config and no longer in HBR".into()
            },
            request_id: None,
            probe: None,
            params: None,
            credential: false,
            reach: None,
        });
    }
    if mode == Mode::Apply {
        // Forget orphans HBR no longer has: nothing is left to report on.
        let gone: Vec<String> = state
            .sources
            .iter()
            .filter(|(name, e)| {
                !cfg.sources.contains_key(*name)
                    && e.data_source_id
                        .as_ref()
                        .is_none_or(|id| !remote.iter().any(|r| &r.data_source_id == id))
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            state.sources.remove(&name);
        }
        if let Some(store) = store {
            store.save(state)?;
        }
    }
    Ok(PassReport {
        cluster_id,
        sources: results,
    })
}

/// The next probe report: one that ended while HBR was described, else the next to end;
/// `Some(None)` for a task that ended without one, `None` when all have ended.
async fn next_report(
    finished: &mut Vec<ProbeReport>,
    probes: &mut tokio::task::JoinSet<ProbeReport>,
) -> Option<Option<ProbeReport>> {
    if let Some(report) = finished.pop() {
        return Some(Some(report));
    }
    probes.join_next().await.map(probe_result)
}

/// When the state file is written during a pass (`apply` only). A write per source cost an
/// fsync'd rewrite of the whole file each time (~19 ms a source at 1,000 sources), and it is
/// not what keeps reconcile safe: names are looked up in HBR before any add, so a record lost
/// in a crash costs at most an adoption (or one UpdateDataSource for a source with a
/// Credential) on the next pass, never a duplicate (docs/reliability.md). So the file is
/// written once the HBR writes in flight have all answered, at least every [`SAVE_EVERY`]
/// while they keep coming or while only probe results change, and at the end of the pass.
struct Saves<'a> {
    store: Option<&'a StateStore>,
    /// HBR accepted or refused a write since the last save.
    accepted: bool,
    /// Anything else in the state changed (probe results, outcomes).
    touched: bool,
    last: tokio::time::Instant,
}

const SAVE_EVERY: Duration = Duration::from_millis(200);

impl<'a> Saves<'a> {
    fn new(mode: Mode, store: Option<&'a StateStore>) -> Saves<'a> {
        Saves {
            store: store.filter(|_| mode == Mode::Apply),
            accepted: false,
            touched: false,
            last: tokio::time::Instant::now(),
        }
    }

    fn accepted(&mut self) {
        self.accepted = true;
    }

    fn touched(&mut self) {
        self.touched = true;
    }

    fn maybe_save(&mut self, state: &State, drained: bool) -> Result<(), PassError> {
        let Some(store) = self.store else {
            return Ok(());
        };
        let due = self.last.elapsed() >= SAVE_EVERY;
        if (self.accepted && (drained || due)) || (self.touched && due) {
            store.save(state)?;
            self.accepted = false;
            self.touched = false;
            self.last = tokio::time::Instant::now();
        }
        Ok(())
    }
}

/// What to do for one source: nothing more (the result is final) or one HBR write.
enum Decision {
    Done(SourceResult),
    Write(Write),
}

/// An HBR write decided for a source, with what to record once HBR answers.
struct Write {
    result: SourceResult,
    req: DataSourceRequest,
    hash: String,
    hmac: Option<String>,
    call: Call,
}

enum Call {
    /// `readd`: the state knew this source, HBR no longer has it.
    Add {
        readd: bool,
    },
    Update {
        data_source_id: String,
    },
}

/// What HBR's answer came to.
enum Answer {
    /// Added: the id, the RequestId (empty when confirmed by describing), the detail.
    Added(String, String, String),
    /// Updated: the id, the RequestId.
    Updated(String, String),
    Failed(String),
}

/// Decide what `source` needs, recording its probe in `state`. No I/O.
#[allow(clippy::too_many_arguments)]
fn decide(
    cfg: &Config,
    mode: Mode,
    source: &Source,
    probe: Option<ProbeReport>,
    remote: &[RemoteDataSource],
    ownership: &crate::fleet::Ownership,
    state: &mut State,
    hmac_key: &[u8],
) -> Decision {
    let req = desired::request(source, &cfg.agent.cluster_id);
    let hash = desired::spec_hash(&req);
    let hmac = desired::secret_hmac(&req, hmac_key);
    let entry = state.sources.entry(source.name.clone()).or_default();
    entry.data_source_type = desired::data_source_type(&source.spec).to_string();
    if let Some(p) = &probe {
        entry.last_probe = Some(ProbeSummary {
            passed: p.passed(),
            code: p.failure.as_ref().map(|f| f.code.to_string()),
            reason: p.failure.as_ref().map(|f| f.reason.clone()),
            at: now_rfc3339(),
        });
    }
    let mut result = SourceResult {
        name: source.name.clone(),
        kind: source.spec.kind(),
        data_source_type: entry.data_source_type.clone(),
        outcome: Outcome::InSync,
        data_source_id: None,
        detail: String::new(),
        request_id: None,
        probe: probe.clone(),
        params: Some(req.params.clone()),
        credential: req.credential.is_some(),
        reach: None,
    };
    let done =
        |entry: &mut SourceState, result: SourceResult| Decision::Done(finish(entry, result));

    let probe_passed = probe.as_ref().is_some_and(ProbeReport::passed);
    if !probe_passed && !cfg.agent.register_on_probe_failure {
        result.outcome = Outcome::ProbeFailed;
        result.data_source_id = entry.data_source_id.clone();
        result.detail = match probe.as_ref().and_then(|p| p.failure.as_ref()) {
            Some(f) => format!("{}: {} (not registered or updated)", f.code, f.reason),
            None => "not probed".into(),
        };
        return done(entry, result);
    }

    // Fleet: every host probes and reports; only the owner writes.
    if let Err(why) = ownership.may_write(&source.name) {
        result.outcome = Outcome::OtherOwner;
        result.data_source_id = remote
            .iter()
            .find(|r| r.data_source_name == source.name)
            .map(|r| r.data_source_id.clone());
        result.detail = why;
        return done(entry, result);
    }

    let same_name: Vec<&RemoteDataSource> = remote
        .iter()
        .filter(|r| r.data_source_name == source.name)
        .collect();
    let target = match same_name.as_slice() {
        [] => None,
        [one] => Some(*one),
        many => {
            result.outcome = Outcome::Conflict;
            result.detail = format!(
                "HBR holds {} data sources named {:?} ({}); the agent will not pick one: remove \
                 the duplicates in the console",
                many.len(),
                source.name,
                many.iter()
                    .map(|r| r.data_source_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return done(entry, result);
        }
    };

    let Some(target) = target else {
        if let Err(why) = ownership.may_add(&source.name) {
            result.outcome = Outcome::Deferred;
            result.detail = why;
            return done(entry, result);
        }
        let readd = entry.data_source_id.is_some();
        if mode == Mode::Plan {
            result.outcome = Outcome::Add;
            result.detail = if readd {
                "was registered but is no longer in HBR; would add it again".into()
            } else {
                "not in HBR".into()
            };
            return done(entry, result);
        }
        return Decision::Write(Write {
            result,
            req,
            hash,
            hmac,
            call: Call::Add { readd },
        });
    };

    result.data_source_id = Some(target.data_source_id.clone());
    if target.data_source_type != result.data_source_type && !target.data_source_type.is_empty() {
        result.outcome = Outcome::Conflict;
        result.detail = format!(
            "HBR holds {:?} as {} ({}), the config as {}; HBR cannot change a type: rename one \
             of them",
            source.name, target.data_source_type, target.data_source_id, result.data_source_type
        );
        return done(entry, result);
    }

    let mut reasons: Vec<String> = Vec::new();
    let known = entry.data_source_id.as_deref() == Some(target.data_source_id.as_str())
        && entry.spec_hash.is_some();
    if known {
        if entry.spec_hash.as_deref() != Some(hash.as_str()) {
            reasons.push("the config changed".into());
        }
        if entry.secret_hmac != hmac {
            reasons.push("a secret changed".into());
        }
    } else if req.credential.is_some() {
        reasons.push(
            "no record of the credential HBR holds (adopting an existing registration)".into(),
        );
    }
    let drift = desired::remote_differences(target, &req);
    if !drift.is_empty() {
        reasons.push(format!("changed in HBR: {}", drift.join(", ")));
    }

    if reasons.is_empty() {
        result.outcome = Outcome::InSync;
        if !known {
            result.detail = "adopted an existing registration with the same settings".into();
            if mode == Mode::Apply {
                record_sent(entry, &target.data_source_id, &hash, hmac, "");
            }
        }
        return done(entry, result);
    }
    result.detail = reasons.join("; ");
    if mode == Mode::Plan {
        result.outcome = Outcome::Update;
        return done(entry, result);
    }
    Decision::Write(Write {
        result,
        req,
        hash,
        hmac,
        call: Call::Update {
            data_source_id: target.data_source_id.clone(),
        },
    })
}

fn finish(entry: &mut SourceState, result: SourceResult) -> SourceResult {
    entry.outcome = result.outcome.as_str().into();
    entry.error = result.outcome.is_failure().then(|| result.detail.clone());
    entry.updated_at = now_rfc3339();
    result
}

/// Make the HBR call of `write`. Touches no state, so several run at once.
async fn send<R: Registry>(registry: &R, cluster_id: &str, write: Write) -> (Write, Answer) {
    let answer = match &write.call {
        Call::Add { readd } => match registry.add(&write.req).await {
            Ok((id, request_id)) => {
                let detail = if *readd {
                    "was no longer in HBR; added again".into()
                } else {
                    String::new()
                };
                Answer::Added(id, request_id, detail)
            }
            Err(e) if R::outcome_unknown(&e) => {
                // The add may have happened: look, never add twice.
                let name = write.req.name();
                match registry.describe(cluster_id).await {
                    Ok(now) => match now.iter().find(|r| r.data_source_name == name) {
                        Some(found) => Answer::Added(
                            found.data_source_id.clone(),
                            String::new(),
                            format!(
                                "confirmed by DescribeDataSources after an uncertain answer ({e})"
                            ),
                        ),
                        None => Answer::Failed(format!(
                            "AddDataSource outcome unknown ({e}) and HBR does not list it yet; \
                             the next pass looks again before adding"
                        )),
                    },
                    Err(e2) => Answer::Failed(format!(
                        "AddDataSource outcome unknown ({e}) and DescribeDataSources failed \
                         ({e2}); the next pass looks again before adding"
                    )),
                }
            }
            Err(e) => Answer::Failed(format!("AddDataSource failed: {e}")),
        },
        Call::Update { data_source_id } => {
            match registry.update(data_source_id, &write.req).await {
                Ok(request_id) => Answer::Updated(data_source_id.clone(), request_id),
                Err(e) => Answer::Failed(format!(
                    "UpdateDataSource failed ({}): {e}",
                    write.result.detail
                )),
            }
        }
    };
    (write, answer)
}

/// Record HBR's answer to `write` in `state`; the source's final result.
fn record_write(state: &mut State, write: Write, answer: Answer) -> SourceResult {
    let Write {
        mut result,
        hash,
        hmac,
        ..
    } = write;
    let entry = state.sources.entry(result.name.clone()).or_default();
    match answer {
        Answer::Added(id, request_id, detail) => {
            result.outcome = Outcome::Added;
            result.detail = detail;
            record_sent(entry, &id, &hash, hmac, &request_id);
            result.data_source_id = Some(id);
            result.request_id = (!request_id.is_empty()).then_some(request_id);
        }
        Answer::Updated(data_source_id, request_id) => {
            result.outcome = Outcome::Updated;
            record_sent(entry, &data_source_id, &hash, hmac, &request_id);
            result.request_id = Some(request_id);
        }
        Answer::Failed(detail) => {
            result.outcome = Outcome::Failed;
            result.detail = detail;
        }
    }
    finish(entry, result)
}

// ---- fleet wiring (src/fleet) ----

/// Who may write in this pass: everything without `[fleet]`, else HBR's membership hashed.
async fn fleet_view<R: Registry>(
    cfg: &Config,
    registry: &R,
    cluster_id: &str,
    mode: Mode,
) -> Result<crate::fleet::Ownership, crate::fleet::FleetError> {
    let Some(settings) = &cfg.fleet else {
        return Ok(crate::fleet::Ownership::All);
    };
    let me = crate::fleet::identity(settings)?;
    if settings.etcd.is_none() {
        static NOTED: std::sync::Once = std::sync::Once::new();
        NOTED.call_once(|| {
            tracing::info!("fleet: coordination = \"hbr\" has no shared store, so this host reports only its own reachability; PARTIAL_REACHABILITY needs coordination = \"etcd\" or the alert rule in docs/fleet.md");
        });
    }
    let settle = crate::fleet::settle_time(cfg);
    let read = || async {
        let clients = registry.backup_clients(cluster_id).await.map_err(|e| {
            crate::fleet::FleetError::Members {
                cluster_id: cluster_id.to_string(),
                message: e.to_string(),
            }
        })?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        Ok::<_, crate::fleet::FleetError>(crate::fleet::View {
            at: now,
            live: crate::fleet::live_members(&clients, now, settings.heartbeat_timeout),
        })
    };
    let view_file = (mode == Mode::Apply).then(|| cfg.agent.state_dir.join("fleet-view.json"));
    let current = read().await?;
    let previous = match crate::fleet::trusted_previous(
        settings,
        settle,
        view_file.as_deref(),
        &current,
    ) {
        Some(p) => p,
        // Plan never waits: it shows what the next apply would do at best.
        None if mode == Mode::Plan => current.clone(),
        None => {
            // No earlier view to trust (a first pass, or back after a long stop): read again
            // after the settle time, so that an add by a host that read just before a change
            // has landed before this one decides.
            tracing::info!(settle = ?settle, "fleet: no recent membership view; reading it again after the settle time");
            tokio::time::sleep(settle).await;
            let again = read().await?;
            return Ok(crate::fleet::ownership(
                me,
                current,
                again,
                view_file.as_deref(),
            ));
        }
    };
    Ok(crate::fleet::ownership(
        me,
        previous,
        current,
        view_file.as_deref(),
    ))
}

/// Strict mode: publish this host's probe results (apply only) and, for the sources it owns,
/// read the live members' and flag `PARTIAL_REACHABILITY`. Never fails the pass and never
/// changes what was written: etcd trouble here costs the flag, not the registration.
async fn fleet_reach(
    cfg: &Config,
    mode: Mode,
    ownership: &crate::fleet::Ownership,
    results: &mut [SourceResult],
) {
    use crate::fleet::reach;
    let (Some(etcd), crate::fleet::Ownership::Fleet { me, live, .. }) =
        (cfg.fleet.as_ref().and_then(|f| f.etcd.as_ref()), ownership)
    else {
        return;
    };
    let cluster_id = &cfg.agent.cluster_id;
    let spec_of = |name: &str| {
        cfg.sources
            .get(name)
            .map(|s| desired::spec_hash(&desired::request(s, cluster_id)))
    };
    let probed = |r: &SourceResult| {
        r.probe
            .as_ref()
            .map(|p| (p.passed(), p.failure.as_ref().map(|f| f.code.to_string())))
    };
    if mode == Mode::Apply {
        let at = time::OffsetDateTime::now_utc().unix_timestamp();
        let mine: BTreeMap<String, reach::Published> = results
            .iter()
            .filter_map(|r| {
                let (ok, code) = probed(r)?;
                let spec = spec_of(&r.name)?;
                Some((r.name.clone(), reach::Published { ok, code, at, spec }))
            })
            .collect();
        let ttl = reach::lease_ttl(
            cfg.agent.reprobe_interval,
            cfg.agent.probe_timeout,
            etcd.lease_ttl,
        );
        if let Err(e) = reach::publish(etcd, cluster_id, me, ttl, &mine).await {
            tracing::warn!(error = %e, "cannot publish this host's probe results to etcd; owners see it as unknown");
        }
    }
    // Only the owner flags: the others' view of a source is their own probe.
    let owned: Vec<String> = results
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::OtherOwner | Outcome::Orphaned))
        .filter(|r| probed(r).is_some())
        .map(|r| r.name.clone())
        .collect();
    let published = match reach::read(etcd, cluster_id, &owned).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the members' probe results from etcd; PARTIAL_REACHABILITY is not checked this pass");
            return;
        }
    };
    for r in results.iter_mut().filter(|r| owned.contains(&r.name)) {
        let (Some(mine), Some(spec)) = (probed(r), spec_of(&r.name)) else {
            continue;
        };
        let seen = reach::assess(me, mine, live, &spec, published.get(&r.name));
        reach::log_change(&r.name, Some(&seen));
        if seen.partial() {
            if !r.detail.is_empty() {
                r.detail.push_str("; ");
            }
            r.detail.push_str(&seen.message());
        }
        r.reach = Some(seen);
    }
}

/// Strict mode, apply only: the etcd lock of every source this host owns by hashing.
async fn take_locks(
    cfg: &Config,
    mode: Mode,
    ownership: crate::fleet::Ownership,
    wanted: &[&Source],
) -> Result<(crate::fleet::Ownership, Option<crate::fleet::etcd::Lease>), PassError> {
    let etcd = cfg.fleet.as_ref().and_then(|f| f.etcd.as_ref());
    let (
        Some(etcd),
        Mode::Apply,
        crate::fleet::Ownership::Fleet {
            me, live, previous, ..
        },
    ) = (etcd, mode, &ownership)
    else {
        return Ok((ownership, None));
    };
    let owned = ownership.owned(wanted.iter().map(|s| s.name.as_str()));
    let (mut locks, lease) =
        crate::fleet::etcd::acquire(etcd, &cfg.agent.cluster_id, me, &owned).await?;
    locks.alive = Some(lease.alive());
    let ownership = crate::fleet::Ownership::Fleet {
        me: me.clone(),
        live: live.clone(),
        previous: previous.clone(),
        locks: Some(locks),
    };
    Ok((ownership, Some(lease)))
}

fn record_sent(
    entry: &mut SourceState,
    id: &str,
    hash: &str,
    hmac: Option<String>,
    request_id: &str,
) {
    entry.data_source_id = Some(id.to_string());
    entry.spec_hash = Some(hash.to_string());
    entry.secret_hmac = hmac;
    if !request_id.is_empty() {
        entry.last_request_id = Some(request_id.to_string());
    }
}

impl Registry for crate::hbr::client::HbrClient {
    type Error = crate::hbr::HbrError;

    fn outcome_unknown(err: &Self::Error) -> bool {
        matches!(err, crate::hbr::HbrError::OutcomeUnknown { .. })
    }

    async fn describe(&self, cluster_id: &str) -> Result<Vec<RemoteDataSource>, Self::Error> {
        self.describe_data_sources(cluster_id).await
    }

    async fn describe_for(
        &self,
        cluster_id: &str,
        names: &[String],
        ids: &[String],
    ) -> Result<Vec<RemoteDataSource>, Self::Error> {
        self.describe_data_sources_for(cluster_id, names, ids).await
    }

    async fn add(&self, req: &DataSourceRequest) -> Result<(String, String), Self::Error> {
        self.add_data_source(req)
            .await
            .map(|a| (a.data_source_id, a.request_id))
    }

    async fn update(
        &self,
        data_source_id: &str,
        req: &DataSourceRequest,
    ) -> Result<String, Self::Error> {
        self.update_data_source(data_source_id, req).await
    }

    async fn backup_clients(
        &self,
        cluster_id: &str,
    ) -> Result<Vec<crate::hbr::client::BackupClient>, Self::Error> {
        self.describe_backup_clients(cluster_id).await
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;
    use std::sync::Mutex;

    use super::*;
    use crate::config::*;
    use crate::desired::tests::source;

    /// HBR as a map, with a switch to make the next add time out after taking effect.
    #[derive(Default)]
    struct MemRegistry {
        sources: Mutex<Vec<RemoteDataSource>>,
        calls: Mutex<Vec<String>>,
        lose_next_add_answer: Mutex<bool>,
    }

    #[derive(Debug)]
    struct MemError(&'static str);
    impl std::fmt::Display for MemError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Registry for MemRegistry {
        type Error = MemError;
        fn outcome_unknown(err: &MemError) -> bool {
            err.0 == "timeout"
        }
        async fn describe(&self, _c: &str) -> Result<Vec<RemoteDataSource>, MemError> {
            self.calls.lock().unwrap().push("describe".into());
            Ok(self.sources.lock().unwrap().clone())
        }
        async fn add(&self, req: &DataSourceRequest) -> Result<(String, String), MemError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("add {}", req.name()));
            let mut s = self.sources.lock().unwrap();
            let id = format!("ds-{}", s.len() + 1);
            s.push(RemoteDataSource {
                data_source_id: id.clone(),
                data_source_name: req.name().into(),
                data_source_type: req.params["DataSourceType"].clone(),
                cluster_id: req.params["ClusterId"].clone(),
                connection_info: Some(req.params["ConnectionInfo"].clone()),
                ..Default::default()
            });
            if std::mem::take(&mut *self.lose_next_add_answer.lock().unwrap()) {
                return Err(MemError("timeout"));
            }
            Ok((id, "req-1".into()))
        }
        async fn update(&self, id: &str, req: &DataSourceRequest) -> Result<String, MemError> {
            self.calls.lock().unwrap().push(format!("update {id}"));
            let mut s = self.sources.lock().unwrap();
            let r = s
                .iter_mut()
                .find(|r| r.data_source_id == id)
                .ok_or(MemError("no such id"))?;
            r.connection_info = Some(req.params["ConnectionInfo"].clone());
            Ok("req-2".into())
        }
    }

    fn fs_source(name: &str, path: &std::path::Path) -> Source {
        source(
            name,
            SourceSpec::Filesystem(FilesystemSpec {
                path: path.into(),
                allow_root_fs: true,
            }),
        )
    }

    fn config(sources: Vec<Source>) -> Config {
        Config {
            files: vec![],
            agent: AgentSettings {
                cluster_id: "cl-test".into(),
                state_dir: "/nonexistent".into(),
                probe_timeout: Duration::from_secs(5),
                probe_concurrency: NonZeroUsize::new(4).unwrap(),
                write_concurrency: NonZeroUsize::new(4).unwrap(),
                reprobe_interval: Duration::from_secs(3600),
                register_on_probe_failure: false,
            },
            control_plane: ControlPlane {
                region: "cn-hangzhou".into(),
                network: Network::Public,
                endpoint: "http://127.0.0.1:9".parse().unwrap(),
                signature: SignatureVersion::V3,
                credentials: None,
                metadata_endpoint: "http://127.0.0.1:9".parse().unwrap(),
                timeout: Duration::from_secs(1),
            },
            sources: sources.into_iter().map(|s| (s.name.clone(), s)).collect(),
            fleet: None,
            warnings: vec![],
        }
    }

    fn calls(r: &MemRegistry) -> Vec<String> {
        std::mem::take(&mut *r.calls.lock().unwrap())
    }

    async fn apply(cfg: &Config, reg: &MemRegistry, st: &mut State) -> PassReport {
        run_pass(cfg, reg, Mode::Apply, None, st, None, b"key")
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn adds_once_then_in_sync_and_plan_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(vec![fs_source("data", dir.path())]);
        let reg = MemRegistry::default();
        let mut st = State::default();

        let plan = run_pass(&cfg, &reg, Mode::Plan, None, &mut st.clone(), None, b"key")
            .await
            .unwrap();
        assert_eq!(plan.sources[0].outcome, Outcome::Add);
        assert_eq!(calls(&reg), ["describe"]);

        let r = apply(&cfg, &reg, &mut st).await;
        assert_eq!(r.sources[0].outcome, Outcome::Added);
        assert_eq!(calls(&reg), ["describe", "add data"]);
        assert_eq!(st.sources["data"].data_source_id.as_deref(), Some("ds-1"));

        let r = apply(&cfg, &reg, &mut st).await;
        assert_eq!(r.sources[0].outcome, Outcome::InSync);
        assert_eq!(calls(&reg), ["describe"]);
    }

    #[tokio::test]
    async fn lost_state_never_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(vec![fs_source("data", dir.path())]);
        let reg = MemRegistry::default();
        apply(&cfg, &reg, &mut State::default()).await;
        calls(&reg);
        let mut fresh = State::default();
        let r = apply(&cfg, &reg, &mut fresh).await;
        assert_eq!(r.sources[0].outcome, Outcome::InSync, "{:?}", r.sources[0]);
        assert_eq!(calls(&reg), ["describe"]);
        assert_eq!(reg.sources.lock().unwrap().len(), 1);
        assert_eq!(
            fresh.sources["data"].data_source_id.as_deref(),
            Some("ds-1")
        );
    }

    #[tokio::test]
    async fn changed_spec_updates_and_failed_probe_touches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let reg = MemRegistry::default();
        let mut st = State::default();
        apply(&config(vec![fs_source("data", dir.path())]), &reg, &mut st).await;
        calls(&reg);

        let r = apply(
            &config(vec![fs_source("data", other.path())]),
            &reg,
            &mut st,
        )
        .await;
        assert_eq!(r.sources[0].outcome, Outcome::Updated);
        assert!(r.sources[0].detail.contains("config changed"));
        assert_eq!(calls(&reg), ["describe", "update ds-1"]);

        let gone = other.path().join("missing");
        let r = apply(&config(vec![fs_source("data", &gone)]), &reg, &mut st).await;
        assert_eq!(r.sources[0].outcome, Outcome::ProbeFailed);
        assert_eq!(
            r.sources[0]
                .probe
                .as_ref()
                .unwrap()
                .failure
                .as_ref()
                .unwrap()
                .code,
            crate::probe::Code::PATH_NOT_FOUND
        );
        assert_eq!(calls(&reg), ["describe"]);
        assert!(r.failed());
        assert_eq!(
            st.sources["data"].data_source_id.as_deref(),
            Some("ds-1"),
            "registration kept"
        );
    }

    #[tokio::test]
    async fn console_edit_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(vec![fs_source("data", dir.path())]);
        let reg = MemRegistry::default();
        let mut st = State::default();
        apply(&cfg, &reg, &mut st).await;
        reg.sources.lock().unwrap()[0].connection_info = Some(r#"{"path":"/elsewhere"}"#.into());
        calls(&reg);
        let r = apply(&cfg, &reg, &mut st).await;
        assert_eq!(r.sources[0].outcome, Outcome::Updated);
        assert!(
            r.sources[0]
                .detail
                .contains("changed in HBR: ConnectionInfo"),
            "{}",
            r.sources[0].detail
        );
    }

    #[tokio::test]
    async fn uncertain_add_is_resolved_by_describe_not_a_second_add() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(vec![fs_source("data", dir.path())]);
        let reg = MemRegistry::default();
        *reg.lose_next_add_answer.lock().unwrap() = true;
        let mut st = State::default();
        let r = apply(&cfg, &reg, &mut st).await;
        assert_eq!(r.sources[0].outcome, Outcome::Added);
        assert_eq!(calls(&reg), ["describe", "add data", "describe"]);
        assert_eq!(reg.sources.lock().unwrap().len(), 1);
        assert_eq!(st.sources["data"].data_source_id.as_deref(), Some("ds-1"));
    }

    #[tokio::test]
    async fn duplicates_and_type_clashes_are_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(vec![fs_source("data", dir.path())]);
        let reg = MemRegistry::default();
        for id in ["ds-a", "ds-b"] {
            reg.sources.lock().unwrap().push(RemoteDataSource {
                data_source_id: id.into(),
                data_source_name: "data".into(),
                data_source_type: "COMMON_FILE_SYSTEM".into(),
                ..Default::default()
            });
        }
        let r = apply(&cfg, &reg, &mut State::default()).await;
        assert_eq!(r.sources[0].outcome, Outcome::Conflict);
        assert!(r.sources[0].detail.contains("ds-a, ds-b"));
        reg.sources.lock().unwrap().truncate(1);
        reg.sources.lock().unwrap()[0].data_source_type = "COMMON_NAS".into();
        let r = apply(&cfg, &reg, &mut State::default()).await;
        assert_eq!(r.sources[0].outcome, Outcome::Conflict);
        assert_eq!(calls(&reg), ["describe", "describe"]);
    }

    #[tokio::test]
    async fn removed_from_config_is_orphaned_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let reg = MemRegistry::default();
        let mut st = State::default();
        apply(&config(vec![fs_source("data", dir.path())]), &reg, &mut st).await;
        let r = apply(&config(vec![]), &reg, &mut st).await;
        assert_eq!(r.sources.len(), 1);
        assert_eq!(r.sources[0].outcome, Outcome::Orphaned);
        assert_eq!(reg.sources.lock().unwrap().len(), 1);
        assert!(st.sources.contains_key("data"));
        assert_eq!(r.summary(), "0/0 in sync");
    }

    #[test]
    fn summary_names_failures_by_code() {
        let report = PassReport {
            cluster_id: "cl-1".into(),
            sources: vec![
                SourceResult {
                    name: "ok".into(),
                    kind: "filesystem",
                    data_source_type: "COMMON_FILE_SYSTEM".into(),
                    outcome: Outcome::InSync,
                    data_source_id: None,
                    detail: String::new(),
                    request_id: None,
                    probe: None,
                    params: None,
                    credential: false,
                    reach: None,
                },
                SourceResult {
                    name: "bad".into(),
                    kind: "filesystem",
                    data_source_type: "COMMON_FILE_SYSTEM".into(),
                    outcome: Outcome::Failed,
                    data_source_id: None,
                    detail: String::new(),
                    request_id: None,
                    probe: None,
                    params: None,
                    credential: false,
                    reach: None,
                },
            ],
        };
        assert_eq!(report.summary(), "1/2 in sync; bad: failed");
    }
}
