//! The namespace beneath the root, as the file system sees it: attributes, listings, and
//! making, removing and renaming names. Paths resolve exactly as opens do (`openat2` beneath
//! the root, see [`super::files`]); each change acts on a name inside a directory descriptor
//! resolved that way, never on the whole path string again.
//!
//! Whether another client's open lets a file be removed, renamed or truncated is the core's
//! decision (`ServerCore::check_removable`); these calls only touch the file system and, like
//! opens, run outside the server's lock.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, StatxFlags};
use rustix::io::Errno;

use super::files::{confined, io_error, open_error, relative, FileIdentity, Root};
use crate::wire::{DirEntry, ErrorCode, FileAttr, FileKind, Timestamp, MAX_FILE_NAME};
use crate::Error;

/// Entries one listing reads from a directory at most: a page is sorted from all of them, so
/// a directory larger than this is refused rather than read into memory.
pub const MAX_DIRECTORY: usize = 1 << 20;

/// What a removal or rename would take away: the regular file at a name, if one is there.
pub struct Target {
    pub dir: OwnedFd,
    pub name: PathBuf,
    /// The file's identity if the name is a regular file (links and directories carry no
    /// opens).
    pub file: Option<FileIdentity>,
}

impl Root {
    /// The attributes of `path` ("" or "/" for the root itself), links beneath the root
    /// followed as opens follow them.
    pub fn stat(&self, path: &str) -> Result<FileAttr, Error> {
        let rel = relative_or_root(path)?;
        self.fault_delay(&rel);
        let at = self.locate(&rel).map_err(|e| open_error(path, e))?;
        attributes(&at, "").map_err(|e| open_error(path, e))
    }

    /// A page of the directory `path`: at most `max` entries whose names sort after `after`,
    /// by name, and the name to continue after ("" once none are left). Names the wire
    /// cannot carry (not UTF-8) are left out.
    pub fn list(
        &self,
        path: &str,
        after: &str,
        max: usize,
    ) -> Result<(Vec<DirEntry>, String), Error> {
        let rel = relative_or_root(path)?;
        self.fault_delay(&rel);
        let dir = rustix::fs::openat2(
            &self.dir,
            &rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            confined(),
        )
        .map_err(|e| match e {
            Errno::NOTDIR => not_a_directory(path),
            e => open_error(path, e),
        })?;
        let mut names = Vec::new();
        let mut seen = 0usize;
        for entry in rustix::fs::Dir::read_from(&dir).map_err(|e| open_error(path, e))? {
            let entry = entry.map_err(|e| open_error(path, e))?;
            seen += 1;
            if seen > MAX_DIRECTORY {
                return Err(Error::bad_request(format!(
                    "{path} holds more than {MAX_DIRECTORY} entries, more than handoff lists"
                )));
            }
            let Ok(name) = entry.file_name().to_str() else {
                tracing::debug!(path, "a name that is not UTF-8 is left out of the listing");
                continue;
            };
            if name == "." || name == ".." || name.len() > MAX_FILE_NAME || name <= after {
                continue;
            }
            names.push(name.to_owned());
        }
        names.sort_unstable();
        let more = names.len() > max;
        names.truncate(max);
        let next = if more {
            names.last().cloned().unwrap_or_default()
        } else {
            String::new()
        };
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            // Followed beneath the root as an open would; a link that leads nowhere there is
            // shown as the link itself.
            let attr = match self.locate(&rel.join(&name)) {
                Ok(at) => attributes(&at, ""),
                Err(_) => attributes(&dir, &name).map(|a| FileAttr {
                    kind: FileKind::Symlink,
                    ..a
                }),
            };
            match attr {
                Ok(attr) => entries.push(DirEntry { name, attr }),
                // Removed since it was read: simply not there.
                Err(Errno::NOENT) => {}
                Err(e) => return Err(open_error(&format!("{path}/{name}"), e)),
            }
        }
        Ok((entries, next))
    }

    /// Makes the directory `path`; with `parents`, its missing parents too, and a directory
    /// already there is no error (`mkdir -p`).
    pub fn make_dir(&self, path: &str, parents: bool) -> Result<(), Error> {
        let (dir, name) = self.parent_dir(path, parents)?;
        match rustix::fs::mkdirat(&dir, &name, Mode::from_raw_mode(0o777)) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) if parents && is_dir(&dir, &name) => Ok(()),
            Err(Errno::EXIST) => Err(Error::namespace(
                ErrorCode::Exists,
                format!("{path} already exists"),
            )),
            Err(e) => Err(change_error(path, e)),
        }
    }

    /// What removing or renaming `path` would take away (without following a final link:
    /// removing a link removes the link).
    pub fn target(&self, path: &str) -> Result<Target, Error> {
        let (dir, name) = self.parent_dir(path, false)?;
        let file = match rustix::fs::openat2(
            &dir,
            &name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            confined(),
        ) {
            Ok(at) => {
                let st = rustix::fs::statx(&at, "", AtFlags::EMPTY_PATH, StatxFlags::TYPE)
                    .map_err(|e| open_error(path, e))?;
                match FileType::from_raw_mode(st.stx_mode.into()) {
                    FileType::RegularFile => {
                        Some(FileIdentity::of(&at).map_err(|e| io_error(path, e))?)
                    }
                    _ => None,
                }
            }
            Err(Errno::NOENT) => None,
            Err(e) => return Err(open_error(path, e)),
        };
        Ok(Target { dir, name, file })
    }

    /// Removes the name `target` stands for: a file or link, or (with `dir`) an empty
    /// directory.
    pub fn remove(&self, path: &str, target: &Target, dir: bool) -> Result<(), Error> {
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rustix::fs::unlinkat(&target.dir, &target.name, flags).map_err(|e| match e {
            Errno::ISDIR => Error::namespace(
                ErrorCode::IsDirectory,
                format!("{path} is a directory (rmdir removes it)"),
            ),
            Errno::NOTDIR if dir => not_a_directory(path),
            Errno::NOTEMPTY | Errno::EXIST => Error::namespace(
                ErrorCode::NotEmpty,
                format!("{path} is a directory that is not empty"),
            ),
            e => change_error(path, e),
        })
    }

    /// Renames `from` to `to` (each a [`Target`]), replacing what `to` names, as rename(2).
    pub fn rename(&self, from: (&str, &Target), to: (&str, &Target)) -> Result<(), Error> {
        rustix::fs::renameat_with(
            &from.1.dir,
            &from.1.name,
            &to.1.dir,
            &to.1.name,
            RenameFlags::empty(),
        )
        .map_err(|e| match e {
            Errno::NOENT => Error::not_found(format!("no such file: {}", from.0)),
            Errno::ISDIR => Error::namespace(
                ErrorCode::IsDirectory,
                format!(
                    "cannot rename {} to {}: {} is a directory",
                    from.0, to.0, to.0
                ),
            ),
            Errno::NOTDIR => Error::namespace(
                ErrorCode::NotDirectory,
                format!(
                    "cannot rename {} to {}: {} is a directory and {} is not",
                    from.0, to.0, from.0, to.0
                ),
            ),
            Errno::NOTEMPTY | Errno::EXIST => Error::namespace(
                ErrorCode::NotEmpty,
                format!(
                    "cannot rename {} to {}: {} is a directory that is not empty",
                    from.0, to.0, to.0
                ),
            ),
            Errno::INVAL => Error::bad_request(format!(
                "cannot rename {} to {}: a directory cannot move beneath itself",
                from.0, to.0
            )),
            Errno::XDEV => Error::bad_request(format!(
                "cannot rename {} to {}: they are on different file systems",
                from.0, to.0
            )),
            e => change_error(from.0, e),
        })
    }
}

/// The client path relative to the root, where "", "/" and "." name the root itself.
fn relative_or_root(path: &str) -> Result<PathBuf, Error> {
    if Path::new(path).components().all(|c| {
        matches!(
            c,
            std::path::Component::RootDir | std::path::Component::CurDir
        )
    }) {
        return Ok(PathBuf::from("."));
    }
    relative(path)
}

fn is_dir(dir: &impl AsFd, name: &Path) -> bool {
    rustix::fs::statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::TYPE)
        .is_ok_and(|st| FileType::from_raw_mode(st.stx_mode.into()) == FileType::Directory)
}

fn not_a_directory(path: &str) -> Error {
    Error::namespace(
        ErrorCode::NotDirectory,
        format!("{path} is not a directory"),
    )
}

/// A change the file system refused: permissions as a denial, the rest as its errno.
fn change_error(path: &str, e: Errno) -> Error {
    match e {
        Errno::NOENT | Errno::NOTDIR | Errno::XDEV | Errno::LOOP | Errno::ACCESS | Errno::PERM => {
            open_error(path, e)
        }
        e => Error::file_system(&format!("changing {path}"), &e.into()),
    }
}

/// The attributes of `name` in `dir` ("" for `dir` itself), without following a final link.
fn attributes(dir: &impl AsFd, name: &str) -> rustix::io::Result<FileAttr> {
    let flags = if name.is_empty() {
        AtFlags::EMPTY_PATH
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    let st = rustix::fs::statx(dir, name, flags, StatxFlags::BASIC_STATS)?;
    let kind = match FileType::from_raw_mode(st.stx_mode.into()) {
        FileType::RegularFile => FileKind::File,
        FileType::Directory => FileKind::Directory,
        FileType::Symlink => FileKind::Symlink,
        _ => FileKind::Other,
    };
    let time = |t: rustix::fs::StatxTimestamp| Timestamp {
        secs: t.tv_sec,
        nanos: t.tv_nsec,
    };
    Ok(FileAttr {
        kind,
        perm: (st.stx_mode & 0o7777) as u16,
        size: st.stx_size,
        blocks: st.stx_blocks,
        nlink: st.stx_nlink,
        ino: st.stx_ino,
        atime: time(st.stx_atime),
        mtime: time(st.stx_mtime),
        ctime: time(st.stx_ctime),
    })
}
