//! Strict mode (`coordination = "etcd"`): before a pass writes, the owner takes each owned
//! source's lock key in etcd under a lease of its own, keeps the lease alive while the pass
//! runs and revokes it at the end. A key another member holds means "not mine this pass", even
//! when membership views disagree. etcd does the consensus; this module only uses its v3 API
//! through the JSON gateway every etcd ≥ 3.4 serves on its client port (no gRPC stack, no
//! protoc).
//!
//! Keys: `PREFIX/CLUSTER_ID/sources/NAME` = the holder's ClientId, attached to its lease.
//! Never deletes a key it does not hold (only its own lease is revoked).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use url::Url;

use super::{FleetError, Locks};
use crate::config::EtcdSettings;

/// Whether the lease still stands; checked before every write.
#[derive(Debug, Clone)]
pub struct LeaseAlive(Arc<AtomicBool>);

impl LeaseAlive {
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl PartialEq for LeaseAlive {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for LeaseAlive {}

/// A granted lease; `release` revokes it (and with it every lock of the pass).
pub struct Lease {
    etcd: Etcd,
    id: i64,
    alive: LeaseAlive,
    keepalive: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
pub(super) struct Etcd {
    http: reqwest::Client,
    endpoints: Vec<Url>,
}

impl Etcd {
    pub(super) fn new(settings: &EtcdSettings) -> Result<Etcd, FleetError> {
        crate::hbr::install_crypto_provider();
        // Every call under a deadline: a hung etcd costs 5 s per endpoint, never the pass.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| FleetError::Etcd(e.to_string()))?;
        Ok(Etcd {
            http,
            endpoints: settings.endpoints.clone(),
        })
    }

    /// Grants a lease of `ttl` seconds; returns its ID.
    pub(super) async fn grant(&self, ttl: u64) -> Result<i64, FleetError> {
        let granted = self
            .call("/v3/lease/grant", json!({ "TTL": ttl.to_string() }))
            .await?;
        int(granted.get("ID"))
            .ok_or_else(|| FleetError::Etcd(format!("lease grant without an ID: {granted}")))
    }

    /// One transaction without a condition: `ops` (etcd `RequestOp`s) all succeed or fail
    /// together. Callers keep `ops` under etcd's `--max-txn-ops` (default 128).
    pub(super) async fn txn(&self, ops: Vec<Value>) -> Result<Value, FleetError> {
        self.call("/v3/kv/txn", json!({ "success": ops })).await
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value, FleetError> {
        let mut last = String::from("no endpoint");
        for ep in &self.endpoints {
            let url = match ep.join(path) {
                Ok(u) => u,
                Err(e) => {
                    last = format!("{ep}: {e}");
                    continue;
                }
            };
            match self.http.post(url).json(&body).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let v: Value = resp.json().await.map_err(|e| {
                        FleetError::Etcd(format!("{ep}{path}: unreadable answer: {e}"))
                    })?;
                    if !status.is_success() {
                        let msg = v
                            .get("message")
                            .or_else(|| v.get("error"))
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        return Err(FleetError::Etcd(format!(
                            "{ep}{path}: HTTP {status}: {msg}"
                        )));
                    }
                    return Ok(v);
                }
                // Another endpoint may answer.
                Err(e) => last = format!("{ep}: {e}"),
            }
        }
        Err(FleetError::Etcd(format!(
            "no etcd endpoint answered ({last})"
        )))
    }
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

pub fn key(settings: &EtcdSettings, cluster_id: &str, source: &str) -> String {
    format!("{}/{cluster_id}/sources/{source}", settings.prefix)
}

/// Grants a lease and takes the lock of each source in `owned` for `me`.
pub async fn acquire(
    settings: &EtcdSettings,
    cluster_id: &str,
    me: &str,
    owned: &[String],
) -> Result<(Locks, Lease), FleetError> {
    let etcd = Etcd::new(settings)?;
    let ttl = settings.lease_ttl.as_secs();
    let id = etcd.grant(ttl).await?;
    let alive = LeaseAlive(Arc::new(AtomicBool::new(true)));
    let keepalive = {
        let (etcd, alive) = (etcd.clone(), alive.clone());
        tokio::spawn(async move {
            let every = Duration::from_secs((ttl / 3).max(1));
            loop {
                tokio::time::sleep(every).await;
                let r = etcd
                    .call("/v3/lease/keepalive", json!({ "ID": id.to_string() }))
                    .await;
                let left = r
                    .as_ref()
                    .ok()
                    .and_then(|v| int(v.get("result").and_then(|r| r.get("TTL"))));
                if left.is_none_or(|t| t <= 0) {
                    // Expired or unreachable past its TTL: no more writes in this pass.
                    tracing::warn!(lease = id, "etcd lease lost; this pass writes nothing more");
                    alive.0.store(false, Ordering::SeqCst);
                    return;
                }
            }
        })
    };
    let lease = Lease {
        etcd: etcd.clone(),
        id,
        alive,
        keepalive,
    };
    let mut locks = Locks::default();
    for source in owned {
        let k = B64.encode(key(settings, cluster_id, source));
        let v = B64.encode(me);
        let put = json!([{ "request_put": { "key": k, "value": v, "lease": id.to_string() } }]);
        let r = etcd
            .call(
                "/v3/kv/txn",
                json!({
                    "compare": [{ "key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0" }],
                    "success": put,
                    "failure": [{ "request_range": { "key": k } }],
                }),
            )
            .await?;
        if r.get("succeeded").and_then(Value::as_bool) == Some(true) {
            locks.held.insert(source.clone());
            continue;
        }
        let holder = r
            .pointer("/responses/0/response_range/kvs/0/value")
            .and_then(Value::as_str)
            .and_then(|s| B64.decode(s).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if holder == me {
            // Ours from an earlier lease that was not revoked (a crash): move it to this one.
            let r = etcd
                .call(
                    "/v3/kv/txn",
                    json!({
                        "compare": [{ "key": k, "target": "VALUE", "result": "EQUAL", "value": v }],
                        "success": put,
                    }),
                )
                .await?;
            if r.get("succeeded").and_then(Value::as_bool) == Some(true) {
                locks.held.insert(source.clone());
                continue;
            }
        }
        locks.refused.insert(source.clone(), holder);
    }
    Ok((locks, lease))
}

impl Lease {
    pub fn alive(&self) -> LeaseAlive {
        self.alive.clone()
    }

    /// Revokes the lease: every lock of the pass is free for the next owner at once.
    pub async fn release(self) {
        self.keepalive.abort();
        if let Err(e) = self
            .etcd
            .call("/v3/lease/revoke", json!({ "ID": self.id.to_string() }))
            .await
        {
            tracing::warn!(lease = self.id, error = %e, "could not revoke the etcd lease; its locks expire with its TTL");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}
