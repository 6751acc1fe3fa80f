//! The SMB test servers (scripts/servers/smb.sh): started once per test process, reused when
//! already running. A server that cannot start fails the test with the script's output.
#![allow(dead_code)]

use std::sync::OnceLock;

/// smbd with `map to guest = never`.
pub const STRICT_PORT: u16 = 4455;
/// smbd with `map to guest = bad password`.
pub const GUEST_PORT: u16 = 4456;
/// smbd with `server max protocol = NT1` (SMB1 only).
pub const SMB1_PORT: u16 = 4457;
/// smbd with `server signing = mandatory` and the accounts below.
pub const SIGNED_PORT: u16 = 4458;
/// smbd with `server max protocol = SMB2_10` (the agent signs with HMAC-SHA256).
pub const SMB21_PORT: u16 = 4459;
/// smbd with `server max protocol = SMB3_00` (AES-CMAC, the 3.0 key derivation).
pub const SMB30_PORT: u16 = 4460;
/// The password of every account on the signed server made in a state that refuses logons
/// (smbdisabled, smblocked, smbkicked, smbnewpw, smbws).
pub const ACCOUNT_PASSWORD: &str = "Acct0untPass";
pub const USER: &str = "smbtest";
pub const PASSWORD: &str = "S3cretPass";
/// Logs on, but may not use [share].
pub const OTHER_USER: &str = "smbother";
pub const OTHER_PASSWORD: &str = "0therPass";

pub fn servers() {
    static UP: OnceLock<Result<(), String>> = OnceLock::new();
    let r = UP.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/servers/smb.sh");
        let out = std::process::Command::new("bash")
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
    if let Err(e) = r {
        panic!("the SMB test servers did not start: {e}");
    }
}

/// A `[nas.NAME]` SMB source.
pub fn source(name: &str, port: u16, share_path: &str, user: &str, password: &str) -> String {
    format!(
        "[nas.{name}]\nprotocol = \"smb\"\nservers = [\"127.0.0.1:{port}\"]\n\
         share_path = \"{share_path}\"\nusername = \"{user}\"\npassword = \"{password}\"\n"
    )
}

/// A `[nas.NAME]` SMB source with several servers (`host:port` each).
pub fn source_servers(name: &str, servers: &[String], share_path: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[nas.{name}]\nprotocol = \"smb\"\nservers = [{}]\n\
         share_path = \"{share_path}\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n",
        list.join(", ")
    )
}
