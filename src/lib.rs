//! handoff: durable, duplicable file handles. Open a file over an authenticated control
//! channel, get a resume key, present it on a data channel (TCP, TLS; RDMA where there is a
//! NIC) for a duplicate handle with the same rights.
//!
//! This crate is the client API ([`Client`]) and the `handoff` CLI. It builds on the protocol
//! core (`handoff-core`) and the channels (`handoff-datapath`); the server is `handoff-server`.

mod client;
pub mod data;
pub mod exit;
mod namespace;
mod rdma_handle;
pub mod stream_handle;

pub use client::{parse_key, Client, Endpoints, OpenOptions, Opened};
pub use data::{Channel, DataHandle, DataTransport};
pub use handoff_core::auth::Identity;
pub use handoff_core::state::{
    ByteRange, CloseTarget, Mode, OpenState, OpenSummary, ResumeReport, ShareMode,
};
pub use handoff_core::wire::{DirEntry, FileAttr, FileKind, Timestamp};
pub use handoff_datapath::tcp::{DataClient, Transport};
pub use handoff_datapath::{DataError, Fill, Sink};
pub use stream_handle::StreamHandle;
