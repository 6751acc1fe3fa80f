//! The NFS v3 probe for `[nas.NAME] protocol = "nfs"`, `[cpfs.NAME]` and `[bmcpfs.NAME]`, in
//! user space with nfs3_client, never mounting anything on this host.
//!
//! Per server: `resolve` the host (nfs3_client takes IP literals only) → `connect`: portmapper
//! `GETPORT` of MOUNT v3 and NFS v3 (skipped when `mount_options` fixes `mountport=`), TCP to
//! MOUNT and to NFS (the server's configured port) → `handshake`: `NULL` to both programs →
//! `auth`: `MNT` of the share with AUTH_SYS as uid 0, like HBR's client → `access`: `FSINFO`
//! and `READDIRPLUS` of one entry on the root handle, then `UMNT`.
//!
//! Several `servers`: each is probed (concurrently, each under the source's deadline) and each
//! must pass, since HBR may mount through any address in `dataServerAddresses`. The report
//! prefixes every layer detail and fact with its server.
//!
//! A reserved source port (< 1024) is used when this process may bind one; otherwise an
//! ordinary one, and a refusal the server then gives is reported as
//! `NFS_PRIVILEGED_PORT_REQUIRED`. Every RPC runs under [`Recorder::within`], so a server that
//! accepts and never answers fails with the step it hung in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};

use nfs3_client::nfs3_types::mount::{self, dirpath, mountstat3};
use nfs3_client::nfs3_types::nfs3::{
    self, FSINFO3args, FSINFO3resok, Nfs3Option, Nfs3Result, READDIRPLUS3args, nfs_fh3, nfsstat3,
};
use nfs3_client::nfs3_types::portmap;
use nfs3_client::nfs3_types::rpc::{auth_stat, auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::TokioIo;
use nfs3_client::{MountClient, MountError, Nfs3Client, PortmapError, PortmapperClient, RpcError};
use tokio::net::{TcpSocket, TcpStream};

use super::{Code, Failed, Finding, Layer, Recorder, net};
use crate::config::defaults::NFS_PORT;
use crate::config::{CpfsSpec, HostPort, NasSpec};

type Io = TokioIo<TcpStream>;

const PORTMAPPER_PORT: u16 = portmap::PMAP_PORT;

pub async fn probe_nas(spec: &NasSpec, rec: &mut Recorder) -> Result<(), Failed> {
    let opts = MountOptions::parse(spec.mount_options.as_deref());
    probe_servers(&spec.servers, &spec.share_path, &opts, rec).await
}

/// CPFS and CPFS AI-Computing (BMCPFS) mount targets serve NFS v3 like any NAS; the probe is
/// the same, on the mount target's host.
pub async fn probe_cpfs(spec: &CpfsSpec, rec: &mut Recorder) -> Result<(), Failed> {
    let opts = MountOptions::parse(spec.mount_options.as_deref());
    let server = HostPort {
        host: spec.mount_target.clone(),
        port: opts.port.unwrap_or(NFS_PORT),
    };
    probe_servers(&[server], &spec.share_path, &opts, rec).await
}

/// What the probe takes from `mount_options` (the same string HBR's client mounts with).
#[derive(Debug, Default, Clone, PartialEq)]
struct MountOptions {
    /// `port=`: the NFS port (nas: the port in `servers` wins).
    port: Option<u16>,
    /// `mountport=`: the MOUNT port; set, the portmapper is not asked.
    mount_port: Option<u16>,
}

impl MountOptions {
    fn parse(opts: Option<&str>) -> MountOptions {
        let mut out = MountOptions::default();
        for opt in opts.unwrap_or("").split(',').map(str::trim) {
            let Some((name, value)) = opt.split_once('=') else {
                continue;
            };
            let value = value.trim().parse::<u16>().ok().filter(|p| *p != 0);
            match name.trim() {
                "port" => out.port = value,
                "mountport" => out.mount_port = value,
                _ => {}
            }
        }
        out
    }
}

async fn probe_servers(
    servers: &[HostPort],
    share: &str,
    opts: &MountOptions,
    rec: &mut Recorder,
) -> Result<(), Failed> {
    if let [server] = servers {
        return probe_server(server, share, opts, rec).await;
    }
    super::every_server(servers, rec, |server, mut sub| async move {
        let result = probe_server(server, share, opts, &mut sub).await;
        (sub, result)
    })
    .await
}

/// A connection's source port as the server sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Client {
    local: SocketAddr,
    reserved: bool,
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.reserved {
            write!(f, "{} (reserved port)", self.local)
        } else {
            write!(f, "{} (not a reserved port)", self.local)
        }
    }
}

async fn probe_server(
    server: &HostPort,
    share: &str,
    opts: &MountOptions,
    rec: &mut Recorder,
) -> Result<(), Failed> {
    rec.start(Layer::Resolve);
    let addrs = net::resolve(rec, &server.host, server.port).await?;
    let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    rec.pass(format!("{} → {}", server.host, list.join(", ")));

    rec.start(Layer::Connect);
    // Every address is tried until one gets through the whole layer; the rest go to it.
    let mut failures: Vec<Finding> = Vec::new();
    let mut connected = None;
    for (i, a) in addrs.iter().enumerate() {
        let share = rec.remaining() / (addrs.len() - i) as u32;
        match connect_all(rec, a.ip(), server.port, opts, share).await {
            Ok(c) => {
                connected = Some(c);
                break;
            }
            Err(Failed(f)) => {
                let network =
                    [Code::TCP_REFUSED, Code::TCP_TIMEOUT, Code::TCP_UNREACHABLE].contains(&f.code);
                failures.push(f);
                if !network {
                    break;
                }
            }
        }
    }
    let Some(Connected {
        ip,
        mount_port,
        mount_io,
        nfs_io,
        client: mnt_client,
        registered_nfs_port,
    }) = connected
    else {
        let last = failures.last().map_or(Code::TCP_TIMEOUT, |f| f.code);
        let reason = failures
            .into_iter()
            .map(|f| f.reason)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Failed::new(last, reason));
    };
    match registered_nfs_port {
        Some(p) => {
            rec.fact("mount_port", format!("{mount_port} (portmapper)"));
            rec.fact("portmapper_nfs_port", p.to_string());
        }
        None => rec.fact("mount_port", format!("{mount_port} (mountport=)")),
    }
    let mount_at = SocketAddr::new(ip, mount_port);
    let nfs_at = SocketAddr::new(ip, server.port);
    rec.fact("nfs_port", server.port.to_string());
    rec.fact("client_address", mnt_client.to_string());
    rec.pass(format!(
        "MOUNT at {mount_at}, NFS at {nfs_at}, from {mnt_client}"
    ));

    rec.start(Layer::Handshake);
    let cred = credential();
    let mut mnt =
        MountClient::new_with_auth(TokioIo::new(mount_io), cred.clone(), opaque_auth::default());
    let mut nfs = Nfs3Client::new_with_auth(TokioIo::new(nfs_io), cred, opaque_auth::default());
    let step = format!("MOUNT NULL at {mount_at}");
    rec.within(&step, mnt.null())
        .await?
        .map_err(|e| rpc_failure(&step, "MOUNT v3", e, mnt_client))?;
    let step = format!("NFS NULL at {nfs_at}");
    rec.within(&step, nfs.null()).await?.map_err(|e| {
        let mut f = rpc_failure(&step, "NFS v3", e, mnt_client);
        if let Some(p) = registered_nfs_port.filter(|p| *p != server.port) {
            f.0.reason.push_str(&format!(
                "; the portmapper registers NFS v3 at port {p}, not {}",
                server.port
            ));
        }
        f
    })?;
    rec.pass("MOUNT v3 and NFS v3 answer NULL");

    rec.start(Layer::Auth);
    let step = format!("MOUNT MNT of {share} at {mount_at}");
    let path = || dirpath(Opaque::owned(share.as_bytes().to_vec()));
    let mounted = match rec.within(&step, mnt.mnt(path())).await? {
        Ok(ok) => ok,
        Err(MountError::Rpc(e)) => return Err(rpc_failure(&step, "MOUNT v3", e, mnt_client)),
        Err(MountError::Denied(stat)) => {
            return Err(mount_denied(rec, &mut mnt, share, stat, mnt_client).await);
        }
    };
    let flavors: Vec<String> = mounted
        .auth_flavors
        .iter()
        .map(|f| flavor_name(*f))
        .collect();
    rec.fact("auth_flavors", flavors.join(", "));
    let root = nfs_fh3 {
        data: mounted.fhandle.0.clone(),
    };
    rec.pass(format!(
        "MNT {share} as {mnt_client}: root handle of {} bytes",
        root.data.as_ref().len()
    ));

    rec.start(Layer::Access);
    let result = access(rec, &mut nfs, share, &root, nfs_at, mnt_client).await;
    // UMNT whatever happened: the server's mount list should not keep this probe. Its outcome
    // changes nothing, but it keeps to the deadline.
    let _ = tokio::time::timeout_at(rec.deadline().into(), mnt.umnt(path())).await;
    let detail = result?;
    rec.pass(format!("{detail}; UMNT sent"));
    Ok(())
}

async fn access(
    rec: &mut Recorder,
    nfs: &mut Nfs3Client<Io>,
    share: &str,
    root: &nfs_fh3,
    at: SocketAddr,
    client: Client,
) -> Result<String, Failed> {
    let step = format!("NFS FSINFO of {share} at {at}");
    let args = FSINFO3args {
        fsroot: root.clone(),
    };
    let info: FSINFO3resok = match rec
        .within(&step, nfs.fsinfo(&args))
        .await?
        .map_err(|e| rpc_failure(&step, "NFS v3", e, client))?
    {
        Nfs3Result::Ok(ok) => ok,
        Nfs3Result::Err((stat, fail)) => {
            return Err(nfs_failure(
                &step,
                stat,
                attrs_text(&fail.obj_attributes),
                client,
            ));
        }
    };
    rec.fact(
        "fsinfo",
        format!(
            "rtmax {}, wtmax {}, dtpref {}",
            info.rtmax, info.wtmax, info.dtpref
        ),
    );

    let step = format!("NFS READDIRPLUS of {share} at {at}");
    let args = READDIRPLUS3args {
        dir: root.clone(),
        cookie: 0,
        cookieverf: nfs3::cookieverf3::default(),
        dircount: 1024,
        maxcount: 8192,
    };
    let listed = match rec
        .within(&step, nfs.readdirplus(&args))
        .await?
        .map_err(|e| rpc_failure(&step, "NFS v3", e, client))?
    {
        Nfs3Result::Ok(ok) => ok,
        Nfs3Result::Err((stat, fail)) => {
            return Err(nfs_failure(
                &step,
                stat,
                attrs_text(&fail.dir_attributes),
                client,
            ));
        }
    };
    let first = listed
        .reply
        .entries
        .0
        .iter()
        .map(|e| String::from_utf8_lossy(e.name.0.as_ref()).into_owned())
        .find(|n| n != "." && n != "..");
    match first {
        Some(name) => Ok(format!("FSINFO ok; READDIRPLUS listed {name:?}")),
        None if listed.reply.eof => {
            rec.warn(
                Code::PATH_EMPTY,
                format!("{share} is empty on the server: HBR would back up nothing"),
            );
            Ok("FSINFO ok; READDIRPLUS: the directory is empty".into())
        }
        None => Ok("FSINFO ok; READDIRPLUS ok".into()),
    }
}

/// AUTH_SYS as root, like HBR's client: a server that squashes root shows it here.
fn credential() -> opaque_auth<'static> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "hbr-source-agent".into());
    opaque_auth::auth_unix(&auth_unix {
        stamp: 0,
        machinename: Opaque::owned(host.into_bytes()),
        uid: 0,
        gid: 0,
        gids: vec![0],
    })
}

fn flavor_name(f: u32) -> String {
    match f {
        0 => "AUTH_NONE".into(),
        1 => "AUTH_SYS".into(),
        390003 => "krb5".into(),
        390004 => "krb5i".into(),
        390005 => "krb5p".into(),
        other => format!("flavor {other}"),
    }
}

fn attrs_text(attrs: &Nfs3Option<nfs3::fattr3>) -> Option<String> {
    match attrs {
        Nfs3Option::Some(a) => Some(format!(
            "mode {:04o}, owner {}:{}",
            a.mode & 0o7777,
            a.uid,
            a.gid
        )),
        Nfs3Option::None => None,
    }
}

// ---- connections ----

struct Connected {
    ip: IpAddr,
    mount_port: u16,
    mount_io: TcpStream,
    nfs_io: TcpStream,
    /// The MOUNT connection's source, as the server sees it.
    client: Client,
    /// The NFS v3 port the portmapper gave (`None`: it was not asked).
    registered_nfs_port: Option<u16>,
}

/// The `connect` layer on one address: the ports (portmapper unless `mountport=`), then TCP
/// to MOUNT and NFS. The first connection gets `first_limit`, so that one black-holed address
/// leaves time for the next.
async fn connect_all(
    rec: &Recorder,
    ip: IpAddr,
    nfs_port: u16,
    opts: &MountOptions,
    first_limit: std::time::Duration,
) -> Result<Connected, Failed> {
    let fail = |service: &'static str, at: SocketAddr| {
        move |(code, why): (Code, String)| Failed::new(code, format!("{service} at {at}: {why}"))
    };
    let (mount_port, registered_nfs_port) = match opts.mount_port {
        Some(port) => (port, None),
        None => {
            let at = SocketAddr::new(ip, PORTMAPPER_PORT);
            let (pm, _) = connect(at, first_limit).await.map_err(|(code, why)| {
                Failed::new(
                    code,
                    format!(
                        "portmapper at {at}: {why} (rpcbind answers on port 111; if the server \
                         runs without one, give mountport= in mount_options)"
                    ),
                )
            })?;
            let mut pmc = PortmapperClient::new(TokioIo::new(pm));
            let mount_port = getport(rec, &mut pmc, at, mount::PROGRAM, "MOUNT v3").await?;
            let nfs = getport(rec, &mut pmc, at, nfs3::PROGRAM, "NFS v3").await?;
            (mount_port, Some(nfs))
        }
    };
    let mount_at = SocketAddr::new(ip, mount_port);
    let limit = if opts.mount_port.is_some() {
        first_limit
    } else {
        rec.remaining()
    };
    let (mount_io, client) = connect(mount_at, limit)
        .await
        .map_err(fail("MOUNT", mount_at))?;
    let nfs_at = SocketAddr::new(ip, nfs_port);
    let (nfs_io, _) = connect(nfs_at, rec.remaining())
        .await
        .map_err(fail("NFS", nfs_at))?;
    Ok(Connected {
        ip,
        mount_port,
        mount_io,
        nfs_io,
        client,
        registered_nfs_port,
    })
}

const RESERVED_UNKNOWN: u8 = 0;
const RESERVED_ALLOWED: u8 = 1;
const RESERVED_DENIED: u8 = 2;
/// Whether this process may bind a reserved port; learnt from the first try (capabilities
/// do not change while it runs).
static RESERVED: AtomicU8 = AtomicU8::new(RESERVED_UNKNOWN);

/// One TCP connection, from a reserved port when this process may bind one.
async fn connect(
    at: SocketAddr,
    limit: std::time::Duration,
) -> Result<(TcpStream, Client), (Code, String)> {
    let attempt = async {
        if RESERVED.load(Ordering::Relaxed) != RESERVED_DENIED
            && let Some(r) = connect_reserved(at).await
        {
            return r;
        }
        TcpStream::connect(at)
            .await
            .map(|s| (s, false))
            .map_err(|e| net::classify_connect_error(&e))
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok((stream, reserved))) => {
            let _ = stream.set_nodelay(true);
            let local = stream
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0));
            Ok((stream, Client { local, reserved }))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err((
            Code::TCP_TIMEOUT,
            format!(
                "no answer to the TCP connection within {}",
                humantime::format_duration(std::time::Duration::from_millis(
                    limit.as_millis() as u64
                ))
            ),
        )),
    }
}

/// Bind a port in 512..=1023 and connect from it. `None` when this process may not bind one
/// (or none is free): the caller connects from an ordinary port.
async fn connect_reserved(at: SocketAddr) -> Option<Result<(TcpStream, bool), (Code, String)>> {
    let start: u16 = rand::random_range(0..512);
    for i in 0..48u16 {
        let port = 512 + (start + i * 7) % 512;
        let socket = match at {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .ok()?;
        let _ = socket.set_reuseaddr(true);
        let any: IpAddr = match at {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        match socket.bind(SocketAddr::new(any, port)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                RESERVED.store(RESERVED_DENIED, Ordering::Relaxed);
                return None;
            }
            Err(_) => return None,
        }
        RESERVED.store(RESERVED_ALLOWED, Ordering::Relaxed);
        match socket.connect(at).await {
            Ok(s) => return Some(Ok((s, true))),
            // The same (source, destination) pair is still in TIME_WAIT: another port.
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => continue,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Some(Err(net::classify_connect_error(&e))),
        }
    }
    None
}

// ---- RPC steps and their failures ----

async fn getport(
    rec: &Recorder,
    pm: &mut PortmapperClient<Io>,
    at: SocketAddr,
    program: u32,
    what: &str,
) -> Result<u16, Failed> {
    let step = format!("portmapper GETPORT of {what} at {at}");
    let found = rec
        .within(&step, pm.getport(program, 3, portmap::IPPROTO_TCP))
        .await?;
    match found {
        Ok(port) => Ok(port),
        Err(PortmapError::ProgramUnavailable) => Err(Failed::new(
            Code::RPC_PROGRAM_UNAVAILABLE,
            format!(
                "the portmapper at {at} has no {what} over TCP registered{}",
                if program == mount::PROGRAM {
                    " (no mountd running, or the server serves NFS v4 only)"
                } else {
                    " (the server may serve NFS v4 only)"
                }
            ),
        )),
        Err(PortmapError::InvalidPortValue(v)) => Err(Failed::new(
            Code::NFS_PROTOCOL_ERROR,
            format!("{step}: the portmapper answered port {v}, which is not a port"),
        )),
        Err(PortmapError::Rpc(e)) => Err(rpc_failure(&step, "the portmapper", e, no_client())),
    }
}

fn no_client() -> Client {
    Client {
        local: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        reserved: true,
    }
}

/// An RPC-level failure (the call got no usable reply).
fn rpc_failure(step: &str, program: &str, e: RpcError, client: Client) -> Failed {
    match e {
        RpcError::ProgUnavail => Failed::new(
            Code::RPC_PROGRAM_UNAVAILABLE,
            format!("{step}: the server does not serve {program} on that port (PROG_UNAVAIL)"),
        ),
        RpcError::ProgMismatch { low, high } => Failed::new(
            Code::RPC_PROGRAM_UNAVAILABLE,
            format!(
                "{step}: the server serves versions {low} to {high} only, not {program} \
                 (PROG_MISMATCH)"
            ),
        ),
        RpcError::Auth(stat) if !client.reserved && matches!(stat, auth_stat::AUTH_TOOWEAK) => {
            Failed::new(
                Code::NFS_PRIVILEGED_PORT_REQUIRED,
                format!(
                    "{step}: the server rejected the call with {stat} from {client}; it \
                     requires a reserved source port"
                ),
            )
        }
        RpcError::Auth(stat) => Failed::new(
            Code::NFS_AUTH_REJECTED,
            format!("{step}: the server rejected AUTH_SYS credentials from {client}: {stat}"),
        ),
        RpcError::SystemErr => Failed::new(
            Code::NFS_SERVER_ERROR,
            format!("{step}: the server answered SYSTEM_ERR"),
        ),
        RpcError::Io(io) => {
            let why = match io.kind() {
                std::io::ErrorKind::UnexpectedEof => "the server closed the connection".into(),
                _ => io.to_string(),
            };
            Failed::new(
                Code::NFS_PROTOCOL_ERROR,
                format!("{step}: {why} (is this an ONC RPC / NFS server?)"),
            )
        }
        other => Failed::new(
            Code::NFS_PROTOCOL_ERROR,
            format!("{step}: not a valid RPC reply: {other}"),
        ),
    }
}

/// An NFS procedure answered with an error status.
fn nfs_failure(step: &str, stat: nfsstat3, attrs: Option<String>, client: Client) -> Failed {
    let attrs = attrs.map(|a| format!(" ({a})")).unwrap_or_default();
    match stat {
        nfsstat3::NFS3ERR_PERM if !client.reserved => Failed::new(
            Code::NFS_PRIVILEGED_PORT_REQUIRED,
            format!(
                "{step}: {stat} for a request from {client}{attrs}; the export probably \
                 requires a reserved source port (`secure`)"
            ),
        ),
        nfsstat3::NFS3ERR_ACCES | nfsstat3::NFS3ERR_PERM => Failed::new(
            Code::NFS_NOT_READABLE,
            format!(
                "{step}: {stat} as uid 0 (AUTH_SYS){attrs}: root is squashed or the mode bits \
                 refuse it"
            ),
        ),
        nfsstat3::NFS3ERR_STALE | nfsstat3::NFS3ERR_BADHANDLE => Failed::new(
            Code::NFS_STALE_HANDLE,
            format!("{step}: {stat}: the server does not recognise the root handle MNT gave"),
        ),
        other => Failed::new(
            Code::NFS_SERVER_ERROR,
            format!("{step}: the server answered {other}{attrs}"),
        ),
    }
}

/// MNT refused: say why, with the export list as the server shows it to this host.
async fn mount_denied(
    rec: &Recorder,
    mnt: &mut MountClient<Io>,
    share: &str,
    stat: mountstat3,
    client: Client,
) -> Failed {
    let heard = format!("MNT {share}: the server answered {stat} to {client}");
    match stat {
        mountstat3::MNT3ERR_NOENT | mountstat3::MNT3ERR_NOTDIR => {
            return Failed::new(
                Code::NFS_EXPORT_NOT_FOUND,
                format!("{heard}: no such exported directory"),
            );
        }
        mountstat3::MNT3ERR_INVAL | mountstat3::MNT3ERR_NAMETOOLONG => {
            return Failed::new(
                Code::NFS_EXPORT_NOT_FOUND,
                format!("{heard}: the server does not accept this path"),
            );
        }
        mountstat3::MNT3ERR_ACCES | mountstat3::MNT3ERR_PERM => {}
        _ => return Failed::new(Code::NFS_SERVER_ERROR, heard),
    }
    let list = match rec.within("MOUNT EXPORT", mnt.export()).await {
        Ok(Ok(list)) => Some(
            list.into_inner()
                .into_iter()
                .map(|e| Export {
                    dir: String::from_utf8_lossy(e.ex_dir.0.as_ref()).into_owned(),
                    groups: e
                        .ex_groups
                        .into_inner()
                        .into_iter()
                        .map(|g| String::from_utf8_lossy(g.0.as_ref()).into_owned())
                        .collect(),
                })
                .collect::<Vec<_>>(),
        ),
        _ => None,
    };
    classify_denial(share, &heard, list.as_deref(), client)
}

#[derive(Debug, Clone, PartialEq)]
struct Export {
    dir: String,
    groups: Vec<String>,
}

/// Tell, from the export list (`None`: the server would not give it), why MNT was refused.
fn classify_denial(share: &str, heard: &str, list: Option<&[Export]>, client: Client) -> Failed {
    let port_note = if client.reserved {
        String::new()
    } else {
        " The request came from a port above 1023: an export that requires a reserved port \
         refuses it too."
            .to_string()
    };
    let Some(list) = list else {
        return Failed::new(
            Code::NFS_MOUNT_DENIED,
            format!("{heard}; the export list is not available to check why.{port_note}"),
        );
    };
    let ip = client.local.ip();
    let shown = if list.is_empty() {
        "none".to_string()
    } else {
        list.iter()
            .map(|e| format!("{} ({})", e.dir, groups_text(&e.groups)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let exact = list.iter().find(|e| same_path(&e.dir, share));
    let parent = list
        .iter()
        .filter(|e| is_parent(&e.dir, share))
        .max_by_key(|e| e.dir.len());
    match (exact, parent) {
        (Some(e), _) => match admits(&e.groups, ip) {
            Some(false) => Failed::new(
                Code::NFS_MOUNT_DENIED,
                format!(
                    "{heard}; {} is exported to {} only, not to this host ({ip})",
                    e.dir,
                    groups_text(&e.groups)
                ),
            ),
            _ if !client.reserved => Failed::new(
                Code::NFS_PRIVILEGED_PORT_REQUIRED,
                format!(
                    "{heard}; the server lists {} for {}, so it refused the source port: this \
                     process may not bind a reserved port (< 1024)",
                    e.dir,
                    groups_text(&e.groups)
                ),
            ),
            _ => Failed::new(
                Code::NFS_MOUNT_DENIED,
                format!(
                    "{heard} although it lists {} for {}; check the export's client list and \
                     security flavours",
                    e.dir,
                    groups_text(&e.groups)
                ),
            ),
        },
        (None, Some(p)) if admits(&p.groups, ip) != Some(false) => Failed::new(
            Code::NFS_EXPORT_NOT_FOUND,
            format!(
                "{heard}; the server exports {} to this host, but not {share}: the directory \
                 does not exist under it, or the server does not allow mounting \
                 sub-directories.{port_note}",
                p.dir
            ),
        ),
        _ => Failed::new(
            Code::NFS_MOUNT_DENIED,
            format!(
                "{heard}; {share} is not in the export list the server shows this host \
                 (exports: {shown}): it is not exported to {ip}, or not exported at \
                 all.{port_note}"
            ),
        ),
    }
}

fn trim_slash(p: &str) -> &str {
    let t = p.trim_end_matches('/');
    if t.is_empty() { "/" } else { t }
}

fn same_path(a: &str, b: &str) -> bool {
    trim_slash(a) == trim_slash(b)
}

fn is_parent(dir: &str, path: &str) -> bool {
    let (dir, path) = (trim_slash(dir), trim_slash(path));
    dir != path && (dir == "/" || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/')))
}

fn groups_text(groups: &[String]) -> String {
    if groups.is_empty() {
        "everyone".into()
    } else {
        groups.join(" ")
    }
}

/// Whether an export's client list admits `ip`: `Some(false)` only when every entry is an
/// address or network that excludes it (host names and netgroups cannot be checked here).
fn admits(groups: &[String], ip: IpAddr) -> Option<bool> {
    if groups.is_empty() {
        return Some(true);
    }
    let mut all_known = true;
    for g in groups {
        match group_admits(g, ip) {
            Some(true) => return Some(true),
            Some(false) => {}
            None => all_known = false,
        }
    }
    if all_known { Some(false) } else { None }
}

fn group_admits(group: &str, ip: IpAddr) -> Option<bool> {
    let g = group.trim();
    if g == "*" || g.eq_ignore_ascii_case("(everyone)") {
        return Some(true);
    }
    let (addr, bits) = match g.split_once('/') {
        Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
        None => (g, None),
    };
    let net: IpAddr = addr.parse().ok()?;
    let bits = bits.unwrap_or(if net.is_ipv4() { 32 } else { 128 });
    Some(match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(bits.min(32)))
                .unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(bits.min(128)))
                .unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(addr: &str, reserved: bool) -> Client {
        Client {
            local: addr.parse().unwrap(),
            reserved,
        }
    }

    fn export(dir: &str, groups: &[&str]) -> Export {
        Export {
            dir: dir.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn mount_options_give_the_ports() {
        let o = MountOptions::parse(Some("vers=3, port=2050,mountport=20048,nolock"));
        assert_eq!(o.port, Some(2050));
        assert_eq!(o.mount_port, Some(20048));
        assert_eq!(MountOptions::parse(None), MountOptions::default());
        assert_eq!(MountOptions::parse(Some("mountport=x")).mount_port, None);
    }

    #[test]
    fn client_lists_are_matched_by_address_and_network() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(admits(&[], ip), Some(true));
        assert_eq!(admits(&["*".into()], ip), Some(true));
        assert_eq!(admits(&["10.1.0.0/16".into()], ip), Some(true));
        assert_eq!(admits(&["10.1.2.3".into()], ip), Some(true));
        assert_eq!(
            admits(&["10.2.0.0/16".into(), "10.1.2.4".into()], ip),
            Some(false)
        );
        assert_eq!(
            admits(&["10.2.0.0/16".into(), "backup.corp".into()], ip),
            None
        );
        assert_eq!(admits(&["0.0.0.0/0".into()], ip), Some(true));
    }

    #[test]
    fn a_listed_export_for_another_host_is_denied() {
        let f = classify_denial(
            "/data",
            "MNT /data: the server answered MNT3ERR_ACCES to 10.0.0.9:800",
            Some(&[export("/data", &["10.0.0.0/24"])]),
            client("10.0.1.9:800", true),
        );
        assert_eq!(f.0.code, Code::NFS_MOUNT_DENIED);
        assert!(f.0.reason.contains("not to this host (10.0.1.9)"), "{f:?}");
    }

    #[test]
    fn a_listed_export_refused_from_an_ordinary_port_needs_a_reserved_one() {
        let f = classify_denial(
            "/data/",
            "MNT",
            Some(&[export("/data", &["10.0.1.0/24"])]),
            client("10.0.1.9:40000", false),
        );
        assert_eq!(f.0.code, Code::NFS_PRIVILEGED_PORT_REQUIRED);
        // From a reserved port, the same refusal is a plain denial.
        let f = classify_denial(
            "/data",
            "MNT",
            Some(&[export("/data", &["10.0.1.0/24"])]),
            client("10.0.1.9:800", true),
        );
        assert_eq!(f.0.code, Code::NFS_MOUNT_DENIED);
    }

    #[test]
    fn a_missing_directory_under_an_export_is_not_found() {
        let f = classify_denial(
            "/data/typo",
            "MNT",
            Some(&[export("/data", &[]), export("/dat", &[])]),
            client("10.0.1.9:800", true),
        );
        assert_eq!(f.0.code, Code::NFS_EXPORT_NOT_FOUND);
        assert!(f.0.reason.contains("exports /data to this host"), "{f:?}");
    }

    #[test]
    fn an_unlisted_path_is_denied_and_the_list_is_quoted() {
        let f = classify_denial(
            "/other",
            "MNT",
            Some(&[export("/data", &["127.0.0.1/32"])]),
            client("127.0.0.1:40000", false),
        );
        assert_eq!(f.0.code, Code::NFS_MOUNT_DENIED);
        assert!(f.0.reason.contains("/data (127.0.0.1/32)"), "{f:?}");
        assert!(f.0.reason.contains("reserved port"), "{f:?}");
    }

    #[test]
    fn nfs_statuses_map_to_codes() {
        let c = |stat, reserved| {
            nfs_failure("s", stat, None, client("127.0.0.1:1", reserved))
                .0
                .code
        };
        assert_eq!(c(nfsstat3::NFS3ERR_ACCES, true), Code::NFS_NOT_READABLE);
        assert_eq!(
            c(nfsstat3::NFS3ERR_PERM, false),
            Code::NFS_PRIVILEGED_PORT_REQUIRED
        );
        assert_eq!(c(nfsstat3::NFS3ERR_STALE, true), Code::NFS_STALE_HANDLE);
        assert_eq!(c(nfsstat3::NFS3ERR_BADHANDLE, true), Code::NFS_STALE_HANDLE);
        assert_eq!(c(nfsstat3::NFS3ERR_IO, true), Code::NFS_SERVER_ERROR);
    }

    #[test]
    fn rpc_errors_map_to_codes() {
        let c = |e, reserved| {
            rpc_failure("s", "NFS v3", e, client("127.0.0.1:1", reserved))
                .0
                .code
        };
        assert_eq!(
            c(RpcError::ProgUnavail, true),
            Code::RPC_PROGRAM_UNAVAILABLE
        );
        assert_eq!(
            c(RpcError::ProgMismatch { low: 4, high: 4 }, true),
            Code::RPC_PROGRAM_UNAVAILABLE
        );
        assert_eq!(
            c(RpcError::Auth(auth_stat::AUTH_TOOWEAK), false),
            Code::NFS_PRIVILEGED_PORT_REQUIRED
        );
        assert_eq!(
            c(RpcError::Auth(auth_stat::AUTH_TOOWEAK), true),
            Code::NFS_AUTH_REJECTED
        );
        assert_eq!(
            c(RpcError::Io(std::io::ErrorKind::UnexpectedEof.into()), true),
            Code::NFS_PROTOCOL_ERROR
        );
    }
}
