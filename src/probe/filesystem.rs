//! `[filesystem.NAME]` (HBR `COMMON_FILE_SYSTEM`): a large file system mounted on this host.
//!
//! Layers: `resolve` (the path exists and is a directory, symlinks followed), `connect` (it is
//! on a mounted file system other than `/`; the type comes from statfs and mountinfo), `access`
//! (the directory opens and one entry reads). Every system call runs on a blocking thread (one
//! per probe, for all three layers), so a hung network mount costs only this probe's deadline.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read as _};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{Code, Failed, Layer, Recorder};
use crate::config::FilesystemSpec;

pub async fn probe(spec: &FilesystemSpec, rec: &mut Recorder) -> Result<(), Failed> {
    // The system calls of all three layers run on one blocking thread, which reports each
    // step as it ends: a hand-off to the blocking pool per layer cost three thread wake-ups
    // a source, most of a 10,000-source `plan` (docs/benchmarks.md).
    let (resolved_tx, resolved_rx) = oneshot::channel();
    let (mount_tx, mount_rx) = oneshot::channel();
    let (first_tx, first_rx) = oneshot::channel();
    let path = spec.path.clone();
    let allow_root_fs = spec.allow_root_fs;
    rec.start(Layer::Resolve);
    tokio::task::spawn_blocking(move || {
        let resolved = resolve(&path);
        let Ok(p) = resolved.clone() else {
            let _ = resolved_tx.send(resolved);
            return;
        };
        let _ = resolved_tx.send(resolved);
        let mount = mount_of(&p);
        let stop = mount
            .as_ref()
            .map_or(true, |m| m.on_root_fs && !allow_root_fs);
        let _ = mount_tx.send(mount);
        if !stop {
            let _ = first_tx.send(read_one(&p));
        }
    });

    let resolved = step(resolved_rx).await?;
    rec.pass(format!("{} is a directory", resolved.display()));
    if resolved != spec.path {
        rec.fact("resolved_path", resolved.display().to_string());
    }

    rec.start(Layer::Connect);
    let mount = step(mount_rx).await?;
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
    let first = step(first_rx).await?;
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

/// One step's outcome from the blocking thread.
async fn step<T>(rx: oneshot::Receiver<Result<T, Failed>>) -> Result<T, Failed> {
    rx.await.unwrap_or_else(|_| {
        Err(Failed::new(
            Code::PATH_NOT_READABLE,
            "the probe's blocking task ended without an answer",
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

/// The file system type of the mount at `mount_point`, from the mount table.
fn mountinfo_fs_type(mount_point: &Path) -> Option<String> {
    mount_table()?.get(mount_point.to_str()?).cloned()
}

/// Mount point → file system type, parsed from `/proc/self/mountinfo` (the last line for a
/// mount point wins: it is the one on top).
type MountTable = HashMap<String, String>;

/// The parsed table and the open file it came from: the kernel marks that file (`poll`:
/// `POLLPRI`) when any mount of this namespace changes, so the table is read again only then.
struct CachedTable {
    file: File,
    table: Arc<MountTable>,
}

static MOUNT_TABLE: Mutex<Option<CachedTable>> = Mutex::new(None);

/// The current mount table, shared by every probe: reading and parsing `/proc/self/mountinfo`
/// once per source cost ~150 µs of kernel formatting each, most of a 10,000-source `plan`
/// (docs/benchmarks.md). A mount or unmount anywhere in the namespace makes the next call
/// read it again, so a probe never sees a table older than its own start.
fn mount_table() -> Option<Arc<MountTable>> {
    let mut cached = MOUNT_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = cached.as_ref()
        && !mounts_changed(&c.file)
    {
        return Some(c.table.clone());
    }
    // Opened before it is read: a change between the two is in the text read and also marks
    // the file, which costs one extra read later and never a stale table.
    let mut file = File::open("/proc/self/mountinfo").ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    let table = Arc::new(parse_mountinfo(&text));
    *cached = Some(CachedTable {
        file,
        table: table.clone(),
    });
    Some(table)
}

/// Whether the mount table changed since `file` was opened or last polled (the poll clears
/// the mark). Unknown counts as changed.
fn mounts_changed(file: &File) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(file, PollFlags::PRI)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut fds, Some(&now)) {
        Ok(_) => fds[0]
            .revents()
            .intersects(PollFlags::PRI | PollFlags::ERR | PollFlags::NVAL),
        Err(_) => true,
    }
}

fn parse_mountinfo(text: &str) -> MountTable {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let mp = fields.nth(4)?;
            let rest = line.split(" - ").nth(1)?;
            Some((unescape_mountinfo(mp), rest.split(' ').next()?.to_string()))
        })
        .collect()
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
    fn the_last_line_for_a_mount_point_wins() {
        let t = parse_mountinfo(
            "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
             30 22 0:40 / /mnt/a\\040b rw - tmpfs tmpfs rw\n\
             31 30 0:41 / /mnt/a\\040b rw - nfs4 srv:/x rw\n",
        );
        assert_eq!(t["/"], "ext4");
        assert_eq!(t["/mnt/a b"], "nfs4");
    }

    /// A mount made after the table was cached is seen by the next lookup, and so is its
    /// unmount (needs root to mount; the tests run as root, like the test servers).
    #[test]
    fn the_shared_table_follows_mounts_and_unmounts() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let point = std::fs::canonicalize(dir.path()).unwrap();
        let key = point.to_str().unwrap().to_string();
        assert!(!mount_table().unwrap().contains_key(&key));
        let mount = |args: &[&str]| {
            let st = std::process::Command::new(args[0])
                .args(&args[1..])
                .status()
                .unwrap();
            assert!(st.success(), "{args:?}");
        };
        mount(&["mount", "-t", "ramfs", "hbr-test", &key]);
        let seen = mount_table().unwrap().get(&key).cloned();
        mount(&["umount", &key]);
        assert_eq!(seen.as_deref(), Some("ramfs"));
        assert!(!mount_table().unwrap().contains_key(&key));
    }

    #[test]
    fn root_is_its_own_mount() {
        let m = mount_of(Path::new("/")).unwrap();
        assert!(m.on_root_fs);
        assert_eq!(m.mount_point, Path::new("/"));
        assert!(!m.fs_type.is_empty());
    }
}
