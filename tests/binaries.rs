//! The two binaries: only the SMB probe's helper links libsmbclient (the agent would otherwise
//! spend 55–75 ms in the dynamic loader at every start, docs/benchmarks.md), and an agent that
//! cannot find the helper says which file is missing.

mod common;
#[path = "support/smb.rs"]
mod smb;

use common::*;

const AGENT: &str = env!("CARGO_BIN_EXE_hbr-source-agent");
const HELPER: &str = env!("CARGO_BIN_EXE_hbr-source-agent-smb-probe");

/// The DT_NEEDED entries of an ELF file, from `readelf -d` (binutils: wherever the linker is).
fn needed(path: &str) -> Vec<String> {
    let out = std::process::Command::new("readelf")
        .args(["-d", "-W", path])
        .output()
        .expect("readelf runs (binutils)");
    assert!(out.status.success(), "readelf -d {path}: {out:?}");
    let libs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_string()))
        .collect();
    // Every dynamically linked Rust binary needs libc: an empty list means the parse failed.
    assert!(
        libs.iter().any(|l| l.starts_with("libc.so")),
        "no libc among the NEEDED entries of {path}: {libs:?}"
    );
    libs
}

#[test]
fn the_agent_does_not_link_libsmbclient() {
    let libs = needed(AGENT);
    assert!(
        !libs.iter().any(|l| l.starts_with("libsmbclient")),
        "{AGENT} needs {libs:?}"
    );
}

#[test]
fn the_smb_probe_helper_links_libsmbclient() {
    let libs = needed(HELPER);
    assert!(
        libs.iter().any(|l| l.starts_with("libsmbclient")),
        "{HELPER} needs {libs:?}"
    );
}

#[tokio::test]
async fn a_missing_helper_is_an_smb_client_error_naming_the_file() {
    if std::path::Path::new("/usr/libexec/hbr-source-agent/hbr-source-agent-smb-probe").exists() {
        eprintln!("skipped: the package's helper is installed on this machine");
        return;
    }
    smb::servers();
    let s = Setup::new(&smb::source(
        "finance",
        smb::STRICT_PORT,
        "/share",
        smb::USER,
        smb::PASSWORD,
    ))
    .await;
    // The agent alone in a directory of its own: no helper beside it.
    let lonely = tempfile::tempdir().unwrap();
    let exe = lonely.path().join("hbr-source-agent");
    std::fs::copy(AGENT, &exe).unwrap();
    let agent = s.agent();
    let std = agent.as_std();
    let mut c = tokio::process::Command::new(&exe);
    c.args(std.get_args()).env_clear();
    for (k, v) in std.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    let out = c.args(["probe", "--json"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failure = &reports[0]["failure"];
    assert_eq!(failure["code"], "SMB_CLIENT_ERROR", "{reports:#}");
    let reason = failure["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "{}/hbr-source-agent-smb-probe",
            lonely.path().display()
        )) && reason.contains("/usr/libexec/hbr-source-agent/hbr-source-agent-smb-probe"),
        "{reason}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(smb::PASSWORD),
        "{out:?}"
    );
}
