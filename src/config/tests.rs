//! Loader tests against the fixture trees in `tests/fixtures/config/`. Diagnostics are compared
//! in full, as operators see them, with the fixture directory cut off.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::secret::SecretOrigin;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

fn shown(base: &Path, diags: &[Diagnostic]) -> Vec<String> {
    let prefix = format!("{}/", base.display());
    diags
        .iter()
        .map(|d| d.to_string().replace(&prefix, ""))
        .collect()
}

fn load_fixture_err(case: &str, env: &MapEnv) -> Vec<String> {
    match load_with(&fixture(case).join("agent.toml"), env) {
        Ok(_) => panic!("{case} loaded without errors"),
        Err(e) => {
            assert!(!e.errors.is_empty());
            shown(&fixture(case), &e.errors)
        }
    }
}

/// A distinctive value: if it shows up in any output, a secret leaked.
const LEAK: &str = "zebra-S3CR3T-4711";

/// The secrets the `valid` fixture asks for, all carrying [`LEAK`].
fn valid_env() -> (MapEnv, tempfile::TempDir) {
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("hbr-ak-secret"), format!("{LEAK}-ak\n")).unwrap();
    std::fs::write(creds.path().join("archive-secret"), format!("{LEAK}-s3")).unwrap();
    let env = MapEnv::new()
        .with("HBR_AK_ID", format!("{LEAK}-id"))
        .with("FINANCE_PW", format!("{LEAK}-pw"))
        .with("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap());
    (env, creds)
}

#[test]
fn valid_config_with_every_kind() {
    let (env, _creds) = valid_env();
    let dir = fixture("valid");
    let c = load_with(&dir.join("agent.toml"), &env).unwrap();

    // README.md in conf.d is not a drop-in.
    assert_eq!(
        c.files,
        vec![
            dir.join("agent.toml"),
            dir.join("conf.d/10-sources.toml"),
            dir.join("conf.d/20-override.toml")
        ]
    );
    assert_eq!(
        c.agent,
        AgentSettings {
            cluster_id: "cl-0004i0nlngorvgjpl7ck".into(),
            state_dir: defaults::STATE_DIR.into(),
            // agent.toml says 20s, 20-override.toml 45s: the later file wins, per key.
            probe_timeout: Duration::from_secs(45),
            probe_concurrency: std::num::NonZeroUsize::new(16).unwrap(),
            write_concurrency: std::num::NonZeroUsize::new(4).unwrap(),
            reprobe_interval: Duration::from_secs(3600),
            register_on_probe_failure: true,
        }
    );
    let cp = &c.control_plane;
    assert_eq!(cp.region, "cn-hangzhou");
    assert_eq!(cp.network, Network::Vpc);
    assert_eq!(
        cp.endpoint.as_str(),
        "https://hbr-vpc.cn-hangzhou.aliyuncs.com/"
    );
    assert_eq!(cp.signature, SignatureVersion::V3);
    assert_eq!(cp.metadata_endpoint.as_str(), "http://100.100.100.200/");
    assert_eq!(cp.timeout, Duration::from_secs(10));
    let creds = cp.credentials.as_ref().unwrap();
    assert_eq!(creds.access_key_id.expose(), format!("{LEAK}-id"));
    assert_eq!(
        creds.access_key_id.origin(),
        &SecretOrigin::Env("HBR_AK_ID".into())
    );
    assert_eq!(creds.access_key_secret.expose(), format!("{LEAK}-ak"));
    assert!(creds.security_token.is_none());

    let names: Vec<&str> = c.sources.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "MyLocalNas",
            "archive",
            "finance",
            "lake",
            "scratch",
            "shared",
            "training"
        ]
    );

    let nfs = &c.sources["MyLocalNas"];
    assert_eq!(
        nfs.origin.to_string(),
        format!("{}:1:1", dir.join("conf.d/10-sources.toml").display())
    );
    let SourceSpec::Nas(n) = &nfs.spec else {
        panic!()
    };
    assert_eq!(n.protocol, NasProtocol::Nfs);
    assert_eq!(
        n.servers,
        vec![
            HostPort {
                host: "192.0.2.10".into(),
                port: 2049
            },
            HostPort {
                host: "2001:db8::10".into(),
                port: 2050
            }
        ]
    );
    assert_eq!(n.share_path, "/share");
    assert_eq!(n.mount_options.as_deref(), Some("vers=3,proto=tcp"));
    assert_eq!((n.username.as_ref(), n.password.as_ref()), (None, None));
    assert_eq!(
        nfs.archive,
        ArchiveOptions {
            index_level: Some(IndexLevel::Meta),
            schedule: Some("I|1729493847|P1D".into()),
            speed_limit: Some("6:21:10240|21:24:1".into()),
            include: vec!["*.doc".into()],
            exclude: vec!["*.tmp".into()],
            paths: vec!["/share/a".into()],
            options: Some(
                serde_json::json!({ "follow_symlinks": false, "depth": 3 })
                    .as_object()
                    .unwrap()
                    .clone()
            ),
        }
    );
    assert_eq!(
        serde_json::Value::Object(nfs.connection_info_extra.clone()),
        serde_json::json!({ "vendor": "acme", "since": "2024-01-01T00:00:00Z" })
    );

    let smb = &c.sources["finance"];
    let SourceSpec::Nas(n) = &smb.spec else {
        panic!()
    };
    assert_eq!(n.protocol, NasProtocol::Smb);
    assert_eq!(
        n.servers,
        vec![HostPort {
            host: "fs1.corp.example".into(),
            port: 445
        }]
    );
    assert_eq!(n.username.as_deref(), Some("backup"));
    assert_eq!(n.password.as_ref().unwrap().expose(), format!("{LEAK}-pw"));
    assert_eq!(n.domain.as_deref(), Some("CORP"));
    assert_eq!(smb.archive.schedule.as_deref(), Some("I|1729493847|PT12H"));
    assert_eq!(
        smb.archive.speed_limit.as_deref(),
        Some("0:6:2048|6:21:10240")
    );

    assert_eq!(
        c.sources["shared"].spec,
        SourceSpec::Cpfs(CpfsSpec {
            mount_target: "cpfs-0001.cn-hangzhou.cpfs.example".into(),
            share_path: "/".into(),
            mount_options: None,
        })
    );
    assert_eq!(
        c.sources["training"].spec,
        SourceSpec::Bmcpfs(CpfsSpec {
            mount_target: "cpfs-010wn-vpc-ta8.cn-shanghai.cpfs.example".into(),
            share_path: "/data".into(),
            mount_options: Some("vers=3".into()),
        })
    );
    assert_eq!(c.sources["training"].archive, ArchiveOptions::default());
    assert_eq!(
        c.sources["scratch"].spec,
        SourceSpec::Filesystem(FilesystemSpec {
            path: "/mnt/lustre".into(),
            allow_root_fs: false
        })
    );
    let lake = &c.sources["lake"];
    assert_eq!(
        lake.spec,
        SourceSpec::Hdfs(HdfsSpec {
            namenodes: vec![
                HostPort {
                    host: "nn1.example.com".into(),
                    port: 8020
                },
                HostPort {
                    host: "nn2.example.com".into(),
                    port: 9000
                }
            ],
            nameservice: None,
            user: "hdfs".into(),
            paths: vec!["/warehouse".into(), "/logs".into()],
            kerberos_principal: Some("hbr@EXAMPLE.COM".into()),
            keytab: Some("/etc/security/hbr.keytab".into()),
        })
    );
    // HDFS `paths` are the HDFS paths, not archive paths.
    assert!(lake.archive.paths.is_empty());

    let SourceSpec::S3(s3) = &c.sources["archive"].spec else {
        panic!()
    };
    assert_eq!(s3.endpoint.as_str(), "https://s3.example.com:9000/");
    assert_eq!(s3.bucket, "backups");
    assert_eq!(s3.region, "us-east-1");
    assert_eq!(s3.prefix, None);
    assert!(s3.path_style);
    assert_eq!(s3.ca_file, None);
    assert_eq!(s3.access_key_id.expose(), "AKIDEXAMPLE");
    assert_eq!(s3.access_key_id.origin(), &SecretOrigin::Literal);
    assert_eq!(s3.access_key_secret.expose(), format!("{LEAK}-s3"));
}

#[test]
fn secrets_never_appear_in_output() {
    let (env, _creds) = valid_env();
    let c = load_with(&fixture("valid").join("agent.toml"), &env).unwrap();
    let mut out = format!("{c:?}\n{c:#?}\n{env:?}");
    for w in &c.warnings {
        out += &format!("{w}\n{w:?}\n");
    }
    assert!(!out.contains(LEAK), "a secret leaked:\n{out}");
    assert!(!out.contains("AKIDEXAMPLE"), "a literal secret leaked");

    // Errors too: every secret present but some other problem in each table.
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("agent.toml");
    std::fs::write(
        &main,
        format!(
            "version = 1\n[agent]\ncluster_id = \"bad\"\n[control_plane]\nregion = \"cn-hangzhou\"\n\
             access_key_id = \"{LEAK}\"\n\
             [nas.x]\nprotocol = \"smb\"\nservers = []\nshare_path = \"/s\"\nusername = \"u\"\n\
             password = \"{LEAK}\"\n\
             [s3.y]\nendpoint = \"https://u:{LEAK}@s3.example\"\nbucket = \"b\"\n\
             access_key_id = 5\naccess_key_secret = {{ env = \"{LEAK}\", file = \"/x\" }}\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&main, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = load_with(&main, &MapEnv::new()).unwrap_err();
    let out = format!("{e}\n{e:?}\n{:?}", e.warnings);
    assert!(e.errors.len() >= 5, "{out}");
    assert!(!out.contains(LEAK), "a secret leaked:\n{out}");
}

#[test]
fn every_error_of_every_file_at_once() {
    let got = load_fixture_err("errors", &MapEnv::new());
    assert_eq!(
        got,
        [
            // unknown key
            "agent.toml:5:1: [agent]: probe_timout: unknown key; expected one of `cluster_id`, \
             `state_dir`, `probe_timeout`, `probe_concurrency`, `write_concurrency`, \
             `reprobe_interval`, `register_on_probe_failure`",
            // wrong type, in the same table: the first error does not hide it
            "agent.toml:6:21: [agent]: probe_concurrency: invalid type: string \"many\", \
             expected an integer",
            // relative path
            "conf.d/10-first.toml:2:8: source scratch: path: must be an absolute path \
             (starting with /), got \"mnt/lustre\"",
            // bad ISO 8601 duration
            "conf.d/10-first.toml:8:52: source docs: schedule.every: \"1 day\" is not an ISO 8601 \
             duration (PnYnMnWnDTnHnMnS, e.g. \"P1D\", \"PT12H\")",
            // hour out of range, then from >= to
            "conf.d/10-first.toml:9:43: source docs: speed_limit[0].to_hour: 25 is out of range 0-24",
            "conf.d/10-first.toml:9:64: source docs: speed_limit[1]: from_hour 21 must be less \
             than to_hour 6",
            // duplicate name across files: both places
            "conf.d/20-second.toml:1:1: source lake: duplicate source name \"lake\": also defined \
             at conf.d/10-first.toml:11:1",
            // secret env var unset
            "conf.d/20-second.toml:11:20: source finance: password: environment variable \
             FINANCE_PW_UNSET is not set",
            // unreadable secret file: the path and the OS error
            "conf.d/20-second.toml:17:30: source archive: access_key_secret: cannot read secret \
             file /nonexistent/hbr-test/archive-secret: No such file or directory (os error 2)",
        ]
    );
}

#[test]
fn syntax_error_keeps_position_and_other_files_are_still_checked() {
    let got = load_fixture_err("syntax", &MapEnv::new());
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(
        got[0].starts_with("agent.toml:8:1: [control_plane]: bogus: unknown key"),
        "{got:#?}"
    );
    assert!(
        got[1].starts_with("conf.d/10-broken.toml:2:12: syntax error: "),
        "{got:#?}"
    );
}

#[test]
fn missing_cluster_id_points_at_the_agent_table() {
    assert_eq!(
        load_fixture_err("missing-cluster-id", &MapEnv::new()),
        ["agent.toml:3:1: [agent]: cluster_id: missing required key"]
    );
}

#[test]
fn conf_d_in_lexical_order_ignoring_other_files() {
    let dir = fixture("order");
    let c = load_with(&dir.join("agent.toml"), &MapEnv::new()).unwrap();
    // "10-a" sorts before "9-b": lexical, not numeric. Dotfiles and *.disabled are skipped.
    assert_eq!(
        c.files,
        [
            dir.join("agent.toml"),
            dir.join("conf.d/10-a.toml"),
            dir.join("conf.d/9-b.toml")
        ]
    );
    assert_eq!(c.agent.probe_timeout, Duration::from_secs(30));
}

#[test]
fn type_errors_and_kind_restrictions() {
    assert_eq!(
        load_fixture_err("types", &MapEnv::new()),
        [
            "agent.toml:5:29: [agent]: register_on_probe_failure: invalid type: string \"yes\", \
             expected a boolean",
            "agent.toml:12:15: source shared: index_level: index_level is only valid on nas, hdfs \
             and s3 sources",
            "agent.toml:13:1: source shared: frobnicate: unknown key; expected one of \
             `mount_target`, `share_path`, `mount_options`, `paths`, `index_level`, `schedule`, \
             `speed_limit`, `include`, `exclude`, `options`, `connection_info`",
            "agent.toml:14:14: source shared: share_path: invalid type: integer `5`, expected a \
             string",
        ]
    );
}

#[test]
fn literal_secret_in_readable_file_warns() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("agent.toml");
    let text = "version = 1\n[agent]\ncluster_id = \"cl-1\"\n[control_plane]\n\
                region = \"cn-hangzhou\"\naccess_key_id = \"AKID\"\n\
                access_key_secret = \"not-so-secret\"\n";
    std::fs::write(&main, text).unwrap();

    std::fs::set_permissions(&main, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = load_with(&main, &MapEnv::new()).unwrap();
    assert_eq!(
        shown(dir.path(), &c.warnings),
        [
            "agent.toml:7:21: warning: [control_plane]: access_key_secret: literal secret in a \
             file readable by group/others (mode 0644): use { file = ... } or chmod 600",
        ]
    );

    std::fs::set_permissions(&main, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(
        load_with(&main, &MapEnv::new())
            .unwrap()
            .warnings
            .is_empty()
    );
}

#[test]
fn secrets_are_reread_on_every_load() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pw");
    let main = dir.path().join("agent.toml");
    std::fs::write(
        &main,
        format!(
            "version = 1\n[agent]\ncluster_id = \"cl-1\"\n[control_plane]\nregion = \"r\"\n\
             access_key_id = {{ env = \"ID\" }}\naccess_key_secret = {{ file = \"{}\" }}\n",
            secret.display()
        ),
    )
    .unwrap();
    let env = MapEnv::new().with("ID", "id");
    let key = |c: Config| c.control_plane.credentials.unwrap().access_key_secret;
    std::fs::write(&secret, "one\n").unwrap();
    assert_eq!(key(load_with(&main, &env).unwrap()).expose(), "one");
    std::fs::write(&secret, "two\n").unwrap();
    assert_eq!(key(load_with(&main, &env).unwrap()).expose(), "two");
}

/// Writes `text` as the main file of a fresh directory and returns the error lines.
fn errors_of(text: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("agent.toml");
    std::fs::write(&main, text).unwrap();
    match load_with(&main, &MapEnv::new()) {
        Ok(_) => Vec::new(),
        Err(e) => shown(dir.path(), &e.errors),
    }
}

const HEAD: &str = "version = 1\n[agent]\ncluster_id = \"cl-1\"\n[control_plane]\nregion = \"r\"\n";

#[test]
fn control_plane_rules() {
    let e = |extra: &str| errors_of(&format!("{HEAD}{extra}\n"));
    assert_eq!(
        e("endpoint = \"http://127.0.0.1:8080\""),
        Vec::<String>::new()
    );
    assert_eq!(
        e("endpoint = \"http://hbr.example\""),
        [
            "agent.toml:6:12: [control_plane]: endpoint: plain http is allowed only to a loopback \
          host; use https"
        ]
    );
    assert_eq!(
        e("access_key_id = \"AKID\""),
        [
            "agent.toml:6:17: [control_plane]: access_key_id: set both access_key_id and \
          access_key_secret, or neither to use the default credential chain"
        ]
    );
    assert_eq!(
        e("security_token = { env = \"T\" }"),
        [
            "agent.toml:6:18: [control_plane]: security_token: a security token needs \
             access_key_id and access_key_secret",
            "agent.toml:6:26: [control_plane]: security_token: environment variable T is not set",
        ]
    );
    assert_eq!(
        e("metadata_endpoint = \"http://169.254.169.254\""),
        [
            "agent.toml:6:21: [control_plane]: metadata_endpoint: plain http is allowed only to a \
          loopback host; use https"
        ]
    );
    assert_eq!(e("network = \"vpn\"").len(), 1);
    assert_eq!(e("timeout = \"0s\"").len(), 1);
    assert_eq!(
        e("access_key_id = { file = \"/x\", env = \"Y\" }"),
        [
            "agent.toml:6:17: [control_plane]: access_key_id: a secret is a string or a table with \
          exactly one of `file`, `env`, `credential`"
        ]
    );
    assert_eq!(
        errors_of("[agent]\ncluster_id = \"cl-1\"\n"),
        [
            "agent.toml:1:1: version: missing required key (the main file starts with version = 1)",
            "agent.toml:1:1: [control_plane]: region: missing required key",
        ]
    );
    assert_eq!(
        errors_of(
            "version = 2\nfoo = 1\n[agent]\ncluster_id = \"CL-1\"\n[control_plane]\nregion = \"r\"\n"
        ),
        [
            "agent.toml:1:11: version: unsupported version: this agent reads version = 1",
            "agent.toml:2:1: foo: unknown key; expected one of `version`, `agent`, \
             `control_plane`, `fleet`, `nas`, `cpfs`, `bmcpfs`, `filesystem`, `hdfs`, `s3`",
            "agent.toml:4:14: [agent]: cluster_id: \"CL-1\" is not a client group id (cl- \
             followed by lowercase letters and digits)",
        ]
    );
}

#[test]
fn source_rules() {
    let e = |src: &str| errors_of(&format!("{HEAD}{src}\n"));
    assert_eq!(
        e("[nas.n]\nprotocol = \"nfs\"\nservers = [\"h\"]\nshare_path = \"/s\"\nusername = \"u\""),
        ["agent.toml:10:12: source n: username: username is only valid with protocol = \"smb\""]
    );
    assert_eq!(
        e(
            "[nas.n]\nprotocol = \"smb\"\nservers = [\"h\"]\nshare_path = \"/s\"\nmount_options = \"x\""
        ),
        [
            "agent.toml:6:1: source n: username: missing required key",
            "agent.toml:6:1: source n: password: missing required key",
            "agent.toml:10:17: source n: mount_options: mount_options is only valid with \
             protocol = \"nfs\"",
        ]
    );
    assert_eq!(
        e("[hdfs.h]\nnamenodes = []\nuser = \"hdfs\"\npaths = [\"rel\"]\nkeytab = \"/k\""),
        [
            "agent.toml:7:13: source h: namenodes: must not be empty",
            "agent.toml:9:10: source h: paths[0]: must be an absolute path (starting with /), \
             got \"rel\"",
            "agent.toml:10:10: source h: keytab: keytab needs kerberos_principal (set both or \
             neither)",
        ]
    );
    assert_eq!(
        e(
            "[s3.s]\nendpoint = \"ftp://x\"\nbucket = \"B\"\naccess_key_id = \"a\"\n\
           access_key_secret = { env = \"\" }"
        ),
        [
            "agent.toml:7:12: source s: endpoint: scheme \"ftp\" is not supported; use https",
            "agent.toml:8:10: source s: bucket: \"B\" is not a valid bucket name: it must be 3 to \
             63 characters long",
            "agent.toml:10:29: source s: access_key_secret: environment variable name is empty",
        ]
    );
    assert_eq!(
        e("[filesystem.\"a/b\"]\npath = \"/x\""),
        ["agent.toml:6:13: source \"a/b\": source name must not contain / or control characters"]
    );
    assert_eq!(
        e(
            "[nas.n]\nprotocol = \"nfs\"\nservers = [\"h\"]\nshare_path = \"/s\"\n\
           schedule = { start = 2024-10-21T06:57:27Z, every = \"PT\" }\n\
           speed_limit = \"6:21\""
        ),
        [
            "agent.toml:10:52: source n: schedule.every: \"PT\" is not an ISO 8601 duration \
             (PnYnMnWnDTnHnMnS, e.g. \"P1D\", \"PT12H\")",
            "agent.toml:11:15: source n: speed_limit: \"6:21\" is not \"<from hour>:<to \
             hour>:<KiB/s>\" (windows joined by |)",
        ]
    );
}

#[test]
fn warnings_for_nfs_options_index_all_and_plain_http_s3() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("agent.toml");
    std::fs::write(
        &main,
        format!(
            "{HEAD}[nas.n]\nprotocol = \"nfs\"\nservers = [\"h\"]\nshare_path = \"/s\"\n\
             mount_options = \"vers=4.1,bogus\"\nindex_level = \"ALL\"\n\
             [s3.s]\nendpoint = \"http://192.0.2.1:9000\"\nbucket = \"bkt\"\n\
             access_key_id = {{ env = \"A\" }}\naccess_key_secret = {{ env = \"A\" }}\n"
        ),
    )
    .unwrap();
    let c = load_with(&main, &MapEnv::new().with("A", "a")).unwrap();
    assert_eq!(
        shown(dir.path(), &c.warnings),
        [
            "agent.toml:10:17: warning: source n: mount_options: vers=4.1: the probe checks NFS \
             v3 (MOUNT protocol); a v4-only server will fail it",
            "agent.toml:10:17: warning: source n: mount_options: unknown NFS mount option \"bogus\"",
            "agent.toml:11:15: warning: source n: index_level: \"ALL\" is deprecated by HBR; use \
             \"META\"",
            "agent.toml:13:12: warning: source s: endpoint: plain http to a non-loopback host: \
             the keys and data travel in clear text",
        ]
    );
}

#[test]
fn shipped_example_config_loads() {
    let creds = tempfile::tempdir().unwrap();
    for name in ["finance-smb", "archive-s3-secret"] {
        std::fs::write(creds.path().join(name), "example-value\n").unwrap();
    }
    let env = MapEnv::new()
        .with("ARCHIVE_S3_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .with("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap());
    let main = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/agent.toml");
    let c = match load_with(&main, &env) {
        Ok(c) => c,
        Err(e) => panic!("config/agent.toml does not load:\n{e}"),
    };
    assert_eq!(c.agent.cluster_id, "cl-0004i0nlngorvgjpl7ck");
    assert_eq!(c.control_plane.region, "cn-hangzhou");
    assert!(c.control_plane.credentials.is_none());
    assert_eq!(c.files.len(), 2);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // The sources of conf.d/10-sources.toml are all commented out.
    assert!(c.sources.is_empty());
}

#[test]
fn shipped_example_sources_load_when_uncommented() {
    // Same file with the example sources enabled: they must stay valid.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(root.join("agent.toml"), dir.path().join("agent.toml")).unwrap();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    let text = std::fs::read_to_string(root.join("conf.d/10-sources.toml")).unwrap();
    // `#` + space comments out example lines; `##` lines are prose and stay comments.
    let enabled: String = text
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .map(|l| if l == "#" { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.path().join("conf.d/10-sources.toml"), enabled).unwrap();
    let creds = tempfile::tempdir().unwrap();
    for name in ["finance-smb", "archive-s3-secret"] {
        std::fs::write(creds.path().join(name), "example-value\n").unwrap();
    }
    let env = MapEnv::new()
        .with("ARCHIVE_S3_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .with("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap());
    let c = match load_with(&dir.path().join("agent.toml"), &env) {
        Ok(c) => c,
        Err(e) => panic!("the example sources do not load:\n{e}"),
    };
    let kinds: std::collections::BTreeSet<&str> =
        c.sources.values().map(|s| s.spec.kind()).collect();
    assert_eq!(kinds.len(), 6, "{kinds:?}");
}

/// Never panics, whatever the input: every fixture cut at every line end and with every line
/// dropped in turn, plus some byte-level damage.
#[test]
fn never_panics_on_mutated_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("agent.toml");
    let (env, _creds) = valid_env();
    let mut inputs = Vec::new();
    for case in [
        "valid/agent.toml",
        "valid/conf.d/10-sources.toml",
        "errors/conf.d/10-first.toml",
    ] {
        let text = std::fs::read_to_string(fixture(case)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for i in 0..lines.len() {
            inputs.push(lines[..i].join("\n"));
            let mut dropped = lines.clone();
            dropped.remove(i);
            inputs.push(dropped.join("\n"));
        }
        for (i, _) in text.char_indices().step_by(7) {
            for junk in ["\"", "[", "{", "]", "=", "\n", "é", "\0", "9"] {
                let mut t = text.clone();
                t.insert_str(i, junk);
                inputs.push(t);
            }
        }
    }
    for input in inputs {
        std::fs::write(&main, &input).unwrap();
        let _ = load_with(&main, &env);
    }
}

#[test]
fn an_unreadable_keytab_is_a_warning_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("agent.toml");
    let readable = dir.path().join("hbr.keytab");
    std::fs::write(&readable, b"\x05\x02").unwrap();
    let source = |keytab: &Path| {
        format!(
            "{HEAD}[hdfs.h]\nnamenodes = [\"nn\"]\nuser = \"hbr\"\npaths = [\"/p\"]\n\
             kerberos_principal = \"hbr@EXAMPLE.COM\"\nkeytab = \"{}\"\n",
            keytab.display()
        )
    };
    std::fs::write(&main, source(&readable)).unwrap();
    let c = load_with(&main, &MapEnv::new()).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    std::fs::write(&main, source(&dir.path().join("missing.keytab"))).unwrap();
    let c = load_with(&main, &MapEnv::new()).unwrap();
    assert_eq!(
        shown(dir.path(), &c.warnings),
        [
            "agent.toml:11:10: warning: source h: keytab: cannot read missing.keytab: No such file \
          or directory (os error 2)"
        ]
    );
}

#[test]
fn hdfs_nameservice_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("agent.toml");
    let source = |ns: &str| {
        format!(
            "{HEAD}[hdfs.h]\nnamenodes = [\"nn1\", \"nn2:9000\"]\nnameservice = \"{ns}\"\n\
             user = \"hbr\"\npaths = [\"/p\"]\n"
        )
    };
    std::fs::write(&main, source("lake-ns")).unwrap();
    let c = load_with(&main, &MapEnv::new()).unwrap();
    let SourceSpec::Hdfs(h) = &c.sources["h"].spec else {
        panic!()
    };
    assert_eq!(h.nameservice.as_deref(), Some("lake-ns"));
    std::fs::write(&main, source("hdfs://x")).unwrap();
    let e = load_with(&main, &MapEnv::new()).unwrap_err();
    assert_eq!(
        shown(dir.path(), &e.errors),
        [
            "agent.toml:8:15: source h: nameservice: \"hdfs://x\" is not a nameservice ID (letters, \
          digits, '-', '_', '.')"
        ]
    );
}
