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
    RPC_PROGRAM_UNAVAILABLE =>
        "The server does not offer MOUNT v3 or NFS v3 over TCP (not registered with its \
         portmapper, or not served on the port).",
        "Enable NFS v3 and its mount daemon on the server (Linux: RPCNFSDOPTS/nfs.conf \
         vers3=y and rpc.mountd running; ganesha: Protocols = 3 and MNT_Port; NetApp: \
         vserver nfs modify -v3 enabled; Synology: NFS service with maximum protocol NFSv3 or \
         later). Check rpcinfo -p SERVER from this host. If ports are fixed without a \
         portmapper, give port= and mountport= in mount_options.";
    NFS_MOUNT_DENIED =>
        "The server refused to mount the share for this host (MNT3ERR_ACCES): its export \
         list does not admit this host's address.",
        "Add this host's address, as the reason quotes it, to the export's client list: Linux \
         /etc/exports `/share 10.0.0.5(ro)` then exportfs -ra; ganesha CLIENT { Clients = \
         10.0.0.5; }; NetApp: a rule in the export policy of the volume (vserver export-policy \
         rule create -clientmatch 10.0.0.5 -rorule sys); Synology: Shared Folder > Edit > NFS \
         Permissions. showmount -e SERVER from this host shows what it may mount.";
    NFS_EXPORT_NOT_FOUND =>
        "The share path is not exported by the server (MNT3ERR_NOENT, or not a directory \
         under any export this host may mount).",
        "Check share_path against showmount -e SERVER (NetApp: the junction path, e.g. \
         /vol1; Synology: /volume1/NAME; CPFS/NAS mount targets: usually /). Mounting a \
         sub-directory works only when it exists and the server allows it.";
    NFS_PRIVILEGED_PORT_REQUIRED =>
        "The export accepts requests from reserved source ports (< 1024) only, and this \
         process may not bind one.",
        "Either let the agent bind reserved ports: give it CAP_NET_BIND_SERVICE \
         (AmbientCapabilities=CAP_NET_BIND_SERVICE in the unit), or allow ordinary ports on \
         the export: the `insecure` option in Linux /etc/exports, PrivilegedPort = false in \
         ganesha, `vserver nfs modify -mount-rootonly disabled -nfs-rootonly disabled` on \
         NetApp, \"Allow connections from non-privileged ports\" on Synology.";
    NFS_NOT_READABLE =>
        "The share mounts, but its root directory cannot be read as root (NFS3ERR_ACCES): \
         root is squashed to an anonymous user, or the mode bits refuse it.",
        "HBR's client reads as root. Export with no_root_squash (Linux /etc/exports; \
         ganesha Squash = No_Root_Squash; NetApp: -superuser sys in the export-policy rule; \
         Synology: Squash \"No mapping\"), or make the directory readable by the anonymous \
         user (mode bits in the reason).";
    NFS_STALE_HANDLE =>
        "The server does not recognise the file handle it gave for the share (NFS3ERR_STALE \
         or NFS3ERR_BADHANDLE).",
        "The export changed under the server (re-created directory, file system remounted \
         or failed over without a fixed fsid). Re-export it (exportfs -ra; give Linux exports \
         a fixed fsid=), restart the NFS service if it persists, then probe again.";
    NFS_AUTH_REJECTED =>
        "The server rejected the RPC call's AUTH_SYS credentials (AUTH_BADCRED, \
         AUTH_TOOWEAK, …).",
        "The export probably requires Kerberos (sec=krb5*), which HBR's client does not use \
         here. Allow sec=sys on the export (Linux: sec=sys in /etc/exports; ganesha: SecType \
         = sys; NetApp: -rorule sys in the export-policy rule).";
    NFS_PROTOCOL_ERROR =>
        "Something answered on the port, but not as an ONC RPC / NFS v3 server (connection \
         closed, or a reply that is not valid RPC).",
        "Check the port in servers (2049 for NFS) and mountport= in mount_options: another \
         service may be listening there. A proxy or firewall that cuts connections looks \
         like this too.";
    NFS_SERVER_ERROR =>
        "The NFS server answered with an error of its own (MNT3ERR_IO, NFS3ERR_IO, \
         NFS3ERR_SERVERFAULT, SYSTEM_ERR, …).",
        "Look at the server's logs and the health of the exported file system; the reason \
         quotes the status. Probe again once the server is healthy.";

    // ---- SMB: nas (smb) ----
    SMB_PROTOCOL_MISMATCH =>
        "The server does not speak SMB 2.0.2-3.1.1 (it refused the NEGOTIATE, answered in SMB1 \
         only, or is not an SMB server).",
        "Enable SMB2/SMB3 on the server (Samba: server min protocol = SMB2_02 or higher; \
         Windows: SMB2 is on unless disabled with Set-SmbServerConfiguration; NAS appliances: \
         the minimum SMB version setting). Check that the port is the SMB port (445).";
    SMB_LOGON_FAILURE =>
        "The server refused the session setup with NT_STATUS_LOGON_FAILURE (or WRONG_PASSWORD, \
         NO_SUCH_USER): unknown user, or wrong password or domain.",
        "Check username, password and domain against the server (smbclient //HOST/SHARE -U \
         DOMAIN\\USER). On Samba the user needs an smbpasswd entry (pdbedit -L); for a \
         Windows local account set domain to the server's computer name.";
    SMB_ACCOUNT_DISABLED =>
        "The server refused the session setup with NT_STATUS_ACCOUNT_DISABLED: the password is \
         not the problem, the account is disabled.",
        "Enable the account (Samba: smbpasswd -e USER or pdbedit -c \"[]\" -u USER; Windows: \
         Enable-LocalUser / Enable-ADAccount; NAS appliances: the user list), or configure an \
         account that is enabled.";
    SMB_ACCOUNT_LOCKED_OUT =>
        "The server refused the session setup with NT_STATUS_ACCOUNT_LOCKED_OUT: too many bad \
         passwords locked the account.",
        "Unlock the account (Samba: pdbedit -z -u USER and pdbedit -c \"[]\" -u USER; Windows: \
         Unlock-ADAccount, or wait for the lockout duration), then find what keeps sending a \
         wrong password (an old copy of the password in another source or client).";
    SMB_ACCOUNT_EXPIRED =>
        "The server refused the session setup with NT_STATUS_ACCOUNT_EXPIRED: the account's \
         expiry date has passed.",
        "Extend the account's expiry (Samba: pdbedit -K never -u USER; Windows: \
         Set-ADAccountExpiration / Clear-ADAccountExpiration, or net user USER /expires:never).";
    SMB_PASSWORD_EXPIRED =>
        "The server refused the session setup with NT_STATUS_PASSWORD_EXPIRED or \
         NT_STATUS_PASSWORD_MUST_CHANGE: the password is right but may not be used any more.",
        "Set a new password for the account on the server and in the agent's secret, or mark \
         a service account's password as never expiring (Windows: PasswordNeverExpires; Samba: \
         pdbedit -c \"[X]\" -u USER, or clear 'must change at next logon').";
    SMB_LOGON_RESTRICTED =>
        "The server refused the session setup for a restriction on the account or its policy: \
         logon hours, allowed workstations, no right to log on over the network, or \
         NT_STATUS_ACCESS_DENIED.",
        "The reason quotes the NT status. Allow this host (its name is the NTLM workstation \
         name) in the account's workstation list, widen its logon hours, or grant 'Access this \
         computer from the network'; on Windows, event 4625 in the server's Security log names \
         the sub-status.";
    SMB_NTLM_REFUSED =>
        "The server does not accept NTLM authentication (NT_STATUS_NOT_SUPPORTED or \
         NT_STATUS_NTLM_BLOCKED): it allows Kerberos only.",
        "The agent authenticates with NTLMv2. Allow NTLM for this client on the server (Windows: \
         'Network security: Restrict NTLM' exceptions for this host; Samba: ntlm auth = \
         ntlmv2-only or yes), or use an SMB server that accepts it.";
    SMB_GUEST_FALLBACK =>
        "The server let the session setup in as guest (SessionFlags IS_GUEST or IS_NULL): it \
         maps bad passwords or unknown users to guest, so the configured credentials prove \
         nothing.",
        "Fix the credentials (a wrong password or unknown user is what lands as guest), and \
         turn off the mapping of bad passwords to guest on the server (Samba: map to guest = \
         never; NAS appliances: disable guest access), so that a wrong password fails instead \
         of silently backing up what a guest may read.";
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
        "The SMB session failed in a way the agent does not classify: an NT status it has no \
         code for, a broken exchange, or an error of the SMB client (libsmbclient).",
        "The reason carries the server's NT status or libsmbclient's error. Check the server's \
         logs for the same time, and that the runtime package libsmbclient is installed on \
         this host. If the reason \
         says the helper is missing: the SMB probe runs /usr/libexec/hbr-source-agent/\
         hbr-source-agent-smb-probe (or hbr-source-agent-smb-probe next to the agent's own \
         binary); reinstall the package.";

    // ---- S3-compatible object storage ----
    TLS_UNTRUSTED =>
        "The server's TLS certificate does not chain to a trusted CA.",
        "If the storage uses a private or self-signed CA, set ca_file on the source to that CA's \
         PEM certificate (or install it in this host's trust store: update-ca-certificates). \
         Check with: openssl s_client -connect HOST:PORT -servername HOST -showcerts.";
    TLS_NAME_MISMATCH =>
        "The server's TLS certificate is not valid for the host name in the endpoint.",
        "Use the host name the certificate was issued for in endpoint (the reason lists the \
         names it presents), or have the server's certificate reissued with this name in its \
         subjectAltName. Connecting by IP needs an IP address SAN.";
    TLS_EXPIRED =>
        "The server's TLS certificate has expired or is not valid yet.",
        "Renew the certificate on the server. If it looks valid, check this host's clock \
         (timedatectl; chronyc tracking).";
    TLS_EXPIRES_SOON =>
        "Warning: the server's TLS certificate expires within 30 days.",
        "Renew the certificate on the server before it expires; HBR's backups to it fail from \
         that day on.";
    TLS_HANDSHAKE_FAILED =>
        "The TLS handshake failed for a reason other than the certificate.",
        "The reason quotes the TLS error. A plain-http server on the port looks like this (use \
         http:// in endpoint); so do servers that only offer protocol versions or ciphers \
         older than TLS 1.2.";
    TLS_CA_FILE_INVALID =>
        "The source's ca_file cannot be read or holds no usable PEM CA certificate.",
        "Point ca_file at a readable PEM file (-----BEGIN CERTIFICATE-----) holding the CA that \
         issued the server's certificate, and check that the agent's user can read it.";
    S3_INVALID_ACCESS_KEY =>
        "The server does not know the access key id (InvalidAccessKeyId).",
        "Check access_key_id for typos and that the key exists and is active on this server \
         (a key of another account, region or S3 service is unknown here).";
    S3_SIGNATURE_MISMATCH =>
        "The request signature does not match (SignatureDoesNotMatch): usually the wrong secret.",
        "Check access_key_secret: it must be the secret of access_key_id, without stray \
         whitespace or a trailing newline in the secret file. A proxy that rewrites requests \
         also breaks signatures.";
    S3_ACCESS_DENIED =>
        "The key is valid but the server denies it the bucket (AccessDenied).",
        "Grant the key's user s3:ListBucket on the bucket and s3:GetObject on its objects \
         (IAM or bucket policy, RAM policy on OSS); check explicit Deny statements and \
         conditions such as source IP or VPC endpoint.";
    S3_BUCKET_NOT_FOUND =>
        "The bucket does not exist on this server (NoSuchBucket).",
        "Check bucket for typos and that endpoint points at the server (and account) that \
         holds it. With path_style = false the bucket name is also part of the host name.";
    S3_WRONG_REGION =>
        "The bucket lives in another region than the configured one.",
        "Set region on the source to the region the reason names (for AWS also use that \
         region's endpoint). Servers without regions (MinIO, Ceph RGW) name the one they \
         expect in signatures: use that.";
    S3_REQUEST_FAILED =>
        "The S3 request failed with an error this agent has no more specific code for.",
        "The reason quotes the server's error code and message; look them up in the \
         storage's documentation. 5xx errors (InternalError, ServiceUnavailable, SlowDown) \
         are on the server's side: retry later.";
    S3_PREFIX_EMPTY =>
        "Warning: no object exists under the configured prefix (or in the bucket).",
        "HBR would back up nothing. Check prefix (S3 prefixes are case-sensitive and usually \
         end with /) and that the data has been written to this bucket.";
    CLOCK_SKEW =>
        "This host's clock and the server's differ by more than the 15 minutes SigV4 allows.",
        "Synchronise the clock of this host (timedatectl set-ntp true; chronyc tracking) or \
         of the server: signed requests are refused while they differ.";
    HTTP_UNEXPECTED =>
        "Something answered at the endpoint, but not as S3 does: the answer has no S3 error code.",
        "Check endpoint: scheme, host, port and path must reach the S3 API itself, not a web \
         console, a load balancer's default page or another service. The reason shows the \
         status, Content-Type and the start of what answered.";

    // ---- HDFS ----
    HDFS_NOT_A_NAMENODE =>
        "Something listens on the NameNode address, but it does not speak Hadoop RPC.",
        "Use the NameNode's RPC port (fs.defaultFS / dfs.namenode.rpc-address, usually 8020 or \
         9000), not its HTTP port (9870, or 50070 on Hadoop 2) or another service's. The reason \
         quotes what the port answered.";
    HDFS_STANDBY_ONLY =>
        "Every NameNode that answered is in standby state; none is active.",
        "List the active NameNode in namenodes (both of an HA pair), or complete the failover \
         (hdfs haadmin -getAllServiceState; hdfs haadmin -failover). HBR cannot read while no \
         NameNode is active.";
    HDFS_NAMENODE_DOWN =>
        "Warning: one NameNode of an HA pair is down or unusable; another one is active.",
        "Backups work through the active NameNode, but a failover would stop them. Bring the \
         named NameNode back (the reason carries its code, e.g. TCP_REFUSED), or fix its \
         address in namenodes.";
    HDFS_AUTH_FAILED =>
        "The NameNode refused the client's authentication (Kerberos/SASL).",
        "With Kerberos, set kerberos_principal and keytab (check with kinit -kt KEYTAB \
         PRINCIPAL and klist), and check that this host's krb5.conf knows the realm. A cluster \
         that requires Kerberos refuses simple auth (\"SIMPLE authentication is not enabled\").";
    HDFS_KEYTAB_UNREADABLE =>
        "The agent cannot read the configured Kerberos keytab file.",
        "Check the keytab path, and that the agent's user can read it (mode 0400, owned by that \
         user; with systemd, pass it with LoadCredential= and point keytab at \
         $CREDENTIALS_DIRECTORY).";
    HDFS_RPC_ERROR =>
        "The NameNode answered a call with an unexpected error.",
        "Read the exception in the reason and the NameNode's log; check that the cluster is \
         healthy (hdfs dfsadmin -report).";
    HDFS_PATH_NOT_FOUND =>
        "A configured HDFS path does not exist.",
        "Check the path for typos (hdfs dfs -ls PATH as the configured user), or create it.";
    HDFS_PERMISSION_DENIED =>
        "The NameNode denied the configured user access to a path (AccessControlException).",
        "Give user read and execute permission on the path and its parents (hdfs dfs -chmod / \
         -setfacl), or configure a user that has it. The reason quotes the NameNode's message \
         with the inode and the access it checked.";
    HDFS_SAFE_MODE =>
        "The active NameNode is in safe mode.",
        "Safe mode is read-only and, at startup, means blocks are not all reported yet; wait \
         for it to end (hdfs dfsadmin -safemode get) or find why it was entered. The agent \
         probes again at reprobe_interval.";
    HDFS_DATANODE_UNREACHABLE =>
        "No DataNode holding a block of a file under the paths accepts TCP from this host.",
        "Backup reads go to the DataNodes directly: open their data-transfer port (9866, or \
         50010 on Hadoop 2) from this host, and check that the addresses the NameNode reports \
         for them are reachable from here (multi-homed DataNodes: dfs.datanode.hostname).";
    HDFS_NO_BLOCKS_SEEN =>
        "Warning: no file with data directly under the paths, so DataNode reach was not checked.",
        "Nothing to do if the paths hold only directories or are empty for now. To check the \
         DataNodes too, list a path that holds a file with data directly.";

    // ---- fleet (docs/fleet.md) ----
    PARTIAL_REACHABILITY =>
        "Warning: some live members of the client group cannot reach this source; others can.",
        "HBR may run a backup on any member, and runs on the members named fail. Fix their \
         access (the code per member says what failed there: mount, firewall, DNS, \
         permissions), or take hosts that must not back it up out of the client group. The \
         owner still registers and updates the source.";

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
