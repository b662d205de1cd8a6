//! Mutual pre-shared-key authentication and per-frame MACs (claims 5–6).

mod conversation;
mod handshake;
mod identity;
mod session;

pub use conversation::{Conversation, Handshake, Step};
pub use handshake::{client_start, server_on_hello, AwaitChallenge, AwaitProof, AwaitWelcome};
pub use identity::{ClientDirectory, Identity, IdentityError};
pub use session::{Session, SessionKeys, Side};

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum AuthError {
    #[error("authentication failed: the server rejected this client's proof (unknown client or wrong secret)")]
    ClientRejected,
    #[error("server failed to authenticate: its proof does not match this client's secret (an impostor server, or the server holds a different secret for this client than the identity file)")]
    ServerImpostor,
    #[error("authentication failed: {0}")]
    Rejected(String),
    #[error("client {0:?} is not known to this server")]
    UnknownClient(String),
    #[error("authentication failed: unexpected {0} during the handshake")]
    Unexpected(&'static str),
    #[error("authentication failed: protocol version {0} is not supported")]
    Version(u8),
    #[error("frame MAC check failed (tampered or forged frame)")]
    BadMac,
    #[error(
        "frame sequence {got} where {expected} was due (replayed, dropped or reordered frame)"
    )]
    Sequence { expected: u64, got: u64 },
    /// A file holding secrets may be read by other users.
    #[error("{0}")]
    Exposed(String),
}

/// Refuses a file holding secrets (an identity, a clients list) whose permission bits `mode`
/// let users other than its owner read or write it, as ssh and MUNGE do: the message says how
/// to fix it. The caller reads the mode (this crate does no IO).
pub fn check_private_mode(path: &std::path::Path, mode: u32) -> Result<(), AuthError> {
    let mode = mode & 0o777;
    if mode & 0o077 != 0 {
        return Err(AuthError::Exposed(format!(
            "{} holds secrets but is open to group or others (mode {mode:04o}): run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}
