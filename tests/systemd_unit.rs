//! The shipped unit is valid and hardened: `systemd-analyze verify` is clean and
//! `systemd-analyze security --offline=true` rates it "OK" or better.

use std::process::Command;

fn unit_for_this_build(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/hbr-source-agent.service"
    ))
    .unwrap();
    assert!(text.contains("ExecStart=/usr/bin/hbr-source-agent"));
    // verify checks that the binary exists: point it at the one just built.
    let path = dir.join("hbr-source-agent.service");
    std::fs::write(
        &path,
        text.replace(
            "/usr/bin/hbr-source-agent",
            env!("CARGO_BIN_EXE_hbr-source-agent"),
        ),
    )
    .unwrap();
    path
}

#[test]
fn unit_verifies_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/setup.sh installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("hbr-source-agent.service"),
        "warnings about the unit: {stderr}"
    );
}

#[test]
fn unit_security_exposure_is_ok_or_better() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(dir.path());
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no rating in: {stdout}"));
    let label = [
        "PERFECT",
        "SAFE",
        "OK",
        "MEDIUM",
        "EXPOSED",
        "UNSAFE",
        "DANGEROUS",
    ]
    .into_iter()
    .find(|l| line.contains(l))
    .unwrap_or_else(|| panic!("no rating label in {line:?}"));
    assert!(matches!(label, "PERFECT" | "SAFE" | "OK"), "{line}");
}

fn unit_text() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/hbr-source-agent.service"
    ))
    .unwrap()
}

#[test]
fn unit_has_the_operations_contract() {
    let text = unit_text();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for want in [
        "Type=notify",
        "WatchdogSec=2min",
        "Restart=on-failure",
        "User=hbr-source-agent",
        "StateDirectory=hbr-source-agent",
        "ConfigurationDirectory=hbr-source-agent",
        "RuntimeDirectory=hbr-source-agent",
        "ExecStartPre=/usr/bin/hbr-source-agent --config /etc/hbr-source-agent/agent.toml validate",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(lines.contains(&want), "{want} missing in the unit");
    }
    assert!(
        lines.iter().any(|l| l.starts_with("#LoadCredential=")),
        "a LoadCredential example"
    );
}

/// sysusers and tmpfiles, applied to a scratch root as the package's postinst does: the
/// service user exists and the config is readable by its group only.
#[test]
fn sysusers_and_tmpfiles_apply_to_a_scratch_root() {
    let root = tempfile::tempdir().unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd");
    std::fs::create_dir_all(root.path().join("etc/hbr-source-agent/conf.d")).unwrap();
    std::fs::write(root.path().join("etc/hbr-source-agent/agent.toml"), "").unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(args[0])
            .args(&args[1..])
            .arg(format!("--root={}", root.path().display()))
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "systemd-sysusers",
        &format!("{dir}/hbr-source-agent.sysusers"),
    ]);
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(group.contains("hbr-source-agent:"), "{group}");
    run(&[
        "systemd-tmpfiles",
        "--create",
        &format!("{dir}/hbr-source-agent.tmpfiles"),
    ]);
    use std::os::unix::fs::MetadataExt as _;
    let mode = |p: &str| std::fs::metadata(root.path().join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("etc/hbr-source-agent"), 0o750);
    assert_eq!(mode("etc/hbr-source-agent/agent.toml"), 0o640);
    assert_eq!(mode("etc/hbr-source-agent/secrets"), 0o700);
}
