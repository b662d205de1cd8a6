//! Mapping client paths to files under the server's root.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::Error;

/// `path` relative to `root` (a leading `/` means the root). `..`, empty paths and NUL bytes
/// are refused, so a client cannot name anything outside the root.
pub fn resolve_path(root: &Path, path: &str) -> Result<PathBuf, Error> {
    if path.contains('\0') {
        return Err(Error::bad_request("path contains a NUL byte"));
    }
    let mut out = root.to_path_buf();
    let mut any = false;
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => {
                out.push(p);
                any = true;
            }
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::bad_request(format!(
                    "path {path:?} may not contain '..'"
                )))
            }
        }
    }
    if !any {
        return Err(Error::bad_request(format!("path {path:?} names no file")));
    }
    Ok(out)
}

/// A file's identity for the open table: its inode number.
pub fn file_id(meta: &Metadata) -> u64 {
    meta.ino()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_under_the_root() {
        let root = Path::new("/srv");
        assert_eq!(
            resolve_path(root, "a/b").unwrap(),
            PathBuf::from("/srv/a/b")
        );
        assert_eq!(resolve_path(root, "/a").unwrap(), PathBuf::from("/srv/a"));
        assert!(resolve_path(root, "../etc/passwd").is_err());
        assert!(resolve_path(root, "a/../../b").is_err());
        assert!(resolve_path(root, "/").is_err());
        assert!(resolve_path(root, "").is_err());
    }
}
