//! The RDMA data channel over rdma_cm + verbs (RoCE, IB, soft-RoCE). All `unsafe` in handoff
//! lives under this module, each block with the reason it is sound; the server's RDMA data
//! server (`handoff-server`) uses only its safe interface.
//!
//! Connect: the client's `rdma_connect` private data is the 50-byte sealed resume key and a
//! 6-byte tag (a MAC of the key under the client's secret). The server authenticates the key
//! and checks the tag before it accepts the QP. Then, over SEND/RECV, the same mutual
//! handshake as on TCP, and `Attached` with the duplicate handle. Requests name a registered
//! client buffer (address, rkey); the server moves the bytes with RDMA WRITE (reads) or RDMA
//! READ (writes). In direct mode the client reads the file's MR itself.

pub mod async_endpoint;
pub mod client;
pub mod cm;
pub mod device_share;
pub mod endpoint;
pub mod file_windows;
pub mod listener;
pub mod multi;
pub mod verbs;

/// Bytes of connect private data handoff sends: sealed key + client tag, the whole 56 bytes an
/// RDMA CM connect request carries. The tag also says whether the client may ask for direct
/// mode (see [`endpoint::connect_tag`]): such a connection gets a protection domain of its
/// own, because a direct grant is an rkey any QP in the grant's PD could use; the others share
/// one per device (and the file windows registered in it), and are refused direct grants.
pub const CONNECT_PRIVATE_LEN: usize = handoff_core::state::resume_key::SEALED_LEN + 6;
/// The byte a handoff server accepts a connection with (the accept's private data): bit 0 is
/// always set; each other bit names something a client may use only if the server says so,
/// so a newer client still works with an older server (which sends 1).
pub const ACCEPTED: u8 = 1;
/// The server serves `RdmaReadMany` and `RdmaWriteMany` (see [`client::Geometry`]).
pub const SERVES_BATCHES: u8 = 1 << 1;
/// The most one request moves.
pub const MAX_REQUEST: u64 = 4 << 20;
/// The largest file direct mode registers at once.
pub const MAX_DIRECT: u64 = 4 << 30;
