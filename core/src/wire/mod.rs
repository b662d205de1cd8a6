//! The wire contract: frames, the checked codec, and every message type.

mod fields;
mod file_attr;
mod frame;
mod message;
mod message_table;

pub use crate::codec::{Reader, WireError, Writer};
pub use file_attr::{DirEntry, FileAttr, FileKind, Timestamp, LIST_PAGE, MAX_FILE_NAME};
pub use frame::{encode_frame, Frame, FRAME_OVERHEAD, MAC_LEN, MAX_PAYLOAD};
pub use message::{
    Endpoint, EndpointKind, ErrorCode, FileInfo, Message, OpenParams, Span, ADMIN_PAGE, INBOX_PAGE,
    MAX_ADDR, MAX_BATCH, MAX_CHUNK, MAX_COUNTERS, MAX_COUNTER_NAME, MAX_DRAIN_ITEMS, MAX_ENDPOINTS,
    MAX_INBOX_BATCH, MAX_KEY, MAX_KEYS, MAX_LOCKS, MAX_MESSAGE, MAX_NAME, MAX_PATH, MAX_RECORD,
    MAX_TOKEN, PROTOCOL_VERSION,
};
