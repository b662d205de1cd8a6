//! Putting a client's bytes into a file so that a refusal by the file system (no space, file
//! too large, quota) becomes an answer to the client, not a dropped connection, and so that
//! it is known whether any byte changed.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use handoff_core::Error;

/// Writes all of `data` at `offset`; returns how many bytes reached the file before an error
/// stopped it, and that error.
pub fn write_fully_at(file: &File, mut data: &[u8], mut offset: u64) -> (u64, Option<io::Error>) {
    let mut written = 0u64;
    while !data.is_empty() {
        match file.write_at(data, offset) {
            Ok(0) => return (written, Some(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                written += n as u64;
                offset += n as u64;
                data = &data[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (written, Some(e)),
        }
    }
    (written, None)
}

/// The client-facing error for a write of `len` bytes at `offset` the file system refused.
pub fn write_refused(len: u64, offset: u64, e: &io::Error) -> Error {
    Error::file_system(&format!("write of {len} bytes at offset {offset}"), e)
}

/// The client-facing error for a flush (fdatasync) the file system refused.
pub fn flush_refused(e: &io::Error) -> Error {
    Error::file_system("flush (fdatasync)", e)
}
