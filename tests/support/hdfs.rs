//! The real Hadoop NameNode + DataNode for the HDFS tests: `scripts/servers/hdfs.sh up` once per
//! test process (it reuses a healthy running server), then the test tree, written through
//! hdfs-native as the NameNode's superuser:
//!
//! - `/hbr-test/data/blob.bin`: a file with data (its block is on the DataNode), world-readable;
//! - `/hbr-test/private/`: mode 0700, owned by root (another user is denied a listing);
//! - `/hbr-test/empty/`: an empty directory.
//!
//! When the server cannot start, the tests fail with the script's output; they never skip.

use std::process::Command;
use std::sync::OnceLock;

use hdfs_native::{ClientBuilder, HdfsError, WriteOptions};

pub const RPC: &str = "127.0.0.1:8020";
pub const HTTP: &str = "127.0.0.1:9870";
pub const DATANODE: &str = "127.0.0.1:9866";
pub const DATA: &str = "/hbr-test/data";
pub const PRIVATE: &str = "/hbr-test/private";
pub const EMPTY: &str = "/hbr-test/empty";

/// The spare cluster (scripts/servers/hdfs.sh … spare), for tests that break it on purpose.
pub const SPARE_RPC: &str = "127.0.0.1:8120";
pub const SPARE_DATANODE: &str = "127.0.0.1:9966";

static UP: OnceLock<Result<(), String>> = OnceLock::new();
static SEEDED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Start (or reuse) the server and write the test tree; panics with the script's output.
pub async fn server() {
    let up = UP.get_or_init(|| script(&["up"]));
    if let Err(e) = up {
        panic!("the HDFS test server did not start:\n{e}");
    }
    // Once per process: parallel tests writing the same file would race for its lease.
    SEEDED.get_or_init(|| seed(RPC)).await;
}

/// Run `scripts/servers/hdfs.sh ARGS`; the error carries its output.
pub fn script(args: &[&str]) -> Result<(), String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/servers/hdfs.sh");
    let out = Command::new("bash")
        .arg(path)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {path}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{path} {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A fresh spare cluster with the test tree written (only one test uses it).
pub async fn spare_server() {
    if let Err(e) = script(&["up", "spare"]) {
        panic!("the spare HDFS test server did not start:\n{e}");
    }
    seed(SPARE_RPC).await;
}

async fn seed(rpc: &str) {
    let client = ClientBuilder::new()
        .with_url(format!("hdfs://{rpc}"))
        .with_config_dir("/dev/null/none")
        .with_user("root")
        .build()
        .expect("hdfs-native client");
    for (dir, mode) in [(DATA, 0o755), (PRIVATE, 0o700), (EMPTY, 0o755)] {
        client.mkdirs(dir, mode, true).await.expect("mkdirs");
        client.set_permission(dir, mode).await.expect("chmod");
    }
    for file in [format!("{DATA}/blob.bin"), format!("{PRIVATE}/secret.bin")] {
        match client.get_file_info(&file).await {
            Ok(st) if st.length > 0 => continue,
            _ => {}
        }
        let opts = WriteOptions::default().overwrite(true).replication(1);
        match client.create(&file, opts).await {
            Ok(mut w) => {
                w.write_bytes(b"hbr-source-agent test data\n".to_vec().into())
                    .await
                    .expect("write");
                w.close().await.expect("close");
            }
            // Another test process is writing it at the same moment.
            Err(HdfsError::AlreadyExists(_)) => {}
            Err(e) => panic!("cannot write {file}: {e}"),
        }
    }
}

pub fn hdfs_source(name: &str, namenodes: &[&str], user: &str, paths: &[&str]) -> String {
    let list = |v: &[&str]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[hdfs.{name}]\nnamenodes = [{}]\nuser = \"{user}\"\npaths = [{}]\n",
        list(namenodes),
        list(paths)
    )
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}
