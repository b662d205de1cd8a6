//! The data-channel servers: TCP/TLS and RDMA. Each authenticates its peer, attaches the
//! duplicate handle its resume key names, and serves reads and writes until the peer goes.

pub mod rdma;
mod session;
mod tcp;
pub(crate) mod thread_cpu;
mod workers;

pub use tcp::DataServer;
