//! The state file `state_dir/state.json`: per source the DataSourceId the agent registered,
//! the fingerprints of what it last sent, and the last probe result. Written atomically (temp
//! file, fsync, rename, fsync of the directory) with mode 0600, under an exclusive lock so two
//! processes never apply at once. It holds no secret: only an HMAC of each Credential, keyed by
//! `state_dir/hmac.key`. Losing it loses nothing: names are looked up in HBR again.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub schema: u32,
    pub cluster_id: String,
    pub sources: BTreeMap<String, SourceState>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SourceState {
    /// Set once HBR holds the source (added by the agent or adopted by name).
    pub data_source_id: Option<String>,
    pub data_source_type: String,
    /// Fingerprints of what the agent last sent successfully.
    pub spec_hash: Option<String>,
    pub secret_hmac: Option<String>,
    pub last_probe: Option<ProbeSummary>,
    /// The last reconcile outcome (`added`, `updated`, `in_sync`, `probe_failed`, …).
    pub outcome: String,
    /// One line on the last failure, if the last pass failed for this source.
    pub error: Option<String>,
    pub last_request_id: Option<String>,
    /// RFC 3339.
    pub updated_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeSummary {
    pub passed: bool,
    pub code: Option<String>,
    pub reason: Option<String>,
    pub at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create state directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error(
        "another hbr-source-agent holds {lock} (the service holds it while it runs); to make \
         the service apply now: systemctl reload hbr-source-agent"
    )]
    Locked { dir: PathBuf, lock: PathBuf },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{path} has schema {found}, newer than this agent understands ({SCHEMA}); upgrade the agent"
    )]
    NewerSchema { path: PathBuf, found: u32 },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io {
        action,
        path,
        source,
    }
}

/// Read the state without taking the lock (for `status` and `plan`, which change nothing).
/// A missing file is an empty state.
pub fn read(dir: &Path) -> Result<State, StateError> {
    let path = dir.join("state.json");
    match fs::read(&path) {
        Ok(bytes) => parse(&path, &bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(io_err("cannot read", &path)(e)),
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<State, StateError> {
    match serde_json::from_slice::<State>(bytes) {
        Ok(s) if s.schema > SCHEMA => Err(StateError::NewerSchema {
            path: path.to_path_buf(),
            found: s.schema,
        }),
        Ok(s) => Ok(s),
        Err(e) => {
            // A damaged file must not stop the agent: names are looked up in HBR again. Keep
            // the damaged copy for whoever investigates.
            let aside = path.with_extension(format!("json.damaged-{}", std::process::id()));
            let _ = fs::rename(path, &aside);
            tracing::warn!(
                path = %path.display(),
                moved_to = %aside.display(),
                error = %e,
                "state file is damaged; starting from HBR's view"
            );
            Ok(State::default())
        }
    }
}

/// The state directory, locked for this process: only the holder writes `state.json`.
#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
    // Held for the lifetime of the store; the flock goes with the descriptor.
    _lock: File,
}

impl StateStore {
    /// Create the directory (0700) if needed and take the exclusive lock without waiting.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StateError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("cannot open", &lock_path))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(StateError::Locked {
                    dir: dir.to_path_buf(),
                    lock: lock_path,
                });
            }
            Err(e) => return Err(io_err("cannot lock", &lock_path)(e.into())),
        }
        remove_stale_temporaries(dir);
        Ok(StateStore {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn load(&self) -> Result<State, StateError> {
        read(&self.dir)
    }

    /// Replace `state.json` atomically: a crash leaves the old file or the new one, never a mix.
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let path = self.dir.join("state.json");
        let mut state = state.clone();
        state.schema = SCHEMA;
        let mut bytes = serde_json::to_vec_pretty(&state).expect("state serialises");
        bytes.push(b'\n');
        let mut tmp = tempfile::Builder::new()
            .prefix(".state.json.")
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(&self.dir)
            .map_err(io_err("cannot create a temporary file in", &self.dir))?;
        tmp.write_all(&bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(io_err("cannot write", tmp.path()))?;
        tmp.persist(&path)
            .map_err(|e| io_err("cannot replace", &path)(e.error))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("cannot sync", &self.dir))?;
        Ok(())
    }

    /// The per-host key for secret HMACs, created (0600, 32 random bytes) on first use.
    pub fn hmac_key(&self) -> Result<Vec<u8>, StateError> {
        hmac_key(&self.dir, true)
    }
}

/// A process killed while it wrote the state leaves its temporary file (`.state.json.XXXXXX`)
/// behind; `state.json` itself is intact (it is replaced by rename). Only the lock holder
/// writes, so once the lock is held every such file is stale.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(".state.json.") {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Read (and with `create`, make) the HMAC key. Without the key nothing can be compared, so a
/// reader that finds none gets `None`-like empty bytes.
pub fn hmac_key(dir: &Path, create: bool) -> Result<Vec<u8>, StateError> {
    let path = dir.join("hmac.key");
    match File::open(&path) {
        Ok(mut f) => {
            let mut key = Vec::new();
            f.read_to_end(&mut key)
                .map_err(io_err("cannot read", &path))?;
            Ok(key)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            let key: [u8; 32] = rand::random();
            let mut f = OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err("cannot create", &path))?;
            f.write_all(&key)
                .and_then(|()| f.sync_all())
                .map_err(io_err("cannot write", &path))?;
            Ok(key.to_vec())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("cannot read", &path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_is_0600_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut st = State {
            cluster_id: "cl-1".into(),
            ..State::default()
        };
        st.sources.insert(
            "a".into(),
            SourceState {
                data_source_id: Some("ds-1".into()),
                ..SourceState::default()
            },
        );
        store.save(&st).unwrap();
        let mode = fs::metadata(dir.path().join("state.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = store.load().unwrap();
        assert_eq!(back.sources["a"].data_source_id.as_deref(), Some("ds-1"));
        assert_eq!(back.schema, SCHEMA);
    }

    #[test]
    fn second_open_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateStore::open(dir.path()).unwrap();
        let err = StateStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
        drop(first);
        StateStore::open(dir.path()).unwrap();
    }

    #[test]
    fn damaged_state_is_set_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("state.json"), b"{ not json").unwrap();
        let st = read(dir.path()).unwrap();
        assert!(st.sources.is_empty());
        assert!(!dir.path().join("state.json").exists());
    }

    #[test]
    fn hmac_key_is_stable_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = hmac_key(dir.path(), true).unwrap();
        let b = hmac_key(dir.path(), true).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(a, b);
        let mode = fs::metadata(dir.path().join("hmac.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
