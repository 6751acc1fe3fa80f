//! Probes: confirm, in user space and before anything is registered, that this host can reach
//! and read a source with the configured credentials. Layers run in order and stop at the
//! first failure: `resolve` → `connect` → `handshake` → `auth` → `access`.
//!
//! How to add a kind:
//! 1. a module here with `pub async fn probe(name, spec, &mut Recorder)`, one arm in
//!    [`probe_source`]'s `match`;
//! 2. its failure codes in [`codes`] (summary and remedy: `explain` and docs read them there);
//! 3. tests in `tests/` against a real server, started by `scripts/`;
//! 4. a page in `docs/`, an example in `config/`.
//!
//! A probe never panics on what a server sends, never logs a secret, and keeps to its deadline:
//! [`probe_source`] bounds every probe as a whole, so one hung endpoint costs only its own.

pub mod codes;
pub mod filesystem;
pub mod hdfs;
pub mod net;
pub mod nfs;
pub mod s3;
pub mod smb;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{NasProtocol, Source, SourceSpec};
pub use codes::Code;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    Resolve,
    Connect,
    Handshake,
    Auth,
    Access,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Resolve => "resolve",
            Layer::Connect => "connect",
            Layer::Handshake => "handshake",
            Layer::Auth => "auth",
            Layer::Access => "access",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerReport {
    pub layer: Layer,
    #[serde(serialize_with = "ser_secs")]
    pub duration: Duration,
    pub ok: bool,
    /// What this layer found ("ext4 mounted at /mnt/data") or, on failure, the reason.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub code: Code,
    /// One line: what failed and what the other side said.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeReport {
    pub source: String,
    pub kind: &'static str,
    pub layers: Vec<LayerReport>,
    /// Set when the probe failed; the source must not be registered.
    pub failure: Option<Finding>,
    /// Problems that do not fail the probe.
    pub warnings: Vec<Finding>,
    /// Facts worth showing (file system type, negotiated dialect, active NameNode, …).
    pub facts: BTreeMap<String, String>,
    #[serde(serialize_with = "ser_secs")]
    pub duration: Duration,
}

impl ProbeReport {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e6)
}

/// Collects layer results as a probe runs; probes report through it and return early with `?`
/// on the first failure.
#[derive(Debug)]
pub struct Recorder {
    layers: Vec<LayerReport>,
    warnings: Vec<Finding>,
    facts: BTreeMap<String, String>,
    current: Option<(Layer, Instant)>,
    deadline: Instant,
    budget: Duration,
}

/// Every server of a source at once (nas over NFS or SMB, cpfs), each with a recorder of its
/// own under the source's deadline, so one hung server costs no more than the deadline and the
/// others still report. Every one must pass, since HBR may mount through any of them. Layers,
/// facts and warnings name their server; the failure is the first server's, naming the others.
pub(crate) async fn every_server<'a, F, Fut>(
    servers: &'a [crate::config::HostPort],
    rec: &mut Recorder,
    probe_one: F,
) -> Result<(), Failed>
where
    F: Fn(&'a crate::config::HostPort, Recorder) -> Fut,
    Fut: std::future::Future<Output = (Recorder, Result<(), Failed>)>,
{
    let runs = servers.iter().map(|server| {
        let sub = Recorder {
            layers: Vec::new(),
            warnings: Vec::new(),
            facts: BTreeMap::new(),
            current: None,
            deadline: rec.deadline,
            budget: rec.budget,
        };
        let run = probe_one(server, sub);
        async move {
            let (mut sub, result) = run.await;
            match &result {
                Err(Failed(f)) => sub.fail(f),
                Ok(()) => sub.pass(""),
            }
            (server, sub, result)
        }
    });
    let done = futures::future::join_all(runs).await;
    let mut failures = Vec::new();
    for (server, sub, result) in done {
        for l in sub.layers {
            rec.layers.push(LayerReport {
                detail: format!("{server}: {}", l.detail),
                ..l
            });
        }
        for (k, v) in sub.facts {
            rec.fact(format!("{server} {k}"), v);
        }
        for w in sub.warnings {
            rec.warn(w.code, format!("{server}: {}", w.reason));
        }
        match result {
            Ok(()) => rec.fact(format!("{server} result"), "passed"),
            Err(Failed(f)) => {
                rec.fact(format!("{server} result"), format!("FAIL {}", f.code));
                failures.push((server, f));
            }
        }
    }
    let Some(((server, f), rest)) = failures.split_first() else {
        return Ok(());
    };
    let mut reason = format!("{server}: {}", f.reason);
    if !rest.is_empty() {
        let others: Vec<String> = rest
            .iter()
            .map(|(s, f)| format!("{s}: {}", f.code))
            .collect();
        reason.push_str(&format!(" (also failed: {})", others.join(", ")));
    }
    let passed = servers.len() - failures.len();
    if passed > 0 {
        reason.push_str(&format!(
            "; {passed} of {} servers passed, but HBR may mount through any of them",
            servers.len()
        ));
    }
    Err(Failed::new(f.code, reason))
}

/// A probe's failure: the code and one-line reason (the layer is the one that was running).
#[derive(Debug, Clone, PartialEq)]
pub struct Failed(pub Finding);

impl Failed {
    pub fn new(code: Code, reason: impl Into<String>) -> Self {
        Failed(Finding {
            code,
            reason: reason.into(),
        })
    }
}

impl Recorder {
    fn new(budget: Duration) -> Self {
        Recorder {
            layers: Vec::new(),
            warnings: Vec::new(),
            facts: BTreeMap::new(),
            current: None,
            deadline: Instant::now() + budget,
            budget,
        }
    }

    /// When the probe as a whole must end. Probes bound every network call by it (see
    /// [`Recorder::within`]) so that a silent server fails with the step it hung in.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left before the deadline (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Run one network step under the probe's deadline. When the deadline passes first, the
    /// probe fails with `PROBE_TIMEOUT` and a reason that names `step` ("no answer to
    /// portmapper GETPORT within probe_timeout (15s)").
    pub async fn within<T>(
        &self,
        step: &str,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, Failed> {
        tokio::time::timeout_at(self.deadline.into(), fut)
            .await
            .map_err(|_| {
                Failed::new(
                    Code::PROBE_TIMEOUT,
                    format!(
                        "no answer to {step} within probe_timeout ({})",
                        humantime::format_duration(self.budget)
                    ),
                )
            })
    }

    /// Start a layer (ending the previous one as passed, with no detail, if still open).
    pub fn start(&mut self, layer: Layer) {
        if self.current.is_some() {
            self.pass("");
        }
        self.current = Some((layer, Instant::now()));
    }

    /// End the current layer as passed.
    pub fn pass(&mut self, detail: impl Into<String>) {
        if let Some((layer, t0)) = self.current.take() {
            self.layers.push(LayerReport {
                layer,
                duration: t0.elapsed(),
                ok: true,
                detail: detail.into(),
            });
        }
    }

    fn fail(&mut self, finding: &Finding) {
        if let Some((layer, t0)) = self.current.take() {
            self.layers.push(LayerReport {
                layer,
                duration: t0.elapsed(),
                ok: false,
                detail: finding.reason.clone(),
            });
        }
    }

    pub fn warn(&mut self, code: Code, reason: impl Into<String>) {
        self.warnings.push(Finding {
            code,
            reason: reason.into(),
        });
    }

    pub fn fact(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.facts.insert(key.into(), value.into());
    }
}

/// Extra time the outer bound of [`probe_source`] allows after the probe's own deadline, so
/// that a probe's [`Recorder::within`] fires first and names the step that hung.
const OUTER_GRACE: Duration = Duration::from_millis(250);

/// Probe one source under `deadline` (all layers together).
pub async fn probe_source(source: &Source, deadline: Duration) -> ProbeReport {
    let t0 = Instant::now();
    let mut rec = Recorder::new(deadline);
    let run = async {
        match &source.spec {
            SourceSpec::Filesystem(spec) => filesystem::probe(spec, &mut rec).await,
            SourceSpec::Nas(spec) => match spec.protocol {
                NasProtocol::Nfs => nfs::probe_nas(spec, &mut rec).await,
                NasProtocol::Smb => smb::probe(spec, &mut rec).await,
            },
            SourceSpec::Cpfs(spec) | SourceSpec::Bmcpfs(spec) => {
                nfs::probe_cpfs(spec, &mut rec).await
            }
            SourceSpec::Hdfs(spec) => hdfs::probe(spec, &mut rec).await,
            SourceSpec::S3(spec) => s3::probe(spec, &mut rec).await,
        }
    };
    let result = match tokio::time::timeout(deadline + OUTER_GRACE, run).await {
        Ok(r) => r,
        Err(_) => Err(Failed::new(
            Code::PROBE_TIMEOUT,
            format!(
                "the probe did not finish within probe_timeout ({})",
                humantime::format_duration(deadline)
            ),
        )),
    };
    let failure = match result {
        Ok(()) => {
            rec.pass("");
            None
        }
        Err(Failed(finding)) => {
            rec.fail(&finding);
            Some(finding)
        }
    };
    ProbeReport {
        source: source.name.clone(),
        kind: source.spec.kind(),
        layers: rec.layers,
        failure,
        warnings: rec.warnings,
        facts: rec.facts,
        duration: t0.elapsed(),
    }
}
