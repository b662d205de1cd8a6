//! The data-channel servers: TCP/TLS and RDMA. Each authenticates its peer, attaches the
//! duplicate handle its resume key names, and serves reads and writes until the peer goes.

mod file_write;
pub mod rdma;
mod tcp;

pub use tcp::DataServer;
