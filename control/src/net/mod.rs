//! The only IO in this crate: tokio tasks that move frames between sockets and the core.

mod channel;
mod client;
mod files;
mod server;

pub use channel::Channel;
pub use client::{check_reply, ControlClient};
pub use files::{file_id, resolve_path};
pub use server::{
    accept_loop, handshake, now_ms, ControlServer, Revocable, ServerConfig, ServerStats, Shared,
    HANDSHAKE_TIMEOUT,
};
