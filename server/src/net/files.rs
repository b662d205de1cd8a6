//! Files beneath the server's root, resolved by the kernel.
//!
//! Every client path is resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`
//! relative to a descriptor of the root taken at start, so no symbolic link, `..` or
//! `/proc` magic link can lead outside it; a link that stays beneath the root works. A path
//! is first opened `O_PATH` (which opens nothing: a FIFO, a device or a socket cannot block,
//! rewind a tape or arm a watchdog), its type is checked, and only a regular file is then
//! opened for IO, through that same descriptor, so the object checked is the object used.
//!
//! These calls can block for as long as the file system likes (an NFS server that does not
//! answer): callers run them outside the server's lock.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxFlags};
use sha2::{Digest, Sha256};

use crate::Error;

/// Which file an open names: its file system, inode and birth time. The file system is named
/// by its `f_fsid` (from the file system itself: the same on every host that mounts a shared
/// file system, and across reboots and remounts, unlike `st_dev`, which each host numbers as
/// it mounts), or by the device where a file system reports no fsid. The birth time tells a
/// file from a later one that reuses its inode number; where a file system does not report
/// it, file system and inode decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    pub fs: u64,
    pub ino: u64,
    /// Birth time (seconds, nanoseconds) where the file system reports it.
    pub birth: Option<(i64, u32)>,
}

impl FileIdentity {
    /// The 64-bit id the open table and resume keys use: a digest of the identity, so files
    /// on two file systems with the same inode number never collide.
    pub fn file_id(&self) -> u64 {
        let mut h = Sha256::new();
        h.update(b"handoff file identity v1");
        h.update(self.fs.to_be_bytes());
        h.update(self.ino.to_be_bytes());
        if let Some((s, ns)) = self.birth {
            h.update(s.to_be_bytes());
            h.update(ns.to_be_bytes());
        }
        let d = h.finalize();
        u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
    }

    /// The identity of an open file.
    pub fn of(file: &impl AsFd) -> io::Result<Self> {
        Self::from_statx(file, &statx(file)?)
    }

    fn from_statx(fd: &impl AsFd, st: &rustix::fs::Statx) -> io::Result<Self> {
        let birth = (st.stx_mask & StatxFlags::BTIME.bits() != 0)
            .then_some((st.stx_btime.tv_sec, st.stx_btime.tv_nsec));
        let fsid = rustix::fs::fstatvfs(fd)?.f_fsid;
        let fs = if fsid != 0 {
            fsid
        } else {
            rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor) | 1 << 63
        };
        Ok(FileIdentity {
            fs,
            ino: st.stx_ino,
            birth,
        })
    }
}

fn statx(fd: &impl AsFd) -> io::Result<rustix::fs::Statx> {
    Ok(rustix::fs::statx(
        fd,
        "",
        AtFlags::EMPTY_PATH,
        StatxFlags::TYPE | StatxFlags::INO | StatxFlags::SIZE | StatxFlags::BTIME,
    )?)
}

/// A regular file opened beneath the root.
#[derive(Debug)]
pub struct OpenedFile {
    pub file: File,
    pub identity: FileIdentity,
    pub size: u64,
    /// This call created the file.
    pub created: bool,
}

/// The served directory, held open for the server's life.
pub struct Root {
    pub(super) dir: OwnedFd,
    path: PathBuf,
    /// Test hook (`HANDOFFD_FAULT_SLOW_OPEN=NAME=MS`): opening a file named NAME takes MS
    /// milliseconds more, as on a file system whose server does not answer.
    slow_open: Option<(String, Duration)>,
}

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Root").field("path", &self.path).finish()
    }
}

impl Root {
    /// Opens the root directory; fails if it is not one or the kernel cannot confine paths
    /// beneath it (openat2 needs Linux 5.6).
    pub fn open(path: &Path) -> io::Result<Self> {
        let dir = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io::Error::new(e.kind(), format!("root {}: {e}", path.display())))?;
        match rustix::fs::openat2(
            &dir,
            ".",
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH,
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::NOSYS) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "this kernel has no openat2 (Linux 5.6 or newer is needed to confine paths beneath --root)",
                ))
            }
            Err(e) => return Err(e.into()),
        }
        // Files are opened for IO through /proc/self/fd (the object, never the path again).
        reopen_fd(&dir, false).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot reopen through /proc/self/fd ({e}): handoffd needs /proc mounted"),
            )
        })?;
        let slow_open = std::env::var("HANDOFFD_FAULT_SLOW_OPEN")
            .ok()
            .and_then(|v| {
                let (name, ms) = v.split_once('=')?;
                Some((name.to_owned(), Duration::from_millis(ms.parse().ok()?)))
            });
        Ok(Self {
            dir,
            path: path.to_path_buf(),
            slow_open,
        })
    }

    /// Opens an existing regular file at the client path `path` for reading (and writing if
    /// `write`).
    pub fn open_file(&self, path: &str, write: bool) -> Result<OpenedFile, Error> {
        let rel = relative(path)?;
        self.fault_delay(&rel);
        let at = self.locate(&rel).map_err(|e| open_error(path, e))?;
        let st = statx(&at).map_err(|e| io_error(path, e))?;
        let kind = FileType::from_raw_mode(st.stx_mode.into());
        if kind != FileType::RegularFile {
            return Err(Error::denied(format!(
                "{path} is not a regular file (it is {}); handoff serves regular files only",
                type_name(kind)
            )));
        }
        let identity = FileIdentity::from_statx(&at, &st).map_err(|e| io_error(path, e))?;
        let file = reopen(&at, write, path)?;
        // The same object, by construction (opened through its descriptor); checked anyway.
        let again = FileIdentity::of(&file).map_err(|e| io_error(path, e))?;
        if again != identity {
            return Err(Error::not_found(format!(
                "{path} changed while it was opened"
            )));
        }
        Ok(OpenedFile {
            file,
            identity,
            size: st.stx_size,
            created: false,
        })
    }

    /// Creates the regular file `path` (read-write), or opens it if it exists.
    pub fn create_file(&self, path: &str) -> Result<OpenedFile, Error> {
        let rel = relative(path)?;
        self.fault_delay(&rel);
        let made = rustix::fs::openat2(
            &self.dir,
            &rel,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
            confined(),
        );
        match made {
            Ok(fd) => {
                let file = File::from(fd);
                let identity = FileIdentity::of(&file).map_err(|e| io_error(path, e))?;
                Ok(OpenedFile {
                    file,
                    identity,
                    size: 0,
                    created: true,
                })
            }
            Err(rustix::io::Errno::EXIST) => self.open_file(path, true),
            Err(e) => Err(open_error(path, e)),
        }
    }

    /// Removes `path` if it is still the file `identity` names and still empty (undoing a
    /// create whose open was then refused).
    pub fn remove_created(&self, path: &str, identity: &FileIdentity) {
        let Ok(f) = self.open_file(path, false) else {
            return;
        };
        if f.identity == *identity && f.size == 0 {
            if let Ok((dir, name)) = self.parent_dir(path, false) {
                let _ = rustix::fs::unlinkat(&dir, &name, AtFlags::empty());
            }
        }
    }

    /// The directory that holds `path` (opened beneath the root, made first with its parents
    /// if `create`) and the file's name in it.
    pub fn parent_dir(&self, path: &str, create: bool) -> Result<(OwnedFd, PathBuf), Error> {
        let rel = relative(path)?;
        let name = PathBuf::from(
            rel.file_name()
                .ok_or_else(|| Error::bad_request(format!("path {path:?} names no file")))?,
        );
        let parent = match rel.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        // The whole parent at once, as opens resolve it ('..' and links that stay inside).
        match rustix::fs::openat2(&self.dir, &parent, dir_flags, Mode::empty(), confined()) {
            Ok(dir) => return Ok((dir, name)),
            Err(rustix::io::Errno::NOENT) if create => {}
            Err(e) => return Err(open_error(path, e)),
        }
        // Missing directories are made one step at a time, each beneath the last.
        let mut dir = rustix::fs::openat2(&self.dir, ".", dir_flags, Mode::empty(), confined())
            .map_err(|e| open_error(path, e))?;
        for part in parent.components() {
            let part = part.as_os_str();
            if create {
                match rustix::fs::mkdirat(&dir, part, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(open_error(path, e)),
                }
            }
            // Each step beneath the last: a component that is a link elsewhere is refused.
            let next = rustix::fs::openat2(&dir, part, dir_flags, Mode::empty(), confined())
                .map_err(|e| open_error(path, e))?;
            dir = next;
        }
        Ok((dir, name))
    }

    /// Whether `path` exists beneath the root (any type).
    pub fn exists(&self, path: &str) -> Result<bool, Error> {
        match self.locate(&relative(path)?) {
            Ok(_) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(open_error(path, e)),
        }
    }

    /// `rel` resolved beneath the root and opened `O_PATH` (which opens nothing for IO).
    pub(super) fn locate(&self, rel: &Path) -> rustix::io::Result<OwnedFd> {
        rustix::fs::openat2(
            &self.dir,
            rel,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            confined(),
        )
    }

    pub(super) fn fault_delay(&self, rel: &Path) {
        if let Some((name, delay)) = &self.slow_open {
            if rel.file_name() == Some(OsStr::new(name)) {
                std::thread::sleep(*delay);
            }
        }
    }
}

/// Another descriptor of the same open file (or `O_PATH` descriptor), for reading (and
/// writing if `write`), opened through `/proc/self/fd` (the file's object, not its path).
/// `path` names it in errors.
pub fn reopen(file: &impl AsRawFd, write: bool, path: &str) -> Result<File, Error> {
    reopen_fd(file, write).map_err(|e| match rustix::io::Errno::from_io_error(&e) {
        Some(errno) => open_error(path, errno),
        None => io_error(path, e),
    })
}

fn reopen_fd(fd: &impl AsRawFd, write: bool) -> io::Result<File> {
    let access = if write { OFlags::RDWR } else { OFlags::RDONLY };
    let file = File::from(rustix::fs::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        access | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?);
    rustix::fs::fcntl_setfl(&file, OFlags::empty())?;
    Ok(file)
}

pub(super) fn confined() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
}

/// The client path as a path relative to the root. Empty paths, NUL and control characters
/// are refused (`..` is left to the kernel, which refuses it where it would leave the root).
pub(super) fn relative(path: &str) -> Result<PathBuf, Error> {
    if path.len() > crate::state::records::MAX_PATH {
        return Err(Error::bad_request("path is too long"));
    }
    if path.chars().any(char::is_control) {
        return Err(Error::bad_request(format!(
            "path {path:?} contains a control character"
        )));
    }
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => out.push(".."),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let last = Path::new(path).components().next_back();
    if out.as_os_str().is_empty() || matches!(last, Some(Component::ParentDir)) {
        return Err(Error::bad_request(format!("path {path:?} names no file")));
    }
    Ok(out)
}

pub(super) fn open_error(path: &str, e: rustix::io::Errno) -> Error {
    use rustix::io::Errno;
    match e {
        Errno::NOENT => Error::not_found(format!("no such file: {path}")),
        Errno::NOTDIR => Error::not_found(format!(
            "no such file: {path} (a parent is not a directory)"
        )),
        Errno::XDEV => Error::denied(format!(
            "{path} leads outside the served root (through a symbolic link or '..'); refused"
        )),
        Errno::LOOP => Error::denied(format!(
            "{path}: too many symbolic links, or a link the server does not follow"
        )),
        Errno::ACCESS | Errno::PERM => Error::denied(format!("{path}: permission denied")),
        Errno::NAMETOOLONG => Error::bad_request(format!("{path}: a name is too long")),
        Errno::NOSPC | Errno::DQUOT | Errno::ROFS | Errno::IO => {
            Error::file_system(&format!("opening {path}"), &e.into())
        }
        Errno::MFILE | Errno::NFILE => Error::FileSystem(format!(
            "{path} was not opened: the server has reached its limit of open files \
             (raise handoffd's descriptor limit: ulimit -n, or LimitNOFILE= under systemd)"
        )),
        Errno::ISDIR => Error::denied(format!(
            "{path} is not a regular file (it is a directory); handoff serves regular files only"
        )),
        e => io_error(path, e.into()),
    }
}

pub(super) fn io_error(path: &str, e: io::Error) -> Error {
    Error::Io(io::Error::new(e.kind(), format!("{path}: {e}")))
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "of an unknown type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn client_paths_are_relative_and_clean() {
        assert_eq!(relative("/a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(relative("a/./b").unwrap(), PathBuf::from("a/b"));
        assert!(relative("/").is_err());
        assert!(relative("").is_err());
        assert!(relative("a\nb").is_err());
        assert!(relative("a/..").is_err());
    }

    #[test]
    fn links_resolve_only_beneath_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(tmp.path().join("secret"), b"s").unwrap();
        std::fs::write(root.join("d/f"), b"inside").unwrap();
        symlink(tmp.path().join("secret"), root.join("abs")).unwrap();
        symlink("../secret", root.join("rel")).unwrap();
        symlink("d/f", root.join("ok")).unwrap();
        let r = Root::open(&root).unwrap();
        for p in ["abs", "rel", "../secret", "d/../../secret"] {
            let e = r.open_file(p, false).unwrap_err();
            assert_eq!(e.code(), crate::wire::ErrorCode::Denied, "{p}: {e}");
        }
        assert!(r.create_file("rel").is_err());
        assert_eq!(r.open_file("ok", false).unwrap().size, 6);
        assert_eq!(r.open_file("d/../ok", false).unwrap().size, 6);
    }

    #[test]
    fn identity_tells_files_apart_even_with_the_same_inode_number() {
        let a = FileIdentity {
            fs: 1,
            ino: 7,
            birth: None,
        };
        let b = FileIdentity { fs: 2, ..a };
        let c = FileIdentity {
            birth: Some((1, 2)),
            ..a
        };
        assert_ne!(a.file_id(), b.file_id());
        assert_ne!(a.file_id(), c.file_id());
        assert_eq!(a.file_id(), a.file_id());
    }
}
