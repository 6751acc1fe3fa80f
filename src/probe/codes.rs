//! The fixed catalogue of probe failure and warning codes. Codes are stable API: scripts,
//! metrics and `explain` use them. Add a code here with its summary and remedy; never reuse or
//! rename one.

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Code(&'static str);

pub struct CodeInfo {
    pub code: Code,
    /// What the code means, one line.
    pub summary: &'static str,
    /// What to do about it.
    pub remedy: &'static str,
}

macro_rules! catalogue {
    ($( $name:ident => $summary:literal, $remedy:literal; )*) => {
        impl Code {
            $( pub const $name: Code = Code(stringify!($name)); )*
        }
        pub static CATALOGUE: &[CodeInfo] = &[
            $( CodeInfo { code: Code::$name, summary: $summary, remedy: $remedy }, )*
        ];
    };
}

catalogue! {
    PROBE_NOT_IMPLEMENTED =>
        "This build of the agent cannot probe this kind of source yet.",
        "Upgrade the agent to a version that probes this kind. The source is not registered \
         until its probe passes (register_on_probe_failure = true registers it anyway; avoid \
         that: HBR would back up from a source nobody checked).";
    PROBE_TIMEOUT =>
        "The probe did not finish within probe_timeout.",
        "Check that the endpoint answers at all (a firewall that drops packets looks like this). \
         If it is only slow, raise [agent] probe_timeout.";
    PATH_NOT_FOUND =>
        "The configured path does not exist on this host.",
        "Check the path for typos, and that the file system that holds it is mounted here \
         (findmnt PATH).";
    PATH_NOT_DIRECTORY =>
        "The configured path exists but is not a directory.",
        "Point path at the directory to back up (the mount point of the file system), not at \
         a file.";
    PATH_NOT_READABLE =>
        "The agent cannot open or list the directory.",
        "Give the agent's user read and execute permission on the path (check mode bits, ACLs \
         and the unit's ReadOnlyPaths/InaccessiblePaths). HBR's client reads it with its own \
         rights; both must be able to.";
    PATH_NOT_MOUNTED =>
        "The path sits on the root file system, not on a mounted large file system.",
        "Usually the file system is not mounted (yet), and HBR would back up an empty \
         directory. Mount it (and order the agent after it: RequiresMountsFor=PATH). If the \
         data really lives on the root file system, set allow_root_fs = true on the source.";
    PATH_ON_ROOT_FS =>
        "Warning: the path is on the root file system, which allow_root_fs permits.",
        "Nothing to do if that is intended; otherwise mount the large file system and remove \
         allow_root_fs.";
    PATH_EMPTY =>
        "Warning: the directory is empty.",
        "An empty mount point usually means the file system is not mounted or the wrong path \
         is configured; HBR would back up nothing. Check findmnt PATH and ls PATH.";
    DNS_NOT_FOUND =>
        "The host name does not resolve.",
        "Check the name and this host's resolver (resolvectl query NAME, /etc/resolv.conf). \
         Use an IP address if the storage has no DNS name.";
    TCP_REFUSED =>
        "The server refused the TCP connection: nothing listens on that address and port.",
        "Check the port in the config and that the service runs on the server; check that the \
         server's firewall does not reject the connection.";
    TCP_TIMEOUT =>
        "The TCP connection did not complete in time.",
        "A firewall on the way probably drops the packets, or the host is down. Check routing \
         and security groups between this host and the server.";
    TCP_UNREACHABLE =>
        "There is no route to the server (host or network unreachable).",
        "Check the address, this host's routes (ip route get ADDRESS) and that the server is \
         up; an ICMP unreachable from a firewall looks like this too.";

    // ---- NFS v3: nas (nfs), cpfs, bmcpfs ----

    // ---- SMB: nas (smb) ----
    SMB_PROTOCOL_MISMATCH =>
        "The server does not speak SMB 2.0.2-3.1.1 (it refused the NEGOTIATE, answered in SMB1 \
         only, or is not an SMB server).",
        "Enable SMB2/SMB3 on the server (Samba: server min protocol = SMB2_02 or higher; \
         Windows: SMB2 is on unless disabled with Set-SmbServerConfiguration; NAS appliances: \
         the minimum SMB version setting). Check that the port is the SMB port (445).";
    SMB_LOGON_FAILURE =>
        "The server refused the session setup: wrong user name, password or domain.",
        "Check username, password and domain against the server (smbclient //HOST/SHARE -U \
         DOMAIN\\USER). Also check that the account is enabled, not locked out and its password \
         not expired; on Samba the user needs an smbpasswd entry (pdbedit -L).";
    SMB_GUEST_FALLBACK =>
        "The server also accepted a random wrong password (it maps bad passwords to guest), so \
         the configured credentials prove nothing.",
        "Turn off the mapping of bad passwords to guest on the server (Samba: map to guest = \
         never or bad user; NAS appliances: disable guest access for the share), so that a \
         wrong password fails instead of silently backing up what a guest may read.";
    SMB_SHARE_NOT_FOUND =>
        "The server has no share of that name (NT_STATUS_BAD_NETWORK_NAME).",
        "share_path starts with the share name (/SHARE or /SHARE/DIR). List the shares with \
         smbclient -L //HOST -U USER and fix the name; check the share is not hidden by \
         access-based share enumeration.";
    SMB_ACCESS_DENIED =>
        "The user logged on but may not use the share or read the path (NT_STATUS_ACCESS_DENIED).",
        "Grant the user read access: on Samba the share's valid users / read list and the file \
         system permissions; on Windows both the share permissions and the NTFS ACL; on NAS \
         appliances the share's user or group privileges.";
    SMB_PATH_NOT_FOUND =>
        "The directory after the share name in share_path does not exist or is a file.",
        "Fix share_path (/SHARE/DIR) or create the directory on the server.";
    SMB_CLIENT_ERROR =>
        "The SMB client (libsmbclient) failed in a way the agent does not classify.",
        "The reason carries libsmbclient's error. Check the server's logs for the same time, \
         and that the runtime package libsmbclient is installed on this host.";

    // ---- S3-compatible object storage ----

    // ---- HDFS ----

    // ---- end of probe codes ----
}

impl Code {
    pub fn as_str(self) -> &'static str {
        self.0
    }

    pub fn info(self) -> &'static CodeInfo {
        CATALOGUE
            .iter()
            .find(|i| i.code == self)
            .expect("every Code constant is in the catalogue")
    }

    /// Look a code up by name, case-insensitively (for `explain`).
    pub fn lookup(name: &str) -> Option<&'static CodeInfo> {
        CATALOGUE
            .iter()
            .find(|i| i.code.0.eq_ignore_ascii_case(name.trim()))
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_explained() {
        let mut seen = std::collections::BTreeSet::new();
        for info in CATALOGUE {
            assert!(seen.insert(info.code.0), "duplicate {}", info.code);
            assert!(!info.summary.is_empty() && !info.remedy.is_empty());
            assert!(
                info.code
                    .0
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
            );
        }
    }

    #[test]
    fn lookup_is_case_insensitive() {
        assert_eq!(
            Code::lookup("path_not_mounted").unwrap().code,
            Code::PATH_NOT_MOUNTED
        );
        assert!(Code::lookup("NO_SUCH_CODE").is_none());
    }
}

#[cfg(test)]
mod doc_tests {
    #[test]
    fn every_code_has_a_section_in_the_docs() {
        let doc = include_str!("../../docs/failure-codes.md");
        for info in super::CATALOGUE {
            assert!(
                doc.contains(&format!("\n## {}\n", info.code)),
                "docs/failure-codes.md has no section for {}",
                info.code
            );
        }
    }
}
