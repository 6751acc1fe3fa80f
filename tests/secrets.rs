//! No secret in any output, log, state file, plan or `Debug` string: every command runs with
//! known secret values in all four forms, at the most verbose log level, in text and JSON, and
//! everything it printed or wrote is searched for them.

mod common;
#[path = "support/smb.rs"]
mod smb;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::fake_hbr::Account;
use common::*;

const CP_KEY_ID: &str = "LTAI5tSecretMarkerKeyId01";
const CP_SECRET: &str = "S3CR3T-control-plane-0001";
const SMB_PASSWORD: &str = "S3CR3T-smb-password-0002";
const S3_SECRET: &str = "S3CR3T-s3-access-secret-0003";
const S3_KEY_ID: &str = "AKIAS3SECRETMARKER0004";
const LITERAL_PASSWORD: &str = "S3CR3T-literal-password-0005";
const SECRETS: [&str; 6] = [
    CP_SECRET,
    SMB_PASSWORD,
    S3_SECRET,
    S3_KEY_ID,
    LITERAL_PASSWORD,
    smb::PASSWORD,
];

#[tokio::test]
async fn no_command_leaks_a_secret() {
    let fake = FakeHbr::start(FakeConfig {
        accounts: vec![Account::new(CP_KEY_ID, CP_SECRET)],
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("hbr-key-id"), CP_KEY_ID).unwrap();
    std::fs::write(creds.join("hbr-secret"), format!("{CP_SECRET}\n")).unwrap();
    let pw_file = dir.path().join("smb-password");
    std::fs::write(&pw_file, SMB_PASSWORD).unwrap();
    std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A real smbd, so the SMB password goes all the way to the session (through the probe's
    // child process) and the probe passes.
    smb::servers();
    let real_pw_file = dir.path().join("real-smb-password");
    std::fs::write(&real_pw_file, smb::PASSWORD).unwrap();
    std::fs::set_permissions(&real_pw_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let data = mounted_dir();
    let state_dir = dir.path().join("state");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"version = 1
[agent]
cluster_id = "{CLUSTER}"
state_dir = "{state}"
probe_timeout = "3s"
# Registers sources whose kinds cannot be probed yet, so their Credentials reach the fake.
register_on_probe_failure = true

[control_plane]
region = "cn-hangzhou"
endpoint = "{endpoint}"
access_key_id = {{ credential = "hbr-key-id" }}
access_key_secret = {{ credential = "hbr-secret" }}

[filesystem.plain]
path = "{data}"

[nas.finance]
protocol = "smb"
servers = ["127.0.0.1:1"]
share_path = "/finance"
username = "backup"
password = {{ file = "{pw}" }}

[nas.real]
protocol = "smb"
servers = ["127.0.0.1:{smb_port}"]
share_path = "/share"
username = "{smb_user}"
password = {{ file = "{real_pw}" }}

[nas.hr]
protocol = "smb"
servers = ["127.0.0.1:2"]
share_path = "/hr"
username = "backup"
password = "{LITERAL_PASSWORD}"

[s3.archive]
endpoint = "https://s3.example.invalid:9000"
bucket = "backups"
access_key_id = "{S3_KEY_ID}"
access_key_secret = {{ env = "ARCHIVE_S3_SECRET" }}
"#,
            state = state_dir.display(),
            endpoint = fake.endpoint(),
            data = data.path().display(),
            pw = pw_file.display(),
            smb_port = smb::STRICT_PORT,
            smb_user = smb::USER,
            real_pw = real_pw_file.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();

    let agent = |args: &[&str]| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_hbr-source-agent"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("CREDENTIALS_DIRECTORY", &creds)
            .env("ARCHIVE_S3_SECRET", S3_SECRET)
            .env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
            .env("RUST_LOG", "trace")
            .arg("--config")
            .arg(&config)
            .args(args)
            .kill_on_drop(true);
        c
    };

    let mut seen = String::new();
    let commands: &[&[&str]] = &[
        &["validate"],
        &["validate", "--strict"],
        &["probe"],
        &["probe", "--json"],
        &["plan"],
        &["plan", "--json"],
        &["apply"],
        &["apply", "--json"],
        &["plan"],
        &["status"],
        &["status", "--json"],
        &["--log-format", "json", "apply", "--json"],
        &["explain", "PATH_NOT_MOUNTED"],
    ];
    for args in commands {
        let r = Run::from(agent(args).output().await.unwrap());
        assert_ne!(r.code, 78, "{args:?}: {r:?}");
        seen.push_str(&format!("{args:?}\n{}\n{}\n", r.stdout, r.stderr));
    }

    // A secret changes: the update must not show it either.
    std::fs::write(&pw_file, format!("{SMB_PASSWORD}-rotated")).unwrap();
    for args in [&["plan"][..], &["apply", "--json"]] {
        let r = Run::from(agent(args).output().await.unwrap());
        seen.push_str(&format!("{args:?}\n{}\n{}\n", r.stdout, r.stderr));
    }
    assert!(
        seen.contains("a secret changed"),
        "the rotation is detected: {seen}"
    );

    // The daemon, with its runtime socket and journald-style logging, at trace level.
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap(); // systemd's RuntimeDirectory=
    let log_path = dir.path().join("daemon.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let journal = {
        use std::os::unix::fs::MetadataExt;
        let m = log_file.metadata().unwrap();
        format!("{}:{}", m.dev(), m.ino())
    };
    let mut child = agent(&["run", "--runtime-dir"])
        .arg(&runtime)
        .env("JOURNAL_STREAM", journal)
        .stderr(log_file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sock = runtime.join("agent.sock");
    let t0 = std::time::Instant::now();
    let metrics = loop {
        if let Ok(text) = hbr_source_agent::control::get(&sock, "/metrics")
            && text.contains("source_in_sync")
        {
            break text;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no metrics: {:?} {:?}\n{}",
            hbr_source_agent::control::get(&sock, "/metrics").map_err(|e| e.to_string()),
            child.try_wait(),
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    seen.push_str(&metrics);
    seen.push_str(&hbr_source_agent::control::get(&sock, "/status").unwrap());
    for args in [
        &["status", "--runtime-dir"][..],
        &["status", "--json", "--runtime-dir"],
    ] {
        let r = Run::from(agent(args).arg(&runtime).output().await.unwrap());
        assert_eq!(r.code, 0, "{r:?}");
        seen.push_str(&format!("{args:?}\n{}\n{}\n", r.stdout, r.stderr));
    }
    assert!(
        seen.contains("probe_success"),
        "metrics were read: {metrics}"
    );
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    seen.push_str(&String::from_utf8_lossy(&out.stdout));
    let daemon_log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        daemon_log.starts_with('<'),
        "journald priority prefixes: {daemon_log}"
    );
    seen.push_str(&daemon_log);

    for entry in std::fs::read_dir(&state_dir).unwrap() {
        let path = entry.unwrap().path();
        seen.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
    }

    for secret in SECRETS {
        assert!(
            !seen.contains(secret),
            "{secret} leaked into output or state"
        );
    }
    // The checks above must have had something to search.
    assert!(seen.contains("finance"), "source names are shown");
    assert!(seen.contains("TRACE"), "trace-level logs were captured");
    assert!(seen.contains("\"schema\": 1"), "the state file was read");

    // HBR received each Credential exactly where it must, and the control-plane secret nowhere.
    let stored = fake.data_sources();
    let cred = |name: &str| {
        stored
            .iter()
            .find(|d| d.data_source_name == name)
            .and_then(|d| d.credential.clone())
            .unwrap_or_default()
    };
    assert!(cred("finance").contains(&format!("{SMB_PASSWORD}-rotated")));
    assert!(cred("hr").contains(LITERAL_PASSWORD));
    // The real SMB source passed its probe (the password reached smbd) and was registered.
    assert!(cred("real").contains(smb::PASSWORD));
    assert!(
        seen.contains("smb_dialect"),
        "the real SMB session was set up"
    );
    assert!(cred("archive").contains(S3_SECRET) && cred("archive").contains(S3_KEY_ID));
    for r in fake.requests() {
        for (k, v) in &r.query {
            assert!(!v.contains(CP_SECRET), "control-plane secret sent in {k}");
        }
    }
}

#[tokio::test]
async fn a_secret_file_others_can_read_is_reported_without_its_content() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    let pw = s.dir.path().join("smb-password");
    std::fs::write(&pw, SMB_PASSWORD).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!(
            "{text}\n[nas.finance]\nprotocol = \"smb\"\nservers = [\"127.0.0.1:1\"]\nshare_path = \"/finance\"\nusername = \"backup\"\npassword = {{ file = \"{}\" }}\n",
            pw.display()
        ),
    )
    .unwrap();
    let r = s.run(&["validate"]).await;
    assert_eq!(r.code, 0, "a warning, not an error: {r:?}");
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("source finance: password:"), "{r:?}");
    assert!(all.contains("mode 0644"), "{r:?}");
    assert!(all.contains(&pw.display().to_string()), "{r:?}");
    assert!(!all.contains(SMB_PASSWORD), "{r:?}");
    let strict = s.run(&["validate", "--strict"]).await;
    assert_eq!(strict.code, 78, "--strict refuses it: {strict:?}");

    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = s.run(&["validate", "--strict"]).await;
    assert_eq!(r.code, 0, "0600 is fine: {r:?}");
}
