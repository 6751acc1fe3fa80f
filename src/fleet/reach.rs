//! `PARTIAL_REACHABILITY` (docs/fleet.md): HBR may run a backup of a source on any member of
//! the client group, so a source only some members can reach fails now and then although its
//! owner probes it fine. In strict mode (`coordination = "etcd"`) every host publishes its own
//! probe result per source in etcd, and the owner reads the results of the live members and
//! flags the source when some reach it and others do not.
//!
//! Keys: `PREFIX/CLUSTER_ID/reach/SOURCE/CLIENT_ID` = a [`Published`] record, on a lease of the
//! publishing host that outlives its pass (so results stay readable between passes and vanish
//! when a host stops publishing). A record holds the outcome and the catalogue code only —
//! never the reason text, which quotes what a server said and may echo user names, paths or
//! other details a server chose, and never a secret.
//!
//! Flagging never changes what is written: the owner reaches the source, so it registers and
//! updates it as usual and warns (see docs/fleet.md for why there is no "refuse" switch).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::FleetError;
use super::etcd::Etcd;
use crate::config::EtcdSettings;
use crate::probe::Code;

/// etcd's default `--max-txn-ops` is 128; stay well below it.
const OPS_PER_TXN: usize = 64;

/// One host's last probe result for one source, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub ok: bool,
    /// The failure code (catalogue only; anything else read back is shown as `UNKNOWN_CODE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// UNIX seconds of the probe.
    pub at: i64,
    /// The source's spec hash (SHA-256 of its non-secret parameters): a result for another
    /// version of the config says nothing about this one.
    pub spec: String,
}

/// How the live members reach one source, as its owner sees it (reports, status).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Reach {
    /// `PARTIAL_REACHABILITY` while some live members reach the source and others do not.
    pub code: Option<String>,
    /// Live members whose last probe of this config failed, with the failure code.
    pub unreachable: BTreeMap<String, String>,
    /// Live members whose last probe of this config passed (this host included).
    pub reachable: Vec<String>,
    /// Live members without a current result: not published yet, expired, or for another
    /// version of the source's config.
    pub unknown: Vec<String>,
}

impl Reach {
    pub fn partial(&self) -> bool {
        self.code.is_some()
    }

    /// One line for details, logs and the `STATUS=` summary.
    pub fn message(&self) -> String {
        let mut out = String::new();
        if self.partial() {
            out.push_str(&format!(
                "{}: unreachable from {}; reachable from {}",
                Code::PARTIAL_REACHABILITY,
                self.unreachable
                    .iter()
                    .map(|(m, c)| format!("{m} ({c})"))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.reachable.join(", ")
            ));
        }
        if !self.unknown.is_empty() {
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str(&format!(
                "no current probe result from {}",
                self.unknown.join(", ")
            ));
        }
        out
    }
}

/// The reach of a source whose spec hash is `spec`: `mine` is this host's own probe (passed,
/// code), `published` the results read from etcd by member. Only live members count: a dead
/// member is neither unreachable nor unknown.
pub fn assess(
    me: &str,
    mine: (bool, Option<String>),
    live: &[String],
    spec: &str,
    published: Option<&BTreeMap<String, Published>>,
) -> Reach {
    let mut r = Reach::default();
    for m in live {
        let result = if m == me {
            Some(mine.clone())
        } else {
            published
                .and_then(|p| p.get(m))
                .filter(|p| p.spec == spec)
                .map(|p| (p.ok, p.code.clone()))
        };
        match result {
            Some((true, _)) => r.reachable.push(m.clone()),
            Some((false, code)) => {
                let code = code
                    .filter(|c| Code::lookup(c).is_some())
                    .unwrap_or_else(|| "UNKNOWN_CODE".into());
                r.unreachable.insert(m.clone(), code);
            }
            None => r.unknown.push(m.clone()),
        }
    }
    if !r.unreachable.is_empty() && !r.reachable.is_empty() {
        r.code = Some(Code::PARTIAL_REACHABILITY.to_string());
    }
    r
}

fn prefix(settings: &EtcdSettings, cluster_id: &str, source: &str) -> String {
    format!("{}/{cluster_id}/reach/{source}/", settings.prefix)
}

pub fn key(settings: &EtcdSettings, cluster_id: &str, source: &str, member: &str) -> String {
    format!("{}{member}", prefix(settings, cluster_id, source))
}

/// How long a published result lives: until well after this host's next pass (passes come
/// every `reprobe_interval` ±10 %, and take up to `probe_timeout` plus the HBR calls).
pub fn lease_ttl(reprobe_interval: Duration, probe_timeout: Duration, floor: Duration) -> u64 {
    (2 * reprobe_interval + 2 * probe_timeout)
        .max(floor)
        .as_secs()
        .max(1)
}

/// Publishes this host's results (source → record) on a fresh lease of `ttl` seconds. A key
/// rewritten moves to the new lease; the previous pass's lease then expires holding nothing.
pub async fn publish(
    settings: &EtcdSettings,
    cluster_id: &str,
    me: &str,
    ttl: u64,
    results: &BTreeMap<String, Published>,
) -> Result<(), FleetError> {
    if results.is_empty() {
        return Ok(());
    }
    let etcd = Etcd::new(settings)?;
    let lease = etcd.grant(ttl).await?.to_string();
    let ops: Vec<Value> = results
        .iter()
        .map(|(source, p)| {
            let value = serde_json::to_string(p).unwrap_or_default();
            json!({ "request_put": {
                "key": B64.encode(key(settings, cluster_id, source, me)),
                "value": B64.encode(value),
                "lease": lease,
            } })
        })
        .collect();
    for chunk in ops.chunks(OPS_PER_TXN) {
        etcd.txn(chunk.to_vec()).await?;
    }
    Ok(())
}

/// The published results of every member for each of `sources`: source → member → record.
/// Records that do not parse are left out (they count as unknown).
pub async fn read(
    settings: &EtcdSettings,
    cluster_id: &str,
    sources: &[String],
) -> Result<BTreeMap<String, BTreeMap<String, Published>>, FleetError> {
    let mut out: BTreeMap<String, BTreeMap<String, Published>> = BTreeMap::new();
    if sources.is_empty() {
        return Ok(out);
    }
    let etcd = Etcd::new(settings)?;
    for chunk in sources.chunks(OPS_PER_TXN) {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|source| {
                let start = prefix(settings, cluster_id, source);
                let mut end = start.clone().into_bytes();
                // The prefix ends in '/': the range end is the same with '0' ('/' + 1).
                if let Some(last) = end.last_mut() {
                    *last += 1;
                }
                json!({ "request_range": { "key": B64.encode(&start), "range_end": B64.encode(&end) } })
            })
            .collect();
        let r = etcd.txn(ops).await?;
        for (i, source) in chunk.iter().enumerate() {
            let start = prefix(settings, cluster_id, source);
            let kvs = r
                .pointer(&format!("/responses/{i}/response_range/kvs"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let entry = out.entry(source.clone()).or_default();
            for kv in kvs {
                let decode = |k: &str| {
                    kv.get(k)
                        .and_then(Value::as_str)
                        .and_then(|s| B64.decode(s).ok())
                };
                let (Some(k), Some(v)) = (decode("key"), decode("value")) else {
                    continue;
                };
                let k = String::from_utf8_lossy(&k);
                let Some(member) = k.strip_prefix(&start) else {
                    continue;
                };
                if super::check_client_id(member).is_err() {
                    continue;
                }
                if let Ok(p) = serde_json::from_slice::<Published>(&v) {
                    entry.insert(member.to_string(), p);
                }
            }
        }
    }
    Ok(out)
}

/// What was last logged per source, so that the log says it once per change, not per pass.
static LOGGED: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

/// Logs a change of a source's partial reachability: at warn when it starts or changes, at
/// info when it clears.
pub fn log_change(source: &str, reach: Option<&Reach>) {
    let now = reach
        .filter(|r| r.partial())
        .map(Reach::message)
        .unwrap_or_default();
    let mut logged = LOGGED.lock().unwrap_or_else(|e| e.into_inner());
    let before = logged.get(source).cloned().unwrap_or_default();
    if before == now {
        return;
    }
    if now.is_empty() {
        tracing::info!(
            source,
            "every live member that reported reaches the source again"
        );
        logged.remove(source);
    } else {
        tracing::warn!(source, reach = %now, "some live members cannot reach this source");
        logged.insert(source.to_string(), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(ok: bool, code: Option<&str>, spec: &str) -> Published {
        Published {
            ok,
            code: code.map(str::to_string),
            at: 1,
            spec: spec.into(),
        }
    }

    fn live() -> Vec<String> {
        ["c-a", "c-b", "c-c", "c-d"].map(String::from).to_vec()
    }

    #[test]
    fn names_the_members_that_cannot_and_those_that_did_not_report() {
        let mut p = BTreeMap::new();
        p.insert(
            "c-b".to_string(),
            published(false, Some("TCP_TIMEOUT"), "h1"),
        );
        p.insert("c-c".to_string(), published(true, None, "h1"));
        // A result for an older config and one from a member that is not live.
        p.insert("c-d".to_string(), published(true, None, "h0"));
        p.insert(
            "c-dead".to_string(),
            published(false, Some("TCP_REFUSED"), "h1"),
        );
        let r = assess("c-a", (true, None), &live(), "h1", Some(&p));
        assert_eq!(r.code.as_deref(), Some("PARTIAL_REACHABILITY"));
        assert_eq!(
            r.unreachable,
            BTreeMap::from([("c-b".to_string(), "TCP_TIMEOUT".to_string())])
        );
        assert_eq!(r.reachable, ["c-a", "c-c"]);
        assert_eq!(r.unknown, ["c-d"]);
        assert_eq!(
            r.message(),
            "PARTIAL_REACHABILITY: unreachable from c-b (TCP_TIMEOUT); reachable from c-a, \
             c-c; no current probe result from c-d"
        );
    }

    #[test]
    fn not_partial_when_everyone_agrees_and_codes_stay_in_the_catalogue() {
        let mut p = BTreeMap::new();
        for m in ["c-b", "c-c", "c-d"] {
            p.insert(m.to_string(), published(true, None, "h"));
        }
        let r = assess("c-a", (true, None), &live(), "h", Some(&p));
        assert!(!r.partial() && r.unreachable.is_empty() && r.unknown.is_empty());
        assert_eq!(r.message(), "");

        // All fail: that is a probe failure everywhere, not a partial one.
        for m in ["c-b", "c-c", "c-d"] {
            p.insert(m.to_string(), published(false, Some("<script>"), "h"));
        }
        let r = assess(
            "c-a",
            (false, Some("PATH_NOT_FOUND".into())),
            &live(),
            "h",
            Some(&p),
        );
        assert!(!r.partial());
        assert_eq!(r.unreachable["c-b"], "UNKNOWN_CODE");
        assert_eq!(r.unreachable["c-a"], "PATH_NOT_FOUND");
    }

    #[test]
    fn a_published_record_carries_no_reason() {
        let text =
            serde_json::to_string(&published(false, Some("SMB_LOGON_FAILURE"), "h")).unwrap();
        assert_eq!(
            text,
            r#"{"ok":false,"code":"SMB_LOGON_FAILURE","at":1,"spec":"h"}"#
        );
    }
}
