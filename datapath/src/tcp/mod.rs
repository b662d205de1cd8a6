//! The TCP and TLS data channel: one listening port serves both (a TLS ClientHello starts with
//! 0x16, a handoff frame with a zero length byte).

mod client;
mod tls;

pub use client::{DataClient, Transport};
pub use tls::{client_config, ServerIdentity};

/// Bytes moved per file read or socket read on the copying paths.
pub const CHUNK: usize = 1 << 20;
