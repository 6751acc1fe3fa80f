//! `[hdfs.NAME]` (HBR `HDFS`): an HDFS cluster reached through its NameNodes.
//!
//! Layers: `resolve` and `connect` (each NameNode, with [`super::net`], so a refused or silent
//! NameNode is named), `handshake` (one bounded Hadoop RPC call on each: anything else on the
//! port fails fast with `HDFS_NOT_A_NAMENODE`), `auth` (hdfs-native as `user`, or with the
//! Kerberos principal and keytab, on each NameNode: which one is active; safe mode), `access`
//! (`getFileInfo` and the first page of the listing of every path as `user`, then TCP to a
//! DataNode that holds a block of a file under the paths, where backup reads go).
//!
//! With several NameNodes (an HA pair) the probe passes when one of them is active; each one
//! that is down is a warning naming it (`HDFS_NAMENODE_DOWN`), each standby a fact. hdfs-native is built with no configuration
//! from the environment (HADOOP_CONF_DIR would change what the probe checks) and with its
//! failover retries off: the probe asks each NameNode itself and every call runs under the
//! probe's deadline.

mod rpc;

use std::net::SocketAddr;
use std::time::Duration;

use hdfs_native::{Client, ClientBuilder, HdfsError};

use super::{Code, Failed, Layer, Recorder, net};
use crate::config::{HdfsSpec, HostPort};

/// How long a NameNode may take to answer the first RPC before the probe decides that
/// something else listens on the port. NameNodes answer in milliseconds; HTTP servers and
/// most other services wait for more input instead.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(3);

/// Entries of a listing the probe looks at for a file with data (for the DataNode check).
const LIST_LOOKAHEAD: usize = 200;

/// A directory that never exists (nothing can be under /dev/null), given to hdfs-native as its
/// configuration directory so that HADOOP_CONF_DIR and HADOOP_HOME do not apply.
const NO_CONFIG_DIR: &str = "/dev/null/hbr-source-agent";

/// What the handshake learnt about a NameNode that speaks Hadoop RPC.
#[derive(Debug, Clone, PartialEq)]
enum NnState {
    Active,
    Standby(String),
    /// It answered with another exception (it wants Kerberos, or refused the user).
    Other,
}

struct NameNode<'a> {
    spec: &'a HostPort,
    addrs: Vec<SocketAddr>,
}

pub async fn probe(spec: &HdfsSpec, rec: &mut Recorder) -> Result<(), Failed> {
    let many = spec.namenodes.len() > 1;
    // NameNodes that failed a layer, with why: warnings once another one works.
    let mut down: Vec<(String, Failed)> = Vec::new();

    rec.start(Layer::Resolve);
    let mut nns = Vec::new();
    for nn in &spec.namenodes {
        match net::resolve(rec, &nn.host, nn.port).await {
            Ok(addrs) => nns.push(NameNode { spec: nn, addrs }),
            Err(f) => down.push((nn.to_string(), f)),
        }
    }
    if nns.is_empty() {
        return Err(all_failed(down));
    }
    rec.pass(format!("{} NameNode(s) resolved", nns.len()));

    rec.start(Layer::Connect);
    let results = if nns.len() == 1 {
        vec![net::connect(rec, &nns[0].addrs).await]
    } else {
        // All at once, each within half the time left: a NameNode whose packets are dropped
        // must leave time for the other one's handshake.
        let cap = rec.remaining() / 2;
        futures::future::join_all(nns.iter().map(|nn| connect_capped(&nn.addrs, cap))).await
    };
    let mut connected = Vec::new();
    for (nn, result) in nns.into_iter().zip(results) {
        match result {
            Ok(stream) => connected.push((nn, stream)),
            Err(f) => down.push((nn.spec.to_string(), f)),
        }
    }
    if connected.is_empty() {
        return Err(all_failed(down));
    }
    rec.pass(format!("{} NameNode(s) accept TCP", connected.len()));

    rec.start(Layer::Handshake);
    let mut answering = Vec::new();
    for (nn, stream) in connected {
        match handshake(rec, stream, &spec.user).await {
            // What it said does not matter here: hdfs-native asks again, as the real client.
            Ok(_) => answering.push(nn),
            Err(f) if f.0.code == Code::PROBE_TIMEOUT => return Err(f),
            Err(f) => down.push((nn.spec.to_string(), f)),
        }
    }
    if answering.is_empty() {
        return Err(all_failed(down));
    }
    rec.pass(format!("{} NameNode(s) answer Hadoop RPC", answering.len()));

    rec.start(Layer::Auth);
    if let Some(keytab) = &spec.keytab {
        // hdfs-native's GSSAPI error for a missing keytab does not name the file.
        if let Err(e) = std::fs::File::open(keytab) {
            return Err(Failed::new(
                Code::HDFS_KEYTAB_UNREADABLE,
                format!("cannot read the keytab {}: {e}", keytab.display()),
            ));
        }
    }
    let mut active: Option<(NameNode, Client)> = None;
    let mut standbys = Vec::new();
    for nn in answering {
        let client = build_client(spec, nn.spec)?;
        let state = match rec
            .within(
                &format!("getFileInfo(/) on NameNode {}", nn.spec),
                client.get_file_info("/"),
            )
            .await?
        {
            Ok(_) => NnState::Active,
            Err(HdfsError::RPCError(exc, msg)) if short(&exc) == "StandbyException" => {
                NnState::Standby(first_line(&msg))
            }
            Err(e) => {
                let f = classify(&e, "getFileInfo(/)");
                // A user the NameNode refuses is refused on every NameNode: fail now.
                if f.0.code == Code::HDFS_AUTH_FAILED || f.0.code == Code::HDFS_PERMISSION_DENIED {
                    return Err(named(nn.spec, f, many));
                }
                down.push((nn.spec.to_string(), f));
                continue;
            }
        };
        match state {
            NnState::Active if active.is_none() => active = Some((nn, client)),
            // Two entries for one NameNode, or a split brain: worth showing, not failing.
            NnState::Active => rec.fact(format!("also_active_namenode {}", nn.spec), "yes"),
            NnState::Standby(why) => standbys.push((nn.spec.to_string(), why)),
            NnState::Other => {}
        }
    }
    let Some((active_nn, client)) = active else {
        if standbys.is_empty() {
            return Err(all_failed(down));
        }
        let each: Vec<String> = standbys
            .iter()
            .map(|(nn, why)| format!("{nn}: {why}"))
            .collect();
        return Err(Failed::new(
            Code::HDFS_STANDBY_ONLY,
            format!(
                "no NameNode is active; standby only ({}){}",
                each.join("; "),
                if down.is_empty() {
                    String::new()
                } else {
                    format!("; down: {}", down_list(&down))
                }
            ),
        ));
    };
    let nn_addrs = active_nn.addrs;
    let active_nn = active_nn.spec;
    rec.fact("active_namenode", active_nn.to_string());
    for (nn, why) in &standbys {
        rec.fact(format!("standby_namenode {nn}"), why.clone());
    }
    for (nn, f) in &down {
        rec.warn(
            Code::HDFS_NAMENODE_DOWN,
            format!("NameNode {nn} is not usable: {} ({})", f.0.reason, f.0.code),
        );
    }
    let simple = spec.kerberos_principal.is_none();
    if simple {
        match safe_mode(rec, &nn_addrs, &spec.user).await? {
            Some(true) => {
                return Err(Failed::new(
                    Code::HDFS_SAFE_MODE,
                    format!(
                        "the active NameNode {active_nn} is in safe mode (read-only; blocks may \
                         not all be reported yet)"
                    ),
                ));
            }
            Some(false) => rec.fact("safe_mode", "off"),
            None => {}
        }
    }
    rec.pass(format!(
        "active NameNode {active_nn} answers as {}",
        spec.kerberos_principal
            .as_deref()
            .map(|p| format!("Kerberos principal {p}"))
            .unwrap_or_else(|| format!("user {}", spec.user))
    ));

    rec.start(Layer::Access);
    let mut with_data: Option<String> = None;
    for path in &spec.paths {
        let status = rec
            .within(&format!("getFileInfo({path})"), client.get_file_info(path))
            .await?
            .map_err(|e| classify(&e, &format!("getFileInfo({path})")))?;
        if !status.isdir {
            if status.length > 0 && with_data.is_none() {
                with_data = Some(path.clone());
            }
            continue;
        }
        let listing = client.list_status_iter(path, false);
        let mut seen = 0;
        while seen < LIST_LOOKAHEAD {
            let next = rec
                .within(&format!("getListing({path})"), listing.next())
                .await?;
            match next {
                None => break,
                Some(Err(e)) => return Err(classify(&e, &format!("getListing({path})"))),
                Some(Ok(entry)) => {
                    seen += 1;
                    if !entry.isdir && entry.length > 0 && with_data.is_none() {
                        with_data = Some(entry.path.clone());
                    }
                    if with_data.is_some() {
                        break;
                    }
                }
            }
        }
    }
    let Some(file) = with_data else {
        rec.warn(
            Code::HDFS_NO_BLOCKS_SEEN,
            format!(
                "no file with data directly under {}: DataNode reach not checked",
                spec.paths.join(", ")
            ),
        );
        rec.pass(format!("{} path(s) listed", spec.paths.len()));
        return Ok(());
    };
    if simple {
        let dn = datanode_reach(rec, &nn_addrs, &spec.user, &file).await?;
        rec.fact("datanode", dn.clone());
        rec.pass(format!(
            "{} path(s) listed; DataNode {dn} holding {file} accepts TCP",
            spec.paths.len()
        ));
    } else {
        // The raw RPC client cannot speak Kerberos: read one byte through hdfs-native instead.
        let read = async {
            let reader = client.read(&file).await?;
            reader.read_range(0, 1).await
        };
        rec.within(&format!("reading one byte of {file}"), read)
            .await?
            .map_err(|e| {
                Failed::new(
                    Code::HDFS_DATANODE_UNREACHABLE,
                    format!("reading the first block of {file} failed: {e}"),
                )
            })?;
        rec.pass(format!(
            "{} path(s) listed; read one byte of {file} from a DataNode",
            spec.paths.len()
        ));
    }
    Ok(())
}

/// One bounded RPC call on a fresh connection: a NameNode answers `getFileInfo(/)` with a
/// response or a Java exception; anything else is not a NameNode.
async fn handshake(
    rec: &Recorder,
    stream: tokio::net::TcpStream,
    user: &str,
) -> Result<NnState, Failed> {
    let call = async {
        let mut conn = rpc::Conn::open(stream, user).await?;
        conn.call("getFileInfo", &rpc::get_file_info("/")).await
    };
    let wait = HANDSHAKE_WAIT.min(rec.remaining());
    let answer = match rec
        .within("the Hadoop RPC handshake", tokio::time::timeout(wait, call))
        .await?
    {
        Ok(answer) => answer,
        Err(_) => {
            return Err(Failed::new(
                Code::HDFS_NOT_A_NAMENODE,
                format!(
                    "it accepts TCP but sent no Hadoop RPC answer within {}s (is this the \
                     NameNode's HTTP port, or another service?)",
                    wait.as_secs()
                ),
            ));
        }
    };
    match answer {
        Ok(rpc::Answer::Ok(_)) => Ok(NnState::Active),
        Ok(rpc::Answer::Remote {
            exception, message, ..
        }) => Ok(match short(&exception) {
            "StandbyException" => NnState::Standby(message),
            _ => NnState::Other,
        }),
        Err(rpc::RpcError::NotRpc(what)) => Err(Failed::new(
            Code::HDFS_NOT_A_NAMENODE,
            format!("it does not speak Hadoop RPC: {what} (the NameNode's HTTP port?)"),
        )),
        Err(rpc::RpcError::Io(e)) => Err(Failed::new(
            Code::HDFS_NOT_A_NAMENODE,
            format!("the connection failed during the Hadoop RPC handshake: {e}"),
        )),
    }
}

/// As [`net::connect`], within `cap` instead of the probe's whole remaining time.
async fn connect_capped(
    addrs: &[SocketAddr],
    cap: Duration,
) -> Result<tokio::net::TcpStream, Failed> {
    let end = tokio::time::Instant::now() + cap;
    let mut failures = Vec::new();
    let mut code = Code::TCP_TIMEOUT;
    for (i, addr) in addrs.iter().enumerate() {
        let share =
            end.saturating_duration_since(tokio::time::Instant::now()) / (addrs.len() - i) as u32;
        match net::try_connect(*addr, share).await {
            Ok(stream) => return Ok(stream),
            Err((c, why)) => {
                code = c;
                failures.push(format!("{addr}: {why}"));
            }
        }
    }
    Err(Failed::new(
        code,
        format!("TCP connection to {}", failures.join("; ")),
    ))
}

fn build_client(spec: &HdfsSpec, nn: &HostPort) -> Result<Client, Failed> {
    let mut config = vec![
        // The probe asks every NameNode itself; hdfs-native's own failover would retry for minutes.
        ("dfs.client.failover.max.attempts", "0".to_owned()),
        ("dfs.client.failover.sleep.base.millis", "0".to_owned()),
        ("dfs.client.failover.sleep.max.millis", "0".to_owned()),
    ];
    let mut builder = ClientBuilder::new()
        .with_url(format!("hdfs://{nn}"))
        .with_config_dir(NO_CONFIG_DIR);
    if let (Some(principal), Some(keytab)) = (&spec.kerberos_principal, &spec.keytab) {
        // The principal is the identity. Passing `user` too would make it a proxy user, which
        // the cluster allows only with hadoop.proxyuser settings for this principal.
        config.push(("hadoop.security.authentication", "kerberos".to_owned()));
        builder = builder
            .with_kerberos_principal(principal.clone())
            .with_kerberos_keytab(keytab.to_string_lossy().into_owned());
    } else {
        builder = builder.with_user(spec.user.clone());
    }
    builder.with_config(config).build().map_err(|e| {
        Failed::new(
            Code::HDFS_AUTH_FAILED,
            format!("cannot set up the HDFS client for {nn}: {e}"),
        )
    })
}

/// `setSafeMode(GET)` on the active NameNode; `None` when it would not say.
async fn safe_mode(
    rec: &Recorder,
    addrs: &[SocketAddr],
    user: &str,
) -> Result<Option<bool>, Failed> {
    let stream = net::connect(rec, addrs).await?;
    let answer = rec
        .within("setSafeMode(GET)", async {
            let mut conn = rpc::Conn::open(stream, user).await?;
            conn.call("setSafeMode", &rpc::safe_mode_get()).await
        })
        .await?;
    Ok(match answer {
        Ok(rpc::Answer::Ok(msg)) => rpc::parse_safe_mode(&msg),
        _ => None,
    })
}

/// TCP to a DataNode that holds the first block of `file`; returns the one that accepted.
async fn datanode_reach(
    rec: &Recorder,
    nn_addrs: &[SocketAddr],
    user: &str,
    file: &str,
) -> Result<String, Failed> {
    let stream = net::connect(rec, nn_addrs).await?;
    let answer = rec
        .within(&format!("getBlockLocations({file})"), async {
            let mut conn = rpc::Conn::open(stream, user).await?;
            conn.call("getBlockLocations", &rpc::get_block_locations(file))
                .await
        })
        .await?;
    let msg = match answer {
        Ok(rpc::Answer::Ok(msg)) => msg,
        Ok(rpc::Answer::Remote {
            exception, message, ..
        }) => {
            return Err(classify(
                &HdfsError::RPCError(exception, message),
                &format!("getBlockLocations({file})"),
            ));
        }
        Err(rpc::RpcError::NotRpc(what)) => {
            return Err(Failed::new(
                Code::HDFS_RPC_ERROR,
                format!("getBlockLocations({file}): {what}"),
            ));
        }
        Err(rpc::RpcError::Io(e)) => {
            return Err(Failed::new(
                Code::HDFS_RPC_ERROR,
                format!("getBlockLocations({file}): {e}"),
            ));
        }
    };
    let Some(blocks) = rpc::parse_block_locations(&msg) else {
        return Err(Failed::new(
            Code::HDFS_RPC_ERROR,
            format!("the NameNode returned no block of {file}"),
        ));
    };
    let nodes = blocks.into_iter().next().unwrap_or_default();
    if nodes.is_empty() {
        return Err(Failed::new(
            Code::HDFS_DATANODE_UNREACHABLE,
            format!("no live DataNode holds the first block of {file} (missing block)"),
        ));
    }
    let mut failures = Vec::new();
    for (i, dn) in nodes.iter().enumerate() {
        let Ok(ip) = dn.ip.parse::<std::net::IpAddr>() else {
            failures.push(format!("{}: not an IP address", dn.ip));
            continue;
        };
        let addr = SocketAddr::new(ip, dn.xfer_port);
        let share = rec.remaining() / (nodes.len() - i) as u32;
        match net::try_connect(addr, share).await {
            Ok(_) => return Ok(addr.to_string()),
            Err((code, why)) => failures.push(format!("{addr} ({}): {code}: {why}", dn.hostname)),
        }
    }
    Err(Failed::new(
        Code::HDFS_DATANODE_UNREACHABLE,
        format!(
            "no DataNode holding the first block of {file} accepts TCP ({})",
            failures.join("; ")
        ),
    ))
}

/// Map an hdfs-native error to the catalogue. `what` names the call.
fn classify(e: &HdfsError, what: &str) -> Failed {
    match e {
        HdfsError::FileNotFound(p) => Failed::new(
            Code::HDFS_PATH_NOT_FOUND,
            format!("{what}: {p} does not exist"),
        ),
        HdfsError::RPCError(exc, msg) | HdfsError::FatalRPCError(exc, msg) => {
            let name = short(exc);
            let code = match name {
                "AccessControlException" | "AuthorizationException" => {
                    if msg.contains("Permission denied") {
                        Code::HDFS_PERMISSION_DENIED
                    } else {
                        Code::HDFS_AUTH_FAILED
                    }
                }
                "FileNotFoundException" => Code::HDFS_PATH_NOT_FOUND,
                "SafeModeException" => Code::HDFS_SAFE_MODE,
                "StandbyException" => Code::HDFS_STANDBY_ONLY,
                "SaslException" | "GSSException" | "InvalidToken" => Code::HDFS_AUTH_FAILED,
                _ => Code::HDFS_RPC_ERROR,
            };
            Failed::new(code, format!("{what}: {name}: {}", first_line(msg)))
        }
        HdfsError::SASLError(_) | HdfsError::GSSAPIError(..) | HdfsError::NoSASLMechanism => {
            Failed::new(Code::HDFS_AUTH_FAILED, format!("{what}: {e}"))
        }
        HdfsError::IOError(io) => {
            let (code, why) = net::classify_connect_error(io);
            let code = if io.kind() == std::io::ErrorKind::ConnectionRefused {
                code
            } else {
                Code::HDFS_RPC_ERROR
            };
            Failed::new(code, format!("{what}: {why}"))
        }
        other => Failed::new(Code::HDFS_RPC_ERROR, format!("{what}: {other}")),
    }
}

/// `org.apache.hadoop.ipc.StandbyException` → `StandbyException`.
fn short(exception: &str) -> &str {
    exception.rsplit('.').next().unwrap_or(exception)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_owned()
}

/// With several NameNodes, a reason names the one it is about.
fn named(nn: &HostPort, f: Failed, many: bool) -> Failed {
    if many || !f.0.reason.contains(&nn.to_string()) {
        Failed::new(f.0.code, format!("NameNode {nn}: {}", f.0.reason))
    } else {
        f
    }
}

fn down_list(down: &[(String, Failed)]) -> String {
    down.iter()
        .map(|(nn, f)| format!("{nn}: {}", f.0.code))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every NameNode failed: one keeps its own failure (named); several fail with the last one's
/// code and a reason that lists each.
fn all_failed(mut down: Vec<(String, Failed)>) -> Failed {
    if down.len() == 1 {
        let (nn, f) = down.pop().expect("one");
        return if f.0.reason.contains(&nn) {
            f
        } else {
            Failed::new(f.0.code, format!("NameNode {nn}: {}", f.0.reason))
        };
    }
    let code = down
        .last()
        .map(|(_, f)| f.0.code)
        .unwrap_or(Code::PROBE_TIMEOUT);
    let each: Vec<String> = down
        .iter()
        .map(|(nn, f)| format!("NameNode {nn}: {} ({})", f.0.reason, f.0.code))
        .collect();
    Failed::new(code, format!("no NameNode is usable: {}", each.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_denied_quotes_the_access_control_exception() {
        let f = classify(
            &HdfsError::RPCError(
                "org.apache.hadoop.security.AccessControlException".into(),
                "Permission denied: user=mallory, access=READ_EXECUTE, inode=\"/p\":root:supergroup:drwx------\n\tat org.apache..."
                    .into(),
            ),
            "getListing(/p)",
        );
        assert_eq!(f.0.code, Code::HDFS_PERMISSION_DENIED);
        assert_eq!(
            f.0.reason,
            "getListing(/p): AccessControlException: Permission denied: user=mallory, \
             access=READ_EXECUTE, inode=\"/p\":root:supergroup:drwx------"
        );
    }

    #[test]
    fn kerberos_refusals_are_auth_failures() {
        let f = classify(
            &HdfsError::FatalRPCError(
                "org.apache.hadoop.security.AccessControlException".into(),
                "SIMPLE authentication is not enabled.  Available:[TOKEN, KERBEROS]".into(),
            ),
            "getFileInfo(/)",
        );
        assert_eq!(f.0.code, Code::HDFS_AUTH_FAILED);
        assert_eq!(
            classify(&HdfsError::NoSASLMechanism, "x").0.code,
            Code::HDFS_AUTH_FAILED
        );
    }

    #[test]
    fn other_classifications() {
        let rpc = |exc: &str| {
            classify(&HdfsError::RPCError(exc.into(), "m".into()), "c")
                .0
                .code
        };
        assert_eq!(
            rpc("org.apache.hadoop.hdfs.server.namenode.SafeModeException"),
            Code::HDFS_SAFE_MODE
        );
        assert_eq!(
            rpc("org.apache.hadoop.ipc.StandbyException"),
            Code::HDFS_STANDBY_ONLY
        );
        assert_eq!(
            rpc("java.io.FileNotFoundException"),
            Code::HDFS_PATH_NOT_FOUND
        );
        assert_eq!(rpc("java.lang.NullPointerException"), Code::HDFS_RPC_ERROR);
        assert_eq!(
            classify(&HdfsError::FileNotFound("/x".into()), "getFileInfo(/x)").0,
            crate::probe::Finding {
                code: Code::HDFS_PATH_NOT_FOUND,
                reason: "getFileInfo(/x): /x does not exist".into()
            }
        );
    }

    #[test]
    fn several_failed_namenodes_are_each_named() {
        let f = all_failed(vec![
            ("a:8020".into(), Failed::new(Code::TCP_REFUSED, "refused")),
            ("b:8020".into(), Failed::new(Code::TCP_TIMEOUT, "no answer")),
        ]);
        assert_eq!(f.0.code, Code::TCP_TIMEOUT);
        assert_eq!(
            f.0.reason,
            "no NameNode is usable: NameNode a:8020: refused (TCP_REFUSED); NameNode b:8020: no \
             answer (TCP_TIMEOUT)"
        );
    }

    #[tokio::test]
    async fn a_capped_connect_names_the_refusing_address() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let f = connect_capped(&[closed], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(f.0.code, Code::TCP_REFUSED);
        assert!(f.0.reason.contains(&closed.to_string()), "{f:?}");
        let ok = connect_capped(
            &[closed, open.local_addr().unwrap()],
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(ok.peer_addr().unwrap(), open.local_addr().unwrap());
    }

    /// A server that answers the RPC header like an HTTP server does.
    #[tokio::test]
    async fn an_http_server_is_not_a_namenode_and_fails_fast() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                .await;
        });
        let rec = Recorder::new(Duration::from_secs(10));
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let t0 = std::time::Instant::now();
        let f = handshake(&rec, stream, "hdfs").await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(f.0.code, Code::HDFS_NOT_A_NAMENODE);
        assert!(
            f.0.reason.contains("\"HTTP/1.1 400 Bad Request\""),
            "{}",
            f.0.reason
        );
    }

    /// A server that accepts and never answers is not a NameNode either, after HANDSHAKE_WAIT.
    #[tokio::test]
    async fn a_silent_server_is_not_a_namenode() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (_s, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
        });
        let rec = Recorder::new(Duration::from_secs(60));
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let f = handshake(&rec, stream, "hdfs").await.unwrap_err();
        assert_eq!(f.0.code, Code::HDFS_NOT_A_NAMENODE, "{f:?}");
    }
}
