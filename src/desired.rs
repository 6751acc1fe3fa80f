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
            if let Some(ns) = &h.nameservice {
                ci.insert("nameService".into(), json!(ns));
            }
            ci.insert("user".into(), json!(h.user));
            if let Some(p) = &h.kerberos_principal {
                ci.insert("kerberosPrincipal".into(), json!(p));
            }
        }
        SourceSpec::S3(s) => {
            // The agent's own shape: HBR does not document ConnectionInfo for S3.
            // As written, without the "/" the URL type adds to a bare host.
            let endpoint = match s.endpoint.path() {
                "/" => s.endpoint.as_str().trim_end_matches('/'),
                _ => s.endpoint.as_str(),
            };
            ci.insert("endpoint".into(), json!(endpoint));
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::*;
    use crate::hbr::RemoteDataSource;

    pub(crate) fn source(name: &str, spec: SourceSpec) -> Source {
        Source {
            name: name.into(),
            origin: Origin {
                file: "/etc/hbr-source-agent/agent.toml".into(),
                line: 1,
                column: 1,
            },
            spec,
            archive: ArchiveOptions::default(),
            connection_info_extra: Default::default(),
        }
    }

    fn nfs() -> Source {
        source(
            "MyLocalNas",
            SourceSpec::Nas(NasSpec {
                protocol: NasProtocol::Nfs,
                servers: vec![HostPort {
                    host: "123.123.123.123".into(),
                    port: 2049,
                }],
                share_path: "/share".into(),
                mount_options: Some("vers=3".into()),
                username: None,
                password: None,
                domain: None,
            }),
        )
    }

    #[test]
    fn nas_nfs_matches_the_design_example() {
        let req = request(&nfs(), "cl-0004i0nlngorvgjpl7ck");
        assert_eq!(req.params["DataSourceType"], "COMMON_NAS");
        assert_eq!(req.params["DataSourceName"], "MyLocalNas");
        assert_eq!(req.params["ClusterId"], "cl-0004i0nlngorvgjpl7ck");
        let ci: Value = serde_json::from_str(&req.params["ConnectionInfo"]).unwrap();
        assert_eq!(
            ci,
            json!({"dataServerAddresses":[{"host":"123.123.123.123","port":"2049"}],
                   "sharePath":"/share","mountOptions":"vers=3","fileSystemType":"nfs"})
        );
        assert!(req.credential.is_none());
    }

    #[test]
    fn hdfs_shape_names_the_ha_pair_and_principal_never_the_keytab() {
        let h = source(
            "lake",
            SourceSpec::Hdfs(HdfsSpec {
                namenodes: vec![
                    HostPort {
                        host: "nn1.example".into(),
                        port: 8020,
                    },
                    HostPort {
                        host: "nn2.example".into(),
                        port: 8020,
                    },
                ],
                nameservice: Some("lake-ns".into()),
                user: "hdfs".into(),
                paths: vec!["/warehouse".into(), "/logs".into()],
                kerberos_principal: Some("hbr/host.example@EXAMPLE.COM".into()),
                keytab: Some("/etc/security/keytabs/hbr.keytab".into()),
            }),
        );
        let req = request(&h, "cl-1");
        assert_eq!(req.params["DataSourceType"], "HDFS");
        assert_eq!(
            req.params["ConnectionInfo"],
            r#"{"kerberosPrincipal":"hbr/host.example@EXAMPLE.COM","nameNodes":[{"host":"nn1.example","port":"8020"},{"host":"nn2.example","port":"8020"}],"nameService":"lake-ns","user":"hdfs"}"#
        );
        assert_eq!(req.params["Path.1"], "/warehouse");
        assert_eq!(req.params["Path.2"], "/logs");
        assert!(req.credential.is_none());
        assert!(!format!("{:?}", req.params).contains("keytab"));
    }

    #[test]
    fn filesystem_and_bmcpfs_shapes() {
        let fs = source(
            "scratch",
            SourceSpec::Filesystem(FilesystemSpec {
                path: "/mnt/lustre".into(),
                allow_root_fs: false,
            }),
        );
        let req = request(&fs, "cl-1");
        assert_eq!(req.params["ConnectionInfo"], r#"{"path":"/mnt/lustre"}"#);
        assert_eq!(req.params["DataSourceType"], "COMMON_FILE_SYSTEM");
        let b = source(
            "training",
            SourceSpec::Bmcpfs(CpfsSpec {
                mount_target: "cpfs-010wn-vpc-ta8.cn-shanghai.cpfs.aliyuncs.com".into(),
                share_path: "/".into(),
                mount_options: None,
            }),
        );
        let req = request(&b, "cl-1");
        assert_eq!(req.params["DataSourceType"], "BMCPFS");
        assert_eq!(
            serde_json::from_str::<Value>(&req.params["ConnectionInfo"]).unwrap(),
            json!({"vpcMountTarget":"cpfs-010wn-vpc-ta8.cn-shanghai.cpfs.aliyuncs.com","sharePath":"/"})
        );
    }

    #[test]
    fn smb_credential_is_secret_and_json() {
        let mut s = nfs();
        s.name = "finance".into();
        if let SourceSpec::Nas(n) = &mut s.spec {
            n.protocol = NasProtocol::Smb;
            n.mount_options = None;
            n.username = Some("backup".into());
            n.password = Some(Secret::new("s3cr3t\"pw", SecretOrigin::Literal));
        }
        let req = request(&s, "cl-1");
        let cred: Value = serde_json::from_str(req.credential.as_ref().unwrap().expose()).unwrap();
        assert_eq!(
            cred,
            json!({"mountUsername":"backup","mountPassword":"s3cr3t\"pw"})
        );
        assert!(!format!("{req:?}").contains("s3cr3t"));
        assert!(!req.params.values().any(|v| v.contains("s3cr3t")));
    }

    #[test]
    fn s3_shape_and_secret_credential() {
        let spec = |endpoint: &str, prefix: Option<&str>| S3Spec {
            endpoint: endpoint.parse().unwrap(),
            bucket: "backups".into(),
            region: "us-east-1".into(),
            prefix: prefix.map(Into::into),
            path_style: true,
            ca_file: None,
            access_key_id: Secret::new("AKIDEXAMPLE", SecretOrigin::Literal),
            access_key_secret: Secret::new("wJalr\"secret", SecretOrigin::Literal),
        };
        let s = source(
            "archive",
            SourceSpec::S3(spec("https://s3.example.com:9000", Some("hosts/"))),
        );
        let req = request(&s, "cl-1");
        assert_eq!(req.params["DataSourceType"], "S3");
        assert_eq!(
            req.params["ConnectionInfo"],
            r#"{"bucket":"backups","endpoint":"https://s3.example.com:9000","pathStyle":true,"prefix":"hosts/","region":"us-east-1"}"#
        );
        assert_eq!(
            req.credential.as_ref().unwrap().expose(),
            r#"{"accessKeyId":"AKIDEXAMPLE","accessKeySecret":"wJalr\"secret"}"#
        );
        assert!(!format!("{req:?} {s:?}").contains("AKIDEXAMPLE"));
        assert!(!format!("{req:?} {s:?}").contains("wJalr"));
        // An endpoint with a path keeps it as written; no prefix, no key.
        let s = source(
            "archive",
            SourceSpec::S3(spec("https://gw.example.com/s3/", None)),
        );
        let ci: Value =
            serde_json::from_str(&request(&s, "cl-1").params["ConnectionInfo"]).unwrap();
        assert_eq!(ci["endpoint"], "https://gw.example.com/s3/");
        assert!(ci.get("prefix").is_none());
    }

    #[test]
    fn archive_options_and_paths_and_extras() {
        let mut s = nfs();
        s.archive = ArchiveOptions {
            index_level: Some(IndexLevel::Meta),
            schedule: Some("I|1729493847|P1D".into()),
            speed_limit: Some("6:21:10240".into()),
            include: vec!["/home/alice".into()],
            exclude: vec!["/home/alice/log".into()],
            paths: vec!["/a".into(), "/b".into()],
            options: Some(Default::default()),
        };
        s.connection_info_extra
            .insert("mountOptions".into(), json!("vers=3,nolock"));
        let req = request(&s, "cl-1");
        assert_eq!(req.params["IndexLevel"], "META");
        assert_eq!(req.params["Schedule"], "I|1729493847|P1D");
        assert_eq!(req.params["SpeedLimit"], "6:21:10240");
        assert_eq!(req.params["Include"], r#"["/home/alice"]"#);
        assert_eq!(req.params["Exclude"], r#"["/home/alice/log"]"#);
        assert_eq!(req.params["Options"], "{}");
        assert_eq!(req.params["Path.1"], "/a");
        assert_eq!(req.params["Path.2"], "/b");
        assert!(req.params["ConnectionInfo"].contains("vers=3,nolock"));
    }

    #[test]
    fn fingerprints_tell_changes_apart() {
        let a = request(&nfs(), "cl-1");
        let mut b = a.clone();
        assert_eq!(spec_hash(&a), spec_hash(&b));
        b.params.insert("Path.1".into(), "/x".into());
        assert_ne!(spec_hash(&a), spec_hash(&b));
        let c1 = DataSourceRequest {
            params: a.params.clone(),
            credential: Some(Secret::new("one", SecretOrigin::Literal)),
        };
        let c2 = DataSourceRequest {
            credential: Some(Secret::new("two", SecretOrigin::Literal)),
            ..c1.clone()
        };
        assert_eq!(
            spec_hash(&c1),
            spec_hash(&c2),
            "secrets are not in the spec hash"
        );
        assert_ne!(secret_hmac(&c1, b"k"), secret_hmac(&c2, b"k"));
        assert_ne!(secret_hmac(&c1, b"k"), secret_hmac(&c1, b"other key"));
    }

    #[test]
    fn remote_comparison_ignores_what_hbr_adds_or_omits() {
        let req = request(&nfs(), "cl-1");
        let mut remote = RemoteDataSource {
            data_source_id: "ds-1".into(),
            data_source_name: "MyLocalNas".into(),
            data_source_type: "COMMON_NAS".into(),
            cluster_id: "cl-1".into(),
            // Same object, other key order, one key HBR added.
            connection_info: Some(
                r#"{"fileSystemType":"nfs","sharePath":"/share","mountOptions":"vers=3","dataServerAddresses":[{"port":"2049","host":"123.123.123.123"}],"extra":1}"#.into(),
            ),
            index_level: Some("OFF".into()),
            ..Default::default()
        };
        assert!(remote_differences(&remote, &req).is_empty());
        remote.connection_info = Some(r#"{"sharePath":"/other"}"#.into());
        assert_eq!(remote_differences(&remote, &req), vec!["ConnectionInfo"]);
        remote.connection_info = None;
        remote.cluster_id = "cl-2".into();
        assert_eq!(remote_differences(&remote, &req), vec!["ClusterId"]);
    }
}
