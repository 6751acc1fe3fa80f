//! `hbr-source-agent-smb-probe`: the SMB probe's child process, which runs libsmbclient
//! through pavao. Installed as `/usr/libexec/hbr-source-agent/hbr-source-agent-smb-probe`; the
//! agent looks next to its own executable first (a build tree), then there.
//!
//! A binary of its own so that only this process links libsmbclient: its ~110 shared libraries
//! cost 55–75 ms in the dynamic loader at every exec and several MiB of RSS, which every other
//! command (`validate`, `plan`, the daemon, NFS and S3 probes) would otherwise pay too
//! (docs/benchmarks.md).
//!
//! libsmbclient blocks, and pavao serialises every call in a process behind one lock, so a
//! server that hangs mid-session would stall every other SMB probe of a daemon that called it
//! directly. Here each probe has its own process, which the agent kills at the probe deadline.
//!
//! Protocol: one [`Request`] as JSON on stdin (the password never travels in argv or the
//! environment), then one [`Step`] per line on stdout, each prefixed with [`MARK`] (libsmbclient
//! may write debug text to stdout too). The steps run in the order of [`StepName`] and stop at
//! the first failure; the agent maps them to layers and codes.

use std::io::{Read as _, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use pavao::{SmbClient, SmbCredentials, SmbDialect, SmbError, SmbOptions};

use hbr_source_agent::probe::smb::protocol::{MARK, Request, Step, StepName, libc_errno};

/// One fixed pair of protocol bounds for every client (pavao requires identical bounds for
/// all live clients); the same range the agent's own NEGOTIATE offers.
const MIN_PROTOCOL: SmbDialect = SmbDialect::Smb202;
const MAX_PROTOCOL: SmbDialect = SmbDialect::Smb311;

fn main() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("hbr-source-agent-smb-probe: cannot read the request: {e}");
        return ExitCode::from(2);
    }
    let req: Request = match serde_json::from_str(&input) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hbr-source-agent-smb-probe: bad request: {e}");
            return ExitCode::from(2);
        }
    };
    drop(input);
    run(&req, &mut |step| {
        let mut out = std::io::stdout().lock();
        let line = serde_json::to_string(step).expect("a step serialises");
        let _ = writeln!(out, "{MARK}{line}");
        let _ = out.flush();
    });
    ExitCode::SUCCESS
}

fn client(req: &Request, share: &str, password: &str) -> Result<SmbClient, SmbError> {
    let c = SmbClient::new(
        SmbCredentials::default()
            .server(&req.server)
            .share(share)
            .username(&req.username)
            .password(password)
            .workgroup(&req.workgroup),
        SmbOptions::default()
            .min_protocol(MIN_PROTOCOL)
            .max_protocol(MAX_PROTOCOL)
            .no_auto_anonymous_login(true)
            .one_share_per_server(true)
            .use_kerberos(false)
            .fallback_after_kerberos(false),
    )?;
    c.set_timeout(Duration::from_millis(req.timeout_ms.max(1)))?;
    Ok(c)
}

fn step(name: StepName, t0: Instant, r: Result<(bool, Option<usize>), SmbError>) -> Step {
    let ms = t0.elapsed().as_millis() as u64;
    match r {
        Ok((is_dir, entries)) => Step {
            name,
            ok: true,
            errno: None,
            message: String::new(),
            is_dir,
            entries,
            ms,
        },
        Err(e) => Step {
            name,
            ok: false,
            errno: match &e {
                SmbError::Io(io) => io.raw_os_error(),
                _ => None,
            },
            message: e.to_string(),
            is_dir: false,
            entries: None,
            ms,
        },
    }
}

fn stat_dir(c: &SmbClient, path: &str) -> Result<(bool, Option<usize>), SmbError> {
    let st = c.stat(path)?;
    Ok((st.mode.is_dir(), None))
}

/// A share name no server has: tree connect to it answers NT_STATUS_BAD_NETWORK_NAME (ENOENT)
/// to a logged-on user, while session setup refuses a bad login first (EACCES).
const NO_SUCH_SHARE: &str = "/hbr-source-agent-logon-check";

fn run(req: &Request, emit: &mut dyn FnMut(&Step)) {
    // Session setup and tree connect to the share (libsmbclient does both on the first call).
    let t0 = Instant::now();
    let main = match client(req, &req.share, &req.password) {
        Ok(c) => c,
        Err(e) => return emit(&step(StepName::Share, t0, Err(e))),
    };
    let s = step(StepName::Share, t0, stat_dir(&main, "/"));
    emit(&s);
    if !s.ok {
        // EACCES is a refused logon or a refused share: a share that does not exist tells which.
        if matches!(s.errno, Some(libc_errno::EACCES | libc_errno::EPERM)) {
            let t0 = Instant::now();
            let r = client(req, NO_SUCH_SHARE, &req.password).and_then(|c| stat_dir(&c, "/"));
            emit(&step(StepName::Logon, t0, r));
        }
        return;
    }
    let t0 = Instant::now();
    let s = step(StepName::Path, t0, stat_dir(&main, &req.path));
    emit(&s);
    if !s.ok || !s.is_dir {
        return;
    }
    let t0 = Instant::now();
    let r = main.list_dir(&req.path).map(|e| (true, Some(e.len())));
    emit(&step(StepName::List, t0, r));
}
