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
