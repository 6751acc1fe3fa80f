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
