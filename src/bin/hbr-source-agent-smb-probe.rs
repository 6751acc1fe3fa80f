//! `hbr-source-agent-smb-probe`: the SMB probe's helper process, which runs libsmbclient
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
//! directly. Here each probe has a process to itself while it runs, which the agent kills at the
//! probe deadline.
//!
//! Protocol: one [`Request`] per line as JSON on stdin (the password never travels in argv or the
//! environment), then one [`Step`] per line on stdout, each prefixed with [`MARK`] (libsmbclient
//! may write debug text to stdout too), then [`DONE`] with the request's id. The steps run in the
//! order of [`StepName`] and stop at the first failure; the agent maps them to layers and codes.
//!
//! A helper serves requests one after another, so that a pass with many SMB sources pays the
//! dynamic loader once per helper instead of once per probe. Each request gets fresh libsmbclient
//! contexts, freed (connections closed, credentials forgotten) before [`DONE`]: nothing of one
//! request's session reaches the next. The helper exits at EOF on stdin and by itself after
//! [`IDLE_EXIT`] without a request, removing its private `HOME`.

use std::io::{BufRead as _, Write as _};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pavao::{SmbClient, SmbCredentials, SmbDialect, SmbError, SmbOptions};

use hbr_source_agent::probe::smb::protocol::{
    DONE, HOME_PREFIX, IDLE_EXIT, MARK, Request, Step, StepName, libc_errno,
};

/// One fixed pair of protocol bounds for every client (pavao requires identical bounds for
/// all live clients); the same range the agent's own NEGOTIATE offers.
const MIN_PROTOCOL: SmbDialect = SmbDialect::Smb202;
const MAX_PROTOCOL: SmbDialect = SmbDialect::Smb311;

fn main() -> ExitCode {
    // Lines come through a thread so that the wait for the next one can time out.
    let (tx, rx) = mpsc::sync_channel::<std::io::Result<String>>(1);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let stop = line.is_err();
            if tx.send(line).is_err() || stop {
                return;
            }
        }
    });
    let code = serve(&rx);
    remove_home();
    code
}

fn serve(rx: &mpsc::Receiver<std::io::Result<String>>) -> ExitCode {
    loop {
        let line = match rx.recv_timeout(IDLE_EXIT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => {
                eprintln!("hbr-source-agent-smb-probe: cannot read the request: {e}");
                return ExitCode::from(2);
            }
            // EOF (the agent let go of it) or idle for too long.
            Err(_) => return ExitCode::SUCCESS,
        };
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("hbr-source-agent-smb-probe: bad request: {e}");
                return ExitCode::from(2);
            }
        };
        drop(line);
        // `run` owns every libsmbclient context of this request and frees them on return.
        run(&req, &mut |step| {
            let line = serde_json::to_string(step).expect("a step serialises");
            emit(&format!("{MARK}{line}"));
        });
        emit(&format!("{DONE}{}", req.id));
    }
}

fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The agent made `HOME` a private temporary directory for this helper; when the helper ends by
/// itself (idle, or the agent exited) nobody else removes it.
fn remove_home() {
    let Some(home) = std::env::var_os("HOME").map(std::path::PathBuf::from) else {
        return;
    };
    let ours = home
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(HOME_PREFIX))
        && home.join(".smb").join("smb.conf").is_file();
    if ours {
        let _ = std::fs::remove_dir_all(&home);
    }
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
