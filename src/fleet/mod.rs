//! Fleet mode (`[fleet]`, docs/fleet.md): many hosts of one client group run the same config;
//! every host probes every source, and exactly one of them — the owner — adds or updates it.
//!
//! The members are HBR's own: the group's `LOCAL_CLIENT` backup clients from
//! `DescribeBackupClients`, live when `ACTIVATED` with a recent heartbeat. The owner of a source
//! is the live member with the highest rendezvous score for its name, so every host that sees
//! the same membership picks the same owner without talking to the others, and a change of
//! membership moves only the sources of the member that came or went. With
//! `coordination = "etcd"` the owner must also hold the source's lock key in etcd
//! (`etcd.rs`) before it writes, which holds even while two hosts disagree on membership.
//!
//! This module decides who may write; it never writes to HBR itself and never deletes.

pub mod etcd;
pub mod reach;
pub mod sim;

use std::collections::BTreeSet;

use sha2::{Digest as _, Sha256};

use crate::config::{ClientIdentity, FleetSettings};
use crate::hbr::client::BackupClient;

/// The status of a backup client that is running and registered.
pub const LIVE_STATUS: &str = "ACTIVATED";

/// A ClientId as HBR writes it: `c-` and lowercase letters and digits.
pub fn check_client_id(s: &str) -> Result<(), String> {
    crate::config::hbr_id(s, "c-", "backup client id")
}

/// The rendezvous (highest random weight) score of `member` for `source`: the first 8 bytes of
/// SHA-256 over both. Stable across hosts, versions and platforms, which is all it must be.
pub fn score(member: &str, source: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(member.as_bytes());
    h.update([0u8]);
    h.update(source.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("SHA-256 has 32 bytes"))
}

/// The owner of `source` among `members`: the highest score, ties by the smaller id.
pub fn owner<'a, S: AsRef<str>>(members: &'a [S], source: &str) -> Option<&'a str> {
    members
        .iter()
        .map(AsRef::as_ref)
        .max_by(|a, b| score(a, source).cmp(&score(b, source)).then(b.cmp(a)))
}

/// The live members, sorted: `ACTIVATED` and a heartbeat at most `timeout` before `now`
/// (UNIX seconds). A client with no heartbeat time is not live.
pub fn live_members(
    clients: &[BackupClient],
    now: i64,
    timeout: std::time::Duration,
) -> Vec<String> {
    let timeout = i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX);
    let mut live: Vec<String> = clients
        .iter()
        .filter(|c| c.status == LIVE_STATUS)
        .filter(|c| {
            c.last_heart_beat_time
                .is_some_and(|t| now.saturating_sub(t) <= timeout)
        })
        .map(|c| c.client_id.clone())
        .collect();
    live.sort();
    live.dedup();
    live
}

/// Who may write which source in this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// No `[fleet]`: this host owns everything.
    All,
    Fleet {
        me: String,
        live: Vec<String>,
        /// A view at least `settle_time` older: adds need ownership in both.
        previous: Vec<String>,
        /// Strict mode: the sources whose etcd lock this host holds for the pass; an owned
        /// source whose lock is held by another member maps to that member.
        locks: Option<Locks>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Locks {
    pub held: BTreeSet<String>,
    /// Source → the member holding its lock (or why it could not be taken).
    pub refused: std::collections::BTreeMap<String, String>,
    /// False once the lease is lost: nothing more may be written.
    pub alive: Option<etcd::LeaseAlive>,
}

impl Ownership {
    /// `Ok(())` when this host may add or update `source`; otherwise why not, for the report.
    pub fn may_write(&self, source: &str) -> Result<(), String> {
        let Ownership::Fleet {
            me, live, locks, ..
        } = self
        else {
            return Ok(());
        };
        if !live.iter().any(|m| m == me) {
            return Err(format!(
                "this host ({me}) is not a live member of the client group in HBR (not \
                 ACTIVATED or no recent heartbeat), so it writes nothing; live: {}",
                if live.is_empty() {
                    "none".to_string()
                } else {
                    live.join(", ")
                }
            ));
        }
        match owner(live, source) {
            Some(o) if o == me => {}
            Some(o) => return Err(format!("owned by {o}")),
            None => return Err("no live member".into()),
        }
        match locks {
            None => Ok(()),
            Some(l) if l.alive.as_ref().is_some_and(|a| !a.get()) => {
                Err("the etcd lease was lost during the pass; the next pass retries".into())
            }
            Some(l) if l.held.contains(source) => Ok(()),
            Some(l) => Err(l.refused.get(source).cloned().map_or_else(
                || "its etcd lock is not held".to_string(),
                |why| format!("owned here, but its etcd lock is held by {why}"),
            )),
        }
    }

    /// `Ok(())` when this host may add `source` (not in HBR yet): it may write it, and it
    /// owned it in the earlier view too.
    pub fn may_add(&self, source: &str) -> Result<(), String> {
        self.may_write(source)?;
        match self {
            Ownership::Fleet { me, previous, .. }
                if owner(previous, source) != Some(me.as_str()) =>
            {
                Err(format!(
                    "owned here only since the membership changed (before: {}); added on a \
                     later pass if that holds",
                    owner(previous, source).unwrap_or("no live member")
                ))
            }
            _ => Ok(()),
        }
    }

    /// The sources among `names` this host owns by hashing (before any lock).
    pub fn owned<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        match self {
            Ownership::All => names.into_iter().map(str::to_string).collect(),
            Ownership::Fleet { me, live, .. } => names
                .into_iter()
                .filter(|n| live.iter().any(|m| m == me) && owner(live, n) == Some(me.as_str()))
                .map(str::to_string)
                .collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot read this host's client id from {path}: {message}")]
    Identity { path: String, message: String },
    #[error("cannot read the members of {cluster_id} (DescribeBackupClients): {message}")]
    Members { cluster_id: String, message: String },
    #[error("etcd: {0}")]
    Etcd(String),
}

/// `settle_time`, or by default `probe_timeout` plus three API timeouts: longer than a pass
/// takes from its describe to its last add. Zero without `[fleet]`.
pub fn settle_time(cfg: &crate::config::Config) -> std::time::Duration {
    match &cfg.fleet {
        None => std::time::Duration::ZERO,
        Some(f) => f
            .settle_time
            .unwrap_or(cfg.agent.probe_timeout + 3 * cfg.control_plane.timeout),
    }
}

/// This host's ClientId: the configured one, or the first line of `client_id_file`.
pub fn identity(settings: &FleetSettings) -> Result<String, FleetError> {
    match &settings.identity {
        ClientIdentity::Literal(id) => Ok(id.clone()),
        ClientIdentity::File(path) => {
            let err = |message: String| FleetError::Identity {
                path: path.display().to_string(),
                message,
            };
            let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            let id = text.lines().next().unwrap_or("").trim().to_string();
            check_client_id(&id).map_err(err)?;
            Ok(id)
        }
    }
}

/// The live members as read at `at` (UNIX seconds).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct View {
    pub at: i64,
    pub live: Vec<String>,
}

/// Views read by this process, oldest first (the daemon trusts any of them: it has been
/// running, so HBR cannot have dropped and re-added it unnoticed).
static HISTORY: std::sync::Mutex<Vec<View>> = std::sync::Mutex::new(Vec::new());

/// The newest earlier view at least `settle` older than `current` that may be trusted: one
/// read by this process, or one saved in `file` no older than the heartbeat timeout (a
/// process that was down longer may have been dropped from HBR's membership meanwhile).
pub fn trusted_previous(
    settings: &FleetSettings,
    settle: std::time::Duration,
    file: Option<&std::path::Path>,
    current: &View,
) -> Option<View> {
    let settle = i64::try_from(settle.as_secs()).unwrap_or(i64::MAX).max(1);
    let old_enough = |v: &View| current.at - v.at >= settle;
    let history = HISTORY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = history.iter().rev().find(|v| old_enough(v)) {
        return Some(v.clone());
    }
    let saved: View = serde_json::from_slice(&std::fs::read(file?).ok()?).ok()?;
    let max_age = i64::try_from(settings.heartbeat_timeout.as_secs()).unwrap_or(i64::MAX);
    (old_enough(&saved) && current.at - saved.at <= max_age).then_some(saved)
}

/// Ownership from an earlier and the current view; remembers the current one (in this
/// process, and in `file` when given: apply mode).
pub fn ownership(
    me: String,
    previous: View,
    current: View,
    file: Option<&std::path::Path>,
) -> Ownership {
    {
        let mut history = HISTORY.lock().unwrap_or_else(|e| e.into_inner());
        history.push(current.clone());
        // Keep the newest view older than `previous` no more: it is never needed again.
        let keep_from = history
            .iter()
            .rposition(|v| v.at <= previous.at)
            .unwrap_or(0);
        history.drain(..keep_from);
    }
    if let Some(path) = file
        && let Ok(json) = serde_json::to_vec(&current)
    {
        let tmp = path.with_extension("json.tmp");
        if let Err(e) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, path)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the membership view; the next start reads it twice");
        }
    }
    Ownership::Fleet {
        me,
        live: current.live,
        previous: previous.live,
        locks: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn client(id: &str, status: &str, hb: Option<i64>) -> BackupClient {
        BackupClient {
            client_id: id.into(),
            status: status.into(),
            last_heart_beat_time: hb,
            hostname: String::new(),
        }
    }

    #[test]
    fn live_needs_activated_and_a_recent_heartbeat() {
        let now = 1_000_000;
        let clients = [
            client("c-b", "ACTIVATED", Some(now - 60)),
            client("c-a", "ACTIVATED", Some(now - 600)),
            client("c-old", "ACTIVATED", Some(now - 601)),
            client("c-stopped", "STOPPED", Some(now)),
            client("c-unknown", "UNKNOWN", Some(now)),
            client("c-never", "ACTIVATED", None),
        ];
        assert_eq!(
            live_members(&clients, now, Duration::from_secs(600)),
            ["c-a", "c-b"]
        );
    }

    #[test]
    fn owner_is_stable_and_moves_only_from_the_member_that_left() {
        let three = ["c-a", "c-b", "c-c"];
        let two = ["c-a", "c-c"];
        let mut moved = 0;
        let mut per = std::collections::BTreeMap::new();
        for i in 0..3000 {
            let s = format!("source-{i}");
            let before = owner(&three, &s).unwrap();
            let after = owner(&two, &s).unwrap();
            *per.entry(before).or_insert(0) += 1;
            if before != "c-b" {
                assert_eq!(before, after, "{s} moved though its owner stayed");
            } else {
                moved += 1;
            }
        }
        // Roughly a third each (SHA-256 spreads evenly).
        for (m, n) in &per {
            assert!((800..1200).contains(n), "{m} owns {n} of 3000");
        }
        assert_eq!(moved, per["c-b"]);
        // Order of the member list does not matter.
        assert_eq!(owner(&["c-c", "c-a", "c-b"], "x"), owner(&three, "x"));
    }

    #[test]
    fn may_write_says_who_owns_it() {
        let o = Ownership::Fleet {
            me: "c-a".into(),
            live: vec!["c-a".into(), "c-b".into()],
            previous: vec!["c-a".into(), "c-b".into()],
            locks: None,
        };
        let name = (0..100)
            .map(|i| format!("s{i}"))
            .find(|s| owner(&["c-a", "c-b"], s) == Some("c-b"))
            .unwrap();
        assert_eq!(o.may_write(&name), Err("owned by c-b".to_string()));
        let not_member = Ownership::Fleet {
            me: "c-z".into(),
            live: vec!["c-a".into()],
            previous: vec!["c-a".into()],
            locks: None,
        };
        assert!(
            not_member
                .may_write("x")
                .unwrap_err()
                .contains("not a live member")
        );
        assert_eq!(Ownership::All.may_write("x"), Ok(()));
    }

    #[test]
    fn client_ids() {
        assert!(check_client_id("c-000abc123").is_ok());
        for bad in ["", "c-", "cl-abc", "c-ABC", "c-a b"] {
            assert!(check_client_id(bad).is_err(), "{bad}");
        }
    }
}
