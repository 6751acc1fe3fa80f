//! Resolving secrets at load time. Every load re-reads them, so a reload picks up a rotated
//! file or credential. Messages name where a secret was looked for, never what was found.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::Env;
use crate::secret::{Secret, SecretOrigin};

/// Larger than any key or password; stops `{ file = "/dev/zero" }` from eating memory.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

pub(super) fn literal(value: &str) -> Result<Secret, String> {
    if value.is_empty() {
        return Err("secret is empty".into());
    }
    Ok(Secret::new(value, SecretOrigin::Literal))
}

/// The warning for a literal secret in a config file of this mode, if any.
pub(super) fn literal_mode_warning(mode: Option<u32>) -> Option<String> {
    let mode = mode? & 0o7777;
    (mode & 0o044 != 0).then(|| {
        format!(
            "literal secret in a file readable by group/others (mode {mode:04o}): \
             use {{ file = ... }} or chmod 600"
        )
    })
}

/// The warning for a secret file that group or others may read (or write), if any. The
/// service's own `LoadCredential=` copies are 0400 and never warn.
pub(super) fn file_mode_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o066 != 0).then(|| {
        format!(
            "secret file {} is accessible to group/others (mode {mode:04o}): chmod 600 it, \
             or hand it over with LoadCredential= and {{ credential = ... }}",
            path.display()
        )
    })
}

pub(super) fn from_file(path: &str) -> Result<Secret, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "secret file must be an absolute path, got {path:?}"
        ));
    }
    let value = read_secret_file(Path::new(path))
        .map_err(|e| format!("cannot read secret file {path}: {e}"))?;
    Ok(Secret::new(value, SecretOrigin::File(PathBuf::from(path))))
}

pub(super) fn from_env(var: &str, env: &dyn Env) -> Result<Secret, String> {
    if var.is_empty() {
        return Err("environment variable name is empty".into());
    }
    match env.var(var) {
        None => Err(format!("environment variable {var} is not set")),
        Some(v) if v.is_empty() => Err(format!("environment variable {var} is empty")),
        Some(v) => Ok(Secret::new(v, SecretOrigin::Env(var.to_owned()))),
    }
}

pub(super) fn from_credential(name: &str, env: &dyn Env) -> Result<Secret, String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!("{name:?} is not a credential name"));
    }
    let Some(dir) = env.var("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) else {
        return Err(format!(
            "credential {name:?}: CREDENTIALS_DIRECTORY is not set \
             (use LoadCredential={name}:... in the systemd unit)"
        ));
    };
    let path = Path::new(&dir).join(name);
    let value = read_secret_file(&path)
        .map_err(|e| format!("cannot read credential {name:?} ({}): {e}", path.display()))?;
    Ok(Secret::new(
        value,
        SecretOrigin::Credential(name.to_owned()),
    ))
}

/// Reads a secret file: a regular file (a FIFO would block the load), at most
/// [`MAX_SECRET_BYTES`], UTF-8, one trailing newline stripped, not empty. The error is safe to
/// show: it never contains the content.
fn read_secret_file(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut buf = Vec::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() as u64 > MAX_SECRET_BYTES {
        return Err(format!("larger than {MAX_SECRET_BYTES} bytes"));
    }
    let mut s = String::from_utf8(buf).map_err(|_| "not valid UTF-8".to_string())?;
    if s.ends_with("\r\n") {
        s.truncate(s.len() - 2);
    } else if s.ends_with('\n') {
        s.truncate(s.len() - 1);
    }
    if s.is_empty() {
        return Err("file is empty".into());
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MapEnv;

    #[test]
    fn file_strips_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "abc\r\n").unwrap();
        assert_eq!(from_file(p.to_str().unwrap()).unwrap().expose(), "abc");
        std::fs::write(&p, "abc\n\n").unwrap();
        assert_eq!(from_file(p.to_str().unwrap()).unwrap().expose(), "abc\n");
        std::fs::write(&p, "\n").unwrap();
        assert!(
            from_file(p.to_str().unwrap())
                .unwrap_err()
                .contains("empty")
        );
        assert!(from_file(dir.path().to_str().unwrap()).is_err());
        assert!(from_file("relative").is_err());
    }

    #[test]
    fn env_and_credential() {
        let env = MapEnv::new().with("PW", "x").with("EMPTY", "");
        assert_eq!(from_env("PW", &env).unwrap().expose(), "x");
        assert!(from_env("EMPTY", &env).unwrap_err().contains("empty"));
        assert!(from_env("NOPE", &env).unwrap_err().contains("not set"));
        assert!(
            from_credential("c", &env)
                .unwrap_err()
                .contains("CREDENTIALS_DIRECTORY")
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c"), "val\n").unwrap();
        let env = env.with("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap());
        assert_eq!(from_credential("c", &env).unwrap().expose(), "val");
        assert!(from_credential("../c", &env).is_err());
    }

    #[test]
    fn mode_warning() {
        assert!(
            literal_mode_warning(Some(0o100644))
                .unwrap()
                .contains("mode 0644")
        );
        assert!(literal_mode_warning(Some(0o100640)).is_some());
        assert!(literal_mode_warning(Some(0o100600)).is_none());
        assert!(literal_mode_warning(None).is_none());
    }
}
