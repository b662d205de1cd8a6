//! handoff's second channel. A client presents a resume key and gets a duplicate handle with
//! the open's exact rights; file bytes then move outside the framed control messages. This
//! crate holds the TCP (sendfile) and TLS (pinned self-signed certificate) transports; the
//! RDMA transport lives in `rdma/`.

mod error;
mod file_write;
pub use file_write::{flush_refused, write_fully_at, write_refused};
pub mod rdma;
pub mod secrets;
pub mod tcp;

pub use error::DataError;
