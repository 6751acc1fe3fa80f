//! The NFS v3 test server (rpcbind + nfs-ganesha from scripts/servers/nfs.sh), started once per
//! test process and reused afterwards (the script's `up` is idempotent and locked).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The server's working directory: its exports are under `exports/` (see
/// scripts/servers/nfs/ganesha.conf). Panics with the script's output when it cannot start.
pub fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/servers/nfs.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg("up")
            .output()
            .expect("cannot run scripts/servers/nfs.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "scripts/servers/nfs.sh up failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
    })
}

/// The server-side path of one export: "open" (127.0.0.1), "denied" (127.0.0.2 only),
/// "secure" (reserved source ports only), "squashed" (all_squash on a root-only directory).
pub fn export(name: &str) -> String {
    root().join("exports").join(name).display().to_string()
}
