//! What the config wants HBR to hold: each [`Source`] as the exact AddDataSource /
//! UpdateDataSource parameters (DESIGN.md §3), and the fingerprints that tell a change apart
//! (a hash of the non-secret parameters, an HMAC of the Credential). The only place that knows
//! HBR's ConnectionInfo and Credential shapes.

use std::collections::BTreeMap;

use hmac::{KeyInit, Mac};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::config::{ArchiveOptions, HostPort, NasProtocol, Source, SourceSpec};
use crate::hbr::DataSourceRequest;
use crate::secret::{Secret, SecretOrigin};

/// HBR `DataSourceType` of a source.
pub fn data_source_type(spec: &SourceSpec) -> &'static str {
    match spec {
        SourceSpec::Nas(_) => "COMMON_NAS",
        SourceSpec::Cpfs(_) => "CPFS",
        SourceSpec::Bmcpfs(_) => "BMCPFS",
        SourceSpec::Filesystem(_) => "COMMON_FILE_SYSTEM",
        SourceSpec::Hdfs(_) => "HDFS",
        SourceSpec::S3(_) => "S3",
    }
}

fn addresses(servers: &[HostPort]) -> Value {
    // HBR's documented example sends the port as a string.
    Value::Array(
        servers
            .iter()
            .map(|s| json!({ "host": s.host, "port": s.port.to_string() }))
            .collect(),
    )
}

/// The ConnectionInfo object (before `connection_info` extras) and the Credential object.
fn connection_and_credential(
    spec: &SourceSpec,
) -> (Map<String, Value>, Option<Map<String, Value>>) {
    let mut ci = Map::new();
    let mut cred = None;
    match spec {
        SourceSpec::Nas(nas) => {
            ci.insert("dataServerAddresses".into(), addresses(&nas.servers));
            ci.insert("sharePath".into(), json!(nas.share_path));
            if let Some(opts) = &nas.mount_options {
                ci.insert("mountOptions".into(), json!(opts));
            }
            match nas.protocol {
                NasProtocol::Nfs => {
                    ci.insert("fileSystemType".into(), json!("nfs"));
                }
                NasProtocol::Smb => {
                    ci.insert("fileSystemType".into(), json!("smb"));
                    if let Some(domain) = &nas.domain {
                        // The agent's own key: HBR documents no field for the SMB domain.
                        ci.insert("domain".into(), json!(domain));
                    }
                    let mut c = Map::new();
                    c.insert(
                        "mountUsername".into(),
                        json!(nas.username.clone().unwrap_or_default()),
                    );
                    c.insert(
                        "mountPassword".into(),
                        json!(
                            nas.password
                                .as_ref()
                                .map(Secret::expose)
                                .unwrap_or_default()
                        ),
                    );
                    cred = Some(c);
                }
            }
        }
        SourceSpec::Cpfs(c) | SourceSpec::Bmcpfs(c) => {
            ci.insert("vpcMountTarget".into(), json!(c.mount_target));
            ci.insert("sharePath".into(), json!(c.share_path));
            if let Some(opts) = &c.mount_options {
                ci.insert("mountOptions".into(), json!(opts));
            }
        }
        SourceSpec::Filesystem(fs) => {
            ci.insert("path".into(), json!(fs.path.to_string_lossy()));
        }
        SourceSpec::Hdfs(h) => {
            // The agent's own shape: HBR does not document ConnectionInfo for HDFS.
            ci.insert("nameNodes".into(), addresses(&h.namenodes));
            ci.insert("user".into(), json!(h.user));
            if let Some(p) = &h.kerberos_principal {
                ci.insert("kerberosPrincipal".into(), json!(p));
            }
        }
        SourceSpec::S3(s) => {
            // The agent's own shape: HBR does not document ConnectionInfo for S3.
            ci.insert("endpoint".into(), json!(s.endpoint.as_str()));
            ci.insert("bucket".into(), json!(s.bucket));
            ci.insert("region".into(), json!(s.region));
            if let Some(prefix) = &s.prefix {
                ci.insert("prefix".into(), json!(prefix));
            }
            ci.insert("pathStyle".into(), json!(s.path_style));
            let mut c = Map::new();
            c.insert("accessKeyId".into(), json!(s.access_key_id.expose()));
            c.insert(
                "accessKeySecret".into(),
                json!(s.access_key_secret.expose()),
            );
            cred = Some(c);
        }
    }
    (ci, cred)
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).expect("a list of strings serialises")
}

fn archive_params(a: &ArchiveOptions, params: &mut BTreeMap<String, String>) {
    if let Some(level) = a.index_level {
        params.insert("IndexLevel".into(), level.as_str().into());
    }
    if let Some(s) = &a.schedule {
        params.insert("Schedule".into(), s.clone());
    }
    if let Some(s) = &a.speed_limit {
        params.insert("SpeedLimit".into(), s.clone());
    }
    if !a.include.is_empty() {
        params.insert("Include".into(), json_list(&a.include));
    }
    if !a.exclude.is_empty() {
        params.insert("Exclude".into(), json_list(&a.exclude));
    }
    if let Some(o) = &a.options {
        params.insert("Options".into(), Value::Object(o.clone()).to_string());
    }
}

/// The AddDataSource parameters for `source` in the client group `cluster_id`.
pub fn request(source: &Source, cluster_id: &str) -> DataSourceRequest {
    let mut params = BTreeMap::new();
    params.insert("ClusterId".into(), cluster_id.to_string());
    params.insert("DataSourceName".into(), source.name.clone());
    params.insert(
        "DataSourceType".into(),
        data_source_type(&source.spec).to_string(),
    );
    let (mut ci, cred) = connection_and_credential(&source.spec);
    for (k, v) in &source.connection_info_extra {
        ci.insert(k.clone(), v.clone());
    }
    params.insert("ConnectionInfo".into(), Value::Object(ci).to_string());
    archive_params(&source.archive, &mut params);
    let paths: &[String] = match &source.spec {
        SourceSpec::Hdfs(h) => &h.paths,
        _ => &source.archive.paths,
    };
    for (i, p) in paths.iter().enumerate() {
        params.insert(format!("Path.{}", i + 1), p.clone());
    }
    DataSourceRequest {
        params,
        credential: cred.map(|c| {
            Secret::new(
                Value::Object(c).to_string(),
                SecretOrigin::Derived("Credential"),
            )
        }),
    }
}

/// Fingerprint of the non-secret parameters: changes exactly when what HBR would store does.
pub fn spec_hash(req: &DataSourceRequest) -> String {
    let mut h = Sha256::new();
    for (k, v) in &req.params {
        // Length-prefixed so that no two different maps hash alike.
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v.as_bytes());
    }
    hex::encode(h.finalize())
}

/// HMAC of the Credential under the host's state key: tells a changed secret apart without
/// keeping the secret (or a plain hash of it, which could be brute-forced) in the state file.
pub fn secret_hmac(req: &DataSourceRequest, key: &[u8]) -> Option<String> {
    let cred = req.credential.as_ref()?;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(cred.expose().as_bytes());
    Some(hex::encode(mac.finalize().into_bytes()))
}

/// `want` is contained in `have`: objects key by key (HBR may add keys of its own), anything
/// else by equality.
fn json_contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| json_contains(hv, wv))),
        _ => have == want,
    }
}

/// The parameters where HBR's copy contradicts `req`. Only what the agent sends and HBR
/// returns is compared, and HBR may add keys of its own to JSON objects: a field HBR leaves
/// out or fills with a default must never make the agent update the same source every pass.
/// Used to find sources edited in the console since the agent last wrote them.
pub fn remote_differences(
    remote: &crate::hbr::RemoteDataSource,
    req: &DataSourceRequest,
) -> Vec<&'static str> {
    let mut diffs = Vec::new();
    if !remote.cluster_id.is_empty() && req.params.get("ClusterId") != Some(&remote.cluster_id) {
        diffs.push("ClusterId");
    }
    // (parameter, HBR's value, compared as JSON)
    let fields: [(&'static str, &Option<String>, bool); 7] = [
        ("ConnectionInfo", &remote.connection_info, true),
        ("Include", &remote.include, true),
        ("Exclude", &remote.exclude, true),
        ("Options", &remote.options, true),
        ("IndexLevel", &remote.index_level, false),
        ("Schedule", &remote.schedule, false),
        ("SpeedLimit", &remote.speed_limit, false),
    ];
    for (key, have, is_json) in fields {
        let (Some(have), Some(want)) = (have.as_deref(), req.params.get(key)) else {
            continue;
        };
        let same = if is_json {
            match (
                serde_json::from_str::<Value>(have),
                serde_json::from_str::<Value>(want),
            ) {
                (Ok(h), Ok(w)) => json_contains(&h, &w),
                _ => have == want,
            }
        } else {
            have == want
        };
        if !same {
            diffs.push(key);
        }
    }
    if let Some(paths) = &remote.paths {
        let want: Vec<&String> = (1..)
            .map_while(|i| req.params.get(&format!("Path.{i}")))
            .collect();
        if !want.is_empty() && paths.iter().collect::<Vec<_>>() != want {
            diffs.push("Path");
        }
    }
    diffs
}
