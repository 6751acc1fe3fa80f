//! End to end: the agent binary against the strict fake HBR, with real directories and mounts
//! for the filesystem probe.

mod common;

use common::*;

#[tokio::test]
async fn apply_registers_exactly_once_and_the_exact_request() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;

    let plan = s.run(&["plan"]).await;
    assert_eq!(plan.code, 2, "changes pending: {plan:?}");
    assert!(plan.stdout.contains("+ add"), "{plan:?}");
    assert!(s.writes().is_empty(), "plan must not write");

    let apply = s.run(&["apply"]).await;
    assert_eq!(apply.code, 0, "{apply:?}");
    let writes = s.writes();
    assert_eq!(writes.len(), 1);
    let add = &writes[0];
    assert_eq!(add.action.as_deref(), Some("AddDataSource"));
    let expected: std::collections::BTreeMap<String, String> = [
        ("ClusterId", CLUSTER.to_string()),
        ("DataSourceName", "scratch".to_string()),
        ("DataSourceType", "COMMON_FILE_SYSTEM".to_string()),
        (
            "ConnectionInfo",
            format!("{{\"path\":\"{}\"}}", data.path().display()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(add.params, expected);

    let id = s.fake.data_sources()[0].data_source_id.clone();
    assert_eq!(
        s.state()["sources"]["scratch"]["data_source_id"],
        id.as_str()
    );

    // Again: nothing to do.
    let again = s.run(&["apply"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("in_sync"), "{again:?}");
    assert_eq!(s.writes().len(), 1);
    let plan = s.run(&["plan"]).await;
    assert_eq!(plan.code, 0, "{plan:?}");
}

#[tokio::test]
async fn a_lost_state_file_never_duplicates() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    assert_eq!(s.run(&["apply"]).await.code, 0);
    std::fs::remove_file(s.state_dir.join("state.json")).unwrap();
    let r = s.run(&["apply"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s.fake.data_sources().len(), 1);
    assert_eq!(s.writes().len(), 1);
}

#[tokio::test]
async fn root_fs_path_fails_probe_and_is_not_registered() {
    // /var/tmp is on the root file system on the machines this runs on; check, don't assume.
    let on_root = tempfile::tempdir_in("/var/tmp").unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(on_root.path()).unwrap().dev(),
        std::fs::metadata("/").unwrap().dev()
    );
    std::fs::write(on_root.path().join("f"), b"x").unwrap();
    let s = Setup::new(&filesystem_source("rootfs", on_root.path())).await;

    let probe = s.run(&["probe"]).await;
    assert_eq!(probe.code, 1, "{probe:?}");
    assert!(probe.stdout.contains("FAIL PATH_NOT_MOUNTED"), "{probe:?}");
    assert!(
        probe.stdout.contains("allow_root_fs = true"),
        "remedy shown: {probe:?}"
    );

    let apply = s.run(&["apply"]).await;
    assert_eq!(apply.code, 1, "{apply:?}");
    assert!(apply.stdout.contains("probe_failed"), "{apply:?}");
    assert!(s.writes().is_empty());

    let plan = s.run(&["plan"]).await;
    assert_eq!(
        plan.code, 1,
        "a failed probe is an error for plan: {plan:?}"
    );

    // The operator allows it: registered, with a warning.
    s.write_config(&format!(
        "{}allow_root_fs = true\n",
        filesystem_source("rootfs", on_root.path())
    ));
    let probe = s.run(&["probe", "--json"]).await;
    assert_eq!(probe.code, 0, "{probe:?}");
    let reports: serde_json::Value = serde_json::from_str(&probe.stdout).unwrap();
    assert_eq!(reports[0]["warnings"][0]["code"], "PATH_ON_ROOT_FS");
    assert_eq!(reports[0]["failure"], serde_json::Value::Null);
    assert_eq!(s.run(&["apply"]).await.code, 0);
    assert_eq!(s.writes().len(), 1);
}

#[tokio::test]
async fn probe_codes_for_missing_file_and_unreadable() {
    let data = mounted_dir();
    let file = data.path().join("data.bin");
    let missing = data.path().join("missing");
    let locked = data.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::write(locked.join("f"), b"x").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let s = Setup::new(&format!(
        "{}{}{}",
        filesystem_source("missing", &missing),
        filesystem_source("file", &file),
        filesystem_source("locked", &locked)
    ))
    .await;
    // Root reads anything: drop to nobody, as the service's own user would be.
    let mut cmd = if rustix::process::geteuid().is_root() {
        let mut c = tokio::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        c.arg(env!("CARGO_BIN_EXE_hbr-source-agent"));
        c
    } else {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_hbr-source-agent"))
    };
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&s.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cmd
        .env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
        .arg("--config")
        .arg(&s.config)
        .args(["probe", "--json"])
        .output()
        .await
        .unwrap();
    let r = Run::from(out);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(r.code, 1, "{r:?}");
    let reports: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let code = |name: &str| {
        reports
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["source"] == name)
            .unwrap()["failure"]["code"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(code("missing"), "PATH_NOT_FOUND");
    assert_eq!(code("file"), "PATH_NOT_DIRECTORY");
    assert_eq!(code("locked"), "PATH_NOT_READABLE");
}

#[tokio::test]
async fn hbr_errors_are_reported_with_code_message_and_request_id() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    s.fake.inject_for(
        "AddDataSource",
        Fault::Failure {
            count: 1,
            code: "Forbidden.RAM".into(),
            message: "User not authorized to operate on the specified resource.".into(),
            http_status: 403,
        },
    );
    let r = s.run(&["apply"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("Forbidden.RAM"), "{r:?}");
    assert!(r.stdout.contains("User not authorized"), "{r:?}");
    let rid = s
        .fake
        .requests()
        .into_iter()
        .find(|q| q.code.as_deref() == Some("Forbidden.RAM"))
        .unwrap()
        .request_id;
    assert!(r.stdout.contains(&rid), "RequestId {rid} shown: {r:?}");
    assert!(s.fake.data_sources().is_empty());
    // The next pass succeeds.
    assert_eq!(s.run(&["apply"]).await.code, 0);
    assert_eq!(s.fake.data_sources().len(), 1);
}

#[tokio::test]
async fn throttling_and_5xx_are_retried() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    s.fake.inject(Fault::Throttle {
        count: 2,
        action: Some("DescribeDataSources".into()),
    });
    s.fake.inject_for(
        "AddDataSource",
        Fault::ServerError {
            count: 1,
            status: 503,
        },
    );
    let r = s.run(&["apply"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s.fake.data_sources().len(), 1);
}

#[tokio::test]
async fn describe_failure_is_an_error_not_an_add() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    s.fake.inject_for(
        "DescribeDataSources",
        Fault::Failure {
            count: 1,
            code: "InvalidParameter".into(),
            message: "bad".into(),
            http_status: 400,
        },
    );
    let r = s.run(&["apply"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("InvalidParameter"), "{r:?}");
    assert!(s.fake.data_sources().is_empty());
}

#[tokio::test]
async fn invalid_config_exits_78_with_positions() {
    let s = Setup::new("[filesystem.rel]\npath = \"relative/dir\"\nbogus = 1\n").await;
    for cmd in [&["validate"][..], &["probe"], &["plan"], &["apply"]] {
        let r = s.run(cmd).await;
        assert_eq!(r.code, 78, "{cmd:?}: {r:?}");
        let cfg = s.config.display().to_string();
        assert!(r.stderr.contains(&format!("{cfg}:")), "{r:?}");
        assert!(r.stderr.contains("source rel"), "{r:?}");
        assert!(r.stderr.contains("bogus"), "{r:?}");
        assert!(r.stderr.contains("path"), "{r:?}");
    }
    assert!(s.fake.requests().is_empty());
}

#[tokio::test]
async fn explain_and_usage_exit_codes() {
    let s = Setup::new("").await;
    let r = s.run(&["explain", "path_not_mounted"]).await;
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("allow_root_fs"), "{r:?}");
    let r = s.run(&["explain", "NO_SUCH"]).await;
    assert_eq!(r.code, 64, "{r:?}");
    let r = s.run(&["frobnicate"]).await;
    assert_eq!(r.code, 64, "usage errors are not plan's 2: {r:?}");
    let r = s.run(&["probe", "nope"]).await;
    assert_eq!(r.code, 64, "{r:?}");
}

#[tokio::test]
async fn status_shows_the_last_pass() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    let r = s.run(&["status"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("never applied"), "{r:?}");
    assert_eq!(s.run(&["apply"]).await.code, 0);
    let r = s.run(&["status", "--json"]).await;
    assert_eq!(r.code, 0);
    let st: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(st["sources"]["scratch"]["outcome"], "added");
    assert_eq!(st["sources"]["scratch"]["last_probe"]["passed"], true);
}

#[tokio::test]
async fn a_second_apply_waits_for_nobody_and_says_why() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    // Hold the lock as a running daemon would.
    let _held = hbr_source_agent::state::StateStore::open(&s.state_dir).unwrap();
    let r = s.run(&["apply"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("lock"), "{r:?}");
    assert!(s.fake.requests().is_empty());
}

#[tokio::test]
async fn v2_signature_and_sts_token_are_accepted_by_the_strict_fake() {
    use common::fake_hbr::{Account, SignatureVersion};
    let data = mounted_dir();
    let fake = FakeHbr::start(FakeConfig {
        accounts: vec![Account::sts(
            "STS.testkey",
            "sts-secret",
            "sts-token-value",
            None,
        )],
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let mut s = Setup::new(&filesystem_source("scratch", data.path())).await;
    s.fake = fake;
    for (sig, version) in [("v2", SignatureVersion::V2), ("v3", SignatureVersion::V3)] {
        s.write_config(&format!(
            "{}\n[filesystem.{sig}]\npath = \"{}\"\n",
            filesystem_source("scratch", data.path()),
            data.path().display()
        ));
        let text = std::fs::read_to_string(&s.config).unwrap().replace(
            "timeout = \"3s\"",
            &format!("timeout = \"3s\"\nsignature = \"{sig}\""),
        );
        std::fs::write(&s.config, text).unwrap();
        let r = s
            .agent()
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", "STS.testkey")
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "sts-secret")
            .env("ALIBABA_CLOUD_SECURITY_TOKEN", "sts-token-value")
            .arg("apply")
            .output()
            .await
            .unwrap();
        let r = Run::from(r);
        assert_eq!(r.code, 0, "{sig}: {r:?}");
        let last = s.fake.requests().pop().unwrap();
        assert_eq!(last.signature_version, Some(version));
        assert_eq!(last.status, Some(200));
    }
    assert_eq!(s.fake.data_sources().len(), 3);
}

#[tokio::test]
async fn validate_reports_every_error_of_every_file_at_once() {
    let s = Setup::new("").await;
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config/errors/agent.toml");
    let out = s
        .agent_for(&fixture)
        .arg("validate")
        .output()
        .await
        .unwrap();
    let r = Run::from(out);
    assert_eq!(r.code, 78, "{r:?}");
    let dir = fixture.parent().unwrap().display().to_string();
    for line in [
        format!("{dir}/agent.toml:5:1: [agent]: probe_timout: unknown key"),
        format!("{dir}/agent.toml:6:21: [agent]: probe_concurrency: invalid type"),
        format!("{dir}/conf.d/10-first.toml:2:8: source scratch: path: must be an absolute path"),
        format!(
            "{dir}/conf.d/10-first.toml:8:52: source docs: schedule.every: \"1 day\" is not an ISO 8601 duration"
        ),
        format!(
            "{dir}/conf.d/10-first.toml:9:43: source docs: speed_limit[0].to_hour: 25 is out of range 0-24"
        ),
        format!(
            "{dir}/conf.d/20-second.toml:1:1: source lake: duplicate source name \"lake\": also defined at {dir}/conf.d/10-first.toml:11:1"
        ),
        format!(
            "{dir}/conf.d/20-second.toml:11:20: source finance: password: environment variable FINANCE_PW_UNSET is not set"
        ),
        format!(
            "{dir}/conf.d/20-second.toml:17:30: source archive: access_key_secret: cannot read secret file"
        ),
    ] {
        assert!(r.stderr.contains(&line), "missing {line:?} in {r:?}");
    }
    assert!(r.stderr.contains("(9 error(s))"), "{r:?}");
}

#[tokio::test]
async fn an_add_that_times_out_but_takes_effect_is_never_added_twice() {
    let data = mounted_dir();
    let s = Setup::new(&filesystem_source("scratch", data.path())).await;
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("timeout = \"3s\"", "timeout = \"1s\"");
    std::fs::write(&s.config, text).unwrap();
    // HBR applies the add after the client has given up on the answer.
    s.fake.inject_for(
        "AddDataSource",
        Fault::Slow {
            count: 1,
            delay: std::time::Duration::from_millis(2500),
        },
    );
    let first = s.run(&["apply"]).await;
    // The outcome could not be known in time: reported, not retried blindly.
    assert_eq!(first.code, 1, "{first:?}");
    assert!(first.stdout.contains("AddDataSource"), "{first:?}");
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    assert_eq!(s.fake.data_sources().len(), 1, "the slow add took effect");

    let second = s.run(&["apply"]).await;
    assert_eq!(second.code, 0, "{second:?}");
    assert!(second.stdout.contains("adopted"), "{second:?}");
    assert_eq!(s.fake.data_sources().len(), 1, "never added twice");
    let adds = s
        .fake
        .requests()
        .iter()
        .filter(|r| r.action.as_deref() == Some("AddDataSource"))
        .count();
    assert_eq!(adds, 1);
}
