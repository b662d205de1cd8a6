//! The crate's one error type at its boundary, sorted by who is at fault; each maps to a wire
//! [`ErrorCode`] and so to a CLI exit code.

use crate::auth::AuthError;
use crate::state::{CoreError, ResumeReport};
use crate::store::StoreError;
use crate::wire::{ErrorCode, WireError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer sent bytes that do not decode.
    #[error("malformed message: {0}")]
    Wire(WireError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A request the server's state machine refused.
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The file system refused an operation on a client's file (ENOSPC, EFBIG, EIO, …).
    #[error("{0}")]
    FileSystem(String),
    #[error("connection closed by the peer")]
    Closed,
    /// The file system refused a namespace change for a reason the client can act on (the
    /// name exists, the directory is not empty, …): `code` says which.
    #[error("{message}")]
    Namespace { code: ErrorCode, message: String },
    /// A cap of the server's admission control or a quota refused the request.
    #[error("{0}")]
    Limit(String),
    /// The peer stalled: a frame or a transfer stopped half-way, or it sent nothing for
    /// longer than the server allows.
    #[error("{0}")]
    TimedOut(String),
    /// The server closed the connection before it read the request (it was idle, or the
    /// server is stopping): the request did not happen and may be sent again.
    #[error("the server closed the connection: {0}")]
    Goodbye(String),
    /// The peer sent nothing between frames for this long (an idle connection).
    #[error("no request for {} s", .0.as_secs())]
    Idle(std::time::Duration),
    /// The peer broke the conversation's order (a reply where a request was due, …).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No listed server could be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The server referred the client to another one (it was drained).
    #[error("referred to {0}")]
    Referred(String),
    /// An error the server sent back.
    #[error("{message}")]
    Remote {
        code: ErrorCode,
        message: String,
        report: Option<ResumeReport>,
        retry_after_ms: u64,
    },
}

// Written out (not `#[from]`) so the detail shows once in a printed error chain.
impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        Error::Wire(e)
    }
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Wire(_) | Error::Protocol(_) => ErrorCode::Protocol,
            Error::Auth(AuthError::BadMac | AuthError::Sequence { .. }) => ErrorCode::Protocol,
            Error::Auth(_) => ErrorCode::AuthFailed,
            Error::Core(CoreError::Denied { .. }) => ErrorCode::Denied,
            Error::Core(CoreError::NotFound(_)) => ErrorCode::NotFound,
            Error::Core(CoreError::Grace { .. } | CoreError::Draining { .. }) => ErrorCode::Grace,
            Error::Core(CoreError::BadRequest(_)) => ErrorCode::BadRequest,
            Error::Core(CoreError::Referred { .. })
            | Error::Referred(_)
            | Error::Unreachable(_)
            | Error::Goodbye(_) => ErrorCode::Unavailable,
            Error::Store(StoreError::Unavailable(_) | StoreError::Fenced(_)) => {
                ErrorCode::Unavailable
            }
            Error::FileSystem(_) => ErrorCode::FileIo,
            Error::Namespace { code, .. } => *code,
            Error::Limit(_) => ErrorCode::Denied,
            Error::Store(_)
            | Error::Io(_)
            | Error::Closed
            | Error::TimedOut(_)
            | Error::Idle(_) => ErrorCode::Internal,
            Error::Remote { code, .. } => *code,
        }
    }

    /// The reply frame for this error (the server side).
    pub fn to_message(&self) -> crate::wire::Message {
        match self {
            Error::Core(CoreError::Referred { peer }) | Error::Referred(peer) => {
                return crate::wire::Message::Referral { peer: peer.clone() }
            }
            _ => {}
        }
        let (report, retry_after_ms) = match self {
            Error::Core(CoreError::Denied { report, .. }) => (*report, 0),
            Error::Core(CoreError::Grace { retry_after_ms }) => (None, *retry_after_ms),
            Error::Core(CoreError::Draining { .. }) => (None, 1_000),
            Error::Remote {
                report,
                retry_after_ms,
                ..
            } => (*report, *retry_after_ms),
            _ => (None, 0),
        };
        let mut message = self.to_string();
        let mut cut = message.len().min(1000);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        crate::wire::Message::Error {
            code: self.code(),
            message,
            report,
            retry_after_ms,
        }
    }

    /// A user-facing "no such file" error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::Core(CoreError::NotFound(message.into()))
    }

    /// A user-facing denial (exit 3), with no resume report.
    pub fn denied(message: impl Into<String>) -> Self {
        Error::Core(CoreError::Denied {
            message: message.into(),
            report: None,
        })
    }

    /// The file system refused `what` (e.g. "write of 10 bytes at offset 0"): the message
    /// names the errno ("No space left on device (ENOSPC)").
    pub fn file_system(what: &str, e: &std::io::Error) -> Self {
        let text = e.to_string();
        let text = text.split(" (os error").next().unwrap_or(&text).to_owned();
        let name = e.raw_os_error().map(errno_name);
        Error::FileSystem(match name {
            Some(Some(n)) => format!("{what} failed: {text} ({n})"),
            _ => format!("{what} failed: {text}"),
        })
    }

    /// A namespace refusal of class `code` (exists, not empty, is or is not a directory).
    pub fn namespace(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::Namespace {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::Core(CoreError::BadRequest(message.into()))
    }
}

/// The symbolic name of the errno values a file write or truncate can meet.
fn errno_name(code: i32) -> Option<&'static str> {
    use rustix::io::Errno;
    Some(match Errno::from_raw_os_error(code) {
        Errno::PERM => "EPERM",
        Errno::IO => "EIO",
        Errno::BADF => "EBADF",
        Errno::NOMEM => "ENOMEM",
        Errno::ACCESS => "EACCES",
        Errno::INVAL => "EINVAL",
        Errno::FBIG => "EFBIG",
        Errno::NOSPC => "ENOSPC",
        Errno::ROFS => "EROFS",
        Errno::STALE => "ESTALE",
        Errno::DQUOT => "EDQUOT",
        _ => return None,
    })
}
