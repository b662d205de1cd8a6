//! What a handoff error is to an application on the mount: an errno.

use fuser::Errno;
use handoff::DataError;
use handoff_core::wire::ErrorCode;

/// The errno for a handoff error. A resume that was refused because another client changed
/// the file while the open had expired is EIO: the application's descriptor no longer holds
/// the bytes it thinks it does.
pub fn of(code: ErrorCode, message: &str, changed_meanwhile: bool) -> Errno {
    if changed_meanwhile {
        return Errno::EIO;
    }
    match code {
        ErrorCode::NotFound => Errno::ENOENT,
        ErrorCode::Denied | ErrorCode::AuthFailed => Errno::EACCES,
        ErrorCode::Exists => Errno::EEXIST,
        ErrorCode::NotEmpty => Errno::ENOTEMPTY,
        ErrorCode::IsDirectory => Errno::EISDIR,
        ErrorCode::NotDirectory => Errno::ENOTDIR,
        ErrorCode::BadRequest => Errno::EINVAL,
        ErrorCode::Unavailable | ErrorCode::Grace => Errno::EAGAIN,
        // The server names the errno its file system gave.
        ErrorCode::FileIo if message.contains("(ENOSPC)") => Errno::ENOSPC,
        ErrorCode::FileIo if message.contains("(EDQUOT)") => Errno::from_i32(libc::EDQUOT),
        ErrorCode::FileIo if message.contains("(EFBIG)") => Errno::EFBIG,
        ErrorCode::FileIo if message.contains("(EROFS)") => Errno::EROFS,
        _ => Errno::EIO,
    }
}

pub fn of_control(e: &handoff_core::Error) -> Errno {
    let changed = e.code() == ErrorCode::Denied
        && handoff::exit::report_in(e).is_some_and(|r| r.changed_by_other);
    of(e.code(), &e.to_string(), changed)
}

pub fn of_data(e: &DataError) -> Errno {
    match e {
        DataError::Control(c) => of_control(c),
        // The data channel's own IO failed (and could not be resumed): not the file's errno.
        DataError::Io(_) => Errno::EIO,
        _ => of(e.code(), &e.to_string(), false),
    }
}
