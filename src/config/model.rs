//! The validated configuration: what the rest of the program trusts. Every value here has been
//! checked, defaults are applied and secrets are resolved. Built only by `config::load`.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::secret::Secret;

/// Defaults, stated once; the example config and docs quote them.
pub mod defaults {
    use std::time::Duration;

    pub const STATE_DIR: &str = "/var/lib/hbr-source-agent";
    pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
    pub const PROBE_CONCURRENCY: usize = 16;
    pub const WRITE_CONCURRENCY: usize = 4;
    /// The most HBR writes a config may ask to have in flight at once.
    pub const MAX_WRITE_CONCURRENCY: usize = 32;
    pub const REPROBE_INTERVAL: Duration = Duration::from_secs(3600);
    pub const METADATA_ENDPOINT: &str = "http://100.100.100.200";
    pub const API_TIMEOUT: Duration = Duration::from_secs(10);
    pub const NFS_PORT: u16 = 2049;
    pub const SMB_PORT: u16 = 445;
    pub const HDFS_PORT: u16 = 8020;
    pub const FLEET_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(600);
    pub const ETCD_LEASE_TTL: Duration = Duration::from_secs(60);
    pub const ETCD_PREFIX: &str = "/hbr-source-agent";
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Files read, in the order they were merged (main file first).
    pub files: Vec<PathBuf>,
    pub agent: AgentSettings,
    pub control_plane: ControlPlane,
    /// Keyed by name (the HBR `DataSourceName`), unique across kinds.
    pub sources: BTreeMap<String, Source>,
    /// `[fleet]`: `None` = this host owns every source (the single-host behaviour).
    pub fleet: Option<FleetSettings>,
    /// Problems that do not stop the agent (they fail `validate --strict`).
    pub warnings: Vec<crate::config::Diagnostic>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    pub cluster_id: String,
    pub state_dir: PathBuf,
    pub probe_timeout: Duration,
    pub probe_concurrency: NonZeroUsize,
    /// HBR writes (AddDataSource, UpdateDataSource) in flight at once in a pass.
    pub write_concurrency: NonZeroUsize,
    pub reprobe_interval: Duration,
    pub register_on_probe_failure: bool,
}

/// `[fleet]`: many hosts of one client group, one owner per source (docs/fleet.md).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSettings {
    pub identity: ClientIdentity,
    /// A member whose last heartbeat is older than this is not live.
    pub heartbeat_timeout: Duration,
    /// An add needs ownership in a view at least this old; `None` = `probe_timeout` plus
    /// three API timeouts (longer than a pass takes from describe to add).
    pub settle_time: Option<Duration>,
    /// `coordination = "etcd"`: a per-source lock in etcd on top of the hashing.
    pub etcd: Option<EtcdSettings>,
}

/// This host's HBR ClientId (`c-…`), as written or read from a file at every pass.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientIdentity {
    Literal(String),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct EtcdSettings {
    pub endpoints: Vec<Url>,
    pub lease_ttl: Duration,
    /// Keys live under `PREFIX/CLUSTER_ID/`.
    pub prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Public,
    Vpc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureVersion {
    /// ACS3-HMAC-SHA256, header based.
    V3,
    /// Legacy RPC HMAC-SHA1, query based.
    V2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlane {
    pub region: String,
    pub network: Network,
    /// Resolved endpoint: the override, or `https://hbr[-vpc].<region>.aliyuncs.com`.
    pub endpoint: Url,
    pub signature: SignatureVersion,
    /// Static credentials from the config; `None` = the Alibaba Cloud default chain.
    pub credentials: Option<StaticCredentials>,
    pub metadata_endpoint: Url,
    /// Deadline of one HTTP attempt.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StaticCredentials {
    pub access_key_id: Secret,
    pub access_key_secret: Secret,
    pub security_token: Option<Secret>,
}

/// Where a source was declared: its table header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub name: String,
    pub origin: Origin,
    pub spec: SourceSpec,
    /// Archive-analysis options (nas, hdfs, s3 only; empty elsewhere).
    pub archive: ArchiveOptions,
    /// `connection_info = { ... }`: merged into the ConnectionInfo JSON last.
    pub connection_info_extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    Nas(NasSpec),
    Cpfs(CpfsSpec),
    Bmcpfs(CpfsSpec),
    Filesystem(FilesystemSpec),
    Hdfs(HdfsSpec),
    S3(S3Spec),
}

impl SourceSpec {
    /// The config table name of the kind (`[nas.NAME]` → "nas").
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::Nas(_) => "nas",
            SourceSpec::Cpfs(_) => "cpfs",
            SourceSpec::Bmcpfs(_) => "bmcpfs",
            SourceSpec::Filesystem(_) => "filesystem",
            SourceSpec::Hdfs(_) => "hdfs",
            SourceSpec::S3(_) => "s3",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NasProtocol {
    Nfs,
    Smb,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NasSpec {
    pub protocol: NasProtocol,
    /// Default port applied (2049 nfs, 445 smb).
    pub servers: Vec<HostPort>,
    pub share_path: String,
    pub mount_options: Option<String>,
    /// smb only.
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub domain: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CpfsSpec {
    pub mount_target: String,
    pub share_path: String,
    pub mount_options: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FilesystemSpec {
    pub path: PathBuf,
    pub allow_root_fs: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HdfsSpec {
    /// Default port 8020 applied. Several = an HA pair.
    pub namenodes: Vec<HostPort>,
    /// The HA nameservice ID (`dfs.nameservices`) the NameNodes serve; sent to HBR, not probed.
    pub nameservice: Option<String>,
    pub user: String,
    /// HDFS paths to probe; sent to HBR as `Path.N` (they are also the analysis paths).
    pub paths: Vec<String>,
    pub kerberos_principal: Option<String>,
    pub keytab: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct S3Spec {
    pub endpoint: Url,
    pub bucket: String,
    pub region: String,
    pub prefix: Option<String>,
    pub path_style: bool,
    pub ca_file: Option<PathBuf>,
    pub access_key_id: Secret,
    pub access_key_secret: Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexLevel {
    Off,
    Meta,
    /// Deprecated by HBR; accepted with a warning.
    All,
}

impl IndexLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            IndexLevel::Off => "OFF",
            IndexLevel::Meta => "META",
            IndexLevel::All => "ALL",
        }
    }
}

/// Archive-analysis options, already in HBR's wire form where HBR takes a string.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArchiveOptions {
    pub index_level: Option<IndexLevel>,
    /// `I|{unix start}|{ISO 8601 duration}`.
    pub schedule: Option<String>,
    /// `from:to:kib_per_s` windows joined by `|`.
    pub speed_limit: Option<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub paths: Vec<String>,
    pub options: Option<serde_json::Map<String, serde_json::Value>>,
}
