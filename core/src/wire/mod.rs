//! The wire contract: frames, the checked codec, and every message type.

mod codec;
mod frame;
mod message;

pub use codec::{Reader, Writer};
pub use frame::{encode_frame, Frame, MAC_LEN, MAX_PAYLOAD};
pub use message::{
    Endpoint, EndpointKind, ErrorCode, FileInfo, Message, OpenParams, INBOX_PAGE, MAX_CHUNK,
    MAX_DRAIN_ITEMS, MAX_INBOX_BATCH, PROTOCOL_VERSION,
};

/// A decoding failure: the peer sent something malformed. Closes only that connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum WireError {
    #[error("message truncated")]
    Truncated,
    #[error("field longer than allowed")]
    TooLong,
    #[error("trailing bytes after message")]
    TrailingBytes,
    #[error("frame of {0} bytes exceeds the limit")]
    FrameTooLarge(usize),
    #[error("unknown message type {0:#04x}")]
    UnknownKind(u8),
    #[error("invalid {0}")]
    Invalid(&'static str),
}
