//! The runtime socket: `GET /metrics` (Prometheus text) and `GET /status` (JSON of what the
//! running daemon knows) over HTTP/1.0 on a Unix socket in the runtime directory, and
//! `GET /metrics` only on an optional loopback TCP listener. `status` is the client.
//!
//! A deliberately tiny server: one request per connection, bounded in size and time, so a
//! stuck scraper costs one task and never the daemon. It serves nothing secret.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// The socket's file name inside the runtime directory.
pub const SOCKET_NAME: &str = "agent.sock";
const MAX_REQUEST: usize = 8 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the running daemon knows, as `status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub started_at: String,
    pub cluster_id: String,
    /// The `STATUS=` line.
    pub summary: String,
    pub config_ok: bool,
    /// Why the last reload failed (the running config is the last good one).
    pub config_error: Option<String>,
    pub last_reload_at: String,
    pub last_pass_at: Option<String>,
    /// Why the last pass could not run at all (HBR unreadable).
    pub pass_error: Option<String>,
    pub sources: Vec<SourceStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceStatus {
    pub name: String,
    pub kind: String,
    pub outcome: String,
    pub data_source_id: Option<String>,
    /// `passed`, `failed`, or `not probed`.
    pub probe: String,
    pub probe_code: Option<String>,
    /// When the outcome last changed.
    pub last_change: String,
    /// The reason of a failure outcome.
    pub last_error: Option<String>,
    /// Fleet strict mode, on the owner: how the live members reach it (`PARTIAL_REACHABILITY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reach: Option<crate::fleet::reach::Reach>,
}

pub type SharedStatus = Arc<Mutex<DaemonStatus>>;

/// Bind the Unix socket (replacing a stale one) and serve metrics and status on it until the
/// process ends. Returns the socket path to remove on exit.
pub fn serve_unix(runtime_dir: &Path, status: SharedStatus) -> anyhow::Result<PathBuf> {
    let path = runtime_dir.join(SOCKET_NAME);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
    let unix = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    // Group members (a Prometheus scraper, an operator) may connect; UMask would leave 0600.
    rustix::fs::chmod(&path, rustix::fs::Mode::from_raw_mode(0o660))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    tokio::spawn(async move {
        loop {
            match unix.accept().await {
                Ok((conn, _)) => {
                    tokio::spawn(handle(conn, status.clone(), true));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "runtime socket accept failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(path)
}

/// Serve metrics (only) on a loopback TCP address until the process ends.
pub fn serve_tcp(addr: SocketAddr) -> anyhow::Result<()> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tracing::info!(listen = %listener.local_addr()?, "metrics on loopback TCP");
    let no_status = SharedStatus::default();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    tokio::spawn(handle(conn, no_status.clone(), false));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(())
}

async fn handle<C: AsyncRead + AsyncWrite + Unpin>(
    mut conn: C,
    status: SharedStatus,
    with_status: bool,
) {
    let served = tokio::time::timeout(IO_TIMEOUT, async {
        let Some(path) = read_request(&mut conn).await else {
            return respond(&mut conn, "400 Bad Request", "text/plain", "bad request\n").await;
        };
        match path.as_str() {
            "/metrics" => {
                let body = crate::metrics::global().encode();
                respond(
                    &mut conn,
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    &body,
                )
                .await
            }
            "/status" if with_status => {
                let body = {
                    let s = status.lock().unwrap_or_else(|p| p.into_inner());
                    serde_json::to_string(&*s).unwrap_or_default()
                };
                respond(&mut conn, "200 OK", "application/json", &body).await
            }
            _ => respond(&mut conn, "404 Not Found", "text/plain", "not found\n").await,
        }
    })
    .await;
    if let Ok(Err(e)) = served {
        tracing::debug!(error = %e, "runtime socket client went away");
    }
}

/// The path of a `GET` request, reading at most [`MAX_REQUEST`] bytes of head.
async fn read_request<C: AsyncRead + Unpin>(conn: &mut C) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = std::str::from_utf8(&buf).ok()?;
    let mut parts = head.lines().next()?.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) => Some(path.split('?').next().unwrap_or(path).to_string()),
        _ => None,
    }
}

async fn respond<C: AsyncWrite + Unpin>(
    conn: &mut C,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

/// Ask the daemon listening in `runtime_dir` for its status (blocking, bounded).
pub fn query_status(runtime_dir: &Path) -> anyhow::Result<DaemonStatus> {
    let body = get(&runtime_dir.join(SOCKET_NAME), "/status")?;
    serde_json::from_str(&body).context("the daemon's answer is not a status")
}

/// `GET path` on the Unix socket at `socket`; the body of a 200 answer.
pub fn get(socket: &Path, path: &str) -> anyhow::Result<String> {
    let mut conn = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .with_context(|| format!("no answer on {}", socket.display()))?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .context("malformed answer from the daemon")?;
    let status_line = head.lines().next().unwrap_or_default();
    anyhow::ensure!(
        status_line.split_whitespace().nth(1) == Some("200"),
        "the daemon answered {status_line:?}"
    );
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_metrics_and_status_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let status: SharedStatus = Arc::new(Mutex::new(DaemonStatus {
            summary: "1/1 in sync".into(),
            ..Default::default()
        }));
        let sock = serve_unix(dir.path(), status).unwrap();
        let mode = std::fs::metadata(&sock).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o660
        );
        let dir2 = dir.path().to_path_buf();
        let (st, metrics, missing) = tokio::task::spawn_blocking(move || {
            (
                query_status(&dir2).unwrap(),
                get(&dir2.join(SOCKET_NAME), "/metrics").unwrap(),
                get(&dir2.join(SOCKET_NAME), "/nope")
                    .unwrap_err()
                    .to_string(),
            )
        })
        .await
        .unwrap();
        assert_eq!(st.summary, "1/1 in sync");
        assert!(
            metrics.contains("# TYPE config_last_reload_successful gauge"),
            "{metrics}"
        );
        assert!(missing.contains("404"), "{missing}");
    }
}
