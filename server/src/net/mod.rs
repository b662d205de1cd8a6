//! The only IO in this crate: tokio tasks that move frames between sockets and the core.

mod admission;
mod drain;
pub use drain::resume_drain;
mod files;
mod server;

pub use admission::{Admission, AdmissionCounts, Limits, Seat, Ticket};
pub use files::{reopen, FileIdentity, OpenedFile, Root};
pub use handoff_datapath::{check_reply, with_admission_retries, Channel, ControlClient, Timeouts};
pub use server::{
    accept_loop, fail_stop, handshake, now_ms, AttachedHandle, ControlServer, Persist, Revocable,
    ServerConfig, ServerStats, Shared, WriteCheck, EXIT_FENCED, EXIT_STORE_FAILED, FS_CALLS,
    HANDSHAKE_TIMEOUT,
};
