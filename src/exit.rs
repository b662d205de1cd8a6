//! The CLI contract's exit codes, derived from the error chain.

use handoff_core::wire::ErrorCode;

pub const OK: i32 = 0;
pub const OTHER: i32 = 1;
pub const USAGE: i32 = 2;
pub const DENIED: i32 = 3;
pub const NOT_FOUND: i32 = 4;
pub const AUTH: i32 = 5;
/// No server could serve the request now (cluster store unreachable, node passive or fenced,
/// every listed server down): retry later.
pub const UNAVAILABLE: i32 = 6;
/// The server's file system refused the operation (no space, file too large, quota, I/O
/// error); nothing was retried.
pub const FILE_IO: i32 = 7;

pub fn for_code(code: ErrorCode) -> i32 {
    match code {
        ErrorCode::Denied => DENIED,
        ErrorCode::NotFound => NOT_FOUND,
        ErrorCode::AuthFailed => AUTH,
        ErrorCode::BadRequest => USAGE,
        ErrorCode::Unavailable => UNAVAILABLE,
        ErrorCode::FileIo => FILE_IO,
        _ => OTHER,
    }
}

/// The exit code for an error: the first handoff error in its chain decides.
pub fn for_error(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<handoff_core::Error>() {
            return for_code(e.code());
        }
        if let Some(e) = cause.downcast_ref::<handoff_datapath::DataError>() {
            return for_code(e.code());
        }
        if cause.is::<UsageError>() {
            return USAGE;
        }
    }
    OTHER
}

/// Bad input found after argument parsing (a malformed key, a missing identity file).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The resume report a denial carried, if any.
pub fn report_of(err: &handoff_datapath::DataError) -> Option<handoff_core::state::ResumeReport> {
    match err {
        handoff_datapath::DataError::Control(e) => report_in(e),
        _ => None,
    }
}

/// [`report_of`] for a control-channel error.
pub fn report_in(err: &handoff_core::Error) -> Option<handoff_core::state::ResumeReport> {
    match err {
        handoff_core::Error::Remote { report, .. } => *report,
        // Refused on this side: a resume found the file changed (see `StreamHandle`).
        handoff_core::Error::Core(handoff_core::state::CoreError::Denied { report, .. }) => *report,
        _ => None,
    }
}
