//! The only IO in this crate: tokio tasks that move frames between sockets and the core.

mod admission;
mod direct_grants;
mod drain;
pub use drain::resume_drain;
mod files;
mod server;
mod stop;

pub use admission::{Admission, AdmissionCounts, Limits, Seat, Ticket};
pub use direct_grants::Revocable;
pub use files::{reopen, FileIdentity, OpenedFile, Root};
pub use handoff_datapath::{check_reply, with_admission_retries, Channel, ControlClient, Timeouts};
pub use server::{
    accept_loop, handshake, now_ms, AttachedHandle, ControlServer, Persist, ServerConfig,
    ServerStats, Shared, WriteCheck, FS_CALLS, HANDSHAKE_TIMEOUT,
};
pub use stop::{Fatal, Stop, EXIT_FENCED, EXIT_STORE_FAILED};
