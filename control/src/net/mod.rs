//! The only IO in this crate: tokio tasks that move frames between sockets and the core.

mod channel;
mod client;
mod drain;
pub use drain::resume_drain;
mod files;
mod server;

pub use channel::Channel;
pub use client::{check_reply, ControlClient};
pub use files::{file_id, resolve_path};
pub use server::{
    accept_loop, fail_stop, handshake, now_ms, ControlServer, Persist, Revocable, ServerConfig,
    ServerStats, Shared, EXIT_FENCED, EXIT_STORE_FAILED, HANDSHAKE_TIMEOUT,
};
