//! handoff: durable, duplicable file handles. Open a file over an authenticated control
//! channel, get a resume key, present it on a data channel (TCP, TLS; RDMA where there is a
//! NIC) for a duplicate handle with the same rights.
//!
//! This crate is the client API ([`Client`]) and the server wiring ([`server`]) behind the
//! `handoff` and `handoffd` binaries.

mod client;
pub mod data;
pub mod exit;
pub mod server;
pub mod stream_handle;

pub use client::{parse_key, Client, Endpoints, OpenOptions, Opened};
pub use data::{Channel, DataHandle};
pub use handoff_control::auth::Identity;
pub use handoff_control::state::{ByteRange, Mode, ResumeReport, ShareMode};
pub use handoff_datapath::tcp::{DataClient, Transport};
pub use stream_handle::StreamHandle;
