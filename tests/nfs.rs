//! NFS v3 probes (nas protocol = "nfs", cpfs, bmcpfs) end to end: the agent binary against a
//! real nfs-ganesha on 127.0.0.1 (scripts/servers/nfs.sh) and the strict fake HBR.

mod common;
#[path = "support/nfs_server.rs"]
mod nfs_server;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn nas(name: &str, servers: &[&str], share: &str, extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "[nas.{name}]\nprotocol = \"nfs\"\nservers = [{}]\nshare_path = \"{share}\"\n{extra}\n",
        servers.join(", ")
    )
}

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn probe_json(s: &Setup) -> (Run, Vec<Value>) {
    let r = s.run(&["probe", "--json"]).await;
    let reports: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    (r, reports.as_array().unwrap().clone())
}

fn report<'a>(reports: &'a [Value], name: &str) -> &'a Value {
    reports
        .iter()
        .find(|r| r["source"] == name)
        .unwrap_or_else(|| panic!("no report for {name}: {reports:?}"))
}

fn failure_code(r: &Value) -> &str {
    r["failure"]["code"].as_str().unwrap_or("(passed)")
}

fn reason(r: &Value) -> &str {
    r["failure"]["reason"].as_str().unwrap_or_default()
}

fn params(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[tokio::test]
async fn a_good_export_passes_and_apply_registers_the_exact_connection_info() {
    let share = nfs_server::export("open");
    let s = Setup::new(&nas(
        "MyLocalNas",
        &["127.0.0.1:2049"],
        &share,
        "mount_options = \"vers=3,nolock\"",
    ))
    .await;

    let t0 = Instant::now();
    let (r, reports) = probe_json(&s).await;
    assert_eq!(r.code, 0, "{r:?}");
    let rep = report(&reports, "MyLocalNas");
    let layers = layer_names(rep);
    assert_eq!(
        layers,
        ["resolve", "connect", "handshake", "auth", "access"]
    );
    assert_eq!(rep["facts"]["mount_port"], "20048 (portmapper)");
    assert_eq!(rep["facts"]["nfs_port"], "2049");
    assert_eq!(rep["facts"]["auth_flavors"], "AUTH_SYS");
    assert!(
        rep["layers"][4]["detail"]
            .as_str()
            .unwrap()
            .contains("\"hello.txt\""),
        "{rep}"
    );
    // As root the probe uses a reserved source port.
    if rustix::process::geteuid().is_root() {
        assert!(
            rep["facts"]["client_address"]
                .as_str()
                .unwrap()
                .ends_with("(reserved port)"),
            "{rep}"
        );
    }
    eprintln!("probe of a good export: {:?} (agent run)", t0.elapsed());

    let apply = s.run(&["apply"]).await;
    assert_eq!(apply.code, 0, "{apply:?}");
    let writes = s.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].action.as_deref(), Some("AddDataSource"));
    assert_eq!(
        writes[0].params,
        params(&[
            ("ClusterId", CLUSTER.into()),
            ("DataSourceName", "MyLocalNas".into()),
            ("DataSourceType", "COMMON_NAS".into()),
            (
                "ConnectionInfo",
                format!(
                    "{{\"dataServerAddresses\":[{{\"host\":\"127.0.0.1\",\"port\":\"2049\"}}],\
                     \"fileSystemType\":\"nfs\",\"mountOptions\":\"vers=3,nolock\",\
                     \"sharePath\":\"{share}\"}}"
                ),
            ),
        ])
    );
}

#[tokio::test]
async fn cpfs_and_bmcpfs_mount_targets_are_probed_and_registered() {
    let share = nfs_server::export("open");
    let s = Setup::new(&format!(
        "[cpfs.shared]\nmount_target = \"localhost\"\nshare_path = \"{share}\"\n\n\
         [bmcpfs.training]\nmount_target = \"127.0.0.1\"\nshare_path = \"{share}\"\n"
    ))
    .await;
    let apply = s.run(&["apply"]).await;
    assert_eq!(apply.code, 0, "{apply:?}");
    let mut writes = s.writes();
    writes.sort_by(|a, b| a.params["DataSourceName"].cmp(&b.params["DataSourceName"]));
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert_eq!(
        writes[0].params,
        params(&[
            ("ClusterId", CLUSTER.into()),
            ("DataSourceName", "shared".into()),
            ("DataSourceType", "CPFS".into()),
            (
                "ConnectionInfo",
                format!("{{\"sharePath\":\"{share}\",\"vpcMountTarget\":\"localhost\"}}"),
            ),
        ])
    );
    assert_eq!(
        writes[1].params,
        params(&[
            ("ClusterId", CLUSTER.into()),
            ("DataSourceName", "training".into()),
            ("DataSourceType", "BMCPFS".into()),
            (
                "ConnectionInfo",
                format!("{{\"sharePath\":\"{share}\",\"vpcMountTarget\":\"127.0.0.1\"}}"),
            ),
        ])
    );
}

#[tokio::test]
async fn an_export_for_another_host_is_mount_denied_quoting_the_client_address() {
    let s = Setup::new(&nas(
        "denied",
        &["127.0.0.1"],
        &nfs_server::export("denied"),
        "",
    ))
    .await;
    let (r, reports) = probe_json(&s).await;
    assert_eq!(r.code, 1, "{r:?}");
    let rep = report(&reports, "denied");
    assert_eq!(failure_code(rep), "NFS_MOUNT_DENIED", "{rep}");
    assert_eq!(rep["layers"][3]["layer"], "auth");
    assert_eq!(rep["layers"][3]["ok"], false);
    let why = reason(rep);
    assert!(why.contains("MNT3ERR_ACCES"), "{why}");
    // The client address as the server saw it (the MOUNT connection's local address).
    assert!(why.contains("to 127.0.0.1:"), "{why}");
    assert!(why.contains("not exported to 127.0.0.1"), "{why}");

    let apply = s.run(&["apply"]).await;
    assert_eq!(apply.code, 1, "{apply:?}");
    assert!(apply.stdout.contains("probe_failed"), "{apply:?}");
    assert!(s.writes().is_empty());
}

#[tokio::test]
async fn a_share_path_that_does_not_exist_is_export_not_found() {
    let missing = format!("{}/no-such-dir", nfs_server::export("open"));
    let s = Setup::new(&nas("typo", &["127.0.0.1"], &missing, "")).await;
    let (r, reports) = probe_json(&s).await;
    assert_eq!(r.code, 1, "{r:?}");
    let rep = report(&reports, "typo");
    assert_eq!(failure_code(rep), "NFS_EXPORT_NOT_FOUND", "{rep}");
    assert!(reason(rep).contains("MNT3ERR_ACCES"), "{rep}");
    assert!(
        reason(rep).contains(&format!(
            "exports {} to this host",
            nfs_server::export("open")
        )),
        "{rep}"
    );
}

#[tokio::test]
async fn a_squashed_root_that_cannot_list_is_not_readable() {
    let s = Setup::new(&nas(
        "squashed",
        &["127.0.0.1"],
        &nfs_server::export("squashed"),
        "",
    ))
    .await;
    let (r, reports) = probe_json(&s).await;
    assert_eq!(r.code, 1, "{r:?}");
    let rep = report(&reports, "squashed");
    assert_eq!(failure_code(rep), "NFS_NOT_READABLE", "{rep}");
    assert_eq!(rep["layers"][4]["layer"], "access");
    assert!(reason(rep).contains("NFS3ERR_ACCES"), "{rep}");
    assert!(reason(rep).contains("mode 0700, owner 0:0"), "{rep}");
}

#[tokio::test]
async fn nothing_listening_is_tcp_refused() {
    let port = closed_port();
    let s = Setup::new(&nas(
        "refused",
        &[&format!("127.0.0.1:{port}")],
        "/export",
        &format!("mount_options = \"vers=3,mountport={port}\""),
    ))
    .await;
    let (r, reports) = probe_json(&s).await;
    assert_eq!(r.code, 1, "{r:?}");
    let rep = report(&reports, "refused");
    assert_eq!(failure_code(rep), "TCP_REFUSED", "{rep}");
    assert_eq!(rep["layers"][1]["layer"], "connect");
    assert!(
        reason(rep).contains(&format!("MOUNT at 127.0.0.1:{port}")),
        "{rep}"
    );
}

#[tokio::test]
async fn the_mount_port_given_as_the_nfs_port_is_program_unavailable() {
    let s = Setup::new(&nas(
        "wrongport",
        &["127.0.0.1:20048"],
        &nfs_server::export("open"),
        "",
    ))
    .await;
    let (r, reports) = probe_json(&s).await;
    assert_eq!(r.code, 1, "{r:?}");
    let rep = report(&reports, "wrongport");
    assert_eq!(failure_code(rep), "RPC_PROGRAM_UNAVAILABLE", "{rep}");
    assert_eq!(rep["layers"][2]["layer"], "handshake");
    assert!(reason(rep).contains("PROG_UNAVAIL"), "{rep}");
    assert!(reason(rep).contains("NFS NULL at 127.0.0.1:20048"), "{rep}");
    assert!(
        reason(rep).contains("the portmapper registers NFS v3 at port 2049, not 20048"),
        "{rep}"
    );
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_dns_not_found() {
    let s = Setup::new(
        "[bmcpfs.nowhere]\nmount_target = \"cpfs-mount.example.invalid\"\nshare_path = \"/\"\n",
    )
    .await;
    let (r, reports) = probe_json(&s).await;
    assert_eq!(r.code, 1, "{r:?}");
    let rep = report(&reports, "nowhere");
    assert_eq!(failure_code(rep), "DNS_NOT_FOUND", "{rep}");
    assert!(reason(rep).contains("cpfs-mount.example.invalid"), "{rep}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_naming_the_step_and_spares_the_others() {
    // Accepts every connection and never says a word.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hole.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = hole.accept().await {
            conns.push(c);
        }
    });
    let s = Setup::new("").await;
    let extra = format!(
        "{}{}",
        nas(
            "silent",
            &[&format!("127.0.0.1:{port}")],
            "/export",
            &format!("mount_options = \"mountport={port}\""),
        ),
        nas("good", &["127.0.0.1"], &nfs_server::export("open"), "")
    );
    let text = s
        .config_text(&extra)
        .replace("probe_timeout = \"5s\"", "probe_timeout = \"2s\"");
    assert!(text.contains("probe_timeout = \"2s\""));
    std::fs::write(&s.config, text).unwrap();

    let t0 = Instant::now();
    let apply = s.run(&["apply", "--json"]).await;
    let took = t0.elapsed();
    assert_eq!(apply.code, 1, "{apply:?}");
    assert!(took < Duration::from_secs(4), "apply took {took:?}");
    let (_, reports) = probe_json(&s).await;
    let rep = report(&reports, "silent");
    assert_eq!(failure_code(rep), "PROBE_TIMEOUT", "{rep}");
    assert!(
        reason(rep).contains(&format!("MOUNT NULL at 127.0.0.1:{port}")),
        "{rep}"
    );
    assert!(reason(rep).contains("within probe_timeout (2s)"), "{rep}");
    let secs = rep["duration"].as_f64().unwrap();
    assert!((1.9..2.6).contains(&secs), "probe took {secs}s");
    eprintln!("black-holed probe: {secs}s; apply with it: {took:?}");

    // The good source in the same apply was registered.
    let writes = s.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].params["DataSourceName"], "good");
    held.abort();
}

#[tokio::test]
async fn two_servers_of_which_one_is_down_fail_the_source_and_report_each() {
    let down = format!("127.0.0.1:{}", closed_port());
    let s = Setup::new(&nas(
        "pair",
        &["127.0.0.1:2049", &down],
        &nfs_server::export("open"),
        "",
    ))
    .await;
    let (r, reports) = probe_json(&s).await;
    assert_eq!(r.code, 1, "{r:?}");
    let rep = report(&reports, "pair");
    assert_eq!(failure_code(rep), "TCP_REFUSED", "{rep}");
    assert!(
        reason(rep).starts_with(&format!("{down}: NFS at {down}")),
        "{rep}"
    );
    assert!(reason(rep).contains("1 of 2 servers passed"), "{rep}");
    assert_eq!(rep["facts"]["127.0.0.1:2049 result"], "passed");
    assert_eq!(rep["facts"][format!("{down} result")], "FAIL TCP_REFUSED");
    // Every layer of both servers, each detail naming its server.
    let details: Vec<&str> = rep["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["detail"].as_str().unwrap())
        .collect();
    assert_eq!(
        details
            .iter()
            .filter(|d| d.starts_with("127.0.0.1:2049: "))
            .count(),
        5,
        "{details:?}"
    );
    assert!(details.iter().any(|d| d.starts_with(&format!("{down}: "))));

    let text = s.run(&["probe"]).await;
    assert!(
        text.stdout.contains("127.0.0.1:2049 result: passed"),
        "{text:?}"
    );
    assert!(
        text.stdout
            .contains(&format!("{down} result: FAIL TCP_REFUSED")),
        "{text:?}"
    );
    let apply = s.run(&["apply"]).await;
    assert_eq!(apply.code, 1, "{apply:?}");
    assert!(s.writes().is_empty());
}

#[tokio::test]
async fn without_a_reserved_port_a_secure_export_says_privileged_port_required() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new(&format!(
        "{}{}",
        nas("secure", &["127.0.0.1"], &nfs_server::export("secure"), ""),
        nas("open", &["127.0.0.1"], &nfs_server::export("open"), "")
    ))
    .await;
    // As nobody, the process may not bind a port below 1024.
    let mut cmd = if rustix::process::geteuid().is_root() {
        let mut c = tokio::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        c.arg(env!("CARGO_BIN_EXE_hbr-source-agent"));
        c
    } else {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_hbr-source-agent"))
    };
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&s.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cmd
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
        .arg("--config")
        .arg(&s.config)
        .arg("probe")
        .output()
        .await
        .unwrap();
    let r = Run::from(out);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("FAIL NFS_PRIVILEGED_PORT_REQUIRED"),
        "{r:?}"
    );
    assert!(r.stdout.contains("AUTH_TOOWEAK"), "{r:?}");
    assert!(r.stdout.contains("(not a reserved port)"), "{r:?}");
    assert!(r.stdout.contains("CAP_NET_BIND_SERVICE"), "remedy: {r:?}");
    assert!(r.stdout.contains("`insecure`"), "remedy: {r:?}");
    // The export without the requirement passes from the same ordinary port range.
    assert!(r.stdout.contains("1 passed, 1 failed"), "{r:?}");
}

#[tokio::test]
async fn nfs_v4_mount_options_on_cpfs_and_nas_are_warnings() {
    let s = Setup::new(&format!(
        "{}[cpfs.v4]\nmount_target = \"127.0.0.1\"\nmount_options = \"vers=4.1,bogus\"\n",
        nas(
            "v4nas",
            &["127.0.0.1"],
            "/export",
            "mount_options = \"nfsvers=4\""
        )
    ))
    .await;
    let r = s.run(&["validate"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let strict = s.run(&["validate", "--strict"]).await;
    assert_eq!(strict.code, 78, "{strict:?}");
    assert_eq!(
        r.stderr.matches("the probe checks NFS v3").count(),
        2,
        "{r:?}"
    );
    assert!(
        r.stderr.contains("unknown NFS mount option \"bogus\""),
        "{r:?}"
    );
}

#[tokio::test]
async fn explain_covers_every_nfs_code() {
    let s = Setup::new("").await;
    for code in [
        "RPC_PROGRAM_UNAVAILABLE",
        "NFS_MOUNT_DENIED",
        "NFS_EXPORT_NOT_FOUND",
        "NFS_PRIVILEGED_PORT_REQUIRED",
        "NFS_NOT_READABLE",
        "NFS_STALE_HANDLE",
        "NFS_AUTH_REJECTED",
        "NFS_PROTOCOL_ERROR",
        "NFS_SERVER_ERROR",
    ] {
        let r = s.run(&["explain", code]).await;
        assert_eq!(r.code, 0, "{code}: {r:?}");
        assert!(r.stdout.contains(code), "{code}: {r:?}");
    }
}
