//! The only IO in this crate: tokio tasks that move frames between sockets and the core.

mod admission;
mod channel;
mod client;
mod drain;
pub use drain::resume_drain;
mod files;
mod server;

pub use admission::{Admission, AdmissionCounts, Limits, Seat, Ticket};
pub use channel::{Channel, Timeouts};
pub use client::{check_reply, with_admission_retries, ControlClient};
pub use files::{reopen, FileIdentity, OpenedFile, Root};
pub use server::{
    accept_loop, fail_stop, handshake, now_ms, AttachedHandle, ControlServer, Persist, Revocable,
    ServerConfig, ServerStats, Shared, WriteCheck, EXIT_FENCED, EXIT_STORE_FAILED, FS_CALLS,
    HANDSHAKE_TIMEOUT,
};
