//! `DescribeBackupClients` for the fake HBR: the client group's backup clients, which the
//! fleet mode reads as its membership. Parameters and their types as HBR documents them
//! (`ClientType` required; `PageNumber` from 1, `PageSize` 1–99; `ClientIds`/`InstanceIds`
//! JSON arrays of strings; `Tag.N.Key`/`Tag.N.Value`; the cross-account keys), answers in
//! HBR's shape (`Clients`, `TotalCount`, `PageNumber`, `PageSize`). Tests set the members and
//! their heartbeats with `FakeHbr::set_client` / `remove_client`.

use super::*;

pub(super) const ACTION: &str = "DescribeBackupClients";

const CLIENT_TYPES: &[&str] = &["ECS_CLIENT", "CONTAINER_CLIENT", "LOCAL_CLIENT"];

#[derive(Debug, Clone, PartialEq)]
pub struct StoredClient {
    pub client_id: String,
    pub cluster_id: String,
    /// `LOCAL_CLIENT` for an on-premises host.
    pub client_type: String,
    /// `ACTIVATED`, `STOPPED`, `UNKNOWN`, …
    pub status: String,
    /// UNIX seconds.
    pub last_heart_beat_time: i64,
    pub hostname: String,
}

impl StoredClient {
    /// An activated local client of `cluster_id` that sent a heartbeat just now.
    pub fn live(client_id: &str, cluster_id: &str) -> Self {
        StoredClient {
            client_id: client_id.into(),
            cluster_id: cluster_id.into(),
            client_type: "LOCAL_CLIENT".into(),
            status: "ACTIVATED".into(),
            last_heart_beat_time: OffsetDateTime::now_utc().unix_timestamp(),
            hostname: format!("host-{client_id}"),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "ClientId": self.client_id,
            "ClientType": self.client_type,
            "Status": self.status,
            "LastHeartBeatTime": self.last_heart_beat_time,
            "Hostname": self.hostname,
            "InstanceId": format!("fp-{}", self.client_id),
            "ClientVersion": "2.13.0",
            "CreatedTime": self.last_heart_beat_time,
            "UpdatedTime": self.last_heart_beat_time,
        })
    }
}

impl FakeHbr {
    /// Adds or replaces a backup client (by ClientId).
    pub fn set_client(&self, c: StoredClient) {
        let mut st = lock(&self.state);
        st.clients.retain(|x| x.client_id != c.client_id);
        st.clients.push(c);
    }

    pub fn remove_client(&self, client_id: &str) -> bool {
        let mut st = lock(&self.state);
        let before = st.clients.len();
        st.clients.retain(|x| x.client_id != client_id);
        st.clients.len() != before
    }

    pub fn clients(&self) -> Vec<StoredClient> {
        lock(&self.state).clients.clone()
    }
}

fn string_array(k: &str, v: &str) -> Result<Vec<String>, Reject> {
    serde_json::from_str::<Vec<String>>(v)
        .map_err(|_| invalid(k, "expected a JSON array of strings"))
}

pub(super) fn describe_backup_clients(
    st: &State,
    p: &BTreeMap<String, String>,
) -> Result<Value, Reject> {
    // Tag.N.Key / Tag.N.Value are checked here; the rest by the common validator.
    let mut rest = p.clone();
    for k in p.keys().filter(|k| k.starts_with("Tag.")) {
        let ok = k
            .strip_prefix("Tag.")
            .and_then(|r| r.split_once('.'))
            .is_some_and(|(n, f)| {
                n.parse::<u32>().is_ok_and(|n| (1..=20).contains(&n))
                    && (f == "Key" || f == "Value")
            });
        if !ok {
            return Err(invalid(
                k,
                "tags are Tag.N.Key / Tag.N.Value with N from 1 to 20",
            ));
        }
        rest.remove(k);
    }
    validate(
        &rest,
        &[
            "PageNumber",
            "PageSize",
            "ClientType",
            "ClusterId",
            "ClientIds",
            "InstanceIds",
            "CrossAccountType",
            "CrossAccountUserId",
            "CrossAccountRoleName",
        ],
    )?;
    let client_type = p.get("ClientType").ok_or_else(|| missing("ClientType"))?;
    if !CLIENT_TYPES.contains(&client_type.as_str()) {
        return Err(invalid(
            "ClientType",
            "expected ECS_CLIENT, CONTAINER_CLIENT or LOCAL_CLIENT",
        ));
    }
    if let Some(v) = p.get("CrossAccountType")
        && !matches!(v.as_str(), "SELF_ACCOUNT" | "CROSS_ACCOUNT")
    {
        return Err(invalid(
            "CrossAccountType",
            "expected SELF_ACCOUNT or CROSS_ACCOUNT",
        ));
    }
    if let Some(v) = p.get("CrossAccountUserId")
        && v.parse::<i64>().is_err()
    {
        return Err(invalid("CrossAccountUserId", "expected a long integer"));
    }
    let ids = p
        .get("ClientIds")
        .map(|v| string_array("ClientIds", v))
        .transpose()?;
    if let Some(v) = p.get("InstanceIds") {
        string_array("InstanceIds", v)?;
    }
    let (page_number, page_size) = paging(p)?;
    let all: Vec<&StoredClient> = st
        .clients
        .iter()
        .filter(|c| c.client_type == *client_type)
        .filter(|c| p.get("ClusterId").is_none_or(|v| c.cluster_id == *v))
        .filter(|c| ids.as_ref().is_none_or(|ids| ids.contains(&c.client_id)))
        .collect();
    let start = (page_number - 1).saturating_mul(page_size);
    let page: Vec<Value> = all
        .iter()
        .skip(usize::try_from(start).unwrap_or(usize::MAX))
        .take(page_size as usize)
        .map(|c| c.to_json())
        .collect();
    Ok(json!({
        "PageNumber": page_number,
        "PageSize": page_size,
        "TotalCount": all.len(),
        "Clients": page,
    }))
}
