//! The SMB probe end to end: the agent binary (whose child process runs libsmbclient) against
//! real Samba smbd on loopback (scripts/servers/smb.sh) and the strict fake HBR.

mod common;
#[path = "support/smb.rs"]
mod smb;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use smb::*;

/// `probe --json` of every source: the reports by name.
async fn probe(s: &Setup) -> (Run, std::collections::BTreeMap<String, Value>) {
    let r = s.run(&["probe", "--json"]).await;
    let reports: Vec<Value> = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("probe --json printed no JSON ({e}): {r:?}"));
    let by_name = reports
        .into_iter()
        .map(|v| (v["source"].as_str().unwrap().to_string(), v))
        .collect();
    (r, by_name)
}

/// The failure code of the one source configured, after checking it is not registered.
async fn failure_of(source: &str) -> (String, Value) {
    servers();
    let s = Setup::new(source).await;
    let (r, reports) = probe(&s).await;
    assert_eq!(r.code, 1, "{r:?}");
    let report = reports.into_values().next().unwrap();
    let apply = s.run(&["apply"]).await;
    assert_eq!(apply.code, 1, "{apply:?}");
    assert!(s.writes().is_empty(), "a failed probe must not register");
    (
        report["failure"]["code"].as_str().unwrap().to_string(),
        report,
    )
}

fn failed_layer(report: &Value) -> (&str, &str) {
    let l = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ok"] == false)
        .unwrap_or_else(|| panic!("no failed layer: {report:#}"));
    (l["layer"].as_str().unwrap(), l["detail"].as_str().unwrap())
}

#[tokio::test]
async fn right_credentials_pass_and_apply_registers_the_exact_request() {
    servers();
    let s = Setup::new(&source("finance", STRICT_PORT, "/share", USER, PASSWORD)).await;
    let (r, reports) = probe(&s).await;
    assert_eq!(r.code, 0, "{r:?}");
    let rep = &reports["finance"];
    let layers = layer_names(rep);
    assert_eq!(
        layers,
        ["resolve", "connect", "handshake", "auth", "access"]
    );
    assert_eq!(rep["facts"]["smb_dialect"], "3.1.1", "{rep:#}");
    // The server's own word on the session, and the agent's TREE_CONNECT on it.
    assert_eq!(rep["facts"]["smb_session"], "user", "{rep:#}");
    assert_eq!(rep["facts"]["smb_signing"], "enabled", "{rep:#}");
    assert_eq!(
        rep["facts"]["smb_tree_connect"], "signed (AES-128-CMAC)",
        "{rep:#}"
    );
    assert_eq!(rep["facts"]["smb_share_type"], "disk", "{rep:#}");
    assert_eq!(rep["facts"]["entries"], "2", "{rep:#}");
    assert!(!r.stdout.contains(PASSWORD) && !r.stderr.contains(PASSWORD));

    let apply = s.run(&["apply"]).await;
    assert_eq!(apply.code, 0, "{apply:?}");
    assert!(!apply.stdout.contains(PASSWORD) && !apply.stderr.contains(PASSWORD));
    let writes = s.writes();
    assert_eq!(writes.len(), 1, "{apply:?}");
    assert_eq!(writes[0].action.as_deref(), Some("AddDataSource"));
    let expected: std::collections::BTreeMap<String, String> = [
        ("ClusterId", CLUSTER),
        ("DataSourceName", "finance"),
        ("DataSourceType", "COMMON_NAS"),
        (
            "ConnectionInfo",
            r#"{"dataServerAddresses":[{"host":"127.0.0.1","port":"4455"}],"fileSystemType":"smb","sharePath":"/share"}"#,
        ),
        (
            "Credential",
            r#"{"mountPassword":"S3cretPass","mountUsername":"smbtest"}"#,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(writes[0].params, expected);
}

#[tokio::test]
async fn a_subdirectory_of_the_share_is_probed() {
    servers();
    let s = Setup::new(&source("sub", STRICT_PORT, "/share/sub", USER, PASSWORD)).await;
    let (r, reports) = probe(&s).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(reports["sub"]["facts"]["entries"], "0");
}

#[tokio::test]
async fn wrong_password_is_a_logon_failure() {
    let (code, rep) = failure_of(&source("f", STRICT_PORT, "/share", USER, "not-it")).await;
    assert_eq!(code, "SMB_LOGON_FAILURE", "{rep:#}");
    let (layer, detail) = failed_layer(&rep);
    assert_eq!(layer, "auth");
    assert!(detail.contains("NT_STATUS_LOGON_FAILURE"), "{detail}");
    assert!(detail.contains("smbtest"), "{detail}");
}

#[tokio::test]
async fn unknown_user_is_a_logon_failure() {
    let (code, rep) = failure_of(&source("f", STRICT_PORT, "/share", "nosuchuser", "x")).await;
    assert_eq!(code, "SMB_LOGON_FAILURE", "{rep:#}");
    assert_eq!(failed_layer(&rep).0, "auth");
}

#[tokio::test]
async fn wrong_share_is_share_not_found() {
    let (code, rep) = failure_of(&source("f", STRICT_PORT, "/nosuchshare", USER, PASSWORD)).await;
    assert_eq!(code, "SMB_SHARE_NOT_FOUND", "{rep:#}");
    let (layer, detail) = failed_layer(&rep);
    assert_eq!(layer, "access");
    assert!(detail.contains("NT_STATUS_BAD_NETWORK_NAME"), "{detail}");
}

#[tokio::test]
async fn a_user_the_share_refuses_is_access_denied_not_a_logon_failure() {
    let (code, rep) = failure_of(&source(
        "f",
        STRICT_PORT,
        "/share",
        OTHER_USER,
        OTHER_PASSWORD,
    ))
    .await;
    assert_eq!(code, "SMB_ACCESS_DENIED", "{rep:#}");
    let (layer, detail) = failed_layer(&rep);
    assert_eq!(layer, "access");
    assert!(detail.contains("NT_STATUS_ACCESS_DENIED"), "{detail}");
}

#[tokio::test]
async fn a_missing_directory_in_the_share_is_path_not_found() {
    let (code, rep) = failure_of(&source("f", STRICT_PORT, "/share/nope", USER, PASSWORD)).await;
    assert_eq!(code, "SMB_PATH_NOT_FOUND", "{rep:#}");
    let (code, _) = failure_of(&source(
        "f",
        STRICT_PORT,
        "/share/hello.txt",
        USER,
        PASSWORD,
    ))
    .await;
    assert_eq!(code, "SMB_PATH_NOT_FOUND");
}

#[tokio::test]
async fn guest_mapping_of_a_wrong_password_is_caught_by_the_servers_session_flag() {
    // [public] on the guest server lets guests in; a wrong password becomes a guest session,
    // which the server marks in SessionFlags.
    let (code, rep) = failure_of(&source("f", GUEST_PORT, "/public", USER, "not-it")).await;
    assert_eq!(code, "SMB_GUEST_FALLBACK", "{rep:#}");
    let (layer, detail) = failed_layer(&rep);
    assert_eq!(layer, "auth");
    assert!(detail.contains("SMB2_SESSION_FLAG_IS_GUEST"), "{detail}");
    assert_eq!(rep["facts"]["smb_session"], "guest", "{rep:#}");
    // Also where a guest could not reach the share: the logon itself is what is wrong.
    let (code, rep) = failure_of(&source("f", GUEST_PORT, "/share", USER, "not-it")).await;
    assert_eq!(code, "SMB_GUEST_FALLBACK", "{rep:#}");
    // An unknown user is mapped to guest there too.
    let (code, _) = failure_of(&source("f", GUEST_PORT, "/public", "nosuchuser", "x")).await;
    assert_eq!(code, "SMB_GUEST_FALLBACK");
}

#[tokio::test]
async fn the_right_password_on_a_guest_mapping_server_is_a_user_session_and_passes() {
    servers();
    for share in ["/public", "/share"] {
        let s = Setup::new(&source("g", GUEST_PORT, share, USER, PASSWORD)).await;
        let (r, reports) = probe(&s).await;
        assert_eq!(r.code, 0, "{share}: {r:?}");
        assert_eq!(reports["g"]["facts"]["smb_session"], "user", "{r:?}");
    }
}

/// Each account state Samba refuses a logon for: the exact code and the server's NT status.
#[tokio::test]
async fn refused_accounts_are_told_apart_by_the_servers_nt_status() {
    for (user, code, status) in [
        (
            "smbdisabled",
            "SMB_ACCOUNT_DISABLED",
            "NT_STATUS_ACCOUNT_DISABLED",
        ),
        (
            "smblocked",
            "SMB_ACCOUNT_LOCKED_OUT",
            "NT_STATUS_ACCOUNT_LOCKED_OUT",
        ),
        (
            "smbkicked",
            "SMB_ACCOUNT_EXPIRED",
            "NT_STATUS_ACCOUNT_EXPIRED",
        ),
        (
            "smbnewpw",
            "SMB_PASSWORD_EXPIRED",
            "NT_STATUS_PASSWORD_MUST_CHANGE",
        ),
        (
            "smbws",
            "SMB_LOGON_RESTRICTED",
            "NT_STATUS_INVALID_WORKSTATION",
        ),
        ("smbtest", "SMB_LOGON_FAILURE", "NT_STATUS_LOGON_FAILURE"),
        ("nosuchuser", "SMB_LOGON_FAILURE", "NT_STATUS_LOGON_FAILURE"),
    ] {
        let (got, rep) =
            failure_of(&source("f", SIGNED_PORT, "/share", user, ACCOUNT_PASSWORD)).await;
        assert_eq!(got, code, "{user}: {rep:#}");
        let (layer, detail) = failed_layer(&rep);
        assert_eq!(layer, "auth", "{user}: {rep:#}");
        assert!(detail.contains(status), "{user}: {detail}");
        assert!(detail.contains(user), "{user}: {detail}");
    }
}

/// `server signing = mandatory`: the agent signs its TREE_CONNECT (SMB 3.1.1: AES-128-CMAC
/// with the preauth-integrity key), so the server answers it, for better or worse.
#[tokio::test]
async fn a_server_that_requires_signing_answers_the_signed_tree_connect() {
    servers();
    let s = Setup::new(&source("sig", SIGNED_PORT, "/share", USER, PASSWORD)).await;
    let (r, reports) = probe(&s).await;
    assert_eq!(r.code, 0, "{r:?}");
    let facts = &reports["sig"]["facts"];
    assert_eq!(facts["smb_signing"], "required", "{facts:#}");
    assert_eq!(
        facts["smb_tree_connect"], "signed (AES-128-CMAC)",
        "{facts:#}"
    );
    assert_eq!(facts["entries"], "2", "{facts:#}");
    let (code, rep) = failure_of(&source("f", SIGNED_PORT, "/nosuchshare", USER, PASSWORD)).await;
    assert_eq!(code, "SMB_SHARE_NOT_FOUND", "{rep:#}");
    assert!(failed_layer(&rep).1.contains("NT_STATUS_BAD_NETWORK_NAME"));
    let (code, rep) = failure_of(&source(
        "f",
        SIGNED_PORT,
        "/share",
        OTHER_USER,
        OTHER_PASSWORD,
    ))
    .await;
    assert_eq!(code, "SMB_ACCESS_DENIED", "{rep:#}");
    assert!(failed_layer(&rep).1.contains("NT_STATUS_ACCESS_DENIED"));
}

/// Samba refuses an unsigned or badly signed TREE_CONNECT on a 2.1/3.x user session with
/// NT_STATUS_ACCESS_DENIED even where signing is not required, so each dialect's signing must
/// be right for the share to be reached (and for a wrong share to read BAD_NETWORK_NAME).
#[tokio::test]
async fn each_dialects_signing_is_accepted_by_the_server() {
    servers();
    for (port, dialect, signing) in [
        (SMB21_PORT, "2.1", "signed (HMAC-SHA256)"),
        (SMB30_PORT, "3.0", "signed (AES-128-CMAC)"),
        (STRICT_PORT, "3.1.1", "signed (AES-128-CMAC)"),
    ] {
        let s = Setup::new(&source("d", port, "/share", USER, PASSWORD)).await;
        let (r, reports) = probe(&s).await;
        assert_eq!(r.code, 0, "{dialect}: {r:?}");
        let facts = &reports["d"]["facts"];
        assert_eq!(facts["smb_dialect"], dialect, "{facts:#}");
        assert_eq!(facts["smb_tree_connect"], signing, "{facts:#}");
        let (code, rep) = failure_of(&source("f", port, "/nosuchshare", USER, PASSWORD)).await;
        assert_eq!(code, "SMB_SHARE_NOT_FOUND", "{dialect}: {rep:#}");
        assert!(failed_layer(&rep).1.contains("NT_STATUS_BAD_NETWORK_NAME"));
    }
}

#[tokio::test]
async fn every_server_is_probed_and_each_must_pass() {
    servers();
    let both = [
        format!("127.0.0.1:{STRICT_PORT}"),
        format!("127.0.0.1:{SIGNED_PORT}"),
    ];
    let s = Setup::new(&source_servers("two", &both, "/share")).await;
    let (r, reports) = probe(&s).await;
    assert_eq!(r.code, 0, "{r:?}");
    let facts = &reports["two"]["facts"];
    assert_eq!(facts[format!("{} result", both[0])], "passed", "{facts:#}");
    assert_eq!(facts[format!("{} result", both[1])], "passed", "{facts:#}");
    assert_eq!(facts[format!("{} smb_signing", both[1])], "required");
    assert_eq!(facts[format!("{} entries", both[0])], "2");

    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mixed = [both[0].clone(), down.to_string()];
    let (code, rep) = failure_of(&source_servers("f", &mixed, "/share")).await;
    assert_eq!(code, "TCP_REFUSED", "{rep:#}");
    assert_eq!(rep["facts"][format!("{} result", mixed[0])], "passed");
    assert_eq!(rep["facts"][format!("{down} result")], "FAIL TCP_REFUSED");
    let reason = rep["failure"]["reason"].as_str().unwrap();
    assert!(reason.contains("1 of 2 servers passed"), "{reason}");
}

#[tokio::test]
async fn server_down_is_tcp_refused() {
    // Bind, then drop: nothing listens on the port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, rep) = failure_of(&source("f", port, "/share", USER, PASSWORD)).await;
    assert_eq!(code, "TCP_REFUSED", "{rep:#}");
    assert_eq!(failed_layer(&rep).0, "connect");
}

#[tokio::test]
async fn an_smb1_only_server_is_a_protocol_mismatch() {
    let (code, rep) = failure_of(&source("f", SMB1_PORT, "/share", USER, PASSWORD)).await;
    assert_eq!(code, "SMB_PROTOCOL_MISMATCH", "{rep:#}");
    let (layer, detail) = failed_layer(&rep);
    assert_eq!(layer, "handshake");
    assert!(detail.contains("SMB 2.0.2 to 3.1.1"), "{detail}");
}

#[tokio::test]
async fn an_http_server_is_a_protocol_mismatch() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut c, _)) = listener.accept().await {
            let mut buf = [0u8; 512];
            let _ = c.read(&mut buf).await;
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let (code, rep) = failure_of(&source("f", port, "/share", USER, PASSWORD)).await;
    assert_eq!(code, "SMB_PROTOCOL_MISMATCH", "{rep:#}");
    let (layer, detail) = failed_layer(&rep);
    assert_eq!(layer, "handshake");
    assert!(detail.contains("HTTP/1.1 400"), "{detail}");
}

/// Two sources, one hung, probed in one run: the good one must pass well before the
/// deadline (5s in common::Setup) and the run must end at the hung one's deadline.
async fn hung_beside_good(hung_port: u16) -> Value {
    servers();
    let s = Setup::new(&format!(
        "{}\n{}",
        source("hung", hung_port, "/share", USER, PASSWORD),
        source("good", STRICT_PORT, "/share", USER, PASSWORD)
    ))
    .await;
    let t0 = Instant::now();
    let (r, reports) = probe(&s).await;
    let took = t0.elapsed();
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(reports["good"]["failure"], Value::Null, "{r:?}");
    let good_took = reports["good"]["duration"].as_f64().unwrap();
    assert!(good_took < 4.0, "the good source took {good_took}s: {r:?}");
    let hung = reports["hung"].clone();
    assert_eq!(hung["failure"]["code"], "PROBE_TIMEOUT", "{hung:#}");
    assert!(
        took < Duration::from_secs(8),
        "the run took {took:?}: one hung server must cost only its own deadline"
    );
    hung
}

#[tokio::test]
async fn a_listener_that_never_answers_costs_only_its_own_deadline() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            held.push(c);
        }
    });
    let hung = hung_beside_good(port).await;
    let (layer, detail) = failed_layer(&hung);
    assert_eq!(layer, "handshake");
    assert!(detail.contains("NEGOTIATE"), "{detail}");
}

/// A proxy to the strict smbd. The first `whole` connections pass whole (the agent's own
/// session); later ones pass their first message (NEGOTIATE) and its answer, then the proxy
/// swallows everything the client sends: libsmbclient hangs in session setup, so only killing
/// its child process ends the probe. Returns the proxy's port.
async fn swallowing_proxy(whole: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((client, _)) = listener.accept().await {
            n += 1;
            let pass_whole = n <= whole;
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", STRICT_PORT)).await
                else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                if pass_whole {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    return;
                }
                let mut header = [0u8; 4];
                if cr.read_exact(&mut header).await.is_err() {
                    return;
                }
                let len = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
                let mut msg = vec![0u8; len];
                if cr.read_exact(&mut msg).await.is_err() {
                    return;
                }
                let _ = sw.write_all(&header).await;
                let _ = sw.write_all(&msg).await;
                // Swallow the rest, keeping both connections open.
                let mut sink = [0u8; 4096];
                while matches!(cr.read(&mut sink).await, Ok(n) if n > 0) {}
                drop(sw);
            });
        }
    });
    port
}

#[tokio::test]
async fn a_server_that_hangs_in_the_agents_session_setup_costs_only_its_own_deadline() {
    servers();
    let port = swallowing_proxy(0).await;
    let hung = hung_beside_good(port).await;
    let (layer, detail) = failed_layer(&hung);
    assert_eq!(layer, "auth", "{hung:#}");
    assert!(
        detail.contains("no answer to the SMB2 session setup as smbtest (NTLMSSP NEGOTIATE)"),
        "{detail}"
    );
    assert_eq!(hung["facts"]["smb_dialect"], "3.1.1");
}

#[tokio::test]
async fn a_server_that_hangs_in_libsmbclients_session_costs_only_its_own_deadline() {
    servers();
    let port = swallowing_proxy(1).await;
    let hung = hung_beside_good(port).await;
    let (layer, detail) = failed_layer(&hung);
    assert_eq!(layer, "access", "{hung:#}");
    assert!(detail.contains("session setup"), "{detail}");
    assert_eq!(hung["facts"]["smb_session"], "user");
}

/// The child processes of `pid` (from /proc/PID/stat's ppid field).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

#[tokio::test]
async fn the_password_is_never_in_the_childs_argv_or_environment() {
    servers();
    let port = swallowing_proxy(1).await;
    let s = Setup::new(&source("hung", port, "/share", USER, PASSWORD)).await;
    let agent = s
        .agent()
        .env("RUST_LOG", "trace")
        .args(["probe", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = agent.id().unwrap();
    // The child hangs in session setup until the 5s deadline: look at it meanwhile.
    let t0 = Instant::now();
    let child = loop {
        if let Some(c) = children_of(pid).into_iter().next() {
            break c;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "no child process appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap();
    let environ = std::fs::read(format!("/proc/{child}/environ")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // The helper binary beside the agent, and no argument at all.
    assert_eq!(
        args,
        [env!("CARGO_BIN_EXE_hbr-source-agent-smb-probe")],
        "{args:?}"
    );
    let vars: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert_eq!(vars.len(), 1, "only HOME: {vars:?}");
    assert!(vars[0].starts_with("HOME="), "{vars:?}");
    for text in args.iter().chain(vars.iter()) {
        assert!(!text.contains(PASSWORD), "the password leaked: {text}");
    }
    let out = agent.wait_with_output().await.unwrap();
    let r = Run::from(out);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("PROBE_TIMEOUT"), "{r:?}");
    assert!(
        !r.stdout.contains(PASSWORD) && !r.stderr.contains(PASSWORD),
        "the password leaked into the output: {r:?}"
    );
    // The child was killed at the deadline, not left behind.
    assert!(
        !std::path::Path::new(&format!("/proc/{child}/cmdline")).exists()
            || std::fs::read(format!("/proc/{child}/cmdline"))
                .unwrap()
                .is_empty(),
        "the child {child} outlived the probe"
    );
}

#[tokio::test]
async fn explain_covers_every_smb_code() {
    let s = Setup::new("").await;
    for code in [
        "SMB_PROTOCOL_MISMATCH",
        "SMB_LOGON_FAILURE",
        "SMB_ACCOUNT_DISABLED",
        "SMB_ACCOUNT_LOCKED_OUT",
        "SMB_ACCOUNT_EXPIRED",
        "SMB_PASSWORD_EXPIRED",
        "SMB_LOGON_RESTRICTED",
        "SMB_NTLM_REFUSED",
        "SMB_GUEST_FALLBACK",
        "SMB_SHARE_NOT_FOUND",
        "SMB_ACCESS_DENIED",
        "SMB_PATH_NOT_FOUND",
        "SMB_CLIENT_ERROR",
    ] {
        let r = s.run(&["explain", code]).await;
        assert_eq!(r.code, 0, "{code}: {r:?}");
        assert!(r.stdout.contains(code), "{code}: {r:?}");
    }
}

#[tokio::test]
async fn a_port_that_drops_connections_is_tcp_timeout() {
    // A listener that never accepts, its backlog filled: the kernel drops further SYNs, as a
    // firewall that drops packets would.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut filler = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            filler.push(c);
        }
    }
    let (code, rep) = failure_of(&source("f", addr.port(), "/share", USER, PASSWORD)).await;
    assert_eq!(code, "TCP_TIMEOUT", "{rep:#}");
    assert_eq!(failed_layer(&rep).0, "connect");
    drop((listener, filler));
}

/// The agent's `SMB helper serves a probe` debug events of a `probe --json` run (JSON logs):
/// (helper PID, server URL) per libsmbclient request, in order; and the reports by name.
async fn probe_with_helpers(
    s: &Setup,
    agent_settings: &str,
) -> (
    Run,
    std::collections::BTreeMap<String, Value>,
    Vec<(u64, String)>,
) {
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("probe_timeout = \"5s\"", agent_settings);
    std::fs::write(&s.config, text).unwrap();
    let out = s
        .agent()
        .env("RUST_LOG", "hbr_source_agent::probe::smb=debug")
        .args(["--log-format", "json", "probe", "--json"])
        .output()
        .await
        .unwrap();
    let r = Run::from(out);
    let reports: Vec<Value> = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("probe --json printed no JSON ({e}): {r:?}"));
    let by_name = reports
        .into_iter()
        .map(|v| (v["source"].as_str().unwrap().to_string(), v))
        .collect();
    let served = r
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "SMB helper serves a probe")
        .map(|v| {
            (
                v["fields"]["pid"].as_u64().unwrap(),
                v["fields"]["server"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (r, by_name, served)
}

#[tokio::test]
async fn many_smb_sources_share_few_helpers_and_each_gets_its_own_result() {
    servers();
    // Good and wrong credentials interleaved, and paths whose answers differ (two entries, none,
    // missing), so that a reused helper carrying anything over would show in a result.
    let mut config = String::new();
    let mut expected = Vec::new();
    for i in 0..4 {
        config.push_str(&source(
            &format!("g{i}"),
            STRICT_PORT,
            "/share",
            USER,
            PASSWORD,
        ));
        expected.push((format!("g{i}"), "2"));
        config.push_str(&source(
            &format!("w{i}"),
            STRICT_PORT,
            "/share",
            USER,
            "not-it",
        ));
        expected.push((format!("w{i}"), "SMB_LOGON_FAILURE"));
        config.push_str(&source(
            &format!("s{i}"),
            STRICT_PORT,
            "/share/sub",
            USER,
            PASSWORD,
        ));
        expected.push((format!("s{i}"), "0"));
        config.push_str(&source(
            &format!("m{i}"),
            STRICT_PORT,
            "/share/none",
            USER,
            PASSWORD,
        ));
        expected.push((format!("m{i}"), "SMB_PATH_NOT_FOUND"));
        config.push_str(&source(
            &format!("o{i}"),
            STRICT_PORT,
            "/share",
            OTHER_USER,
            OTHER_PASSWORD,
        ));
        expected.push((format!("o{i}"), "SMB_ACCESS_DENIED"));
    }
    let s = Setup::new(&config).await;
    let (r, reports, served) =
        probe_with_helpers(&s, "probe_timeout = \"5s\"\nprobe_concurrency = 2").await;
    assert_eq!(r.code, 1, "{r:?}");
    for (name, want) in &expected {
        let rep = &reports[name];
        let got = match rep["failure"]["code"].as_str() {
            Some(code) => code.to_string(),
            None => rep["facts"]["entries"].as_str().unwrap().to_string(),
        };
        assert_eq!(&got, want, "{name}: {rep:#}");
    }
    // Logon and share refusals end in the agent's own session; the 12 others reach a helper.
    assert_eq!(served.len(), 12, "{served:?}\n{r:?}");
    let pids: std::collections::BTreeSet<u64> = served.iter().map(|(p, _)| *p).collect();
    assert!(
        pids.len() <= 2,
        "{} helpers for 12 requests at probe_concurrency 2: {served:?}",
        pids.len()
    );
    assert!(!r.stdout.contains(PASSWORD) && !r.stderr.contains(PASSWORD));
}

#[tokio::test]
async fn a_helper_killed_at_the_deadline_is_not_reused() {
    servers();
    let port = swallowing_proxy(1).await;
    let mut config = source("a-hung", port, "/share", USER, PASSWORD);
    for i in 0..3 {
        config.push_str(&source(
            &format!("good{i}"),
            STRICT_PORT,
            "/share",
            USER,
            PASSWORD,
        ));
    }
    let s = Setup::new(&config).await;
    // One probe at a time: the hung one's helper would be the next one's if it were pooled.
    let (r, reports, served) =
        probe_with_helpers(&s, "probe_timeout = \"3s\"\nprobe_concurrency = 1").await;
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        reports["a-hung"]["failure"]["code"], "PROBE_TIMEOUT",
        "{r:?}"
    );
    for i in 0..3 {
        let rep = &reports[&format!("good{i}")];
        assert_eq!(rep["failure"], Value::Null, "{rep:#}");
        assert_eq!(rep["facts"]["entries"], "2", "{rep:#}");
    }
    let hung_url = format!("smb://127.0.0.1:{port}");
    let hung: Vec<u64> = served
        .iter()
        .filter(|(_, s)| *s == hung_url)
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(hung.len(), 1, "{served:?}");
    let good: Vec<u64> = served
        .iter()
        .filter(|(_, s)| *s != hung_url)
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(good.len(), 3, "{served:?}");
    assert!(
        !good.contains(&hung[0]),
        "the killed helper served again: {served:?}"
    );
}

/// A request line for the helper binary.
fn helper_request(id: u64, user: &str, password: &str, path: &str) -> String {
    serde_json::json!({
        "server": format!("smb://127.0.0.1:{STRICT_PORT}"),
        "share": "/share",
        "path": path,
        "username": user,
        "password": password,
        "workgroup": "WORKGROUP",
        "timeout_ms": 5000,
        "id": id,
    })
    .to_string()
        + "\n"
}

/// One helper process, several requests on its stdin: each is answered with fresh
/// libsmbclient state. A wrong password after a good one for the same user and server must be
/// refused (a reused context would hand it the good one's cached connection), and a good one
/// after it must pass again.
#[tokio::test]
async fn one_helper_answers_each_request_with_its_own_credentials() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    servers();
    let home = tempfile::Builder::new()
        .prefix("hbr-smb-")
        .tempdir()
        .unwrap();
    std::fs::create_dir(home.path().join(".smb")).unwrap();
    let h = home.path().display();
    std::fs::write(
        home.path().join(".smb/smb.conf"),
        format!(
            "[global]\n\tclient min protocol = SMB2_02\n\tclient max protocol = SMB3\n\
             \tname resolve order = host\n\tlock directory = {h}\n\tstate directory = {h}\n\
             \tcache directory = {h}\n\tprivate dir = {h}\n\tncalrpc dir = {h}/ncalrpc\n"
        ),
    )
    .unwrap();
    let mut helper = tokio::process::Command::new(env!("CARGO_BIN_EXE_hbr-source-agent-smb-probe"))
        .env_clear()
        .env("HOME", home.path())
        .current_dir(home.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = helper.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(helper.stdout.take().unwrap()).lines();
    let cases = [
        (USER, PASSWORD, "/", "share+ path+ list+"),
        (USER, "not-it", "/", "share- logon-"),
        (USER, PASSWORD, "/sub", "share+ path+ list+"),
        (OTHER_USER, OTHER_PASSWORD, "/", "share-"),
        (USER, PASSWORD, "/none", "share+ path-"),
        (USER, PASSWORD, "/", "share+ path+ list+"),
    ];
    for (i, (user, password, path, want)) in cases.iter().enumerate() {
        let id = i as u64 + 1;
        stdin
            .write_all(helper_request(id, user, password, path).as_bytes())
            .await
            .unwrap();
        let mut steps = Vec::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .expect("the helper answers")
                .unwrap()
                .expect("the helper still runs");
            if line == format!("hbr-smb-done {id}") {
                break;
            }
            if let Some(json) = line.strip_prefix("hbr-smb-step ") {
                let step: Value = serde_json::from_str(json).unwrap();
                steps.push(format!(
                    "{}{}",
                    step["name"].as_str().unwrap(),
                    if step["ok"] == true { "+" } else { "-" }
                ));
            }
        }
        // smbother logs on but [share] refuses it: either step may say so.
        let got = steps.join(" ");
        if *user == OTHER_USER {
            assert!(got.starts_with("share-"), "request {id} ({user}): {got}");
        } else {
            assert_eq!(got, *want, "request {id} ({user}, {path})");
        }
    }
    // At EOF the helper exits by itself and removes its home.
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(10), helper.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(!home.path().exists(), "the helper left its home behind");
}
