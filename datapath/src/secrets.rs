//! Files that hold secrets (an identity, a clients list): read only if no other user may.

use std::path::Path;

use handoff_core::auth::{check_private_mode, AuthError};

/// Refuses `path` if users other than its owner may read or write it (the message says how to
/// fix it). A file that cannot be examined passes: reading it will say what is wrong.
pub fn check_private(path: &Path) -> Result<(), AuthError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(meta) => check_private_mode(path, meta.permissions().mode()),
        Err(_) => Ok(()),
    }
}
