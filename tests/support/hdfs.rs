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

static UP: OnceLock<Result<(), String>> = OnceLock::new();
static SEEDED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Start (or reuse) the server and write the test tree; panics with the script's output.
pub async fn server() {
    let up = UP.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/servers/hdfs.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg("up")
            .output()
            .map_err(|e| format!("cannot run {script}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{script} up failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = up {
        panic!("the HDFS test server did not start:\n{e}");
    }
    // Once per process: parallel tests writing the same file would race for its lease.
    SEEDED.get_or_init(seed).await;
}

async fn seed() {
    let client = ClientBuilder::new()
        .with_url(format!("hdfs://{RPC}"))
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
