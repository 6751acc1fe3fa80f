//! `[filesystem.NAME]` (HBR `COMMON_FILE_SYSTEM`): a large file system mounted on this host.
//!
//! Layers: `resolve` (the path exists and is a directory, symlinks followed), `connect` (it is
//! on a mounted file system other than `/`; the type comes from statfs and mountinfo), `access`
//! (the directory opens and one entry reads). Every system call runs on a blocking thread, so a
//! hung network mount costs only this probe's deadline.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Code, Failed, Layer, Recorder};
use crate::config::FilesystemSpec;

pub async fn probe(spec: &FilesystemSpec, rec: &mut Recorder) -> Result<(), Failed> {
    rec.start(Layer::Resolve);
    let path = spec.path.clone();
    let resolved = blocking(move || resolve(&path)).await?;
    rec.pass(format!("{} is a directory", resolved.display()));
    if resolved != spec.path {
        rec.fact("resolved_path", resolved.display().to_string());
    }

    rec.start(Layer::Connect);
    let p = resolved.clone();
    let mount = blocking(move || mount_of(&p)).await?;
    rec.fact("fs_type", mount.fs_type.clone());
    rec.fact("mount_point", mount.mount_point.display().to_string());
    if mount.on_root_fs {
        if !spec.allow_root_fs {
            return Err(Failed::new(
                Code::PATH_NOT_MOUNTED,
                format!(
                    "{} is on the root file system ({}), not on a mounted file system",
                    resolved.display(),
                    mount.fs_type
                ),
            ));
        }
        rec.warn(
            Code::PATH_ON_ROOT_FS,
            format!(
                "{} is on the root file system ({}); allowed by allow_root_fs",
                resolved.display(),
                mount.fs_type
            ),
        );
    }
    rec.pass(format!(
        "{} mounted at {}",
        mount.fs_type,
        mount.mount_point.display()
    ));

    rec.start(Layer::Access);
    let p = resolved.clone();
    let first = blocking(move || read_one(&p)).await?;
    match first {
        Some(_) => rec.pass("listed one entry"),
        None => {
            rec.warn(
                Code::PATH_EMPTY,
                format!("{} is empty: HBR would back up nothing", resolved.display()),
            );
            rec.pass("directory is empty");
        }
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Failed> + Send + 'static,
) -> Result<T, Failed> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(Failed::new(
            Code::PATH_NOT_READABLE,
            format!("probe task failed: {e}"),
        ))
    })
}

fn io_reason(what: &str, path: &Path, e: &io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

fn resolve(path: &Path) -> Result<PathBuf, Failed> {
    let resolved = std::fs::canonicalize(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            Failed::new(Code::PATH_NOT_FOUND, io_reason("cannot find", path, &e))
        }
        io::ErrorKind::PermissionDenied => {
            Failed::new(Code::PATH_NOT_READABLE, io_reason("cannot reach", path, &e))
        }
        _ => Failed::new(Code::PATH_NOT_FOUND, io_reason("cannot resolve", path, &e)),
    })?;
    let meta = std::fs::metadata(&resolved).map_err(|e| {
        Failed::new(
            Code::PATH_NOT_READABLE,
            io_reason("cannot stat", &resolved, &e),
        )
    })?;
    if !meta.is_dir() {
        return Err(Failed::new(
            Code::PATH_NOT_DIRECTORY,
            format!("{} is not a directory", resolved.display()),
        ));
    }
    Ok(resolved)
}

struct Mount {
    mount_point: PathBuf,
    fs_type: String,
    on_root_fs: bool,
}

/// The mount holding `path`: its mount point is the highest ancestor on the same device.
fn mount_of(path: &Path) -> Result<Mount, Failed> {
    let dev = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.dev())
            .map_err(|e| Failed::new(Code::PATH_NOT_READABLE, io_reason("cannot stat", p, &e)))
    };
    let here = dev(path)?;
    let root = dev(Path::new("/"))?;
    let mut mount_point = path.to_path_buf();
    while let Some(parent) = mount_point.parent() {
        if dev(parent)? != here {
            break;
        }
        mount_point = parent.to_path_buf();
    }
    let fs_type = mountinfo_fs_type(&mount_point).unwrap_or_else(|| statfs_type_name(path));
    Ok(Mount {
        mount_point,
        fs_type,
        on_root_fs: here == root,
    })
}

/// The file system type of the mount at `mount_point` from `/proc/self/mountinfo` (the last
/// matching line wins: it is the one on top).
fn mountinfo_fs_type(mount_point: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let target = mount_point.to_str()?;
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let mp = fields.nth(4)?;
            let rest = line.split(" - ").nth(1)?;
            Some((unescape_mountinfo(mp), rest.split(' ').next()?.to_string()))
        })
        .filter(|(mp, _)| mp == target)
        .map(|(_, fs)| fs)
        .next_back()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&oct, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&oct);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn statfs_type_name(path: &Path) -> String {
    match rustix::fs::statfs(path) {
        Ok(st) => {
            #[allow(clippy::unnecessary_cast)]
            let magic = st.f_type as u64;
            match magic {
                0xEF53 => "ext4".into(),
                0x5846_5342 => "xfs".into(),
                0x6969 => "nfs".into(),
                0x0102_1994 => "tmpfs".into(),
                0x0BD0_0BD0 => "lustre".into(),
                0x4750_4653 => "gpfs".into(),
                0x00C3_6400 => "ceph".into(),
                0x9123_683E => "btrfs".into(),
                0x2FC1_2FC1 => "zfs".into(),
                0x6573_5546 => "fuse".into(),
                0xFF53_4D42 => "cifs".into(),
                0xFE53_4D42 => "smb2".into(),
                0x1983_0326 => "beegfs".into(),
                0x794C_7630 => "overlay".into(),
                other => format!("unknown (statfs type {other:#x})"),
            }
        }
        Err(e) => format!("unknown (statfs: {e})"),
    }
}

fn read_one(path: &Path) -> Result<Option<std::ffi::OsString>, Failed> {
    let unreadable =
        |e: io::Error| Failed::new(Code::PATH_NOT_READABLE, io_reason("cannot list", path, &e));
    let mut dir = std::fs::read_dir(path).map_err(unreadable)?;
    match dir.next() {
        None => Ok(None),
        Some(entry) => Ok(Some(entry.map_err(unreadable)?.file_name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/mnt/with\040space"), "/mnt/with space");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
    }

    #[test]
    fn root_is_its_own_mount() {
        let m = mount_of(Path::new("/")).unwrap();
        assert!(m.on_root_fs);
        assert_eq!(m.mount_point, Path::new("/"));
        assert!(!m.fs_type.is_empty());
    }
}
