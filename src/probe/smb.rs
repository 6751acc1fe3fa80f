//! `[nas.NAME] protocol = "smb"` (HBR `COMMON_NAS`, `fileSystemType` `smb`): a share on an SMB
//! 2/3 server (Samba, Windows Server, NAS appliances).
//!
//! Layers: `resolve` and `connect` (the shared [`net`] steps), `handshake` (a hand-built SMB2
//! NEGOTIATE in the agent itself: the dialect, or what the server offered instead), `auth` (the
//! agent's own SESSION_SETUP with NTLMv2 on that connection, see [`session`]: the server's NT
//! status names the code, and its SessionFlags tell a guest session), then `access`: the agent's
//! own signed TREE_CONNECT to the share (its NT status again), and `stat` and listing of the path
//! through libsmbclient (pavao) in a child process (the binary `hbr-source-agent-smb-probe`, see
//! [`protocol`]), killed at the probe deadline so that a server that hangs mid-session costs only
//! this probe's time and SMB probes run in parallel (docs/smb.md). Helpers that answered cleanly
//! wait in a small pool for the next probe (fresh libsmbclient state per request), so a pass
//! pays libsmbclient's dynamic loader once per concurrently used helper, not once per probe. libsmbclient's errno only has to
//! tell a missing path from a refused one, since logon and share were settled before.
//!
//! Every address in `servers` is probed at once, and each must pass.

mod negotiate;
mod ntlm;
mod session;

use std::fmt;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use super::{Code, Failed, Layer, Recorder, net};
use crate::config::{HostPort, NasSpec};
use crate::secret::Secret;

/// The child's file name: a binary of its own, so that only it links libsmbclient
/// (`src/bin/hbr-source-agent-smb-probe.rs`).
pub const CHILD_BINARY: &str = "hbr-source-agent-smb-probe";

/// Where the packages install the child (Cargo.toml, `package.metadata.deb` and `generate-rpm`).
pub const CHILD_INSTALLED: &str = "/usr/libexec/hbr-source-agent/hbr-source-agent-smb-probe";

/// The child's side of the protocol below, for `src/bin/hbr-source-agent-smb-probe.rs`.
#[doc(hidden)]
pub mod protocol {
    pub use super::{DONE, HOME_PREFIX, IDLE_EXIT, MARK, Request, Step, StepName, libc_errno};
}

/// Prefix of the child's result lines on stdout.
pub const MARK: &str = "hbr-smb-step ";

/// Prefix of the child's last line for a request, followed by the request's id.
pub const DONE: &str = "hbr-smb-done ";

/// A helper with no request for this long exits by itself, so none lingers on an idle daemon.
pub const IDLE_EXIT: Duration = Duration::from_secs(10);

/// The agent keeps an idle helper for at most this long: shorter than [`IDLE_EXIT`], so a
/// helper taken from the pool has not just decided to exit.
const POOL_IDLE: Duration = Duration::from_secs(8);

/// At most this many idle helpers wait in the pool; more are retired.
const POOL_MAX_IDLE: usize = 16;

/// The name prefix of each helper's private `HOME` (a temporary directory).
pub const HOME_PREFIX: &str = "hbr-smb-";

/// The request to the child, as JSON on its stdin.
#[derive(Serialize, Deserialize)]
pub struct Request {
    /// `smb://ADDRESS:PORT` (the address the agent connected to, so no second lookup).
    pub server: String,
    /// `/SHARE`, percent-encoded.
    pub share: String,
    /// `/` or `/DIR/…` inside the share, percent-encoded.
    pub path: String,
    pub username: String,
    pub password: String,
    pub workgroup: String,
    /// libsmbclient's per-operation timeout: the probe's time left.
    pub timeout_ms: u64,
    /// Echoed in the [`DONE`] line, so an answer can only end its own request.
    #[serde(default)]
    pub id: u64,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("server", &self.server)
            .field("share", &self.share)
            .field("path", &self.path)
            .field("username", &self.username)
            .field("password", &"***")
            .field("workgroup", &self.workgroup)
            .field("id", &self.id)
            .finish()
    }
}

/// The child's steps, in the order it runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepName {
    /// Session setup with the configured credentials, tree connect to a share that cannot
    /// exist (after the share step failed with EACCES).
    Logon,
    /// Tree connect to the share, stat of its root.
    Share,
    /// Stat of the path inside the share.
    Path,
    /// Listing of the path.
    List,
}

/// One step's outcome, one line of the child's stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub name: StepName,
    pub ok: bool,
    /// libsmbclient's errno (it maps the server's NT status to one).
    pub errno: Option<i32>,
    pub message: String,
    pub is_dir: bool,
    pub entries: Option<usize>,
    pub ms: u64,
}

pub async fn probe(spec: &NasSpec, rec: &mut Recorder) -> Result<(), Failed> {
    let (share, path) = split_share_path(&spec.share_path)?;
    match spec.servers.as_slice() {
        [] => Err(Failed::new(Code::DNS_NOT_FOUND, "no server configured")),
        [server] => probe_server(spec, server, &share, &path, rec).await,
        servers => probe_servers(spec, servers, &share, &path, rec).await,
    }
}

/// Every server at once; each must pass ([`super::every_server`]).
async fn probe_servers(
    spec: &NasSpec,
    servers: &[HostPort],
    share: &str,
    path: &str,
    rec: &mut Recorder,
) -> Result<(), Failed> {
    super::every_server(servers, rec, |server, mut sub| async move {
        let result = probe_server(spec, server, share, path, &mut sub).await;
        (sub, result)
    })
    .await
}

async fn probe_server(
    spec: &NasSpec,
    server: &HostPort,
    share: &str,
    path: &str,
    rec: &mut Recorder,
) -> Result<(), Failed> {
    let username = spec.username.clone().unwrap_or_default();
    let empty = Secret::new("", crate::secret::SecretOrigin::Derived("password"));
    let password = spec.password.as_ref().unwrap_or(&empty);

    rec.start(Layer::Resolve);
    let addrs = net::resolve(rec, &server.host, server.port).await?;
    rec.pass(format!("{} → {}", server.host, addrs[0].ip()));

    rec.start(Layer::Connect);
    let mut stream = net::connect(rec, &addrs).await?;
    let peer = stream
        .peer_addr()
        .map_err(|e| Failed::new(Code::TCP_REFUSED, format!("connection lost: {e}")))?;
    rec.pass(format!("connected to {peer}"));

    rec.start(Layer::Handshake);
    // One request per connection: its ClientGuid is random, and 3.1.1 hashes the exact bytes.
    let negotiate_request = negotiate::request();
    let answer = rec
        .within(
            "the SMB2 NEGOTIATE",
            negotiate(&mut stream, &negotiate_request),
        )
        .await?;
    let (answer, negotiate_answer) = match answer {
        Ok((a, raw)) => (Ok(a), raw),
        Err(e) => (Err(e), Vec::new()),
    };
    let (dialect, signing_required) = handshake_outcome(peer, answer)?;
    rec.fact("smb_dialect", negotiate::dialect_name(dialect));
    rec.fact(
        "smb_signing",
        if signing_required {
            "required"
        } else {
            "enabled"
        },
    );
    rec.pass(format!(
        "SMB {} negotiated",
        negotiate::dialect_name(dialect)
    ));

    let workgroup = spec.domain.clone().unwrap_or_else(|| "WORKGROUP".into());
    let user = format!("{workgroup}\\{username}");
    rec.start(Layer::Auth);
    let mut conn = session::Conn::new(stream, dialect, &negotiate_request[4..], &negotiate_answer);
    // A refused logon leaves no session to end.
    own_session(rec, &mut conn, &username, &workgroup, password, peer).await?;
    rec.pass(format!(
        "logged on as {user} (NTLMv2; the server's session is a user session)"
    ));

    rec.start(Layer::Access);
    let share_name = share.trim_start_matches('/');
    let unc = format!("\\\\{}\\{share_name}", server.host);
    let tc = rec
        .within(
            &format!("the SMB2 TREE_CONNECT to {unc}"),
            conn.tree_connect(&unc),
        )
        .await?
        .map_err(|e| broken(&format!("TREE_CONNECT to {unc}"), peer, &e))?;
    let signed = conn.signing();
    match tc {
        session::TreeConnect::Done {
            share_type,
            maximal_access,
        } => {
            rec.fact("smb_share_type", session::share_type_name(share_type));
            rec.fact("smb_maximal_access", format!("0x{maximal_access:08x}"));
            rec.fact(
                "smb_tree_connect",
                match signed {
                    Some(alg) => format!("signed ({alg})"),
                    None => "unsigned".into(),
                },
            );
        }
        session::TreeConnect::Refused { status } => {
            return Err(tree_connect_refused(status, &unc, &user, peer));
        }
    }
    // Politely end the session; a server slow to answer that costs at most a second.
    let close_for = rec.remaining().min(std::time::Duration::from_secs(1));
    let _ = tokio::time::timeout(close_for, conn.close()).await;
    drop(conn);

    let req = Request {
        server: smb_url(peer),
        share: encode(share),
        path: encode(path),
        username,
        password: password.expose().to_owned(),
        workgroup,
        timeout_ms: rec.remaining().as_millis() as u64,
        id: 0,
    };
    run_child(rec, req, share, path).await
}

/// This host's name as a NetBIOS workstation name (the first label, upper case, at most 15
/// characters): what a Samba or Windows `workstations` restriction compares with.
fn workstation() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let first = name.trim().split('.').next().unwrap_or("").to_uppercase();
    let w: String = first.chars().take(15).collect();
    if w.is_empty() { "HBR-AGENT".into() } else { w }
}

/// The two rounds of the SESSION_SETUP, each under the deadline; the logon's failure names the
/// server's NT status, and a session the server marks guest or anonymous is refused here.
async fn own_session(
    rec: &mut Recorder,
    conn: &mut session::Conn,
    username: &str,
    workgroup: &str,
    password: &Secret,
    peer: SocketAddr,
) -> Result<(), Failed> {
    let user = format!("{workgroup}\\{username}");
    let round1 = rec
        .within(
            &format!("the SMB2 session setup as {username} (NTLMSSP NEGOTIATE)"),
            conn.setup_round1(),
        )
        .await?
        .map_err(|e| broken("SESSION_SETUP (NTLMSSP NEGOTIATE)", peer, &e))?;
    let challenge = match round1 {
        Ok(c) => c,
        Err(session::Logon::Refused { status, .. }) => {
            return Err(logon_refused(status, &user, peer, true));
        }
        Err(session::Logon::Done { .. }) => {
            return Err(client_error(format!(
                "{peer} ended the SESSION_SETUP as {user} without asking for credentials"
            )));
        }
    };
    if let Some(name) = &challenge.server_name {
        rec.fact("smb_server_name", name.clone());
    }
    let creds = ntlm::Credentials::new(username, workgroup, password.expose(), &workstation());
    let logon = rec
        .within(
            &format!("the SMB2 session setup as {username} (NTLMSSP AUTHENTICATE)"),
            conn.setup_round2(&creds, &challenge),
        )
        .await?
        .map_err(|e| broken("SESSION_SETUP (NTLMSSP AUTHENTICATE)", peer, &e))?;
    drop(creds);
    match logon {
        session::Logon::Refused { status, .. } => Err(logon_refused(status, &user, peer, false)),
        session::Logon::Done { flags } => {
            let marked = [
                (session::SESSION_FLAG_IS_GUEST, "SMB2_SESSION_FLAG_IS_GUEST"),
                (session::SESSION_FLAG_IS_NULL, "SMB2_SESSION_FLAG_IS_NULL"),
            ]
            .iter()
            .filter(|(bit, _)| flags & bit != 0)
            .map(|(_, name)| *name)
            .collect::<Vec<_>>();
            if marked.is_empty() {
                rec.fact("smb_session", "user");
                return Ok(());
            }
            rec.fact("smb_session", "guest");
            Err(Failed::new(
                Code::SMB_GUEST_FALLBACK,
                format!(
                    "session setup as {user} succeeded, but {peer} marked the session {} \
                     (SessionFlags 0x{flags:04x}): it let the logon in as guest, so the \
                     configured password was not what let it in",
                    marked.join(" | ")
                ),
            ))
        }
    }
}

/// The code for a refused SESSION_SETUP, by the NT status the server returned.
fn logon_refused(status: u32, user: &str, peer: SocketAddr, first_round: bool) -> Failed {
    let name = session::status_name(status);
    let (code, meaning) = match status {
        0xC000_006D | 0xC000_006A | 0xC000_0064 => (
            Code::SMB_LOGON_FAILURE,
            "unknown user, or wrong password or domain",
        ),
        0xC000_0072 => (Code::SMB_ACCOUNT_DISABLED, "the account is disabled"),
        0xC000_0234 => (Code::SMB_ACCOUNT_LOCKED_OUT, "the account is locked out"),
        0xC000_0193 => (Code::SMB_ACCOUNT_EXPIRED, "the account has expired"),
        0xC000_0071 => (Code::SMB_PASSWORD_EXPIRED, "the password has expired"),
        0xC000_0224 => (
            Code::SMB_PASSWORD_EXPIRED,
            "the password must be changed before the next logon",
        ),
        0xC000_006E => (
            Code::SMB_LOGON_RESTRICTED,
            "an account restriction forbids this logon",
        ),
        0xC000_006F => (
            Code::SMB_LOGON_RESTRICTED,
            "the account may not log on at this time",
        ),
        0xC000_0070 => (
            Code::SMB_LOGON_RESTRICTED,
            "the account may not log on from this workstation",
        ),
        0xC000_015B => (
            Code::SMB_LOGON_RESTRICTED,
            "the account lacks the right to log on over the network",
        ),
        0xC000_0022 | 0xC000_0413 => (
            Code::SMB_LOGON_RESTRICTED,
            "the server's policy refuses this logon",
        ),
        0xC000_00BB | 0xC000_0418 => (
            Code::SMB_NTLM_REFUSED,
            "the server does not accept NTLM authentication here",
        ),
        _ => (
            Code::SMB_CLIENT_ERROR,
            "a status the agent does not classify",
        ),
    };
    let round = if first_round {
        "NTLMSSP NEGOTIATE"
    } else {
        "NTLMSSP AUTHENTICATE"
    };
    Failed::new(
        code,
        format!(
            "session setup as {user} refused by {peer}: {name} ({meaning}; in answer to the {round})"
        ),
    )
}

/// The code for a refused TREE_CONNECT, by the NT status the server returned.
fn tree_connect_refused(status: u32, unc: &str, user: &str, peer: SocketAddr) -> Failed {
    let name = session::status_name(status);
    let (code, meaning) = match status {
        0xC000_00CC => (Code::SMB_SHARE_NOT_FOUND, "no share of that name"),
        0xC000_0022 | 0xC000_00CA => (
            Code::SMB_ACCESS_DENIED,
            "the logon succeeds but the share refuses this user",
        ),
        _ => (
            Code::SMB_CLIENT_ERROR,
            "a status the agent does not classify",
        ),
    };
    Failed::new(
        code,
        format!("tree connect to {unc} as {user} refused by {peer}: {name} ({meaning})"),
    )
}

/// An exchange that broke (connection closed, an answer that is not SMB2).
fn broken(step: &str, peer: SocketAddr, e: &str) -> Failed {
    client_error(format!("SMB2 {step} with {peer} failed: {e}"))
}

/// `/share/dir/sub` → (`/share`, `/dir/sub`); `/share` → (`/share`, `/`). Backslashes count as
/// slashes (operators copy UNC paths).
fn split_share_path(share_path: &str) -> Result<(String, String), Failed> {
    let parts: Vec<&str> = share_path
        .split(['/', '\\'])
        .filter(|p| !p.is_empty())
        .collect();
    let Some((share, rest)) = parts.split_first() else {
        return Err(Failed::new(
            Code::SMB_SHARE_NOT_FOUND,
            format!("share_path {share_path:?} names no share (expected /SHARE or /SHARE/DIR)"),
        ));
    };
    Ok((format!("/{share}"), format!("/{}", rest.join("/"))))
}

/// What libsmbclient URL-decodes in a path: everything but unreserved characters and `/`.
const URL_PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

fn encode(path: &str) -> String {
    utf8_percent_encode(path, URL_PATH).to_string()
}

fn smb_url(peer: SocketAddr) -> String {
    match peer {
        SocketAddr::V4(a) => format!("smb://{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("smb://[{}]:{}", a.ip(), a.port()),
    }
}

/// The NEGOTIATE exchange on the connected stream: `request` (from [`negotiate::request`],
/// kept by the caller for the 3.1.1 preauth-integrity hash), then the answer and the answer's
/// message.
async fn negotiate(
    stream: &mut TcpStream,
    request: &[u8],
) -> Result<(negotiate::Answer, Vec<u8>), String> {
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("sending NEGOTIATE failed: {e}"))?;
    let mut header = [0u8; 4];
    match stream.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err("closed the connection without answering".into());
        }
        Err(e) => return Err(format!("no answer: {e}")),
    }
    let len = match negotiate::frame_len(header) {
        Ok(len) => len,
        Err(_) => {
            // Not SMB: quote the start of what it said ("HTTP/1.1 400 Bad Request").
            let mut more = [0u8; 60];
            let n = tokio::time::timeout(
                std::time::Duration::from_millis(200),
                stream.read(&mut more),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
            let mut first_bytes = header.to_vec();
            first_bytes.extend_from_slice(&more[..n]);
            if let Some(end) = first_bytes.iter().position(|b| *b == b'\r' || *b == b'\n') {
                first_bytes.truncate(end);
            }
            return Ok((negotiate::Answer::NotSmb { first_bytes }, Vec::new()));
        }
    };
    let mut msg = vec![0u8; len.min(64 * 1024)];
    stream
        .read_exact(&mut msg)
        .await
        .map_err(|e| format!("the answer broke off: {e}"))?;
    Ok((negotiate::parse(&msg), msg))
}

/// The dialect and whether signing is required, or the protocol failure.
fn handshake_outcome(
    peer: SocketAddr,
    answer: Result<negotiate::Answer, String>,
) -> Result<(u16, bool), Failed> {
    use negotiate::Answer;
    let offered = "SMB 2.0.2 to 3.1.1";
    let mismatch = |what: String| Failed::new(Code::SMB_PROTOCOL_MISMATCH, what);
    match answer {
        Ok(Answer::Negotiated {
            dialect,
            signing_required,
        }) if negotiate::DIALECTS.contains(&dialect) => Ok((dialect, signing_required)),
        Ok(Answer::Negotiated { dialect, .. }) => Err(mismatch(format!(
            "{peer} chose dialect {} to an offer of {offered}",
            negotiate::dialect_name(dialect)
        ))),
        Ok(Answer::Refused { status }) => Err(mismatch(format!(
            "{peer} refused an offer of {offered}: {}",
            negotiate::status_name(status)
        ))),
        Ok(Answer::Smb1Only) => Err(mismatch(format!(
            "{peer} answered an offer of {offered} in SMB1 (NT1) only"
        ))),
        Ok(Answer::NotSmb { first_bytes }) => Err(mismatch(format!(
            "{peer} is not an SMB server: it answered {:?}",
            String::from_utf8_lossy(&first_bytes)
        ))),
        Err(e) => Err(mismatch(format!(
            "{peer} {e} to an SMB2 NEGOTIATE offering {offered} (an SMB1-only server does this)"
        ))),
    }
}

/// The child's private `~/.smb/smb.conf`: no lookups beyond the address given, no state
/// written outside its temporary home, the same protocol range as the NEGOTIATE.
fn client_conf(home: &std::path::Path) -> String {
    let h = home.display();
    format!(
        "[global]\n\
         \tclient min protocol = SMB2_02\n\
         \tclient max protocol = SMB3\n\
         \tname resolve order = host\n\
         \tlock directory = {h}\n\
         \tstate directory = {h}\n\
         \tcache directory = {h}\n\
         \tprivate dir = {h}\n\
         \tncalrpc dir = {h}/ncalrpc\n\
         \tlog level = 0\n"
    )
}

fn client_error(reason: impl Into<String>) -> Failed {
    Failed::new(Code::SMB_CLIENT_ERROR, reason)
}

/// The child binary: next to the agent's own executable (a build tree, or a tarball unpacked in
/// one directory), else where the packages install it.
fn child_binary() -> Result<std::path::PathBuf, Failed> {
    let beside = std::env::current_exe().ok().and_then(|exe| {
        // After a package upgrade replaced the running file, Linux names it "PATH (deleted)";
        // its directory is still the right one.
        let dir = exe.parent()?.to_path_buf();
        Some(dir.join(CHILD_BINARY))
    });
    if let Some(p) = beside.as_ref().filter(|p| p.is_file()) {
        return Ok(p.clone());
    }
    let installed = std::path::Path::new(CHILD_INSTALLED);
    if installed.is_file() {
        return Ok(installed.to_path_buf());
    }
    Err(client_error(format!(
        "the SMB probe's helper program {CHILD_BINARY} is missing: not at {}, not at \
         {CHILD_INSTALLED} (reinstall the package, or put the file built with the agent next \
         to it)",
        beside.map_or_else(
            || "the agent's directory".to_string(),
            |p| p.display().to_string()
        )
    )))
}

/// A running helper process, between or during requests. Dropping it kills the process
/// (`kill_on_drop`) and removes its private `HOME`.
struct Helper {
    child: tokio::process::Child,
    pid: u32,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// The last line the helper wrote to stderr, kept by a task that drains the pipe.
    stderr_last: Arc<Mutex<String>>,
    stderr_task: tokio::task::JoinHandle<()>,
    idle_since: Instant,
    served: u64,
    _home: tempfile::TempDir,
}

/// Idle helpers, most recently used last.
static POOL: Mutex<Vec<Helper>> = Mutex::new(Vec::new());

/// Take the most recently used idle helper that is still fit, retiring those that idled too
/// long or exited.
fn take_idle() -> Option<Helper> {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    while let Some(mut h) = pool.pop() {
        if h.idle_since.elapsed() < POOL_IDLE && matches!(h.child.try_wait(), Ok(None)) {
            return Some(h);
        }
    }
    None
}

/// Return a helper that answered its request cleanly; retire idle ones later.
fn put_back(mut h: Helper) {
    h.idle_since = Instant::now();
    {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() >= POOL_MAX_IDLE {
            return;
        }
        pool.push(h);
    }
    // Without a later probe to take them, helpers past POOL_IDLE are retired here (a dropped
    // child is killed and reaped by tokio), so an idle daemon keeps none.
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async {
            tokio::time::sleep(POOL_IDLE).await;
            let stale: Vec<Helper> = {
                let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
                let (keep, stale) = std::mem::take(&mut *pool)
                    .into_iter()
                    .partition(|h| h.idle_since.elapsed() < POOL_IDLE);
                *pool = keep;
                stale
            };
            drop(stale);
        });
    }
}

fn spawn_helper() -> Result<Helper, Failed> {
    let home = tempfile::Builder::new()
        .prefix(HOME_PREFIX)
        .tempdir()
        .map_err(|e| client_error(format!("cannot create the SMB client's home: {e}")))?;
    let conf_dir = home.path().join(".smb");
    std::fs::create_dir(&conf_dir)
        .and_then(|()| std::fs::write(conf_dir.join("smb.conf"), client_conf(home.path())))
        .map_err(|e| client_error(format!("cannot write the SMB client's smb.conf: {e}")))?;
    let exe = child_binary()?;
    let mut child = tokio::process::Command::new(exe)
        .env_clear()
        .env("HOME", home.path())
        .current_dir(home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| client_error(format!("cannot start the SMB client process: {e}")))?;
    let pid = child.id().unwrap_or(0);
    tracing::debug!(pid, "SMB helper started");
    let stdin = child.stdin.take().expect("piped");
    let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let stderr = child.stderr.take().expect("piped");
    let stderr_last = Arc::new(Mutex::new(String::new()));
    let last = Arc::clone(&stderr_last);
    let stderr_task = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if !line.trim().is_empty() {
                *last.lock().unwrap_or_else(|e| e.into_inner()) = line;
            }
        }
    });
    Ok(Helper {
        child,
        pid,
        stdin,
        lines,
        stderr_last,
        stderr_task,
        idle_since: Instant::now(),
        served: 0,
        _home: home,
    })
}

/// How one request to a helper went.
enum Exchange {
    /// The probe's result; `clean` when the helper answered to the end and may serve again.
    Answered {
        result: Result<(), Failed>,
        clean: bool,
    },
    /// The helper was gone before it wrote anything for this request (EOF or a broken pipe).
    Gone,
}

/// The libsmbclient part of the probe through a helper: an idle one from the pool, or a new one.
/// A pooled helper found gone before it answered is replaced once by a new one; a helper that
/// did not answer cleanly (deadline, error, unreadable output) is killed, never reused.
async fn run_child(
    rec: &mut Recorder,
    mut req: Request,
    share: &str,
    path: &str,
) -> Result<(), Failed> {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    req.id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut req_line = serde_json::to_string(&req).expect("the request serialises");
    req_line.push('\n');
    let pooled = take_idle();
    let was_pooled = pooled.is_some();
    let mut helper = match pooled {
        Some(h) => h,
        None => spawn_helper()?,
    };
    match exchange(rec, &mut helper, &req, &req_line, share, path).await {
        Exchange::Answered { result, clean } => {
            if clean {
                put_back(helper);
            }
            return result;
        }
        Exchange::Gone if was_pooled => {
            tracing::debug!(pid = helper.pid, "SMB helper had exited; starting another");
        }
        Exchange::Gone => return Err(ended(rec, helper, &first_due(&req, share)).await),
    }
    drop(helper);
    let mut helper = spawn_helper()?;
    match exchange(rec, &mut helper, &req, &req_line, share, path).await {
        Exchange::Answered { result, clean } => {
            if clean {
                put_back(helper);
            }
            result
        }
        Exchange::Gone => Err(ended(rec, helper, &first_due(&req, share)).await),
    }
}

fn first_due(req: &Request, share: &str) -> String {
    format!(
        "the SMB session setup as {} and tree connect to {share}",
        req.username
    )
}

/// One request and its answer. Never reads past this request's [`DONE`] line.
async fn exchange(
    rec: &mut Recorder,
    helper: &mut Helper,
    req: &Request,
    req_line: &str,
    share: &str,
    path: &str,
) -> Exchange {
    let id = req.id;
    helper.served += 1;
    tracing::debug!(
        pid = helper.pid,
        request = id,
        served = helper.served,
        server = %req.server,
        "SMB helper serves a probe"
    );
    let failed = |result| Exchange::Answered {
        result: Err(result),
        clean: false,
    };
    // A pipe with room for the request cannot block, but keep it under the deadline anyway.
    let sent = rec
        .within("the SMB client process", async {
            helper.stdin.write_all(req_line.as_bytes()).await?;
            helper.stdin.flush().await
        })
        .await;
    match sent {
        Err(f) => return failed(f),
        Ok(Err(_)) => return Exchange::Gone,
        Ok(Ok(())) => {}
    }
    let mut due = first_due(req, share);
    let mut said_anything = false;
    let done_line = format!("{DONE}{id}");
    let outcome = loop {
        let line = match rec.within(&due, helper.lines.next_line()).await {
            Err(f) => return failed(f),
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None) | Err(_)) if !said_anything => return Exchange::Gone,
            Ok(Ok(None) | Err(_)) => return failed(ended_in_place(rec, helper, &due).await),
        };
        said_anything = true;
        let step = match line.strip_prefix(MARK) {
            Some(json) => match serde_json::from_str::<Step>(json) {
                Ok(step) => step,
                Err(e) => {
                    return failed(client_error(format!(
                        "unreadable answer from the SMB client: {e}"
                    )));
                }
            },
            None if line.starts_with(DONE) => {
                return failed(client_error(format!(
                    "the SMB client process ended its answer during {due} without a result"
                )));
            }
            // libsmbclient's own chatter.
            None => continue,
        };
        match on_step(rec, req, share, path, &step) {
            Ok(Some(next)) => due = next,
            Ok(None) => break Ok(()),
            Err(f) => break Err(f),
        }
    };
    // The result is settled; the helper may serve again once it says it is done. Waiting for
    // that is bounded by the deadline but never turns the result into a timeout.
    let deadline = tokio::time::Instant::from_std(rec.deadline);
    let clean = loop {
        match tokio::time::timeout_at(deadline, helper.lines.next_line()).await {
            Ok(Ok(Some(line))) if line == done_line => break true,
            Ok(Ok(Some(line))) if line.starts_with(MARK) || line.starts_with(DONE) => break false,
            Ok(Ok(Some(_))) => continue,
            _ => break false,
        }
    };
    Exchange::Answered {
        result: outcome,
        clean,
    }
}

/// The failure for a helper whose output ended during `due`, quoting its exit status and the
/// last thing it wrote to stderr.
async fn ended_in_place(rec: &Recorder, helper: &mut Helper, due: &str) -> Failed {
    let status = match rec.within(due, helper.child.wait()).await {
        Ok(s) => s,
        Err(f) => return f,
    };
    // The stderr pipe ends with the process; its last line explains the exit.
    if let Err(f) = rec.within(due, &mut helper.stderr_task).await {
        return f;
    }
    let tail = helper
        .stderr_last
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let last = if tail.is_empty() {
        "no output".to_owned()
    } else {
        tail
    };
    client_error(format!(
        "the SMB client process ended during {due} ({}): {last}",
        status
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string())
    ))
}

async fn ended(rec: &Recorder, mut helper: Helper, due: &str) -> Failed {
    ended_in_place(rec, &mut helper, due).await
}

fn is_no_share(errno: i32) -> bool {
    matches!(
        errno,
        libc_errno::ENOENT | libc_errno::ENODEV | libc_errno::ENXIO
    )
}

fn is_denied(errno: i32) -> bool {
    matches!(errno, libc_errno::EACCES | libc_errno::EPERM)
}

/// Advance the layers by one step of the child: what is due next, `None` when the probe
/// passed, or the failure.
fn on_step(
    rec: &mut Recorder,
    req: &Request,
    share: &str,
    path: &str,
    step: &Step,
) -> Result<Option<String>, Failed> {
    let user = if req.workgroup.is_empty() {
        req.username.clone()
    } else {
        format!("{}\\{}", req.workgroup, req.username)
    };
    let errno = step.errno.unwrap_or(0);
    let said = errno_text(step);
    match (step.name, step.ok) {
        (StepName::Share, true) => Ok(Some(format!("the stat of {path} in {share}"))),
        (StepName::Share, false) if is_no_share(errno) => Err(Failed::new(
            Code::SMB_SHARE_NOT_FOUND,
            format!("libsmbclient's tree connect to {share} failed: {said}"),
        )),
        (StepName::Share, false) if is_denied(errno) => Ok(Some(format!(
            "the SMB session setup as {} (logon check)",
            req.username
        ))),
        (StepName::Share, false) => Err(transport_failure(
            step,
            &format!("libsmbclient's session setup as {user} and tree connect to {share}"),
        )),
        // The agent's own session passed both; libsmbclient's answers differ only when the
        // server changed its mind in between.
        (StepName::Logon, ok) if ok || is_no_share(errno) => Err(Failed::new(
            Code::SMB_ACCESS_DENIED,
            format!(
                "libsmbclient's tree connect to {share} as {user} was refused ({said}) although \
                 the agent's own TREE_CONNECT passed"
            ),
        )),
        (StepName::Logon, false) if is_denied(errno) => Err(Failed::new(
            Code::SMB_LOGON_FAILURE,
            format!(
                "libsmbclient's session setup as {user} was refused ({said}) although the \
                 agent's own SESSION_SETUP passed"
            ),
        )),
        (StepName::Logon, _) => Err(transport_failure(
            step,
            &format!("libsmbclient's session setup as {user}"),
        )),
        (StepName::Path, true) if !step.is_dir => Err(Failed::new(
            Code::SMB_PATH_NOT_FOUND,
            format!("{path} in {share} is a file, not a directory"),
        )),
        (StepName::Path, true) => Ok(Some(format!("the listing of {path} in {share}"))),
        (StepName::Path, false) if is_no_share(errno) || errno == libc_errno::ENOTDIR => {
            Err(Failed::new(
                Code::SMB_PATH_NOT_FOUND,
                format!(
                    "{path} does not exist in {share}: NT_STATUS_OBJECT_NAME_NOT_FOUND \
                     (libsmbclient: {said})"
                ),
            ))
        }
        (StepName::Path, false) if is_denied(errno) => Err(Failed::new(
            Code::SMB_ACCESS_DENIED,
            format!(
                "stat of {path} in {share} as {user}: NT_STATUS_ACCESS_DENIED (libsmbclient: \
                 {said})"
            ),
        )),
        (StepName::Path, false) => Err(transport_failure(
            step,
            &format!("stat of {path} in {share}"),
        )),
        (StepName::List, true) => {
            let n = step.entries.unwrap_or(0);
            rec.fact("entries", n.to_string());
            rec.pass(format!("{share}{} listed: {n} entries", trim_root(path)));
            Ok(None)
        }
        (StepName::List, false) => Err(Failed::new(
            Code::SMB_ACCESS_DENIED,
            format!(
                "listing {path} in {share} as {user} failed (libsmbclient gives no reason: {})",
                step.message
            ),
        )),
    }
}

fn trim_root(path: &str) -> &str {
    if path == "/" { "" } else { path }
}

fn errno_text(step: &Step) -> String {
    step.message
        .strip_prefix("IO Error: ")
        .unwrap_or(&step.message)
        .to_owned()
}

/// A failure that is not about credentials or the share: the connection, a timeout, or an
/// errno the agent does not classify.
fn transport_failure(step: &Step, what: &str) -> Failed {
    let said = errno_text(step);
    match step.errno.unwrap_or(0) {
        libc_errno::ECONNREFUSED => Failed::new(Code::TCP_REFUSED, format!("{what}: {said}")),
        libc_errno::ETIMEDOUT => Failed::new(
            Code::PROBE_TIMEOUT,
            format!("no answer to {what} within probe_timeout: {said}"),
        ),
        libc_errno::EHOSTUNREACH | libc_errno::ENETUNREACH => {
            Failed::new(Code::TCP_UNREACHABLE, format!("{what}: {said}"))
        }
        _ => client_error(format!("{what} failed: {said}")),
    }
}

/// The Linux errno values libsmbclient maps NT statuses to (no libc dependency for a handful
/// of constants).
pub mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const ENXIO: i32 = 6;
    pub const EACCES: i32 = 13;
    pub const ENODEV: i32 = 19;
    pub const ENOTDIR: i32 = 20;
    pub const ENETUNREACH: i32 = 101;
    pub const ETIMEDOUT: i32 = 110;
    pub const ECONNREFUSED: i32 = 111;
    pub const EHOSTUNREACH: i32 = 113;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_path_splits_into_share_and_path() {
        assert_eq!(
            split_share_path("/finance").unwrap(),
            ("/finance".into(), "/".into())
        );
        assert_eq!(
            split_share_path("/finance/q1/").unwrap(),
            ("/finance".into(), "/q1".into())
        );
        assert_eq!(
            split_share_path("\\finance\\q1").unwrap(),
            ("/finance".into(), "/q1".into())
        );
        assert_eq!(
            split_share_path("/").unwrap_err().0.code,
            Code::SMB_SHARE_NOT_FOUND
        );
        assert_eq!(encode("/Team Data/%x"), "/Team%20Data/%25x");
    }

    #[test]
    fn the_request_never_shows_the_password() {
        let r = Request {
            server: "smb://127.0.0.1:445".into(),
            share: "/s".into(),
            path: "/".into(),
            username: "u".into(),
            password: "hunter2".into(),
            workgroup: "W".into(),
            timeout_ms: 1,
            id: 1,
        };
        assert!(!format!("{r:?}").contains("hunter2"));
    }

    #[test]
    fn urls_bracket_ipv6() {
        assert_eq!(
            smb_url("[::1]:445".parse().unwrap()),
            "smb://[::1]:445".to_string()
        );
    }
}
