//! The server's IO around the core: the driver that runs it ([`Shared`]), the listeners and
//! admission, the control channel, the file system beneath the root, and planned drains.

mod accept;
mod admin;
mod admission;
mod control;
mod direct_grants;
mod drain;
mod files;
mod group_commit;
pub mod metrics;
pub mod metrics_http;
mod namespace;
mod namespace_fs;
mod shared;
mod stats;
mod stop;

pub use accept::{accept_loop, handshake, HANDSHAKE_TIMEOUT, KEEPALIVE};
pub use admission::{Admission, AdmissionCounts, Limits, Seat, Ticket};
pub use control::ControlServer;
pub use direct_grants::Revocable;
pub use drain::resume_drain;
pub use files::{reopen, FileIdentity, OpenedFile, Root};
pub use handoff_datapath::{check_reply, with_admission_retries, Channel, ControlClient, Timeouts};
pub use shared::{
    now_ms, AttachedHandle, CheckedWrite, Persist, ServerConfig, Shared, WriteCheck, FS_CALLS,
};
pub use stats::ServerStats;
pub use stop::{Fatal, Stop, EXIT_FENCED, EXIT_STORE_FAILED};
