//! Shared by the integration tests: a fake HBR on loopback, a temporary config pointing at it,
//! and the agent binary run as a separate process.
#![allow(dead_code, unused_imports)]

#[path = "../support/fake_hbr.rs"]
pub mod fake_hbr;

use std::path::{Path, PathBuf};
use std::process::Output;

pub use fake_hbr::{FakeConfig, FakeHbr, Fault};

pub const CLUSTER: &str = "cl-0004i0nlngorvgjpl7ck";

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub fake: FakeHbr,
    pub config: PathBuf,
    pub state_dir: PathBuf,
}

impl Setup {
    /// A fake HBR and a config with `[agent]`, `[control_plane]` pointing at it, plus `extra`.
    pub async fn new(extra: &str) -> Setup {
        let fake = FakeHbr::start(FakeConfig::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let config = dir.path().join("agent.toml");
        let s = Setup {
            dir,
            fake,
            config,
            state_dir,
        };
        s.write_config(extra);
        s
    }

    pub fn write_config(&self, extra: &str) {
        std::fs::write(&self.config, self.config_text(extra)).unwrap();
    }

    pub fn config_text(&self, extra: &str) -> String {
        format!(
            "version = 1\n\n[agent]\ncluster_id = \"{CLUSTER}\"\nstate_dir = \"{}\"\nprobe_timeout = \"5s\"\n\n\
             [control_plane]\nregion = \"cn-hangzhou\"\nendpoint = \"{}\"\ntimeout = \"3s\"\n\n{extra}\n",
            self.state_dir.display(),
            self.fake.endpoint()
        )
    }

    /// The agent binary with the fake's credentials in the environment and nothing else from
    /// this machine's (no real metadata service, no ~/.alibabacloud).
    pub fn agent(&self) -> tokio::process::Command {
        self.agent_for(&self.config)
    }

    /// As [`Setup::agent`], with another main config file.
    pub fn agent_for(&self, config: &Path) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_hbr-source-agent"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env(
                "ALIBABA_CLOUD_ACCESS_KEY_ID",
                fake_hbr::DEFAULT_ACCESS_KEY_ID,
            )
            .env(
                "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
                fake_hbr::DEFAULT_ACCESS_KEY_SECRET,
            )
            .env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
            .arg("--config")
            .arg(config)
            .kill_on_drop(true);
        c
    }

    /// As [`Setup::agent`], but as user and group nobody (65534) when the tests run as root,
    /// as the service's own user would be: root reads and writes anything.
    pub fn agent_as_nobody(&self) -> tokio::process::Command {
        let agent = self.agent();
        if !rustix::process::geteuid().is_root() {
            return agent;
        }
        as_nobody(agent)
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        let out = self.agent().args(args).output().await.unwrap();
        Run::from(out)
    }

    pub fn state(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.state_dir.join("state.json")).unwrap()).unwrap()
    }

    /// AddDataSource / UpdateDataSource requests HBR accepted.
    pub fn writes(&self) -> Vec<fake_hbr::RecordedRequest> {
        self.fake
            .requests()
            .into_iter()
            .filter(|r| {
                matches!(
                    r.action.as_deref(),
                    Some("AddDataSource" | "UpdateDataSource")
                ) && r.status == Some(200)
            })
            .collect()
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A readable directory on a mounted file system other than `/` (a tmpfs), as a large file
/// system would be; with one file in it.
pub fn mounted_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir_in("/dev/shm").expect("/dev/shm (tmpfs) is needed for these tests");
    std::fs::write(d.path().join("data.bin"), b"x").unwrap();
    d
}

pub fn filesystem_source(name: &str, path: &Path) -> String {
    format!("[filesystem.{name}]\npath = \"{}\"\n", path.display())
}

/// The layers a `probe --json` report ran, in order.
pub fn layer_names(report: &serde_json::Value) -> Vec<String> {
    report["layers"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .map(|l| l["layer"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The warning codes of a `probe --json` report.
pub fn warning_codes(report: &serde_json::Value) -> Vec<String> {
    report["warnings"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| w["code"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `agent` run as user and group nobody (65534) through setpriv, with the same arguments and
/// environment.
#[allow(dead_code)]
pub fn as_nobody(agent: tokio::process::Command) -> tokio::process::Command {
    let std = agent.as_std();
    let mut c = tokio::process::Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(std.get_program())
        .args(std.get_args())
        .env_clear()
        .kill_on_drop(true);
    for (k, v) in std.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c
}
